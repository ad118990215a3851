"""torchvision's names for a backbone's weights: the body of its FPN backbones, a ResNet without
`fc` (`resnet_fpn_backbone`), or MobileNetV2's `features` children (0..18). Per family
(transfer/families.py); the mechanism is transfer/convert.py's."""
from __future__ import annotations

from ...convert import SKIP, drop


def _mobilenet_v2(key: str) -> str | None:
    if key.startswith("classifier."):
        return SKIP
    return key[len("features."):] if key.startswith("features.") else None


RULES = {"resnet": drop("fc."), "mobilenet_v2": _mobilenet_v2}
