"""Datasets and loaders for collaborative training.

Every random choice of the data pipeline is a pure function of (seed, epoch, image): the batch
sampler derives its permutation from (seed, epoch), and each image's augmentations are drawn
from a generator seeded with (seed, epoch, image index). So the data a run sees does not depend
on the number of workers, on the number of ranks sharing a global batch, or on whether the run
was resumed, which is what makes kill-and-resume and 1-vs-N-rank runs reproducible.

ICL: each image is read and decoded once and cropped once per view (one view per student, or a
single shared view with ICL off). Workers crop; flips, colour jitter and Cutout's holes are
drawn here and applied to the whole batch on the training device (views.py explains the
split). With `data.decode=device` the workers only read the JPEG bytes and draw the crop boxes,
and the device decodes and crops the whole batch (on_device.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from kdcl_common import ConfigError, DataError
from kdcl_common.distributed import DistContext, barrier
from kdcl_common.images import open_within
from kdcl_common.sampling import GlobalBatchSampler, ShardSampler, sample_seed

from ..config import DataConfig
from . import sources, synthetic
from .batch import Batch, Sample, Undecodable, collate  # noqa: F401 (Batch: the loaders' type)
from .on_device import InputPipeline
from .views import Policy, crop_views, eval_policy, normalization, train_policy


def _jpeg_header(data: torch.Tensor, max_pixels: int) -> tuple[int, int] | None:
    """(height, width) of a JPEG the device decoder takes (RGB or grey), else None;
    ImageTooLarge above `max_pixels` (the device would decode it whole)."""
    with open_within(data.numpy().tobytes(), max_pixels, sources.LIMIT_KEY) as image:
        if image.format == "JPEG" and image.mode in ("RGB", "L"):
            return image.height, image.width
    return None


class ViewsDataset(Dataset):
    """`source[indices[pos]]`, read and decoded once, `views` draws of `policy`. Keys are
    (epoch, pos) pairs from the samplers below. With `encoded`, JPEGs are left undecoded for
    the device (other formats are decoded here)."""

    def __init__(self, source: Any, indices: Sequence[int], policy: Policy, views: int,
                 seed: int, encoded: bool = False):
        self.source, self.indices = source, np.asarray(indices, dtype=np.int64)
        self.policy, self.views, self.seed, self.encoded = policy, views, seed, encoded

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        epoch, pos = key
        index = int(self.indices[pos])
        label = int(self.source.targets[index])
        rng = np.random.default_rng(sample_seed(self.seed, epoch, index))
        try:
            if self.encoded:
                data = self.source.read(index)
                size = _jpeg_header(data, self.source.max_pixels)
                if size is not None:
                    return Sample(label, self.policy.draw(rng, *size, self.views), encoded=data,
                                  size=size, name=self.source.describe(index))
                image = sources.decode(data, self.source.max_pixels)
            else:
                image = self.source.load(index)
        except sources.DECODE_ERRORS as e:
            return Sample(label, None,
                          error=Undecodable.from_error(self.source.describe(index), e))
        params = self.policy.draw(rng, image.shape[1], image.shape[2], self.views)
        return Sample(label, params, views=crop_views(image, params.boxes, self.policy.size,
                                                      self.policy.pad))


class Collate:
    """`collate`, then on a CPU run the whole input pipeline (flips, jitter, normalisation),
    batched, in the worker: the training process has no cores to spare there (its OpenMP
    threads and the workers share them, and small ops in an oversubscribed process run several
    times slower). On a GPU the training device does it (`pipeline` None)."""

    def __init__(self, pipeline: InputPipeline | None, augment: bool):
        self.pipeline, self.augment = pipeline, augment

    def __call__(self, samples: list[Sample]) -> Batch:
        batch = collate(samples)
        if self.pipeline is None or not batch.size or batch.encoded is not None:
            return batch
        inputs, labels, _ = self.pipeline(batch, self.augment)
        return batch._replace(views=torch.zeros(0, dtype=torch.uint8), inputs=inputs)


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
    inputs: InputPipeline  # batch -> the students' inputs (already run by CPU workers)


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
    train, val = sources.imagefolder_splits(cfg.root, cfg.max_image_pixels)
    name = ("synthetic" if cfg.dataset == "synthetic"
            else os.path.basename(os.path.normpath(cfg.root)))
    return train, val, name


def identified_files(cfg: DataConfig) -> tuple[str, ...] | None:
    """The files under data.root whose fingerprint identifies the dataset (kdcl_common/
    fingerprint.py), or None where the config itself says what the data is (the generated
    set: its parameters are data.synthetic)."""
    if cfg.dataset == "synthetic":
        return None
    if cfg.dataset == "cifar100":
        nested = "cifar-100-python/" if (Path(cfg.root) / "cifar-100-python").is_dir() else ""
        return tuple(f"{nested}{name}" for name in ("train", "test", "meta"))
    return ("train", "val")


def check_decode(cfg: DataConfig, source) -> None:
    if cfg.decode == "device" and not isinstance(source, sources.FolderSource):
        raise ConfigError(f"data.decode=device decodes JPEG files; {cfg.dataset} images are "
                          "decoded already: use data.decode=cpu")


def build(cfg: DataConfig, views: int, global_batch: int, seed: int, ctx: DistContext,
          channels_last: bool = False) -> Data:
    train_src, val_src, name = load_sources(cfg, ctx)
    num_classes = len(train_src.classes)
    train_idx, held_idx = sources.held_out_split(train_src.targets, cfg.held_out_per_class,
                                                 cfg.split_seed, num_classes)
    per_rank = global_batch // max(ctx.world_size, 1)
    pin = ctx.device.type == "cuda"

    mean, std = normalization(cfg)
    policy = train_policy(cfg)
    inputs = InputPipeline(ctx.device, mean, std, cfg.image_size, channels_last, policy.flip,
                           policy.jitter > 0)
    in_workers = inputs if ctx.device.type == "cpu" else None

    def loader(dataset: Dataset, batch_sampler: Sampler, augment: bool) -> DataLoader:
        # A private generator: creating an iterator draws a worker seed from it, which must not
        # shift the training process's global random stream (dropout) when a run is resumed.
        return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=cfg.workers,
                          collate_fn=Collate(in_workers, augment), pin_memory=pin,
                          persistent_workers=cfg.workers > 0,
                          prefetch_factor=4 if cfg.workers > 0 else None,
                          generator=torch.Generator().manual_seed(seed))

    check_decode(cfg, train_src)
    train = loader(ViewsDataset(train_src, train_idx, policy, views, seed,
                                encoded=cfg.decode == "device"),
                   GlobalBatchSampler(len(train_idx), global_batch, ctx.rank, ctx.world_size, seed),
                   augment=True)
    evaluation = eval_policy(cfg)  # evaluation is a small share: decoded by the workers
    val = loader(ViewsDataset(val_src, np.arange(len(val_src)), evaluation, 1, seed),
                 ShardSampler(len(val_src), per_rank, ctx.rank, ctx.world_size), augment=False)
    held = None
    if len(held_idx):
        held = loader(ViewsDataset(train_src, held_idx, evaluation, 1, seed),
                      ShardSampler(len(held_idx), per_rank, ctx.rank, ctx.world_size),
                      augment=False)
    return Data(train, val, held, num_classes, train_src.classes, mean, std, len(train_idx),
                held_idx, name, inputs)


class CorruptImageTracker:
    """Undecodable images, and those above data.max_image_pixels (not decoded): each file is
    skipped and warned about once, however often it is read (every epoch, in several loaders);
    the run stops when more than `max_fraction` of the dataset's images turn out to be
    unusable."""

    def __init__(self, dataset_size: int, max_fraction: float, logger):
        self.limit = max_fraction * dataset_size
        self.max_fraction, self.logger = max_fraction, logger
        self.bad: dict[str, str] = {}  # file -> why it could not be decoded (the first reason)

    def update(self, bad: list[Undecodable]) -> None:
        for file, reason in bad:
            if file not in self.bad:
                self.bad[file] = reason
                self.logger.warning(f"skipped an image that cannot be decoded: {file} ({reason})")
        if bad and len(self.bad) > self.limit:
            listing = "\n  ".join(f"{file} ({reason})"
                                   for file, reason in list(self.bad.items())[:20])
            more = f"\n  ... and {len(self.bad) - 20} more" if len(self.bad) > 20 else ""
            raise DataError(f"{len(self.bad)} images could not be decoded, more than "
                            f"data.max_corrupt_fraction={self.max_fraction} of the dataset:\n  "
                            f"{listing}{more}\nRepair or remove these files (or raise "
                            f"data.max_corrupt_fraction; for images above "
                            f"data.max_image_pixels, raise that).")
