# upernet with a r50 backbone on COCO-Stuff 164k, 80k iters, SyncBN (channels follow the backbone).
_base_ = ['./_base_/upernet_torchvision.py', './_base_/coco-stuff164k_80k.py']
model = dict(backbone=dict(depth=50), data_preprocessor=dict(size=(512, 512)))
