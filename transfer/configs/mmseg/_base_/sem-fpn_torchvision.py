# Semantic FPN (Kirillov et al., 2019): mmseg's FPN neck + FPNHead, the segmentation twin of the
# FPN detectors, on a torchvision-style ResNet (style='pytorch', no deep stem: not mmseg's
# default ResNetV1c) whose weights `python -m transfer --backbone` converts and loads through
# init_cfg. The launcher sets the backbone (depth or width), the channels, num_classes and the
# input normalisation from the backbone's metadata.
_base_ = ['mmseg::_base_/models/fpn_r50.py']
norm_cfg = dict(type='SyncBN', requires_grad=True)  # BN, with a warning, in one process
model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True, type='ResNet', depth=50, num_stages=4, out_indices=(0, 1, 2, 3),
        style='pytorch', norm_cfg=norm_cfg, norm_eval=False, init_cfg=None),
    neck=dict(in_channels=[256, 512, 1024, 2048], norm_cfg=norm_cfg),
    decode_head=dict(num_classes=171, norm_cfg=norm_cfg))
