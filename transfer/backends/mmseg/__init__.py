"""The mmseg backend: Semantic FPN and UPerNet on COCO-Stuff through mmsegmentation, from
mmseg's own Python configs (transfer/configs/mmseg). launcher.py holds its steps, transforms.py
its label checks; what it shares with the other mmengine backends (the Runner, hooks, atomic
checkpoints, weights_only resume) is transfer/openmmlab. mmseg and mmcv are imported only when a
config of this backend runs."""
from __future__ import annotations

from pathlib import Path

from ...openmmlab.backend import Backend as MMEngineBackend
from ..base import Prepared, Spec


def data_files(cfg) -> tuple[str, tuple[str, ...]]:
    """(the data root, its image and label folders of the training and validation splits)."""
    root = cfg.train_dataloader.dataset.data_root
    parts = []
    for loader in ("train_dataloader", "val_dataloader"):
        prefix = cfg[loader].dataset.data_prefix
        parts += [prefix.img_path, prefix.seg_map_path]
    return str(root), tuple(dict.fromkeys(parts))


class Backend(MMEngineBackend):
    name = "mmseg"
    package = "mmseg"
    example = "_base_ = ['./_base_/upernet_torchvision.py', './_base_/coco-stuff164k_80k.py']"
    loss = "segmentation"

    @classmethod
    def adapt(cls, cfg):
        from . import transforms  # noqa: F401  (registers CheckSegLabels)

        return cfg

    def fit_backbone(self, cfg, meta: dict, path: Path):
        from . import launcher

        launcher.fit_backbone(cfg, meta, path)
        launcher.set_classes(cfg, len(launcher.dataset_classes(cfg)))
        return cfg

    def spec(self, cfg, path: Path) -> Spec:
        from . import launcher

        synthetic = cfg.get("kdcl", {}).get("synthetic")
        return self._spec(
            cfg, path, task="semantic_segmentation",
            dataset="synthetic" if synthetic else "coco_stuff164k",
            extra={"head": cfg.model.decode_head.type, "iterations": cfg.train_cfg.max_iters,
                   "classes": len(launcher.dataset_classes(cfg))},
            data=None if synthetic else data_files(cfg))

    def prepare(self, cfg, run) -> Prepared:
        """Generate the smoke scenes when asked, check the dataset's layout, and convert the
        weights, checked against the backbone mmseg builds (written in train)."""
        from mmseg.registry import MODELS

        from ... import convert
        from ...coco import synthetic
        from . import launcher

        if cfg.get("kdcl", {}).get("synthetic"):
            for loader in ("train_dataloader", "val_dataloader"):
                synthetic.generate(cfg[loader].dataset.data_root)  # safe in every rank at once
        counts = launcher.check_layout(cfg)
        target = MODELS.build(cfg.model.backbone).state_dict()
        arch = run.meta["architecture"]
        converted = convert.convert(run.backbone_state, arch, "mmseg", target.keys())
        convert.check_shapes(converted, target, f"mmseg's {cfg.model.backbone.type}")
        return Prepared(cfg, counts["val_dataloader"], converted)

    def record_metrics(self, metrics: dict, cfg) -> dict:
        return {k: None if metrics.get(k) is None else round(float(metrics[k]), 3)
                for k in ("mIoU", "mAcc", "aAcc")}
