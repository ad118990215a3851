"""Records -> tables, figures and README, each output folder replaced whole; the one place that
puts the tables together (`tables`).

Every output folder is built in a temporary folder beside it and swapped in by renames, so a
crash leaves the previous complete folder (never half of a new one); leftovers of a crash are
removed by the next build. Output folders get the mode mkdir would give them (0777 less the
umask), so that others on a shared file system can read the tables.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

from kdcl_common.io import atomic_write_text, make_public_dir

from . import collect, curves, fig4, layouts, plots, render, report, tabulate
from .cells import Table

RESULTS = Path("results")  # relative to the working directory, like the stages' records


def tables(data, paper) -> list[Table]:
    """Every table, in the order results/README.md lists them: per config folder, in the paper's
    layouts, Fig. 4's gaps, transfer, and the cost of the training runs."""
    built = (tabulate.pretrain_tables(data, paper) + layouts.build(data, paper)
             + fig4.tables(data) + tabulate.transfer_tables(data, paper))
    trained = data["stage"].isin(["pretrain", "transfer"]).any()
    return built + ([tabulate.cost_table(data)] if trained else [])


@contextmanager
def staged(target: Path):
    """Yield an empty folder beside `target`; when the block succeeds it replaces `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for leftover in target.parent.glob(f".{target.name}.*"):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
    try:
        make_public_dir(tmp)  # mkdtemp makes 0700
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = tmp.with_name(tmp.name.replace(".new-", ".old-"))
    if target.exists():
        os.rename(target, old)
    # POSIX cannot swap two folders atomically: two renames, the old folder kept until now.
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _warned(log, fn, *args):
    """fn(*args), printing the warnings it raised (malformed records, missing run folders)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", collect.RecordWarning)
        result = fn(*args)
    messages = [str(w.message) for w in caught]
    for message in messages:
        log(f"warning: {message}")
    return result, messages


def build(sources: list[Path], out: Path = RESULTS, draw: bool = True, log=print) -> int:
    """Rebuild `out`/tables, `out`/figures (unless `draw` is False) and `out`/README.md."""
    data, warned = _warned(log, collect.load, sources)
    if data.empty:
        skipped = " (every record found was skipped: see the warnings above)" if warned else ""
        log(f"No result records in {', '.join(map(str, sources))}{skipped}: nothing to "
            "tabulate; existing tables were left as they are. Run the stages first "
            "(bash run_all.sh).")
        return 0
    built, pooled = _warned(log, tables, data, tabulate.load_paper())
    files: dict[str, list[Path]] = {}
    with staged(out / "tables") as tmp:
        for table in built:
            render.write(table, tmp)
    files["tables"] = sorted((out / "tables").iterdir())
    if draw:
        progress, _ = _warned(log, curves.read, data)
        with staged(out / "figures") as tmp:
            plots.draw(built, data, progress, tmp)
    # Without `draw` the previous figures stay and are still listed.
    files["figures"] = sorted((out / "figures").iterdir()) if (out / "figures").is_dir() else []
    notes = layouts.notes(data) + fig4.notes(data)
    for note in notes:
        log(f"note: {note}")
    atomic_write_text(out / "README.md", report.readme(data, built, files, sources,
                                                       warned + pooled, out, notes))
    log(f"{len(built)} tables (md, csv, tex) in {out / 'tables'}")
    log(f"{len({p.stem for p in files['figures']})} figures (png, pdf) in {out / 'figures'}"
        + ("" if draw else " (not rebuilt: --no-figures)"))
    log(f"summary: {out / 'README.md'}")
    return 0
