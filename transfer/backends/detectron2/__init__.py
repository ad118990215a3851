"""The Detectron2 backend: Faster and Mask R-CNN with FPN through Detectron2, from Detectron2's
own YAML (transfer/configs/detectron2; config.py adds the model zoo as a base and this project's
keys), with a registered MobileNetV2 backbone (mobilenet.py). launcher.py holds the steps.
Detectron2 is not on PyPI; it is imported only when a config of this backend runs, and several
GPUs or machines go through its own `launch`, not torchrun."""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from kdcl_common import ConfigError, KdclError

from ...coco.layout import split_files
from ...naming import config_name
from ..base import Backend as Base
from ..base import Prepared, Spec, option

INSTALL = ("Detectron2 is not installed; it is not on PyPI. Install it from its git repository "
           "into this environment (it compiles against the installed torch):\n"
           "  bash scripts/setup.sh --detectron2\n"
           "or: pip install --no-build-isolation --use-pep517 "
           "'git+https://github.com/facebookresearch/detectron2.git'\n"
           "The torchvision backend (transfer/configs/torchvision) needs nothing more.")


def require_detectron2() -> None:
    try:
        import detectron2  # noqa: F401
    except ImportError:
        raise KdclError(INSTALL) from None


class Backend(Base):
    name = "detectron2"
    seed_key = "SEED"
    options = {
        "num_gpus": {"flag": "--num-gpus", "type": int, "metavar": "N",
                     "help": "GPUs per machine (default 1), each a process of Detectron2's launch"},
        "num_machines": {"flag": "--num-machines", "type": int, "metavar": "N",
                         "help": "machines (default 1)"},
        "machine_rank": {"flag": "--machine-rank", "type": int, "metavar": "R",
                         "help": "this machine's rank (default 0)"},
        "dist_url": {"flag": "--dist-url", "metavar": "URL",
                     "help": "initialisation URL of the process group, e.g. tcp://host:port "
                             "(default: auto)"},
    }
    launch = ("For several GPUs pass --num-gpus N to a Detectron2 config, which starts its own "
              "processes; other backends use torchrun.")


    @classmethod
    def training_images(cls, config: Path, gpus: int) -> int | None:
        require_detectron2()
        from . import config as d2config

        cfg = d2config.load(config, [])  # IMS_PER_BATCH is the global batch
        return cfg.SOLVER.MAX_ITER * cfg.SOLVER.IMS_PER_BATCH

    def load_config(self, path: Path, overrides: list[str]):
        require_detectron2()
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(f"{path} is a Detectron2 config: it starts its own processes. Run "
                              f"`python -m transfer {path} --backbone PATH --num-gpus N`, not "
                              f"torchrun.")
        from . import config as d2config

        cfg = d2config.load(path, overrides)
        if not cfg.KDCL.DATA_ROOT:
            cfg.KDCL.DATA_ROOT = os.environ.get("COCO_ROOT", "")
            if not cfg.KDCL.DATA_ROOT:
                raise ConfigError("no COCO root: set KDCL.DATA_ROOT=/path/to/coco or export "
                                  "COCO_ROOT=/path/to/coco")
        return cfg

    def fit_backbone(self, cfg, meta: dict, path: Path):
        from . import launcher

        launcher.fit_backbone(cfg, meta, path)
        return cfg

    def spec(self, cfg, path: Path) -> Spec:
        text = cfg.dump()
        return Spec(
            name=config_name(path), seed=cfg.SEED, output_root=cfg.KDCL.OUTPUT_ROOT,
            records=cfg.KDCL.RECORDS, preset=cfg.KDCL.PRESET, protocol=cfg.KDCL.PROTOCOL,
            task="instance_segmentation" if cfg.MODEL.MASK_ON else "detection",
            dataset="synthetic" if cfg.KDCL.SYNTHETIC else "coco",
            config=yaml.safe_load(text), config_text=text,
            # Detectron2 writes the config it runs (after its fall-backs) to config.yaml itself
            config_file="kdcl_config.yaml", device="cpu",  # no CUDA in the launching process
            resumable_keys=("DATALOADER.NUM_WORKERS", "SOLVER.CHECKPOINT_PERIOD",
                            "KDCL.MAX_IMAGE_PIXELS"),
            recovery_keys=("SOLVER.BASE_LR", "SOLVER.WARMUP_ITERS", "SOLVER.WARMUP_FACTOR"),
            evaluation_keys=("KDCL.VAL_SPLIT", "TEST.*"),
            other_run="SEED=<n>, or a copy of the config under another name",
            evaluation_split=cfg.KDCL.VAL_SPLIT, temporaries=(".*.partial.pth",),
            extra={"detector": "mask_rcnn" if cfg.MODEL.MASK_ON else "faster_rcnn",
                   "iterations": cfg.SOLVER.MAX_ITER,
                   "images_per_batch": cfg.SOLVER.IMS_PER_BATCH},
            location_keys=("KDCL.OUTPUT_ROOT", "KDCL.RECORDS", "KDCL.DATA_ROOT", "OUTPUT_DIR"),
            data=None if cfg.KDCL.SYNTHETIC else (cfg.KDCL.DATA_ROOT, split_files(
                cfg.KDCL.TRAIN_SPLIT, cfg.KDCL.VAL_SPLIT)))

    def prepare(self, cfg, run) -> Prepared:
        from . import launcher

        evaluated = launcher.check_data(cfg)
        converted = launcher.convert_backbone(cfg, run.backbone_state, run.meta["architecture"])
        return Prepared(cfg, evaluated, converted)

    def _launch(self, prepared: Prepared, run, mode: str) -> None:
        from kdcl_common.logs import framework_output

        from . import launcher, weights

        if mode == "train":  # at every start, from the backbone the run names (never reused)
            weights.save(prepared.state, run.run_dir / "backbone.pkl",
                         author=f"kdcl-bench ({run.backbone})")
        with framework_output(run.run_dir / "log.txt"):  # what importing Detectron2 logs too
            from detectron2.engine import launch

            launch(launcher.worker, option(self.args, "num_gpus", 1),
                   num_machines=option(self.args, "num_machines", 1),
                   machine_rank=option(self.args, "machine_rank", 0),
                   dist_url=option(self.args, "dist_url", "auto"),
                   args=(run.without_weights(), prepared.cfg.clone(), mode))

    def train(self, prepared: Prepared, run) -> None:
        self._launch(prepared, run, "train")

    def evaluate(self, prepared: Prepared, run) -> None:
        self._launch(prepared, run, "eval")

    def has_checkpoint(self, run_dir: Path) -> bool:
        return (run_dir / "last_checkpoint").is_file()
