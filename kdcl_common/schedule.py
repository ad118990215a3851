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
    """Problems with an optimiser config, as messages (empty when it is fine). Each names the
    key, its value and what it must be. The comparisons are written so that NaN fails them."""
    problems = []
    if cfg.schedule not in ("multistep", "cosine"):
        problems.append(f"optim.schedule={cfg.schedule!r} is not one of: multistep, cosine")
    if cfg.batch_size <= 0 or cfg.epochs <= 0:
        problems.append("optim.batch_size and optim.epochs must be positive")

    def need(key: str, ok: bool, rule: str) -> None:
        if not ok:
            problems.append(f"optim.{key}={getattr(cfg, key)!r} must be {rule}")

    need("lr", cfg.lr > 0 and math.isfinite(cfg.lr), "> 0 (the peak learning rate)")
    need("momentum", 0 <= cfg.momentum < 1, "in [0, 1) (0: plain SGD)")
    need("weight_decay", cfg.weight_decay >= 0 and math.isfinite(cfg.weight_decay),
         ">= 0 (0: none)")
    need("warmup_epochs", cfg.warmup_epochs >= 0 and math.isfinite(cfg.warmup_epochs),
         ">= 0 (0: no warm-up)")
    need("warmup_start_lr", cfg.warmup_start_lr >= 0 and math.isfinite(cfg.warmup_start_lr),
         ">= 0")
    need("min_lr", cfg.min_lr >= 0 and math.isfinite(cfg.min_lr), ">= 0")
    need("gamma", cfg.gamma > 0 and math.isfinite(cfg.gamma), "> 0 (the multistep decay factor)")
    if cfg.nesterov and not cfg.momentum > 0:
        problems.append(f"optim.nesterov=true needs momentum: optim.momentum={cfg.momentum!r} "
                        "must be > 0, or set optim.nesterov=false")
    if any(m < 0 for m in cfg.milestones):
        problems.append(f"optim.milestones={list(cfg.milestones)} must be epochs >= 0")
    if sorted(cfg.milestones) != list(cfg.milestones):
        problems.append(f"optim.milestones must be increasing, got {cfg.milestones}")
    return problems
