"""Fig. 4, robustness to noise: how much more test cross-entropy another method's network has
than KDCL-General's under Gaussian pixel noise N(0, δ²), δ = 0.00 ... 0.15.

Input: records of stage "robustness" (`python -m pretrain.robustness`, one per exported network
and δ, `metrics.loss` the mean test cross-entropy over its noise draws). Per (preset, config
folder, network, δ and seed): gap = loss(other method) − loss(KDCL-General), the two runs paired
by seed; over seeds, mean ± std and min/max. Against independent training and DML, as the paper.
The paper does not say whether its KDCL-General used ICL: each variant in the records gets its
own curves (with ICL, the full method, solid; without, dashed).
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from . import stats  # noqa: E402
from .tabulate import SMOKE_NOTE, Table, _frame, slug  # noqa: E402

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


def _variant(icl: bool) -> str:
    return "KDCL-General" + (" + ICL" if icl else "")


def _students(names) -> list[str]:
    # The paper's Fig. 4 network first.
    return sorted(set(names), key=lambda s: (s != "cifar_resnet32", s))


def _row(at: pd.DataFrame, gap: pd.DataFrame, icl: bool) -> tuple[dict, list[pd.DataFrame]]:
    """One row: each method's loss at one (network, δ) and its gaps to KDCL-General (ICL or
    not); and the records behind it."""
    row, frames = {}, []
    methods = [(_variant(icl), at[(at["method"] == REFERENCE) & (at["icl"] == icl)])]
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
        for student in _students(part["student"]):
            network = part[part["student"] == student]
            for icl in sorted(set(network["icl"]), reverse=True):  # with ICL first
                for delta, gap in network[network["icl"] == icl].groupby("delta", sort=True):
                    at = mine[(mine["student"] == student) & (mine["delta"] == delta)]
                    key = (student, icl, delta)
                    rows[key], frames = _row(at, gap, icl)
                    pieces += [(key, f) for f in frames]
        trace = pd.concat([f.assign(row=[k] * len(f)) for k, f in pieces if not f.empty],
                          ignore_index=True)
        cells = [_variant(True), _variant(False), *AGAINST.values(),
                 *(f"{a} − KDCL-General" for a in AGAINST.values())]
        frame, runs = _frame(rows, trace, ["network", "KDCL-General ICL", "δ"],
                             list(rows).index, ["loss", "gap"], cells)
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


def figures(data: pd.DataFrame, folder: Path) -> list[Path]:
    """One figure per (preset, setting) with gaps: a panel per network, a line per other method
    and KDCL-General variant, the mean over seeds with a ± std band."""
    spread = summary(gaps(data))
    paths = []
    for (preset, setting), part in spread.groupby(["preset", "setting"], sort=True):
        students = _students(part["student"])
        fig, axes = plt.subplots(1, len(students), figsize=(4.8 * len(students), 3.8),
                                 squeeze=False, sharey=True)
        for ax, student in zip(axes[0], students):
            mine = part[part["student"] == student]
            for colour, against in zip(("C0", "C1"), AGAINST):
                for icl in (True, False):
                    line = mine[(mine["against"] == against) & (mine["icl"] == icl)]
                    if line.empty:
                        continue
                    line = line.sort_values("delta")
                    ax.plot(line["delta"], line["mean"], color=colour, marker=".",
                            linestyle="-" if icl else "--",
                            label=f"{AGAINST[against]} − {_variant(icl)}")
                    if line["std"].notna().any():
                        ax.fill_between(line["delta"], line["mean"] - line["std"],
                                        line["mean"] + line["std"], color=colour, alpha=0.15)
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_title(student, fontsize=9)
            ax.set_xlabel("δ (noise std, 0-1 pixel scale)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel("test loss gap (other − KDCL-General)")
        seeds = int(part["n"].max())
        smoke = " (smoke: plumbing, not science)" if preset == "smoke" else ""
        band = "band: ± std over seeds" if seeds > 1 else "one seed: no band"
        fig.suptitle(f"Fig. 4: robustness to Gaussian pixel noise, {setting}{smoke}\n"
                     f"mean over {seeds} seed{'s' if seeds > 1 else ''}, {band}", fontsize=10)
        fig.tight_layout()
        path = folder / f"fig4_robustness_{slug(preset, setting)}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


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
