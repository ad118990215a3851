"""The run-folder lock (kdcl_common/locks.py) between processes on one host: a live holder is
named, a dead one is taken over, and a lock file caught between its creation and its content
(the race two concurrent submissions hit) is read again rather than crashing."""
import json
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace

import pytest

from kdcl_common.locks import Holder, LockedError, RunLock, _start_time


@pytest.fixture
def other_process():
    """A live process on this host that is not this one."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def holder_of(pid: int) -> Holder:
    return replace(Holder.me(), pid=pid, pid_start=_start_time(pid), command="other")


def test_a_live_holder_is_named(tmp_path, other_process):
    lock = RunLock(tmp_path / "run")
    lock.path.write_text(json.dumps(asdict(holder_of(other_process.pid))))
    with pytest.raises(LockedError, match=f"in use by another run .*pid {other_process.pid}"):
        lock.acquire()


def test_a_lock_file_not_yet_written_is_read_again(tmp_path, other_process):
    """The other process has created the file (O_EXCL) but not yet written who it is."""
    lock = RunLock(tmp_path / "run")
    lock.path.write_text("")
    writer = threading.Timer(0.2, lambda: lock.path.write_text(
        json.dumps(asdict(holder_of(other_process.pid)))))
    writer.start()
    try:
        with pytest.raises(LockedError, match=f"pid {other_process.pid}"):
            lock.acquire()
    finally:
        writer.join()


def test_a_dead_holders_lock_is_taken_over_and_said(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    said = []
    lock = RunLock(tmp_path / "run", log=said.append)
    lock.path.write_text(json.dumps(asdict(holder_of(proc.pid))))
    with lock:
        assert json.loads(lock.path.read_text())["token"] == lock.holder.token
    assert said and f"its process {proc.pid} has ended" in said[0]
    assert not lock.path.exists()


def test_a_waiting_lock_takes_the_folder_once_the_holder_is_done(tmp_path, other_process):
    lock = RunLock(tmp_path / "run", wait=10)
    lock.path.write_text(json.dumps(asdict(holder_of(other_process.pid))))
    threading.Timer(0.5, lock.path.unlink).start()
    started = time.monotonic()
    with lock:
        assert time.monotonic() - started < 5
