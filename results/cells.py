"""What every table is made of: the `Table`, the fields of one cell and the frame that holds
them. tabulate.py (per config folder, transfer, cost), layouts.py (the paper's layouts) and
fig4.py (Fig. 4's gaps) build on these; build.py puts the tables together.

Columns are (block, cell, field). Every cell has the fields mean, std, n; a cell compared with
a baseline adds delta, ci_low, ci_high, significant; a cell the paper reports adds paper and,
where the paper has the baseline too, paper_delta (the paper's own gain over its own baseline);
a best-epoch cell adds epoch_min and epoch_max (the epochs the best values come from).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pandas as pd

from . import stats

FIELDS = ["mean", "std", "n", "delta", "ci_low", "ci_high", "significant", "paper", "paper_delta",
          "epoch_min", "epoch_max", "min", "max"]
PAPER_ONLY = " (paper only)"  # a row label's suffix: the paper's numbers alone
BEST = "best-epoch top-1"
EPOCH_NOTE = ("top-1: the final epoch's (the table's number); best-epoch top-1: the highest "
              "validation top-1 of any epoch, with the epoch(s) it came from: optimistic, as the "
              "epoch is chosen on the evaluation set itself; – where the records predate it.")
SMOKE_NOTE = ("Smoke preset: these numbers prove the plumbing, not the science (a few epochs on "
              "generated data, on a CPU); do not rank methods by them.")


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

    @property
    def smoke(self) -> bool:
        return SMOKE_NOTE in self.caption


def slug(preset: str, setting: str) -> str:
    """A file stem for a (preset, setting): smoke, cifar, paper_imagenet_r18, ..."""
    name = setting if setting.split("/")[0] == preset else f"{preset}/{setting}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def values(frame: pd.DataFrame, metric: str) -> list[float]:
    """A metric's values in seed order (one record per seed)."""
    return frame[frame["metric"] == metric].sort_values("seed")["value"].tolist()


def seed_means(frame: pd.DataFrame, metric: str) -> list[float]:
    """One value per seed, in seed order: the mean over the frame's records of that seed (the
    students of one architecture in a run: ONE's branches, Table 5's ResNet-18s)."""
    part = frame[frame["metric"] == metric]
    return part.groupby("seed")["value"].mean().sort_index().tolist()


def cell(block: str, name: str, values=(), baseline=None, paper=(math.nan, math.nan)) -> dict:
    """The fields of one cell. `baseline` None: no comparison; []: a comparison without data.
    `paper`: the paper's value and its independent baseline's (NaN where it has none)."""
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
    return {(block, name, field): value for field, value in out.items()}


def best_cell(block: str, frame: pd.DataFrame) -> dict:
    """The best epoch's top-1 (metric best_top1, per seed the mean over the frame's students)
    and the range of epochs it came from. Always present, NaN for records without it."""
    best = seed_means(frame, "best_top1")
    out = {(block, BEST, f): math.nan for f in ("mean", "std", "n")}
    out |= cell(block, BEST, best)
    epochs = frame[frame["metric"] == "best_epoch"]["value"]
    if len(best) and len(epochs):
        out |= {(block, BEST, "epoch_min"): epochs.min(), (block, BEST, "epoch_max"): epochs.max()}
    return out


def frame(rows: dict, part: pd.DataFrame, names: list[str], order, blocks: list[str],
          cells: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A table's frame from `rows` (row key -> cell fields), rows sorted by `order`, columns in
    the order of `blocks` and `cells`; and the configs and runs behind each row (`part`'s records,
    whose column "row" holds their row key)."""
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
