"""What the backends built on mmengine add to it, registered the OpenMMLab way, in
mmengine's root registries, which every OpenMMLab package's registries fall back to:

- `LoadImageAsStored`, mmcv's LoadImageFromFile bounded and as stored: the image's and its
  label map's sizes come from their headers before anything is decoded (refused above
  `kdcl.max_image_pixels`, or when they differ, naming EXIF when its orientation explains it),
  and EXIF orientation is not applied (cv2 and PIL would rotate the image, not its label map);
- `KdclMetricsHook`, which keeps the last validation metrics for the result record;
- `StopOnNonFiniteLoss`: mmengine trains on through a NaN loss, and the run would then record
  the metrics of NaN weights;
- `PlainCheckpointHook`, which keeps mmengine's checkpoints loadable with torch's default
  weights_only=True (torch >= 2.6), so resuming needs no unsafe unpickling;
- `ExactResume`, which makes the random state an iteration trains with independent of how the
  run got there, so a resumed run ends where an uninterrupted one does, and keeps the training
  time over resumes;
- `ConsoleProgress` and `QuietRunner`: the project's console (kdcl_common/logs.py), with
  mmengine's own log in the run's log.txt;
- atomic local writes for mmengine's file backend, so checkpoints are never half written.
"""
from __future__ import annotations

import logging
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import mmcv
import numpy as np
import torch
from mmcv.transforms import LoadImageFromFile
from mmengine import fileio
from mmengine.dist import get_dist_info
from mmengine.fileio.backends import LocalBackend, register_backend
from mmengine.hooks import Hook
from mmengine.runner import Runner
from mmengine.registry import HOOKS, TRANSFORMS

from kdcl_common import DataError, NonFiniteLossError
from kdcl_common.images import MAX_PIXELS, ImageTooLarge, open_within, size_mismatch
from kdcl_common.io import atomic_write_bytes
from kdcl_common.logs import Progress, drop_console_handlers
from kdcl_common.sampling import sample_seed

from ..lifecycle import LOGGER

LIMIT_KEY = "kdcl.max_image_pixels"
# mmcv's decoding flags that leave EXIF orientation alone (cv2 and PIL; turbojpeg and tifffile
# always ignore it)
AS_STORED = {"color": "color_ignore_orientation", "grayscale": "grayscale_ignore_orientation"}

RECOVERY_ADVICE = ("Lower optim_wrapper.optimizer.lr or lengthen the warm-up in param_scheduler, "
                   "and run the same command with the new value and --restart, which archives "
                   "this run (nothing is deleted) and fine-tunes the backbone again. --resume "
                   "cannot take a new learning rate here: mmengine restores the old one from "
                   "the checkpoint.")


@TRANSFORMS.register_module()
class LoadImageAsStored(LoadImageFromFile):
    """mmcv's LoadImageFromFile (the same arguments), plus `max_pixels`: the image is refused,
    before anything is decoded, when its header gives more pixels, or a size other than its
    label map's (`seg_map_path`, when the dataset gives one) or its annotation's (`width` and
    `height`, as mmdet's COCO dataset gives them); and it is decoded as stored, without EXIF
    rotation, as its label map is (mmseg loads it 'unchanged') and as COCO's tools read it."""

    def __init__(self, max_pixels: int = MAX_PIXELS, **kwargs):
        color = kwargs.get("color_type", "color")
        kwargs["color_type"] = AS_STORED.get(color, color)
        super().__init__(**kwargs)
        self.max_pixels = max_pixels

    @contextmanager
    def _opened(self, path: str, content: bytes):
        """The header of `path` (its bytes: `content`), as open_within, with DataErrors."""
        opened = ExitStack()
        try:
            image = opened.enter_context(open_within(content, self.max_pixels, LIMIT_KEY))
        except ImageTooLarge as e:
            raise DataError(f"{path}: {e}. Shrink or remove the image (with its label map), "
                            f"or raise {LIMIT_KEY} in the config") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise DataError(f"{path} cannot be read as an image ({type(e).__name__}: {e}): "
                            f"repair or remove it, with its label map or image") from None
        with opened:
            yield image

    def transform(self, results: dict) -> dict:
        path = results["img_path"]
        content = fileio.get(path, backend_args=self.backend_args)
        with self._opened(path, content) as image:
            label = results.get("seg_map_path")
            if label:
                with self._opened(label, fileio.get(label, backend_args=self.backend_args)) as seg:
                    if seg.size != image.size:
                        raise DataError(size_mismatch(path, image, seg.size,
                                                      f"its label map {label}"))
            annotated = (results.get("width"), results.get("height"))
            if None not in annotated and tuple(annotated) != image.size:
                raise DataError(size_mismatch(path, image, annotated,
                                              f"image {results.get('img_id', '?')} in its "
                                              f"annotations"))
        img = mmcv.imfrombytes(content, flag=self.color_type, backend=self.imdecode_backend)
        if img is None:
            raise DataError(f"{path} cannot be decoded: repair or remove it (with its label map)")
        if self.to_float32:
            img = img.astype(np.float32)
        results.update(img=img, img_shape=img.shape[:2], ori_shape=img.shape[:2])
        return results


@HOOKS.register_module()
class KdclMetricsHook(Hook):
    """Keeps the metrics of the last validation (as the evaluator names them) and the number of
    images it went through, for the record."""

    priority = "LOWEST"

    def __init__(self):
        self.metrics: dict = {}
        self.images = 0

    def before_val(self, runner) -> None:
        # Several CPU processes gather results through files: in the run folder (mmengine's
        # default is `.dist_test/` in the working directory, left behind).
        for metric in runner.val_evaluator.metrics:
            if metric.collect_device == "cpu" and metric.collect_dir is None:
                metric.collect_dir = str(Path(runner.work_dir) / ".collect")

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.metrics = dict(metrics or {})
        self.images = len(runner.val_dataloader.dataset)


@HOOKS.register_module()
class StopOnNonFiniteLoss(Hook):
    """Stops at the first NaN/inf training loss, before a checkpoint of that iteration is saved
    (CheckpointHook runs after it). The loss is already a host number for mmengine's log, so
    the check adds no device wait; on several processes the ranks agree (one all-reduce), so
    none is left waiting in the next step's. `loss` names it in the message."""

    priority = "HIGH"

    def __init__(self, loss: str = "training"):
        self.loss = loss

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        import torch

        from kdcl_common.distributed import earliest_across_ranks

        loss = (outputs or {}).get("loss")
        if loss is None:
            return
        finite = torch.isfinite(torch.as_tensor(loss).detach()).all()
        bad = int(earliest_across_ranks(torch.where(finite, -1, runner.iter).long()))
        if bad < 0:
            return
        from .config import checkpoints

        saved = checkpoints(Path(runner.work_dir))
        kept = (f"the last checkpoint, {saved[-1]}, is kept" if saved
                else "no checkpoint had been written yet")
        raise NonFiniteLossError(f"the {self.loss} loss became NaN/inf at iteration "
                                 f"{bad + 1} of {runner.max_iters}; training stopped "
                                 f"and {kept}. {RECOVERY_ADVICE}")


def _plain(value):
    """numpy scalars and arrays -> Python numbers and lists, recursively."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return type(value)((k, _plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


@HOOKS.register_module()
class PlainCheckpointHook(Hook):
    """mmengine 0.10 stores its log buffers in checkpoints as HistoryBuffer objects (numpy
    arrays, and bound methods pickled through `getattr`), which torch.load(weights_only=True),
    torch's default since 2.6, refuses; allowing them would mean allowing `getattr`. This hook
    stores them as plain lists and numbers and rebuilds the buffers when a checkpoint is loaded,
    so a run resumes with weights_only on."""

    priority = "LOWEST"
    TAG = "kdcl_history_buffer"

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        hub = checkpoint.get("message_hub")
        if hub:
            hub["log_scalars"] = {
                key: {self.TAG: True, "log": buffer._log_history.tolist(),
                      "count": buffer._count_history.tolist(), "max_length": buffer.max_length}
                for key, buffer in hub["log_scalars"].items()}
            hub["runtime_info"] = _plain(hub["runtime_info"])
        checkpoint["meta"] = _plain(checkpoint.get("meta", {}))

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        from mmengine.logging import HistoryBuffer

        hub = checkpoint.get("message_hub") or {}
        for key, value in list(hub.get("log_scalars", {}).items()):
            if isinstance(value, dict) and value.get(self.TAG):
                hub["log_scalars"][key] = HistoryBuffer(value["log"], value["count"],
                                                        value["max_length"])


@HOOKS.register_module()
class ExactResume(Hook):
    """mmengine's resume restores the weights, optimiser, schedulers and iteration and replays
    the data loader up to that iteration (the sampler's position and the augmentations, drawn
    in the data workers or, with none, in the main process), but not the torch generator of
    the training processes: the resumed iterations drew the dropout masks of the first ones (a
    run killed at iteration 14 of 30 recorded mIoU 31.83 against 32.14). This hook seeds that
    generator at every iteration from (seed, iteration, rank), as the pre-training engine does
    per epoch, so an iteration's masks are the same however the run got there, on any number
    of processes, with nothing to save: on a CPU with deterministic kernels a resumed run ends
    with the uninterrupted run's weights. It also carries the training time across resumes in
    the checkpoint: `wall_seconds` sums the processes (each up to its last checkpoint, since a
    resumed run repeats what came after it)."""

    priority = "VERY_HIGH"
    KEY = "kdcl_resume"

    def __init__(self, seed: int):
        self.seed = seed
        self.started = time.perf_counter()
        self.before = 0.0  # the training time of the processes before this one

    @property
    def wall_seconds(self) -> float:
        return self.before + time.perf_counter() - self.started

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        torch.manual_seed(sample_seed(self.seed, runner.iter, get_dist_info()[0], 1))

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[self.KEY] = {"wall_seconds": self.wall_seconds}  # the main process's

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self.before = (checkpoint.get(self.KEY) or {}).get("wall_seconds", 0.0)


@HOOKS.register_module()
class ConsoleProgress(Hook):
    """The run's progress on the project's console (kdcl_common.logs.Progress), at least
    `interval` iterations apart; mmengine's own lines go to log.txt."""

    priority = "BELOW_NORMAL"

    def __init__(self, interval: int = 50):
        self.interval = interval
        self.logger = logging.getLogger(LOGGER)
        self.progress = None

    def before_train(self, runner) -> None:
        rank, world = get_dist_info()
        loader = runner.train_dataloader  # mmdet's batches come from a batch sampler
        batch = (loader.batch_size or loader.batch_sampler.batch_size) * world
        self.progress = Progress(self.logger, runner.max_iters, done=runner.iter, rank=rank,
                                 interval=self.interval, images_per_step=batch)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        loss = (outputs or {}).get("loss")
        lr = runner.optim_wrapper.get_lr()
        self.progress.update(runner.iter + 1,
                             loss=None if loss is None else float(torch.as_tensor(loss).detach()),
                             lr=next(iter(lr.values()))[0] if lr else None)

    def after_train(self, runner) -> None:
        self.progress.close()

    def before_val(self, runner) -> None:
        self.logger.info(f"evaluating on {len(runner.val_dataloader.dataset)} images")


class QuietRunner(Runner):
    """mmengine's Runner, logging to the run's log.txt (with the project's lines) and, unless
    verbose, not to the console: its environment dump, config, hook table and per-class tables
    stay in the file."""

    def build_logger(self, log_level="INFO", log_file=None, **kwargs):
        logger = super().build_logger(log_level, log_file or str(Path(self.work_dir) / "log.txt"),
                                      **kwargs)
        drop_console_handlers(logger)
        return logger


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend, writing through a temporary file and a rename."""

    def put(self, obj: bytes, filepath) -> None:
        atomic_write_bytes(filepath, obj)

    def put_text(self, obj: str, filepath, encoding: str = "utf-8") -> None:
        atomic_write_bytes(filepath, obj.encode(encoding))


def use_atomic_local_writes() -> None:
    import mmengine.fileio.io as fileio

    register_backend("local", AtomicLocalBackend, force=True, prefixes="")
    fileio.backend_instances.clear()  # drop cached instances of the plain backend
