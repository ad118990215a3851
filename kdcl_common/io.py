"""Atomic file writes: a reader (or a crash) never sees half a file.

Files and folders are created with the modes `open()` and `mkdir` would give them (0666 and
0777 less the umask), so that a run's outputs are readable on a shared file system. A full
disk raises DiskFullError, which names the file and says that nothing was replaced.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from . import KdclError

TEMPORARY_SUFFIX = ".tmp"  # atomic writes go through `.<name>.<random>.tmp` beside the target


class DiskFullError(KdclError):
    """No space (or quota) left to write a file; the file it would have replaced is intact."""

    def __init__(self, path: str | os.PathLike, hint: str = ""):
        self.path = Path(path)
        super().__init__(f"no space left on the device to write {self.path}: it was not "
                         f"written, and no existing file was changed. {hint}".rstrip())


def umask() -> int:
    """The process's umask: from /proc on Linux, which only reads it; elsewhere by setting it
    and setting it back at once, the only portable way."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def make_public_dir(path: str | os.PathLike) -> None:
    """Give a folder made by tempfile.mkdtemp (mode 0700) the mode mkdir would have given it."""
    os.chmod(path, 0o777 & ~umask())


def _disk_full(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary file in the same folder, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if _disk_full(e):
            raise DiskFullError(path) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_temporaries(folder: str | os.PathLike, patterns: tuple[str, ...] = ()) -> list[Path]:
    """Delete what killed atomic writes left in `folder` and below it (`.<name>.<random>.tmp`,
    plus `patterns`); returns the files removed. Only for a folder that one run owns."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for pattern in (f".*{TEMPORARY_SUFFIX}", *patterns):
        for stale in folder.rglob(pattern):
            if stale.is_file():
                stale.unlink(missing_ok=True)
                removed.append(stale)
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_tensors(path: str | os.PathLike, what: str) -> Any:
    """torch.load(path, weights_only=True) with errors that name the file. A file holding other
    Python objects (code, classes) is refused as not plain; the safety is never turned off."""
    import pickle
    import warnings

    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols: the error says it
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise KdclError(f"{what} {path} does not exist") from None
    except pickle.UnpicklingError as e:
        # torch words a refused class or function as "Unsupported global: GLOBAL m.f" or
        # "unsupported GLOBAL m.f whose module m is blocked"; anything else is no readable pickle
        if "global" not in str(e).lower():
            raise KdclError(f"{path} cannot be read as a PyTorch {what}: it may be truncated "
                            f"or not a .pth file") from None
        raise KdclError(f"{path} is not a plain {what}: it holds Python objects other than "
                        f"tensors, numbers, strings and containers, which are not unpickled "
                        f"(that could run code). Save a plain state_dict: "
                        f"torch.save(model.state_dict(), path).") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise KdclError(f"{path} cannot be read as a PyTorch {what} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'no detail'}): it may be "
                        f"truncated or not a .pth file") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def generated_folder(root: str | os.PathLike, params: dict, marker: str, what: str,
                     write: Callable[[Path], None]) -> Path:
    """`root`, written once by `write(tmp)` into a temporary folder beside it and renamed into
    place with a marker holding `params`. An existing folder is reused if its marker holds the
    same params and refused otherwise; a crash leaves no half-written `root`; when several
    processes race, the first rename wins and the others' identical copies are dropped."""
    from . import DataError

    root = Path(root)
    if root.exists():
        if not (root / marker).is_file():
            raise DataError(f"{root} exists but is not a generated {what} (no {marker}): "
                            f"choose another data.root or delete it")
        existing = json.loads((root / marker).read_text())
        if existing != params:
            raise DataError(f"{root} holds a generated {what} with other parameters {existing}; "
                            f"wanted {params}: delete it or choose another data.root")
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    make_public_dir(tmp)
    try:
        write(tmp)
        (tmp / marker).write_text(json.dumps(params))
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished first: theirs is identical
            if not (root / marker).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
