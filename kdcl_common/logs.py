"""Logging on rank 0: a console/file logger, a tqdm bar that stays quiet off a TTY,
the per-run metrics sinks (JSONL + TensorBoard), and the console every transfer backend
shares: the project's lines on the console, a framework's own output in the run's log.txt
unless `--verbose` or KDCL_VERBOSE=1 asks for it there too."""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

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


# --------------------------------------------------------------------- one console for all
VERBOSE = "KDCL_VERBOSE"  # 1: a framework's own console output is shown too
PROJECT = tuple(str(Path(__file__).resolve().parents[1] / d) + os.sep for d in
                ("kdcl_common", "pretrain", "transfer", "results", "chain"))  # our warnings


def verbose() -> bool:
    """Whether frameworks keep their own console output (--verbose sets KDCL_VERBOSE=1, which
    the processes a run starts inherit)."""
    return os.environ.get(VERBOSE, "").strip().lower() in ("1", "true", "yes", "on")


def line(head: str, **fields) -> str:
    """One console line: 'head | name value | ...'; None values are left out."""
    def text(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    return " | ".join([head, *(f"{k} {text(v)}" for k, v in fields.items() if v is not None)])


def metrics_text(metrics: dict) -> str:
    """'mIoU 31.83, mAcc 40.1' for the metrics of a result."""
    return ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in metrics.items())


class Progress:
    """Training progress on the main process's console, the same for every backend: a tqdm bar
    when stderr is a terminal, otherwise a plain line through `logger` every `interval` steps
    (about `lines` of them per run) and at the last step. Scalars are averaged over the steps
    since the last line."""

    def __init__(self, logger: logging.Logger, total: int, done: int = 0, rank: int = 0,
                 interval: int = 1, lines: int = 20, desc: str = "iter",
                 images_per_step: int | None = None):
        self.logger, self.total, self.desc, self.rank = logger, total, desc, rank
        self.interval = max(interval, math.ceil(total / lines))
        self.images_per_step = images_per_step
        self.start, self.first = time.perf_counter(), done
        self.sums: dict[str, float] = {}
        self.count = 0
        self.bar = (tqdm(total=total, initial=done, desc=desc, dynamic_ncols=True, leave=False)
                     if rank == 0 and sys.stderr.isatty() else None)

    def update(self, done: int, **scalars) -> None:
        """`done` steps of `total` are done; `scalars` are this step's values."""
        if self.rank != 0:
            return
        for key, value in scalars.items():
            if value is not None:
                self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.count += 1
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items() if v is not None},
                                 refresh=False)
            return
        if done % self.interval and done != self.total:
            return
        seconds = time.perf_counter() - self.start
        rate = (done - self.first) / seconds if seconds > 0 else 0.0
        eta = dt.timedelta(seconds=round((self.total - done) / rate)) if rate else None
        self.logger.info(line(f"{self.desc} {done}/{self.total}",
                              **{k: v / self.count for k, v in self.sums.items()},
                              **{"img/s": f"{rate * self.images_per_step:.1f}"
                                 if self.images_per_step else None, "eta": eta}))
        self.sums, self.count = {}, 0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _console_streams(*more) -> tuple:
    return (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__, *more)


def drop_console_handlers(*loggers: logging.Logger | str, streams: tuple = ()) -> None:
    """Unless verbose(): remove the handlers that write these loggers to the console (or to
    `streams`); their file handlers stay."""
    if verbose():
        return
    console = _console_streams(*streams)
    for logger in loggers:
        logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        for handler in list(logger.handlers):
            if any(getattr(handler, "stream", None) is stream for stream in console):
                logger.removeHandler(handler)


@contextlib.contextmanager
def framework_output(log_file: Path, loggers: tuple[str, ...] = ("torch",)) -> Iterator[None]:
    """Unless verbose(): what a framework prints while the block runs goes to `log_file`
    (appended) instead of the console: its print()s, its warnings, and what `loggers` (torch's
    own, which has a console handler of its own) log. The project's warnings still show."""
    if verbose():
        yield
        return
    shown, console = warnings.showwarning, _console_streams()
    with open(log_file, "a", buffering=1) as sink:
        def show(message, category, filename, lineno, file=None, source=None):
            if str(Path(filename).resolve()).startswith(PROJECT):
                shown(message, category, filename, lineno, file, source)
            else:
                sink.write(warnings.formatwarning(message, category, filename, lineno, source))

        moved = [(h, h.setStream(sink)) for name in loggers
                 for h in logging.getLogger(name).handlers
                 if type(h) is logging.StreamHandler and any(h.stream is c for c in console)]
        warnings.showwarning = show
        try:
            with contextlib.redirect_stdout(sink):
                yield
        finally:
            warnings.showwarning = shown
            for handler, stream in moved:
                handler.setStream(stream)


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
