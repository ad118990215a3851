# The KDCL paper's COCO schedule (§4.3, Table 8), as the other detection backends run it: 14
# epochs over train2017 at batch 32 (8 GPUs x 4 images), lr 0.04 decayed x0.1 at epochs 9 and
# 12, weight decay 1e-4, momentum 0.9 (the linear warm-up is Detectron2's default). Epochs count
# the 117,266 train2017 images with annotations: 14 x 117266 / 32 = 51304 iterations; epochs 9
# and 12 end at 32981 and 43975.
max_iters = 51304
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters, milestones=[32981, 43975],
         gamma=0.1),
]
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.04, momentum=0.9,
                                                         weight_decay=0.0001))
