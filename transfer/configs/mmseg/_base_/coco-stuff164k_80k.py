# COCO-Stuff 164k (171 classes, *_labelTrainIds.png) with mmseg's dataset, runtime and 80k
# schedule: 512x512 crops, 4 images per GPU (mmseg's 4xb4 = 16 on 4 GPUs), SGD lr 0.01 with
# poly decay, mIoU/mAcc/aAcc. The root is $COCO_STUFF_ROOT (the COCO-Stuff 164k layout:
# images/{train,val}2017, annotations/{train,val}2017).
_base_ = [
    'mmseg::_base_/datasets/coco-stuff164k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py',
]
data_root = '{{$COCO_STUFF_ROOT:data/coco_stuff164k}}'
train_dataloader = dict(batch_size=4, dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=8000, max_keep_ckpts=2))
randomness = dict(seed=0)
kdcl = dict(protocol='80k_syncbn', preset='paper', output_root='runs/transfer',
            records='results/records',
            max_image_pixels=89478485)  # larger images are refused before decoding
