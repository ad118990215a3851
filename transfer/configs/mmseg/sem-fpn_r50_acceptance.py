# GPU acceptance (python -m chain.acceptance): the 80k protocol's model, 512x512 pipeline,
# batch and SyncBN (BatchNorm in one process) for 40 iterations on the generated scenes in the
# COCO-Stuff layout ($COCO_STUFF_ROOT), then evaluation. Times, not science.
_base_ = ['./sem-fpn_r50_80k_syncbn_coco-stuff164k-512x512.py']
max_iters = 40
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters,
                        by_epoch=False)]
default_hooks = dict(logger=dict(interval=5), checkpoint=dict(interval=max_iters))
kdcl = dict(protocol='acceptance', preset='custom')
