"""Export: the method's exports (every student; for a multi-branch method one branch) as backbone
artifacts (kdcl_common/artifact.py), and one result record per student or branch
(kdcl_common/records.py).

Every record and artifact holds the final epoch's top-1/top-5 (`top1`, the tables' number) and
the best validation top-1 over the epochs with its epoch (`best_top1`, `best_epoch`, 1-based),
and `system_parameters`: the parameters of everything trained together (all students, or the
whole multi-branch network with its gate), counted from the modules.
"""
from __future__ import annotations

import torch.nn as nn

from .methods import Export

from kdcl_common import artifact, models, provenance, records
from kdcl_common.identity import accepted_changes
from kdcl_common.config import to_dict
from kdcl_common.io import DiskFullError, atomic_write_json
from kdcl_common.runs import RunFolder

from .config import CHECKPOINTS, RUNS, PretrainConfig


def export_students(cfg: PretrainConfig, config_file: str, exports: list[Export],
                    modules: list[nn.Module], data, history: list[dict], wall_seconds: float,
                    world_size: int, folder: RunFolder) -> list[dict]:
    """Write `<run_dir>/export/<student>.{pth,json}` for every export with a module, the run's
    records (one per export), then the manifest (last, so its presence means the export is
    complete). `modules` are the networks trained (for the parameter count)."""
    try:
        return _export(cfg, config_file, exports, modules, data, history, wall_seconds,
                       world_size, folder)
    except DiskFullError as e:
        raise DiskFullError(e.path, f"The export is incomplete, and the last checkpoint "
                            f"({CHECKPOINTS.path(cfg.run_dir)}) is intact: free some space, then "
                            f"run the same command with --resume, which exports again.") from e


def best_epoch(history: list[dict], name: str) -> tuple[float, int]:
    """(the best validation top-1 of `name` over the epochs, its epoch; the first if tied)."""
    scores = [(h[f"val/{name}/top1"], h["epoch"]) for h in history]
    top1 = max(score for score, _ in scores)
    return top1, next(epoch for score, epoch in scores if score == top1)


def _export(cfg, config_file, exports, modules, data, history, wall_seconds, world_size,
            folder: RunFolder) -> list[dict]:
    run_dir = cfg.run_dir
    final = history[-1]
    names = [e.name for e in exports]
    system_parameters = sum(p.numel() for m in modules for p in m.parameters())
    teacher = folder.identity.inputs.get("teacher", {})
    changes = accepted_changes(run_dir)
    env = provenance.environment(world_size)
    chash = folder.identity.config_hash  # locations left out
    images = sum(h.get("train_images", 0) for h in history)
    train_seconds = sum(h.get("train_seconds", 0.0) for h in history)
    group = "+".join(names)
    pre = artifact.preprocessing(data.mean, data.std, cfg.data.image_size,
                                 cfg.data.eval_resize if cfg.data.policy == "imagenet" else None)
    metas, rows = [], []
    for name, arch, kwargs, module, notes in exports:
        top1, top5 = final[f"val/{name}/top1"], final[f"val/{name}/top5"]
        best_top1, best_at = best_epoch(history, name)
        scores = {"top1": top1, "top5": top5, "best_top1": best_top1, "best_epoch": best_at}
        path = run_dir / "export" / f"{name}.pth"
        meta = {} if module is None else artifact.save(path, module, {
            "architecture": arch,
            "constructor_kwargs": {"num_classes": data.num_classes, **kwargs},
            "name": name,
            **(notes or {}),
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
            "metrics": scores,
            "system_parameters": system_parameters,
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
        if module is not None:
            metas.append(meta)
        rows.append(records.make(
            stage="pretrain", task="classification", dataset=data.dataset_name,
            backend="pytorch", backbone=models.label(arch, kwargs), method=cfg.method.name,
            metrics={**scores,
                     "ensemble_top1": final.get("val/ensemble/top1"),
                     "ensemble_top5": final.get("val/ensemble/top5")},
            seed=cfg.seed, preset=cfg.preset, config=cfg.name, config_file=config_file,
            config_hash=chash, run_dir=run_dir, world_size=world_size, wall_seconds=wall_seconds,
            student=name, icl=cfg.method.icl, group=group, teacher=cfg.method.teacher,
            teacher_sha256=teacher.get("sha256"), epochs=cfg.optim.epochs,
            artifact=str(path) if module is not None else None, exported=module is not None,
            backbone_sha256=meta.get("sha256"), system_parameters=system_parameters,
            images_per_second=round(images / train_seconds, 1) if train_seconds else None,
            **({"config_changes": changes} if changes else {})))
    records.write(cfg.records, "pretrain", f"{cfg.name}/seed{cfg.seed}", rows)
    atomic_write_json(run_dir / RUNS.finished_marker, {
        "students": names, "created": env["created"],
        "files": {e.name: f"{e.name}.pth" for e in exports if e.module is not None}})
    return metas
