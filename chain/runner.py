"""Run one command as a child process group: the signals the runner receives are passed on to
the whole group (so a Ctrl-C or a scheduler's SIGTERM reaches the training processes, which
checkpoint and stop), an optional deadline kills the group, and the output can go to a log
whose last lines come back. Used by the local chain, the SLURM job wrapper and the acceptance
check. Standard library only."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


@dataclass
class Outcome:
    code: int | None      # the exit code (negative: killed by that signal); None: past deadline
    seconds: float
    tail: str = ""        # the log's last lines (when logged to a file)
    signalled: int | None = None  # the last signal passed on to the group, if any

    @property
    def ok(self) -> bool:
        return self.code == 0


@contextmanager
def _forwarding(pid: int, received: list[int], translate: dict[int, int]):
    """While the block runs, pass the signals in FORWARDED on to process group `pid`
    (`translate`: signal -> the one to send instead)."""
    def forward(signum, frame):
        received.append(signum)
        try:
            os.killpg(pid, translate.get(signum, signum))
        except ProcessLookupError:
            pass

    import threading

    if threading.current_thread() is not threading.main_thread():  # handlers live there only
        yield
        return
    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run(argv: list[str], env: dict | None = None, log: Path | None = None,
        deadline: float | None = None, translate: dict[int, int] | None = None,
        tail_lines: int = 15) -> Outcome:
    """Run `argv` in a new process group until it ends or `deadline` (time.monotonic()) is
    past, then kill the group. Output goes to `log` (appended) when given, else to ours.
    `translate` maps a received signal to the one the group gets (the SLURM job wrapper turns
    its early-warning USR1 into the SIGTERM the stages handle)."""
    start = time.monotonic()
    out = open(log, "a") if log is not None else None
    received: list[int] = []
    try:
        proc = subprocess.Popen(argv, env=env, stdout=out,
                                stderr=subprocess.STDOUT if out else None,
                                start_new_session=True)
        with _forwarding(proc.pid, received, translate or {}):
            while True:
                try:
                    timeout = None if deadline is None else max(deadline - time.monotonic(), 0.1)
                    code = proc.wait(timeout=timeout)
                    break
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)  # the stage's workers too
                    proc.wait()
                    code = None
                    break
    finally:
        if out is not None:
            out.close()
    tail = ""
    if log is not None:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-tail_lines:])
    return Outcome(code, time.monotonic() - start, tail, received[-1] if received else None)
