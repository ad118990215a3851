"""Fig. 4, robustness to noise: how much more test cross-entropy another method's network has
than KDCL-General's under Gaussian pixel noise N(0, δ²), δ = 0.00 ... 0.15.

Input: records of stage "robustness" (`python -m pretrain.robustness`, one per exported network
and δ, `metrics.loss` the mean test cross-entropy over its noise draws). Per (preset, config
folder, network, δ and seed): gap = loss(other method) − loss(KDCL-General), the two runs paired
by seed; over seeds, mean ± std and min/max. Against independent training and DML, as the paper.
The paper does not say whether its KDCL-General used ICL: each variant in the records gets its
own curves (with ICL, the full method, solid; without, dashed).

This module makes the numbers (gaps, summary) and the table; plots.py draws the figure from
`summary`.
"""
from __future__ import annotations

import math

import pandas as pd

from . import cells, stats
from .cells import SMOKE_NOTE, Table, slug

REFERENCE = "kdcl_general"
AGAINST = {"independent": "independent", "dml": "DML"}
KEYS = ["preset", "setting", "student"]
PAPER_FIG4 = ("The paper's Fig. 4 (KDCL-General, ResNet-32, CIFAR-100, the mean of 10 tests per "
              "point) shows the gap growing with δ, to about 4 against Vanilla and about 2 "
              "against DML at δ = 0.15 (read off the plot; not in paper_kdcl.csv).")


def losses(data: pd.DataFrame) -> pd.DataFrame:
    """One loss per (preset, setting, student, method, ICL, seed, δ); δ rounded so that the same
    level from two evaluations pairs up."""
    part = data[(data["stage"] == "robustness") & (data["metric"] == "loss")]
    part = part[pd.to_numeric(part["delta"], errors="coerce").notna()]
    columns = [*KEYS, "method", "icl", "seed", "delta", "loss", "config", "run_dir"]
    if part.empty:
        return pd.DataFrame(columns=columns)
    part = part.assign(delta=part["delta"].astype(float).round(6), loss=part["value"],
                       icl=part["icl"].map(lambda v: v is True))
    keys = [*KEYS, "method", "icl", "seed", "delta"]
    return part.groupby(keys, as_index=False).agg(loss=("loss", "mean"), config=("config", "first"),
                                                 run_dir=("run_dir", "first"))[columns]


def gaps(data: pd.DataFrame) -> pd.DataFrame:
    """Per seed: gap = loss(other) − loss(KDCL-General) at the same δ, for each KDCL-General
    variant (icl) and each other method (against), seeds paired."""
    loss = losses(data)
    columns = [*KEYS, "icl", "against", "delta", "seed", "gap"]
    out = []
    for key, part in loss.groupby(KEYS, sort=True):
        for icl, ref in part[part["method"] == REFERENCE].groupby("icl"):
            for against in AGAINST:
                other = part[part["method"] == against].groupby(
                    ["seed", "delta"], as_index=False)["loss"].mean()
                both = ref.merge(other, on=["seed", "delta"], suffixes=("_ref", "_other"))
                if both.empty:
                    continue
                out.append(pd.DataFrame({**dict(zip(KEYS, key)), "icl": icl, "against": against,
                                         "delta": both["delta"], "seed": both["seed"],
                                         "gap": both["loss_other"] - both["loss_ref"]}))
    return pd.concat(out, ignore_index=True)[columns] if out else pd.DataFrame(columns=columns)


def summary(gap: pd.DataFrame) -> pd.DataFrame:
    """Over seeds: mean, sample std (NaN for one seed), min, max and n of each gap."""
    keys = [*KEYS, "icl", "against", "delta"]
    if gap.empty:
        return pd.DataFrame(columns=[*keys, "mean", "std", "min", "max", "n"])
    return gap.groupby(keys, as_index=False).agg(
        mean=("gap", "mean"), std=("gap", "std"), min=("gap", "min"), max=("gap", "max"),
        n=("gap", "count")).sort_values(keys, ignore_index=True)


def variant(icl: bool) -> str:
    return "KDCL-General" + (" + ICL" if icl else "")


def students(names) -> list[str]:
    # The paper's Fig. 4 network first.
    return sorted(set(names), key=lambda s: (s != "cifar_resnet32", s))


def _row(at: pd.DataFrame, gap: pd.DataFrame, icl: bool) -> tuple[dict, list[pd.DataFrame]]:
    """One row: each method's loss at one (network, δ) and its gaps to KDCL-General (ICL or
    not); and the records behind it."""
    row, frames = {}, []
    methods = [(variant(icl), at[(at["method"] == REFERENCE) & (at["icl"] == icl)])]
    methods += [(label, at[at["method"] == m]) for m, label in AGAINST.items()]
    for name, frame in methods:
        values = frame.groupby("seed")["loss"].mean()
        if len(values):
            s = stats.Summary.of(values)
            row |= {("loss", name, "mean"): s.mean, ("loss", name, "n"): s.n,
                    ("loss", name, "std"): math.nan if s.std is None else s.std}
        frames.append(frame)
    for r in gap.itertuples(index=False):
        row |= {("gap", f"{AGAINST[r.against]} − KDCL-General", f): getattr(r, f)
                for f in ("mean", "std", "min", "max", "n")}
    return row, frames


def tables(data: pd.DataFrame) -> list[Table]:
    loss, spread = losses(data), summary(gaps(data))
    out = []
    for (preset, setting), part in spread.groupby(["preset", "setting"], sort=True):
        mine = loss[(loss["preset"] == preset) & (loss["setting"] == setting)]
        rows, pieces = {}, []
        for student in students(part["student"]):
            network = part[part["student"] == student]
            for icl in sorted(set(network["icl"]), reverse=True):  # with ICL first
                for delta, gap in network[network["icl"] == icl].groupby("delta", sort=True):
                    at = mine[(mine["student"] == student) & (mine["delta"] == delta)]
                    key = (student, icl, delta)
                    rows[key], frames = _row(at, gap, icl)
                    pieces += [(key, f) for f in frames]
        trace = pd.concat([f.assign(row=[k] * len(f)) for k, f in pieces if not f.empty],
                          ignore_index=True)
        names = [variant(True), variant(False), *AGAINST.values(),
                 *(f"{a} − KDCL-General" for a in AGAINST.values())]
        frame, runs = cells.frame(rows, trace, ["network", "KDCL-General ICL", "δ"],
                                  list(rows).index, ["loss", "gap"], names)
        caption = (f"Robustness to Gaussian pixel noise N(0, δ²) ({setting}): loss: the mean "
                   "test cross-entropy of each method's network (mean ± std over seeds); gap: the "
                   "other method's loss minus KDCL-General's, per seed (runs paired by seed), "
                   "mean ± std over seeds (min and max in the CSV). A positive gap: KDCL-General "
                   f"is the more robust. {PAPER_FIG4}")
        if preset == "smoke":
            caption = f"**{SMOKE_NOTE}** {caption}"
        out.append(Table(f"fig4_robustness_{slug(preset, setting)}",
                         f"Fig. 4 (as a table): robustness to noise, {setting} ({preset} preset)",
                         caption, frame, runs, headline=False))
    return out


def notes(data: pd.DataFrame) -> list[str]:
    """Why Fig. 4 is not drawn (or drawn in part), for the log and results/README.md."""
    loss = losses(data)
    if loss.empty:
        return ["Fig. 4 (robustness to noise): not drawn, no records of stage robustness "
                "(`python -m pretrain.robustness` writes them from exported networks)"]
    drawn = summary(gaps(data))
    out = []
    for (preset, setting), part in loss.groupby(["preset", "setting"], sort=True):
        found = set(part["method"])
        have = drawn[(drawn["preset"] == preset) & (drawn["setting"] == setting)]
        where = f"Fig. 4 for {setting} ({preset} preset)"
        if have.empty:
            out.append(f"{where}: not drawn, it needs robustness records of {REFERENCE} and of "
                       f"{' or '.join(AGAINST)} for the same seeds; found "
                       f"{', '.join(sorted(found))}")
        elif (missing := [a for a in AGAINST if a not in set(have["against"])]):
            out.append(f"{where}: no gap against {', '.join(missing)} (no records of the same "
                       "seeds)")
    return out
