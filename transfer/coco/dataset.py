"""COCO 2017 instances for torchvision's detection models: the real layout
(`root/{train,val}2017/`, `root/annotations/instances_{train,val}2017.json`), checked before
training so that a malformed annotation is reported by its id, not by a crash hours later.
Images are used as stored, EXIF orientation ignored (kdcl_common/images.py): each file's stored
size must be the one its annotations give, which is checked from its header before its pixels
are decoded."""
from __future__ import annotations

import contextlib
import io
import math
import os
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from kdcl_common import DataError
from kdcl_common.images import HARD_LIMIT, MAX_PIXELS, ImageTooLarge, open_within, size_mismatch
from kdcl_common.sampling import sample_seed

from .layout import LAYOUT

LIMIT_KEY = "data.max_image_pixels"


def split_paths(root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """(image folder, annotation file) of `split` (train2017 or val2017), checked to exist."""
    root = Path(root)
    images, annotations = root / split, root / "annotations" / f"instances_{split}.json"
    missing = [str(p) for p in (images, annotations) if not p.exists()]
    if missing:
        raise DataError(f"COCO files not found: {', '.join(missing)}. The COCO 2017 layout is "
                        f"{LAYOUT}; set data.root (or the COCO_ROOT environment variable)")
    return images, annotations


def load_coco(annotation_file: Path) -> COCO:
    """pycocotools' COCO index of a validated annotation file (quietly)."""
    import json

    try:
        dataset = json.loads(annotation_file.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{annotation_file} is not valid JSON: {e}") from None
    validate(dataset, annotation_file)
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def validate(dataset: dict, source: Path | str = "annotations") -> None:
    """Raise DataError naming the first malformed image or annotation."""
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise DataError(f"{source}: no '{key}' list: not a COCO instances file")
    images: dict[int, dict] = {}
    for image in dataset["images"]:
        where = f"{source}: image {image.get('id', '?')}"
        if not all(k in image for k in ("id", "file_name", "width", "height")):
            raise DataError(f"{where} lacks one of id, file_name, width, height")
        if not all(isinstance(image[k], int) and not isinstance(image[k], bool) and image[k] > 0
                   for k in ("width", "height")):
            raise DataError(f"{where} has width={image['width']!r}, height={image['height']!r}: "
                            f"expected the image's size in pixels (positive integers)")
        if image["id"] in images:
            raise DataError(f"{where} appears twice")
        images[image["id"]] = image
    categories = {c.get("id") for c in dataset["categories"]}
    seen: set[int] = set()
    for ann in dataset["annotations"]:
        where = f"{source}: annotation {ann.get('id', '?')}"
        if ann.get("id") in seen:
            raise DataError(f"{where} appears twice")
        seen.add(ann.get("id"))
        image = images.get(ann.get("image_id"))
        if image is None:
            raise DataError(f"{where} refers to image {ann.get('image_id')}, which is not listed")
        where += f" (image {image['id']})"
        if ann.get("category_id") not in categories:
            raise DataError(f"{where} has category {ann.get('category_id')}, which is not listed "
                            f"in categories {sorted(categories)}")
        box = ann.get("bbox")
        if (not isinstance(box, list) or len(box) != 4 or not all(
                isinstance(v, (int, float)) and math.isfinite(v) for v in box)
                or box[2] < 0 or box[3] < 0):
            raise DataError(f"{where} has bbox {box}: expected [x, y, width, height] with "
                            f"finite numbers and width, height >= 0")
        if ann.get("iscrowd", 0) not in (0, 1):
            raise DataError(f"{where} has iscrowd={ann.get('iscrowd')}: expected 0 or 1")
        _validate_segmentation(ann.get("segmentation"), image, where)


def load_split(image_dir: Path, annotation_file: Path, max_pixels: int, key: str,
               masks: bool = False) -> COCO:
    """A split's validated index, what every backend checks before training: each annotation
    well-formed (load_coco, naming bad ones), no image above the pixel limit `key`, every listed
    image in `image_dir`, and with `masks` (Mask R-CNN) every object with its mask."""
    coco = load_coco(annotation_file)
    check_image_sizes(coco, annotation_file, max_pixels, key)
    present = set(os.listdir(image_dir))
    missing = [img["file_name"] for img in coco.dataset["images"]
               if img["file_name"] not in present]
    if missing:
        raise DataError(f"{len(missing)} images listed in {annotation_file} are not in "
                        f"{image_dir}, e.g. {missing[:3]}")
    if masks:
        check_segmentations(coco, annotation_file)
    return coco


def require_objects(coco: COCO, annotation_file: Path) -> None:
    """A training split needs an object that is not a crowd region."""
    if not any(not a.get("iscrowd", 0) for a in coco.dataset["annotations"]):
        raise DataError(f"{annotation_file} has no annotated object (other than crowd "
                        f"regions): nothing to fine-tune on")


def check_image_sizes(coco: COCO, annotation_file: Path, max_pixels: int, key: str) -> None:
    """Refuse, before training, the images whose annotated size exceeds the pixel limit (each
    file's header must then give that size: CocoDetection checks it before decoding)."""
    large = [img for img in coco.dataset["images"]
             if img["width"] * img["height"] > max_pixels]
    if large:
        shown = ", ".join(f"{img['file_name']} ({img['width']}x{img['height']})"
                          for img in large[:5])
        more = f" and {len(large) - 5} more" if len(large) > 5 else ""
        raise DataError(f"{annotation_file}: {len(large)} images have more than {key}="
                        f"{max_pixels:,} pixels: {shown}{more}. Decoding one takes about 3 bytes "
                        f"per pixel in every data worker: shrink these images (and their "
                        f"annotations), remove them, or raise {key}.")


@contextlib.contextmanager
def open_as_annotated(file: Path, info: dict, annotation_file: Path | str):
    """The image `file` opened by PIL (its header only) once its stored size is known to be
    its annotation's (`info`): else a DataError, naming its EXIF orientation when that explains
    the difference. Decoding it is then bounded as its annotation is (check_image_sizes)."""
    what = f"image {info['id']} in {annotation_file}"
    opened = contextlib.ExitStack()
    try:
        image = opened.enter_context(open_within(file, HARD_LIMIT, "PIL's limit"))
    except ImageTooLarge as e:
        raise DataError(f"{file} is not the {info['width']}x{info['height']} {what}: its header "
                        f"gives {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{file} cannot be read as an image ({type(e).__name__}: {e}): repair "
                        f"or replace it, or remove {what}") from None
    with opened:
        if image.size != (info["width"], info["height"]):
            raise DataError(size_mismatch(str(file), image, (info["width"], info["height"]),
                                          what))
        yield image


def check_segmentations(coco: COCO, annotation_file: Path) -> None:
    """Mask R-CNN trains on and is evaluated against every annotation's mask: each needs
    polygons or an RLE (pycocotools fails on an empty list mid-training or at evaluation)."""
    for ann in coco.dataset["annotations"]:
        seg = ann.get("segmentation")
        if seg is None or (isinstance(seg, list) and not seg):
            what = "no segmentation" if seg is None else "an empty segmentation ([])"
            raise DataError(f"{annotation_file}: annotation {ann['id']} (image "
                            f"{ann['image_id']}) has {what}, which Mask R-CNN needs: give it "
                            f"its polygons or RLE, remove the annotation, or train Faster "
                            f"R-CNN (boxes only)")


def check_same_categories(train_split: str, train_ids: list[int], val_split: str,
                          val_ids: list[int]) -> None:
    """Training and evaluation must share one category list: a model's class k is the
    evaluation's category k."""
    if train_ids != val_ids:
        raise DataError(f"the categories of {train_split} and {val_split} differ: {train_ids} "
                        f"vs {val_ids}. Both splits must come from one dataset, with the same "
                        f"'categories' in their annotation files.")


def _validate_segmentation(seg, image: dict, where: str) -> None:
    if seg is None:
        return  # boxes only: fine for detection, rejected when masks are needed
    if isinstance(seg, list):
        for part in seg:
            if not isinstance(part, list) or len(part) < 6 or len(part) % 2:
                raise DataError(f"{where} has a polygon with "
                                f"{len(part) if isinstance(part, list) else '?'} "
                                f"coordinates: a polygon is a flat list [x1, y1, x2, y2, ...] of "
                                f"at least 3 points")
        return
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if list(seg["size"]) != [image["height"], image["width"]]:
            raise DataError(f"{where} has an RLE of size {seg['size']} but its image is "
                            f"{image['height']}x{image['width']} (height x width)")
        return
    raise DataError(f"{where} has a segmentation that is neither polygons nor RLE: {str(seg)[:80]}")


def annotation_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """uint8 [height, width] mask of a polygon or RLE (compressed or not) segmentation."""
    seg = ann["segmentation"]
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = seg
    return mask_utils.decode(rle)


class CocoDetection(torch.utils.data.Dataset):
    """Images as float tensors in [0, 1] (normalisation happens in the model) and targets in
    torchvision's format: boxes (x1, y1, x2, y2), labels 1..K (0 is the background), masks.
    Crowd regions and degenerate boxes are not training targets (they are still used, as
    COCO intends, by the evaluation). With `train`, half the images are flipped horizontally
    (which half is a function of seed, epoch and image) and images without any target are left
    out (as Detectron2's FILTER_EMPTY_ANNOTATIONS)."""

    def __init__(self, root: str | os.PathLike, split: str, train: bool, masks: bool,
                 seed: int = 0, max_pixels: int = MAX_PIXELS):
        self.image_dir, annotation_file = split_paths(root, split)
        self.annotation_file, self.max_pixels = annotation_file, max_pixels
        self.coco = load_split(self.image_dir, annotation_file, max_pixels, LIMIT_KEY, masks)
        self.masks, self.train = masks, train
        self.category_ids = sorted(self.coco.getCatIds())
        self.label_of = {cat: i + 1 for i, cat in enumerate(self.category_ids)}
        ids = sorted(self.coco.getImgIds())
        if train:
            ids = [i for i in ids if self._targets_of(i)]
        self.ids = ids
        self.seed = seed

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def _targets_of(self, image_id: int) -> list[dict]:
        anns = self.coco.imgToAnns.get(image_id, [])
        return [a for a in anns
                if not a.get("iscrowd", 0) and a["bbox"][2] >= 1 and a["bbox"][3] >= 1]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: tuple[int, int] | int):
        """`key` is (epoch, position) from kdcl_common.sampling's samplers, or a position."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        file = self.image_dir / info["file_name"]
        with open_as_annotated(file, info, self.annotation_file) as pil:
            image = F.to_image(pil.convert("RGB"))
        height, width = image.shape[-2:]
        anns = self._targets_of(image_id)
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                             dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns],
                                   dtype=torch.int64),
            "image_id": image_id,
        }
        if self.masks:
            masks = np.stack([annotation_mask(a, height, width) for a in anns]) if anns else \
                np.zeros((0, height, width), dtype=np.uint8)
            target["masks"] = tv_tensors.Mask(torch.from_numpy(masks))
        if self.train and sample_seed(self.seed, epoch, image_id) % 2:  # flip half the images
            image = F.horizontal_flip(image)
            target["boxes"] = F.horizontal_flip(target["boxes"])
            if self.masks:
                target["masks"] = F.horizontal_flip(target["masks"])
        image = F.to_dtype(image, torch.float32, scale=True)
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor)
        if self.masks:
            target["masks"] = target["masks"].as_subclass(torch.Tensor)
        return image.as_subclass(torch.Tensor), target


def collate(batch):
    return tuple(zip(*batch))
