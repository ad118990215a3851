"""What a run was made from, as its folder records it, and whether that still holds.

`<run folder>/run.json`, written when a run starts (kdcl_common/runs.py):

    format        "kdcl-bench/run-v1"
    config_hash   short sha256 of the resolved config
    config        the resolved config, compared key by key on --resume
    inputs        {role: {"path": ..., "sha256": ...}} for every file the run takes weights
                  from: a transfer run's "backbone", a KD run's "teacher"
    stopped       present after a stop for a non-finite loss (what may change on --resume)
    changes       config changes accepted on a --resume after such a stop
    resumes       how many times the run was resumed from a checkpoint (absent: never)

Standard library only: `run_all.sh` decides which steps are stale with it before the
environment exists.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

IDENTITY_FILE = "run.json"
FORMAT = "kdcl-bench/run-v1"


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


def resumes(run_dir: str | os.PathLike) -> int:
    """How many times the run in `run_dir` was resumed (for the result record)."""
    return int((read(run_dir) or {}).get("resumes", 0))


def changed_inputs(saved: dict, current: dict[str, dict]) -> list[str]:
    """One line per input whose file differs between `saved` and `current` identities'
    inputs ({role: {"path", "sha256"}}), e.g. 'backbone runs/.../resnet18.pth: sha256
    1a2b3c4d5e6f -> 0f9e8d7c6b5a'."""
    lines = []
    old_inputs = saved.get("inputs") or {}
    for role in sorted(set(old_inputs) | set(current)):
        old, new = old_inputs.get(role) or {}, current.get(role) or {}
        if old.get("sha256") != new.get("sha256"):
            path = new.get("path") or old.get("path")
            lines.append(f"{role} {path}: sha256 {str(old.get('sha256'))[:12]} -> "
                         f"{str(new.get('sha256'))[:12]}")
    return lines


def stale_inputs(run_dir: str | os.PathLike, root: str | os.PathLike = ".") -> list[str] | None:
    """What changed since `run_dir` started: one line per recorded input whose export now has
    another sha256 (paths relative to `root`). None when the folder records no identity."""
    saved = read(run_dir)
    if saved is None:
        return None
    current = {}
    for role, recorded in (saved.get("inputs") or {}).items():
        path = Path(recorded.get("path", ""))
        current[role] = {"path": str(path),
                         "sha256": exported_sha256(path if path.is_absolute() else Path(root) / path)}
    return changed_inputs(saved, current)
