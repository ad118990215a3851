"""The mmdet backend: Faster and Mask R-CNN with FPN on COCO through mmdetection, from mmdet's
own Python configs (transfer/configs/mmdet, with `mmdet::` bases read from the installed
package) and its COCO evaluation (CocoMetric). What it shares with the other mmengine backends
(the Runner, hooks, atomic checkpoints, weights_only resume) is transfer/openmmlab; its weight
names are weights.py's. mmdet and mmcv are imported only when a config of this backend runs."""
from __future__ import annotations

import os
from pathlib import Path

from kdcl_common import DataError

from ...openmmlab.backend import Backend as MMEngineBackend
from ..base import Prepared, Spec

SPLITS = ("train_dataloader", "val_dataloader")
# CocoMetric's names (0-1, rounded to 3 places) -> the records' (COCO's 0-100 scale)
STATS = {"mAP": "AP", "mAP_50": "AP50", "mAP_75": "AP75", "mAP_s": "APs", "mAP_m": "APm",
         "mAP_l": "APl"}


def split_files(cfg, loader: str) -> tuple[Path, Path]:
    """(image folder, annotation file) of a loader's dataset, as mmdet joins them."""
    dataset = cfg[loader].dataset
    root = dataset.get("data_root") or ""
    return (Path(root, dataset.data_prefix.get("img", "")),
            Path(root, dataset.ann_file))


def classes(cfg, loader: str = "train_dataloader") -> tuple[str, ...]:
    """The class names of a loader's dataset (the training one's: the model's classes): its
    metainfo's, or its dataset type's (CocoDataset's 80)."""
    from mmdet.registry import DATASETS

    dataset = cfg[loader].dataset
    named = (dataset.get("metainfo") or {}).get("classes")
    return tuple(named or DATASETS.get(dataset.type).METAINFO["classes"])


def has_masks(cfg) -> bool:
    return bool(cfg.model.get("roi_head", {}).get("mask_head"))


class Backend(MMEngineBackend):
    name = "mmdet"
    package = "mmdet"
    example = "_base_ = ['./faster-rcnn_fpn.py', './schedule_1x.py']"
    loss = "detection"

    @classmethod
    def adapt(cls, cfg):
        """The evaluator scores against the annotation file the validation loader reads: in
        mmdet's configs the two are set apart, and an override of one alone would score the
        model against other annotations than it was shown."""
        for loader, evaluator in (("val_dataloader", "val_evaluator"),
                                  ("test_dataloader", "test_evaluator")):
            if cfg.get(loader) and cfg.get(evaluator):
                cfg[evaluator].ann_file = str(split_files(cfg, loader)[1])
        return cfg

    def fit_backbone(self, cfg, meta: dict, path: Path):
        """The backbone as the metadata says (openmmlab/config.py); the FPN's input channels as
        the built backbone gives them; num_classes from the dataset's classes."""
        import torch
        from mmdet.registry import MODELS

        from ...openmmlab import config

        config.fit_backbone(cfg.model, meta, path, "mmdet")
        backbone = MODELS.build(cfg.model.backbone)
        backbone.eval()  # (mmdet's ResNet.train returns None)
        with torch.no_grad():
            outputs = backbone(torch.zeros(1, 3, 64, 64))
        cfg.model.neck.in_channels = [int(o.shape[1]) for o in outputs]
        count = len(classes(cfg))
        cfg.model.roi_head.bbox_head.num_classes = count
        if has_masks(cfg):
            cfg.model.roi_head.mask_head.num_classes = count
        return cfg

    def spec(self, cfg, path: Path) -> Spec:
        synthetic = cfg.get("kdcl", {}).get("synthetic")
        root = str(cfg.train_dataloader.dataset.data_root)
        files = [os.path.relpath(p, root) for loader in SPLITS for p in split_files(cfg, loader)]
        return self._spec(
            cfg, path, task="instance_segmentation" if has_masks(cfg) else "detection",
            dataset="synthetic" if synthetic else "coco",
            extra={"detector": "mask_rcnn" if has_masks(cfg) else "faster_rcnn",
                   "iterations": cfg.train_cfg.max_iters, "classes": len(classes(cfg))},
            data=None if synthetic else (root, tuple(dict.fromkeys(files))))

    def prepare(self, cfg, run) -> Prepared:
        """Generate the smoke scenes when asked; check the COCO splits (files, annotations,
        image sizes, masks, the classes); convert the weights, checked against the backbone
        mmdet builds (written in train)."""
        from mmdet.registry import MODELS

        from ... import convert
        from ...coco import synthetic

        if cfg.get("kdcl", {}).get("synthetic"):
            for loader in SPLITS:
                synthetic.generate(cfg[loader].dataset.data_root)  # safe in every rank at once
        evaluated = check_data(cfg)
        target = MODELS.build(cfg.model.backbone).state_dict()
        converted = convert.convert(run.backbone_state, run.meta["architecture"], "mmdet",
                                    target.keys())
        convert.check_shapes(converted, target, f"mmdet's {cfg.model.backbone.type}")
        return Prepared(cfg, evaluated, converted)

    def record_metrics(self, metrics: dict, cfg) -> dict:
        """`coco/bbox_mAP_50` -> `bbox_AP50` on COCO's 0-100 scale (None where COCO has no
        objects of that size); CocoMetric rounds to 0.1 AP. A kind it returns nothing for is a
        model that detected nothing ("the testing results of the whole dataset is empty"),
        which scores AP 0, as in the other backends."""
        out = {}
        for key, value in metrics.items():
            kind, _, stat = key.removeprefix("coco/").partition("_")
            if kind in ("bbox", "segm") and stat in STATS:
                out[f"{kind}_{STATS[stat]}"] = None if value < 0 else round(100 * value, 1)
        kinds = cfg.val_evaluator.metric
        for kind in [kinds] if isinstance(kinds, str) else kinds:
            if not any(key.startswith(f"{kind}_") for key in out):
                out |= {f"{kind}_{name}": 0.0 for name in STATS.values()}
        return out


def check_data(cfg) -> int:
    """The splits' files exist and pass the COCO checks every backend makes (load_split), the
    classes are the annotations' categories (mmdet would drop the objects of any other), and
    there are objects to train on; returns the number of evaluation images."""
    from kdcl_common.images import MAX_PIXELS

    from ...coco.dataset import load_split, require_objects

    limit = cfg.get("kdcl", {}).get("max_image_pixels", MAX_PIXELS)
    indexes = []
    for loader in SPLITS:
        images, annotations = split_files(cfg, loader)
        missing = [str(p) for p in (images, annotations) if not p.exists()]
        if missing:
            raise DataError(f"COCO files not found: {', '.join(missing)}. The COCO 2017 layout "
                            f"is train2017/, val2017/ and annotations/instances_{{train,val}}"
                            f"2017.json under the data root ($COCO_ROOT, or override "
                            f"train_dataloader.dataset.data_root and val_dataloader.dataset."
                            f"data_root)")
        coco = load_split(images, annotations, limit, "kdcl.max_image_pixels", has_masks(cfg))
        found = tuple(c["name"] for c in sorted(coco.dataset["categories"], key=lambda c: c["id"]))
        names = classes(cfg, loader)
        if found != names:
            raise DataError(f"{annotations} has the categories {list(found)}, but the config "
                            f"trains on the classes {list(names)}: mmdet would drop the objects "
                            f"of every other category. Set {loader}.dataset.metainfo.classes "
                            f"to the annotations' categories, or use the annotations the config "
                            f"is for")
        indexes.append(coco)
    train, val = indexes
    require_objects(train, split_files(cfg, "train_dataloader")[1])
    return len(val.dataset["images"])
