"""The steps every backend built on mmengine shares: its Python config, training and evaluation
with mmengine's Runner (torchrun -> launcher 'pytorch'), the converted weights loaded through
the backbone's init_cfg, and this project's hooks (hooks.py). A subclass says what is its own:

    package, example     the OpenMMLab package it needs, and a `_base_` line of its configs
    loss                 what its loss is called in the non-finite-loss message
    adapt(cfg)           the backend's changes to a loaded config (e.g. its label checks)
    record_metrics(m, cfg)  the evaluator's metrics as the record names them
    fit_backbone, spec, prepare    as in transfer/backends/base.py
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from kdcl_common import KdclError

from ..backends.base import Backend as Base
from ..backends.base import Prepared, Spec
from ..naming import config_name

# how the run executes, not what it computes: may change on --resume
RESUMABLE = (*(f"{loader}.{key}" for loader in ("train_dataloader", "val_dataloader",
                                                  "test_dataloader")
               for key in ("num_workers", "persistent_workers")),
             "default_hooks.logger.interval", "default_hooks.checkpoint.interval")
EVALUATION = ("val_dataloader.*", "test_dataloader.*", "val_evaluator.*", "test_evaluator.*")
# where, not what: never identity (the data is identified by its files' fingerprint)
LOCATIONS = ("kdcl.output_root", "kdcl.records", "work_dir",
             *(f"{loader}.dataset.data_root" for loader in ("train_dataloader", "val_dataloader",
                                                            "test_dataloader")))


class Backend(Base):
    package: ClassVar[str]   # e.g. mmseg: imported before a config is read
    example: ClassVar[str]   # a `_base_` line of its configs, for messages
    loss: ClassVar[str] = "training"
    seed_key = "randomness.seed"

    @classmethod
    def require(cls) -> None:
        import importlib

        try:
            import mmcv.ops  # noqa: F401  (the OpenMMLab packages need mmcv's compiled ops)
            importlib.import_module(cls.package)
        except ImportError as e:
            raise KdclError(f"{cls.package} cannot be imported ({e}). It needs mmcv 2.1.0 "
                            f"compiled with its ops: run `bash scripts/setup.sh` (or see "
                            f"README, Set-up)") from None

    @classmethod
    def read(cls, path: Path, overrides: list[str]):
        from . import config

        cls.require()
        return cls.adapt(config.load(path, overrides, cls.name, cls.example))

    @classmethod
    def adapt(cls, cfg):
        return cfg

    @classmethod
    def training_images(cls, config: Path, gpus: int) -> int | None:
        cfg = cls.read(config, [])  # the batch size is per process
        return cfg.train_cfg.max_iters * cfg.train_dataloader.batch_size * max(gpus, 1)

    def load_config(self, path: Path, overrides: list[str]):
        return self.read(path, overrides)

    def record_metrics(self, metrics: dict, cfg) -> dict:
        raise NotImplementedError

    def _spec(self, cfg, path: Path, **own) -> Spec:
        """The Spec fields every mmengine config gives, with the backend's `own` (task,
        dataset, extra, data)."""
        import json

        kdcl = cfg.get("kdcl", {})
        return Spec(
            name=config_name(path), seed=cfg.get("randomness", {}).get("seed", 0),
            output_root=kdcl.get("output_root", "runs/transfer"),
            records=kdcl.get("records", "results/records"),
            preset=kdcl.get("preset", "custom"), protocol=kdcl.get("protocol", ""),
            config=json.loads(json.dumps(cfg.to_dict(), default=str)),
            config_text=cfg.pretty_text, config_file="config.py", resumable_keys=RESUMABLE,
            evaluation_keys=EVALUATION,
            other_run="randomness.seed=<n>, or a copy of the config under another name",
            location_keys=LOCATIONS, **own)

    def _runner_config(self, cfg, run, weights: Path):
        """The config as mmengine's Runner takes it in this process (launcher, devices)."""
        import torch

        from . import config, hooks

        world, cuda = run.ctx.world_size, torch.cuda.is_available()
        seed = cfg.get("randomness", {}).get("seed", 0)
        config.fall_back_from_syncbn(cfg, world, cuda)
        cfg.work_dir = str(run.run_dir)
        cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=str(weights))
        # The process group exists (transfer/lifecycle.py), so the Runner does not make one;
        # on CPUs DDP also needs device_ids=None.
        cfg.launcher = "pytorch" if world > 1 else "none"
        if world > 1 and not cuda:
            cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None,
                                         broadcast_buffers=False)
        cfg.custom_hooks = [*cfg.get("custom_hooks", []), dict(type="KdclMetricsHook"),
                            dict(type="PlainCheckpointHook"),
                            dict(type="StopOnNonFiniteLoss", loss=self.loss),
                            dict(type="ExactResume", seed=seed),
                            dict(type="ConsoleProgress",
                                 interval=cfg.default_hooks.logger.get("interval", 50))]
        hooks.use_atomic_local_writes()
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

        from . import config, hooks

        cfg = self._runner_config(prepared.cfg, run, self._write_weights(prepared.state, run))
        cfg.resume, cfg.load_from = run.resuming, None
        if run.resuming and run.ctx.is_main:
            config.last_checkpoint(run.run_dir)  # fixes a stale pointer before mmengine reads it
        with framework_output(run.run_dir / "log.txt"):
            runner = hooks.QuietRunner.from_cfg(cfg)
            runner.train()
        if run.ctx.is_main:
            metrics = _hook(runner, hooks.KdclMetricsHook)
            seconds = _hook(runner, hooks.ExactResume).wall_seconds
            batch = cfg.train_dataloader.batch_size * run.ctx.world_size
            run.finish(self.record_metrics(metrics.metrics, cfg), metrics.images,
                       run.ctx.world_size, seconds,
                       round(cfg.train_cfg.max_iters * batch / seconds, 2),
                       images_per_batch=batch)

    def evaluate(self, prepared: Prepared, run) -> None:
        from kdcl_common.logs import framework_output

        from . import config, hooks

        checkpoint = config.last_checkpoint(run.run_dir)
        # the checkpoint holds every weight: the backbone's init_cfg is not read
        cfg = self._runner_config(prepared.cfg, run, run.run_dir / "backbone.pth")
        cfg.load_from, cfg.resume = str(checkpoint), False
        with framework_output(run.run_dir / "log.txt"):
            runner = hooks.QuietRunner.from_cfg(cfg)
            metrics = runner.val()
        if run.ctx.is_main:
            hook = _hook(runner, hooks.KdclMetricsHook)
            run.finish_evaluation(self.record_metrics(metrics, cfg), hook.images,
                                  str(checkpoint))

    def has_checkpoint(self, run_dir: Path) -> bool:
        from .config import checkpoints

        return bool(checkpoints(run_dir))


def _hook(runner, kind):
    return next(h for h in runner.hooks if isinstance(h, kind))
