"""The torchvision backend: torchvision's Faster and Mask R-CNN with FPN (models.py), fine-tuned
by this project's engine (engine.py) from the YAML configs of transfer/configs/torchvision
(config.py)."""
from __future__ import annotations

from pathlib import Path

from kdcl_common.config import to_dict, to_yaml
from kdcl_common.logs import get_logger

from ...coco.layout import split_files
from ..base import Backend as Base
from ..base import Prepared, Spec
from . import config


COCO_TRAIN_IMAGES = 117_266  # train2017's images with at least one annotation


class Backend(Base):
    name = "torchvision"


    @classmethod
    def training_images(cls, config: Path, gpus: int) -> int | None:
        from omegaconf import OmegaConf

        from kdcl_common.config import read_yaml

        cfg = OmegaConf.create(read_yaml(config))
        epochs = OmegaConf.select(cfg, "optim.epochs", default=None)
        synthetic = OmegaConf.select(cfg, "data.dataset", default="coco") == "synthetic"
        images = (OmegaConf.select(cfg, "data.synthetic.train_images", default=48) if synthetic
                  else COCO_TRAIN_IMAGES)
        return int(epochs * images) if epochs else None

    def load_config(self, path: Path, overrides: list[str]) -> config.TransferConfig:
        return config.load(path, overrides)

    def fit_backbone(self, cfg, meta: dict, path: Path):
        from .engine import check_backbone

        check_backbone(cfg, meta, path)
        return cfg

    def spec(self, cfg, path: Path) -> Spec:
        return Spec(
            name=cfg.name, seed=cfg.seed, output_root=cfg.output_root, records=cfg.records,
            preset=cfg.preset, protocol=cfg.protocol, task=cfg.task, dataset=cfg.data.dataset,
            config=to_dict(cfg), config_text=to_yaml(cfg), config_file="config.yaml",
            device=cfg.train.device, resumable_keys=config.RESUMABLE,
            recovery_keys=config.RECOVERY, evaluation_keys=config.EVALUATION,
            other_run="seed=<n> or name=<new name>", evaluation_split=cfg.data.val_split,
            extra={"detector": cfg.model.detector, "epochs": cfg.optim.epochs,
                   "images_per_batch": cfg.optim.batch_size},
            location_keys=config.LOCATIONS,
            data=None if cfg.data.dataset == "synthetic" else (cfg.data.root, split_files(
                cfg.data.train_split, cfg.data.val_split)))

    def prepare(self, cfg, run) -> Prepared:
        from .engine import DetectionRun

        session = DetectionRun(cfg, run, get_logger("transfer", run.ctx.rank))
        return Prepared(cfg, len(session.val_set), session)

    def train(self, prepared: Prepared, run) -> None:
        from .engine import train

        train(prepared.state, run)

    def evaluate(self, prepared: Prepared, run) -> None:
        from .engine import evaluate_checkpoint

        evaluate_checkpoint(prepared.state, run)

    def has_checkpoint(self, run_dir: Path) -> bool:
        return config.CHECKPOINTS.exists(run_dir)
