"""Datasets and loaders for collaborative training.

Every random choice of the data pipeline is a pure function of (seed, epoch, image): the batch
sampler derives its permutation from (seed, epoch), and each image's augmentations are drawn
from a generator seeded with (seed, epoch, image index). So the data a run sees does not depend
on the number of workers, on the number of ranks sharing a global batch, or on whether the run
was resumed, which is what makes kill-and-resume and 1-vs-N-rank runs reproducible.

ICL: each image is decoded once and the policy is drawn once per view (one view per student,
or a single shared view with ICL off). A batch is uint8 [B, V, 3, H, W].
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from kdcl_common import DataError
from kdcl_common.distributed import DistContext, barrier
from kdcl_common.sampling import GlobalBatchSampler, ShardSampler, sample_seed

from ..config import DataConfig
from . import sources, synthetic
from .transforms import eval_transform, normalization, train_transform


class ViewsDataset(Dataset):
    """`source[indices[pos]]`, decoded once and augmented `views` times. Keys are
    (epoch, pos) pairs from the samplers below. An image that cannot be decoded yields
    (None, label, description): the collate function drops it and reports it."""

    def __init__(self, source: Any, indices: Sequence[int], transform: Callable, views: int,
                 seed: int):
        self.source, self.indices = source, np.asarray(indices, dtype=np.int64)
        self.transform, self.views, self.seed = transform, views, seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: tuple[int, int]):
        epoch, pos = key
        index = int(self.indices[pos])
        label = int(self.source.targets[index])
        try:
            image = self.source.load(index)
        except sources.DECODE_ERRORS as e:
            return None, label, f"{self.source.describe(index)} ({type(e).__name__}: {e})"
        # Seed only the CPU generator, restored afterwards: with workers=0 this runs in the
        # training process, whose (dropout) random stream must not change.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            views = torch.stack([self.transform(image) for _ in range(self.views)])
        return views, label, None


def collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack the decodable samples; list the ones that were not."""
    good = [(views, label) for views, label, _ in batch if views is not None]
    bad = [error for views, _, error in batch if views is None]
    if not good:
        return torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), bad
    return (torch.stack([v for v, _ in good]), torch.tensor([l for _, l in good]), bad)


@dataclass
class Data:
    train: DataLoader
    val: DataLoader
    held_out: DataLoader | None
    num_classes: int
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int
    held_out_indices: np.ndarray
    dataset_name: str


def load_sources(cfg: DataConfig, ctx: DistContext):
    """(train source, val source, dataset name) for the configured dataset."""
    if cfg.dataset == "cifar100":
        train, val = sources.cifar100_splits(cfg.root)
        return train, val, "cifar100"
    if cfg.dataset == "synthetic":
        s = cfg.synthetic
        if ctx.is_main or ctx.local_rank == 0:
            synthetic.generate(cfg.root, s.classes, s.train_per_class, s.val_per_class,
                               s.image_size, s.seed)
        barrier()
    train, val = sources.imagefolder_splits(cfg.root)
    name = "synthetic" if cfg.dataset == "synthetic" else os.path.basename(os.path.normpath(cfg.root))
    return train, val, name


def build(cfg: DataConfig, views: int, global_batch: int, seed: int, ctx: DistContext) -> Data:
    train_src, val_src, name = load_sources(cfg, ctx)
    num_classes = len(train_src.classes)
    train_idx, held_idx = sources.held_out_split(train_src.targets, cfg.held_out_per_class,
                                                 cfg.split_seed, num_classes)
    per_rank = global_batch // max(ctx.world_size, 1)
    pin = ctx.device.type == "cuda"

    def loader(dataset: Dataset, batch_sampler: Sampler) -> DataLoader:
        # A private generator: creating an iterator draws a worker seed from it, which must not
        # shift the training process's global random stream (dropout) when a run is resumed.
        return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=cfg.workers,
                          collate_fn=collate, pin_memory=pin, persistent_workers=cfg.workers > 0,
                          prefetch_factor=4 if cfg.workers > 0 else None,
                          generator=torch.Generator().manual_seed(seed))

    train = loader(ViewsDataset(train_src, train_idx, train_transform(cfg), views, seed),
                   GlobalBatchSampler(len(train_idx), global_batch, ctx.rank, ctx.world_size, seed))
    evaluation = eval_transform(cfg)
    val = loader(ViewsDataset(val_src, np.arange(len(val_src)), evaluation, 1, seed),
                 ShardSampler(len(val_src), per_rank, ctx.rank, ctx.world_size))
    held = None
    if len(held_idx):
        held = loader(ViewsDataset(train_src, held_idx, evaluation, 1, seed),
                      ShardSampler(len(held_idx), per_rank, ctx.rank, ctx.world_size))
    mean, std = normalization(cfg)
    return Data(train, val, held, num_classes, train_src.classes, mean, std, len(train_idx),
                held_idx, name)


class CorruptImageTracker:
    """Undecodable images: each is skipped and warned about once; the run stops when more than
    `max_fraction` of the dataset's images turn out to be undecodable."""

    def __init__(self, dataset_size: int, max_fraction: float, logger):
        self.limit = max_fraction * dataset_size
        self.max_fraction, self.logger = max_fraction, logger
        self.bad: dict[str, None] = {}

    def update(self, bad: list[str]) -> None:
        for error in bad:
            if error not in self.bad:
                self.bad[error] = None
                self.logger.warning(f"skipped an image that cannot be decoded: {error}")
        if bad and len(self.bad) > self.limit:
            listing = "\n  ".join(list(self.bad)[:20])
            raise DataError(f"{len(self.bad)} images could not be decoded, more than "
                            f"data.max_corrupt_fraction={self.max_fraction} of the dataset:\n  "
                            f"{listing}\nRepair or remove these files.")
