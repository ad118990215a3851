"""The mmseg backend: Semantic FPN and UPerNet on COCO-Stuff through mmsegmentation, from
mmseg's own Python configs (transfer/configs/mmseg). launcher.py holds the steps, extensions.py
what the backend registers in mmseg (label checks, atomic checkpoints, weights_only resume).
mmseg and mmcv are imported only when a config of this backend runs."""
from __future__ import annotations

import json
from pathlib import Path

from kdcl_common import KdclError

from ...naming import config_name
from ..base import Backend as Base
from ..base import Prepared, Spec

# how the run executes, not what it computes: may change on --resume
RESUMABLE = ("train_dataloader.num_workers", "val_dataloader.num_workers",
             "test_dataloader.num_workers", "train_dataloader.persistent_workers",
             "val_dataloader.persistent_workers", "test_dataloader.persistent_workers",
             "default_hooks.logger.interval", "default_hooks.checkpoint.interval")
EVALUATION = ("val_dataloader.*", "test_dataloader.*", "val_evaluator.*", "test_evaluator.*")
# where, not what: never identity (the data is identified by its files' fingerprint)
LOCATIONS = ("kdcl.output_root", "kdcl.records", "work_dir",
             *(f"{loader}.dataset.data_root" for loader in
               ("train_dataloader", "val_dataloader", "test_dataloader")))


def data_files(cfg) -> tuple[str, tuple[str, ...]]:
    """(the data root, its image and label folders of the training and validation splits)."""
    root = cfg.train_dataloader.dataset.data_root
    parts = []
    for loader in ("train_dataloader", "val_dataloader"):
        prefix = cfg[loader].dataset.data_prefix
        parts += [prefix.img_path, prefix.seg_map_path]
    return str(root), tuple(dict.fromkeys(parts))


def require_mmseg() -> None:
    try:
        import mmcv.ops  # noqa: F401  (mmseg needs mmcv's compiled ops)
        import mmseg  # noqa: F401
    except ImportError as e:
        raise KdclError(f"mmsegmentation cannot be imported ({e}). It needs mmcv 2.1.0 compiled "
                        f"with its ops: run `bash scripts/setup.sh` "
                        f"(or see README, Set-up)") from None


class Backend(Base):
    name = "mmseg"
    seed_key = "randomness.seed"


    @classmethod
    def training_images(cls, config: Path, gpus: int) -> int | None:
        require_mmseg()
        from . import launcher

        cfg = launcher.load(config, [])  # the batch size is per process
        return cfg.train_cfg.max_iters * cfg.train_dataloader.batch_size * max(gpus, 1)

    def load_config(self, path: Path, overrides: list[str]):
        require_mmseg()
        from . import launcher

        return launcher.load(path, overrides)

    def fit_backbone(self, cfg, meta: dict, path: Path):
        from . import launcher

        launcher.fit_backbone(cfg, meta, path)
        launcher.set_classes(cfg, len(launcher.dataset_classes(cfg)))
        return cfg

    def spec(self, cfg, path: Path) -> Spec:
        from . import launcher

        kdcl = cfg.get("kdcl", {})
        return Spec(
            name=config_name(path), seed=cfg.get("randomness", {}).get("seed", 0),
            output_root=kdcl.get("output_root", "runs/transfer"),
            records=kdcl.get("records", "results/records"),
            preset=kdcl.get("preset", "custom"), protocol=kdcl.get("protocol", ""),
            task="semantic_segmentation",
            dataset="synthetic" if kdcl.get("synthetic") else "coco_stuff164k",
            config=json.loads(json.dumps(cfg.to_dict(), default=str)),
            config_text=cfg.pretty_text, config_file="config.py", resumable_keys=RESUMABLE,
            evaluation_keys=EVALUATION,
            other_run="randomness.seed=<n>, or a copy of the config under another name",
            extra={"head": cfg.model.decode_head.type, "iterations": cfg.train_cfg.max_iters,
                   "classes": len(launcher.dataset_classes(cfg))},
            location_keys=LOCATIONS,
            data=None if kdcl.get("synthetic") else data_files(cfg))

    def prepare(self, cfg, run) -> Prepared:
        """Generate the smoke scenes when asked, check the dataset's layout, and convert the
        weights, checked against the backbone mmseg builds (written in train)."""
        from mmseg.registry import MODELS

        from ... import convert
        from ...coco import synthetic
        from . import launcher

        if cfg.get("kdcl", {}).get("synthetic"):
            for loader in ("train_dataloader", "val_dataloader"):
                synthetic.generate(cfg[loader].dataset.data_root)  # safe in every rank at once
        counts = launcher.check_layout(cfg)
        target = MODELS.build(cfg.model.backbone).state_dict()
        arch = run.meta["architecture"]
        converted = convert.convert(run.backbone_state, arch, "mmseg", target.keys())
        convert.check_shapes(converted, target, f"mmseg's {cfg.model.backbone.type}")
        return Prepared(cfg, counts["val_dataloader"], converted)

    def _runner_config(self, cfg, run, weights: Path):
        """The config as mmengine's Runner takes it in this process (launcher, devices)."""
        import torch

        from . import extensions, launcher

        world, cuda = run.ctx.world_size, torch.cuda.is_available()
        seed = cfg.get("randomness", {}).get("seed", 0)
        launcher.fall_back_from_syncbn(cfg, world, cuda)
        cfg.work_dir = str(run.run_dir)
        cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=str(weights))
        # The process group exists (transfer/lifecycle.py), so the Runner does not make one;
        # on CPUs DDP also needs device_ids=None.
        cfg.launcher = "pytorch" if world > 1 else "none"
        if world > 1 and not cuda:
            cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None,
                                         broadcast_buffers=False)
        cfg.custom_hooks = [*cfg.get("custom_hooks", []), dict(type="KdclMetricsHook"),
                            dict(type="PlainCheckpointHook"), dict(type="StopOnNonFiniteLoss"),
                            dict(type="ExactResume", seed=seed),
                            dict(type="ConsoleProgress",
                                 interval=cfg.default_hooks.logger.get("interval", 50))]
        extensions.use_atomic_local_writes()
        return cfg

    def _write_weights(self, converted, run) -> Path:
        """The converted weights the run starts from, written at every start from the backbone
        the run names: a file left by an earlier attempt (killed before its first checkpoint,
        of other weights at the same path) is never trained from."""
        from kdcl_common import distributed as kdist
        from kdcl_common.io import atomic_torch_save

        weights = run.run_dir / "backbone.pth"
        if run.ctx.is_main:
            atomic_torch_save(converted.state, weights)
        kdist.barrier()
        return weights

    def train(self, prepared: Prepared, run) -> None:
        from kdcl_common.logs import framework_output

        from . import extensions, launcher

        cfg = self._runner_config(prepared.cfg, run, self._write_weights(prepared.state, run))
        cfg.resume, cfg.load_from = run.resuming, None
        if run.resuming and run.ctx.is_main:
            launcher.last_checkpoint(run.run_dir)  # fixes a stale pointer before mmengine reads it
        with framework_output(run.run_dir / "log.txt"):
            runner = extensions.QuietRunner.from_cfg(cfg)
            runner.train()
        if run.ctx.is_main:
            metrics = _hook(runner, extensions.KdclMetricsHook)
            seconds = _hook(runner, extensions.ExactResume).wall_seconds
            batch = cfg.train_dataloader.batch_size * run.ctx.world_size
            run.finish({k: None if metrics.metrics.get(k) is None
                        else round(float(metrics.metrics[k]), 3) for k in ("mIoU", "mAcc", "aAcc")},
                       metrics.images, run.ctx.world_size, seconds,
                       round(cfg.train_cfg.max_iters * batch / seconds, 2),
                       images_per_batch=batch)

    def evaluate(self, prepared: Prepared, run) -> None:
        from kdcl_common.logs import framework_output

        from . import extensions, launcher

        checkpoint = launcher.last_checkpoint(run.run_dir)
        # the checkpoint holds every weight: the backbone's init_cfg is not read
        cfg = self._runner_config(prepared.cfg, run, run.run_dir / "backbone.pth")
        cfg.load_from, cfg.resume = str(checkpoint), False
        with framework_output(run.run_dir / "log.txt"):
            runner = extensions.QuietRunner.from_cfg(cfg)
            metrics = runner.val()
        if run.ctx.is_main:
            hook = _hook(runner, extensions.KdclMetricsHook)
            run.finish_evaluation({k: float(v) for k, v in metrics.items()}, hook.images,
                                  str(checkpoint))

    def has_checkpoint(self, run_dir: Path) -> bool:
        from .launcher import checkpoints

        return bool(checkpoints(run_dir))


def _hook(runner, kind):
    return next(h for h in runner.hooks if isinstance(h, kind))
