"""Batch samplers whose every choice is a pure function of (seed, epoch): the same global
batches for any number of ranks, and after a resume. Datasets receive (epoch, position) keys,
so that they can seed per-sample randomness (augmentation) the same way."""
from __future__ import annotations

import hashlib
import math
from typing import Iterator

import torch
from torch.utils.data import Sampler

from . import ConfigError, DataError


def sample_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (e.g. seed, epoch, index)."""
    digest = hashlib.blake2b(",".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class GlobalBatchSampler(Sampler):
    """Cuts a (seed, epoch)-permutation into global batches of `global_batch` and yields this
    rank's contiguous share of each, as (epoch, position) keys. The union over ranks of step k
    is the same set of samples for any world size. The last incomplete batch is dropped."""

    def __init__(self, size: int, global_batch: int, rank: int, world_size: int, seed: int):
        if global_batch % world_size:
            raise ConfigError(f"optim.batch_size={global_batch} does not split evenly across "
                              f"{world_size} processes: use a multiple of {world_size}")
        if size == 0:
            raise DataError("the training split is empty: there is nothing to train on (check "
                            "the dataset's root and split)")
        if size < global_batch:
            raise ConfigError(f"optim.batch_size={global_batch} is larger than the training set "
                              f"({size} samples): lower it")
        self.size, self.global_batch, self.rank = size, global_batch, rank
        self.per_rank, self.seed, self.epoch = global_batch // world_size, seed, 0
        self.first = 0

    def set_epoch(self, epoch: int, first: int = 0) -> None:
        """The next iteration yields epoch `epoch`'s batches from step `first` on (a run that
        resumes from a mid-epoch checkpoint skips the steps it has done)."""
        self.epoch, self.first = epoch, first

    def __len__(self) -> int:
        """The steps of a whole epoch (also when resuming mid-epoch)."""
        return self.size // self.global_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))
        order = torch.randperm(self.size, generator=g).tolist()
        for step in range(self.first, len(self)):
            start = step * self.global_batch + self.rank * self.per_rank
            yield [(self.epoch, pos) for pos in order[start:start + self.per_rank]]


class ShardSampler(Sampler):
    """Evaluation: positions rank, rank + world, ... in batches; no padding, so no sample is
    counted twice (results are summed or gathered across ranks afterwards)."""

    def __init__(self, size: int, batch: int, rank: int, world_size: int):
        self.positions = list(range(rank, size, world_size))
        self.batch = batch

    def __len__(self) -> int:
        return math.ceil(len(self.positions) / self.batch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for i in range(0, len(self.positions), self.batch):
            yield [(0, pos) for pos in self.positions[i:i + self.batch]]
