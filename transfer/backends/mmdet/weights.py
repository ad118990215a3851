"""mmdetection's names for a backbone's weights: its ResNet(style='pytorch') has torchvision's
names (less `fc`); its MobileNetV2 has `conv1` and `layer1`..`layer7` of InvertedResidual blocks
(`expand_conv`, `depthwise_conv`, `linear_conv`, each a ConvModule: `.conv`, `.bn`), then
`conv2`, torchvision's last 1x1 convolution to 1280 channels (`features.18`), whose output is
the stride-32 level, as in the other detection backends. Per family (transfer/families.py); the
mechanism is transfer/convert.py's."""
from __future__ import annotations

import re

from ...convert import SKIP, drop

_BLOCK = re.compile(r"features\.(\d+)\.(.+)")
# torchvision features[i] -> mmdet MobileNetV2 layer<k>.<j> (blocks 1..17; block 0 is conv1)
_LAYERS = {}
for _layer, _count in enumerate((1, 2, 3, 4, 3, 3, 1), start=1):
    for _j in range(_count):
        _LAYERS[len(_LAYERS) + 1] = f"layer{_layer}.{_j}"


def _conv_module(inner: str) -> str:
    """torchvision's Conv2dNormActivation children (0: conv, 1: bn) -> a ConvModule's names."""
    return {"0": "conv", "1": "bn"}[inner]


def _mobilenet_v2(key: str) -> str | None:
    """torchvision's InvertedResidual `conv` holds [ConvNormAct (expand), ConvNormAct (dw),
    Conv2d, BatchNorm2d], without the expansion in features[1] (expand_ratio 1)."""
    if key.startswith("classifier."):
        return SKIP
    match = _BLOCK.fullmatch(key)
    if not match:
        return None
    index, rest = int(match[1]), match[2]
    if index in (0, 18):  # the stem and the last 1x1 conv: Conv2dNormActivation -> ConvModule
        m = re.fullmatch(r"([01])\.(.+)", rest)
        return f"{'conv1' if index == 0 else 'conv2'}.{_conv_module(m[1])}.{m[2]}" if m else None
    if index not in _LAYERS:
        return None
    m = re.fullmatch(r"conv\.(\d)\.(.+)", rest)
    if not m:
        return None
    position, tail = int(m[1]), m[2]
    parts = (["expand_conv"] if index != 1 else []) + ["depthwise_conv"]
    block = f"{_LAYERS[index]}."
    if position < len(parts):  # a ConvNormAct: .0 conv, .1 bn
        inner = re.fullmatch(r"([01])\.(.+)", tail)
        return f"{block}{parts[position]}.{_conv_module(inner[1])}.{inner[2]}" if inner else None
    if position == len(parts):  # the projection Conv2d, then its BatchNorm2d
        return f"{block}linear_conv.conv.{tail}"
    if position == len(parts) + 1:
        return f"{block}linear_conv.bn.{tail}"
    return None


RULES = {"resnet": drop("fc."), "mobilenet_v2": _mobilenet_v2}
