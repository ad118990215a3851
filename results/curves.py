"""Per-epoch validation top-1 of pre-training runs, read from each run's `metrics.jsonl` (the
records hold final numbers only). A run directory that is missing is skipped with a warning."""
from __future__ import annotations

import json
import warnings

import pandas as pd

from .collect import RecordWarning, run_path
from .rows import row_labels


def read(data: pd.DataFrame) -> pd.DataFrame:
    """Columns: preset, setting, method (row label), icl, seed, run_dir, student, epoch, top1.
    `student` "ensemble" is the mean of the students' probabilities."""
    pretrain = data[data["stage"] == "pretrain"]
    runs = pretrain.drop_duplicates("run_dir")
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
                    rows.append({"preset": run.preset, "setting": run.setting, "method": label,
                                 "icl": run.icl, "seed": run.seed, "run_dir": run.run_dir,
                                 "student": parts[1], "epoch": epoch, "top1": value})
    return pd.DataFrame(rows, columns=["preset", "setting", "method", "icl", "seed", "run_dir",
                                       "student", "epoch", "top1"])
