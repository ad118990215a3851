"""One writer per run folder: a lock file beside the folder, held while a command may write it.

Design: the lock is a file created with O_CREAT | O_EXCL, which is atomic on local file systems
and on NFSv3+, Lustre and GPFS, and which holds its holder's identity (host, pid and the pid's
start time, SLURM job id, command, when it started) and a random token; its modification time
is a heartbeat, refreshed every HEARTBEAT seconds by a thread of the holder. flock and fcntl
locks are not used: NFS clients emulate flock as whole-file fcntl locks, Lustre needs its
`flock` mount option, and on some NFS, Lustre and GPFS mounts flock silently succeeds for
everyone. The lock sits beside the run folder (`<folder>.lock`), so that --restart's rename of
the folder does not move it.

A second command is refused before it writes anything, with the holder named. A lock whose
holder is certainly dead is taken over, and the log says so:
  - on the same host, its pid is gone (or is another process: the start time differs);
  - it was held by this SLURM job's run before the job was requeued (SLURM runs one at a
    time), or by a SLURM job that squeue no longer lists as running;
  - otherwise (another host) its heartbeat stopped more than STALE_AFTER seconds ago, measured
    in the file server's clock (a file touched now beside it), so clock skew does not matter.
A takeover is itself serialised by a second O_EXCL file, so two contenders cannot both win.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import KdclError

HEARTBEAT = 30.0  # seconds between heartbeats
STALE_AFTER = float(os.environ.get("KDCL_LOCK_STALE_SECONDS", 600))  # silent this long: dead
TAKEOVER_STALE = 60.0  # a takeover marker older than this was left by a killed contender


class LockedError(KdclError):
    """Another live process holds the run folder."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    pid_start: str | None
    job: str | None        # SLURM job id, if any
    restarts: str | None   # SLURM_RESTART_COUNT: which run of a requeued job
    command: str
    started: str
    token: str

    @classmethod
    def me(cls) -> "Holder":
        return cls(socket.gethostname(), os.getpid(), _start_time(os.getpid()),
                   os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_RESTART_COUNT", "0"),
                   " ".join(sys.argv)[:500],
                   time.strftime("%Y-%m-%dT%H:%M:%S%z"), secrets.token_hex(8))

    def describe(self) -> str:
        job = f", SLURM job {self.job}" if self.job else ""
        return f"host {self.host}, pid {self.pid}{job}, since {self.started} ({self.command})"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), which tells a live pid
    apart from a reused one."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _server_now(folder: Path) -> float:
    """Now, in the clock of the file system that holds `folder` (a new file's mtime)."""
    fd, name = tempfile.mkstemp(prefix=".clock.", dir=folder)
    try:
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)
        os.unlink(name)


def _job_running(job: str) -> bool | None:
    """Whether SLURM still runs job `job` (None: no SLURM here to ask)."""
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:  # "Invalid job id specified": ended long ago
        return False if "Invalid job id" in out.stderr else None
    return bool(out.stdout.strip())


class RunLock:
    """`with RunLock(folder, what):` holds `<folder>.lock` for the block."""

    def __init__(self, folder: str | os.PathLike, log=None, wait: float = 0.0):
        self.folder, self.wait = Path(folder), wait  # wait: seconds to wait for a live holder
        self.path = self.folder.with_name(self.folder.name + ".lock")
        self.log = log or (lambda message: None)
        self.holder: Holder | None = None
        self._made: list[Path] = []  # folders acquire() made, removed again if left empty
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------------------------- taking
    def _create(self, holder: Holder) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(holder), f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _read(self) -> tuple[Holder | None, float | None]:
        try:
            stat = self.path.stat()
            data = json.loads(self.path.read_text())
            return Holder(**data), stat.st_mtime
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError, TypeError):  # half-written by a holder killed at once
            try:
                return None, self.path.stat().st_mtime
            except FileNotFoundError:
                return None, None

    def _dead(self, holder: Holder | None, beat: float) -> str | None:
        """Why the holder is certainly dead, or None."""
        me = Holder.me()
        if holder is None:
            if _server_now(self.path.parent) - beat > TAKEOVER_STALE:
                return "an unreadable lock file, untouched for over a minute"
            return None
        if holder.job and holder.job == me.job and holder.restarts != me.restarts:
            return f"it was this SLURM job's run before it was requeued (job {holder.job})"
        if holder.host == me.host:
            try:
                os.kill(holder.pid, 0)
            except ProcessLookupError:
                return f"its process {holder.pid} has ended"
            except PermissionError:
                pass
            if holder.pid_start and _start_time(holder.pid) != holder.pid_start:
                return f"its process {holder.pid} has ended (the pid is another process now)"
            return None
        if holder.job and _job_running(holder.job) is False:
            return f"its SLURM job {holder.job} is no longer running"
        silent = _server_now(self.path.parent) - beat
        if silent > STALE_AFTER:
            return f"its heartbeat stopped {silent:.0f} s ago"
        return None

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait
        while True:
            try:
                return self._acquire()
            except LockedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def _acquire(self) -> None:
        self._made = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = Holder.me()
        for _ in range(20):
            if self._create(me):
                self._hold(me)
                return
            holder, beat = self._read()
            if beat is None:
                continue  # released meanwhile: try again
            why = self._dead(holder, beat)
            if why is None and holder is None:
                # created this instant by another process, which writes its identity next
                # (O_EXCL first, then the content): read it again in a moment
                time.sleep(0.05)
                continue
            if why is None:
                raise LockedError(
                    f"{self.folder} is in use by another run ({holder.describe()}): two "
                    f"processes must not write one run folder. Wait for it to finish, or stop "
                    f"it; a lock whose holder has died is taken over automatically "
                    f"({self.path}).")
            if self._take_over(holder, me, why):
                return
            time.sleep(0.5)
        raise LockedError(f"could not take the lock {self.path}: other processes keep "
                          f"contending for {self.folder}")

    def _take_over(self, stale: Holder | None, me: Holder, why: str) -> bool:
        marker = self.path.with_name(self.path.name + ".takeover")
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            try:
                if _server_now(marker.parent) - marker.stat().st_mtime > TAKEOVER_STALE:
                    marker.unlink(missing_ok=True)  # left by a contender that was killed
            except FileNotFoundError:
                pass
            return False
        os.close(fd)
        try:
            current, _ = self._read()
            if current != stale:  # someone else took it over and holds it now
                return False
            self.path.unlink(missing_ok=True)
            if not self._create(me):
                return False
        finally:
            marker.unlink(missing_ok=True)
        self.log(f"took over the lock of {self.folder} from a dead holder "
                 f"({stale.describe() if stale else 'unknown'}): {why}")
        self._hold(me)
        return True

    # ------------------------------------------------------------------------------- holding
    def _hold(self, me: Holder) -> None:
        self.holder = me
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                os.utime(self.path)  # the server's time on NFS (a setattr to server time)
            except OSError:
                pass

    def release(self) -> None:
        if self.holder is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        current, _ = self._read()
        if current is not None and current.token == self.holder.token:
            self.path.unlink(missing_ok=True)
        self.holder = None
        for folder in self._made:  # deepest first; a folder that holds anything stays
            try:
                folder.rmdir()
            except OSError:
                break

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
