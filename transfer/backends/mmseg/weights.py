"""mmsegmentation's names for a backbone's weights: its ResNet(style='pytorch') has
torchvision's names (less `fc`); its MobileNetV2 (`conv1`, `layer1`..`layer7` of ConvModules)
ends at 320 channels, so torchvision's last 1x1 convolution (`features.18`, which feeds the
classifier) is skipped with it. Per family (transfer/families.py); the mechanism is
transfer/convert.py's."""
from __future__ import annotations

import re

from ...convert import SKIP, drop

_MBV2_BLOCK = re.compile(r"features\.(\d+)\.(.+)")
# torchvision features[i] -> mmseg MobileNetV2 layer<k>.<j> (blocks 1..17; block 0 is conv1)
_MMSEG_MBV2_LAYERS = {}
for _layer, _count in enumerate((1, 2, 3, 4, 3, 3, 1), start=1):
    for _j in range(_count):
        _MMSEG_MBV2_LAYERS[len(_MMSEG_MBV2_LAYERS) + 1] = f"layer{_layer}.{_j}"


def _mobilenet_v2(key: str) -> str | None:
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


RULES = {"resnet": drop("fc."), "mobilenet_v2": _mobilenet_v2}
