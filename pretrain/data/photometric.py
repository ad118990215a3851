"""Flips, colour jitter and Cutout for a whole batch at once, with parameters drawn per image
by the loader (views.py). They run where the batch is: on the training device for GPUs, in the
loader's workers when training on the CPU (see loader.Collate)."""
from __future__ import annotations

import torch

GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def colour_jitter_(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor,
                   bound: float = 255.0) -> torch.Tensor:
    """torchvision's ColorJitter (brightness, contrast, saturation) for a batch, in place: x
    float [N, 3, H, W] in [0, bound]; factors [N, 3] and order [N, 3] per image. Each of the
    three rounds blends every image with what its own operation blends with: 0 (brightness),
    its mean grey level (contrast) or its grey image (saturation). In place because fresh
    batch-sized temporaries cost more than the arithmetic on a CPU."""
    n = x.shape[0]
    for step in range(3):
        op = order[:, step].view(n, 1, 1, 1)
        weight = 1 - factors.gather(1, order[:, step:step + 1]).view(n, 1, 1, 1)
        grey = torch.mul(x[:, 0:1], GREY[0]).add_(x[:, 1:2], alpha=GREY[1])
        grey.add_(x[:, 2:3], alpha=GREY[2])
        mean = grey.mean((2, 3), keepdim=True).mul_(op == 1)  # 0 for brightness
        x.lerp_(torch.where(op == 2, grey, mean), weight).clamp_(0, bound)
    return x


def flip_and_jitter_(x: torch.Tensor, flip: torch.Tensor | None, factors: torch.Tensor | None,
                     order: torch.Tensor) -> torch.Tensor:
    """In place on x float [N, 3, H, W] in [0, 255]: mirror the images whose `flip` is set,
    then jitter them (either step is skipped when its parameters are None)."""
    if flip is not None:
        torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x, out=x)
    if factors is not None:
        colour_jitter_(x, factors, order)
    return x


def cutout_(x: torch.Tensor, holes: torch.Tensor) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017) in place on x float [N, C, H, W]: zero each image's
    hole, holes int [N, 4] (top, left, bottom, right; exclusive, clipped; views.cutout_holes).
    Applied to the normalised batch, as their code does, so a hole holds the dataset's mean
    colour. One mask for the batch, from two [N, side] comparisons: no loop over images."""
    rows = torch.arange(x.shape[-2], device=x.device)
    cols = torch.arange(x.shape[-1], device=x.device)
    holes = holes.to(x.device)
    in_rows = (rows >= holes[:, 0:1]) & (rows < holes[:, 2:3])  # [N, H]
    in_cols = (cols >= holes[:, 1:2]) & (cols < holes[:, 3:4])  # [N, W]
    return x.masked_fill_((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0.0)
