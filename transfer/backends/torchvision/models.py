"""Faster and Mask R-CNN with FPN from torchvision.models.detection, on a converted backbone.

Both use torchvision's `BackboneWithFPN`. ResNets return layer1..layer4 plus a pooled level
(5 FPN levels, as `resnet_fpn_backbone`). MobileNetV2 uses its `features`,
returning the end of the stride-16 stage (features[13]) and the final 1x1 convolution
(features[18], stride 32), plus the pooled level: 3 FPN levels, so the anchor generator gets 3
size tuples (all five sizes at every level, as torchvision's MobileNet FPN detectors do).
(torchvision's own MobileNet extractor would return two stride-32 maps for MobileNetV2.)
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torchvision
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d
from torchvision.ops.poolers import initLevelMapper

from ... import convert, families
from .config import ModelConfig

# Where MobileNetV2's `features` change stride: stem (2), then strides 4, 8, 16, 32.
MOBILENET_STAGE_STARTS = (0, 2, 4, 7, 14)


def norm_layer(name: str) -> type[nn.Module]:
    """The backbone's norm: BatchNorm (converted to SyncBatchNorm later, under DDP on GPUs)
    or torchvision's FrozenBatchNorm2d."""
    return FrozenBatchNorm2d if name == "frozen_bn" else nn.BatchNorm2d


def resnet_fpn(arch: str, norm: type[nn.Module], trainable_layers: int,
               fpn_norm: type[nn.Module] | None) -> BackboneWithFPN:
    resnet = getattr(torchvision.models, arch)(weights=None, norm_layer=norm)
    trainable = ("layer4", "layer3", "layer2", "layer1", "conv1")[:trainable_layers]
    if trainable_layers == 5:
        trainable += ("bn1",)
    for name, parameter in resnet.named_parameters():
        if not name.startswith(trainable):
            parameter.requires_grad_(False)
    stage2 = resnet.inplanes // 8  # 64 for BasicBlock ResNets, 256 for Bottleneck ones
    return BackboneWithFPN(resnet, {f"layer{k}": str(k - 1) for k in range(1, 5)},
                           [stage2 * 2 ** k for k in range(4)], 256,
                           extra_blocks=LastLevelMaxPool(), norm_layer=fpn_norm)


def mobilenet_v2_fpn(width_mult: float, norm: type[nn.Module], trainable_layers: int,
                     fpn_norm: type[nn.Module] | None) -> BackboneWithFPN:
    features = torchvision.models.mobilenet_v2(width_mult=width_mult, norm_layer=norm).features
    starts = (*MOBILENET_STAGE_STARTS, len(features))
    for block in features[:starts[5 - trainable_layers]]:
        block.requires_grad_(False)
    return BackboneWithFPN(features, {"13": "0", "18": "1"},
                           [features[13].out_channels, features[18].out_channels], 256,
                           extra_blocks=LastLevelMaxPool(), norm_layer=fpn_norm)


def _resnet(arch, kwargs, norm, trainable_layers, head_norm):
    """(backbone, anchors: torchvision's default of one size per level on 5 levels, the pooled
    levels' strides)."""
    return resnet_fpn(arch, norm, trainable_layers, head_norm), None, (4, 8, 16, 32)


def _mobilenet_v2(arch, kwargs, norm, trainable_layers, head_norm):
    anchors = AnchorGenerator(sizes=((32, 64, 128, 256, 512),) * 3,
                              aspect_ratios=((0.5, 1.0, 2.0),) * 3)
    return (mobilenet_v2_fpn(kwargs.get("width_mult", 1.0), norm, trainable_layers, head_norm),
            anchors, (16, 32))


FPNS = {"resnet": _resnet, "mobilenet_v2": _mobilenet_v2}  # per family (transfer/families.py)


def build(cfg: ModelConfig, arch: str, arch_kwargs: dict, num_classes: int,
          mean: list[float], std: list[float]) -> nn.Module:
    """A detector for `num_classes` object classes (+ background), normalising its input with
    the backbone's own mean/std (0-1 scale) from the artifact's preprocessing contract."""
    norm = norm_layer(cfg.norm)
    head_norm = nn.BatchNorm2d if cfg.head_norm == "bn" else None
    fpn = families.by_family(FPNS, arch, "the torchvision backend's FPN backbones")
    backbone, anchors, strides = fpn(arch, arch_kwargs, norm, cfg.trainable_layers, head_norm)
    kwargs = dict(num_classes=num_classes + 1, min_size=cfg.min_size, max_size=cfg.max_size,
                  image_mean=list(mean), image_std=list(std), rpn_anchor_generator=anchors,
                  box_batch_size_per_image=cfg.roi_batch_size_per_image)
    if head_norm is not None:
        kwargs["box_head"] = FastRCNNConvFCHead((256, 7, 7), [256] * 4, [1024],
                                                norm_layer=head_norm)
    if cfg.detector == "mask_rcnn":
        if head_norm is not None:
            kwargs["mask_head"] = MaskRCNNHeads(256, [256] * 4, 1, norm_layer=head_norm)
        model = MaskRCNN(backbone, **kwargs)
    else:
        model = FasterRCNN(backbone, **kwargs)
    set_pooler_scales(model, strides)
    return model


def set_pooler_scales(model: nn.Module, strides: tuple[int, ...]) -> None:
    """torchvision's MultiScaleRoIAlign guesses its levels' scales from the first batch it sees
    (feature size / image size, rounded to a power of two) and keeps them. For small, padded
    images that guess can be off by a power of two, and a model then pools differently after it
    is reloaded. The strides are known, so set the scales and the level mapper here."""
    for pool in (model.roi_heads.box_roi_pool, getattr(model.roi_heads, "mask_roi_pool", None)):
        if pool is not None:
            pool.scales = [1.0 / s for s in strides]
            pool.map_levels = initLevelMapper(int(math.log2(strides[0])),
                                              int(math.log2(strides[-1])),
                                              canonical_scale=pool.canonical_scale,
                                              canonical_level=pool.canonical_level)


def load_backbone(model: nn.Module, state: dict[str, torch.Tensor], arch: str) -> convert.Converted:
    """Convert an artifact's state_dict and load it, strictly, into the detector's backbone."""
    body = model.backbone.body
    target = body.state_dict()
    converted = convert.convert(state, arch, "torchvision", expected_keys=target.keys())
    convert.check_shapes(converted, target, f"the torchvision {arch} FPN backbone")
    body.load_state_dict(converted.state, strict=True)
    return converted


def backbone_features(model: nn.Module, arch: str, x: torch.Tensor) -> list[torch.Tensor]:
    """The detector backbone's maps matching `convert.torchvision_features` (for fidelity):
    ResNet's layer1..layer4, MobileNetV2's features[3], [6], [13] and [18]."""
    returned = families.by_family(BODY_OUTPUTS, arch, "the fidelity check")
    outs, y = [], x
    for i, (name, module) in enumerate(model.backbone.body.items()):
        y = module(y)
        if returned(i, name):
            outs.append(y)
    return outs


BODY_OUTPUTS = {"resnet": lambda i, name: name.startswith("layer"),
                "mobilenet_v2": lambda i, name: i in (3, 6, 13, 18)}

