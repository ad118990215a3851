# The smoke schedule, as Detectron2's smoke configs: 80 iterations at batch 4 (about 8 epochs of
# the 43 generated training scenes with objects), lr 0.01 with a 10-iteration warm-up, x0.1 at
# iteration 60.
max_iters = 80
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=10),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters, milestones=[60], gamma=0.1),
]
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.01, momentum=0.9,
                                                         weight_decay=0.0001))
