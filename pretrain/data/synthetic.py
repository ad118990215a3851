"""A small, learnable, non-trivial image-classification set in ImageNet folder layout.

Each class is a (shape, hue family) pair: telling classes apart needs both the outline of the
object (circle, square, triangle, ...) and its colour family (warm, cool, green), neither of which
suffices alone. Position, size, rotation, the exact colour, the fill texture (solid, stripes,
dots) and the background (a noisy gradient) are random and carry no label; half the images have
a small distractor shape of any colour. A small CNN learns the colour in a few dozen steps and
the shape over a few hundred, so accuracy climbs well above chance within a smoke run without
reaching 100 %. Images are JPEGs, so the real decoding path is used.

The set is a pure function of its parameters (seeded per image), and is written to a temporary
folder then renamed, so a reader never sees half of it.

    python -m pretrain.data.synthetic data/smoke/classification --classes 10
    python -m pretrain.data.synthetic data/bench/cifar100 --cifar100 --train-per-class 500

`--cifar100` writes the same kind of images at 32 px in CIFAR-100's python format (100 classes,
which repeat the shape x hue pairs: for timing the in-memory CIFAR pipeline, not for accuracy).
"""
from __future__ import annotations

import argparse
import math
import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from kdcl_common import DataError
from kdcl_common.io import generated_folder
from kdcl_common.shapes import SHAPES, gradient, hsv, shape_mask, texture_mask

HUES = {"warm": (-0.08, 0.14), "cool": (0.5, 0.72), "green": (0.25, 0.4)}  # HSV hue ranges
FILLS = ("solid", "stripes", "dots")
CLASSES = [(s, h) for s in SHAPES for h in ("warm", "cool")] + [(s, "green") for s in SHAPES]
MARKER = ".kdcl-synthetic.json"


def render(label: int, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of class `label` (an index into CLASSES)."""
    shape, family = CLASSES[label]
    top, bottom = (hsv(rng.random(), rng.uniform(0, 0.45), rng.uniform(0.3, 0.9)) for _ in "tb")
    image = gradient(size, size, top, bottom)
    if rng.random() < 0.5:  # a small distractor of another shape, any colour
        other = SHAPES[rng.integers(len(SHAPES))]
        rr = rng.uniform(0.08, 0.13) * size
        m = shape_mask(other, size, rng.uniform(rr, size - rr), rng.uniform(rr, size - rr), rr,
                       rng.uniform(0, 2 * math.pi))
        image[m] = hsv(rng.random(), rng.uniform(0.5, 1), rng.uniform(0.5, 1))
    r = rng.uniform(0.22, 0.36) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    mask = shape_mask(shape, size, cx, cy, r, rng.uniform(0, 2 * math.pi))
    color = hsv(rng.uniform(*HUES[family]), rng.uniform(0.55, 1), rng.uniform(0.6, 1))
    pattern = texture_mask(FILLS[rng.integers(len(FILLS))], size, rng, r)
    image[mask & pattern] = color
    image[mask & ~pattern] = 0.6 * color  # the texture's gaps: a darker shade of the same hue
    image += rng.normal(0, 10, size=image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")


def _write_class(folder: Path, key: list[int], count: int, label: int, image_size: int) -> None:
    folder.mkdir(parents=True)
    for n in range(count):
        rng = np.random.default_rng([*key, n])
        render(label, image_size, rng).save(folder / f"{n:05d}.jpg", quality=90)


def generate(root: str | os.PathLike, classes: int = 10, train_per_class: int = 120,
             val_per_class: int = 30, image_size: int = 64, seed: int = 0) -> Path:
    """Write `root/{train,val}/<class>/<n>.jpg` unless the same set is already there."""
    params = {"classes": classes, "train_per_class": train_per_class,
              "val_per_class": val_per_class, "image_size": image_size, "seed": seed}
    if not 2 <= classes <= len(CLASSES):
        raise DataError(f"the synthetic set has 2 to {len(CLASSES)} classes, not {classes}")

    def write(tmp: Path) -> None:
        # One task per (split, class): every image has its own seed, so the set does not
        # depend on the number of processes. Large sets (ImageNet-size images) use every core.
        tasks = [(tmp / split / "{:02d}_{}_{}".format(label, *CLASSES[label]),
                  [seed, split_id, label], per_class, label, image_size)
                 for split_id, (split, per_class) in enumerate((("train", train_per_class),
                                                                ("val", val_per_class)))
                 for label in range(classes)]
        pixels = image_size * image_size * len(tasks) * max(train_per_class, 1)
        workers = min(os.cpu_count() or 1, len(tasks)) if pixels > 2**26 else 1
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                list(pool.map(_write_class, *zip(*tasks)))
        else:
            for task in tasks:
                _write_class(*task)

    return generated_folder(root, params, MARKER, "classification set", write)


def _render_cifar(key: list[int], labels: np.ndarray) -> np.ndarray:
    """CIFAR-100's rows: [N, 3072] uint8, the R, G and B planes of each 32 px image."""
    images = [np.asarray(render(int(label) % len(CLASSES), 32, np.random.default_rng([*key, n])))
              for n, label in enumerate(labels)]
    return np.stack(images).transpose(0, 3, 1, 2).reshape(len(labels), 3072)


def generate_cifar100(root: str | os.PathLike, train_per_class: int = 500,
                      test_per_class: int = 100, seed: int = 0) -> Path:
    """Write `root/cifar-100-python/{train,test,meta}` unless the same set is already there."""
    params = {"format": "cifar100", "train_per_class": train_per_class,
              "test_per_class": test_per_class, "seed": seed}

    def write(tmp: Path) -> None:
        folder = tmp / "cifar-100-python"
        folder.mkdir()
        for split_id, (split, per_class) in enumerate((("train", train_per_class),
                                                       ("test", test_per_class))):
            labels = np.random.default_rng([seed, split_id]).permutation(
                np.repeat(np.arange(100), per_class))
            chunks = np.array_split(np.arange(len(labels)), max(1, min(os.cpu_count() or 1,
                                                                       len(labels) // 2000)))
            jobs = [([seed, split_id, int(c[0])], labels[c]) for c in chunks if len(c)]
            if len(jobs) > 1:
                with ProcessPoolExecutor(len(jobs)) as pool:
                    rows = list(pool.map(_render_cifar, *zip(*jobs)))
            else:
                rows = [_render_cifar(*job) for job in jobs]
            with open(folder / split, "wb") as f:
                pickle.dump({b"data": np.concatenate(rows), b"fine_labels": labels.tolist()}, f)
        with open(folder / "meta", "wb") as f:
            pickle.dump({b"fine_label_names": [f"{i:02d}_{CLASSES[i % len(CLASSES)][0]}_"
                                               f"{CLASSES[i % len(CLASSES)][1]}".encode()
                                               for i in range(100)]}, f)

    return generated_folder(root, params, MARKER, "CIFAR-100-format set", write)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pretrain.data.synthetic",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="output folder (gets train/ and val/)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--train-per-class", type=int, default=120)
    parser.add_argument("--val-per-class", type=int, default=30)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cifar100", action="store_true",
                        help="CIFAR-100's python format at 32 px (--val-per-class: test images)")
    args = parser.parse_args(argv)
    if args.cifar100:
        path = generate_cifar100(args.root, args.train_per_class, args.val_per_class, args.seed)
        print(f"synthetic CIFAR-100-format set in {path}")
        return
    path = generate(args.root, args.classes, args.train_per_class, args.val_per_class,
                    args.image_size, args.seed)
    print(f"synthetic classification set in {path}")


if __name__ == "__main__":
    main()
