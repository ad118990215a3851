# Faster R-CNN FPN with a MobileNetV2 backbone on COCO 2017, the 1x frozen-BN protocol.
# mmdet's MobileNetV2 returns features[3], [6], [13] and [18] of torchvision's (strides 4
# to 32, the last the 1x1 convolution to 1280 channels), as the other detection backends do;
# the width follows the backbone.
_base_ = ['./_base_/faster-rcnn_fpn_1x_frozenbn.py']
model = dict(
    backbone=dict(
        _delete_=True, type='MobileNetV2', out_indices=(1, 2, 4, 7), widen_factor=1.0,
        norm_cfg=dict(type='BN', requires_grad=False), norm_eval=True,
        frozen_stages=2, init_cfg=None))
