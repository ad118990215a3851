"""Where a result came from: git commit, library versions, devices, command line."""
from __future__ import annotations

import datetime as dt
import platform
import socket
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
# the libraries whose versions a record keeps (a transfer backend's own is there too: those
# installed are listed, by their distribution names)
LIBRARIES = ("torch", "torchvision", "numpy", "pillow", "omegaconf", "mmcv", "mmengine",
             "mmsegmentation", "mmdet", "detectron2", "pycocotools", "pandas")


@lru_cache(maxsize=1)
def git_info() -> dict:
    """Commit and dirty flag of the kdcl-bench checkout (None outside a git checkout)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": dirty}


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def device_names() -> list[str]:
    if torch.cuda.is_available():
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return [platform.processor() or platform.machine() or "cpu"]


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def environment(world_size: int = 1) -> dict:
    """Everything worth knowing about where a run happened."""
    return {
        "created": now(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "command": " ".join(sys.argv),
        "world_size": world_size,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "devices": device_names(),
        "cpu_threads": torch.get_num_threads(),
        "versions": library_versions(),
        **git_info(),
    }


def peak_memory_mb(device: torch.device) -> float:
    """The process's peak memory: allocated on the GPU, or the peak resident set on a CPU."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
