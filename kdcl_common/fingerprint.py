"""What a dataset is, independent of where it is: a fingerprint of its files (how many, their
total size, and a sha256 of every file's path relative to the dataset root with its size).

A run's identity holds the fingerprint of its data instead of the data's path
(kdcl_common/runs.py), so that the same dataset staged elsewhere (node-local scratch, another
mount) is the same run, and another dataset under the same path is not. Listing the files and
their sizes is cheap next to reading them (one stat per file; ImageNet's 1.33M files take
seconds on a local disk), and it is done once per process for each dataset.

Standard library only (the chain checks states with it before the environment exists).
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

KIND = "data"  # the role's kind in a run's inputs (kdcl_common/identity.py)


def _walk(top: Path):
    """(relative path, size) of every file below `top`, following symbolic links, in a stable
    order; hidden files (markers of our own generators, editors' litter) are left out."""
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except FileNotFoundError:
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                subfolders.append(Path(entry.path))
            elif entry.is_file():
                yield entry.path, entry.stat().st_size
        stack.extend(reversed(subfolders))


@lru_cache(maxsize=32)
def _of(root: str, parts: tuple[str, ...], mtime: float) -> dict:
    base = Path(root)
    digest, files, size = hashlib.sha256(), 0, 0
    counts: dict[str, int] = {}
    for part in parts or ("",):
        top = base / part
        if top.is_file():
            found = [(str(top), top.stat().st_size)]
        else:
            found = _walk(top)
        n = 0
        for path, nbytes in found:
            rel = os.path.relpath(path, base)
            digest.update(f"{rel}\t{nbytes}\n".encode())
            n, size = n + 1, size + nbytes
        counts[part or "."] = n
        files += n
    return {"sha256": digest.hexdigest(), "files": files, "bytes": size, "parts": counts}


def of(root: str | os.PathLike, parts: tuple[str, ...] = ()) -> dict:
    """The fingerprint of the files under `root`/`part` for each of `parts` (files or folders;
    none: the whole of `root`). Cached per process while the root's modification time holds."""
    root = Path(root).resolve()
    try:
        mtime = root.stat().st_mtime
    except FileNotFoundError:
        return {"sha256": None, "files": 0, "bytes": 0, "parts": {}}
    return dict(_of(str(root), tuple(parts), mtime))


def as_input(root: str | os.PathLike, parts: tuple[str, ...] = ()) -> dict:
    """A run input (kdcl_common/identity.py) for the dataset at `root`."""
    found = of(root, parts)
    return {"kind": KIND, "path": str(root), "parts": list(parts), "sha256": found["sha256"],
            "files": found["files"], "bytes": found["bytes"]}
