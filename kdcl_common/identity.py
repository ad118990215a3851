"""What a run was made from, as its folder records it, and whether that still holds.

`<run folder>/run.json`, written when a run starts (kdcl_common/runs.py):

    format        "kdcl-bench/run-v1"
    config_hash   short sha256 of the resolved config, its locations left out
    config        the resolved config, compared key by key on --resume (less its locations)
    inputs        {role: {"path": ..., "sha256": ...}} for every file the run takes weights
                  from: a transfer run's "backbone", a KD run's "teacher"; and "data", the
                  fingerprint of its dataset (kind "data": files, bytes; fingerprint.py)
    stopped       present after a stop for a non-finite loss (what may change on --resume)
    changes       config changes accepted on a --resume after such a stop

Standard library only: `run_all.sh` decides which steps are stale with it before the
environment exists.
"""
from __future__ import annotations

import enum
import json
import os
from pathlib import Path

IDENTITY_FILE = "run.json"
FORMAT = "kdcl-bench/run-v1"


class RunState(str, enum.Enum):
    """What a run folder holds for a command, as a driver (the chain) sees it."""

    DONE = "done"    # a finished run of this identity: nothing to do
    TODO = "todo"    # nothing yet, or an unfinished run of this identity: --resume continues it
    STALE = "stale"  # a run of another config or other weights: --restart archives it

    def __str__(self) -> str:
        return self.value


def metadata_path(weights: str | os.PathLike) -> Path:
    """The metadata file of an exported backbone: `<name>.json` beside `<name>.pth`."""
    return Path(weights).with_suffix(".json")


def exported_sha256(weights: str | os.PathLike) -> str | None:
    """The sha256 that an export's metadata gives for its weights; None when there is none."""
    try:
        return json.loads(metadata_path(weights).read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None


def read(run_dir: str | os.PathLike) -> dict | None:
    """The identity recorded in `run_dir`, or None (no run, or one made before run.json)."""
    try:
        saved = json.loads((Path(run_dir) / IDENTITY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and saved.get("format") == FORMAT else None


def accepted_changes(run_dir: str | os.PathLike) -> list[dict]:
    """The config changes accepted on resumes after non-finite stops (for the result record)."""
    return list((read(run_dir) or {}).get("changes", []))


def changed_inputs(saved: dict, current: dict[str, dict]) -> list[str]:
    """One line per input whose file differs between `saved` and `current` identities'
    inputs ({role: {"path", "sha256"}}), e.g. 'backbone runs/.../resnet18.pth: sha256
    1a2b3c4d5e6f -> 0f9e8d7c6b5a', or 'data /scratch/imagenet: other files (1281167 files,
    ... -> ...)'. A path alone that differs is not a change: the same data moved elsewhere."""
    lines = []
    old_inputs = saved.get("inputs") or {}
    for role in sorted(set(old_inputs) | set(current)):
        old, new = old_inputs.get(role) or {}, current.get(role) or {}
        if old.get("sha256") == new.get("sha256"):
            continue
        path = new.get("path") or old.get("path")
        if (new or old).get("kind") == "data":
            def files(d: dict) -> str:
                return (f"{d.get('files')} files, {d.get('bytes', 0) / 2**20:.1f} MB"
                        if d else "not recorded")
            lines.append(f"{role} {path}: other files than the run was made from "
                         f"({files(old)} -> {files(new)})")
        else:
            lines.append(f"{role} {path}: sha256 {str(old.get('sha256'))[:12]} -> "
                         f"{str(new.get('sha256'))[:12]}")
    return lines


def stale_inputs(run_dir: str | os.PathLike, root: str | os.PathLike = ".") -> list[str] | None:
    """What changed since `run_dir` started: one line per recorded input whose export now has
    another sha256 (paths relative to `root`). None when the folder records no identity."""
    saved = read(run_dir)
    if saved is None:
        return None
    from . import fingerprint

    current = {}
    for role, recorded in (saved.get("inputs") or {}).items():
        path = Path(recorded.get("path", ""))
        path = path if path.is_absolute() else Path(root) / path
        if recorded.get("kind") == fingerprint.KIND:
            current[role] = fingerprint.as_input(path, tuple(recorded.get("parts") or ()))
        else:
            current[role] = {"path": str(path), "sha256": exported_sha256(path)}
    return changed_inputs(saved, current)
