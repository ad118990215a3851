"""What crosses from the loader's workers to the training process: one image (Sample) and a
batch of them (Batch), and how the first become the second (collate)."""
from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np
import torch

from .views import ViewParams


class Undecodable(NamedTuple):
    """An image that could not be decoded: the file (what identifies it: the same file is
    counted once however often it is read) and why, in words free of object addresses."""

    file: str
    reason: str

    @classmethod
    def from_error(cls, file: str, error: BaseException) -> "Undecodable":
        return cls(file, describe_error(error))

    def __str__(self) -> str:
        return f"{self.file} ({self.reason})"


def describe_error(error: BaseException) -> str:
    """Why a file could not be decoded, in one line that is the same every time the file is
    read: PIL names the buffer it read ("cannot identify image file <_io.BytesIO object at
    0x7f...>"), whose address changes with every read; torchvision starts with its C++ source
    line ("decode_jpeg, /.../decode_jpeg.cpp:167, Image is incomplete or truncated")."""
    text = str(error).splitlines()[0] if str(error) else ""
    text = re.sub(r"\s*<[^<>]*\bat 0x[0-9a-fA-F]+>", "", text)
    text = re.sub(r"^\w+, \S+\.(?:cpp|cu|h):\d+, ", "", text).strip()  # torchvision's source line
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class Sample(NamedTuple):
    """One image as a worker returns it: its views cropped (`views`), or with
    data.decode=device its encoded bytes and crop boxes; `error` when it cannot be decoded."""

    label: int
    params: ViewParams | None
    views: torch.Tensor | None = None   # uint8 [V, 3, S, S]
    encoded: torch.Tensor | None = None  # uint8 [bytes] of a JPEG, cropped on the device
    size: tuple[int, int] | None = None  # (height, width) of the encoded image
    name: str = ""                       # the file, with `encoded`
    error: Undecodable | None = None


class Encoded(NamedTuple):
    """The JPEGs of a batch, decoded and cropped on the training device."""

    data: torch.Tensor     # uint8 [total bytes]: the files back to back
    lengths: torch.Tensor  # int64 [E]
    sizes: torch.Tensor    # int64 [E, 2] (height, width)
    boxes: torch.Tensor    # int64 [E, V, 4] (top, left, height, width)
    rows: torch.Tensor     # int64 [E]: their rows in the batch
    names: list[str]       # the files, for error messages


class Batch(NamedTuple):
    """A batch as the training process receives it. `views` holds the rows cropped by the
    workers: all of them, or with data.decode=device those that are not JPEGs (`cpu_rows`)."""

    views: torch.Tensor    # uint8 [B or len(cpu_rows), V, 3, S, S]
    labels: torch.Tensor   # int64 [B]
    flip: torch.Tensor     # bool [B, V]
    jitter: torch.Tensor   # float32 [B, V, 3] brightness, contrast, saturation factors
    order: torch.Tensor    # int64 [B, V, 3] the order they are applied in
    bad: list[Undecodable]  # images that could not be decoded (left out)
    encoded: Encoded | None = None
    cpu_rows: torch.Tensor | None = None
    inputs: list[torch.Tensor] | None = None  # the students' inputs, when the workers ran the
    # whole input pipeline (CPU runs): one normalised float [B, 3, S, S] per view
    holes: torch.Tensor | None = None  # int64 [B, V, 4] Cutout's holes; None without Cutout

    @property
    def size(self) -> int:
        return self.labels.numel()


def collate(samples: list[Sample]) -> Batch:
    """Stack the decodable samples; list the ones that were not."""
    bad = [s.error for s in samples if s.error is not None]
    good = [s for s in samples if s.error is None]
    if not good:
        return Batch(torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64),
                     torch.zeros(0, dtype=torch.bool), torch.zeros(0), torch.zeros(0), bad)
    params = [s.params for s in good]
    cropped = [s.views for s in good if s.views is not None]
    fields = dict(
        views=torch.stack(cropped) if cropped else torch.zeros(0, dtype=torch.uint8),
        labels=torch.tensor([s.label for s in good]),
        flip=torch.from_numpy(np.stack([p.flip for p in params])),
        jitter=torch.from_numpy(np.stack([p.jitter for p in params])),
        order=torch.from_numpy(np.stack([p.order for p in params])), bad=bad,
        holes=None if params[0].holes is None else torch.from_numpy(
            np.stack([p.holes for p in params])))
    rows = [i for i, s in enumerate(good) if s.encoded is not None]
    if not rows:
        return Batch(**fields)
    data = [good[i].encoded for i in rows]
    encoded = Encoded(torch.cat(data), torch.tensor([len(d) for d in data]),
                      torch.tensor([good[i].size for i in rows]),
                      torch.from_numpy(np.stack([params[i].boxes for i in rows])),
                      torch.tensor(rows), [good[i].name for i in rows])
    cpu_rows = torch.tensor([i for i, s in enumerate(good) if s.encoded is None],
                            dtype=torch.int64)
    return Batch(**fields, encoded=encoded, cpu_rows=cpu_rows)
