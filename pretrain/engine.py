"""The collaborative training engine: all students in one process (or one per GPU/CPU rank with
torchrun and DDP), one optimiser step per global batch, evaluation, checkpoints and export.

Per step: every student sees its own view (ICL) or the shared one, the method builds the
distillation targets from all students' detached logits, and one backward pass of
L = sum_i [CE_i + lambda T^2 KD_i] updates every student. Each student is wrapped in DDP on its
own, so students of different architectures reduce their own gradients. Training metrics stay
on the device and are read once per log interval: the step has no host-device synchronisation.

The engine knows methods only through the hooks of pretrain/methods.py's `Method`: which
networks to train and what their outputs are called (students, or the branches of one
multi-branch network), the forward pass, the targets, the loss terms that keep their graph,
the ensemble, per-epoch state and what to export.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from kdcl_common import NonFiniteLossError, artifact, fingerprint, provenance, records
from kdcl_common import distributed as kdist
from kdcl_common.config import to_dict, to_yaml
from kdcl_common.io import atomic_write_text
from kdcl_common.logs import MetricsWriter, get_logger, progress
from kdcl_common.runs import FINISHED, RESUME, Identity, RunFolder, RunSession
from kdcl_common.sampling import sample_seed
from kdcl_common.schedule import learning_rate
from kdcl_common.stopping import Stopped, StopRequest

from . import methods, soft_targets
from .config import CHECKPOINTS, LOCATIONS, RUNS, PretrainConfig
from .data import loader as data_loader
from .export import export_students
from .losses import collaborative_loss


RECOVERY = ("Lower optim.lr, lengthen optim.warmup_epochs or use train.amp=bf16 instead of fp16, "
            "and continue with the same command plus --resume and the new value (e.g. "
            "optim.lr=0.05): after this stop, --resume accepts new values of these keys, from "
            "the last checkpoint on, and the run's record lists the change.")


def student_names(cfg: PretrainConfig) -> list[str]:
    """The names of the outputs the method trains: the students' names (from the config, else
    the architecture; repeated names get _0, _1, ...), or a multi-branch network's branches."""
    return methods.method_class(cfg.method.name).output_names(cfg)


@dataclass
class EpochMeter:
    """An epoch's training metrics so far, kept on the device (read at log intervals): per
    student CE x n, KD x n and correct top-1 (`sums`), the images seen, and the first step whose
    loss was not finite (-1: none). Saved in a mid-epoch checkpoint, summed over the ranks."""

    sums: torch.Tensor
    seen: torch.Tensor
    first_bad: torch.Tensor

    @classmethod
    def zeros(cls, students: int, device: torch.device) -> "EpochMeter":
        return cls(torch.zeros(3, students, device=device), torch.zeros((), device=device),
                   torch.full((students,), -1, dtype=torch.long, device=device))

    def state_dict(self) -> dict:
        """The meter summed over the ranks (every rank calls this)."""
        sums, seen = self.sums.clone(), self.seen.clone()
        kdist.all_reduce_sum(sums)
        kdist.all_reduce_sum(seen)
        return {"sums": sums.cpu(), "seen": seen.cpu()}

    def load_state_dict(self, state: dict, main: bool) -> None:
        """Continue from `state` (the totals go to the main process, zeros elsewhere: the sum
        over the ranks at the end of the epoch is then the same)."""
        if main:
            self.sums.copy_(state["sums"])
            self.seen.copy_(state["seen"])


@dataclass
class Partial:
    """Where an epoch stopped on a signal: the steps done, the meter, the seconds spent."""

    step: int
    meter: dict
    seconds: float
    data_wait: float

    def state_dict(self) -> dict:
        return {"step": self.step, "meter": self.meter, "seconds": self.seconds,
                "data_wait": self.data_wait}


@dataclass
class Trainer:
    cfg: PretrainConfig
    ctx: kdist.DistContext
    names: list[str]
    modules: list[nn.Module]  # the networks themselves (evaluated, exported through the method)
    wrapped: list[nn.Module]  # the same, DDP-wrapped when distributed (trained)
    method: methods.Method
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    data: data_loader.Data
    logger: object
    writer: MetricsWriter
    autocast: Callable[[], AbstractContextManager]
    corrupt: data_loader.CorruptImageTracker

    def inputs(self, batch: data_loader.Batch, augment: bool = True):
        """(one normalised input per view, labels) on the device; images the device could not
        decode are left out and counted."""
        inputs, labels, bad = self.data.inputs(batch, augment)
        if bad:
            self.corrupt.update(bad)
        return inputs, labels

    def meter(self) -> EpochMeter:
        return EpochMeter.zeros(len(self.names), self.ctx.device)

    # ------------------------------------------------------------------------------- training
    def train_one_epoch(self, epoch: int, stop: StopRequest | None = None,
                        resumed: dict | None = None) -> dict | Partial:
        """One epoch (from the step a mid-epoch checkpoint `resumed` reached); returns its
        metrics, or a Partial when `stop` was requested (the ranks agree on the step: every
        step in one process, at the log interval with several)."""
        cfg, device = self.cfg, self.ctx.device
        loader = self.data.train
        first = resumed["step"] if resumed else 0
        loader.batch_sampler.set_epoch(epoch, first)
        self.method.start_of_epoch(epoch)  # also when resuming mid-epoch: a function of epoch
        steps = len(loader.batch_sampler)
        for m in self.modules:
            m.train()
        meter = self.meter()
        if resumed:
            meter.load_state_dict(resumed["meter"], self.ctx.is_main)
        window = [meter.sums.clone(), meter.seen.clone()]
        start = time.perf_counter()
        done_before = resumed["seconds"] if resumed else 0.0
        data_wait = resumed["data_wait"] if resumed else 0.0
        bar = progress(loader, self.ctx.rank, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
                       total=steps, initial=first)
        lr = learning_rate(cfg.optim, epoch * steps + first, steps)
        tick = time.perf_counter()
        for i, batch in enumerate(bar, start=first):
            data_wait += time.perf_counter() - tick
            if batch.bad:
                self.corrupt.update(batch.bad)
            step = epoch * steps + i
            if batch.size:
                lr = learning_rate(cfg.optim, step, steps)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.train_step(batch, meter, step)
            at_log = (i + 1) % cfg.train.log_interval == 0 or i + 1 == steps
            if at_log:
                self._check_finite(meter.first_bad, epoch, steps)
                n = (meter.seen - window[1]).clamp_min(1)
                interval = ((meter.sums - window[0]) / n).tolist()
                window = [meter.sums.clone(), meter.seen.clone()]
                scalars = {"lr": lr}
                for k, name in enumerate(self.names):
                    scalars.update({f"{name}/ce": interval[0][k], f"{name}/kd": interval[1][k],
                                    f"{name}/top1": 100 * interval[2][k]})
                self.writer.write("train", step + 1, scalars, epoch=epoch + 1)
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix({f"{n}_ce": f"{interval[0][k]:.3f}"
                                     for k, n in enumerate(self.names)})
            if stop is not None and i + 1 < steps and (at_log or not self.ctx.distributed) \
                    and kdist.any_across_ranks(stop.requested, device):
                self._check_finite(meter.first_bad, epoch, steps)
                return Partial(i + 1, meter.state_dict(),
                               done_before + time.perf_counter() - start, data_wait)
            tick = time.perf_counter()
        kdist.all_reduce_sum(meter.sums)
        kdist.all_reduce_sum(meter.seen)
        totals = (meter.sums / meter.seen.clamp_min(1)).tolist()
        seconds = done_before + time.perf_counter() - start
        images = int(meter.seen.item())
        out = {"lr": self.optimizer.param_groups[0]["lr"], "train_images": images,
               "train_seconds": round(seconds, 3), "data_wait_seconds": round(data_wait, 3),
               "images_per_second": round(images / seconds, 1),
               "peak_memory_mb": provenance.peak_memory_mb(device)}
        for k, name in enumerate(self.names):
            out.update({f"train/{name}/ce": totals[0][k], f"train/{name}/kd": totals[1][k],
                        f"train/{name}/top1": 100 * totals[2][k]})
        return out

    def train_step(self, batch: data_loader.Batch, meter: EpochMeter, step: int) -> None:
        """One optimiser step of every student on `batch` (global step `step`), its metrics
        added to `meter` on the device: no host-device synchronisation. The engine's loop and
        the benchmark (pretrain/bench.py) both call this."""
        # Dropout's random stream is a function of (seed, step, rank): resuming at any step
        # needs no RNG state.
        torch.manual_seed(sample_seed(self.cfg.seed, step, self.ctx.rank, 1))
        inputs, labels = self.inputs(batch)
        with self.autocast():
            outputs = self.method.forward(self.wrapped, inputs)
            logits = outputs.logits.float()
        targets = self.method.targets(logits.detach(), labels, inputs)
        m = self.cfg.method
        terms = collaborative_loss(logits, labels, targets, m.temperature, m.kd_weight,
                                   m.ce_weight)
        terms = self.method.graph_loss(terms, outputs, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms.total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():
            n = labels.numel()
            ce, kd = terms.ce.detach(), terms.kd.detach()
            correct = (logits.detach().argmax(-1) == labels).sum(1)
            meter.sums += torch.stack([ce * n, kd * n, correct.float()])
            meter.seen += n
            finite = torch.isfinite(ce) & torch.isfinite(kd)
            meter.first_bad.copy_(torch.where(~finite & (meter.first_bad < 0), step,
                                              meter.first_bad))

    def _check_finite(self, first_bad: torch.Tensor, epoch: int, steps: int) -> None:
        bad = kdist.earliest_across_ranks(first_bad).tolist()
        for name, step in zip(self.names, bad):
            if step >= 0:
                raise NonFiniteLossError(
                    f"the loss of student {name} became NaN/inf at epoch {epoch + 1}, step "
                    f"{step - epoch * steps + 1} of {steps} (global step {step + 1}); training "
                    f"stopped and {self._kept()}. {RECOVERY}")

    def _kept(self) -> str:
        """What a stop on NaN leaves to resume from, for its message."""
        last = CHECKPOINTS.path(self.cfg.run_dir)
        return (f"the last good checkpoint is {last} (not overwritten)" if last.is_file()
                else "no checkpoint had been written yet")

    def _check_outputs(self, nonfinite: list[int], split: str, images: int) -> None:
        """NaN/inf logits would score as some top-1 (and KDCL-General's weights as nothing):
        a diverged student stops the run before anything is recorded."""
        bad = [f"{name} on {count} of {images}" for name, count in zip(self.names, nonfinite)
               if count]
        if bad:
            raise NonFiniteLossError(
                f"NaN/inf outputs on the {split} images ({', '.join(bad)}): the student's "
                f"weights or BatchNorm statistics diverged though its training loss stayed "
                f"finite; training stopped and {self._kept()}. {RECOVERY}")

    # ----------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, loader, prefix: str, covariance: bool = False) -> dict:
        """Top-1/top-5 of every student (or branch) and of their ensemble (the method's; by
        default the mean probability), summed over ranks. With `covariance`, also
        KDCL-General's held-out error covariance and weights."""
        device, S = self.ctx.device, len(self.names)
        for m in self.modules:
            m.eval()
        hits = torch.zeros(S + 1, 2, device=device, dtype=torch.float64)
        seen = torch.zeros((), device=device, dtype=torch.float64)
        cov = torch.zeros(S, S, device=device, dtype=torch.float64)
        nonfinite = torch.zeros(S, device=device, dtype=torch.long)  # images, per student
        for batch in loader:
            if batch.bad:
                self.corrupt.update(batch.bad)
            if not batch.size:
                continue
            (x,), labels = self.inputs(batch, augment=False)
            with self.autocast():
                outputs = self.method.forward(self.modules, [x])
                logits = outputs.logits.float()
            nonfinite += (~torch.isfinite(logits)).any(-1).sum(-1)
            probs = logits.softmax(-1)
            ensemble = self.method.ensemble_probs(outputs, probs)
            scores = torch.cat([probs, ensemble[None]])  # [S + 1, B, C]
            top = scores.topk(min(5, scores.shape[-1]), dim=-1).indices
            match = top == labels[None, :, None]
            hits += torch.stack([match[..., 0].sum(1), match.any(-1).sum(1)], 1).double()
            seen += labels.numel()
            if covariance:
                n = labels.numel()
                cov += soft_targets.error_covariance(probs, labels,
                                                     self.cfg.method.general_error) * n
        kdist.all_reduce_sum(hits)
        kdist.all_reduce_sum(seen)
        kdist.all_reduce_sum(nonfinite)
        self._check_outputs(nonfinite.tolist(), prefix, int(seen))
        acc = (100 * hits / seen.clamp_min(1)).tolist()
        out = {}
        for k, name in enumerate([*self.names, "ensemble"]):
            out[f"{prefix}/{name}/top1"], out[f"{prefix}/{name}/top5"] = acc[k]
        if covariance:
            kdist.all_reduce_sum(cov)
            weights = soft_targets.weights_from_covariance(cov / seen.clamp_min(1))
            out["general_weights"] = [round(w, 6) for w in weights.tolist()]
        return out

    # ---------------------------------------------------------------------------- checkpoints
    def state_dict(self, epoch: int, history: list, wall: float) -> dict:
        """A checkpoint after `epoch` completed epochs (a stop adds where it was in the next)."""
        return {"epoch": epoch, "students": [m.state_dict() for m in self.modules],
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "method": self.method.state_dict(), "config": to_dict(self.cfg),
                "history": history, "wall_seconds": wall}

    def load_state_dict(self, state: dict) -> None:
        for m, sd in zip(self.modules, state["students"]):
            m.load_state_dict(sd)
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty when saved without fp16 (train.amp may change after NaN)
            self.scaler.load_state_dict(state["scaler"])
        self.method.load_state_dict(state["method"])

    def sync_buffers(self) -> None:
        """Give every rank rank 0's BatchNorm statistics before evaluating and exporting."""
        if self.ctx.distributed:
            for m in self.modules:
                for buffer in m.buffers():
                    dist.broadcast(buffer, src=0)


# ------------------------------------------------------------------------------------ set-up
def configure_determinism(cfg: PretrainConfig, device: torch.device) -> None:
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def _build_students(cfg: PretrainConfig, num_classes: int, ctx, logger) -> tuple[list, list]:
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every attempt
    modules = methods.method_class(cfg.method.name).networks(cfg, num_classes)
    if cfg.train.sync_bn:
        if ctx.device.type == "cuda" and ctx.distributed:
            modules = [nn.SyncBatchNorm.convert_sync_batchnorm(m) for m in modules]
        else:
            where = "on the CPU" if ctx.device.type != "cuda" else "in a single process"
            logger.warning(f"train.sync_bn=true has no effect {where} (torch's SyncBatchNorm "
                           f"needs several GPU processes): using BatchNorm")
    # One network per student (a multi-branch method builds one from its one student).
    formats = [torch.channels_last if (cfg.train.channels_last if s.channels_last is None
                                       else s.channels_last) else torch.preserve_format
               for s in cfg.students]
    modules = [m.to(ctx.device, memory_format=f) for m, f in zip(modules, formats)]
    if not ctx.distributed:
        return modules, modules
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return modules, [DDP(m, device_ids=device_ids) for m in modules]


def _amp_dtype(cfg: PretrainConfig, device: torch.device, logger) -> torch.dtype | None:
    if cfg.train.amp == "off":
        return None
    if device.type != "cuda":
        logger.warning(f"train.amp={cfg.train.amp} is for GPUs; training in float32 on the CPU")
        return None
    return torch.bfloat16 if cfg.train.amp == "bf16" else torch.float16


def make_autocast(device: torch.device, dtype: torch.dtype | None) -> Callable:
    """A factory of mixed-precision contexts (a no-op context when `dtype` is None)."""
    if dtype is None:
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def _stopped(trainer: "Trainer", stop: StopRequest, epoch: int, partial: Partial,
             history: list, wall: float, run_dir: Path) -> Stopped:
    """Write the checkpoint of the step a stop signal reached (main process) and say so."""
    path = CHECKPOINTS.path(run_dir)
    if trainer.ctx.is_main:
        CHECKPOINTS.save(run_dir, {**trainer.state_dict(epoch, history, wall),
                                   "partial": partial.state_dict()})
        trainer.writer.close()
    kdist.barrier()
    steps = len(trainer.data.train.batch_sampler)
    return Stopped(f"stopped by {stop.name} at epoch {epoch + 1}, step {partial.step} of "
                   f"{steps}: the checkpoint of that step is {path}. Continue with the same "
                   f"command plus --resume.", stop.signum)


def _epoch_line(epoch: int, cfg: PretrainConfig, names: list[str], m: dict, seconds: float) -> str:
    parts = [f"epoch {epoch + 1}/{cfg.optim.epochs}", f"lr {m['lr']:.4g}"]
    for n in names:
        parts.append(f"{n}: ce {m[f'train/{n}/ce']:.3f} kd {m[f'train/{n}/kd']:.3f} "
                     f"top1 {m[f'val/{n}/top1']:.2f}")
    parts.append(f"ensemble top1 {m['val/ensemble/top1']:.2f}")
    if "general_weights" in m:
        parts.append(f"w {m['general_weights']}")
    parts.append(f"{m['images_per_second']:.0f} img/s, {seconds:.1f} s")
    return " | ".join(parts)


def run(cfg: PretrainConfig, config_file: str, resume: bool = False,
        restart: bool = False) -> Path:
    """Train (or resume, or restart) the run described by `cfg`, then export. Returns the run
    directory. What may happen to an existing run folder: kdcl_common/runs.py."""
    ctx = kdist.init(cfg.train.device)
    try:
        return _run(cfg, config_file, resume, restart, ctx)
    finally:
        kdist.shutdown()


def make_optimizer(cfg: PretrainConfig, params: list) -> torch.optim.SGD:
    """SGD over every student's parameters: one fused kernel where the device has one (torch
    refuses fused=True elsewhere), else the multi-tensor one. Both update every tensor in a few
    kernels; the per-tensor loop, torch's default on the CPU, is 6x slower for a ResNet-18."""
    kwargs = dict(lr=cfg.optim.lr, momentum=cfg.optim.momentum, nesterov=cfg.optim.nesterov,
                  weight_decay=cfg.optim.weight_decay)
    if cfg.train.fused_optimizer:
        try:
            return torch.optim.SGD(params, fused=True, **kwargs)
        except RuntimeError:
            pass
    return torch.optim.SGD(params, foreach=True, **kwargs)


def build_trainer(cfg: PretrainConfig, ctx, data: data_loader.Data, names: list[str], logger,
                  writer: MetricsWriter) -> Trainer:
    """Students, optimiser, mixed precision and method for `cfg` on `data` (no files written)."""
    modules, wrapped = _build_students(cfg, data.num_classes, ctx, logger)
    if cfg.train.compile:
        wrapped = [torch.compile(m) for m in wrapped]  # shares the parameters of `modules`
    amp_dtype = _amp_dtype(cfg, ctx.device, logger)
    optimizer = make_optimizer(cfg, [p for m in modules for p in m.parameters()])
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp_dtype == torch.float16)
    autocast = make_autocast(ctx.device, amp_dtype)
    method = methods.build(cfg.method, len(names), ctx.device, data.num_classes, data.mean,
                           data.std, autocast)
    if cfg.train.channels_last:
        method.to_memory_format(torch.channels_last)
    corrupt = data_loader.CorruptImageTracker(data.train_size + len(data.held_out_indices),
                                              cfg.data.max_corrupt_fraction, logger)
    return Trainer(cfg, ctx, names, modules, wrapped, method, optimizer, scaler, data, logger,
                   writer, autocast, corrupt)


def run_identity(cfg: PretrainConfig) -> Identity:
    """The config less its locations, the data's fingerprint and, for KD, the teacher's
    weights (kdcl_common/runs.py)."""
    inputs = {"teacher": artifact.as_input(cfg.method.teacher)} if cfg.method.teacher else {}
    data = data_loader.identified_files(cfg.data)
    if data is not None:
        inputs["data"] = fingerprint.as_input(cfg.data.root, data)
    return Identity(to_dict(cfg), inputs, LOCATIONS)


def status(config_file: str, overrides: list[str] = ()) -> tuple[str, str]:
    """What `python -m pretrain config_file *overrides` would find (RunFolder.status)."""
    from .config import load

    cfg = load(config_file, overrides)
    return RunFolder(cfg.run_dir, RUNS, run_identity(cfg)).status()


def _run(cfg: PretrainConfig, config_file: str, resume: bool, restart: bool, ctx) -> Path:
    run_dir = cfg.run_dir
    logger = get_logger("pretrain", ctx.rank)
    folder = RunFolder(run_dir, RUNS, run_identity(cfg))
    with RunSession(folder, logger, extra_writable=(records.folder(cfg.records),)) as session, \
            StopRequest() as stop:
        action = session.decide(resume, restart)
        if action == FINISHED:
            logger.info(f"{run_dir} is already finished; exports in {run_dir / 'export'}")
            return run_dir
        # Checks and set-up: nothing is written to the run folder until session.start().
        configure_determinism(cfg, ctx.device)
        names = student_names(cfg)
        views = len(cfg.students) if cfg.method.icl else 1
        data = data_loader.build(cfg.data, views, cfg.optim.batch_size, cfg.seed, ctx,
                                 cfg.train.channels_last)
        trainer = build_trainer(cfg, ctx, data, names, logger,
                                MetricsWriter(run_dir, enabled=False))
        start_epoch, history, wall, partial = 0, [], 0.0, None
        if action == RESUME:
            state = CHECKPOINTS.load(run_dir)
            trainer.load_state_dict(state)
            start_epoch, history, wall = state["epoch"], state["history"], state["wall_seconds"]
            partial = state.get("partial")
        session.start(action, {
            "config.yaml": to_yaml(cfg),
            "environment.json": json.dumps({**provenance.environment(ctx.world_size),
                                            "config_file": config_file,
                                            "config_hash": folder.identity.config_hash},
                                           indent=2) + "\n"})
        if ctx.is_main and len(data.held_out_indices):
            src = data.train.dataset.source
            atomic_write_text(run_dir / "held_out.txt", "\n".join(
                src.describe(int(i)) for i in data.held_out_indices) + "\n")
        trainer.writer = MetricsWriter(run_dir, enabled=ctx.is_main)
        logger.info(f"run {cfg.name} seed {cfg.seed}: {cfg.method.name} (icl={cfg.method.icl}), "
                    f"students {names}, {ctx.world_size} process(es) on {ctx.device.type}; "
                    f"writing to {run_dir}")
        if action == RESUME:
            where = (f"at epoch {start_epoch + 1}, step {partial['step']}" if partial
                     else f"after epoch {start_epoch}")
            logger.info(f"resumed from {CHECKPOINTS.path(run_dir)} {where}"
                        + (" with " + "; ".join(c.strip() for c in folder.changes)
                           if folder.changes else ""))
        try:
            for epoch in range(start_epoch, cfg.optim.epochs):
                t0 = time.perf_counter()
                before = partial["seconds"] if partial else 0.0  # spent before a stop
                result = trainer.train_one_epoch(epoch, stop, partial)
                if isinstance(result, Partial):
                    raise _stopped(trainer, stop, epoch, result, history, wall, run_dir)
                partial = None
                metrics = {"epoch": epoch + 1, **result}
                trainer.sync_buffers()
                metrics.update(trainer.evaluate(data.val, "val"))
                if data.held_out is not None:
                    held = trainer.evaluate(data.held_out, "held_out", covariance=True)
                    metrics.update(held)
                    trainer.method.end_of_epoch(held)
                seconds = before + time.perf_counter() - t0
                wall += seconds
                metrics["epoch_seconds"] = round(seconds, 3)
                history.append(metrics)
                if ctx.is_main:
                    CHECKPOINTS.save(run_dir, trainer.state_dict(epoch + 1, history, wall))
                    trainer.writer.write("epoch", epoch + 1,
                                         {k: v for k, v in metrics.items()
                                          if k != "general_weights"},
                                         general_weights=metrics.get("general_weights"))
                    logger.info(_epoch_line(epoch, cfg, names, metrics, seconds))
                kdist.barrier()
        finally:
            trainer.writer.close()

        if ctx.is_main:
            metas = export_students(cfg, config_file,
                                    trainer.method.exports(names, trainer.modules, cfg.students),
                                    trainer.modules, data, history, wall, ctx.world_size, folder)
            for meta in metas:
                logger.info(f"exported {meta['name']} ({meta['architecture']}, top-1 "
                            f"{meta['metrics']['top1']:.2f}) to "
                            f"{run_dir / 'export' / meta['name']}.pth")
    kdist.barrier()
    return run_dir
