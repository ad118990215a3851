"""torch.distributed set-up from torchrun's environment: gloo on CPU, NCCL on GPU."""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from . import ConfigError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """`auto` picks the local GPU when there is one, else the CPU."""
    if preference not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, not {preference!r}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was requested but no GPU is visible; use device=cpu or auto")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init(device_preference: str = "auto", timeout_minutes: int = 30) -> DistContext:
    """Join the process group that torchrun describes, or run as a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if world_size == 1:
        return DistContext(device=device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=dt.timedelta(minutes=timeout_minutes),
                                device_id=device if device.type == "cuda" else None)
    return DistContext(rank=dist.get_rank(), local_rank=local_rank,
                       world_size=dist.get_world_size(), device=device)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def earliest_across_ranks(first_bad: torch.Tensor) -> torch.Tensor:
    """Per element, the earliest step at which any rank saw a non-finite loss (-1: none), the
    same on every rank. Ranks must agree to stop: one that stopped alone would leave the others
    waiting in their next all-reduce (their own loss turns NaN only a step later, through the
    averaged gradients)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return first_bad
    none = torch.iinfo(first_bad.dtype).max
    earliest = torch.where(first_bad >= 0, first_bad, none)
    dist.all_reduce(earliest, op=dist.ReduceOp.MIN)
    return torch.where(earliest == none, -1, earliest)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum across ranks, in place; a no-op in a single process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def any_across_ranks(flag: bool, device: torch.device) -> bool:
    """Whether any rank has `flag` set, the same answer on every rank (one tiny all-reduce:
    call it where the loop reads values to the host anyway)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(obj=None, src: int = 0):
    """Rank `src`'s `obj` on every rank (a no-op in a single process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def is_main() -> bool:
    """Rank 0, or the only process."""
    return not dist.is_initialized() or dist.get_rank() == 0
