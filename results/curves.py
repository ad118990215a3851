"""Per-epoch validation top-1 of pre-training runs, read from each run's `metrics.jsonl` (the
records hold final numbers only). A run directory that is missing is skipped with a warning.
Each output is tied to its architecture (ONE's branches and CLNN's heads to their network's), and
marked `main` where it is what the tables count: a multi-branch run's exported branch, every
network of other runs."""
from __future__ import annotations

import json
import warnings

import pandas as pd

from .collect import RecordWarning, run_path
from .rows import exported_branch, multi_branch, row_labels

COLUMNS = ["preset", "setting", "method", "icl", "seed", "run_dir", "student", "arch", "main",
           "epoch", "top1"]


def read(data: pd.DataFrame) -> pd.DataFrame:
    """Columns: COLUMNS; method is the row label. `student` "ensemble" is the mean of the
    students' probabilities (its arch: "ensemble")."""
    pretrain = data[data["stage"] == "pretrain"]
    runs = pretrain.drop_duplicates("run_dir")
    outputs = pretrain.drop_duplicates(["run_dir", "student"])
    branched = outputs["method"].map(multi_branch).astype(bool)
    main = pd.Series(True, index=outputs.index)
    if branched.any():
        main[branched] = exported_branch(outputs[branched])
    arch = {(r, s): b for r, s, b in zip(outputs["run_dir"], outputs["student"],
                                         outputs["backbone"])}
    is_main = dict(zip(zip(outputs["run_dir"], outputs["student"]), main))
    # The tables' row labels: a swept config (cifar/lambda) is a line of its own.
    labels = {r: lab for (_, part) in pretrain.groupby("setting")
              for r, lab in zip(part["run_dir"], row_labels(part))}
    rows = []
    for run in runs.itertuples(index=False):
        path = run_path(run.run_dir) / "metrics.jsonl"
        if not path.is_file():
            warnings.warn(f"{path}: missing, curves of {run.config} seed {run.seed} skipped",
                          RecordWarning, stacklevel=2)
            continue
        epochs = {}
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill; the epoch lines around it still count
            if isinstance(entry, dict) and entry.get("kind") == "epoch":
                epochs[entry["epoch"]] = entry  # after a resume, the last copy of an epoch wins
        label = labels[run.run_dir]
        for epoch, entry in sorted(epochs.items()):
            for key, value in entry.items():
                parts = key.split("/")
                if len(parts) == 3 and parts[0] == "val" and parts[2] == "top1":
                    output = (run.run_dir, parts[1])
                    rows.append({"preset": run.preset, "setting": run.setting, "method": label,
                                 "icl": run.icl, "seed": run.seed, "run_dir": run.run_dir,
                                 "student": parts[1], "arch": arch.get(output, parts[1]),
                                 "main": is_main.get(output, True), "epoch": epoch,
                                 "top1": value})
    return pd.DataFrame(rows, columns=COLUMNS)
