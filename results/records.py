"""Result records (DESIGN §4) into a tidy pandas table: one row per record and metric.

Records come from `results/records/*.jsonl` (one JSON object per line, appended by the stages).
A line that is not JSON, or lacks a required field, is skipped with a warning naming its file
and line. A run exported twice (a re-run after a crash between export and record) keeps its
newest record.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd

REQUIRED = ("stage", "task", "dataset", "backend", "backbone", "method", "metrics", "seed",
            "preset", "config", "run_dir", "created")
# Extra fields carried into the table when present (they identify or describe the run).
OPTIONAL = ("student", "icl", "group", "teacher", "epochs", "protocol", "detector", "head",
            "pretrain_config", "pretrain_seed", "config_file", "config_hash", "git_commit",
            "git_dirty", "world_size", "devices", "wall_seconds", "images_per_second",
            "backbone_sha256", "iterations", "versions")
REPO_ROOT = Path(__file__).resolve().parent.parent


class RecordWarning(UserWarning):
    pass


def read(paths: list[Path]) -> list[dict]:
    """Valid records from `paths` (files, or folders of *.jsonl)."""
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        files += sorted(path.glob("*.jsonl")) if path.is_dir() else [path] if path.is_file() else []
    out = []
    for file in files:
        for number, line in enumerate(file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{file}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                warnings.warn(f"{where}: skipped, not JSON ({e.msg})", RecordWarning, stacklevel=2)
                continue
            if not isinstance(record, dict):
                warnings.warn(f"{where}: skipped, not a JSON object", RecordWarning, stacklevel=2)
                continue
            missing = [k for k in REQUIRED if k not in record]
            if missing:
                warnings.warn(f"{where}: skipped, missing {', '.join(missing)}", RecordWarning,
                              stacklevel=2)
                continue
            if not isinstance(record["metrics"], dict):
                warnings.warn(f"{where}: skipped, metrics is not an object", RecordWarning,
                              stacklevel=2)
                continue
            record["_source"] = where
            out.append(record)
    return out


def identity(record: dict) -> tuple:
    """What makes two records the same run's result."""
    return (record["stage"], record["run_dir"], record.get("student") or record["backbone"],
            record["task"], record["backend"])


def setting_of(config: str | None) -> str:
    """The folder of a config name: smoke, cifar, imagenet/r50_r18, torchvision, ..."""
    return str(Path(config).parent) if config and "/" in config else (config or "")


def frame(records: list[dict]) -> pd.DataFrame:
    """One row per (record, metric) with the identifying columns; newest record per run."""
    newest: dict[tuple, dict] = {}
    for record in records:
        key = identity(record)
        if key not in newest or str(record["created"]) >= str(newest[key]["created"]):
            newest[key] = record
    rows = []
    for record in newest.values():
        base = {k: record[k] for k in REQUIRED if k != "metrics"}
        base.update({k: record.get(k) for k in OPTIONAL})
        base["student"] = base["student"] or record["backbone"]
        base["setting"] = setting_of(record["config"])
        base["pretrain_setting"] = setting_of(record.get("pretrain_config"))
        base["source"] = record.get("_source", "")  # file:line when read from disk
        for metric, value in record["metrics"].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append({**base, "metric": metric, "value": float(value)})
    columns = [*(k for k in REQUIRED if k != "metrics"), *OPTIONAL, "setting", "pretrain_setting",
               "source", "metric", "value"]
    data = pd.DataFrame(rows, columns=columns)
    # object dtype keeps None (not stated) apart from False, and Python bools for `is` tests.
    data["icl"] = data["icl"].map(lambda v: None if v is None or v != v else bool(v)).astype(object)
    versions = data.drop_duplicates("run_dir").groupby("config")["config_hash"].nunique()
    for config, count in versions[versions > 1].items():
        warnings.warn(f"{config}: runs made from {count} different versions of the config "
                      "(config_hash) are pooled as seeds of one result", RecordWarning,
                      stacklevel=2)
    return data


def load(paths: list[Path]) -> pd.DataFrame:
    return frame(read(paths))


def run_path(run_dir: str) -> Path:
    """A record's run directory on this machine (the stages write it relative to the repo)."""
    path = Path(run_dir)
    return path if path.is_absolute() else REPO_ROOT / path
