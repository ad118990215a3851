"""The tables of one config folder or protocol, as frames of raw numbers (cells.py says what a
cell holds; formatting them is render.py's job):

- pre-training, one per (preset, setting), laid out like the paper's Tables 2, 4 and 7;
- transfer, one per (preset, protocol), like Table 8, one column block per (backend, model), in
  the order of the backend registry (transfer/backends);
- cost, one row per run.

The paper's own layouts across folders are layouts.py's, Fig. 4's gaps fig4.py's; build.py puts
them all together.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from transfer.backends import REGISTRY  # standard library only: no torch, no framework

from . import cells, stats
from .cells import EPOCH_NOTE, PAPER_ONLY, SMOKE_NOTE, Table, has, slug
from .rows import PAPER_VARIANT, fold_branches, multi_branch, row_labels, row_order, student_order

PAPER_CSV = Path(__file__).with_name("paper_kdcl.csv")
# Transfer cells per task: (metric, label, compared with independent pre-training).
TRANSFER_CELLS = {
    "detection": [("bbox_AP", "box AP", True), ("bbox_AP50", "box AP50", False),
                  ("bbox_AP75", "box AP75", False)],
    "instance_segmentation": [("bbox_AP", "box AP", True), ("bbox_AP50", "box AP50", False),
                              ("bbox_AP75", "box AP75", False), ("segm_AP", "mask AP", True),
                              ("segm_AP50", "mask AP50", False), ("segm_AP75", "mask AP75", False)],
    "semantic_segmentation": [("mIoU", "mIoU", True), ("mAcc", "mAcc", False)],
}
PAPER_NOTE = ("paper: the value Guo et al. (CVPR 2020) report for the same setting, method and "
              "network ({tables}); paper Δ: their gain over their own independent baseline; "
              f"{PAPER_VARIANT}: a KDCL variant the paper does not name.")
# platform.processor()/machine() names, which the stages record when no CUDA device is used.
CPU_NAME = re.compile(r"^(x86_64|amd64|i[3-6]86|aarch64|arm64|armv\w+|ppc64le|s390x|riscv64|cpu)$"
                      r"|family", re.IGNORECASE)


def load_paper(path: Path = PAPER_CSV) -> pd.DataFrame:
    paper = pd.read_csv(path, comment="#", keep_default_na=False, dtype=str)
    paper["icl"] = paper["icl"].map({"": None, "true": True, "false": False})
    paper["value"] = paper["value"].astype(float)
    return paper


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
                for metric, name in (("top1", "top-1"), ("top5", "top-5")):
                    compare = metric == "top1" and method != "independent"
                    row |= cells.cell(student, name, cells.values(mine, metric),
                                      cells.values(independent[independent["student"] == student],
                                                   metric) if compare else None,
                                      _paper(ref, method, icl, backbone=student, metric=metric))
                if not mine.empty:
                    row |= cells.best_cell(student, mine)
            if runs["group"].str.contains("+", regex=False).all():  # one student: no ensemble
                ens = runs[runs["metric"] == "ensemble_top1"].drop_duplicates("run_dir")
                row |= cells.cell("ensemble", "top-1", ens.sort_values("seed")["value"].tolist())
            rows[(label, icl)] = row
        for method, icl in _paper_only(ref, ours):
            row = {}
            for student in students:
                for metric, name in (("top1", "top-1"), ("top5", "top-5")):
                    row |= cells.cell(student, name, (), None,
                                      _paper(ref, method, icl, backbone=student, metric=metric))
            if row:
                rows[(method + PAPER_ONLY, icl)] = row
        frame, trace = cells.frame(rows, part, ["method", "ICL"], lambda k: row_order(*k),
                                   [*students, "ensemble"], ["top-1", cells.BEST, "top-5"])
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


def transfer_values(frame: pd.DataFrame, metric: str) -> list[float]:
    """A transfer cell's replicates: with backbones of several pre-training seeds, one value
    per pre-training seed (the mean of its fine-tunings): the interval is then the spread
    between backbones, which is what a pre-training method is judged by, and fine-tuning noise
    is averaged within each. With one pre-training seed, its fine-tuning seeds are the
    replicates: the interval covers fine-tuning noise only."""
    part = frame[frame["metric"] == metric]
    if part["pretrain_seed"].nunique() > 1:
        return part.groupby("pretrain_seed")["value"].mean().sort_index().tolist()
    return part.sort_values("seed")["value"].tolist()


def seeds_note(part: pd.DataFrame) -> str:
    """Which pre-training and fine-tuning seeds the cells pool, and how the interval treats
    them."""
    def listed(column: str) -> str:
        values = sorted({int(v) for v in part[column].dropna()})
        return ", ".join(map(str, values)) or "?"

    several = part["pretrain_seed"].nunique() > 1
    return (f"Seeds: pre-training {listed('pretrain_seed')}, fine-tuning {listed('seed')}. "
            + ("n counts pre-training seeds: each backbone's fine-tunings are averaged first, "
               "so mean ± std and the interval are over backbones." if several else
               "n counts fine-tuning seeds of one backbone per row: the interval covers "
               "fine-tuning noise only, not the pre-training's (add seeds: bash run_all.sh "
               "--seeds 0 1 2)."))


def transfer_tables(data: pd.DataFrame, paper: pd.DataFrame) -> list[Table]:
    order = [entry.name for entry in REGISTRY]  # the backends' order in plans and tables
    data = data[data["stage"] == "transfer"]
    data = data.assign(model=data["detector"].fillna(data["head"]).fillna(""),
                       protocol=data["protocol"].fillna(""))
    tables = []
    for (preset, protocol), part in data.groupby(["preset", "protocol"], sort=True):
        part = part.assign(row=list(zip(part["backbone"], part["method"], part["icl"],
                                        part["pretrain_setting"])))
        blocks = sorted(set(zip(part["backend"], part["model"], part["task"])),
                        key=lambda b: (order.index(b[0]) if b[0] in order else len(order), b))
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
                for metric, name, compare in TRANSFER_CELLS.get(task, []):
                    row |= cells.cell(f"{backend} {model}", name, transfer_values(mine, metric),
                                      transfer_values(same, metric)
                                      if compare and method != "independent" else None,
                                      _paper(ref, method, icl, metric=metric, **where))
            rows[key] = row
        ours = {(k[1], k[2]) for k in rows}
        for method, icl in _paper_only(ref, ours):
            for backbone in sorted(set(part["backbone"])):
                row = {}
                for backend, model, task in blocks:
                    where = dict(backbone=backbone, task=task, detector=model)
                    for metric, name, _ in TRANSFER_CELLS.get(task, []):
                        row |= cells.cell(f"{backend} {model}", name, (), None,
                                          _paper(ref, method, icl, metric=metric, **where))
                if row:
                    rows[(backbone, method + PAPER_ONLY, icl, "")] = row
        names = list(dict.fromkeys(c for spec in TRANSFER_CELLS.values() for _, c, _ in spec))
        frame, trace = cells.frame(rows, part, ["backbone", "method", "ICL", "pretrain setting"],
                                   lambda k: (k[0], row_order(k[1], k[2]), k[3]),
                                   [f"{b} {m}" for b, m, _ in blocks], names)
        what = (f"Transfer ({protocol} protocol) on {', '.join(sorted(set(part['dataset'])))}: "
                "box/mask AP on COCO's 0-100 scale (pycocotools), mIoU/mAcc in %. Rows: the "
                "backbone and how it was pre-trained (method, ICL, pre-training setting).")
        baseline = ("the same backbone pre-trained with independent training in the same "
                    "setting, fine-tuned with the same backend and model")
        if not has(frame, "delta") or frame.xs("delta", axis=1, level=2).isna().all().all():
            baseline += (" (none in these records: transfer the independent backbones too to "
                         "see whether a pre-training gain survives transfer)")
        sources = set(ref["table"]) if has(frame, "paper") else set()
        caption = _caption(part, f"{what} {seeds_note(part)}", baseline, sources)
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
