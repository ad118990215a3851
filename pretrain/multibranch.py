"""Multi-branch networks (ONE, CLNN) and the method base class that trains them.

A plain backbone (torchvision ResNet, CIFAR ResNet, WRN) is cut at stage boundaries into a
shared trunk and a tree of branches: `splits` [(stage, fan_out), ...], outermost first, says
that `fan_out` copies of everything from `stage` on hang from each node above. Every path from
the input to a classifier is a complete plain backbone, with the plain network's own module
names, so a path exports as the usual artifact and loads strictly into the plain constructor.
Each copy is initialised as a fresh plain network would be (the path of branch 0 is exactly
the first of the plain networks built).

Optional parts, chosen by the method:
- `rescale`: CL-ILR's backprop rescaling. At each split the gradient flowing back into the
  shared part is divided by the fan-out, so a layer shared by H heads receives 1/H of the
  summed gradient (Song & Chai 2018).
- `gate`: ONE's gate g = softmax(ReLU(BN(FC(GAP(trunk output))))) and the ensemble logit
  z_e = sum_i g_i z_i (Lan et al. 2018).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as tvm
from torch import Tensor

from kdcl_common import ConfigError, models
from kdcl_common.models.cifar import CifarResNet, WideResNet

from .methods import Export, Method, Outputs
from .registry import SplitConfig


class Layout(NamedTuple):
    stem: tuple[str, ...]    # before the first stage
    stages: tuple[str, ...]  # where the network may split
    head: tuple[str, ...]    # after the last stage; "flatten" is torch.flatten(x, 1)


# The children of each backbone class in the order its forward() applies them.
LAYOUTS: dict[type, Layout] = {
    tvm.ResNet: Layout(("conv1", "bn1", "relu", "maxpool"),
                       ("layer1", "layer2", "layer3", "layer4"), ("avgpool", "flatten", "fc")),
    CifarResNet: Layout(("conv1", "bn1", "relu"), ("layer1", "layer2", "layer3"),
                        ("avgpool", "flatten", "fc")),
    WideResNet: Layout(("conv1",), ("block1", "block2", "block3"),
                       ("bn", "relu", "avgpool", "flatten", "fc")),
}
SUPPORTED = ("resnet18, resnet34, resnet50, resnet101, cifar_resnet20/32/56/110, wrn_16_2, "
             "wrn_40_2")


def layout_of(net: nn.Module, arch: str) -> Layout:
    layout = LAYOUTS.get(type(net))
    if layout is None:
        raise ConfigError(f"students.0.arch={arch!r}: a multi-branch method splits a ResNet or "
                          f"WRN at its stages; supported architectures: {SUPPORTED}")
    return layout


def stages(arch: str, kwargs: dict) -> tuple[str, ...]:
    """The stage names of `arch`, from a build on the meta device (allocates nothing)."""
    with torch.device("meta"):
        net = models.build(arch, **{"num_classes": 10, **kwargs})
    return layout_of(net, arch).stages


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient times `scale` backward."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


def scale_grad(x: Tensor, scale: float) -> Tensor:
    return _ScaleGrad.apply(x, scale)


class Gate(nn.Module):
    """ONE's gate: branch weights g = softmax(ReLU(BN(FC(GAP(x))))) [B, branches]."""

    def __init__(self, channels: int, branches: int):
        super().__init__()
        self.fc = nn.Linear(channels, branches)
        self.bn = nn.BatchNorm1d(branches)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.fc(x.mean((2, 3))))).softmax(-1)


class BranchOutputs(NamedTuple):
    logits: Tensor                  # [H, B, C], one row per leaf
    ensemble: Tensor | None = None  # [B, C], the gated ensemble (with a gate)


def _segment(net: nn.Module, names: Sequence[str]) -> nn.Sequential:
    """The children `names` of `net` (same objects, same names) as one Sequential."""
    return nn.Sequential(OrderedDict(
        (n, nn.Flatten(1) if n == "flatten" else getattr(net, n)) for n in names))


class MultiBranchNet(nn.Module):
    """A trunk and a tree of branches cut from plain `arch` networks (see the module's doc)."""

    def __init__(self, arch: str, kwargs: dict, splits: Sequence[tuple[str, int]],
                 gate: bool = False, rescale: bool = False):
        super().__init__()
        self.arch, self.kwargs = arch, dict(kwargs)
        self.fan_out = tuple(int(f) for _, f in splits)
        self.leaves = math.prod(self.fan_out)
        self.rescale = rescale
        plain = [models.build(arch, **kwargs) for _ in range(self.leaves)]
        layout = layout_of(plain[0], arch)
        cuts = [layout.stages.index(stage) for stage, _ in splits] + [len(layout.stages)]
        self.trunk = _segment(plain[0], layout.stem + layout.stages[:cuts[0]])
        self.levels = nn.ModuleList()
        nodes = 1
        for k, fan in enumerate(self.fan_out):
            nodes *= fan
            names = layout.stages[cuts[k]:cuts[k + 1]]
            if k == len(self.fan_out) - 1:
                names += layout.head
            # node j of this level is cut from the first plain network of the leaves below it
            self.levels.append(nn.ModuleList(
                _segment(plain[j * (self.leaves // nodes)], names) for j in range(nodes)))
        channels = [m for m in self.trunk.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
        self.gate = Gate(channels, self.leaves) if gate else None

    def forward(self, x: Tensor) -> BranchOutputs:
        shared = self.trunk(x)
        feats = [shared]
        for fan, level in zip(self.fan_out, self.levels):
            if self.rescale:
                feats = [scale_grad(f, 1.0 / fan) for f in feats]
            feats = [segment(feats[j // fan]) for j, segment in enumerate(level)]
        logits = torch.stack(feats)
        if self.gate is None:
            return BranchOutputs(logits)
        return BranchOutputs(logits, torch.einsum("hbc,bh->bc", logits, self.gate(shared)))

    def path_state_dict(self, leaf: int) -> dict[str, Tensor]:
        """The weights of the path from the input to `leaf`, keyed as the plain network's."""
        state = dict(self.trunk.state_dict())
        nodes = 1
        for fan, level in zip(self.fan_out, self.levels):
            nodes *= fan
            state.update(level[leaf // (self.leaves // nodes)].state_dict())
        return state

    def path(self, leaf: int) -> nn.Module:
        """The path to `leaf` as a plain `arch` network (a copy, on the CPU)."""
        net = models.build(self.arch, **self.kwargs)
        net.load_state_dict({k: v.detach().cpu() for k, v in self.path_state_dict(leaf).items()},
                            strict=True)
        return net


class MultiBranchMethod(Method):
    """A method that trains one multi-branch network built from the one student of the config.
    Subclasses set the outputs' name prefix, the default fan-outs (applied to the last stages),
    and whether the network has ONE's gate and CL-ILR's gradient rescaling."""

    output_prefix = "branch"
    default_fan_outs: tuple[int, ...] = (2,)
    gate = False
    rescale = False
    # Branches are exchangeable (same architecture, loss and initialisation scheme), so a fixed
    # one is an unbiased pick; choosing the best on the validation set would bias the number
    # reported (ImageNet's val set is the test set).
    exported = 0

    @classmethod
    def check_config(cls, cfg) -> None:
        """Resolve method.splits ([]: the default fan-outs at the last stages) so that run.json,
        the export and --print-config show the tree trained; then check it."""
        student = cfg.students[0]
        names = stages(student.arch, student.kwargs)
        splits = cfg.method.splits
        if not splits:
            fans = cls.default_fan_outs
            splits = [SplitConfig(stage=s, fan_out=f) for s, f in zip(names[-len(fans):], fans)]
            cfg.method.splits = splits
        last = -1
        for i, split in enumerate(splits):
            key = f"method.splits.{i}"
            if split.stage not in names:
                raise ConfigError(f"{key}.stage={split.stage!r} is not a stage of "
                                  f"{student.arch}; its stages: {', '.join(names)}")
            if names.index(split.stage) <= last:
                raise ConfigError(f"{key}.stage={split.stage!r}: list the splits from the input "
                                  f"on, each at a later stage than the one before")
            last = names.index(split.stage)
            if split.fan_out < 2:
                raise ConfigError(f"{key}.fan_out={split.fan_out} must be >= 2 (branches at "
                                  f"that split)")

    @classmethod
    def output_names(cls, cfg) -> list[str]:
        fans = [s.fan_out for s in cfg.method.splits] or cls.default_fan_outs
        return [f"{cls.output_prefix}{i}" for i in range(math.prod(fans))]

    @classmethod
    def networks(cls, cfg, num_classes: int) -> list[nn.Module]:
        student = cfg.students[0]
        splits = [(s.stage, s.fan_out) for s in cfg.method.splits]
        return [MultiBranchNet(student.arch, {"num_classes": num_classes, **student.kwargs},
                               splits, gate=cls.gate, rescale=cls.rescale)]

    def forward(self, nets, inputs) -> Outputs:
        logits, ensemble = nets[0](inputs[0])
        return Outputs(logits, ensemble)

    def exports(self, names, modules, students) -> list[Export]:
        (net,), spec = modules, students[0]
        notes = {"branch": names[self.exported], "branches": names,
                 "branch_choice": "a fixed branch: the branches are exchangeable, and picking "
                                  "the best on the validation set would bias the reported top-1"}
        return [Export(name, spec.arch, dict(spec.kwargs),
                       net.path(i) if i == self.exported else None, notes)
                for i, name in enumerate(names)]
