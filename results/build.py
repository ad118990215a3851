"""Records -> tables, figures and README, each output folder replaced whole; the one place that
puts the tables together (`tables`).

Every output folder is built in a temporary folder beside it and swapped in, so a crash leaves
the previous complete folder (never half of a new one). On Linux the swap is one atomic
exchange of the two folders; where the file system cannot exchange (NFS, ...), it is two
renames, and a build killed between them leaves its complete new folder hidden beside the
missing one, which the next build puts back in place before anything else. One build at a time
writes an output folder (a lock file in it, released when the process ends, killed or not): a
second waits for the first, and both succeed. Output folders get the mode mkdir would give them
(0777 less the umask), so that others on a shared file system can read the tables.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import tempfile
import warnings
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from kdcl_common import KdclError
from kdcl_common.io import atomic_write_text, make_public_dir

from . import collect, curves, fig4, layouts, plots, render, report, tabulate
from .cells import Table

RESULTS = Path("results")  # relative to the working directory, like the stages' records
LOCK = ".build.lock"
WARNINGS = "warnings.txt"  # every warning of the last build, when there were any
SHOWN = 10  # warnings printed one by one; more are summarised by reason


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders atomically (Linux renameat2 RENAME_EXCHANGE); False where the system
    or the file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_cwd, exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(a))


def _recover(target: Path) -> None:
    """Put back what a build killed between its two renames left hidden: its complete new
    folder (its old one was moved aside only once it was complete), else the old one."""
    if target.exists():
        return
    for old in sorted(target.parent.glob(f".{target.name}.old-*")):
        new = old.with_name(old.name.replace(".old-", ".new-"))
        os.rename(new if new.is_dir() else old, target)
        return


def tables(data, paper) -> list[Table]:
    """Every table, in the order results/README.md lists them: per config folder, in the paper's
    layouts, Fig. 4's gaps, transfer, and the cost of the training runs."""
    built = (tabulate.pretrain_tables(data, paper) + layouts.build(data, paper)
             + fig4.tables(data) + tabulate.transfer_tables(data, paper))
    trained = data["stage"].isin(["pretrain", "transfer"]).any()
    return built + ([tabulate.cost_table(data)] if trained else [])


@contextmanager
def staged(target: Path):
    """Yield an empty folder beside `target`; when the block succeeds it replaces `target`.
    The caller holds the output folder's lock (`exclusive`): leftovers are no one's."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover(target)
    for leftover in target.parent.glob(f".{target.name}.*"):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
    try:
        make_public_dir(tmp)  # mkdtemp makes 0700
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not target.exists():
        os.rename(tmp, target)
        return
    if not _exchange(tmp, target):  # two renames: the old folder aside, the new one in
        old = tmp.with_name(tmp.name.replace(".new-", ".old-"))
        os.rename(target, old)
        os.rename(tmp, target)
        tmp = old
    shutil.rmtree(tmp, ignore_errors=True)  # the previous folder


@contextmanager
def exclusive(out: Path, log):
    """Hold `out`'s lock for a build: another build of the same folder waits until this one
    ends (the lock goes with the process, however it ends)."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another `python -m results` writing to {out} to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _caught(fn, *args):
    """(fn(*args), the warnings it raised: malformed records, missing run folders, ...)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", collect.RecordWarning)
        result = fn(*args)
    return result, [w.message for w in caught]


def _where_why(warning) -> tuple[str, str]:
    """A warning's file and its kind; for plain ones (`<where>: <what>, <detail>`), guessed."""
    text = str(warning)
    where, _, rest = text.partition(": ")
    return (getattr(warning, "where", "") or where,
            getattr(warning, "why", "") or rest.split(",")[0].split(" (")[0])


def report_warnings(found: list, out: Path, log) -> list[str]:
    """Print the warnings, one by one when they are few, else a count per kind with the first
    files and an example; all of them go to `out`/warnings.txt. Returns the messages."""
    messages = [str(w) for w in found]
    listing = out / WARNINGS
    if not messages:
        listing.unlink(missing_ok=True)  # none left: an old list would mislead
        return messages
    atomic_write_text(listing, "\n".join(messages) + "\n")
    if len(messages) <= SHOWN:
        for message in messages:
            log(f"warning: {message}")
        return messages
    kinds: dict[str, list] = defaultdict(list)
    for warning in found:
        where, why = _where_why(warning)
        kinds[why].append((where, str(warning)))
    log(f"warning: {len(messages):,} warnings, all of them in {listing}; by kind:")
    for why, items in sorted(kinds.items(), key=lambda kv: -len(kv[1])):
        first = ", ".join(where for where, _ in items[:3]) + (", ..." if len(items) > 3 else "")
        log(f"warning:   {len(items):,} x {why}: {first}; e.g. {items[0][1]}")
    return messages


def build(sources: list[Path], out: Path = RESULTS, draw: bool = True, log=print) -> int:
    """Rebuild `out`/tables, `out`/figures (unless `draw` is False) and `out`/README.md."""
    data, found = _caught(collect.load, sources)
    if data.empty:
        if found:
            with exclusive(out, log):
                report_warnings(found, out, log)
        skipped = " (every record found was skipped: see the warnings above)" if found else ""
        log(f"No result records in {', '.join(map(str, sources))}{skipped}: nothing to "
            "tabulate; existing tables were left as they are. Run the stages first "
            "(bash run_all.sh).")
        return 0
    with exclusive(out, log):
        return _build(data, found, sources, out, draw, log)


def _build(data, found: list, sources: list[Path], out: Path, draw: bool, log) -> int:
    built, more = _caught(tables, data, tabulate.load_paper())
    found += more
    files: dict[str, list[Path]] = {}
    with staged(out / "tables") as tmp:
        for table in built:
            render.write(table, tmp)
    files["tables"] = sorted((out / "tables").iterdir())
    if draw:
        progress, more = _caught(curves.read, data)
        found += more
        with staged(out / "figures") as tmp:
            plots.draw(built, data, progress, tmp)
    # Without `draw` the previous figures stay and are still listed.
    files["figures"] = sorted((out / "figures").iterdir()) if (out / "figures").is_dir() else []
    warned = report_warnings(found, out, log)
    notes = layouts.notes(data) + fig4.notes(data)
    for note in notes:
        log(f"note: {note}")
    atomic_write_text(out / "README.md", report.readme(data, built, files, sources,
                                                       warned, out, notes))
    log(f"{len(built)} tables (md, csv, tex) in {out / 'tables'}")
    log(f"{len({p.stem for p in files['figures']})} figures (png, pdf) in {out / 'figures'}"
        + ("" if draw else " (not rebuilt: --no-figures)"))
    log(f"summary: {out / 'README.md'}")
    return 0


def writable_out(out: Path) -> None:
    """KdclError unless `out` is, or can be made, a folder this process can write."""
    if out.exists() and not out.is_dir():
        raise KdclError(f"--out {out} is a file, not a folder: give the folder where tables/, "
                        f"figures/ and README.md go (default: results/)")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise KdclError(f"--out {out} cannot be made: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "a read-only file system" if _read_only(existing) else "no write permission"
        raise KdclError(f"--out {out} cannot be written ({why} at {existing}): give a folder "
                        f"you can write to, e.g. --out /tmp/report")


def _read_only(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def write_error(e: OSError, out: Path) -> KdclError | None:
    """The message for an OSError while writing `out` (a full disk, a folder that cannot be
    written), or None for another error. Each output is written aside and swapped in whole."""
    kept = ("tables/, figures/ and README.md are each the previous one or the new one, whole "
            "(nothing half written)")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return KdclError(f"no space left on the device to write the results in {out}: {kept}; "
                         f"free space and run `python -m results` again, or give another --out")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return KdclError(f"cannot write the results in {out} ({e.strerror}): {kept}; give a "
                         f"folder you can write to with --out, or fix its permissions")
    return None
