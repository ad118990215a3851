"""The Detectron2 backend: `python -m transfer <detectron2 yaml> --backbone PATH`.

Per run: read the backbone's metadata; check that its architecture fits the config; take the
input format and pixel mean/std from its preprocessing contract; convert its weights to
Detectron2's pickle, checked key by key against the backbone Detectron2 builds from the config;
then train with DefaultTrainer (checkpoints written atomically), evaluate with COCOEvaluator and
append one result record. Several GPUs and machines go through Detectron2's own `launch`.
"""
from __future__ import annotations

import json
import logging
import os
import time
import warnings
import weakref
from pathlib import Path

from kdcl_common import ConfigError, KdclError, artifact, models, records
from kdcl_common.config import config_diff
from kdcl_common.io import atomic_write_json, atomic_write_text

INSTALL = ("Detectron2 is not installed; it is not on PyPI. Install it from its git repository "
           "into this environment (it compiles against the installed torch):\n"
           "  bash scripts/setup.sh --detectron2\n"
           "or: pip install --no-build-isolation --use-pep517 "
           "'git+https://github.com/facebookresearch/detectron2.git'\n"
           "The torchvision backend (transfer/configs/torchvision) needs nothing more.")
NORM_KEYS = ("MODEL.RESNETS.NORM", "MODEL.MOBILENET_V2.NORM", "MODEL.FPN.NORM",
             "MODEL.ROI_BOX_HEAD.NORM", "MODEL.ROI_MASK_HEAD.NORM")
SPLITS = ("kdcl_coco_train", "kdcl_coco_val")  # the dataset names the configs refer to
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def require_detectron2() -> None:
    try:
        import detectron2  # noqa: F401
    except ImportError:
        raise KdclError(INSTALL) from None


# ----------------------------------------------------------------------------- configuration
def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _set(cfg, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[last] = value


def fit_backbone(cfg, meta: dict, path: Path) -> None:
    """Check that the artifact's architecture is the one the config builds, and take the
    MobileNetV2 width and the preprocessing contract from its metadata."""
    arch, kwargs = meta["architecture"], meta["constructor_kwargs"]
    name = cfg.MODEL.BACKBONE.NAME
    if name == "build_resnet_fpn_backbone":
        wanted = f"resnet{cfg.MODEL.RESNETS.DEPTH}"
        if arch != wanted:
            raise ConfigError(f"{path} is a {arch} backbone, but the config builds a {wanted} "
                              f"(MODEL.RESNETS.DEPTH {cfg.MODEL.RESNETS.DEPTH}): use a config "
                              f"for {arch}")
    elif name == "build_mobilenet_v2_fpn_backbone":
        if arch != "mobilenet_v2":
            raise ConfigError(f"{path} is a {arch} backbone, but the config builds a "
                              f"MobileNetV2: use a config for {arch}")
        cfg.MODEL.MOBILENET_V2.WIDTH_MULT = float(kwargs.get("width_mult", 1.0))
    else:
        raise ConfigError(f"MODEL.BACKBONE.NAME {name} is not one this project converts weights "
                          f"for (build_resnet_fpn_backbone, build_mobilenet_v2_fpn_backbone)")
    pre = meta["preprocessing"]
    cfg.INPUT.FORMAT = pre.get("color", "RGB")
    cfg.MODEL.PIXEL_MEAN = list(pre["mean_255"])
    cfg.MODEL.PIXEL_STD = list(pre["std_255"])
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False  # torchvision ResNets stride in the 3x3 conv


def fall_back_from_syncbn(cfg, world_size: int, logger) -> None:
    """SyncBatchNorm needs several GPU processes: use BatchNorm elsewhere, with a warning."""
    if world_size > 1 and cfg.MODEL.DEVICE != "cpu":
        return
    changed = [key for key in NORM_KEYS if _get(cfg, key) == "SyncBN"]
    for key in changed:
        _set(cfg, key, "BN")
    if changed:
        where = "on the CPU" if cfg.MODEL.DEVICE == "cpu" else "in a single process"
        message = (f"SyncBN has no effect {where}: using BN for {', '.join(changed)}")
        logger.warning(message)
        warnings.warn(message, stacklevel=2)


def prepare(args) -> tuple[object, dict, Path]:
    """The full config of this run (not frozen), the backbone metadata and its path."""
    import torch

    from . import config as d2config

    cfg = d2config.load(args.config, args.overrides)
    backbone = Path(args.backbone).with_suffix(".pth")
    if not backbone.is_file():
        raise KdclError(f"backbone weights not found: {backbone}")
    meta = artifact.read_metadata(backbone)
    fit_backbone(cfg, meta, backbone)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    if not cfg.KDCL.DATA_ROOT:
        cfg.KDCL.DATA_ROOT = os.environ.get("COCO_ROOT", "")
        if not cfg.KDCL.DATA_ROOT:
            raise ConfigError("no COCO root: set KDCL.DATA_ROOT=/path/to/coco or export "
                              "COCO_ROOT=/path/to/coco")
    from ..torchvision.engine import backbone_id

    name = d2config.name_of(args.config)
    cfg.OUTPUT_DIR = str(Path(cfg.KDCL.OUTPUT_ROOT) / name / backbone_id(meta, backbone)
                         / f"seed{cfg.SEED}")
    return cfg, meta, backbone


# ------------------------------------------------------------------------------------- data
def register_datasets(cfg) -> int:
    """Register the COCO splits under SPLITS (generating the smoke set when asked); returns the
    number of object categories."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.utils import comm

    from ...coco import synthetic
    from ...coco.dataset import load_coco, split_paths

    root = cfg.KDCL.DATA_ROOT
    if cfg.KDCL.SYNTHETIC and comm.get_local_rank() == 0:
        synthetic.generate(root)
    comm.synchronize()
    categories = None
    for name, split in zip(SPLITS, (cfg.KDCL.TRAIN_SPLIT, cfg.KDCL.VAL_SPLIT)):
        images, annotations = split_paths(root, split)
        coco = load_coco(annotations)  # validates every annotation first, naming bad ones
        ids = sorted(coco.getCatIds())
        if categories is not None and ids != categories:
            raise KdclError(f"the categories of {cfg.KDCL.TRAIN_SPLIT} and {cfg.KDCL.VAL_SPLIT} "
                            f"differ: {categories} vs {ids}")
        categories = ids
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, str(annotations), str(images))
    return len(categories)


# -------------------------------------------------------------------------------- training
def _trainer_class():
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import DefaultTrainer, hooks
    from detectron2.evaluation import COCOEvaluator

    class AtomicCheckpointer(DetectionCheckpointer):
        """Detectron2's checkpointer, made atomic: it writes to a temporary name, renames it in
        place and only then moves the `last_checkpoint` tag, so a killed run always resumes
        from a whole checkpoint."""

        _hold_tag = False

        def save(self, name: str, **kwargs) -> None:
            if not self.save_dir or not self.save_to_disk:
                return
            partial = f".{name}.partial"
            self._hold_tag = True
            try:
                super().save(partial, **kwargs)
            finally:
                self._hold_tag = False
            tmp = os.path.join(self.save_dir, partial + ".pth")
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, os.path.join(self.save_dir, f"{name}.pth"))
            self.tag_last_checkpoint(f"{name}.pth")

        def tag_last_checkpoint(self, last_filename_basename: str) -> None:
            if not self._hold_tag:
                atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"),
                                  last_filename_basename)

    class Trainer(DefaultTrainer):
        def build_hooks(self):
            # DefaultTrainer made its checkpointer just before calling this: swap it first,
            # so that the periodic-checkpoint hook uses the atomic one.
            self.checkpointer = AtomicCheckpointer(self.checkpointer.model, self.cfg.OUTPUT_DIR,
                                                   trainer=weakref.proxy(self))
            built = super().build_hooks()
            for hook in built:  # Detectron2 keeps every periodic checkpoint; keep the last few
                if isinstance(hook, hooks.PeriodicCheckpointer):
                    hook.max_to_keep = self.cfg.KDCL.KEEP_CHECKPOINTS
            return built

        @classmethod
        def build_evaluator(cls, cfg, dataset_name):
            return COCOEvaluator(dataset_name, output_dir=os.path.join(cfg.OUTPUT_DIR, "inference"))

    return Trainer


def convert_backbone(cfg, backbone: Path) -> Path:
    """Convert the artifact for Detectron2, checked against the backbone the config builds."""
    from detectron2.modeling import build_backbone

    from ... import convert

    meta = artifact.read_metadata(backbone)
    source, _ = artifact.load(backbone)
    target = build_backbone(cfg).bottom_up.state_dict()
    converted = convert.convert(source.state_dict(), meta["architecture"], "detectron2",
                                expected_keys=target.keys())
    convert.check_shapes(converted, target, f"Detectron2's {cfg.MODEL.BACKBONE.NAME}")
    return convert.save_detectron2(converted, Path(cfg.OUTPUT_DIR) / "backbone.pkl",
                                   author=f"kdcl-bench ({backbone})")


def metrics_of(results: dict) -> dict:
    """COCOEvaluator's output -> bbox_AP, ..., segm_AP, ... (None where COCO has no value)."""
    out = {}
    for task in ("bbox", "segm"):
        for stat in STATS:
            if task in results:
                value = results[task].get(stat)
                out[f"{task}_{stat}"] = None if value is None or value != value else round(value, 3)
    return out


def check_run_dir(cfg, resume: bool) -> str:
    run_dir = Path(cfg.OUTPUT_DIR)
    if (run_dir / "result.json").is_file():
        if not resume:
            raise KdclError(f"{run_dir} holds a finished run. Start another one with SEED=<n> or "
                            f"a new config, or delete it.")
        return "finished"
    if (run_dir / "last_checkpoint").is_file():
        if not resume:
            raise KdclError(f"{run_dir} holds the checkpoints of an unfinished run: pass "
                            f"--resume to continue it.")
        return "resume"
    return "start"


def refuse_changed_config(cfg) -> None:
    saved = Path(cfg.OUTPUT_DIR) / "config.yaml"
    if not saved.is_file():
        return
    import yaml

    diff = config_diff(yaml.safe_load(saved.read_text()), yaml.safe_load(cfg.dump()),
                       ignore=("DATALOADER.NUM_WORKERS",))
    if diff:
        raise ConfigError(f"refusing to resume {cfg.OUTPUT_DIR}: its config differs from this "
                          f"one\n" + "\n".join(diff))


def worker(args, cfg, meta: dict, backbone: Path) -> None:
    """What every process of the run does (Detectron2's `launch` calls it on each)."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import default_setup
    from detectron2.utils import comm

    from . import mobilenet  # noqa: F401  registers the MobileNetV2 backbone in this process

    logger = logging.getLogger("kdcl.transfer")
    world = comm.get_world_size()
    fall_back_from_syncbn(cfg, world, logger)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = register_datasets(cfg)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (SPLITS[0],), (SPLITS[1],)
    cfg.MODEL.WEIGHTS = str(Path(cfg.OUTPUT_DIR) / "backbone.pkl")  # written below
    action = check_run_dir(cfg, args.resume)
    if action != "start":
        refuse_changed_config(cfg)
    if action == "finished" and not args.eval_only:
        logger.info(f"{cfg.OUTPUT_DIR} is already finished")
        return
    Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
    if comm.is_main_process() and action == "start":
        convert_backbone(cfg, backbone)
    comm.synchronize()
    cfg.freeze()
    default_setup(cfg, args)
    Trainer = _trainer_class()
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        if not checkpointer.has_checkpoint():
            raise KdclError(f"--eval-only evaluates a trained run, but {cfg.OUTPUT_DIR} has no "
                            f"checkpoint: train it first")
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=True)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            atomic_write_json(Path(cfg.OUTPUT_DIR) / f"eval-{cfg.KDCL.VAL_SPLIT}.json",
                              {"metrics": metrics_of(results)})
        return
    start = time.time()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=action == "resume")
    trainer.train()
    results = getattr(trainer, "_last_eval_results", None) or Trainer.test(cfg, trainer.model)
    if comm.is_main_process():
        write_record(cfg, args, meta, backbone, metrics_of(results), world, time.time() - start)


def write_record(cfg, args, meta: dict, backbone: Path, metrics: dict, world: int,
                 seconds: float) -> None:
    from . import config as d2config

    task = "instance_segmentation" if cfg.MODEL.MASK_ON else "detection"
    name = d2config.name_of(args.config)
    record = records.append(
        cfg.KDCL.RECORDS, stage="transfer", task=task,
        dataset="synthetic" if cfg.KDCL.SYNTHETIC else "coco", backend="detectron2",
        backbone=models.label(meta["architecture"], meta["constructor_kwargs"]),
        method=meta.get("method", "unknown"), metrics=metrics, seed=cfg.SEED,
        preset=cfg.KDCL.PRESET, config=name, config_file=args.config,
        config_hash=_hash(cfg.dump()), run_dir=cfg.OUTPUT_DIR, world_size=world,
        wall_seconds=seconds, protocol=cfg.KDCL.PROTOCOL,
        detector="mask_rcnn" if cfg.MODEL.MASK_ON else "faster_rcnn",
        iterations=cfg.SOLVER.MAX_ITER, images_per_batch=cfg.SOLVER.IMS_PER_BATCH,
        backbone_path=str(backbone), backbone_sha256=meta.get("sha256"),
        pretrain_config=meta.get("config_name"), pretrain_seed=meta.get("seed"),
        pretrain_run=meta.get("run_dir"), icl=meta.get("icl"),
        group="+".join(meta.get("students", [])),
        images_per_second=round(cfg.SOLVER.MAX_ITER * cfg.SOLVER.IMS_PER_BATCH / seconds, 2))
    atomic_write_json(Path(cfg.OUTPUT_DIR) / "result.json", record)
    logging.getLogger("kdcl.transfer").info("result: " + json.dumps(metrics))


def _hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:12]


def main(args) -> int:
    """Entry point from transfer.cli for Detectron2 configs."""
    require_detectron2()
    from detectron2.engine import launch

    cfg, meta, backbone = prepare(args)
    if args.print_config:
        print(cfg.dump(), end="")
        return 0
    launch(worker, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args, cfg, meta, backbone))
    return 0
