"""Result records (DESIGN §4): one JSON object per line, appended atomically, one per finished
run (per student for pre-training). Tables are built from these, never from logs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import provenance
from .io import append_jsonl


def append(path: str | Path, *, stage: str, task: str, dataset: str, backend: str, backbone: str,
           method: str, metrics: dict[str, Any], seed: int, preset: str, config: str,
           config_file: str, config_hash: str, run_dir: str | Path, world_size: int,
           wall_seconds: float, **extra: Any) -> dict:
    """Append one record with the common fields plus provenance; returns it."""
    env = provenance.environment(world_size)
    record = {
        "stage": stage, "task": task, "dataset": dataset, "backend": backend,
        "backbone": backbone, "method": method, "metrics": metrics, "seed": seed,
        "preset": preset, "config": config, "config_file": config_file,
        "config_hash": config_hash, "run_dir": str(run_dir), **extra,
        "git_commit": env["git_commit"], "git_dirty": env["git_dirty"],
        "world_size": world_size, "devices": env["devices"], "versions": env["versions"],
        "wall_seconds": round(wall_seconds, 1), "created": env["created"],
    }
    append_jsonl(path, record)
    return record
