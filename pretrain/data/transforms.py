"""Augmentation policies. Transforms end in uint8 tensors [3, H, W]: normalisation happens on
the training device, so a quarter of the bytes cross the host-device link."""
from __future__ import annotations

import torch
from torchvision.transforms import v2

from ..config import DataConfig

# (mean, std) on the 0-1 scale
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


def normalization(cfg: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return CIFAR100_STATS if cfg.policy == "cifar" else IMAGENET_STATS


def _to_uint8_tensor() -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.uint8, scale=True), v2.ToPureTensor()]


def train_transform(cfg: DataConfig) -> v2.Compose:
    """One random draw of the policy. ICL calls it once per student on the same decoded image."""
    if cfg.policy == "cifar":
        # The paper's CIFAR policy: pad 4, random 32x32 crop, horizontal flip.
        steps = [v2.RandomCrop(cfg.image_size, padding=4), v2.RandomHorizontalFlip()]
    else:
        # Scale and aspect-ratio augmentation with photometric distortion (the paper cites
        # GoogLeNet's); brightness/contrast/saturation jitter as in most ResNet recipes.
        steps = [v2.RandomResizedCrop(cfg.image_size, scale=tuple(cfg.crop_scale), antialias=True),
                 v2.RandomHorizontalFlip()]
        if cfg.color_jitter > 0:
            steps.append(v2.ColorJitter(cfg.color_jitter, cfg.color_jitter, cfg.color_jitter))
    return v2.Compose(steps + _to_uint8_tensor())


def eval_transform(cfg: DataConfig) -> v2.Compose:
    if cfg.policy == "cifar":
        return v2.Compose(_to_uint8_tensor())
    # Shorter side to eval_resize, then the centre crop (256 -> 224 on ImageNet).
    return v2.Compose([v2.Resize(cfg.eval_resize, antialias=True), v2.CenterCrop(cfg.image_size),
                       *_to_uint8_tensor()])
