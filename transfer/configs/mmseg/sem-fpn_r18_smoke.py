# sem-fpn with a r18 backbone on the generated scenes, a CPU, a few minutes.
_base_ = ['./_base_/sem-fpn_torchvision.py', './_base_/scenes_smoke.py']
model = dict(backbone=dict(depth=18), data_preprocessor=dict(size=(128, 128)))
