"""The SGD recipe shared by the stages: its config schema and the learning-rate schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List

from .config import option


@dataclass
class OptimConfig:
    batch_size: int = option(256, help="global batch size, split evenly across ranks")
    lr: float = option(0.1, help="peak learning rate (after warm-up)")
    momentum: float = option(0.9, help="SGD momentum")
    nesterov: bool = option(False, help="Nesterov momentum")
    weight_decay: float = option(1e-4, help="L2 weight decay on all parameters")
    epochs: int = option(200, help="training epochs")
    schedule: str = option("multistep", help="multistep or cosine")
    milestones: List[int] = option([60, 120, 180], help="multistep: epochs where lr *= gamma")
    gamma: float = option(0.1, help="multistep decay factor")
    warmup_epochs: float = option(0.0, help="linear warm-up length in epochs (may be fractional)")
    warmup_start_lr: float = option(0.0, help="learning rate at the start of warm-up")
    min_lr: float = option(0.0, help="cosine: final learning rate")


def learning_rate(cfg: OptimConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up, then multistep decay or cosine, as a function of the global step."""
    epoch = step / steps_per_epoch
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_start_lr + (cfg.lr - cfg.warmup_start_lr) * epoch / cfg.warmup_epochs
    if cfg.schedule == "multistep":
        return cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    progress = (epoch - cfg.warmup_epochs) / max(cfg.epochs - cfg.warmup_epochs, 1e-8)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def check(cfg: OptimConfig) -> list[str]:
    """Problems with an optimiser config, as messages (empty when it is fine)."""
    problems = []
    if cfg.schedule not in ("multistep", "cosine"):
        problems.append(f"optim.schedule={cfg.schedule!r} is not one of: multistep, cosine")
    if cfg.batch_size <= 0 or cfg.epochs <= 0:
        problems.append("optim.batch_size and optim.epochs must be positive")
    if sorted(cfg.milestones) != list(cfg.milestones):
        problems.append(f"optim.milestones must be increasing, got {cfg.milestones}")
    return problems
