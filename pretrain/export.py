"""Export: every student as a backbone artifact (kdcl_common/artifact.py) and one result
record per student (kdcl_common/records.py)."""
from __future__ import annotations

import torch.nn as nn

from kdcl_common import artifact, models, provenance, records
from kdcl_common.identity import accepted_changes
from kdcl_common.config import config_hash, to_dict
from kdcl_common.io import DiskFullError, atomic_write_json
from kdcl_common.runs import RunFolder

from .config import CHECKPOINTS, RUNS, PretrainConfig


def export_students(cfg: PretrainConfig, config_file: str, names: list[str],
                    modules: list[nn.Module], data, final: dict, history: list[dict],
                    wall_seconds: float, world_size: int, folder: RunFolder) -> list[dict]:
    """Write `<run_dir>/export/<student>.{pth,json}`, append the records, then the manifest
    (last, so its presence means the export is complete)."""
    try:
        return _export(cfg, config_file, names, modules, data, final, history, wall_seconds,
                       world_size, folder)
    except DiskFullError as e:
        raise DiskFullError(e.path, f"The export is incomplete, and the last checkpoint "
                            f"({CHECKPOINTS.path(cfg.run_dir)}) is intact: free some space, then "
                            f"run the same command with --resume, which exports again.") from e


def _export(cfg, config_file, names, modules, data, final, history, wall_seconds, world_size,
            folder: RunFolder) -> list[dict]:
    run_dir = cfg.run_dir
    teacher = folder.identity.inputs.get("teacher", {})
    changes = accepted_changes(run_dir)
    env = provenance.environment(world_size)
    chash = config_hash(cfg)
    images = sum(h.get("train_images", 0) for h in history)
    train_seconds = sum(h.get("train_seconds", 0.0) for h in history)
    group = "+".join(names)
    pre = artifact.preprocessing(data.mean, data.std, cfg.data.image_size,
                                 cfg.data.eval_resize if cfg.data.policy == "imagenet" else None)
    metas = []
    for name, module, spec in zip(names, modules, cfg.students):
        top1, top5 = final[f"val/{name}/top1"], final[f"val/{name}/top5"]
        meta = artifact.save(run_dir / "export" / f"{name}.pth", module, {
            "architecture": spec.arch,
            "constructor_kwargs": {"num_classes": data.num_classes, **spec.kwargs},
            "name": name,
            "preprocessing": pre,
            "method": cfg.method.name,
            "icl": cfg.method.icl,
            "students": names,
            "teacher": cfg.method.teacher,
            "teacher_sha256": teacher.get("sha256"),
            "dataset": {"name": data.dataset_name, "root": cfg.data.root,
                        "num_classes": data.num_classes, "train_images": data.train_size,
                        "held_out_per_class": cfg.data.held_out_per_class},
            "epochs": cfg.optim.epochs,
            "metrics": {"top1": top1, "top5": top5},
            "seed": cfg.seed,
            "config_file": config_file,
            "config_name": cfg.name,
            "config_hash": chash,
            "config": to_dict(cfg),
            "run_dir": str(run_dir),
            "git_commit": env["git_commit"],
            "git_dirty": env["git_dirty"],
            "created": env["created"],
            "versions": env["versions"],
        })
        metas.append(meta)
        records.append(
            cfg.records, stage="pretrain", task="classification", dataset=data.dataset_name,
            backend="pytorch", backbone=models.label(spec.arch, spec.kwargs), method=cfg.method.name,
            metrics={"top1": top1, "top5": top5,
                     "ensemble_top1": final.get("val/ensemble/top1"),
                     "ensemble_top5": final.get("val/ensemble/top5")},
            seed=cfg.seed, preset=cfg.preset, config=cfg.name, config_file=config_file,
            config_hash=chash, run_dir=run_dir, world_size=world_size, wall_seconds=wall_seconds,
            student=name, icl=cfg.method.icl, group=group, teacher=cfg.method.teacher,
            teacher_sha256=teacher.get("sha256"), epochs=cfg.optim.epochs, artifact=str(run_dir / "export" / f"{name}.pth"),
            backbone_sha256=meta["sha256"],
            images_per_second=round(images / train_seconds, 1) if train_seconds else None,
            **({"config_changes": changes} if changes else {}))
    atomic_write_json(run_dir / RUNS.finished_marker, {
        "students": names, "created": env["created"], "files": {n: f"{n}.pth" for n in names}})
    return metas
