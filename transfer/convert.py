"""Backbone weights from the artifact's torchvision names to each backend's names.

    convert(state, arch, target, expected_keys)  ->  Converted(state, skipped)

Targets:
    "torchvision"   the body of torchvision's FPN backbones: a ResNet without `fc`
                    (`resnet_fpn_backbone`), or MobileNetV2's `features` children (0..18)
    "detectron2"    Detectron2's ResNet (`stem.conv1`, `res2`..`res5`, `conv<k>.norm`,
                    `shortcut`), or the `features` of the project's registered MobileNetV2
                    backbone (transfer/backends/detectron2/mobilenet.py)
    "mmseg"         mmseg's ResNet(style='pytorch'), which has torchvision's names, or its
                    MobileNetV2 (`conv1`, `layer1`..`layer7` of ConvModules); mmseg's
                    MobileNetV2 ends at 320 channels, so torchvision's last 1x1 convolution
                    (`features.18`, which feeds the classifier) is skipped with it

The conversion is strict. It fails, listing the keys,
    - when a source key is left unused (only the classifier, `fc.*` or `classifier.*`, is
      skipped on purpose, and for mmseg MobileNetV2's `features.18`),
    - when two source keys map to one target key,
    - when a key of the target backbone is left unfilled, or a converted key is unknown to it
      (`expected_keys`, from the real target model),
    - when the architecture cannot serve as a detection backbone.
BatchNorm's `num_batches_tracked` counter is kept where the target has one and dropped where it
has none (frozen BatchNorm): it is bookkeeping, not a weight.
"""
from __future__ import annotations

import io
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import Tensor

from kdcl_common import KdclError
from kdcl_common.io import atomic_write_bytes

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
DETECTION_ARCHS = (*RESNETS, "mobilenet_v2")
SKIP = ""  # a rule's answer for keys dropped on purpose (the classifier)


class ConversionError(KdclError):
    pass


@dataclass
class Converted:
    state: dict[str, Tensor]
    skipped: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------- rules
def _torchvision_resnet(key: str) -> str | None:
    return SKIP if key.startswith("fc.") else key


def _torchvision_mobilenet_v2(key: str) -> str | None:
    if key.startswith("classifier."):
        return SKIP
    return key[len("features."):] if key.startswith("features.") else None


_BLOCK = re.compile(r"layer([1-4])\.(\d+)\.(.+)")


def _detectron2_resnet(key: str) -> str | None:
    if key.startswith("fc."):
        return SKIP
    if key == "conv1.weight":
        return "stem.conv1.weight"
    if key.startswith("bn1."):
        return "stem.conv1.norm." + key[len("bn1."):]
    match = _BLOCK.fullmatch(key)
    if not match:
        return None
    stage, block, rest = int(match[1]) + 1, match[2], match[3]
    prefix = f"res{stage}.{block}."
    if re.fullmatch(r"conv\d\.weight", rest):
        return prefix + rest
    if m := re.fullmatch(r"bn(\d)\.(.+)", rest):
        return f"{prefix}conv{m[1]}.norm.{m[2]}"
    if rest == "downsample.0.weight":
        return prefix + "shortcut.weight"
    if rest.startswith("downsample.1."):
        return prefix + "shortcut.norm." + rest[len("downsample.1."):]
    return None


def _detectron2_mobilenet_v2(key: str) -> str | None:
    if key.startswith("classifier."):
        return SKIP
    return key if key.startswith("features.") else None


_MBV2_BLOCK = re.compile(r"features\.(\d+)\.(.+)")
# torchvision features[i] -> mmseg MobileNetV2 layer<k>.<j> (blocks 1..17; block 0 is conv1)
_MMSEG_MBV2_LAYERS = {}
for _layer, _count in enumerate((1, 2, 3, 4, 3, 3, 1), start=1):
    for _j in range(_count):
        _MMSEG_MBV2_LAYERS[len(_MMSEG_MBV2_LAYERS) + 1] = f"layer{_layer}.{_j}"


def _mmseg_mobilenet_v2(key: str) -> str | None:
    """torchvision's InvertedResidual `conv` holds [ConvNormAct (expand), ConvNormAct (dw),
    Conv2d, BatchNorm2d]; mmseg's holds ConvModules (`.conv`, `.bn`): [expand, dw, project]."""
    if key.startswith("classifier.") or key.startswith("features.18."):
        return SKIP  # the classifier and the 1x1 conv to 1280 channels that feeds it
    match = _MBV2_BLOCK.fullmatch(key)
    if not match:
        return None
    index, rest = int(match[1]), match[2]
    if index == 0:  # the stem: Conv2dNormActivation -> ConvModule
        m = re.fullmatch(r"0\.(.+)", rest) or re.fullmatch(r"1\.(.+)", rest)
        return f"conv1.{'conv' if rest.startswith('0.') else 'bn'}.{m[1]}" if m else None
    if index not in _MMSEG_MBV2_LAYERS:
        return None
    prefix = _MMSEG_MBV2_LAYERS[index] + ".conv."
    expand = index != 1  # features[1] has expand_ratio 1: no expansion convolution
    m = re.fullmatch(r"conv\.(\d)\.?(\d)?\.?(.*)", rest)
    if not m:
        return None
    position, inner, tail = int(m[1]), m[2], m[3]
    if inner is not None:  # ConvNormAct: .0 conv, .1 bn
        return f"{prefix}{position}.{'conv' if inner == '0' else 'bn'}.{tail}"
    project = 2 if expand else 1  # the projection Conv2d, then its BatchNorm2d
    if position == project:
        return f"{prefix}{project}.conv.{tail}"
    if position == project + 1:
        return f"{prefix}{project}.bn.{tail}"
    return None


RULES: dict[tuple[str, str], Callable[[str], str | None]] = {
    ("torchvision", "resnet"): _torchvision_resnet,
    ("torchvision", "mobilenet_v2"): _torchvision_mobilenet_v2,
    ("detectron2", "resnet"): _detectron2_resnet,
    ("detectron2", "mobilenet_v2"): _detectron2_mobilenet_v2,
    ("mmseg", "resnet"): _torchvision_resnet,  # mmseg's ResNet(style='pytorch') has its names
    ("mmseg", "mobilenet_v2"): _mmseg_mobilenet_v2,
}


def family(arch: str) -> str:
    if arch in RESNETS:
        return "resnet"
    if arch == "mobilenet_v2":
        return "mobilenet_v2"
    raise ConversionError(f"architecture {arch!r} cannot serve as a detection backbone: use one "
                          f"of {', '.join(DETECTION_ARCHS)}")


def _listing(keys: list[str], limit: int = 12) -> str:
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def convert(state: dict[str, Tensor], arch: str, target: str,
            expected_keys: Iterable[str] | None = None) -> Converted:
    """Rename `state` (torchvision names of `arch`) for `target`; see the module docstring."""
    rule = RULES.get((target, family(arch)))
    if rule is None:
        raise ConversionError(f"no conversion of {arch} to {target!r}")
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


def save_detectron2(converted: Converted, path: str | os.PathLike, author: str) -> Path:
    """Detectron2's weight format: a pickle of {"model": numpy arrays, "__author__",
    "matching_heuristics": True}, written atomically. (Written here, and read only by
    Detectron2's checkpointer; never load such pickles from untrusted sources.)"""
    path = Path(path)
    payload = {"model": {k: v.detach().cpu().numpy() for k, v in converted.state.items()},
               "__author__": author, "matching_heuristics": True}
    buffer = io.BytesIO()
    pickle.dump(payload, buffer, protocol=pickle.HIGHEST_PROTOCOL)
    atomic_write_bytes(path, buffer.getvalue())
    return path


# ----------------------------------------------------------------------------------- fidelity
def torchvision_features(model: torch.nn.Module, arch: str, x: Tensor,
                         mobilenet_ends: tuple[int, ...] = (3, 6, 13, 18)) -> list[Tensor]:
    """The source network's feature maps, in the order the backbones expose them: ResNet
    layer1..layer4; MobileNetV2 after features[3], [6], [13] and [18] (mmseg's MobileNetV2
    ends at [17])."""
    if family(arch) == "resnet":
        x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        outs = []
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            x = layer(x)
            outs.append(x)
        return outs
    outs = []
    for i, block in enumerate(model.features):
        x = block(x)
        if i in mobilenet_ends:
            outs.append(x)
        if i == max(mobilenet_ends):
            break
    return outs


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
