# Mask R-CNN FPN with a ResNet-50 backbone on COCO 2017 in the paper's SyncBN protocol.
_base_ = ['./_base_/mask-rcnn_fpn_paper14ep_syncbn.py']
model = dict(backbone=dict(depth=50))
