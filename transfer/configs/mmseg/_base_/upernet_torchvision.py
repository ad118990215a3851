# UPerNet (Xiao et al., 2018): mmseg's UPerHead (PPM + FPN fusion) with its auxiliary FCN head
# on stage 3, on a torchvision-style ResNet (see sem-fpn_torchvision.py).
_base_ = ['mmseg::_base_/models/upernet_r50.py']
norm_cfg = dict(type='SyncBN', requires_grad=True)  # BN, with a warning, in one process
model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True, type='ResNet', depth=50, num_stages=4, out_indices=(0, 1, 2, 3),
        style='pytorch', norm_cfg=norm_cfg, norm_eval=False, init_cfg=None),
    decode_head=dict(in_channels=[256, 512, 1024, 2048], num_classes=171, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=1024, num_classes=171, norm_cfg=norm_cfg))
