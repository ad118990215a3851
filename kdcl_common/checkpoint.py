"""Run checkpoints of this project's own engines (pre-training, the torchvision transfer
backend): one file, written atomically after every epoch, read back with weights_only=True.
What may be resumed, and with which config, is kdcl_common/runs.py's policy."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import KdclError
from .io import DiskFullError, atomic_torch_save, load_tensors


@dataclass(frozen=True)
class RunCheckpoints:
    format: str  # written into every checkpoint and checked on load
    filename: str = "checkpoint.pth"

    def path(self, run_dir: Path) -> Path:
        return Path(run_dir) / self.filename

    def exists(self, run_dir: Path) -> bool:
        return self.path(run_dir).is_file()

    def save(self, run_dir: Path, state: dict) -> Path:
        target = self.path(run_dir)
        try:
            atomic_torch_save({"format": self.format, **state}, target)
        except DiskFullError as e:
            previous = state.get("epoch", 1) - 1
            kept = (f"The previous checkpoint (after epoch {previous}) is intact" if previous
                    else "No checkpoint had been written yet")
            raise DiskFullError(target, f"{kept}: free some space, then run the same command "
                                f"with --resume.") from e
        return target

    def load(self, run_dir: Path) -> dict:
        """The last checkpoint of `run_dir`."""
        target = self.path(run_dir)
        try:
            state = load_tensors(target, "checkpoint")  # our format: tensors and containers
        except KdclError as e:
            raise KdclError(f"{e}. Use --restart to archive the run and start it again.") from None
        if not isinstance(state, dict) or state.get("format") != self.format:
            raise KdclError(f"{target} is not a {self.format} checkpoint")
        return state
