"""Result records: the contract between the stages and `python -m results`.

One JSON object per line of `results/records/<stage>.jsonl`, appended atomically (a single
O_APPEND write), one per finished run: per student for pre-training, per fine-tuning run for
transfer. Tables are built from these, never from logs. Every record has

    stage          pretrain | transfer
    task           classification | detection | instance_segmentation | semantic_segmentation
    dataset        imagenet, cifar100, coco, coco_stuff164k, synthetic, ...
    backend        pytorch (pre-training) | torchvision | detectron2 | mmseg
    backbone       the architecture as a label (resnet18, mobilenet_v2_x0.5)
    method         independent, dml, kd, mean, kdcl_naive, kdcl_linear, kdcl_minlogit, ...
    metrics        name -> value; top-1/top-5 in %, AP and mIoU on the 0-100 scale (COCO's)
    seed, preset, config (its name), config_file, config_hash, run_dir, world_size,
    wall_seconds, git_commit, git_dirty, devices, versions, created

and, per stage, what identifies its inputs: pre-training `artifact` and `backbone_sha256` (the
export it wrote), for KD `teacher` and `teacher_sha256`; transfer `backbone_path`,
`backbone_sha256`, `pretrain_config`, `pretrain_seed`, `pretrain_run`. A record is written
only after a run finished and its evaluation saw images; `python -m results` drops a record
whose input has since been replaced (kdcl_common/runs.py: run identity).
"""
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
