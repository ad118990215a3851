"""The tables as frames of raw numbers; formatting them is render.py's job.

- pre-training, one per (preset, setting), laid out like the paper's Tables 2, 4 and 7;
- the paper's Tables 1, 3, 4, 5, 9 and 10 in its own layout, from rows that live in several
  config folders (layouts.py), and Fig. 4's loss gaps under pixel noise (robustness.py);
- transfer, one per (preset, protocol), like Table 8, one column block per (backend, model);
- cost, one row per run.

Columns are (block, cell, field). Every cell has the fields mean, std, n; a cell compared with
independent training adds delta, ci_low, ci_high, significant; a cell the paper reports adds
paper and, where the paper has the baseline too, paper_delta (the paper's own gain over its own
baseline); a best-epoch cell adds epoch_min and epoch_max (the epochs the best values come from).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pretrain import registry  # standard library only: no torch

from . import stats

PAPER_CSV = Path(__file__).with_name("paper_kdcl.csv")
# Row order: pretrain/registry.py's (independent, baselines, controls, KDCL variants), then the
# paper's unnamed KDCL variant.
METHODS = [*registry.NAMES, "kdcl*"]
FIELDS = ["mean", "std", "n", "delta", "ci_low", "ci_high", "significant", "paper", "paper_delta",
          "epoch_min", "epoch_max", "min", "max"]
PAPER_ONLY = " (paper only)"
BEST = "best-epoch top-1"
EPOCH_NOTE = ("top-1: the final epoch's (the table's number); best-epoch top-1: the highest "
              "validation top-1 of any epoch, with the epoch(s) it came from: optimistic, as the "
              "epoch is chosen on the evaluation set itself; – where the records predate it.")
# Transfer cells per task: (metric, label, compared with independent pre-training).
TRANSFER_CELLS = {
    "detection": [("bbox_AP", "box AP", True), ("bbox_AP50", "box AP50", False),
                  ("bbox_AP75", "box AP75", False)],
    "instance_segmentation": [("bbox_AP", "box AP", True), ("bbox_AP50", "box AP50", False),
                              ("bbox_AP75", "box AP75", False), ("segm_AP", "mask AP", True),
                              ("segm_AP50", "mask AP50", False), ("segm_AP75", "mask AP75", False)],
    "semantic_segmentation": [("mIoU", "mIoU", True), ("mAcc", "mAcc", False)],
}
BACKENDS = ["torchvision", "detectron2", "mmseg"]
SMOKE_NOTE = ("Smoke preset: these numbers prove the plumbing, not the science (a few epochs on "
              "generated data, on a CPU); do not rank methods by them.")
PAPER_NOTE = ("paper: the value Guo et al. (CVPR 2020) report for the same setting, method and "
              "network ({tables}); paper Δ: their gain over their own independent baseline; "
              "kdcl*: a KDCL variant the paper does not name.")
# platform.processor()/machine() names, which the stages record when no CUDA device is used.
CPU_NAME = re.compile(r"^(x86_64|amd64|i[3-6]86|aarch64|arm64|armv\w+|ppc64le|s390x|riscv64|cpu)$"
                      r"|family", re.IGNORECASE)


@dataclass
class Table:
    name: str                   # file stem
    title: str
    caption: str
    data: pd.DataFrame          # raw numbers; the index holds the row labels
    trace: pd.DataFrame | None  # per row: the configs and run directories behind it
    split: bool = False         # render each column block as its own sub-table (wide tables)
    baseline: str = "independent"  # what Δ compares with, in a figure's axis label
    headline: bool = True       # summarised in results/README.md (KDCL variants' Δ range)


def load_paper(path: Path = PAPER_CSV) -> pd.DataFrame:
    paper = pd.read_csv(path, comment="#", keep_default_na=False, dtype=str)
    paper["icl"] = paper["icl"].map({"": None, "true": True, "false": False})
    paper["value"] = paper["value"].astype(float)
    return paper


def build(data: pd.DataFrame, paper: pd.DataFrame) -> list[Table]:
    """Every table: per folder, then in the paper's layout, Fig. 4's gaps, transfer, cost."""
    from . import layouts, robustness  # they build on this module's cells and frames
    tables = pretrain_tables(data, paper) + layouts.build(data, paper) + \
        robustness.tables(data) + transfer_tables(data, paper)
    trained = data["stage"].isin(["pretrain", "transfer"]).any()
    return tables + ([cost_table(data)] if trained else [])


def slug(preset: str, setting: str) -> str:
    name = setting if setting.split("/")[0] == preset else f"{preset}/{setting}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def method_label(method: str, teacher) -> str:
    # A KD row is defined by its teacher's architecture (the path differs per seed).
    return f"kd ← {Path(teacher).stem}" if method == "kd" and teacher else method


def row_order(label: str, icl) -> tuple:
    method = label.split(" ")[0]
    return (METHODS.index(method) if method in METHODS else len(METHODS), icl is True, label)


def _values(frame: pd.DataFrame, metric: str) -> list[float]:
    return frame[frame["metric"] == metric].sort_values("seed")["value"].tolist()


def _cell(block: str, cell: str, values=(), baseline=None, paper=(math.nan, math.nan)) -> dict:
    """The fields of one cell. `baseline` None: no comparison; []: a comparison without data.
    `paper`: the paper's value and its independent baseline (see `_paper`)."""
    out = {}
    if len(values):
        s = stats.Summary.of(values)
        out.update(mean=s.mean, std=math.nan if s.std is None else s.std, n=s.n)
        if baseline is not None:
            d = stats.delta(values, baseline) if len(baseline) else None
            out.update(delta=d.mean if d else math.nan,
                       ci_low=math.nan if d is None or d.low is None else d.low,
                       ci_high=math.nan if d is None or d.high is None else d.high,
                       significant=d.significant if d else None)
    if not math.isnan(paper[0]):
        out["paper"] = paper[0]
        if not math.isnan(paper[1]):
            out["paper_delta"] = paper[0] - paper[1]
    return {(block, cell, field): value for field, value in out.items()}


def best_cell(block: str, frame: pd.DataFrame) -> dict:
    """The best epoch's top-1 (metric best_top1, per seed the mean over the frame's students)
    and the range of epochs it came from. Always present, NaN for records without it."""
    values = seed_means(frame, "best_top1")
    out = {(block, BEST, f): math.nan for f in ("mean", "std", "n")}
    out |= _cell(block, BEST, values)
    epochs = frame[frame["metric"] == "best_epoch"]["value"]
    if len(values) and len(epochs):
        out |= {(block, BEST, "epoch_min"): epochs.min(), (block, BEST, "epoch_max"): epochs.max()}
    return out


def seed_means(frame: pd.DataFrame, metric: str) -> list[float]:
    """One value per seed, in seed order: the mean over the frame's records of that seed (the
    students of one architecture in a run: ONE's branches, Table 5's ResNet-18s)."""
    part = frame[frame["metric"] == metric]
    return part.groupby("seed")["value"].mean().sort_index().tolist()


def multi_branch(method) -> bool:
    try:
        return registry.get(method).multi_branch
    except KeyError:
        return False


def fold_branches(data: pd.DataFrame) -> pd.DataFrame:
    """A multi-branch run (ONE, CLNN) as the one network it exports, under its architecture's
    name: the table's number is the exported branch's (records with `exported`: branch 0 or
    head 0, as the configs say; the branches are exchangeable), the others leave the tables.
    Records without the flag: the first branch."""
    mask = (data["stage"] == "pretrain") & data["method"].map(multi_branch).astype(bool)
    if not mask.any():
        return data
    part = data[mask]
    flagged = part["exported"].map(lambda v: v is True)
    any_flag = flagged.groupby(part["run_dir"]).transform("any")
    first = part.groupby("run_dir")["student"].transform(
        lambda names: min(names, key=lambda n: (len(n), n)))
    chosen = part[flagged | (~any_flag & (part["student"] == first))]
    return pd.concat([data[~mask], chosen.assign(student=chosen["backbone"])], ignore_index=True)


def _frame(rows: dict, part: pd.DataFrame, names: list[str], order, blocks: list[str],
           cells: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The table's frame, rows sorted by `order`, and the configs and runs behind each row."""
    keys = sorted(rows, key=order)
    index = pd.MultiIndex.from_tuples(keys, names=names)
    data = pd.DataFrame([rows[k] for k in keys], index=index)
    columns = [(b, c, f) for b in blocks for c in cells for f in FIELDS
               if (b, c, f) in data.columns]
    data = data[columns]
    data.columns = pd.MultiIndex.from_tuples(columns, names=["block", "cell", "field"])
    counts = [c for c in columns if c[2] == "n"]
    data[counts] = data[counts].astype("Int64")
    runs = {key: g for key, g in part.groupby("row", sort=False)}  # paper-only rows have none
    trace = pd.DataFrame([{"configs": "; ".join(sorted(set(runs[k]["config"]))),
                           "runs": "; ".join(sorted(set(runs[k]["run_dir"])))}
                          if k in runs else {"configs": None, "runs": None} for k in keys],
                         index=index)
    return data, trace


def has(frame: pd.DataFrame, field: str) -> bool:
    """Whether a table frame has cells with this field (the cost table has none)."""
    return isinstance(frame.columns, pd.MultiIndex) and field in frame.columns.get_level_values(2)


def _paper_match(paper: pd.DataFrame, method: str, icl, **where) -> float:
    rows = paper[(paper["method"] == method)
                 & (paper["icl"].isna() | (icl is None) | (paper["icl"] == icl))]
    for key, value in where.items():
        rows = rows[rows[key] == value]
    return float(rows["value"].iloc[0]) if len(rows) else math.nan


def _paper(paper: pd.DataFrame, method: str, icl, **where) -> tuple[float, float]:
    """The paper's value for a cell and its independent baseline's (NaN when not reported)."""
    base = math.nan if method == "independent" else _paper_match(paper, "independent", None,
                                                                  **where)
    return _paper_match(paper, method, icl, **where), base


def _paper_only(paper: pd.DataFrame, ours: set[tuple]) -> list[tuple]:
    """(method, icl) pairs of the paper that no row of ours covers."""
    pairs = paper[["method", "icl"]].drop_duplicates().itertuples(index=False)
    return [(m, i) for m, i in pairs
            if not any(m == om and (i is None or oi is None or i == oi) for om, oi in ours)]


def _caption(part: pd.DataFrame, what: str, baseline: str, paper_tables: set[str]) -> str:
    parts = [what, f"Δ compares with {baseline}.", stats.CAPTION]
    if paper_tables:
        parts.append(PAPER_NOTE.format(tables=", ".join(sorted(paper_tables))))
    if (part["preset"] == "smoke").any():
        parts.insert(0, f"**{SMOKE_NOTE}**")
    return " ".join(parts)


def student_order(groups: pd.Series) -> list[str]:
    """Students in the order of their group (largest group first), as the config lists them."""
    order: list[str] = []
    for group in sorted(set(groups.dropna()), key=lambda g: -len(g.split("+"))):
        order += [s for s in group.split("+") if s not in order]
    return order


def row_labels(part: pd.DataFrame) -> list[str]:
    """Each record's row label: the method (and KD's teacher). Several configs of one folder with
    the same method, ICL and students (a sweep: cifar/lambda) are rows of their own, named by
    config, not seeds of one row."""
    labels = [method_label(m, t) for m, t in zip(part["method"], part["teacher"])]
    keys = list(zip(labels, part["icl"].map(repr), part["student"]))
    configs: dict[tuple, set] = {}
    for key, config in zip(keys, part["config"]):
        configs.setdefault(key, set()).add(config)
    swept = {k[:2] for k, c in configs.items() if len(c) > 1}
    return [f"{label} [{Path(config).name}]" if key[:2] in swept else label
            for label, key, config in zip(labels, keys, part["config"])]


def pretrain_tables(data: pd.DataFrame, paper: pd.DataFrame) -> list[Table]:
    data = fold_branches(data[data["stage"] == "pretrain"])
    tables = []
    for (preset, setting), part in data.groupby(["preset", "setting"], sort=True):
        part = part.assign(row=list(zip(row_labels(part), part["icl"])))
        students = [s for s in student_order(part["group"]) if s in set(part["student"])]
        students += sorted(set(part["student"]) - set(students))
        ref = paper[(paper["setting"] == setting) & (paper["task"] == "classification")]
        independent = part[part["method"] == "independent"]
        rows: dict[tuple, dict] = {}
        ours = set()
        for (label, icl), runs in part.groupby("row", sort=False):
            method, row = runs["method"].iloc[0], {}
            ours.add((method, icl))
            for student in students:
                mine = runs[runs["student"] == student]
                for metric, cell in (("top1", "top-1"), ("top5", "top-5")):
                    compare = metric == "top1" and method != "independent"
                    row |= _cell(student, cell, _values(mine, metric),
                                 _values(independent[independent["student"] == student], metric)
                                 if compare else None,
                                 _paper(ref, method, icl, backbone=student, metric=metric))
                if not mine.empty:
                    row |= best_cell(student, mine)
            if runs["group"].str.contains("+", regex=False).all():  # one student: no ensemble
                ens = runs[runs["metric"] == "ensemble_top1"].drop_duplicates("run_dir")
                row |= _cell("ensemble", "top-1", ens.sort_values("seed")["value"].tolist())
            rows[(label, icl)] = row
        for method, icl in _paper_only(ref, ours):
            row = {}
            for student in students:
                for metric, cell in (("top1", "top-1"), ("top5", "top-5")):
                    row |= _cell(student, cell, (), None,
                                 _paper(ref, method, icl, backbone=student, metric=metric))
            if row:
                rows[(method + PAPER_ONLY, icl)] = row
        frame, trace = _frame(rows, part, ["method", "ICL"], lambda k: row_order(*k),
                              [*students, "ensemble"], ["top-1", BEST, "top-5"])
        epochs = ", ".join(str(int(e)) for e in sorted(set(part["epochs"].dropna())))
        what = (f"Pre-training on {', '.join(sorted(set(part['dataset'])))} ({epochs} epochs): "
                "validation top-1/top-5 (%) of each student; ensemble: the mean of the students' "
                f"probabilities. {EPOCH_NOTE}")
        if part["method"].map(multi_branch).any():
            what += (" ONE, CLNN: the exported branch's (head's) top-1, under its architecture; "
                     "ensemble: their own ensemble of all branches.")
        sources = set(ref[ref["backbone"].isin(students)]["table"]) if has(frame, "paper") \
            else set()
        caption = _caption(part, what, "independent training of the same architecture in the "
                           "same setting", sources)
        tables.append(Table(f"pretrain_{slug(preset, setting)}",
                            f"Pre-training: {setting} ({preset} preset)", caption, frame, trace))
    return tables


def transfer_tables(data: pd.DataFrame, paper: pd.DataFrame) -> list[Table]:
    data = data[data["stage"] == "transfer"]
    data = data.assign(model=data["detector"].fillna(data["head"]).fillna(""),
                       protocol=data["protocol"].fillna(""))
    tables = []
    for (preset, protocol), part in data.groupby(["preset", "protocol"], sort=True):
        part = part.assign(row=list(zip(part["backbone"], part["method"], part["icl"],
                                        part["pretrain_setting"])))
        blocks = sorted(set(zip(part["backend"], part["model"], part["task"])),
                        key=lambda b: (BACKENDS.index(b[0]) if b[0] in BACKENDS else 9, b))
        ref = paper[paper["setting"] == protocol]
        rows: dict[tuple, dict] = {}
        for key, runs in part.groupby("row", sort=False):
            backbone, method, icl, pretrain_setting = key
            row = {}
            for backend, model, task in blocks:
                mine = runs[(runs["backend"] == backend) & (runs["model"] == model)]
                if mine.empty:
                    continue
                same = part[(part["backend"] == backend) & (part["model"] == model)
                            & (part["backbone"] == backbone) & (part["method"] == "independent")
                            & (part["pretrain_setting"] == pretrain_setting)]
                where = dict(backbone=backbone, task=task, detector=model)
                for metric, cell, compare in TRANSFER_CELLS.get(task, []):
                    row |= _cell(f"{backend} {model}", cell, _values(mine, metric),
                                 _values(same, metric) if compare and method != "independent"
                                 else None,
                                 _paper(ref, method, icl, metric=metric, **where))
            rows[key] = row
        ours = {(k[1], k[2]) for k in rows}
        for method, icl in _paper_only(ref, ours):
            for backbone in sorted(set(part["backbone"])):
                row = {}
                for backend, model, task in blocks:
                    where = dict(backbone=backbone, task=task, detector=model)
                    for metric, cell, _ in TRANSFER_CELLS.get(task, []):
                        row |= _cell(f"{backend} {model}", cell, (), None,
                                     _paper(ref, method, icl, metric=metric, **where))
                if row:
                    rows[(backbone, method + PAPER_ONLY, icl, "")] = row
        cells = list(dict.fromkeys(c for spec in TRANSFER_CELLS.values() for _, c, _ in spec))
        frame, trace = _frame(rows, part, ["backbone", "method", "ICL", "pretrain setting"],
                              lambda k: (k[0], row_order(k[1], k[2]), k[3]),
                              [f"{b} {m}" for b, m, _ in blocks], cells)
        what = (f"Transfer ({protocol} protocol) on {', '.join(sorted(set(part['dataset'])))}: "
                "box/mask AP on COCO's 0-100 scale (pycocotools), mIoU/mAcc in %. Rows: the "
                "backbone and how it was pre-trained (method, ICL, pre-training setting).")
        baseline = ("the same backbone pre-trained with independent training in the same "
                    "setting, fine-tuned with the same backend and model")
        if not has(frame, "delta") or frame.xs("delta", axis=1, level=2).isna().all().all():
            baseline += (" (none in these records: transfer the independent backbones too to "
                         "see whether a pre-training gain survives transfer)")
        sources = set(ref["table"]) if has(frame, "paper") else set()
        caption = _caption(part, what, baseline, sources)
        tables.append(Table(f"transfer_{slug(preset, protocol or 'unknown')}",
                            f"Transfer: {protocol} protocol ({preset} preset)", caption, frame,
                            trace, split=True))
    return tables


def device(devices, world_size) -> tuple[int, str]:
    """(GPU count, device name): GPUs only when the recorded devices are not CPU names."""
    names = list(devices) if isinstance(devices, (list, tuple)) else []
    if not names:
        return 0, "unknown"
    if all(CPU_NAME.search(n) for n in names):
        return 0, f"CPU ({names[0]})"
    return int(world_size or len(names)), names[0]


def cost_table(data: pd.DataFrame) -> Table:
    # Training runs only: a robustness record names the pre-training run it evaluated.
    data = data[data["stage"].isin(["pretrain", "transfer"])]
    runs = data.drop_duplicates("run_dir").sort_values(["stage", "preset", "config", "seed"])
    rows = []
    for r in runs.itertuples(index=False):
        gpus, name = device(r.devices, r.world_size)
        if r.stage == "pretrain":
            model = r.group or r.backbone
        else:  # a transfer run: the backbone and the pre-training run it came from
            seed = f" seed {r.pretrain_seed:.0f}" if pd.notna(r.pretrain_seed) else ""
            model = f"{r.backbone} ← {r.pretrain_config}{seed}"
        rows.append({"stage": r.stage, "config": r.config, "seed": r.seed, "model": model,
                     "wall_seconds": r.wall_seconds, "gpus": gpus, "device": name,
                     "processes": r.world_size, "images_per_second": r.images_per_second,
                     "gpu_hours": (r.wall_seconds or 0) * gpus / 3600, "run_dir": r.run_dir})
    frame = pd.DataFrame(rows)
    hours = frame["wall_seconds"].sum() / 3600
    caption = (f"{len(frame)} runs, {hours:.2f} h of wall time, {frame['gpu_hours'].sum():.2f} "
               "GPU-hours. GPUs: the process count when the recorded devices are GPUs, else 0 "
               "with the CPU named; images/s: training throughput as the run measured it.")
    return Table("cost", "Cost of each run", caption, frame, None)
