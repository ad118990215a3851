"""Logging on rank 0: a console/file logger, a tqdm bar that stays quiet off a TTY,
and the per-run metrics sinks (JSONL + TensorBoard)."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")


FORMAT = logging.Formatter("[%(asctime)s %(name)s] %(message)s", "%H:%M:%S")


class _Held(logging.Handler):
    """Keeps the records logged before the run folder may be written, for its log.txt."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def get_logger(name: str, rank: int = 0) -> logging.Logger:
    """Rank 0 logs INFO to stderr; other ranks log only warnings and errors. What is logged
    before `attach_file` is held and written to the file when it is attached: a run's checks
    log before its folder may be written (kdcl_common/runs.py)."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(FORMAT)
    logger.addHandler(console)
    if rank == 0:
        logger.addHandler(_Held())
    return logger


def attach_file(logger: logging.Logger, log_file: Path) -> None:
    """Log to `log_file` (appending) from now on, starting with what was held."""
    handler = logging.FileHandler(log_file)
    handler.setFormatter(FORMAT)
    for held in [h for h in logger.handlers if isinstance(h, _Held)]:
        for record in held.records:
            handler.handle(record)
        logger.removeHandler(held)
    logger.addHandler(handler)


def progress(iterable: Iterable[T], rank: int = 0, **kwargs) -> Iterable[T]:
    """tqdm on rank 0 when stderr is a terminal; the bare iterable otherwise."""
    if rank != 0 or not sys.stderr.isatty():
        return iterable
    return tqdm(iterable, dynamic_ncols=True, leave=False, **kwargs)


class MetricsWriter:
    """Scalars to `metrics.jsonl` (one JSON object per call) and TensorBoard, on rank 0."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: rank 0 only
            self._tb = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, kind: str, step: int, scalars: dict, **extra) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"kind": kind, "step": step, **extra, **scalars}) + "\n")
        for key, value in scalars.items():
            if isinstance(value, (int, float)):
                self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
