"""What each student sees of an image: the random draws of the augmentation policy, and the
crops they select.

The policy is split by where each part runs best. Geometry (which box of the image, resized to
the training size) changes the image's size, so it runs per image in the loader workers, or
batched on the device with `data.decode=device`. Flips, colour jitter and Cutout keep the size,
so the workers only draw their parameters and the training device applies them to the whole
batch at once (pretrain/data/on_device.py). With ICL an image is decoded once and cropped once
per view.

Every draw comes from a NumPy generator seeded with (seed, epoch, image): see loader.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config import DataConfig

# (mean, std) on the 0-1 scale
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
ASPECT_RATIOS = (3 / 4, 4 / 3)  # random-resized-crop aspect range (Inception's)
ATTEMPTS = 10  # random-resized-crop tries before its centre-crop fallback, as torchvision


def normalization(cfg: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return CIFAR100_STATS if cfg.policy == "cifar" else IMAGENET_STATS


@dataclass
class ViewParams:
    """The draws for the views of one image. Boxes are (top, left, height, width) in the image
    padded by the policy's `pad`; jitter factors are (brightness, contrast, saturation), applied
    in `order` (a permutation of 0, 1, 2), as torchvision's ColorJitter."""

    boxes: np.ndarray   # int64 [V, 4]
    flip: np.ndarray    # bool [V]
    jitter: np.ndarray  # float32 [V, 3]
    order: np.ndarray   # int64 [V, 3]
    holes: np.ndarray | None = None  # int64 [V, 4] Cutout's (top, left, bottom, right) in the
    # crop, bottom and right exclusive, already clipped at its borders; None without Cutout


# The uniforms of one view, drawn in one call: ATTEMPTS (area, aspect) pairs, a position, a
# flip, three jitter factors and three keys whose order is the jitter order.
TRIES = slice(0, 2 * ATTEMPTS)
POSITION = slice(TRIES.stop, TRIES.stop + 2)
FLIP = POSITION.stop
JITTER = slice(FLIP + 1, FLIP + 4)
ORDER = slice(JITTER.stop, JITTER.stop + 3)
UNIFORMS = ORDER.stop
# Cutout's hole centre (row, column) comes from a second call after the first, not from more
# columns of it: a [V, UNIFORMS + 2] draw would shift every later view's uniforms, so turning
# Cutout on would change the crops, flips and jitter of every view but the first.
HOLE_UNIFORMS = 2


def cutout_holes(u: np.ndarray, size: int, side: int) -> np.ndarray:
    """DeVries & Taylor's hole from uniforms u [V, 2]: a centre uniform over the size x size
    crop's pixels, the side x side square from centre - side // 2, clipped at the borders (so
    a hole near an edge is smaller). Their code spans [centre - side // 2, centre + side // 2),
    the same square for their even sides; this one is side wide for odd sides too.
    Returns int64 [V, 4] (top, left, bottom, right), bottom and right exclusive."""
    centre = np.minimum((u * size).astype(np.int64), size - 1)
    start = centre - side // 2
    return np.clip(np.concatenate([start, start + side], 1), 0, size)


def random_resized_box(u: list[float], height: int, width: int, scale: tuple[float, float],
                       ratio: tuple[float, float] = ASPECT_RATIOS) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params from the uniforms `u`: up to ATTEMPTS tries
    of a random area fraction and log-uniform aspect ratio; the first that fits wins, else the
    centre crop with the aspect ratio clamped into `ratio`. Plain Python: for a handful of
    views it is several times faster than NumPy's per-call overhead."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    tries = u[TRIES]
    for k in range(ATTEMPTS):
        target = area * (scale[0] + (scale[1] - scale[0]) * tries[2 * k])
        aspect = math.exp(log_lo + (log_hi - log_lo) * tries[2 * k + 1])
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            y, x = u[POSITION]
            return int(y * (height - h + 1)), int(x * (width - w + 1)), h, w
    in_ratio = width / height  # the fallback: the largest centred box within `ratio`
    h, w = height, width
    if in_ratio < ratio[0]:
        h = int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w = int(round(height * ratio[1]))
    return (height - h) // 2, (width - w) // 2, h, w


def centre_box(height: int, width: int, fraction: float) -> tuple[int, int, int, int]:
    """The centred square of side `fraction` x the shorter side: Resize(shorter side to
    size / fraction) followed by CenterCrop(size), done as one resampling."""
    side = max(1, min(height, width, int(round(fraction * min(height, width)))))
    return (height - side) // 2, (width - side) // 2, side, side


@dataclass(frozen=True)
class Policy:
    """An augmentation policy: how to draw the views of an image of a given size."""

    size: int                # side of the crops
    kind: str                # random_resized | padded_random | centre | whole
    scale: tuple[float, float] = (0.08, 1.0)
    pad: int = 0             # zero padding around the image before cropping (CIFAR)
    centre_fraction: float = 1.0
    flip: bool = False
    jitter: float = 0.0      # brightness/contrast/saturation strength (0 = none)
    cutout: int = 0          # side of the Cutout hole in pixels (0 = none)

    @property
    def photometric(self) -> bool:
        """Whether the device has anything to do besides normalising."""
        return self.flip or self.jitter > 0 or self.cutout > 0

    def draw(self, rng: np.random.Generator, height: int, width: int, views: int) -> ViewParams:
        uniforms = rng.random((views, UNIFORMS))
        rows = uniforms.tolist()
        if self.kind == "random_resized":
            boxes = [random_resized_box(u, height, width, self.scale) for u in rows]
        elif self.kind == "padded_random":  # RandomCrop of the padded image
            room_y, room_x = (height + 2 * self.pad - self.size + 1,
                              width + 2 * self.pad - self.size + 1)
            boxes = [(int(u[POSITION][0] * room_y), int(u[POSITION][1] * room_x), self.size,
                      self.size) for u in rows]
        elif self.kind == "centre":
            boxes = [centre_box(height, width, self.centre_fraction)] * views
        else:
            boxes = [(0, 0, height, width)] * views
        j = self.jitter
        flip = (uniforms[:, FLIP] < 0.5) if self.flip else np.zeros(views, dtype=bool)
        if j > 0:
            low = max(0.0, 1 - j)
            jitter = (low + (1 + j - low) * uniforms[:, JITTER]).astype(np.float32)
            order = uniforms[:, ORDER].argsort(1)
        else:
            jitter, order = np.ones((views, 3), np.float32), np.tile(np.arange(3), (views, 1))
        holes = None
        if self.cutout:  # drawn last: every draw above is the same with Cutout on or off
            holes = cutout_holes(rng.random((views, HOLE_UNIFORMS)), self.size, self.cutout)
        return ViewParams(np.array(boxes, dtype=np.int64), flip, jitter, order, holes)


def train_policy(cfg: DataConfig) -> Policy:
    # config.validate resolved a null cutout_size (8 for the cifar policy) and checked it
    cutout = int(cfg.cutout_size) if cfg.cutout else 0
    if cfg.policy == "cifar":
        # The paper's CIFAR policy: pad 4, random 32x32 crop, horizontal flip (+ Cutout in
        # Table 10).
        return Policy(cfg.image_size, "padded_random", pad=4, flip=True, cutout=cutout)
    # Scale and aspect-ratio augmentation with photometric distortion (the paper cites
    # GoogLeNet's); brightness/contrast/saturation jitter as in most ResNet recipes.
    return Policy(cfg.image_size, "random_resized", scale=tuple(cfg.crop_scale), flip=True,
                  jitter=cfg.color_jitter, cutout=cutout)


def eval_policy(cfg: DataConfig) -> Policy:
    if cfg.policy == "cifar":
        return Policy(cfg.image_size, "whole")
    # Shorter side to eval_resize, then the centre crop (256 -> 224 on ImageNet).
    return Policy(cfg.image_size, "centre", centre_fraction=cfg.image_size / cfg.eval_resize)


def crop_views(image: torch.Tensor, boxes: np.ndarray, size: int, pad: int = 0) -> torch.Tensor:
    """uint8 [3, H, W] -> uint8 [V, 3, size, size]: each box cropped and resized with an
    antialiased bilinear filter (torchvision's resized_crop; its SIMD uint8 kernel on the CPU)."""
    if pad:
        image = F.pad(image, (pad, pad, pad, pad))
    out = torch.empty((len(boxes), 3, size, size), dtype=torch.uint8)
    for v, (top, left, h, w) in enumerate(boxes.tolist()):  # one per student
        crop = image[None, :, top:top + h, left:left + w]
        if h == size and w == size:
            out[v] = crop[0]
        else:
            out[v] = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True,
                                   align_corners=False)[0]
    return out
