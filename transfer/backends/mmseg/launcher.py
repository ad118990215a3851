"""The mmseg backend's steps (transfer/backends/mmseg/__init__.py calls them).

The config is mmseg's own Python config (mmengine's Config, `_base_` inheritance, `mmseg::`
bases). Per run: check that the backbone's architecture fits the config; set the backbone's
width, the heads' input channels and the input normalisation from its metadata; check the
dataset (folders, image/label pairs; label values and sizes as images load); convert the
weights to mmseg's names, checked key by key against the backbone mmseg builds, and load them
through the backbone's init_cfg; train with mmengine's Runner (torchrun -> launcher 'pytorch';
checkpoints written atomically); evaluate with mmseg's IoUMetric.
"""
from __future__ import annotations

import os
from pathlib import Path

from kdcl_common import DataError


def fit_backbone(cfg, meta: dict, path: Path) -> list[int]:
    """Check the architecture against the config; take width, channels and the input
    normalisation from the metadata (transfer/openmmlab/config.py), and give the channels to the
    neck or head. Returns the backbone's stage channels."""
    from ...openmmlab import config

    channels = config.fit_backbone(cfg.model, meta, path, "mmseg")
    model = cfg.model
    if model.get("neck") and model.neck.type == "FPN":
        model.neck.in_channels = channels
    elif model.decode_head.type == "UPerHead":
        model.decode_head.in_channels = channels
    aux = model.get("auxiliary_head")
    if aux:
        for head in aux if isinstance(aux, list) else [aux]:
            head.in_channels = channels[head.in_index]
    return channels


def dataset_classes(cfg) -> tuple:
    from mmseg.registry import DATASETS

    dataset = cfg.train_dataloader.dataset
    metainfo = dataset.get("metainfo") or {}
    if metainfo.get("classes"):
        return tuple(metainfo["classes"])
    return tuple(DATASETS.get(dataset.type).METAINFO["classes"])


def set_classes(cfg, num_classes: int) -> None:
    cfg.model.decode_head.num_classes = num_classes
    aux = cfg.model.get("auxiliary_head")
    for head in (aux if isinstance(aux, list) else [aux]) if aux else []:
        head.num_classes = num_classes
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        pipeline = cfg[loader].dataset.pipeline
        if any(t["type"] == "CheckSegLabels" for t in pipeline):
            continue
        position = next(i for i, t in enumerate(pipeline) if t["type"] == "LoadAnnotations")
        pipeline.insert(position + 1, dict(type="CheckSegLabels", num_classes=num_classes))


def check_layout(cfg) -> dict[str, int]:
    """Folders exist and every image has its label map (and the reverse); returns the number
    of images per loader."""
    counts = {}
    for loader in ("train_dataloader", "val_dataloader"):
        dataset = cfg[loader].dataset
        root = Path(dataset.data_root)
        images = root / dataset.data_prefix.img_path
        labels = root / dataset.data_prefix.seg_map_path
        for folder in (images, labels):
            if not folder.is_dir():
                raise DataError(f"{folder} does not exist. The COCO-Stuff 164k layout is "
                                f"images/{{train,val}}2017/*.jpg and "
                                f"annotations/{{train,val}}2017/*_labelTrainIds.png under the data "
                                f"root ($COCO_STUFF_ROOT, or override train_dataloader.dataset."
                                f"data_root and val_dataloader.dataset.data_root)")
        img_suffix = dataset.get("img_suffix", ".jpg")
        seg_suffix = dataset.get("seg_map_suffix", "_labelTrainIds.png")
        image_stems = {f[:-len(img_suffix)] for f in os.listdir(images) if f.endswith(img_suffix)}
        label_stems = {f[:-len(seg_suffix)] for f in os.listdir(labels) if f.endswith(seg_suffix)}
        if not image_stems:
            raise DataError(f"{images} holds no *{img_suffix} images")
        unlabelled, orphans = sorted(image_stems - label_stems), sorted(label_stems - image_stems)
        if unlabelled or orphans:
            raise DataError(f"images and label maps do not pair up in {root}: "
                            f"{len(unlabelled)} images without a label (e.g. "
                            f"{[s + img_suffix for s in unlabelled[:3]]}), {len(orphans)} labels "
                            f"without an image (e.g. {[s + seg_suffix for s in orphans[:3]]})")
        counts[loader] = len(image_stems)
    return counts
