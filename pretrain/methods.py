"""Pre-training methods: how each student's distillation target is made from a batch.

A method sees the students' logits (detached, float32, [S, B, C]), the labels and the students'
normalised inputs (one per view) and returns `Targets` (pretrain/losses.py), or None for no
distillation term. Everything here runs without autograd.

    independent     hard labels only (lambda = 0)
    dml             Deep Mutual Learning: each student distils from every peer, mean of
                    KL(p_peer || q_i) over the peers (peers detached, updated simultaneously)
    kd              Hinton's KD from a frozen teacher that is an exported backbone
    mean            one shared target from the mean logit (the usual "online ensemble")
    kdcl_naive      one shared target, Eq. 4       (pretrain/soft_targets.py)
    kdcl_linear     one shared target, Eq. 5
    kdcl_minlogit   one shared target, Eq. 6-7
    kdcl_general    one shared target, sum_i w_i softmax(z_i / T), w re-estimated every epoch
                    on the held-out split (Eq. 8-11)

To add a method: subclass `Method`, implement `targets` (and `state_dict`/`load_state_dict`
if it has state to checkpoint), add it to `build` and to config.METHODS.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from torch import Tensor

from kdcl_common import ConfigError, artifact

from . import soft_targets
from .config import MethodConfig
from .losses import Targets


class Method:
    def __init__(self, cfg: MethodConfig, num_students: int, device: torch.device):
        self.temperature = cfg.temperature
        self.num_students = num_students
        self.device = device

    def targets(self, logits: Tensor, labels: Tensor, inputs: list[Tensor]) -> Targets | None:
        raise NotImplementedError

    def end_of_epoch(self, held_out: dict) -> None:
        """Called after every epoch with the held-out evaluation (engine.Trainer.evaluate
        with covariance=True), when the run holds images out."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Independent(Method):
    def targets(self, logits, labels, inputs):
        return None


class SharedTarget(Method):
    """KDCL's ensembles: one teacher logit z_t = h(z_1..z_S; y) for all students."""

    def __init__(self, cfg, num_students, device, ensemble: Callable[[Tensor, Tensor], Tensor]):
        super().__init__(cfg, num_students, device)
        self.ensemble = ensemble
        self.mixing = torch.ones(num_students, 1, device=device)

    @torch.no_grad()
    def targets(self, logits, labels, inputs):
        z_t = self.ensemble(logits, labels)
        return Targets((z_t / self.temperature).log_softmax(-1)[None], self.mixing)


class General(Method):
    """KDCL-General. Weights start uniform (the paper's w_i = 1/m) and are replaced after every
    epoch by the engine, from the error covariance on the held-out split."""

    def __init__(self, cfg, num_students, device):
        super().__init__(cfg, num_students, device)
        self.error = cfg.general_error
        self.weights = torch.full((num_students,), 1.0 / num_students, device=device)
        self.mixing = torch.ones(num_students, 1, device=device)

    def set_weights(self, weights: Tensor) -> None:
        self.weights = weights.to(self.device, torch.float32)

    def end_of_epoch(self, held_out: dict) -> None:
        self.set_weights(torch.tensor(held_out["general_weights"]))

    @torch.no_grad()
    def targets(self, logits, labels, inputs):
        log_p = soft_targets.general_log_probs(logits, self.weights, self.temperature)
        return Targets(log_p[None], self.mixing)

    def state_dict(self) -> dict:
        return {"weights": self.weights.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.set_weights(state["weights"])


class DML(Method):
    def __init__(self, cfg, num_students, device):
        super().__init__(cfg, num_students, device)
        eye = torch.eye(num_students, device=device)
        self.mixing = (1 - eye) / (num_students - 1)

    @torch.no_grad()
    def targets(self, logits, labels, inputs):
        return Targets((logits / self.temperature).log_softmax(-1), self.mixing)


class KD(Method):
    """Vanilla KD: the teacher sees the same view as each student and never trains."""

    def __init__(self, cfg, num_students, device, num_classes: int,
                 mean: tuple[float, ...], std: tuple[float, ...], autocast: Callable):
        super().__init__(cfg, num_students, device)
        self.autocast = autocast
        teacher, meta = artifact.load(cfg.teacher)
        self.teacher_meta = meta
        out_features = _num_outputs(teacher)
        if out_features != num_classes:
            raise ConfigError(f"the KD teacher {cfg.teacher} predicts {out_features} classes but "
                              f"this dataset has {num_classes}")
        pre = meta["preprocessing"]
        if any(abs(a - b) > 1e-3 for a, b in zip([*pre["mean"], *pre["std"]], [*mean, *std])):
            raise ConfigError(f"the KD teacher {cfg.teacher} expects mean/std {pre['mean']}/"
                              f"{pre['std']} but this run normalises with {list(mean)}/{list(std)}")
        self.teacher = teacher.to(device).eval().requires_grad_(False)
        # Student i distils from the teacher's output on the view student i saw.
        views = num_students if cfg.icl else 1
        self.mixing = torch.zeros(num_students, views, device=device)
        self.mixing[torch.arange(num_students), torch.arange(num_students) % views] = 1.0

    @torch.no_grad()
    def targets(self, logits, labels, inputs):
        with self.autocast():
            teacher_logits = torch.stack([self.teacher(x) for x in inputs]).float()
        return Targets((teacher_logits / self.temperature).log_softmax(-1), self.mixing)


def _num_outputs(model: nn.Module) -> int:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return last.out_features


def build(cfg: MethodConfig, num_students: int, device: torch.device, num_classes: int,
          mean: tuple[float, ...], std: tuple[float, ...], autocast: Callable) -> Method:
    """`autocast` is the run's mixed-precision context factory (used for the KD teacher)."""
    shared = {"mean": soft_targets.mean, "kdcl_naive": soft_targets.naive,
              "kdcl_linear": soft_targets.linear, "kdcl_minlogit": soft_targets.minlogit}
    if cfg.name in shared:
        return SharedTarget(cfg, num_students, device, shared[cfg.name])
    if cfg.name == "independent":
        return Independent(cfg, num_students, device)
    if cfg.name == "kdcl_general":
        return General(cfg, num_students, device)
    if cfg.name == "dml":
        return DML(cfg, num_students, device)
    if cfg.name == "kd":
        return KD(cfg, num_students, device, num_classes, mean, std, autocast)
    raise ConfigError(f"unknown method {cfg.name!r}")
