"""Config schema of the torchvision detection backend (YAML, like pre-training's:
kdcl_common/config.py). `python -m transfer --help` prints it with defaults and help texts."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from kdcl_common import ConfigError, schedule
from kdcl_common.checkpoint import RunCheckpoints
from kdcl_common.config import check_choice, load_named, option
from kdcl_common.images import MAX_PIXELS, check_limit
from kdcl_common.schedule import OptimConfig

from ...convert import DETECTION_ARCHS
from ...naming import CONFIG_ROOT

DETECTORS = {"faster_rcnn": "detection", "mask_rcnn": "instance_segmentation"}
CHECKPOINTS = RunCheckpoints(format="kdcl-bench/transfer-checkpoint-v1")
# how the run executes, not what it computes (the pixel limit only refuses a run before it starts)
RESUMABLE = ("data.workers", "train.log_interval", "data.max_image_pixels")
RECOVERY = ("optim.lr", "optim.warmup_epochs", "optim.warmup_start_lr", "train.amp")
EVALUATION = ("data.val_split", "train.eval_batch_size")  # may differ for --eval-only
LOCATIONS = ("output_root", "records", "data.root")  # where, not what: never identity


@dataclass
class ModelConfig:
    detector: str = option("faster_rcnn", help="faster_rcnn or mask_rcnn (both with FPN)")
    backbone: Optional[str] = option(None, help="the backbone architecture this config is for "
                                     f"({', '.join(DETECTION_ARCHS)}); null accepts any of them")
    norm: str = option("bn", help="backbone normalisation: bn, syncbn (BatchNorm synchronised "
                       "across GPU processes) or frozen_bn")
    head_norm: str = option("none", help="normalisation in the FPN and the RoI heads: none "
                            "(Faster/Mask R-CNN as published) or bn (4-conv box head, as "
                            "Detectron2's SyncBN recipe); bn follows `norm` across processes")
    trainable_layers: int = option(5, help="backbone stages trained, from the top (5: all, "
                                   "3: stem and first stage frozen)")
    roi_batch_size_per_image: int = option(512, help="RoIs sampled per image to train the box "
                                           "head (Detectron2's ROI_HEADS.BATCH_SIZE_PER_IMAGE)")
    min_size: int = option(800, help="shorter image side (torchvision's GeneralizedRCNNTransform)")
    max_size: int = option(1333, help="longer image side at most")


@dataclass
class SyntheticCocoConfig:
    train_images: int = option(48, help="generated training scenes")
    val_images: int = option(16, help="generated validation scenes")
    min_size: int = option(96, help="smallest image side")
    max_size: int = option(160, help="largest image side")
    seed: int = option(0, help="generator seed")


@dataclass
class DataConfig:
    dataset: str = option("coco", help="coco (the COCO 2017 layout at data.root) or synthetic "
                          "(the generated scene set, written to data.root if missing)")
    root: str = option("${oc.env:COCO_ROOT}", help="the COCO root: train2017/, val2017/, "
                       "annotations/instances_*.json")
    train_split: str = option("train2017", help="training images and instances file")
    val_split: str = option("val2017", help="evaluation images and instances file")
    workers: int = option(4, help="data-loading processes per rank")
    max_image_pixels: int = option(MAX_PIXELS, help="refuse, before training, images whose "
                                   "annotated width x height is larger (each file's header "
                                   "must match its annotation, checked before decoding); the "
                                   "default is PIL's warning threshold")
    synthetic: SyntheticCocoConfig = field(default_factory=SyntheticCocoConfig)


@dataclass
class TrainConfig:
    device: str = option("auto", help="auto (GPU if present), cpu or cuda")
    amp: str = option("off", help="mixed precision on GPU: off, bf16 or fp16 (with a scaler)")
    log_interval: int = option(20, help="steps between training-loss logs (and NaN checks)")
    eval_interval: int = option(0, help="evaluate every this many epochs (0: only at the end)")
    eval_batch_size: int = option(8, help="images per rank and batch at evaluation")


@dataclass
class TransferConfig:
    name: Optional[str] = option(None, help="config name (default: its path under "
                                 "transfer/configs without .yaml)")
    backend: str = option("torchvision", help="this schema's backend: torchvision")
    protocol: str = option(help="the fine-tuning protocol, e.g. paper14ep_syncbn, 1x_frozenbn")
    preset: str = option("custom", help="smoke, paper or custom (recorded in results)")
    seed: int = option(0, help="seed of the heads' initialisation, data order and flips")
    output_root: str = option("runs/transfer", help="runs go to <output_root>/<name>/<backbone>")
    records: str = option("results/records", help="the records folder: the run's record goes "
                         "to <records>/transfer/<run folder>.json (a location, not part of "
                         "the run's identity)")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def task(self) -> str:
        return DETECTORS[self.model.detector]


def load(path: str | Path, overrides: list[str] = ()) -> TransferConfig:
    cfg = load_named(TransferConfig, path, overrides, CONFIG_ROOT)
    validate(cfg)
    return cfg


def validate(cfg: TransferConfig) -> None:
    check_choice("backend", cfg.backend, ("torchvision",))
    check_choice("model.detector", cfg.model.detector, tuple(DETECTORS))
    check_choice("model.norm", cfg.model.norm, ("bn", "syncbn", "frozen_bn"))
    check_choice("model.head_norm", cfg.model.head_norm, ("none", "bn"))
    if cfg.model.backbone is not None:
        check_choice("model.backbone", cfg.model.backbone, DETECTION_ARCHS)
    check_choice("model.trainable_layers", cfg.model.trainable_layers, range(6))
    check_choice("data.dataset", cfg.data.dataset, ("coco", "synthetic"))
    check_choice("train.amp", cfg.train.amp, ("off", "bf16", "fp16"))
    if (problem := check_limit(cfg.data.max_image_pixels, "data.max_image_pixels")):
        raise ConfigError(problem)
    if cfg.data.workers < 0:
        raise ConfigError(f"data.workers={cfg.data.workers} must be >= 0 (0: load in the "
                          f"training process)")
    for key in ("train.log_interval", "train.eval_batch_size", "model.min_size",
                "model.max_size", "model.roi_batch_size_per_image"):
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) <= 0:
            raise ConfigError(f"{key}={getattr(getattr(cfg, section), name)} must be > 0")
    if cfg.train.eval_interval < 0:
        raise ConfigError(f"train.eval_interval={cfg.train.eval_interval} must be >= 0 "
                          f"(0: evaluate only at the end)")
    for problem in schedule.check(cfg.optim):
        raise ConfigError(problem)
