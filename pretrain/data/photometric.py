"""Flips and colour jitter for a whole batch at once, with parameters drawn per image by the
loader (views.py). They run where the batch is: on the training device for GPUs, in the
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
