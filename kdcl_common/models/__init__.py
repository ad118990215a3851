"""Architectures by name: the students of the pre-training stage and the backbones that the
transfer stage reads back. torchvision's constructors are used as they are, so an exported
state_dict loads into `torchvision.models.<name>(**kwargs)` with strict=True.

To add an architecture, add its constructor to `ARCHITECTURES` (it must accept `num_classes`).
"""
from __future__ import annotations

import difflib
import inspect
import typing
import warnings
from typing import Any, Callable

import torch
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


def _parameters(fn: Callable) -> tuple[list[str], bool]:
    """The keyword arguments `fn` accepts (its own, and those of the class it forwards
    **kwargs to, from its return annotation: torchvision's constructors), and whether that
    list is complete."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = list(inspect.signature(fn).parameters.values())
    names = [p.name for p in params if p.kind in kinds]
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return names, True
    try:
        cls = typing.get_type_hints(fn).get("return")
        init = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except Exception:  # noqa: BLE001 - no usable annotation: the names are unknown
        return names, False
    # those without a default are passed by the constructor itself (ResNet's block, layers)
    names += [p.name for p in init if p.kind in kinds and p.name not in names
              and p.default is not inspect.Parameter.empty]
    return names, not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in init)


def check_arguments(arch: str, kwargs: dict[str, Any], num_classes: int) -> None:
    """Raise ConfigError (text starting with '.<argument>: ' or ': ') unless `arch` can be
    built with `kwargs`: their names against the constructor's, then a build on the meta
    device, which allocates nothing."""
    constructor = constructor_name(arch)
    names, complete = _parameters(ARCHITECTURES[arch])
    settable = [n for n in names if n != "num_classes"]
    for name in kwargs:
        if complete and name not in names:
            near = difflib.get_close_matches(name, settable, n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f".{name}: {constructor} has no argument {name!r}{hint}; its "
                              f"arguments are: {', '.join(settable)}")
    probe = {k: v for k, v in kwargs.items() if k != "weights"}  # never download weights
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            build(arch, num_classes=num_classes, **probe)
    except (ConfigError, TypeError, ValueError, RuntimeError) as e:
        cause = e.__context__ if isinstance(e, ConfigError) and e.__context__ else e
        if isinstance(cause, RuntimeError) and "meta" in str(cause):
            return  # the meta device's limit, not the arguments'
        call = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise ConfigError(f": {constructor}({call}) fails: {reason}; fix or remove these "
                          f"constructor arguments") from None
