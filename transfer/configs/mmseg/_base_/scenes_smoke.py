# Smoke preset: the generated COCO-format scenes in the COCO-Stuff layout (5 shape classes and
# 2 background classes; 255 on crowd regions), 128 px crops, 150 iterations on a CPU. Proves
# the plumbing (conversion, training, mmseg's evaluator, records), not the science.
_base_ = ['mmseg::_base_/default_runtime.py']
data_root = 'data/smoke/coco'  # written by the launcher's generator when missing
crop_size = (128, 128)
classes = ('circle', 'square', 'triangle', 'ring', 'cross', 'plain', 'striped')
dataset = dict(
    type='BaseSegDataset', data_root=data_root, img_suffix='.jpg',
    seg_map_suffix='_labelTrainIds.png',
    metainfo=dict(classes=classes, palette=[[220, 20, 60], [0, 0, 142], [0, 130, 80],
                                            [250, 170, 30], [120, 60, 200], [128, 128, 128],
                                            [60, 60, 60]]))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(192, 128), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(192, 128), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4, num_workers=2, persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(**dataset, pipeline=train_pipeline,
                 data_prefix=dict(img_path='images/train2017',
                                  seg_map_path='annotations/train2017')))
val_dataloader = dict(
    batch_size=1, num_workers=2, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**dataset, pipeline=test_pipeline,
                 data_prefix=dict(img_path='images/val2017', seg_map_path='annotations/val2017')))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
max_iters = 120
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.01, momentum=0.9,
                                                         weight_decay=0.0005))
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters,
                        by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=25, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=50, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
kdcl = dict(protocol='smoke', preset='smoke', synthetic=True, output_root='runs/transfer',
            records='results/records',
            max_image_pixels=89478485)  # larger images are refused before decoding
