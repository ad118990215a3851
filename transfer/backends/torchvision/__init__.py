"""The torchvision backend: torchvision's Faster and Mask R-CNN with FPN (models.py), fine-tuned
by this project's engine (engine.py) from the YAML configs of transfer/configs/torchvision
(config.py)."""
from __future__ import annotations

from pathlib import Path

from kdcl_common.config import to_dict, to_yaml
from kdcl_common.logs import get_logger

from ..base import Backend as Base
from ..base import Spec
from . import config


class Backend(Base):
    name = "torchvision"

    @classmethod
    def claims(cls, path: Path, yaml_data) -> bool:
        return isinstance(yaml_data, dict)  # the YAML configs no other backend claims

    def load_config(self, path: Path, overrides: list[str]) -> None:
        self.cfg = config.load(path, overrides)

    def fit_backbone(self, meta: dict, path: Path) -> None:
        from .engine import check_backbone

        check_backbone(self.cfg, meta, path)

    def spec(self) -> Spec:
        cfg = self.cfg
        return Spec(
            name=cfg.name, seed=cfg.seed, output_root=cfg.output_root, records=cfg.records,
            preset=cfg.preset, protocol=cfg.protocol, task=cfg.task, dataset=cfg.data.dataset,
            config=to_dict(cfg), config_text=to_yaml(cfg), config_file="config.yaml",
            device=cfg.train.device, resumable_keys=config.RESUMABLE,
            recovery_keys=config.RECOVERY, evaluation_keys=config.EVALUATION,
            other_run="seed=<n> or name=<new name>", evaluation_split=cfg.data.val_split,
            extra={"detector": cfg.model.detector, "epochs": cfg.optim.epochs})

    def prepare(self, run) -> int:
        from .engine import DetectionRun

        self.session = DetectionRun(self.cfg, run, get_logger("transfer", run.ctx.rank))
        return len(self.session.val_set)

    def train(self, run) -> None:
        from .engine import train

        train(self.session, run)

    def evaluate(self, run) -> None:
        from .engine import evaluate_checkpoint

        evaluate_checkpoint(self.session, run)

    def has_checkpoint(self, run_dir: Path) -> bool:
        return config.CHECKPOINTS.exists(run_dir)
