"""Atomic file writes: a reader (or a crash) never sees half a file."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary file in the same folder, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line with a single O_APPEND write, so concurrent writers never
    interleave and a crash leaves either the whole line or none of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=False, default=str) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


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
