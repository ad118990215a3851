"""How every figure looks: sizes for a paper's column and page, fonts that stay readable at
those sizes and on a slide, one colour per method (the same in every figure), a heading of a
short title and a small subtitle, and how a figure is written (PNG to read, PDF for a paper)."""
from __future__ import annotations

import functools
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from pretrain import registry  # noqa: E402  (standard library only: no torch)

from .rows import method_of  # noqa: E402

COLUMN = 3.4  # inches: one column of a two-column paper (CVPR's is 3.25 in)
PAGE = 7.0    # inches: the text width (CVPR's is 6.875 in)
DPI = 200     # PNG pixels per inch: sharp on a slide
TITLE_SIZE, TEXT_SIZE, SMALL_SIZE = 9, 8, 7  # points, as printed at COLUMN or PAGE width
RC = {"font.size": TEXT_SIZE, "axes.titlesize": TEXT_SIZE, "axes.labelsize": TEXT_SIZE,
      "xtick.labelsize": SMALL_SIZE, "ytick.labelsize": SMALL_SIZE,
      "legend.fontsize": SMALL_SIZE, "legend.frameon": False, "axes.spines.top": False,
      "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "lines.linewidth": 1.2,
      "lines.markersize": 2.5, "figure.dpi": DPI, "savefig.dpi": DPI,
      "pdf.fonttype": 42}  # TrueType in PDFs: editable text, accepted by publishers

BASELINE_COLOUR = "0.1"  # independent training: near black in every figure
OTHER_COLOUR = "0.55"    # a method the registry does not know (the paper's unnamed kdcl*)
# Nine colours told apart on white and in print (Tableau 10, its grey left for OTHER_COLOUR, its
# olive and cyan darkened). The KDCL variants, what the figures are about, take the first.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#8c8c00", "#0e9aa7"]
NEUTRAL = ["0.35", "0.6", "0.8"]  # rows of no one method: Table 1's teachers, Table 9's networks
LINES = ["-", "--", ":", "-."]  # the variants of one colour (with ICL first)
HATCHES = ["", "////", "....", "xxxx"]


def colours() -> dict[str, str]:
    """The colour of each method of the registry: one table, read by every figure. The KDCL
    variants first (the last listed, KDCL-General, blue), then the others in registry order."""
    kdcl = [m.name for m in registry.METHODS if m.kdcl_variant][::-1]
    others = [m.name for m in registry.METHODS if not m.kdcl_variant
              and m.name != registry.BASELINE]
    table = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(kdcl + others)}
    return {registry.BASELINE: BASELINE_COLOUR, **table}


def colour(method: str | None) -> str:
    return colours().get(method, OTHER_COLOUR)


def method_text(label: str, icl=None) -> str:
    """A row label as a figure shows it: the method's label from the registry (independent:
    Vanilla, as the paper calls it), the rest of the label, and + ICL."""
    method = method_of(label)
    try:
        label = registry.get(method).label + label[len(method):]
    except KeyError:
        pass
    return label + (" + ICL" if icl is True else "")


def variants(keys: list[tuple[str, object]], colour_of) -> dict[tuple, int]:
    """Per (label, icl): its place among the keys of the same colour (0, 1, ...), with ICL first:
    the index into LINES or HATCHES, so two rows of one colour never look the same."""
    seen: dict[str, int] = {}
    out = {}
    for key in sorted(keys, key=lambda k: (k[1] is not True, str(k[0]))):
        c = colour_of(key)
        out[key] = seen.get(c, 0)
        seen[c] = out[key] + 1
    return out


def styled(make):
    """Run a figure maker under RC (matplotlib reads it as each artist is made)."""
    @functools.wraps(make)
    def wrapper(*args, **kwargs):
        with plt.rc_context(RC):
            return make(*args, **kwargs)
    return wrapper


def figure(width: float, height: float, rows: int = 1, cols: int = 1, **kwargs):
    """A figure and its grid of axes (a 2-D array), laid out by matplotlib's constrained layout,
    which keeps tick labels, axis labels and outside legends inside the canvas."""
    return plt.subplots(rows, cols, figsize=(width, height), squeeze=False,
                        layout="constrained", **kwargs)


def wrap(text: str, width: float, size: float = SMALL_SIZE) -> str:
    """`text` broken into lines that fit `width` inches at `size` points (DejaVu Sans averages
    about 0.55 em a character; 0.6 leaves a margin)."""
    chars = max(20, int((width - 0.2) * 72 / (0.6 * size)))
    return "\n".join(textwrap.fill(part, chars) for part in text.split("\n"))


def heading(fig, title: str, subtitle: str = "") -> None:
    """A short title and a small grey subtitle (what the bars or bands are, the preset's caveat)
    above the panels; the figure grows by their height so the panels keep their size."""
    width, height = fig.get_size_inches()
    renderer = fig.canvas.get_renderer()
    pad = 0.05  # inches
    texts = [(wrap(title, width, TITLE_SIZE), {"fontsize": TITLE_SIZE, "fontweight": "bold"})]
    if subtitle:
        texts.append((wrap(subtitle, width), {"fontsize": SMALL_SIZE, "color": "0.3"}))
    made = [fig.text(0.5, 1, text, ha="center", va="top", **kw) for text, kw in texts]
    heights = [t.get_window_extent(renderer).height / fig.dpi for t in made]
    top = pad + sum(heights) + pad * len(made)
    fig.set_size_inches(width, height + top)
    y = 1 - pad / (height + top)
    for text, h in zip(made, heights):
        text.set_y(y)
        y -= (h + pad) / (height + top)
    fig.get_layout_engine().set(rect=(0, 0, 1, 1 - top / (height + top)))


def legend(fig, handles, labels) -> None:
    """One legend for the whole figure, below the panels (never over the data): in the most
    columns that fit the figure's width, then as few as fill the same rows (6 entries: 3 + 3)."""
    if not handles:
        return
    renderer = fig.canvas.get_renderer()
    for cols in range(len(labels), 0, -1):
        made = _legend(fig, handles, labels, cols)
        if cols == 1 or made.get_window_extent(renderer).width <= 0.96 * fig.bbox.width:
            break
        made.remove()
    rows = -(-len(labels) // cols)
    if -(-len(labels) // rows) < cols:
        made.remove()
        _legend(fig, handles, labels, -(-len(labels) // rows))


def _legend(fig, handles, labels, cols: int):
    # matplotlib fills a legend column by column: reorder so that it reads row by row
    rows = -(-len(labels) // cols)
    order = [i * cols + j for j in range(cols) for i in range(rows) if i * cols + j < len(labels)]
    return fig.legend([handles[i] for i in order], [labels[i] for i in order],
                      loc="outside lower center", ncols=cols)


def save(fig, stem: Path) -> list[Path]:
    """`stem`.png and `stem`.pdf; the figure is closed."""
    paths = [stem.with_name(f"{stem.name}.{ext}") for ext in ("png", "pdf")]  # x0.5: no suffix
    for path in paths:
        fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return paths
