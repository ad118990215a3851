"""mmengine's Python configs as the mmengine backends read them: `_base_` inheritance (with
`mmseg::` / `mmdet::` bases read from the installed package), `key=value` overrides that must
name existing keys and keep their types, the bounded image loader in every pipeline, the SyncBN
fall-back, and the run folder's checkpoints."""
from __future__ import annotations

import ast
import difflib
import logging
from pathlib import Path

from kdcl_common import ConfigError
from kdcl_common.config import parse_overrides, read_text

from ..lifecycle import LOGGER

LOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")


def load(path: str | Path, overrides: list[str], backend: str, example: str):
    """The config at `path`, with `key=value` overrides that must name existing keys. `backend`
    and `example` (a `_base_` line of its configs) are for the messages."""
    from mmengine.config import Config

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    check_python_config(path, backend, example)
    try:
        cfg = Config.fromfile(str(path))
    except Exception as e:  # noqa: BLE001 - mmengine raises many types for a bad config
        raise ConfigError(f"{path}: {type(e).__name__}: {e}") from None
    for key, value in parse_overrides(list(overrides)):
        _check_type(key, _check_key(cfg.to_dict(), key), value)
        cfg.merge_from_dict({key: value}, allow_list_keys=True)
    load_images_as_stored(cfg)
    return cfg


def load_images_as_stored(cfg) -> None:
    """Every pipeline's LoadImageFromFile becomes LoadImageAsStored (hooks.py): sizes from the
    headers first, bounded by kdcl.max_image_pixels, and no EXIF rotation (README, Data)."""
    from kdcl_common.images import MAX_PIXELS, check_limit

    limit = cfg.get("kdcl", {}).get("max_image_pixels", MAX_PIXELS)
    if (problem := check_limit(limit, "kdcl.max_image_pixels")):
        raise ConfigError(problem)
    for loader in LOADERS:
        dataset = cfg.get(loader, {}).get("dataset", {})
        for step in dataset.get("pipeline", []):
            if step.get("type") in ("LoadImageFromFile", "LoadImageAsStored"):
                step["type"], step["max_pixels"] = "LoadImageAsStored", limit


def check_python_config(path: Path, backend: str, example: str) -> None:
    """What mmengine would fail on with a bare TypeError or SyntaxError, said with the fix: a
    file that is not Python text, and a `_base_` that names no files (mmengine evaluates the
    first `_base_ = ...` line)."""
    kind = (f"an {backend} config is a Python file like those in "
            f"transfer/configs/{backend}")
    try:
        tree = ast.parse(read_text(path, "Python"), str(path))
    except SyntaxError as e:
        raise ConfigError(f"{path}, line {e.lineno}, is not valid Python ({e.msg}): "
                          f"{kind}") from None
    except RecursionError:
        raise ConfigError(f"{path} is nested too deeply to parse: {kind}") from None
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id == "_base_":
            try:
                bases = ast.literal_eval(node.value)
            except ValueError:
                return  # an expression: mmengine evaluates it
            if isinstance(bases, str):
                bases = [bases]
            if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
                raise ConfigError(f"{path}, line {node.lineno}: _base_ = "
                                  f"{ast.unparse(node.value)[:60]} must name a config file or a "
                                  f"list of them, e.g. {example}")
            return


def _check_type(key: str, old, new) -> None:
    """A number stays a number and a flag a flag: `train_cfg.max_iters=ten` is refused here,
    not deep inside mmengine."""
    if isinstance(old, bool):
        if not isinstance(new, bool):
            raise ConfigError(f"{key}={new!r}: expected true or false (it is {old})")
    elif isinstance(old, (int, float)):
        if isinstance(new, bool) or not isinstance(new, (int, float)):
            kind = "an integer" if isinstance(old, int) else "a number"
            raise ConfigError(f"{key}={new!r}: expected {kind}, like its current value {old}")


def _check_key(tree: dict, dotted: str):
    """The value at `dotted`; a ConfigError naming the nearest key when there is none."""
    node, walked = tree, []
    for part in dotted.split("."):
        if isinstance(node, (list, tuple)):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"'{'.'.join(walked)}' is a list of {len(node)}: index it with "
                                  f"0..{len(node) - 1}")
            node = node[int(part)]
        elif isinstance(node, dict):
            if part not in node:
                near = difflib.get_close_matches(part, list(node), n=1, cutoff=0.5)
                hint = f" Did you mean '{'.'.join([*walked, near[0]])}'?" if near else ""
                raise ConfigError(f"unknown config key '{'.'.join([*walked, part])}'.{hint} "
                                  f"Valid keys here: {', '.join(sorted(map(str, node)))}")
            node = node[part]
        else:
            return None
        walked.append(part)
    return node


def fit_backbone(model, meta: dict, path: Path, backend: str,
                 mobilenet: str = "MobileNetV2") -> list[int]:
    """Check the backbone's architecture against `model.backbone` (a torchvision-style ResNet or
    the `mobilenet` type), set MobileNetV2's width and the input normalisation from the metadata;
    returns the channels of the four stages it outputs (transfer/families.py)."""
    from .. import families

    arch, kwargs = meta["architecture"], meta["constructor_kwargs"]
    backbone = model.backbone
    if backbone.type == "ResNet":
        wanted = f"resnet{backbone.depth}"
        if arch != wanted:
            raise ConfigError(f"{path} is a {arch} backbone, but the config builds a {wanted}: "
                              f"use a config for {arch}")
        if backbone.get("style") != "pytorch" or backbone.get("deep_stem", False):
            raise ConfigError(f"torchvision ResNets need {backend}'s ResNet(style='pytorch') "
                              f"without a deep stem")
    elif backbone.type == mobilenet:
        if arch != "mobilenet_v2":
            raise ConfigError(f"{path} is a {arch} backbone, but the config builds a "
                              f"MobileNetV2: use a config for {arch}")
        backbone.widen_factor = float(kwargs.get("width_mult", 1.0))
    else:
        raise ConfigError(f"model.backbone.type {backbone.type} is not one this project converts "
                          f"weights for (ResNet, {mobilenet})")
    pre = meta["preprocessing"]
    model.data_preprocessor.mean = list(pre["mean_255"])
    model.data_preprocessor.std = list(pre["std_255"])
    model.data_preprocessor.bgr_to_rgb = pre.get("color", "RGB") == "RGB"  # mmcv loads BGR
    return families.of(arch).channels(arch, kwargs)


def fall_back_from_syncbn(cfg, world_size: int, cuda: bool) -> None:
    """SyncBN needs several CUDA processes: BN otherwise, said once."""
    if world_size > 1 and cuda:
        return
    changed = []

    def visit(node, where):
        if isinstance(node, dict):
            if node.get("type") == "SyncBN":
                node["type"] = "BN"
                changed.append(where)
            for key, value in node.items():
                visit(value, f"{where}.{key}")
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                visit(value, f"{where}.{i}")

    visit(cfg.model, "model")
    if changed:
        where = "on the CPU" if not cuda else "in a single process"
        logging.getLogger(LOGGER).warning(f"SyncBN has no effect {where}: using BN "
                                          f"({len(changed)} norm configs)")


# ------------------------------------------------------------------------------- run folders
def checkpoints(work_dir: Path) -> list[Path]:
    """mmengine's checkpoints in `work_dir`, oldest first (each written atomically)."""
    return sorted(Path(work_dir).glob("iter_*.pth"), key=lambda p: int(p.stem.split("_")[1]))


def last_checkpoint(work_dir: Path) -> Path | None:
    """The newest whole checkpoint. mmengine resumes from the file `last_checkpoint` names:
    a kill between a checkpoint and its pointer leaves the pointer stale, so it is rewritten
    (call only where the run folder may be written)."""
    from kdcl_common.io import atomic_write_text

    pointer = work_dir / "last_checkpoint"
    if pointer.is_file() and Path(pointer.read_text().strip()).is_file():
        return Path(pointer.read_text().strip())
    found = checkpoints(work_dir)
    if not found:
        return None
    atomic_write_text(pointer, str(found[-1]))
    return found[-1]
