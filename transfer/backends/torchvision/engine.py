"""Fine-tune and evaluate a torchvision Faster/Mask R-CNN on COCO: one process, or torchrun with
DDP (gloo on CPU, NCCL on GPU). SGD with warm-up and multistep decay, AMP on GPU, atomic
checkpoints every epoch, pycocotools evaluation. The run folder, resume policy and record are
transfer/lifecycle.py's."""
from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from kdcl_common import ConfigError, DataError, NonFiniteLossError, provenance
from kdcl_common import distributed as kdist
from kdcl_common.config import to_dict
from kdcl_common.logs import MetricsWriter, progress
from kdcl_common.sampling import GlobalBatchSampler, ShardSampler, sample_seed
from kdcl_common.schedule import learning_rate
from kdcl_common.stopping import Stopped, StopRequest

from ...coco import evaluate as coco_eval
from ...coco import synthetic
from ...coco.dataset import CocoDetection, check_same_categories, check_segmentations, collate
from ...lifecycle import TransferRun
from . import models as detectors
from .config import CHECKPOINTS, RECOVERY, TransferConfig

RECOVERY_ADVICE = (f"Lower optim.lr or lengthen optim.warmup_epochs, and continue with the same "
                   f"command plus --resume and the new value: after this stop, --resume accepts "
                   f"new values of {', '.join(RECOVERY)}, from the last checkpoint on, and the "
                   f"record lists the change.")


def check_backbone(cfg: TransferConfig, meta: dict, path: Path) -> None:
    arch = meta["architecture"]
    if cfg.model.backbone is not None and arch != cfg.model.backbone:
        raise ConfigError(f"{path} is a {arch} backbone, but {cfg.name} is a config for "
                          f"{cfg.model.backbone}: use a {cfg.model.backbone} backbone, a config "
                          f"for {arch}, or model.backbone=null")
    if meta["preprocessing"].get("color", "RGB") != "RGB":
        raise ConfigError(f"{path} expects {meta['preprocessing']['color']} input; the COCO "
                          f"loader gives RGB")


def _device_targets(targets, device):
    return [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v)
             for k, v in t.items()} for t in targets]


def _loader(dataset, batch_sampler, workers: int, pin: bool) -> DataLoader:
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers,
                      collate_fn=collate, pin_memory=pin, persistent_workers=workers > 0,
                      generator=torch.Generator().manual_seed(0))


class DetectionRun:
    """Everything one fine-tuning run holds, built (and so checked) before anything is written:
    the datasets, the detector with the converted backbone, the optimiser."""

    def __init__(self, cfg: TransferConfig, run: TransferRun, logger):
        self.cfg, self.run, self.ctx, self.logger = cfg, run, run.ctx, logger
        self.meta, self.run_dir = run.meta, run.run_dir
        self.masks = cfg.model.detector == "mask_rcnn"
        self._data()
        self._model()

    # ------------------------------------------------------------------------------- set-up
    def _data(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        if cfg.data.dataset == "synthetic":
            s = cfg.data.synthetic
            if ctx.local_rank == 0:
                synthetic.generate(cfg.data.root, s.train_images, s.val_images, s.min_size,
                                   s.max_size, s.seed)
            kdist.barrier()
        self.train_set = CocoDetection(cfg.data.root, cfg.data.train_split, train=True,
                                       masks=self.masks, seed=cfg.seed,
                                       max_pixels=cfg.data.max_image_pixels)
        self.val_set = CocoDetection(cfg.data.root, cfg.data.val_split, train=False, masks=False,
                                     max_pixels=cfg.data.max_image_pixels)
        if self.masks:  # the evaluation compares masks with every annotation's
            check_segmentations(self.val_set.coco, self.val_set.annotation_file)
        if not len(self.train_set):
            raise DataError(f"{cfg.data.train_split} of {cfg.data.root} has no image with a "
                            f"training target (a non-crowd box of at least 1x1 pixel): nothing "
                            f"to fine-tune on. Check data.train_split and its annotations.")
        check_same_categories(cfg.data.train_split, self.train_set.category_ids,
                              cfg.data.val_split, self.val_set.category_ids)
        pin = ctx.device.type == "cuda"
        self.train_loader = _loader(
            self.train_set, GlobalBatchSampler(len(self.train_set), cfg.optim.batch_size,
                                               ctx.rank, ctx.world_size, cfg.seed),
            cfg.data.workers, pin)
        self.val_loader = _loader(
            self.val_set, ShardSampler(len(self.val_set), cfg.train.eval_batch_size, ctx.rank,
                                       ctx.world_size), cfg.data.workers, pin)

    def _model(self) -> None:
        cfg, ctx, meta = self.cfg, self.ctx, self.meta
        torch.manual_seed(cfg.seed)  # the heads' initialisation, the same on every rank
        pre = meta["preprocessing"]
        kwargs = {k: v for k, v in meta["constructor_kwargs"].items() if k != "num_classes"}
        model = detectors.build(cfg.model, meta["architecture"], kwargs,
                                self.train_set.num_classes, pre["mean"], pre["std"])
        converted = detectors.load_backbone(model, self.run.backbone_state, meta["architecture"])
        self.logger.info(f"loaded {len(converted.state)} backbone tensors from "
                         f"{self.run.backbone} (skipped the classifier: "
                         f"{', '.join(converted.skipped)})")
        if cfg.model.norm == "syncbn":
            if ctx.device.type == "cuda" and ctx.distributed:
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                where = "on the CPU" if ctx.device.type != "cuda" else "in a single process"
                self.logger.warning(f"model.norm=syncbn has no effect {where} (SyncBatchNorm "
                                    f"needs several GPU processes): using BatchNorm")
        self.model = model.to(ctx.device)
        self.wrapped = (DDP(self.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda"
                            else None) if ctx.distributed else self.model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        o = cfg.optim
        self.optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum,
                                         nesterov=o.nesterov, weight_decay=o.weight_decay)
        amp = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.train.amp]
        if amp is not None and ctx.device.type != "cuda":
            self.logger.warning(f"train.amp={cfg.train.amp} is for GPUs; float32 on the CPU")
            amp = None
        self.autocast = (lambda: torch.autocast(ctx.device.type, dtype=amp)) if amp else nullcontext
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp == torch.float16)

    # ----------------------------------------------------------------------------- training
    def train_one_epoch(self, epoch: int, writer: MetricsWriter, stop: StopRequest | None = None,
                        resumed: dict | None = None) -> dict:
        """One epoch (from the step a mid-epoch checkpoint `resumed` reached). When `stop` is
        requested (the ranks agree: every step in one process, at the log interval with
        several) it returns early with "partial": where it stopped."""
        cfg, device = self.cfg, self.ctx.device
        loader = self.train_loader
        first = resumed["step"] if resumed else 0
        loader.batch_sampler.set_epoch(epoch, first)
        steps = len(loader.batch_sampler)
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        if resumed:  # the totals so far go to the main process (summed over ranks later)
            sums = {k: torch.tensor(v if self.ctx.is_main else 0.0, device=device)
                    for k, v in resumed["sums"].items()}
        first_bad = torch.full((), -1, dtype=torch.long, device=device)
        seen = resumed["seen"] if resumed and self.ctx.is_main else 0
        start, before = time.perf_counter(), resumed["seconds"] if resumed else 0.0
        window: dict[str, float] = {}
        for i, (images, targets) in enumerate(progress(loader, self.ctx.rank, total=steps,
                                                       initial=first, desc=f"epoch {epoch + 1}"),
                                              start=first):
            step = epoch * steps + i
            # RPN/RoI sampling's random stream is a function of (seed, step, rank)
            torch.manual_seed(sample_seed(cfg.seed, step, self.ctx.rank, 1))
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(cfg.optim, step, steps)
            images = [im.to(device, non_blocking=True) for im in images]
            targets = _device_targets(targets, device)
            with self.autocast():
                losses = self.wrapped(images, targets)
            total = sum(losses.values())
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            with torch.no_grad():
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0) + value.detach().float()
                first_bad.copy_(torch.where(~torch.isfinite(total.detach()) & (first_bad < 0),
                                            step, first_bad))
            seen += len(images)
            at_log = (i + 1) % cfg.train.log_interval == 0 or i + 1 == steps
            if at_log:
                self._check_finite(first_bad, epoch, steps)
                now = {k: float(v) for k, v in sums.items()}
                n = (i + 1) - window.get("_step", first)
                writer.write("train", step + 1, {"lr": self.optimizer.param_groups[0]["lr"],
                             **{k: (now[k] - window.get(k, 0.0)) / n for k in now}},
                             epoch=epoch + 1)
                window = {**now, "_step": i + 1}
            if stop is not None and i + 1 < steps and (at_log or not self.ctx.distributed) \
                    and kdist.any_across_ranks(stop.requested, device):
                self._check_finite(first_bad, epoch, steps)
                totals = {k: v.clone() for k, v in sums.items()}
                for v in totals.values():
                    kdist.all_reduce_sum(v)
                count = torch.tensor(float(seen), device=device)
                kdist.all_reduce_sum(count)
                return {"partial": {"step": i + 1, "sums": {k: float(v) for k, v in totals.items()},
                                    "seen": int(count.item()),
                                    "seconds": before + time.perf_counter() - start}}
        seconds = before + time.perf_counter() - start
        total_seen = torch.tensor(float(seen), device=device)
        kdist.all_reduce_sum(total_seen)
        images_total = int(total_seen.item())
        for v in sums.values():
            kdist.all_reduce_sum(v)
        return {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"],
                **{f"train/{k}": float(v) / max(steps * self.ctx.world_size, 1)
                   for k, v in sums.items()},
                "train_seconds": round(seconds, 2), "train_images": images_total,
                "images_per_second": round(images_total / seconds, 2),
                "peak_memory_mb": provenance.peak_memory_mb(device)}

    def _check_finite(self, first_bad: torch.Tensor, epoch: int, steps: int) -> None:
        bad = int(kdist.earliest_across_ranks(first_bad))
        if bad >= 0:
            last = CHECKPOINTS.path(self.run_dir)
            kept = (f"the last good checkpoint is {last} (not overwritten)"
                    if last.is_file() else "no checkpoint had been written yet")
            raise NonFiniteLossError(
                f"the detection loss became NaN/inf at epoch {epoch + 1}, step "
                f"{bad - epoch * steps + 1} of {steps}; training stopped and "
                f"{kept}. {RECOVERY_ADVICE}")

    # --------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self) -> dict | None:
        """COCO APs (x100) of boxes (and masks) on the validation split, and the number of
        images scored (`images`); None off rank 0."""
        self.model.eval()
        category_ids = self.val_set.category_ids
        results: list[dict] = []
        seen = []
        for images, targets in self.val_loader:
            seen += [t["image_id"] for t in targets]
            images = [im.to(self.ctx.device, non_blocking=True) for im in images]
            with self.autocast():
                outputs = self.model(images)
            for target, output in zip(targets, outputs):
                output = {k: (v.float() if v.is_floating_point() else v) for k, v in output.items()}
                results += coco_eval.to_coco_results(target["image_id"], output, category_ids)
        if self.ctx.distributed:
            gathered = [None] * self.ctx.world_size
            dist.all_gather_object(gathered, (results, seen))
            results = [r for part, _ in gathered for r in part]
            seen = [i for _, part in gathered for i in part]
        if not self.ctx.is_main:
            return None
        metrics = {f"bbox_{k}": v for k, v in
                   coco_eval.evaluate(self.val_set.coco, results, "bbox").items()}
        if self.masks:
            metrics.update({f"segm_{k}": v for k, v in
                            coco_eval.evaluate(self.val_set.coco, results, "segm").items()})
        metrics["detections"] = len(results)
        metrics["images"] = len(set(seen))
        return metrics

    # -------------------------------------------------------------------------- checkpoints
    def state(self, epoch: int, history: list, wall: float) -> dict:
        return {"epoch": epoch, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "config": to_dict(self.cfg), "history": history, "wall_seconds": wall}

    def restore(self, state: dict) -> tuple[int, list, float]:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty when saved without fp16 (train.amp may change after NaN)
            self.scaler.load_state_dict(state["scaler"])
        return state["epoch"], state["history"], state["wall_seconds"]


def train(session: DetectionRun, run: TransferRun) -> None:
    """Fine-tune from the start or the last checkpoint, evaluate, and record (main process).
    A stop signal (kdcl_common/stopping.py) checkpoints the step reached and stops."""
    cfg, ctx, logger, run_dir = session.cfg, session.ctx, session.logger, run.run_dir
    start_epoch, history, wall, partial = 0, [], 0.0, None
    if run.resuming:
        state = CHECKPOINTS.load(run_dir)
        start_epoch, history, wall = session.restore(state)
        partial = state.get("partial")
        where = (f"at epoch {start_epoch + 1}, step {partial['step']}" if partial
                 else f"after epoch {start_epoch}")
        logger.info(f"resumed from {CHECKPOINTS.path(run_dir)} {where}")
    writer = MetricsWriter(run_dir, enabled=ctx.is_main)
    try:
        with StopRequest() as stop:
            for epoch in range(start_epoch, cfg.optim.epochs):
                t0 = time.perf_counter()
                before = partial["seconds"] if partial else 0.0  # spent before a stop
                metrics = session.train_one_epoch(epoch, writer, stop, partial)
                if "partial" in metrics:
                    raise _stopped(session, stop, epoch, metrics["partial"], history, wall)
                partial = None
                last = epoch + 1 == cfg.optim.epochs
                if last or (cfg.train.eval_interval
                            and (epoch + 1) % cfg.train.eval_interval == 0):
                    scores = session.evaluate()
                    if scores is not None:
                        metrics.update({f"val/{k}": v for k, v in scores.items()})
                wall += before + time.perf_counter() - t0
                history.append(metrics)
                if ctx.is_main:
                    CHECKPOINTS.save(run_dir, session.state(epoch + 1, history, wall))
                    writer.write("epoch", epoch + 1, {k: v for k, v in metrics.items()
                                                      if isinstance(v, (int, float))})
                    shown = ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in metrics.items()
                                      if k.startswith("train/loss") or k.startswith("val/") and
                                      k.endswith("_AP") and v is not None)
                    logger.info(f"epoch {epoch + 1}/{cfg.optim.epochs} | lr {metrics['lr']:.4g}"
                                f" | {shown} | {metrics['images_per_second']:.1f} img/s")
                kdist.barrier()
    finally:
        writer.close()
    if ctx.is_main:
        final = history[-1]
        metrics = {k[len("val/"):]: v for k, v in final.items()
                   if k.startswith("val/") and k not in ("val/detections", "val/images")}
        images = sum(h["train_images"] for h in history)
        seconds = sum(h["train_seconds"] for h in history)
        run.finish(metrics, final.get("val/images", 0), ctx.world_size, wall,
                   round(images / seconds, 2) if seconds else None)  # logs the result
    kdist.barrier()


def _stopped(session: DetectionRun, stop: StopRequest, epoch: int, partial: dict,
             history: list, wall: float) -> Stopped:
    """Write the checkpoint of the step a stop signal reached (main process) and say so."""
    path = CHECKPOINTS.path(session.run_dir)
    if session.ctx.is_main:
        CHECKPOINTS.save(session.run_dir, {**session.state(epoch, history, wall),
                                           "partial": partial})
    kdist.barrier()
    steps = len(session.train_loader.batch_sampler)
    return Stopped(f"stopped by {stop.name} at epoch {epoch + 1}, step {partial['step']} of "
                   f"{steps}: the checkpoint of that step is {path}. Continue with the same "
                   f"command plus --resume.", stop.signum)


def evaluate_checkpoint(session: DetectionRun, run: TransferRun) -> None:
    """--eval-only: the run's last checkpoint on data.val_split."""
    path = CHECKPOINTS.path(run.run_dir)
    state = CHECKPOINTS.load(run.run_dir)
    session.model.load_state_dict(state["model"])
    session.logger.info(f"evaluating the checkpoint of epoch {state['epoch']}")
    scores = session.evaluate()
    if session.ctx.is_main:
        images = scores.pop("images")
        run.finish_evaluation(scores, images, str(path))  # logs the result
