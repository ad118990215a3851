"""Stopping a training run where it is, on a signal, with a checkpoint of the current step.

SLURM sends SIGTERM at a time limit or on preemption (then SIGKILL after KillWait, 30 s by
default); the chain's job wrapper turns SLURM's early warning (--signal=B:USR1@<s>) into SIGTERM
for the training processes; torchrun forwards INT, TERM, HUP and QUIT to its workers, and a
terminal's Ctrl-C is SIGINT. Each of these (and USR1/USR2, whose default action would kill the
process without a checkpoint) only *asks* the run to stop: the training loop looks at the
request between steps, the ranks agree on it, the main process writes a checkpoint of the
current step, and the command exits with 128 + the signal's number after saying how to resume.
A second Ctrl-C stops at once (KeyboardInterrupt).
"""
from __future__ import annotations

import signal
import threading

from . import KdclError

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


class Stopped(KdclError):
    """The run stopped on a signal after writing a checkpoint of the step it had reached."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """Records the first stop signal; `signum` is None until one arrives."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # handlers live there only
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
