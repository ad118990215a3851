"""MobileNetV2 for Detectron2, which has none: torchvision's `mobilenet_v2(...).features` as a
Detectron2 `Backbone` with four outputs, res2..res5 at strides 4, 8, 16 and 32 (the ends of the
stride stages: features[3], [6], [13] and [18]), registered as `build_mobilenet_v2_fpn_backbone`
under an FPN like Detectron2's ResNet-FPN (P2-P6, the same anchors and heads).

The module keeps torchvision's names (`features.<i>...`), so a torchvision state_dict loads
into it unchanged (less the classifier). Config keys (add_config): MODEL.MOBILENET_V2.WIDTH_MULT,
.NORM (BN, SyncBN, FrozenBN, ... as Detectron2's get_norm) and .OUT_FEATURES; MODEL.BACKBONE.
FREEZE_AT freezes the stem (features[0:2]) at 1 and each further stage at 2..5, as for ResNets.
"""
from __future__ import annotations

import torchvision
from detectron2.config import CfgNode
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

# features[a:b] of each stage; outputs at the ends of the last four
STAGES = {"stem": (0, 2), "res2": (2, 4), "res3": (4, 7), "res4": (7, 14), "res5": (14, 19)}
STRIDES = {"stem": 2, "res2": 4, "res3": 8, "res4": 16, "res5": 32}


def add_config(cfg: CfgNode) -> None:
    cfg.MODEL.MOBILENET_V2 = CfgNode()
    cfg.MODEL.MOBILENET_V2.WIDTH_MULT = 1.0
    cfg.MODEL.MOBILENET_V2.NORM = "FrozenBN"
    cfg.MODEL.MOBILENET_V2.OUT_FEATURES = ["res2", "res3", "res4", "res5"]


class MobileNetV2(Backbone):
    def __init__(self, width_mult: float = 1.0, norm: str = "FrozenBN",
                 out_features=("res2", "res3", "res4", "res5"), freeze_at: int = 0):
        super().__init__()
        self.features = torchvision.models.mobilenet_v2(
            width_mult=width_mult, norm_layer=lambda channels: get_norm(norm, channels)).features
        unknown = set(out_features) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown MobileNetV2 outputs {sorted(unknown)}; use {list(STAGES)}")
        self._out_features = list(out_features)
        self._out_feature_strides = {name: STRIDES[name] for name in out_features}
        self._out_feature_channels = {
            name: self.features[STAGES[name][1] - 1].out_channels for name in out_features}
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> "MobileNetV2":
        """Freeze the stem (freeze_at >= 1) and the first freeze_at - 1 stages."""
        for index, (start, stop) in enumerate(STAGES.values(), start=1):
            if freeze_at >= index:
                for block in self.features[start:stop]:
                    block.requires_grad_(False)
                    FrozenBatchNorm2d.convert_frozen_batchnorm(block)
        return self

    def forward(self, x):
        outputs = {}
        for name, (start, stop) in STAGES.items():
            x = self.features[start:stop](x)
            if name in self._out_features:
                outputs[name] = x
            if len(outputs) == len(self._out_features):
                break
        return outputs

    def output_shape(self):
        return {name: ShapeSpec(channels=self._out_feature_channels[name],
                                stride=self._out_feature_strides[name])
                for name in self._out_features}


@BACKBONE_REGISTRY.register()
def build_mobilenet_v2_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """MobileNetV2 + FPN: the counterpart of `build_resnet_fpn_backbone`."""
    if input_shape.channels != 3:
        raise ValueError(f"MobileNetV2 takes 3 input channels, not {input_shape.channels}")
    bottom_up = MobileNetV2(cfg.MODEL.MOBILENET_V2.WIDTH_MULT, cfg.MODEL.MOBILENET_V2.NORM,
                            cfg.MODEL.MOBILENET_V2.OUT_FEATURES, cfg.MODEL.BACKBONE.FREEZE_AT)
    return FPN(bottom_up=bottom_up, in_features=cfg.MODEL.FPN.IN_FEATURES,
               out_channels=cfg.MODEL.FPN.OUT_CHANNELS, norm=cfg.MODEL.FPN.NORM,
               top_block=LastLevelMaxPool(), fuse_type=cfg.MODEL.FPN.FUSE_TYPE)
