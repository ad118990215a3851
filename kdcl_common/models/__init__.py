"""Architectures by name: the students of the pre-training stage and the backbones that the
transfer stage reads back. torchvision's constructors are used as they are, so an exported
state_dict loads into `torchvision.models.<name>(**kwargs)` with strict=True.

To add an architecture, add its constructor to `ARCHITECTURES` (it must accept `num_classes`).
"""
from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn
import torchvision.models as tvm

from .. import ConfigError
from . import cifar

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    # ImageNet-style, from torchvision
    "resnet18": tvm.resnet18,
    "resnet34": tvm.resnet34,
    "resnet50": tvm.resnet50,
    "resnet101": tvm.resnet101,
    "mobilenet_v2": tvm.mobilenet_v2,  # width_mult: 0.5, 1.0, 1.2, ...
    # CIFAR-style, the project's own (kdcl_common/models/cifar.py)
    "cifar_resnet20": cifar.cifar_resnet20,
    "cifar_resnet32": cifar.cifar_resnet32,
    "cifar_resnet56": cifar.cifar_resnet56,
    "cifar_resnet110": cifar.cifar_resnet110,
    "wrn_16_2": cifar.wrn_16_2,
    "wrn_40_2": cifar.wrn_40_2,
}


def build(arch: str, **kwargs: Any) -> nn.Module:
    """Construct `arch` with its constructor arguments (num_classes, width_mult, norm, ...)."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r}; known architectures: "
                          f"{', '.join(ARCHITECTURES)}")
    try:
        return ARCHITECTURES[arch](**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"cannot build {arch} with arguments {kwargs}: {e}") from None


def constructor_name(arch: str) -> str:
    """The importable name of the constructor, e.g. torchvision.models.resnet18."""
    fn = ARCHITECTURES[arch]
    module = "torchvision.models" if fn.__module__.startswith("torchvision.") else fn.__module__
    return f"{module}.{fn.__name__}"


def label(arch: str, kwargs: dict[str, Any] | None = None) -> str:
    """A readable name for tables: resnet18, mobilenet_v2_x0.5, wrn_16_2."""
    width = (kwargs or {}).get("width_mult")
    return f"{arch}_x{width:g}" if width not in (None, 1, 1.0) else arch
