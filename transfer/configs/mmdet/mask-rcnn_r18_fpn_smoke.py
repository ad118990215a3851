# Mask R-CNN FPN with a ResNet-18 backbone on the generated scenes, a CPU, a few minutes.
_base_ = ['./_base_/mask-rcnn_fpn_smoke.py']
model = dict(backbone=dict(depth=18))
