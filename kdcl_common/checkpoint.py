"""Run checkpoints, the same policy for every stage: written atomically (once per epoch),
resumed with `--resume`, which refuses a config that differs from the run's own."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import ConfigError, KdclError
from .config import config_diff, load_yaml
from .io import atomic_torch_save


@dataclass(frozen=True)
class RunCheckpoints:
    format: str  # written into every checkpoint and checked on load
    finished_marker: str  # a file, relative to the run directory, written last by a finished run
    resumable_keys: tuple[str, ...]  # config keys that may change on resume
    filename: str = "checkpoint.pth"

    def path(self, run_dir: Path) -> Path:
        return run_dir / self.filename

    def is_finished(self, run_dir: Path) -> bool:
        return (run_dir / self.finished_marker).is_file()

    def save(self, run_dir: Path, state: dict) -> Path:
        target = self.path(run_dir)
        atomic_torch_save({"format": self.format, **state}, target)
        return target

    def load(self, run_dir: Path, config: dict) -> dict:
        """The last checkpoint of `run_dir`, checked against `config`."""
        target = self.path(run_dir)
        try:
            # Our own format holds only tensors and plain containers: weights_only suffices.
            state = torch.load(target, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
            raise KdclError(f"cannot read the checkpoint {target} ({type(e).__name__}: {e}); "
                            f"delete it to start the run again") from None
        if state.get("format") != self.format:
            raise KdclError(f"{target} is not a {self.format} checkpoint")
        self._check(run_dir, state["config"], config)
        return state

    def check_finished_config(self, run_dir: Path, config: dict) -> None:
        """A finished run is only 'resumed' (a no-op) with the config it was run with."""
        saved = load_yaml((run_dir / "config.yaml").read_text())
        self._check(run_dir, saved, config)

    def _check(self, run_dir: Path, saved: dict, config: dict) -> None:
        diff = config_diff(saved, config, ignore=self.resumable_keys)
        if diff:
            raise ConfigError(
                f"refusing to resume {run_dir}: its config differs from this one\n"
                + "\n".join(diff)
                + f"\nResume with the original config (saved in {run_dir / 'config.yaml'}), or "
                  f"start a separate run with name=<new name>. Only "
                  f"{', '.join(self.resumable_keys)} may change.")

    def check_run_dir(self, run_dir: Path, resume: bool) -> str:
        """What to do with `run_dir`: 'finished', 'resume' or 'start'."""
        if self.is_finished(run_dir):
            if resume:
                return "finished"
            raise KdclError(f"{run_dir} holds a finished run. Start another one with "
                            f"name=<new name> or seed=<n>, or delete it.")
        if self.path(run_dir).is_file():
            if resume:
                return "resume"
            raise KdclError(f"{run_dir} holds the checkpoint of an unfinished run: pass --resume "
                            f"to continue it, or start another one with name=<new name>.")
        return "start"
