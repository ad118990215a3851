"""The figures, each as PNG and PDF (style.py: sizes, fonts, one colour per method):

- delta_<table>: Δ of every table with a Δ column, a bar per row with the table's Welch 95 % CI
  as error bars (n >= 2 seeds on both sides), * where the table marks it significant;
- curves_pretrain_<setting>: validation top-1 per epoch, a panel per architecture (then the
  ensemble), a line per method, mean over seeds with a ± std band; ONE's other branches and
  CLNN's other heads as thin lines of their method's colour in their network's panel;
- fig4_robustness_<setting>: Fig. 4 as the paper draws it, the test loss gap against δ, a line
  against Vanilla and one against DML, a panel per network (the paper's ResNet-32 first).

A figure's title is short; what its bars or bands are, and the smoke preset's caveat, are its
subtitle.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, MultipleLocator

from pretrain import registry  # standard library only: no torch

from . import fig4, style
from .cells import Table, has, slug
from .rows import PAPER_VARIANT, method_of, row_order, student_order

SMOKE = "Smoke preset: it proves the plumbing, not the science."
ERROR_BARS = {"elinewidth": 0.8, "capsize": 2, "ecolor": "0.25"}


def _seeds(counts) -> str:
    counts = sorted({int(n) for n in counts if not pd.isna(n)})
    if not counts:
        return "no seeds"
    text = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"{text} seed{'s' if counts[-1] > 1 else ''}"


def _number(value) -> float:
    return math.nan if value is None or pd.isna(value) else float(value)


def _subtitle(*parts: str, smoke: bool = False) -> str:
    return "\n".join([p for p in parts if p] + ([SMOKE] if smoke else []))


# ----------------------------------------------------------------------------------- Δ bars
def _row_method(table: Table, key: tuple, configs) -> str | None:
    """The registry method a table row stands for: its method label (kdcl_general, kd ← r50),
    else the method every config behind it is named after (Table 3's "ONE (3 branches)");
    None for rows of several methods or none (Table 1's teachers, Table 9's networks)."""
    names = list(table.data.index.names)
    if "method" in names:
        method = method_of(str(key[names.index("method")]))
        if method in registry.NAMES or method == PAPER_VARIANT:
            return method
    if not isinstance(configs, str):
        return None
    entries = [registry.of_config(Path(c).name) for c in configs.split("; ")]
    found = {e.name if e else None for e in entries}
    return found.pop() if len(found) == 1 and None not in found else None


def _row_text(key: tuple, names: list[str], shown: set[str]) -> str:
    """A row's legend entry: the levels in `shown`, the method by its registry label."""
    parts: list[str] = []
    for name, value in zip(names, key):
        if name not in shown:
            continue
        if name == "ICL":
            if value is True and parts:
                parts[-1] += " + ICL"
        elif name == "method":
            parts.append(style.method_text(str(value)))
        elif isinstance(value, str) and value:
            parts.append(value)
    return " · ".join(parts)


def _bars(table: Table) -> tuple[list[dict], list[str], list[str]]:
    """The rows with a Δ, each with its panel, legend entry, colour and hatch; the levels that
    make the panels; the levels the same for every bar (said once, in the subtitle)."""
    data = table.data
    groups = [(b, c) for b, c, f in data.columns if f == "delta"]
    index = list(data.index)  # Python objects (a MultiIndex gives numpy booleans)
    names = list(data.index.names)
    configs = table.trace["configs"].tolist() if table.trace is not None else [None] * len(index)
    bars = [{"at": i, "key": key, "method": _row_method(table, key, configs[i])}
            for i, key in enumerate(index)
            if any(pd.notna(data.iloc[i][(b, c, "delta")]) for b, c in groups)]
    by_method = "method" in names and all(b["method"] is not None for b in bars)
    varying = [n for n in names if len({b["key"][names.index(n)] for b in bars}) > 1]
    panels = [n for n in varying if n not in ("method", "ICL")] if by_method else []
    shown = ({"method", "ICL"} | set(varying)) - set(panels) if by_method else \
        set(varying) or {names[0]}
    for b in bars:
        b["panel"] = tuple(b["key"][names.index(n)] for n in panels)
        b["label"] = _row_text(b["key"], names, shown)
        b["icl"] = b["key"][names.index("ICL")] if "ICL" in names else None
    labels = list(dict.fromkeys((b["label"], b["icl"]) for b in bars))
    if by_method:
        colour = {(b["label"], b["icl"]): style.colour(b["method"]) for b in bars}
        variant = style.variants(labels, colour.get)
    else:  # rows that are not one method each: greys, hatched past the third
        colour = {k: style.NEUTRAL[i % len(style.NEUTRAL)] for i, k in enumerate(labels)}
        variant = {k: i // len(style.NEUTRAL) for i, k in enumerate(labels)}
    for b in bars:
        key = (b["label"], b["icl"])
        b["colour"] = colour[key]
        b["hatch"] = style.HATCHES[variant[key] % len(style.HATCHES)]
    constant = [f"{n} {bars[0]['key'][names.index(n)]}" for n in names
                if n not in varying and n not in ("method", "ICL") and bars
                and isinstance(bars[0]["key"][names.index(n)], str)]
    return bars, panels, constant


def _group_text(block: str, cell: str, same_cell: bool) -> str:
    """A group's tick label; a long one a word a line, so that the groups stay narrow."""
    text = block if same_cell else f"{block} {cell}"
    return text if len(text) <= 12 else "\n".join([*block.split(" "), *([] if same_cell
                                                                         else [cell])])


def _fit_ticks(fig, axes, one_line: list[str], angle: float = 30) -> None:
    """The groups' labels side by side where they fit; where two would overlap (many groups:
    every backend's detectors), each on one line, turned by `angle`, the figure taller by what
    they then need, so the panels keep their height."""
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()  # the constrained layout places the axes, and so the labels

    def overlap(ax) -> bool:
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels()]
        return any(a.x1 > b.x0 for a, b in zip(boxes, boxes[1:]))

    if not any(overlap(ax) for ax in axes):
        return
    before = max(t.get_window_extent(renderer).height for ax in axes
                 for t in ax.get_xticklabels())
    for ax in axes:
        ax.set_xticks(ax.get_xticks(), one_line, rotation=angle, ha="right",
                      rotation_mode="anchor")
    after = max(t.get_window_extent(renderer).height for ax in axes
                for t in ax.get_xticklabels())
    width, height = fig.get_size_inches()
    fig.set_size_inches(width, height + max(0.0, after - before) / fig.dpi)


@style.styled
def delta_figure(table: Table):
    """Grouped bars of Δ (a group per compared cell, a bar per row); None when the table has no
    Δ to draw. Rows of several backbones or pairs (transfer, Table 4) get a panel each."""
    data = table.data
    if not has(data, "delta"):
        return None
    bars, levels, constant = _bars(table)
    if not bars:
        return None
    groups = [(b, c) for b, c, f in data.columns if f == "delta"]
    panels: dict[tuple, list[dict]] = {}
    for bar in bars:
        panels.setdefault(bar["panel"], []).append(bar)
    same_cell = len({c for _, c in groups}) == 1
    cols = min(len(panels), 3)
    rows_ = math.ceil(len(panels) / cols)
    per_group = 0.2 * max(len(p) for p in panels.values()) + 0.3  # inches, at most
    width = min(style.PAGE, max(style.COLUMN, 0.7 + cols * (0.3 + per_group * len(groups))))
    fig, axes = style.figure(width, 0.4 + 1.9 * rows_, rows_, cols, sharey=True)
    handles: dict[str, object] = {}
    for ax, (panel, members) in zip(axes.flat, panels.items()):
        x = np.arange(len(groups))
        # Per group only the rows with a Δ there, side by side and centred on the group.
        present = [[bar for bar in members if pd.notna(data.iloc[bar["at"]][(b, c, "delta")])]
                   for b, c in groups]
        step = 0.8 / max(len(p) for p in present)
        for g, ((b, c), drawn) in enumerate(zip(groups, present)):
            for j, bar in enumerate(drawn):
                row = data.iloc[bar["at"]]
                delta, low, high = (_number(row.get((b, c, f))) for f in ("delta", "ci_low",
                                                                          "ci_high"))
                err = None if math.isnan(low) else [[delta - low], [high - delta]]
                where = x[g] + (j - (len(drawn) - 1) / 2) * step
                made = ax.bar(where, delta, step * 0.9, color=bar["colour"], hatch=bar["hatch"],
                              edgecolor="white" if bar["hatch"] else bar["colour"], linewidth=0,
                              yerr=err, error_kw=ERROR_BARS)
                handles.setdefault(bar["label"], made)
                if row.get((b, c, "significant")) is True:  # the table's *
                    up = delta >= 0
                    ax.annotate("*", (where, high if up else low), xytext=(0, 1 if up else -8),
                                textcoords="offset points", ha="center",
                                fontsize=style.TEXT_SIZE)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(x, [_group_text(b, c, same_cell) for b, c in groups])
        ax.grid(axis="x", visible=False)
        ax.margins(y=0.12)
        if levels:
            ax.set_title(style.wrap(" · ".join(str(v) for v in panel if isinstance(v, str) and v),
                                    width / cols, style.TEXT_SIZE))
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"Δ {groups[0][1]} (points)" if same_cell else "Δ (points)")
    _fit_ticks(fig, axes.flat[:len(panels)],
               [b if same_cell else f"{b} {c}" for b, c in groups])
    style.legend(fig, list(handles.values()), list(handles))
    with_ci = data.xs("ci_low", axis=1, level=2).notna().to_numpy().any()
    n = data.xs("n", axis=1, level=2).to_numpy().ravel()
    baseline = table.baseline
    if baseline == registry.BASELINE:
        baseline = f"{style.method_text(baseline)} ({baseline} training)"
    interval = ("error bars: Welch 95 % CI, as the table (*: it excludes 0)" if with_ci
                else "no error bars: a CI needs 2 seeds on both sides")
    style.heading(fig, table.title.replace(" (paper layout)", ""), _subtitle("; ".join(
        [f"Δ vs {baseline}", *constant, _seeds(n), interval]), smoke=table.smoke))
    return fig


# ------------------------------------------------------------------------- learning curves
def _panels(curves: pd.DataFrame, groups: pd.Series) -> list[str]:
    """Architectures in the order the config lists its students, then the ensemble."""
    owner = dict(zip(curves["student"], curves["arch"]))
    archs = set(curves["arch"]) - {"ensemble"}
    order = [owner[s] for s in student_order(groups) if s in owner]
    order = [a for a in dict.fromkeys(order) if a in archs] + sorted(archs - set(order))
    return order + (["ensemble"] if "ensemble" in set(curves["arch"]) else [])


def _band(ax, per_seed: pd.DataFrame, colour: str, linestyle: str, label: str):
    """Mean over seeds, ± std where n >= 2 (per_seed: index epoch, a column per seed)."""
    mean = per_seed.mean(axis=1)
    std = per_seed.std(axis=1, ddof=1)
    line, = ax.plot(mean.index, mean, color=colour, linestyle=linestyle, marker="o",
                    label=label)
    if (per_seed.notna().sum(axis=1) >= 2).any():
        ax.fill_between(mean.index, mean - std, mean + std, color=colour, alpha=0.18,
                        linewidth=0)
    return line


@style.styled
def curve_figure(curves: pd.DataFrame, groups: pd.Series, title: str, smoke: bool = False):
    """A panel per architecture, then the ensemble; a line per method (and ICL variant)."""
    panels = _panels(curves, groups)
    keys = sorted(set(zip(curves["method"], curves["icl"].map(lambda v: v is True))),
                  key=lambda k: row_order(*k))
    variant = style.variants(keys, lambda k: style.colour(method_of(k[0])))
    cols = min(len(panels), 3)
    rows_ = math.ceil(len(panels) / cols)
    width = style.COLUMN if cols == 1 else style.PAGE * (0.68 if cols == 2 else 1)
    fig, axes = style.figure(width, 0.5 + 1.75 * rows_, rows_, cols, sharey=True)
    handles: dict[tuple, object] = {}
    thin = None
    for ax, arch in zip(axes.flat, panels):
        for key in keys:
            method, icl = key
            mine = curves[(curves["arch"] == arch) & (curves["method"] == method)
                          & (curves["icl"].map(lambda v: v is True) == icl)]
            if mine.empty:
                continue
            colour = style.colour(method_of(method))
            linestyle = style.LINES[variant[key] % len(style.LINES)]
            main = mine[mine["main"].astype(bool)]
            per_seed = main.groupby(["epoch", "seed"])["top1"].mean().unstack("seed")
            handles[key] = _band(ax, per_seed, colour, linestyle, style.method_text(*key))
            # The other outputs of one network (ONE's branches, CLNN's heads) or of one
            # architecture (Table 5's ResNet-18s), each as a thin line: mean over seeds.
            students = sorted(set(mine["student"]))
            if len(students) > 1:
                for student in students:
                    one = mine[mine["student"] == student]
                    if one["main"].all() and len(set(main["student"])) == 1:
                        continue  # the thick line already
                    mean = one.groupby("epoch")["top1"].mean()
                    thin, = ax.plot(mean.index, mean, color=colour, linestyle=linestyle,
                                    linewidth=0.6, alpha=0.6)
        ax.set_title(arch)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("val top-1 (%)")
    labels = [style.method_text(*k) for k in handles]
    lines = list(handles.values())
    if thin is not None:
        lines.append(Line2D([], [], color="0.4", linewidth=0.6))
        labels.append("other branches / heads / networks")
    style.legend(fig, lines, labels)
    n = curves.groupby(["method", "icl"], dropna=False)["seed"].nunique()
    spread = f"mean over {_seeds(n)}, band: ± std (as the tables)" if n.max() >= 2 else \
        f"{_seeds(n)}, no band"
    style.heading(fig, title, _subtitle(spread[0].upper() + spread[1:], smoke=smoke))
    return fig


# ---------------------------------------------------------------------------------- Fig. 4
@style.styled
def fig4_figure(part: pd.DataFrame, setting: str, smoke: bool = False):
    """One (preset, setting) of fig4.summary: a panel per network, a line per other method
    (its colour) and KDCL-General variant (with ICL solid, without dashed)."""
    networks = fig4.students(part["student"])
    cols = min(len(networks), 2)
    rows_ = math.ceil(len(networks) / cols)
    fig, axes = style.figure(style.COLUMN, 0.6 + (2.2 if cols == 1 else 1.6) * rows_, rows_,
                             cols, sharey=True)
    handles: dict[str, object] = {}
    for ax, network in zip(axes.flat, networks):
        mine = part[part["student"] == network]
        for against in fig4.AGAINST:
            for icl in (True, False):
                line = mine[(mine["against"] == against) & (mine["icl"] == icl)]
                if line.empty:
                    continue
                line = line.sort_values("delta")
                colour = style.colour(against)
                label = f"{style.method_text(against)} − {fig4.variant(icl)}"
                handles[label], = ax.plot(line["delta"], line["mean"], color=colour, marker="o",
                                          linestyle="-" if icl else "--", label=label)
                if (line["n"] >= 2).any():
                    ax.fill_between(line["delta"], line["mean"] - line["std"],
                                    line["mean"] + line["std"], color=colour, alpha=0.15,
                                    linewidth=0)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_title(network)
        ax.set_xlabel("δ (pixels in [0, 1])")
        if mine["delta"].max() >= 0.1:  # the paper's 0 ... 0.15
            ax.xaxis.set_major_locator(MultipleLocator(0.05))
    for ax in axes.flat[len(networks):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("test loss gap")
    style.legend(fig, list(handles.values()), list(handles))
    spread = f"mean over {_seeds(part['n'])}, band: ± std" if (part["n"] >= 2).any() else \
        f"{_seeds(part['n'])}, no band"
    style.heading(fig, f"Fig. 4: robustness to noise ({setting})", _subtitle(
        "Gap: the other method's test loss − KDCL-General's under N(0, δ²) pixel noise (> 0: "
        f"KDCL-General more robust); {spread}", smoke=smoke))
    return fig


def draw(tables: list[Table], data: pd.DataFrame, curves: pd.DataFrame, folder: Path) -> list[Path]:
    paths = []
    for (preset, setting), part in fig4.summary(fig4.gaps(data)).groupby(["preset", "setting"],
                                                                          sort=True):
        paths += style.save(fig4_figure(part, setting, preset == "smoke"),
                            folder / f"fig4_robustness_{slug(preset, setting)}")
    for table in tables:
        if (fig := delta_figure(table)) is not None:
            paths += style.save(fig, folder / f"delta_{table.name}")
    for (preset, setting), part in curves.groupby(["preset", "setting"], sort=True):
        groups = data[(data["stage"] == "pretrain") & (data["setting"] == setting)]["group"]
        fig = curve_figure(part, groups, f"Validation top-1 per epoch: {setting} ({preset} "
                           "preset)", preset == "smoke")
        paths += style.save(fig, folder / f"curves_pretrain_{slug(preset, setting)}")
    return paths
