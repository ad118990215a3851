"""Result records into a tidy pandas table: one row per record and metric. What a record holds
is `kdcl_common/records.py`'s SCHEMA, the one list of record fields: every field of it is a
column here.

Records come from the records folder (`results/records`: one file per run under
`<stage>/`, and the JSONL files of earlier versions). A line or record that is not JSON, lacks a
required field or has one of the wrong type is skipped with a warning naming its file and line.
A run exported twice (a re-run after a crash between export and record) keeps its newest record.
A stale record, made from weights that a later pre-training run has replaced (a transfer record
from an old export, a KD record from an old teacher, a robustness record from an old export), is
dropped with a warning that says how to refresh it.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import pandas as pd

from kdcl_common import records as schema

REQUIRED = schema.REQUIRED
# Every other field of the schema is carried into the table (None where a record lacks it).
OPTIONAL = tuple(name for name in schema.SCHEMA if name not in REQUIRED)
REPO_ROOT = Path(__file__).resolve().parent.parent


class RecordWarning(UserWarning):
    """A record or run file left out of the tables, or a caveat about them: the message names
    `where` (file:line) and says `why` in a short phrase that every warning of its kind shares,
    by which `python -m results` counts them when there are many."""

    def __init__(self, message: str, where: str = "", why: str = ""):
        super().__init__(message)
        self.where, self.why = where, why


def skipped(where: str, why: str, said: str | None = None) -> None:
    """Warn that the record at `where` is skipped because `why` (`said` in full, if it differs:
    with the values)."""
    warnings.warn(RecordWarning(f"{where}: skipped, {said or why}", where, why), stacklevel=3)


def _kind(problem: str) -> str:
    """A problem without the value it shows ("seed is 'one', not an integer" -> "seed not an
    integer"): what the warnings of one kind share."""
    field = re.fullmatch(r"(\S+) is .*, not (.+)", problem)
    return f"{field[1]} not {field[2]}" if field else problem


def read(paths: list[Path]) -> list[dict]:
    """Valid records from `paths` (record files, or folders searched for them)."""
    out = []
    for where, record in schema.scan(paths):
        why = schema.unreadable(record)
        if why is not None:
            skipped(where, "not JSON", f"not JSON ({why})")
            continue
        wrong = schema.problems(record)
        if wrong:
            skipped(where, "; ".join(map(_kind, wrong)), "; ".join(wrong))
            continue
        record["_source"] = where
        out.append(record)
    return out


def identity(record: dict) -> tuple:
    """What makes two records the same run's result (a robustness evaluation writes one record
    per noise level)."""
    return (record["stage"], record["run_dir"], record.get("student") or record["backbone"],
            record["task"], record["backend"], record.get("delta"))


def setting_of(config: str | None) -> str:
    """The folder of a config name: smoke, cifar, imagenet/r50_r18, torchvision, ..."""
    return str(Path(config).parent) if config and "/" in config else (config or "")


def _export_key(path) -> Path | None:
    """An export path as written in a record, made comparable: relative paths are relative to
    the repository root (like `run_path`), `..` and symbolic links resolved."""
    if not isinstance(path, str) or not path:
        return None
    return run_path(path).resolve()


def _short_sha(sha) -> str:
    return str(sha)[:12]


def _student_key(record: dict) -> tuple:
    """A student's export named by its run instead of its path: (config, seed, student)."""
    return ("student", record["config"], record["seed"], record.get("student") or
            record["backbone"])


def exports(records: list[dict]) -> dict:
    """Per export path (and per (config, seed, student), for records that name no path), the
    newest pre-training record that names it as its `artifact`."""
    newest: dict = {}
    for record in records:
        key = _export_key(record.get("artifact")) if record["stage"] == "pretrain" else None
        if key is None:
            continue
        for k in (key, _student_key(record)):
            if k not in newest or str(record["created"]) >= str(newest[k]["created"]):
                newest[k] = record
    return newest


def stale(record: dict, exported: dict[Path, dict]) -> RecordWarning | None:
    """The warning that `record` is stale (its weights came from an export that pre-training
    has since replaced), or None: a transfer record's backbone, a KD record's teacher, a robustness
    record's backbone (found by its path when it names one, else by its config, seed and
    student). A record whose export no pre-training record names (weights from elsewhere), or
    without the sha256 it was made from (older records), is not stale."""
    if record["stage"] == "transfer":
        path, sha, what = record.get("backbone_path"), record.get("backbone_sha256"), "backbone"
    elif record["stage"] == "pretrain" and record.get("teacher"):
        path, sha, what = record.get("teacher"), record.get("teacher_sha256"), "teacher"
    elif record["stage"] == "robustness":
        path, sha, what = (record.get("backbone_path") or record.get("artifact"),
                           record.get("backbone_sha256"), "evaluated backbone")
    else:
        return None
    key = _export_key(path)
    if key is None and record["stage"] == "robustness":
        key = _student_key(record)
    export = exported.get(key) if key is not None and isinstance(sha, str) and sha else None
    now = export.get("backbone_sha256") if export else None
    if not isinstance(now, str) or not now or now == sha:
        return None
    where = record.get("_source") or record["run_dir"]
    newer = export.get("_source") or export["run_dir"]
    config = record.get("config_file") or "CONFIG"
    path = path or export.get("artifact")
    if record["stage"] == "robustness":
        redo = (f"`bash run_all.sh` (it reruns stale steps) or `python -m pretrain.robustness` "
                f"on {path}")
    elif what == "backbone":
        redo = (f"`bash run_all.sh` (it reruns stale transfer steps) or "
                f"`python -m transfer {config} --backbone {path} --restart`")
    else:
        redo = (f"`bash run_all.sh` (it reruns stale KD runs) or "
                f"`python -m pretrain {config} seed={record['seed']} --restart`")
    return RecordWarning(f"{where}: skipped, stale: made from the {what} {path} with sha256 "
                         f"{_short_sha(sha)}, which pre-training has since replaced (newest "
                         f"record {newer}: sha256 {_short_sha(now)}); refresh it with {redo}",
                         where, f"stale: made from a replaced {what}")


def frame(records: list[dict]) -> pd.DataFrame:
    """One row per (record, metric) with the identifying columns; newest record per run, stale
    records (see `stale`) dropped with a warning."""
    newest: dict[tuple, dict] = {}
    for record in records:
        key = identity(record)
        if key not in newest or str(record["created"]) >= str(newest[key]["created"]):
            newest[key] = record
    exported = exports(records)
    fresh = []
    for record in newest.values():
        if (warning := stale(record, exported)):
            warnings.warn(warning, stacklevel=2)
        else:
            fresh.append(record)
    rows = []
    for record in fresh:
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
    # Per stage: a robustness record carries the config and hash of the run it evaluated.
    versions = data.drop_duplicates(["stage", "run_dir"]).groupby(["stage", "config"])[
        "config_hash"].nunique()
    for (_, config), count in versions[versions > 1].items():
        warnings.warn(RecordWarning(f"{config}: runs made from {count} different versions of "
                                    "the config (config_hash) are pooled as seeds of one result",
                                    config, "runs of different config versions pooled"),
                      stacklevel=2)
    return data


def load(paths: list[Path]) -> pd.DataFrame:
    return frame(read(paths))


def run_path(run_dir: str) -> Path:
    """A record's run directory on this machine (the stages write it relative to the repo)."""
    path = Path(run_dir)
    return path if path.is_absolute() else REPO_ROOT / path
