# The standard 1x schedule as Detectron2 runs it (the other detection backends' 1x_frozenbn):
# 90k iterations at batch 16 (8 GPUs x 2 images, about 12 epochs), lr 0.02 decayed x0.1 at 60k
# and 80k, weight decay 1e-4, momentum 0.9, a linear warm-up over 1000 iterations.
max_iters = 90000
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters, milestones=[60000, 80000],
         gamma=0.1),
]
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.02, momentum=0.9,
                                                         weight_decay=0.0001))
