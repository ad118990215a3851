"""CIFAR networks in their usual form: the 3-stage ResNets of He et al. (2016, §4.2) and the
Wide ResNets of Zagoruyko & Komodakis (2016), for 32x32 inputs.

ResNet shortcuts that change shape are 1x1 convolutions + norm ("option B"), as in the
KD literature's common code (CRD/RepDistiller, ONE); ResNet-32 then has 0.47 M parameters.
`norm` picks the normalisation layer by name: "bn" (default) or "gn" (GroupNorm, which does not
depend on the batch and so gives identical results for any split of a batch across processes).
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn


def norm_layer(name: str) -> Callable[[int], nn.Module]:
    if name == "bn":
        return nn.BatchNorm2d
    if name == "gn":
        return lambda channels: nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"unknown norm {name!r}: use 'bn' or 'gn'")


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, norm: Callable[[int], nn.Module]):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                            norm(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for CIFAR: 16/32/64 channels, n basic blocks per stage."""

    def __init__(self, depth: int = 32, num_classes: int = 100, norm: str = "bn"):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 56, 110, ...), not {depth}")
        n, make_norm = (depth - 2) // 6, norm_layer(norm)
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = make_norm(16)
        self.relu = nn.ReLU(inplace=True)
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, make_norm))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        _init(self)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


class WideBlock(nn.Module):
    """Pre-activation basic block of WRN (BN-ReLU-conv, twice)."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float,
                 norm: Callable[[int], nn.Module]):
        super().__init__()
        self.bn1 = norm(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        pre = self.relu(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + identity


class WideResNet(nn.Module):
    """WRN-depth-k: 16k/32k/64k channels, (depth-4)/6 pre-activation blocks per stage."""

    def __init__(self, depth: int = 16, widen_factor: int = 2, num_classes: int = 100,
                 dropout: float = 0.0, norm: str = "bn"):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4 (16, 22, 28, 40, ...), not {depth}")
        n, make_norm = (depth - 4) // 6, norm_layer(norm)
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        stages, in_planes = [], 16
        for planes, stride in zip(widths, (1, 2, 2)):
            blocks = []
            for i in range(n):
                blocks.append(WideBlock(in_planes, planes, stride if i == 0 else 1, dropout,
                                        make_norm))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = make_norm(widths[-1])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        _init(self)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn(x))
        return self.fc(self.avgpool(x).flatten(1))


def cifar_resnet20(**kwargs) -> CifarResNet:
    return CifarResNet(depth=20, **kwargs)


def cifar_resnet32(**kwargs) -> CifarResNet:
    return CifarResNet(depth=32, **kwargs)


def cifar_resnet56(**kwargs) -> CifarResNet:
    return CifarResNet(depth=56, **kwargs)


def cifar_resnet110(**kwargs) -> CifarResNet:
    return CifarResNet(depth=110, **kwargs)


def wrn_16_2(**kwargs) -> WideResNet:
    return WideResNet(depth=16, widen_factor=2, **kwargs)


def wrn_40_2(**kwargs) -> WideResNet:
    return WideResNet(depth=40, widen_factor=2, **kwargs)
