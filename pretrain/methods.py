"""Pre-training methods: the `Method` base class with its hooks, and the methods whose
students are separate networks. Which methods exist, and what each needs, is the table in
pretrain/registry.py; `build` makes the one a config names.

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
    one, clnn       multi-branch networks (pretrain/one.py, pretrain/clnn.py)

To add a method: subclass `Method` in a file of its own, override the hooks it needs (most
methods need only `targets`), and add one `Entry` to pretrain/registry.py (with the `Option`s
of its own hyper-parameters, which reach the class as attributes of its `cfg`).
"""
from __future__ import annotations

import importlib
from typing import Callable, NamedTuple

import torch
import torch.nn as nn
from torch import Tensor

from kdcl_common import ConfigError, artifact, models

from . import registry, soft_targets
from .losses import LossTerms, Targets


class Env(NamedTuple):
    """What a method may need of the run besides its config (KD checks its teacher with it)."""
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    autocast: Callable  # the run's mixed-precision context factory


class Outputs(NamedTuple):
    logits: Tensor                  # [S, B, C]: one row per student (or branch)
    ensemble: Tensor | None = None  # [B, C]: a method's own ensemble logits (ONE's gate)


class Export(NamedTuple):
    """One output (student or branch) as pre-training exports and records it."""
    name: str
    arch: str
    kwargs: dict
    module: nn.Module | None  # a plain network of `arch` to export; None: recorded only
    notes: dict | None = None  # extra artifact metadata (which branch, and why)


class Method:
    """The hooks the engine calls, with the defaults of methods whose students are separate
    networks trained on hard labels plus detached soft targets. A subclass overrides only what
    it changes; the engine never asks which method it runs.

    Before the method exists (class methods, from the config):
        check_config      check and resolve the method's own config keys
        output_names      the names of the outputs (students, or branches)
        networks          the modules trained (one per student, or one multi-branch network)
    Every epoch, before its first step:
        start_of_epoch    per-epoch settings that follow from the epoch alone (ONE's ramp-up)
    Every training step:
        forward           logits of every output [S, B, C] (+ the method's own ensemble)
        targets           constant soft targets from the detached logits (no autograd)
        graph_loss        loss terms that need autograd through the method's own outputs
    Evaluation and epochs:
        ensemble_probs    the ensemble's distribution reported as `ensemble`
        end_of_epoch      per-epoch state from the held-out evaluation (KDCL-General)
        state_dict, load_state_dict   that state, in the checkpoint
    Placement and export:
        to_memory_format  the method's own networks (KD's teacher) like the students
        exports           which outputs are exported as plain backbones
    """

    entry: registry.Entry | None = None  # set by `build`

    def __init__(self, cfg, num_students: int, device: torch.device, env: Env | None = None):
        self.temperature = cfg.temperature
        self.num_students = num_students
        self.device = device

    # ------------------------------------------------------------------ before the method
    @classmethod
    def check_config(cls, cfg) -> None:
        """Raise ConfigError for a config this method cannot run (after the registry's checks)."""

    @classmethod
    def output_names(cls, cfg) -> list[str]:
        """Names from the config, else from the architecture; repeated names get _0, _1, ..."""
        names = [s.name or models.label(s.arch, s.kwargs) for s in cfg.students]
        repeated = {n for n in names if names.count(n) > 1}
        counters: dict[str, int] = {}
        out = []
        for n in names:
            if n in repeated:
                out.append(f"{n}_{counters.get(n, 0)}")
                counters[n] = counters.get(n, 0) + 1
            else:
                out.append(n)
        return out

    @classmethod
    def networks(cls, cfg, num_classes: int) -> list[nn.Module]:
        return [models.build(s.arch, num_classes=num_classes, **s.kwargs) for s in cfg.students]

    # ----------------------------------------------------------------------- training step
    def start_of_epoch(self, epoch: int) -> None:
        """Called before the first step of every epoch (0-based, also when a run resumes), so
        what it sets is a function of the epoch and needs no checkpoint."""

    def forward(self, nets: list[nn.Module], inputs: list[Tensor]) -> Outputs:
        """Student k sees view k (ICL) or the only view."""
        return Outputs(torch.stack([net(inputs[k % len(inputs)]) for k, net in enumerate(nets)]))

    def targets(self, logits: Tensor, labels: Tensor, inputs: list[Tensor]) -> Targets | None:
        """The soft targets (constants) from the detached float32 logits [S, B, C]; None for no
        distillation term. The collaborative loss (pretrain/losses.py) uses them."""
        return None

    def graph_loss(self, terms: LossTerms, outputs: Outputs, labels: Tensor) -> LossTerms:
        """The loss to backpropagate, from the collaborative loss's `terms`; a method adds the
        terms that need autograd through its own outputs here (ONE's gated ensemble)."""
        return terms

    # ---------------------------------------------------------------- evaluation and epochs
    def ensemble_probs(self, outputs: Outputs, probs: Tensor) -> Tensor:
        """The ensemble reported at evaluation, from the outputs' probabilities [S, B, C]:
        their mean."""
        return probs.mean(0)

    def end_of_epoch(self, held_out: dict) -> None:
        """Called after every epoch with the held-out evaluation (engine.Trainer.evaluate
        with covariance=True), when the run holds images out."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    # ----------------------------------------------------------------- placement and export
    def to_memory_format(self, memory_format: torch.memory_format) -> None:
        """Move the method's own networks (not the students) to `memory_format`."""

    def exports(self, names: list[str], modules: list[nn.Module], students) -> list[Export]:
        """One `Export` per output name, in order: every student as itself."""
        return [Export(n, s.arch, dict(s.kwargs), m) for n, m, s in zip(names, modules, students)]


class Independent(Method):
    pass


class SharedTarget(Method):
    """KDCL's ensembles: one teacher logit z_t = h(z_1..z_S; y) for all students. `ensemble`
    names the function of pretrain/soft_targets.py."""

    def __init__(self, cfg, num_students, device, env=None, ensemble: str = "mean"):
        super().__init__(cfg, num_students, device, env)
        self.ensemble: Callable[[Tensor, Tensor], Tensor] = getattr(soft_targets, ensemble)
        self.mixing = torch.ones(num_students, 1, device=device)

    @torch.no_grad()
    def targets(self, logits, labels, inputs):
        z_t = self.ensemble(logits, labels)
        return Targets((z_t / self.temperature).log_softmax(-1)[None], self.mixing)


class General(Method):
    """KDCL-General. Weights start uniform (the paper's w_i = 1/m) and are replaced after every
    epoch by the engine, from the error covariance on the held-out split."""

    def __init__(self, cfg, num_students, device, env=None):
        super().__init__(cfg, num_students, device, env)
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
    def __init__(self, cfg, num_students, device, env=None):
        super().__init__(cfg, num_students, device, env)
        eye = torch.eye(num_students, device=device)
        self.mixing = (1 - eye) / (num_students - 1)

    @torch.no_grad()
    def targets(self, logits, labels, inputs):
        return Targets((logits / self.temperature).log_softmax(-1), self.mixing)


class KD(Method):
    """Vanilla KD: the teacher sees the same view as each student and never trains."""

    def __init__(self, cfg, num_students, device, env: Env):
        super().__init__(cfg, num_students, device, env)
        self.autocast = env.autocast
        teacher, meta = artifact.load(cfg.teacher)
        self.teacher_meta = meta
        out_features = _num_outputs(teacher)
        if out_features != env.num_classes:
            raise ConfigError(f"the KD teacher {cfg.teacher} predicts {out_features} classes but "
                              f"this dataset has {env.num_classes}")
        pre, mean, std = meta["preprocessing"], env.mean, env.std
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

    def to_memory_format(self, memory_format):
        self.teacher.to(memory_format=memory_format)


def _num_outputs(model: nn.Module) -> int:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return last.out_features


def method_class(name: str) -> type[Method]:
    """The class of method `name`, imported from its registry entry."""
    try:
        entry = registry.get(name)
    except KeyError as e:
        raise ConfigError(str(e.args[0])) from None
    module, _, attr = entry.target.partition(":")
    return getattr(importlib.import_module(module), attr)


def build(cfg, num_students: int, device: torch.device, num_classes: int,
          mean: tuple[float, ...], std: tuple[float, ...], autocast: Callable) -> Method:
    """The method of `cfg` (a MethodConfig) for `num_students` outputs. `autocast` is the run's
    mixed-precision context factory (used for the KD teacher)."""
    cls = method_class(cfg.name)
    entry = registry.get(cfg.name)
    method = cls(cfg, num_students, device, Env(num_classes, tuple(mean), tuple(std), autocast),
                 **entry.params)
    method.entry = entry
    return method
