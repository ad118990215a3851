"""Backbone weights from the artifact's torchvision names to a backend's names: the mechanism.

    convert(state, arch, backend, expected_keys)  ->  Converted(state, skipped)

The rules are the backend's, per backbone family (transfer/families.py): `RULES` in
transfer/backends/<backend>/weights.py maps each family to a function from a torchvision key
to the backend's key (SKIP: dropped on purpose, None: no place for it).

The conversion is strict. It fails, listing the keys,
    - when a source key is left unused (only what a rule skips on purpose: the classifier,
      `fc.*` or `classifier.*`, and for mmseg MobileNetV2's `features.18`),
    - when two source keys map to one target key,
    - when a key of the target backbone is left unfilled, or a converted key is unknown to it
      (`expected_keys`, from the real target model),
    - when the architecture is of no family the backend converts.
BatchNorm's `num_batches_tracked` counter is kept where the target has one and dropped where it
has none (frozen BatchNorm): it is bookkeeping, not a weight.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import Tensor

from kdcl_common import KdclError

from . import families

DETECTION_ARCHS = families.ARCHITECTURES
SKIP = ""  # a rule's answer for keys dropped on purpose (the classifier)
Rule = Callable[[str], "str | None"]


class ConversionError(KdclError):
    pass


@dataclass
class Converted:
    state: dict[str, Tensor]
    skipped: list[str] = field(default_factory=list)


def drop(*prefixes: str) -> Rule:
    """A rule that keeps every key as it is but those under `prefixes` (dropped on purpose)."""
    return lambda key: SKIP if key.startswith(prefixes) else key


def rules(backend: str) -> dict[str, Rule]:
    """The backend's rules per family (transfer/backends/<backend>/weights.py)."""
    from .backends import get

    return importlib.import_module(f"{get(backend).package}.weights").RULES


def _listing(keys: list[str], limit: int = 12) -> str:
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def convert(state: dict[str, Tensor], arch: str, target: str,
            expected_keys: Iterable[str] | None = None) -> Converted:
    """Rename `state` (torchvision names of `arch`) for the backend `target`; see the module
    docstring."""
    try:
        rule = families.by_family(rules(target), arch, f"the {target} backend's weight rules")
    except families.UnknownFamily as e:
        raise ConversionError(str(e)) from None
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    skipped, unused, duplicates = [], [], []
    for key, value in state.items():
        new = rule(key)
        if new is None:
            unused.append(key)
        elif new == SKIP:
            skipped.append(key)
        elif new in out:
            duplicates.append(f"{origin[new]} and {key} -> {new}")
        else:
            out[new], origin[new] = value, key
    if unused:
        raise ConversionError(f"{len(unused)} weights of the {arch} backbone have no place in the "
                              f"{target} model: {_listing(unused)}")
    if duplicates:
        raise ConversionError(f"weights collide in the {target} model: {_listing(duplicates)}")
    if expected_keys is not None:
        expected = set(expected_keys)
        for key in [k for k in out if k.endswith("num_batches_tracked") and k not in expected]:
            del out[key]  # frozen BatchNorm has no counter
        unfilled = sorted(expected - set(out))
        unknown = sorted(set(out) - expected)
        if unfilled or unknown:
            parts = []
            if unfilled:
                parts.append(f"target keys left unfilled: {_listing(unfilled)}")
            if unknown:
                parts.append(f"converted keys the target does not have: {_listing(unknown)}")
            raise ConversionError(f"the {arch} weights do not fit the {target} backbone "
                                  f"({'; '.join(parts)})")
    return Converted(out, skipped)


def check_shapes(converted: Converted, target_state: dict[str, Tensor], what: str) -> None:
    wrong = [f"{k}: {tuple(v.shape)} vs {tuple(target_state[k].shape)}"
             for k, v in converted.state.items() if k in target_state
             and v.shape != target_state[k].shape]
    if wrong:
        raise ConversionError(f"the weights do not fit {what}: shape mismatches {_listing(wrong)}")


# ----------------------------------------------------------------------------------- fidelity
def _resnet_maps(model: torch.nn.Module, x: Tensor, ends) -> list[Tensor]:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    outs = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        outs.append(x)
    return outs


def _mobilenet_v2_maps(model: torch.nn.Module, x: Tensor, ends) -> list[Tensor]:
    outs = []
    for i, block in enumerate(model.features[:max(ends) + 1]):
        x = block(x)
        if i in ends:
            outs.append(x)
    return outs


FEATURE_MAPS = {"resnet": _resnet_maps, "mobilenet_v2": _mobilenet_v2_maps}


def torchvision_features(model: torch.nn.Module, arch: str, x: Tensor,
                         mobilenet_ends: tuple[int, ...] = (3, 6, 13, 18)) -> list[Tensor]:
    """The source network's feature maps, in the order the backbones expose them: ResNet
    layer1..layer4; MobileNetV2 after features[3], [6], [13] and [18] (the torchvision and
    Detectron2 backbones end with the 1x1 convolution to 1280 channels; mmseg's MobileNetV2
    ends at [17], the family's last stage)."""
    maps = families.by_family(FEATURE_MAPS, arch, "the fidelity check")
    return maps(model, x, mobilenet_ends)


def max_relative_error(source: list[Tensor], target: list[Tensor]) -> float:
    """max over maps of max|a - b| / max|a|."""
    if len(source) != len(target):
        raise ValueError(f"{len(source)} source maps against {len(target)} target maps")
    errors = []
    for a, b in zip(source, target):
        if a.shape != b.shape:
            raise ValueError(f"feature map shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
        errors.append(float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)))
    return max(errors)
