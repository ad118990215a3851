"""PNG figures: Δ bar charts with 95 % CI error bars (one per table with a Δ column),
validation top-1 curves over epochs (one per pre-training setting, one panel per student) and
Fig. 4's loss gaps under pixel noise (from fig4.summary)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import fig4  # noqa: E402
from .cells import SMOKE_NOTE, Table, has, slug  # noqa: E402
from .rows import row_order, student_order  # noqa: E402


def _row_text(key) -> str:
    parts: list[str] = []
    for value in key:
        if value is True:
            parts[-1] += " + ICL"
        elif isinstance(value, str) and value:
            parts.append(value)
    return " · ".join(parts)


def delta_figure(table: Table, path: Path) -> bool:
    """Grouped bars of Δ per row and compared cell; False when the table has no Δ to draw."""
    data = table.data
    if not has(data, "delta"):
        return False
    cells = [(b, c) for b, c, f in data.columns if f == "delta"]
    rows = [k for k in data.index if any(pd.notna(data.loc[k, (b, c, "delta")]) for b, c in cells)]
    if not rows:
        return False
    width = 0.8 / len(cells)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(rows) * len(cells) + 2), 4))
    x = np.arange(len(rows))
    for i, (block, cell) in enumerate(cells):
        delta = data.loc[rows, (block, cell, "delta")].astype(float).to_numpy()
        half = ((data.loc[rows, (block, cell, "ci_high")] - data.loc[rows, (block, cell, "ci_low")])
                .astype(float).to_numpy() / 2)
        ax.bar(x - 0.4 + (i + 0.5) * width, delta, width, label=f"{block} {cell}",
               yerr=half, capsize=3)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, [_row_text(k) for k in rows], rotation=30, ha="right")
    ax.set_ylabel(f"Δ vs {table.baseline} (points)")
    has_ci = data.xs("ci_low", axis=1, level=2).notna().any().any()
    note = "error bars: 95 % CI (Welch)" if has_ci else "no error bars: fewer than 2 seeds"
    smoke = "\n" + SMOKE_NOTE.split(";")[0] if SMOKE_NOTE in table.caption else ""
    ax.set_title(f"{table.title}\n{note}{smoke}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def curve_figure(curves: pd.DataFrame, groups: pd.Series, title: str, path: Path) -> None:
    """One panel per student (then the ensemble); one line per method, mean over seeds with
    a ± std band when there are several."""
    students = [s for s in student_order(groups) if s in set(curves["student"])]
    panels = students + sorted(set(curves["student"]) - set(students) - {"ensemble"}) + \
        (["ensemble"] if "ensemble" in set(curves["student"]) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False,
                             sharey=True)
    lines = sorted(set(zip(curves["method"], curves["icl"])), key=lambda k: row_order(*k))
    for ax, student in zip(axes[0], panels):
        for method, icl in lines:
            mine = curves[(curves["student"] == student) & (curves["method"] == method)
                          & (curves["icl"].map(lambda v: v is icl))]
            if mine.empty:
                continue
            stats = mine.groupby("epoch")["top1"].agg(["mean", "std"])
            label = method + (" + ICL" if icl else "")
            ax.plot(stats.index, stats["mean"], marker=".", label=label)
            if stats["std"].notna().any():
                ax.fill_between(stats.index, stats["mean"] - stats["std"],
                                stats["mean"] + stats["std"], alpha=0.2)
        ax.set_title(student, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("val top-1 (%)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fig4_figures(data: pd.DataFrame, folder: Path) -> list[Path]:
    """One figure per (preset, setting) with gaps: a panel per network, a line per other method
    and KDCL-General variant, the mean over seeds with a ± std band."""
    spread = fig4.summary(fig4.gaps(data))
    paths = []
    for (preset, setting), part in spread.groupby(["preset", "setting"], sort=True):
        students = fig4.students(part["student"])
        fig, axes = plt.subplots(1, len(students), figsize=(4.8 * len(students), 3.8),
                                 squeeze=False, sharey=True)
        for ax, student in zip(axes[0], students):
            mine = part[part["student"] == student]
            for colour, against in zip(("C0", "C1"), fig4.AGAINST):
                for icl in (True, False):
                    line = mine[(mine["against"] == against) & (mine["icl"] == icl)]
                    if line.empty:
                        continue
                    line = line.sort_values("delta")
                    ax.plot(line["delta"], line["mean"], color=colour, marker=".",
                            linestyle="-" if icl else "--",
                            label=f"{fig4.AGAINST[against]} − {fig4.variant(icl)}")
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


def draw(tables: list[Table], data: pd.DataFrame, curves: pd.DataFrame, folder: Path) -> list[Path]:
    paths = fig4_figures(data, folder)
    for table in tables:
        path = folder / f"delta_{table.name}.png"
        if delta_figure(table, path):
            paths.append(path)
    for (preset, setting), part in curves.groupby(["preset", "setting"], sort=True):
        groups = data[(data["stage"] == "pretrain") & (data["setting"] == setting)]["group"]
        path = folder / f"curves_pretrain_{slug(preset, setting)}.png"
        note = " (smoke: plumbing, not science)" if preset == "smoke" else ""
        curve_figure(part, groups, f"Validation top-1 per epoch: {setting}{note}", path)
        paths.append(path)
    return paths

