# Mask R-CNN with FPN from mmdet's own configs (read from the installed package), on COCO 2017
# ($COCO_ROOT: train2017/, val2017/, annotations/instances_{train,val}2017.json), with a
# torchvision-style ResNet (style='pytorch', no deep stem: torchvision's names) whose weights
# `python -m transfer --backbone` converts and loads through init_cfg. From the backbone's
# metadata the backend sets its depth or width, the FPN's input channels and the input
# normalisation; num_classes follows the dataset's classes, and the evaluator scores against
# the annotations the validation loader reads.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/default_runtime.py',
]
data_root = '{{$COCO_ROOT:data/coco/}}'
model = dict(
    backbone=dict(
        _delete_=True, type='ResNet', depth=50, num_stages=4, out_indices=(0, 1, 2, 3),
        style='pytorch', frozen_stages=-1, norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False, init_cfg=None))
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
kdcl = dict(output_root='runs/transfer', records='results/records',
            max_image_pixels=89478485)  # larger images are refused before decoding
