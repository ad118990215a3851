"""A small COCO-format scene set for tests and the smoke preset, in the real on-disk layouts.

One root serves both the detection loaders and COCO-Stuff's:

    root/train2017/*.jpg, root/val2017/*.jpg                      COCO 2017 images
    root/annotations/instances_{train,val}2017.json               instances (boxes, masks)
    root/images/{train,val}2017 -> ../{train,val}2017             COCO-Stuff 164k layout
    root/annotations/{train,val}2017/<image>_labelTrainIds.png    semantic labels

What it exercises: non-contiguous category ids (1, 3, 7, 12, 20, like COCO's gaps), polygon
masks (every shape but the ring) and compressed-RLE masks (the ring, which has a hole), crowd
regions (iscrowd=1, uncompressed RLE over a cluster of small objects), images without objects,
grayscale JPEGs and varying image sizes. Label PNGs hold the things' train ids 0..4 (in category
id order), the two background "stuff" classes 5 (plain) and 6 (striped), and 255 (ignore) on
crowd regions.

The set is a pure function of its parameters and is written to a temporary folder, then
renamed, so a reader never sees half of it.

    python -m transfer.coco.synthetic data/smoke/coco
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from kdcl_common.io import generated_folder
from kdcl_common.shapes import gradient, hsv, polygon, shape_mask, texture_mask

CATEGORIES = [(1, "circle"), (3, "square"), (7, "triangle"), (12, "ring"), (20, "cross")]
STUFF = ["plain", "striped"]  # background classes, train ids len(CATEGORIES) + index
IGNORE = 255
MARKER = ".kdcl-synthetic-coco.json"


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (as used for crowd regions): run lengths in column-major order,
    starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"counts": counts, "size": list(mask.shape)}


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1)]


def render_scene(rng: np.random.Generator, image_id: int, ann_id: int, min_size: int,
                 max_size: int) -> tuple[Image.Image, dict, list[dict], np.ndarray]:
    """One image, its COCO image entry, its annotations and its semantic label map."""
    width, height = (int(rng.integers(min_size, max_size + 1)) for _ in "wh")
    stuff = int(rng.integers(len(STUFF)))
    image = gradient(width, height, hsv(rng.random(), rng.uniform(0, 0.4), rng.uniform(0.4, 0.9)),
                     hsv(rng.random(), rng.uniform(0, 0.4), rng.uniform(0.4, 0.9)))
    if STUFF[stuff] == "striped":
        stripes = texture_mask("stripes", (width, height), rng, min(width, height) / 4)
        image[stripes] *= 0.75
    label = np.full((height, width), len(CATEGORIES) + stuff, dtype=np.uint8)
    taken = np.zeros((height, width), dtype=bool)
    annotations: list[dict] = []

    def place(r: float) -> tuple[float, float] | None:
        """A centre whose disc of radius r (plus a margin) overlaps nothing placed so far."""
        yy, xx = np.ogrid[:height, :width]
        for _ in range(30):
            cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
            if not taken[(xx - cx) ** 2 + (yy - cy) ** 2 <= (1.15 * r) ** 2].any():
                return cx, cy
        return None

    n_objects = 0 if rng.random() < 0.12 else int(rng.integers(1, 5))
    for _ in range(n_objects):
        label_index = int(rng.integers(len(CATEGORIES)))
        category_id, shape = CATEGORIES[label_index]
        r = rng.uniform(0.1, 0.24) * min(width, height)
        centre = place(r)
        if centre is None:
            continue
        angle = rng.uniform(0, 2 * math.pi)
        if shape == "ring":  # a hole: only a mask can describe it -> compressed RLE
            mask = shape_mask(shape, (width, height), *centre, r, angle)
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            segmentation = {"counts": rle["counts"].decode("ascii"), "size": [height, width]}
        else:
            outline = polygon(shape, *centre, r, angle)
            segmentation = [[round(v, 2) for point in outline for v in point]]
            # rasterise as the COCO tools do, so pixels, mask, area and box agree exactly
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
            mask = mask_utils.decode(rle).astype(bool)
        if mask.sum() < 16:
            continue
        image[mask] = hsv(rng.random(), rng.uniform(0.5, 1), rng.uniform(0.5, 1))
        taken |= mask
        label[mask] = label_index
        annotations.append({"id": ann_id + len(annotations), "image_id": image_id,
                            "category_id": category_id, "segmentation": segmentation,
                            "area": float(mask.sum()), "bbox": _bbox(mask), "iscrowd": 0})
    if rng.random() < 0.2:  # a crowd: a cluster of small circles annotated as one region
        r = 0.045 * min(width, height)
        centre = place(4 * r)
        if centre is not None:
            crowd = np.zeros((height, width), dtype=bool)
            for _ in range(6):
                dx, dy = rng.uniform(-2.5 * r, 2.5 * r, size=2)
                crowd |= shape_mask("circle", (width, height), centre[0] + dx, centre[1] + dy, r, 0)
            crowd &= ~taken
            if crowd.sum() >= 16:
                image[crowd] = hsv(rng.random(), rng.uniform(0.5, 1), rng.uniform(0.5, 1))
                label[crowd] = IGNORE
                annotations.append({"id": ann_id + len(annotations), "image_id": image_id,
                                    "category_id": CATEGORIES[0][0],
                                    "segmentation": uncompressed_rle(crowd),
                                    "area": float(crowd.sum()), "bbox": _bbox(crowd), "iscrowd": 1})
    image += rng.normal(0, 8, size=image.shape)
    pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.15:
        pil = pil.convert("L")  # COCO has grayscale images too
    entry = {"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": width, "height": height}
    return pil, entry, annotations, label


def generate(root: str | os.PathLike, train_images: int = 48, val_images: int = 16,
             min_size: int = 96, max_size: int = 160, seed: int = 0) -> Path:
    """Write the scene set to `root` unless the same set is already there."""
    params = {"train_images": train_images, "val_images": val_images, "min_size": min_size,
              "max_size": max_size, "seed": seed}

    def write(tmp: Path) -> None:
        ann_id = 1
        for split_id, (split, count) in enumerate((("train2017", train_images),
                                                   ("val2017", val_images))):
            (tmp / split).mkdir()
            (tmp / "annotations" / split).mkdir(parents=True)
            (tmp / "images").mkdir(exist_ok=True)
            os.symlink(f"../{split}", tmp / "images" / split)
            images, annotations = [], []
            for n in range(count):
                rng = np.random.default_rng([seed, split_id, n])
                image_id = 1000 * (split_id + 1) + 7 * n  # arbitrary, as COCO's ids are
                pil, entry, anns, label = render_scene(rng, image_id, ann_id, min_size, max_size)
                pil.save(tmp / split / entry["file_name"], quality=90)
                Image.fromarray(label, "L").save(
                    tmp / "annotations" / split / f"{image_id:012d}_labelTrainIds.png")
                images.append(entry)
                annotations += anns
                ann_id += len(anns)
            dataset = {"info": {"description": "kdcl-bench synthetic COCO scenes", **params},
                       "licenses": [], "images": images, "annotations": annotations,
                       "categories": [{"id": i, "name": name, "supercategory": "shape"}
                                      for i, name in CATEGORIES]}
            (tmp / "annotations" / f"instances_{split}.json").write_text(json.dumps(dataset))

    return generated_folder(root, params, MARKER, "COCO set", write)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m transfer.coco.synthetic",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="output folder (COCO 2017 and COCO-Stuff layouts)")
    parser.add_argument("--train-images", type=int, default=48)
    parser.add_argument("--val-images", type=int, default=16)
    parser.add_argument("--min-size", type=int, default=96)
    parser.add_argument("--max-size", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = generate(args.root, args.train_images, args.val_images, args.min_size, args.max_size,
                    args.seed)
    print(f"synthetic COCO scenes in {path}")


if __name__ == "__main__":
    main()
