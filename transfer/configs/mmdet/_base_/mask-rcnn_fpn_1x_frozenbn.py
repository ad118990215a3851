# Mask R-CNN FPN in the standard 1x protocol: frozen BatchNorm (statistics and affine weights)
# and a frozen stem and first stage, as Detectron2's model zoo (FREEZE_AT 2) and mmdet's own 1x
# configs; for MobileNetV2 its first two stages (the configs for it set frozen_stages=2).
_base_ = ['./mask-rcnn_fpn.py', './schedule_1x.py']
model = dict(backbone=dict(norm_cfg=dict(type='BN', requires_grad=False), norm_eval=True,
                           frozen_stages=1))
train_dataloader = dict(batch_size=2)  # x 8 GPUs
default_hooks = dict(
    logger=dict(interval=50, log_metric_by_epoch=False),
    checkpoint=dict(by_epoch=False, interval=5000, max_keep_ckpts=2))
kdcl = dict(protocol='1x_frozenbn', preset='paper')
