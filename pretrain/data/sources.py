"""Image-classification sources on disk: ImageNet-style class folders and CIFAR-100's python
pickles. A source knows its classes and labels and decodes one image at a time; augmentation
and batching live elsewhere (pretrain/data/loader.py)."""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, read_file

from kdcl_common import DataError
from kdcl_common.images import MAX_PIXELS, ImageTooLarge, open_within

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# What a file that cannot be decoded raises: PIL (truncated, not an image, bad header),
# torchvision's decoders (RuntimeError), and an image above the pixel limit (ImageTooLarge).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, RuntimeError, Image.DecompressionBombError,
                 ImageTooLarge)
LIMIT_KEY = "data.max_image_pixels"
# Signatures of the formats torchvision decodes itself (libjpeg-turbo, libpng, libwebp); the
# others (BMP, TIFF, PPM, and GIF, of which PIL decodes only the first frame where torchvision
# decodes them all) go through PIL.
_NATIVE = (b"\xff\xd8\xff", b"\x89PNG", b"RIFF")
# PIL's modes of 16-bit grey images (TIFF and PNG: I;16...; PGM with maxval > 255: I), which
# convert("RGB") would clip at 255 instead of scaling.
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def read_bytes(path: str) -> torch.Tensor:
    """A file's bytes as a 1-D uint8 tensor."""
    return read_file(path)


def decode(data: torch.Tensor, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Encoded bytes -> uint8 [3, H, W] RGB, as stored (EXIF orientation is not applied:
    kdcl_common/images.py). Grey, palette, CMYK and alpha images are converted to RGB (alpha
    dropped); 16-bit images are scaled to 8 bits as torchvision's
    `to_dtype(image, torch.uint8, scale=True)` does (value >> 8: 65535 -> 255); an animated
    image gives its first frame. Raises one of DECODE_ERRORS for a file that is truncated or
    not an image, or (ImageTooLarge, before decoding) whose header gives more than
    `max_pixels` pixels."""
    with open_within(data.numpy().tobytes(), max_pixels, LIMIT_KEY) as image:
        if bytes(data[:4].numpy()).startswith(_NATIVE):
            return _to_uint8(decode_image(data, mode=ImageReadMode.RGB))  # uint16: 16-bit PNG
        if image.mode in _SIXTEEN_BIT_MODES:
            grey = np.clip(np.asarray(image).astype(np.int32), 0, 65535) >> 8
            return torch.from_numpy(grey.astype(np.uint8)).expand(3, -1, -1).contiguous()
        array = np.asarray(image.convert("RGB"))  # decodes fully: a truncated file raises here
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    """uint8 unchanged; uint16 scaled to 8 bits (the high byte, as torchvision's to_dtype)."""
    if image.dtype == torch.uint8:
        return image
    if image.dtype == torch.uint16:  # no shift for uint16 on the CPU: through int32
        return image.to(torch.int32).bitwise_right_shift_(8).to(torch.uint8)
    raise ValueError(f"decoded to {image.dtype}, not 8 or 16 bits per channel")


@dataclass
class FolderSource:
    """`root/<class>/<image>` with classes sorted by name, as torchvision's ImageFolder."""

    root: Path
    classes: list[str]
    paths: list[str]
    targets: np.ndarray
    max_pixels: int = MAX_PIXELS  # larger images are not decoded (data.max_image_pixels)

    @classmethod
    def scan(cls, root: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> "FolderSource":
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist (expected {root}/<class>/<image>)")
        classes = sorted(e.name for e in os.scandir(root)
                         if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise DataError(f"{root} has no class folders (expected {root}/<class>/<image>)")
        paths: list[str] = []
        targets: list[int] = []
        for label, name in enumerate(classes):
            files = sorted(e.path for e in os.scandir(root / name)
                           if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
            if not files:
                raise DataError(f"class folder {root / name} holds no images "
                                f"({', '.join(IMAGE_EXTENSIONS)}): add its images or remove it")
            paths += files
            targets += [label] * len(files)
        return cls(root, classes, paths, np.asarray(targets, dtype=np.int64), max_pixels)

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> torch.Tensor:
        """The encoded file (for decoding on the training device)."""
        return read_bytes(self.paths[i])

    def load(self, i: int) -> torch.Tensor:
        """Image `i` decoded: uint8 [3, H, W]."""
        return decode(self.read(i), self.max_pixels)

    def describe(self, i: int) -> str:
        return self.paths[i]


@dataclass
class ArraySource:
    """Images held in memory as a uint8 array [N, H, W, 3] (CIFAR)."""

    name: str
    classes: list[str]
    images: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.images[i]).permute(2, 0, 1)  # [3, H, W] uint8

    def describe(self, i: int) -> str:
        return f"{self.name}[{i}]"


def imagefolder_splits(root: str | os.PathLike,
                       max_pixels: int = MAX_PIXELS) -> tuple[FolderSource, FolderSource]:
    """The ImageNet layout: `root/train/<class>/*` and `root/val/<class>/*` with the same
    classes."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist: set data.root to a folder with "
                        f"train/<class>/<image> and val/<class>/<image>")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"{root} has no {split}/ folder: the ImageNet layout is "
                            f"{root}/train/<class>/<image> and {root}/val/<class>/<image> "
                            f"(sort ImageNet's val images into class folders first)")
    train, val = (FolderSource.scan(root / split, max_pixels) for split in ("train", "val"))
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))[:5]
        only_val = sorted(set(val.classes) - set(train.classes))[:5]
        raise DataError(f"train/ and val/ of {root} have different classes (only in train: "
                        f"{only_train}, only in val: {only_val})")
    return train, val


def cifar100_splits(root: str | os.PathLike) -> tuple[ArraySource, ArraySource]:
    """CIFAR-100's python version: `root/{train,test,meta}` (or `root/cifar-100-python/...`),
    as distributed at https://www.cs.toronto.edu/~kriz/cifar.html. Nothing is downloaded."""
    root = Path(root)
    if (root / "cifar-100-python").is_dir():
        root = root / "cifar-100-python"
    missing = [f for f in ("train", "test", "meta") if not (root / f).is_file()]
    if missing:
        raise DataError(f"CIFAR-100 files {missing} not found in {root}: set data.root to the "
                        f"extracted 'cifar-100-python' folder of cifar-100-python.tar.gz")

    def unpickle(name: str) -> dict:
        # CIFAR-100 is distributed as pickles; only load copies you obtained from its authors.
        try:
            with open(root / name, "rb") as f:
                return pickle.load(f, encoding="bytes")
        except (pickle.UnpicklingError, EOFError, OSError) as e:
            raise DataError(f"{root / name} is not a readable CIFAR-100 pickle: {e}") from None

    names = [n.decode() for n in unpickle("meta")[b"fine_label_names"]]
    splits = []
    for split in ("train", "test"):
        d = unpickle(split)
        try:
            images = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            targets = np.asarray(d[b"fine_labels"], dtype=np.int64)
        except (KeyError, ValueError) as e:
            raise DataError(f"{root / split} does not have CIFAR-100's fields "
                            f"(data [N, 3072] uint8, fine_labels): {e}") from None
        if len(images) != len(targets) or targets.min() < 0 or targets.max() >= len(names):
            raise DataError(f"{root / split}: {len(images)} images, {len(targets)} labels, label "
                            f"range [{targets.min()}, {targets.max()}] for {len(names)} classes")
        splits.append(ArraySource(f"cifar100/{split}", names,
                                  np.ascontiguousarray(images.transpose(0, 2, 3, 1)), targets))
    return splits[0], splits[1]


def held_out_split(targets: np.ndarray, per_class: int, seed: int,
                   num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, held_out) with `per_class` random images of every class held
    out (KDCL's D_v: 20 per class on ImageNet, 50 on CIFAR-100). Deterministic in `seed`."""
    if per_class <= 0:
        return np.arange(len(targets)), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    held = []
    counts = np.bincount(targets, minlength=num_classes)
    for c in range(num_classes):
        members = np.flatnonzero(targets == c)
        if counts[c] <= per_class:
            raise DataError(f"class {c} has {counts[c]} training images, not more than the "
                            f"{per_class} to hold out: lower data.held_out_per_class")
        held.append(rng.choice(members, size=per_class, replace=False))
    held_out = np.sort(np.concatenate(held))
    train = np.setdiff1d(np.arange(len(targets)), held_out, assume_unique=True)
    return train, held_out
