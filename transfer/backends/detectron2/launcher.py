"""The Detectron2 backend's steps (transfer/backends/detectron2/__init__.py calls them).

Per run: check that the backbone's architecture fits the config; take the input format and
pixel mean/std from its preprocessing contract; check the COCO splits; convert its weights to
Detectron2's pickle, checked key by key against the backbone Detectron2 builds from the config;
then, in every process Detectron2's `launch` starts, train with DefaultTrainer (checkpoints
written atomically) and evaluate with COCOEvaluator. Detectron2's own log (environment, config,
metrics, evaluation tables) goes to the run's log.txt; the console has the project's lines
(kdcl_common/logs.py) unless --verbose.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
import weakref
from pathlib import Path

from kdcl_common import ConfigError, DataError, NonFiniteLossError, identity
from kdcl_common.io import atomic_write_text
from kdcl_common.logs import (Progress, attach_file, drop_console_handlers, framework_output,
                              get_logger, verbose)

from ...lifecycle import LOGGER

LIMIT_KEY = "KDCL.MAX_IMAGE_PIXELS"

NORM_KEYS = ("MODEL.RESNETS.NORM", "MODEL.MOBILENET_V2.NORM", "MODEL.FPN.NORM",
             "MODEL.ROI_BOX_HEAD.NORM", "MODEL.ROI_MASK_HEAD.NORM")
SPLITS = ("kdcl_coco_train", "kdcl_coco_val")  # the dataset names the configs refer to
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
RECOVERY_ADVICE = ("Lower SOLVER.BASE_LR or lengthen SOLVER.WARMUP_ITERS, and continue with the "
                   "same command plus --resume and the new value: after this stop, --resume "
                   "accepts new values of these keys, from the last checkpoint on, and the "
                   "record lists the change.")
RESUME_NOTE = ("Detectron2 resumes the weights, optimizer, LR schedule and iteration, but its "
               "data sampler and random generators start again from SEED: the iterations after "
               "the checkpoint saw other images and augmentations than an uninterrupted run's, "
               "so the metrics may differ from it by the spread of a changed data order")


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
        logger.warning(f"SyncBN has no effect {where}: using BN for {', '.join(changed)}")


# ------------------------------------------------------------------------------------- data
def check_data(cfg) -> int:
    """The COCO splits exist and are well-formed (generating the smoke set when asked), with the
    same categories and images to train on; returns the number of evaluation images."""
    from ...coco import synthetic
    from ...coco.dataset import load_split, require_objects, split_paths

    if cfg.KDCL.SYNTHETIC:
        synthetic.generate(cfg.KDCL.DATA_ROOT)
    splits = [split_paths(cfg.KDCL.DATA_ROOT, s) for s in (cfg.KDCL.TRAIN_SPLIT,
                                                           cfg.KDCL.VAL_SPLIT)]
    # (masks: Detectron2 would drop the objects without one)
    train, val = (load_split(*paths, cfg.KDCL.MAX_IMAGE_PIXELS, LIMIT_KEY, cfg.MODEL.MASK_ON)
                  for paths in splits)
    if sorted(train.getCatIds()) != sorted(val.getCatIds()):
        raise DataError(f"the categories of {cfg.KDCL.TRAIN_SPLIT} and {cfg.KDCL.VAL_SPLIT} "
                        f"differ: {sorted(train.getCatIds())} vs {sorted(val.getCatIds())}")
    require_objects(train, splits[0][1])
    return len(val.dataset["images"])


def register_datasets(cfg) -> int:
    """Register the COCO splits under SPLITS (generating the smoke set when asked); returns the
    number of object categories."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances
    from ...coco.dataset import check_same_categories, load_coco, split_paths

    splits = (cfg.KDCL.TRAIN_SPLIT, cfg.KDCL.VAL_SPLIT)
    paths = [split_paths(cfg.KDCL.DATA_ROOT, split) for split in splits]
    # validates every annotation first, naming bad ones
    ids = [sorted(load_coco(labels).getCatIds()) for _, labels in paths]
    check_same_categories(splits[0], ids[0], splits[1], ids[1])
    for name, (images, labels) in zip(SPLITS, paths):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, str(labels), str(images))
    return len(ids[0])


# -------------------------------------------------------------------------------- training
def read_as_stored() -> None:
    """Detectron2's read_image applies a file's EXIF orientation (detection_utils.
    _apply_exif_orientation); images are used as stored on every backend (kdcl_common/images.py
    says why), so in this process, and the data workers it forks, it leaves them as stored."""
    from detectron2.data import detection_utils

    detection_utils._apply_exif_orientation = lambda image: image


def _mapper_class():
    from detectron2.data import DatasetMapper

    from ...coco.dataset import open_as_annotated

    class AsAnnotatedMapper(DatasetMapper):
        """Detectron2's DatasetMapper, once the file's header gives its annotated size (a
        DataError otherwise, naming its EXIF orientation when that explains the difference),
        so that no file larger than its annotation is decoded."""

        def __call__(self, dataset_dict):
            info = {"id": dataset_dict["image_id"], "width": dataset_dict["width"],
                    "height": dataset_dict["height"]}
            with open_as_annotated(Path(dataset_dict["file_name"]), info, "its annotations"):
                pass
            return super().__call__(dataset_dict)

    return AsAnnotatedMapper


def _trainer_class(evaluated: int):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import build_detection_test_loader, build_detection_train_loader
    from detectron2.engine import DefaultTrainer, HookBase, hooks
    from detectron2.evaluation import COCOEvaluator
    from detectron2.utils import comm

    class TrainingTime(HookBase):
        """The training time over resumes: Detectron2 saves the hooks' state_dict in each
        checkpoint, so a resumed run adds the earlier processes' time (up to the checkpoint)."""

        def __init__(self):
            self.started, self.before = time.perf_counter(), 0.0

        @property
        def seconds(self) -> float:
            return self.before + time.perf_counter() - self.started

        def state_dict(self):
            return {"wall_seconds": self.seconds}

        def load_state_dict(self, state):
            self.before = state["wall_seconds"]

    class ConsoleProgress(HookBase):
        """The run's progress on the project's console (kdcl_common.logs.Progress), at least
        Detectron2's metric-printing period (20 iterations) apart."""

        def before_train(self):
            trainer = self.trainer
            self.progress = Progress(logging.getLogger(LOGGER), trainer.max_iter,
                                     done=trainer.start_iter, rank=comm.get_rank(), interval=20,
                                     images_per_step=trainer.cfg.SOLVER.IMS_PER_BATCH)

        def after_step(self):
            histories = self.trainer.storage.histories()
            latest = {key: histories[name].latest() for key, name in
                      (("loss", "total_loss"), ("lr", "lr")) if name in histories}
            self.progress.update(self.trainer.iter + 1, **latest)

        def after_train(self):
            self.progress.close()

    Mapper = _mapper_class()

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
            self.training_time = TrainingTime()  # before resume_or_load, which loads its state
            return [*built, self.training_time, ConsoleProgress()]

        @classmethod
        def test(cls, cfg, model, evaluators=None):
            logging.getLogger(LOGGER).info(f"evaluating on {evaluated} images")
            return super().test(cfg, model, evaluators)

        @classmethod
        def build_train_loader(cls, cfg):
            return build_detection_train_loader(cfg, mapper=Mapper(cfg, is_train=True))

        @classmethod
        def build_test_loader(cls, cfg, dataset_name):
            return build_detection_test_loader(cfg, dataset_name,
                                               mapper=Mapper(cfg, is_train=False))

        @classmethod
        def build_evaluator(cls, cfg, dataset_name):
            return COCOEvaluator(dataset_name, output_dir=os.path.join(cfg.OUTPUT_DIR, "inference"))

    return Trainer


def convert_backbone(cfg, state: dict, arch: str):
    """The artifact's weights in Detectron2's names, checked against the backbone the config
    builds (nothing written)."""
    from detectron2.modeling import build_backbone

    from ... import convert
    from . import mobilenet  # noqa: F401  registers the MobileNetV2 backbone

    target = build_backbone(cfg).bottom_up.state_dict()
    converted = convert.convert(state, arch, "detectron2", expected_keys=target.keys())
    convert.check_shapes(converted, target, f"Detectron2's {cfg.MODEL.BACKBONE.NAME}")
    return converted


def metrics_of(results: dict) -> dict:
    """COCOEvaluator's output -> bbox_AP, ..., segm_AP, ... (None where COCO has no value)."""
    out = {}
    for task in ("bbox", "segm"):
        for stat in STATS:
            if task in results:
                value = results[task].get(stat)
                out[f"{task}_{stat}"] = None if value is None or value != value else round(value, 3)
    return out


def project_logger(run, rank: int) -> logging.Logger:
    """The project's console and log.txt logger in this process: the lifecycle's, or, in a
    process Detectron2's launch started, one set up the same way."""
    logger = logging.getLogger(LOGGER)
    if not logger.handlers:
        logger = get_logger(LOGGER, rank)
        if rank == 0:
            attach_file(logger, run.run_dir / "log.txt")
    return logger


def setup(cfg, args) -> None:
    """Detectron2's default_setup (its loggers, with the environment and config in log.txt;
    the seed); unless verbose, the console handlers it gives its loggers write nowhere and are
    removed."""
    from detectron2.engine import default_setup

    if verbose():
        default_setup(cfg, args)
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        default_setup(cfg, args)
        drop_console_handlers("detectron2", "fvcore", streams=(null,))


class Arguments:
    """What Detectron2's default_setup logs as the command line."""

    def __init__(self, config_file: str, eval_only: bool):
        self.config_file, self.eval_only = config_file, eval_only

    def __repr__(self) -> str:
        return f"Arguments(config_file={self.config_file!r}, eval_only={self.eval_only})"


def worker(run, cfg, mode: str) -> None:
    """What every process of the run does (Detectron2's `launch` calls it on each): train
    ('train') or evaluate the last checkpoint ('eval'), and on the main process finish."""
    import torch
    from detectron2.utils import comm

    from . import mobilenet  # noqa: F401  registers the MobileNetV2 backbone in this process

    logger = project_logger(run, comm.get_rank())
    world = comm.get_world_size()
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    fall_back_from_syncbn(cfg, world, logger)
    read_as_stored()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = register_datasets(cfg)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (SPLITS[0],), (SPLITS[1],)
    cfg.OUTPUT_DIR = str(run.run_dir)
    cfg.MODEL.WEIGHTS = str(run.run_dir / "backbone.pkl")  # written by the backend's train
    cfg.freeze()
    setup(cfg, Arguments(run.config_path, mode == "eval"))
    with framework_output(run.run_dir / "log.txt"):  # pycocotools' prints, warnings
        _train_or_evaluate(run, cfg, mode)


def _train_or_evaluate(run, cfg, mode: str) -> None:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import DatasetCatalog
    from detectron2.utils import comm

    evaluated = len(DatasetCatalog.get(SPLITS[1]))
    Trainer = _trainer_class(evaluated)
    if mode == "eval":
        model = Trainer.build_model(cfg)
        checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=True)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            run.finish_evaluation(metrics_of(results), evaluated,
                                  checkpointer.get_checkpoint_file())
        return
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=run.resuming)
    try:
        trainer.train()
    except FloatingPointError as e:  # Detectron2's check of every iteration's losses
        raise NonFiniteLossError(f"{e}; training stopped and the last checkpoint in "
                                 f"{cfg.OUTPUT_DIR} is kept. {RECOVERY_ADVICE}") from None
    results = getattr(trainer, "_last_eval_results", None) or Trainer.test(cfg, trainer.model)
    if comm.is_main_process():
        seconds = trainer.training_time.seconds
        resumed = identity.resumes(run.run_dir) > 0
        run.finish(metrics_of(results), evaluated, comm.get_world_size(), seconds,
                   round(cfg.SOLVER.MAX_ITER * cfg.SOLVER.IMS_PER_BATCH / seconds, 2),
                   **({"resume_note": RESUME_NOTE} if resumed else {}))
