# Faster R-CNN FPN in the KDCL paper's protocol (§4.3): "all the batch normalization layers are in
# sync mode and no weight is frozen". The FPN and the RoI box head (4 convolutions + 1 FC) are
# normalised too, as in Detectron2's SyncBN recipe and the other detection backends.
_base_ = ['./faster-rcnn_fpn.py', './schedule_paper14ep.py']
norm_cfg = dict(type='SyncBN', requires_grad=True)  # BN, with a warning, in one process
model = dict(
    backbone=dict(norm_cfg=norm_cfg, norm_eval=False, frozen_stages=-1),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256,
                       norm_cfg=norm_cfg)))
train_dataloader = dict(batch_size=4)  # x 8 GPUs
default_hooks = dict(
    logger=dict(interval=50, log_metric_by_epoch=False),
    checkpoint=dict(by_epoch=False, interval=3665, max_keep_ckpts=2))  # about once an epoch
kdcl = dict(protocol='paper14ep_syncbn', preset='paper')
