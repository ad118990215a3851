"""Where a transfer run lives: `<output root>/<config name>/<backbone id>/seed<n>/`.

Standard library only: `run_all.sh` (chain/plan.py) finds a step's run folder with it before the
environment exists.
"""
from __future__ import annotations

import os
from pathlib import Path

CONFIG_ROOT = Path(__file__).resolve().parent / "configs"


def config_name(path: str | os.PathLike) -> str:
    """A config's name: its path under transfer/configs without the suffix
    (`torchvision/smoke_faster_rcnn_fpn`, `mmseg/sem-fpn_r18_smoke`), else its file name."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(CONFIG_ROOT).with_suffix(""))
    except ValueError:
        return path.stem


def backbone_id(meta: dict, path: str | os.PathLike) -> str:
    """A readable folder name for an exported backbone: `<pretrain config>-seed<n>-<student>`
    (`smoke-kdcl_minlogit-seed0-resnet18`) from its metadata, else `<file stem>-<sha256[:8]>`.
    The name says where the weights come from; which weights they are is recorded in the run
    folder's run.json (kdcl_common/runs.py)."""
    if meta.get("config_name") and meta.get("name"):
        return f"{meta['config_name'].replace('/', '-')}-seed{meta.get('seed', 0)}-{meta['name']}"
    return f"{Path(path).stem}-{str(meta.get('sha256', ''))[:8]}"


def run_dir(output_root: str | os.PathLike, name: str, meta: dict, backbone: str | os.PathLike,
            seed: int) -> Path:
    return Path(output_root) / name / backbone_id(meta, backbone) / f"seed{seed}"
