"""The backbone families the transfer stage knows: one table of each family's architectures,
the stages whose outputs feed a feature pyramid (their output channels and strides), and where
those outputs are in the torchvision network. Each backend's weight-name conversion is keyed by
family (transfer/backends/<name>/weights.py), so a family is added here and in each backend's
rules, and an architecture of no known family is an error that names the families.

Standard library only at import.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from kdcl_common import KdclError


def _divisible(value: float, divisor: int = 8) -> int:
    """torchvision's and mmcv's `make_divisible`: the channel rounding of MobileNetV2."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]
    strides: tuple[int, ...]                    # of the stages below, from the input
    channels: Callable[[str, dict], list[int]]  # their output channels, for (arch, kwargs)
    # where each stage ends in the torchvision network: a child of the model (ResNet's
    # layer1..layer4) or an index into its `features` (MobileNetV2)
    stage_ends: tuple[str | int, ...]


def _resnet_channels(arch: str, kwargs: dict) -> list[int]:
    base = 64 if arch in ("resnet18", "resnet34") else 256
    return [base * 2 ** k for k in range(4)]


def _mobilenet_v2_channels(arch: str, kwargs: dict) -> list[int]:
    width = float(kwargs.get("width_mult", 1.0))
    return [_divisible(c * width) for c in (24, 32, 96, 320)]


FAMILIES: tuple[Family, ...] = (
    Family("resnet", ("resnet18", "resnet34", "resnet50", "resnet101"), (4, 8, 16, 32),
           _resnet_channels, ("layer1", "layer2", "layer3", "layer4")),
    Family("mobilenet_v2", ("mobilenet_v2",), (4, 8, 16, 32), _mobilenet_v2_channels,
           (3, 6, 13, 17)),
)
ARCHITECTURES: tuple[str, ...] = tuple(a for f in FAMILIES for a in f.architectures)


class UnknownFamily(KdclError):
    pass


def of(arch: str) -> Family:
    for family in FAMILIES:
        if arch in family.architectures:
            return family
    known = "; ".join(f"{f.name} ({', '.join(f.architectures)})" for f in FAMILIES)
    raise UnknownFamily(f"architecture {arch!r} is of no backbone family the transfer stage "
                        f"knows, so it cannot serve as a detection or segmentation backbone. "
                        f"The families: {known} (transfer/families.py; a new family needs its "
                        f"entry there and its weight rules in every backend)")


def by_family(table: dict, arch: str, what: str):
    """`table[family of arch]`: a backend's rule or builder for the family, or an error that
    says the backend has none for it."""
    family = of(arch)
    if family.name not in table:
        raise UnknownFamily(f"{what} has nothing for the {family.name} family ({arch}); it "
                            f"has: {', '.join(table)}")
    return table[family.name]
