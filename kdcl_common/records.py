"""Result records: the contract between the stages and `python -m results`.

A record is one result of one finished run: per student for pre-training, per fine-tuning run
for transfer, per (export, noise level) for the noise evaluation. `SCHEMA` below is the one
list of the fields a record may have, their types and what they mean: the stages write through
`make` (an unknown field or a missing required one is a programming error, raised at once), and
`python -m results` reads through `check` and keeps every field of the schema.

**Where records go.** A run writes all its records as one file of its own, replaced atomically:

    <records>/<stage>/<run>.json       {"format": "kdcl-bench/records-v1", "records": [...]}

`<records>` is the records folder (default `results/records`; the `records` config key, a
location, not part of a run's identity), `<run>` the run's folder under its output root
(`pretrain/smoke/kdcl_minlogit/seed0.json`). One writer per run folder (kdcl_common/locks.py)
means one writer per record file, so many jobs on many nodes never share a file: O_APPEND is not
atomic across NFS clients (open(2)), and appended lines can be lost or mixed there. The JSONL
files of earlier versions (`<records>/<stage>.jsonl`, one record per line) are still read.

A record is written only after a run finished and its evaluation saw images; `python -m
results` drops a record whose input has since been replaced (kdcl_common/runs.py: identity).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

FORMAT = "kdcl-bench/records-v1"
STAGES = ("pretrain", "transfer", "robustness")
TASKS = ("classification", "detection", "instance_segmentation", "semantic_segmentation")
DEFAULT_FOLDER = "results/records"


@dataclass(frozen=True)
class Field:
    kind: str          # text | int | number | bool | object | list | any
    required: bool
    meaning: str


def _is(kind: str, value: Any) -> bool:
    return {
        "text": lambda v: isinstance(v, str) and v != "",
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "object": lambda v: isinstance(v, dict),
        "list": lambda v: isinstance(v, list),
        "any": lambda v: True,
    }[kind](value)


WORDS = {"text": "a non-empty string", "int": "an integer", "number": "a number",
         "bool": "true or false", "object": "an object", "list": "a list", "any": "anything"}

_R, _O = True, False
SCHEMA: dict[str, Field] = {
    # what every record has
    "stage": Field("text", _R, f"{' | '.join(STAGES)}"),
    "task": Field("text", _R, f"{' | '.join(TASKS)}"),
    "dataset": Field("text", _R, "imagenet, cifar100, coco, coco_stuff164k, synthetic, ..."),
    "backend": Field("text", _R, "pytorch (pre-training) or the transfer backend"),
    "backbone": Field("text", _R, "the architecture as a label (resnet18, mobilenet_v2_x0.5)"),
    "method": Field("text", _R, "the pre-training method (pretrain/registry.py)"),
    "metrics": Field("object", _R, "name -> value: top-1/top-5 in %, AP and mIoU on COCO's "
                                   "0-100 scale, losses"),
    "seed": Field("int", _R, "the run's seed (transfer: the fine-tuning seed)"),
    "preset": Field("text", _R, "smoke, cifar, paper or custom"),
    "config": Field("text", _R, "the config's name (its path under the configs folder)"),
    "run_dir": Field("text", _R, "the run folder"),
    "created": Field("text", _R, "when the record was written (UTC, ISO 8601)"),
    "config_file": Field("any", _O, "the config file as given"),
    "config_hash": Field("any", _O, "short sha256 of the resolved config, locations excluded"),
    "world_size": Field("int", _O, "processes that trained it"),
    "wall_seconds": Field("number", _O, "seconds of training, summed over resumed processes"),
    "resumes": Field("int", _O, "how many times the run was resumed"),
    "git_commit": Field("any", _O, "kdcl-bench's commit"),
    "git_dirty": Field("any", _O, "whether the checkout had uncommitted changes"),
    "devices": Field("any", _O, "the devices it ran on"),
    "versions": Field("any", _O, "library versions"),
    "data_id": Field("any", _O, "the training data's fingerprint (kdcl_common/identity.py)"),
    "config_changes": Field("list", _O, "config changes accepted on resumes after a NaN stop"),
    "images_per_second": Field("any", _O, "training throughput"),
    # pre-training (and the noise evaluation, which describes the export it evaluated)
    "student": Field("any", _O, "the student's (or branch's) name"),
    "icl": Field("any", _O, "one view per student (invariant collaborative learning)"),
    "group": Field("any", _O, "the students trained together, joined by +"),
    "teacher": Field("any", _O, "KD: the teacher export"),
    "teacher_sha256": Field("any", _O, "KD: its sha256"),
    "epochs": Field("any", _O, "training epochs"),
    "artifact": Field("any", _O, "the export written (or evaluated)"),
    "exported": Field("any", _O, "false for a branch recorded but not exported (ONE, CLNN)"),
    "backbone_sha256": Field("any", _O, "the sha256 of the export written or read"),
    "system_parameters": Field("any", _O, "parameters of all the models trained together"),
    # transfer
    "protocol": Field("any", _O, "the fine-tuning protocol (paper14ep_syncbn, 1x_frozenbn)"),
    "backbone_path": Field("any", _O, "the export fine-tuned (or evaluated)"),
    "pretrain_config": Field("any", _O, "the pre-training config of the backbone"),
    "pretrain_seed": Field("any", _O, "its seed"),
    "pretrain_run": Field("any", _O, "its run folder"),
    "evaluated_images": Field("any", _O, "images the evaluation scored"),
    "detector": Field("any", _O, "faster_rcnn or mask_rcnn"),
    "head": Field("any", _O, "the segmentation head"),
    "iterations": Field("any", _O, "training iterations"),
    "classes": Field("any", _O, "classes of the segmentation dataset"),
    "images_per_batch": Field("any", _O, "images per training iteration, all processes"),
    "resume_note": Field("any", _O, "what may differ from an uninterrupted run, where the "
                                     "framework cannot resume exactly"),
    # the noise evaluation (Fig. 4)
    "delta": Field("any", _O, "the std of the Gaussian pixel noise (0-1 scale)"),
    "draws": Field("any", _O, "noise draws per point"),
    "noise_seed": Field("any", _O, "the noise's seed"),
    "noise": Field("any", _O, "how the noise is made"),
    "images": Field("any", _O, "test images"),
    "draw_losses": Field("any", _O, "the loss of each draw"),
    "draw_top1": Field("any", _O, "the top-1 of each draw"),
}
REQUIRED = tuple(name for name, f in SCHEMA.items() if f.required)


def problems(record: Any) -> list[str]:
    """Why `record` is not a valid record (empty: it is): missing required fields, fields of
    the wrong type. Fields the schema does not know are not a problem (a newer writer)."""
    if not isinstance(record, dict):
        return ["not a JSON object"]
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        return [f"missing {', '.join(missing)}"]
    def wrong(key: str) -> bool:
        field, value = SCHEMA.get(key), record[key]
        if field is None:
            return False
        return not _is(field.kind, value) if value is not None or field.required else False

    return [f"{k} is {_shown(record[k])}, not {WORDS[SCHEMA[k].kind]}" for k in record
            if wrong(k)]


def _shown(value) -> str:
    """A field's value as a warning shows it: JSON's words for null and booleans, strings
    quoted, containers by kind only (they can be long)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def make(*, world_size: int, wall_seconds: float, **fields: Any) -> dict:
    """A record of `fields` plus provenance (git commit, devices, versions, when); raises
    ValueError for a field the schema does not know or an invalid value."""
    from . import provenance

    unknown = sorted(set(fields) - set(SCHEMA))
    if unknown:
        raise ValueError(f"record fields not in kdcl_common.records.SCHEMA: {unknown}; add "
                         f"them there (with their meaning) so that the tables keep them")
    env = provenance.environment(world_size)
    record = {**{k: str(v) if isinstance(v, os.PathLike) else v for k, v in fields.items()},
              "git_commit": env["git_commit"], "git_dirty": env["git_dirty"],
              "world_size": world_size, "devices": env["devices"], "versions": env["versions"],
              "wall_seconds": round(wall_seconds, 1), "created": env["created"]}
    wrong = problems(record)
    if wrong:
        raise ValueError(f"invalid record: {'; '.join(wrong)}")
    return record


# --------------------------------------------------------------------------------- the files
def folder(records: str | os.PathLike) -> Path:
    """The records folder a `records` setting names. A `.jsonl` path (the setting of earlier
    versions) names the folder it is in."""
    path = Path(records)
    return path.parent if path.suffix == ".jsonl" else path


def path_of(records: str | os.PathLike, stage: str, run: str | os.PathLike) -> Path:
    """The file of a run's records: <records>/<stage>/<run>.json."""
    return folder(records) / stage / f"{run}.json"


def write(records: str | os.PathLike, stage: str, run: str | os.PathLike,
          rows: list[dict]) -> Path:
    """Replace the records of `run` with `rows` (atomically: a reader sees the old file or
    the new one, and a crash leaves one of them)."""
    from .io import atomic_write_json

    target = path_of(records, stage, run)
    atomic_write_json(target, {"format": FORMAT, "records": rows})
    return target


def read_file(path: Path) -> list[dict]:
    """The records of one per-run file ([] for a file of another format)."""
    data = json.loads(path.read_text())
    return data.get("records", []) if isinstance(data, dict) and data.get("format") == FORMAT \
        else []


def files(paths: list[Path]) -> list[Path]:
    """Record files under `paths` (folders are searched recursively; files taken as given)."""
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.suffix in (".json", ".jsonl")
                          and p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            out.append(path)
    return out


def scan(paths: list[Path]) -> Iterator[tuple[str, Any]]:
    """(where, record or the text of a line that is not JSON) for every record under `paths`:
    `where` is file:line for JSONL, file#index for per-run files."""
    for file in files(paths):
        if file.suffix == ".jsonl":
            # undecodable bytes become U+FFFD: such a line is not JSON, and is skipped with a
            # warning naming it, as any other
            text = file.read_text(errors="replace")
            for number, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    yield f"{file}:{number}", _parse(line)
            continue
        try:
            rows = read_file(file)
        except (OSError, ValueError) as e:
            yield str(file), _Unreadable(str(e))
            continue
        for index, row in enumerate(rows):
            yield f"{file}#{index}", row


class _Unreadable(str):
    """A line or file that is not JSON (the reason)."""


def _parse(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        return _Unreadable(e.msg)


def unreadable(value: Any) -> str | None:
    return str(value) if isinstance(value, _Unreadable) else None

