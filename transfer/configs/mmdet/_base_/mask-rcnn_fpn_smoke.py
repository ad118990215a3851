# Smoke preset: Mask R-CNN FPN on the generated COCO-format scenes (5 shape classes, polygon
# and RLE masks, crowd regions), images of at most 192x128, 80 iterations on a CPU. Proves the
# plumbing (conversion, training, mmdet's COCO evaluation, records), not the science.
_base_ = ['./mask-rcnn_fpn.py', './schedule_smoke.py']
data_root = 'data/smoke/coco/'  # written by the backend's generator when missing
metainfo = dict(classes=('circle', 'square', 'triangle', 'ring', 'cross'))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(192, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(192, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
model = dict(train_cfg=dict(rcnn=dict(sampler=dict(num=64))))  # RoIs per image, as Detectron2's
train_dataloader = dict(
    batch_size=4, num_workers=2,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=2,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
default_hooks = dict(
    logger=dict(interval=10, log_metric_by_epoch=False),
    checkpoint=dict(by_epoch=False, interval=20, max_keep_ckpts=2))
env_cfg = dict(cudnn_benchmark=False)
kdcl = dict(protocol='smoke', preset='smoke', synthetic=True)
optim_wrapper = dict(optimizer=dict(lr=0.005))  # the mask head is unstable at 0.01 with 4 images
