# Faster R-CNN FPN with a ResNet-18 backbone on COCO 2017, the 1x frozen-BN protocol.
_base_ = ['./_base_/faster-rcnn_fpn_1x_frozenbn.py']
model = dict(backbone=dict(depth=18))
