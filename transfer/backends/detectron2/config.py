"""Detectron2 configs: Detectron2's own YAML and CfgNode, with two additions.

- `_BASE_` names either a file beside the config or a Detectron2 model-zoo config
  (`COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml`), which is read from the installed detectron2
  package: the project's configs are deltas on the model zoo, never copies of it.
- The config gains the keys of the MobileNetV2 backbone (MODEL.MOBILENET_V2) and of this
  project (KDCL: where the data is, where results go).
"""
from __future__ import annotations

from pathlib import Path

import yaml
from detectron2 import model_zoo
from detectron2.config import CfgNode, get_cfg

from kdcl_common import ConfigError
from kdcl_common.config import read_text, safe_load_yaml
from kdcl_common.images import MAX_PIXELS, check_limit

from . import mobilenet

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"


def add_kdcl_config(cfg: CfgNode) -> None:
    cfg.KDCL = CfgNode()
    cfg.KDCL.DATA_ROOT = ""  # the COCO 2017 root; empty: the COCO_ROOT environment variable
    cfg.KDCL.SYNTHETIC = False  # generate the smoke scene set at DATA_ROOT when it is missing
    cfg.KDCL.TRAIN_SPLIT = "train2017"
    cfg.KDCL.VAL_SPLIT = "val2017"
    cfg.KDCL.PROTOCOL = ""
    cfg.KDCL.PRESET = "custom"
    cfg.KDCL.OUTPUT_ROOT = "runs/transfer"
    cfg.KDCL.RECORDS = "results/records"
    cfg.KDCL.KEEP_CHECKPOINTS = 2  # periodic checkpoints kept (model_final.pth is always kept)
    cfg.KDCL.MAX_IMAGE_PIXELS = MAX_PIXELS  # images annotated larger are refused before training


def default_config() -> CfgNode:
    cfg = get_cfg()
    mobilenet.add_config(cfg)
    add_kdcl_config(cfg)
    return cfg


def _merge_file(cfg: CfgNode, path: Path, seen: tuple[Path, ...] = ()) -> None:
    if path in seen:
        raise ConfigError(f"circular _BASE_ chain: {' -> '.join(map(str, (*seen, path)))}")
    try:
        data = safe_load_yaml(read_text(path), str(path)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, not "
                          f"{type(data).__name__}")
    base = data.pop("_BASE_", None)
    if base is not None and (not isinstance(base, str) or not base):
        raise ConfigError(f"{path}: _BASE_: {base!r} must name one config: a file beside it or "
                          f"a Detectron2 model-zoo config (e.g. _BASE_: _paper14ep_syncbn.yaml)")
    if base is not None:
        local = (path.parent / base).resolve()
        if local.is_file():
            _merge_file(cfg, local, (*seen, path))
        else:
            try:
                zoo = model_zoo.get_config_file(base)
            except RuntimeError:
                raise ConfigError(f"{path}: _BASE_ {base!r} is neither a file beside it nor a "
                                  f"Detectron2 model-zoo config") from None
            cfg.merge_from_file(zoo)  # Detectron2 resolves the zoo file's own bases
    try:
        cfg.merge_from_other_cfg(CfgNode(data))
    except (KeyError, ValueError, AssertionError) as e:
        raise ConfigError(f"{path}: {e}") from None


def load(path: str | Path, overrides: list[str] = ()) -> CfgNode:
    """The config at `path` with `KEY=VALUE` overrides (Detectron2's own keys)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    cfg = default_config()
    _merge_file(cfg, path)
    pairs = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form KEY=VALUE "
                              f"(e.g. SOLVER.BASE_LR=0.02)")
        pairs += [key, value]
    try:
        cfg.merge_from_list(pairs)
    except (KeyError, ValueError, AssertionError) as e:
        raise ConfigError(f"override: {e}") from None
    if (problem := check_limit(cfg.KDCL.MAX_IMAGE_PIXELS, "KDCL.MAX_IMAGE_PIXELS")):
        raise ConfigError(problem)
    return cfg


def name_of(path: str | Path) -> str:
    path = Path(path).resolve()
    try:
        return str(path.relative_to(CONFIG_ROOT).with_suffix(""))
    except ValueError:
        return path.stem
