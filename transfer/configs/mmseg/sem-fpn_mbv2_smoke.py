# sem-fpn with a mbv2 backbone on the generated scenes, a CPU, a few minutes.
_base_ = ['./_base_/sem-fpn_torchvision.py', './_base_/scenes_smoke.py']
model = dict(backbone=dict(_delete_=True, type='MobileNetV2', widen_factor=1.0,
                           strides=(1, 2, 2, 2, 1, 2, 1), out_indices=(1, 2, 4, 6),
                           norm_cfg=dict(type='SyncBN', requires_grad=True), init_cfg=None),
             data_preprocessor=dict(size=(128, 128)))
