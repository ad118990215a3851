"""Checkpoints: written atomically after every epoch; `--resume` continues from the last one
and refuses a config that differs from the one the run started with."""
from __future__ import annotations

from pathlib import Path

import torch
import yaml

from kdcl_common import ConfigError, KdclError
from kdcl_common.config import config_diff
from kdcl_common.io import atomic_torch_save

from .config import RESUMABLE_KEYS

FORMAT = "kdcl-bench/pretrain-checkpoint-v1"
CHECKPOINT = "checkpoint.pth"
MANIFEST = "export/manifest.json"


def path(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT


def is_finished(run_dir: Path) -> bool:
    return (run_dir / MANIFEST).is_file()


def save(run_dir: Path, state: dict) -> Path:
    target = path(run_dir)
    atomic_torch_save({"format": FORMAT, **state}, target)
    return target


def _refuse(run_dir: Path, diff: list[str]) -> ConfigError:
    return ConfigError(
        f"refusing to resume {run_dir}: its config differs from this one\n" + "\n".join(diff)
        + f"\nResume with the original config (saved in {run_dir / 'config.yaml'}), or start a "
          f"separate run with name=<new name>. Only {', '.join(RESUMABLE_KEYS)} may change.")


def load(run_dir: Path, config: dict) -> dict:
    """The last checkpoint of `run_dir`, checked against `config`."""
    target = path(run_dir)
    try:
        # Our own format holds only tensors and plain containers: weights_only suffices.
        state = torch.load(target, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise KdclError(f"cannot read the checkpoint {target} ({type(e).__name__}: {e}); "
                        f"delete it to start the run again") from None
    if state.get("format") != FORMAT:
        raise KdclError(f"{target} is not a kdcl-bench pre-training checkpoint")
    diff = config_diff(state["config"], config, ignore=RESUMABLE_KEYS)
    if diff:
        raise _refuse(run_dir, diff)
    return state


def check_finished_config(run_dir: Path, config: dict) -> None:
    """A finished run is only 'resumed' (a no-op) with the config it was run with."""
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    diff = config_diff(saved, config, ignore=RESUMABLE_KEYS)
    if diff:
        raise _refuse(run_dir, diff)


def check_run_dir(run_dir: Path, resume: bool) -> str:
    """What to do with `run_dir`: 'finished', 'resume' or 'start'."""
    if is_finished(run_dir):
        if resume:
            return "finished"
        raise KdclError(f"{run_dir} holds a finished run (exports in {run_dir / 'export'}). "
                        f"Start another one with name=<new name> or seed=<n>, or delete it.")
    if path(run_dir).is_file():
        if resume:
            return "resume"
        raise KdclError(f"{run_dir} holds the checkpoint of an unfinished run: pass --resume to "
                        f"continue it, or start another one with name=<new name>.")
    return "start"
