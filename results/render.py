"""Write a `cells.Table` as Markdown (read it), CSV (raw numbers, for analysis) and LaTeX
(booktabs, for a paper)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .cells import Table

DIGITS = 2


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _cell_text(mean, std, n, row_n, first=None, last=None) -> str:
    """mean ± std, the seed count where it differs from the row's, and for a best-epoch cell
    the epoch(s) the values come from."""
    if _missing(mean):
        return "–"
    text = f"{mean:.{DIGITS}f}" + ("" if _missing(std) else f" ± {std:.{DIGITS}f}")
    text += f" (n={n})" if not _missing(n) and n != row_n else ""
    if not _missing(first):
        text += (f" (epoch {first:.0f})" if round(first) == round(last) else
                 f" (epochs {first:.0f}–{last:.0f})")
    return text


def _delta_text(delta, significant) -> str:
    if _missing(delta):
        return "–"
    return f"{delta:+.{DIGITS}f}" + ("*" if significant is True else "")


def _paper_text(value, sign: str) -> str:
    """As the paper prints it: one decimal, two where it gives two."""
    if _missing(value):
        return "–"
    text = f"{value:{sign}.2f}"
    return text[:-1] if text.endswith("0") else text


def _label(value) -> str:
    if value is True or value is False:
        return "yes" if value else "no"
    return "" if _missing(value) else str(value)


def _cells(table: Table) -> list[tuple[str, pd.DataFrame]]:
    """(heading, frame of strings) per column block when the table is split, else one."""
    data = table.data
    blocks = list(dict.fromkeys(data.columns.get_level_values(0)))
    groups = [[b] for b in blocks] if table.split else [blocks]
    out = []
    for group in groups:
        part = data.loc[:, data.columns.get_level_values(0).isin(group)]
        part = part[part.notna().any(axis=1)]  # rows with nothing in this block
        if part.empty:
            continue
        shown = pd.DataFrame({name: [_label(v) for v in part.index.get_level_values(name)]
                              for name in part.index.names})
        n = part.xs("n", axis=1, level=2).max(axis=1)
        shown["n"] = ["" if _missing(v) else str(int(v)) for v in n]
        for block, cell in dict.fromkeys((b, c) for b, c, _ in part.columns):
            fields = {f: part[(b, c, f)] for b, c, f in part.columns if (b, c) == (block, cell)}
            none = pd.Series([math.nan] * len(part), index=part.index)
            name = cell if table.split else f"{block} {cell}"
            shown[name] = [_cell_text(*v) for v in zip(
                fields.get("mean", none), fields.get("std", none), fields.get("n", none), n,
                fields.get("epoch_min", none), fields.get("epoch_max", none))]
            if "delta" in fields:
                shown[f"Δ {name}"] = [_delta_text(d, s) for d, s in
                                      zip(fields["delta"], fields["significant"])]
            if "paper" in fields:
                shown[f"paper {name}"] = [_paper_text(v, "") for v in fields["paper"]]
            if "paper_delta" in fields:
                shown[f"paper Δ {name}"] = [_paper_text(v, "+") for v in fields["paper_delta"]]
        out.append((group[0] if table.split else "", shown))
    return out


def _plain(table: Table) -> pd.DataFrame:
    """The cost table, formatted for reading."""
    data = table.data
    return pd.DataFrame({
        "stage": data["stage"], "config": data["config"], "seed": data["seed"].astype(str),
        "model": data["model"],
        "wall time": [f"{int(s // 3600)}:{int(s % 3600 // 60):02d}:{int(s % 60):02d}"
                      if not _missing(s) else "–" for s in data["wall_seconds"]],
        "GPUs": data["gpus"].astype(str), "device": data["device"],
        "processes": data["processes"].astype(str),
        "images/s": ["–" if _missing(v) else f"{v:.1f}" for v in data["images_per_second"]],
        "run dir": [f"`{r}`" for r in data["run_dir"]],
    })


def shown(table: Table) -> list[tuple[str, pd.DataFrame]]:
    return _cells(table) if isinstance(table.data.columns, pd.MultiIndex) else [("", _plain(table))]


def markdown(table: Table) -> str:
    lines = [f"## {table.title}", "", table.caption, ""]
    for heading, frame in shown(table):
        if heading:
            lines += [f"### {heading}", ""]
        lines += [frame.to_markdown(index=False, disable_numparse=True), ""]
    if table.trace is not None:
        lines += ["Configs and run directories behind each row:", ""]
        for key, row in table.trace.dropna().iterrows():  # paper-only rows have no runs
            label = ", ".join(_label(v) for v in key if _label(v))
            configs, runs = (", ".join(f"`{v}`" for v in row[c].split("; "))
                             for c in ("configs", "runs"))
            lines.append(f"- {label}: {configs}; {runs}")
        lines.append("")
    return "\n".join(lines)


def csv(table: Table) -> pd.DataFrame:
    """Raw numbers: one column per (block, cell, field), plus the runs behind each row."""
    data = table.data
    if not isinstance(data.columns, pd.MultiIndex):
        return data
    flat = data.copy()
    flat.columns = ["/".join(c) for c in data.columns]
    if table.trace is not None:  # same row order; positional, as NaN labels do not join
        flat[list(table.trace.columns)] = table.trace.to_numpy()
    return flat.reset_index()


LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
         "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}", "`": "",
         "±": r"$\pm$", "Δ": r"$\Delta$", "←": r"$\leftarrow$", "→": r"$\rightarrow$",
         "–": "--", "*": r"$^{*}$", "λ": r"$\lambda$", "δ": r"$\delta$", "−": "$-$",
         "²": r"$^{2}$"}


def _tex(text) -> str:
    return "".join(LATEX.get(ch, ch) for ch in str(text))


def latex(table: Table) -> str:
    caption = table.caption.replace("**", "")
    lines = ["% Generated by `python -m results` from the result records; edits are overwritten.",
             r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{_tex(table.title)}. {_tex(caption)}}}", rf"\label{{tab:{table.name}}}"]
    for heading, frame in shown(table):
        if heading:
            lines.append(rf"\par\medskip\textit{{{_tex(heading)}}}\par\smallskip")
        align = "".join("l" if c in table.data.index.names or c in ("stage", "config", "model",
                                                                    "device", "run dir")
                        else "r" for c in frame.columns)
        lines += [rf"\begin{{tabular}}{{{align}}}", r"\toprule",
                  " & ".join(_tex(c) for c in frame.columns) + r" \\", r"\midrule"]
        lines += [" & ".join(_tex(v) for v in row) + r" \\"
                  for row in frame.itertuples(index=False)]
        lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [r"\end{table}", ""]
    return "\n".join(lines)


def write(table: Table, folder: Path) -> list[Path]:
    paths = [folder / f"{table.name}.{ext}" for ext in ("md", "csv", "tex")]
    paths[0].write_text(markdown(table))
    csv(table).to_csv(paths[1], index=False)
    paths[2].write_text(latex(table))
    return paths
