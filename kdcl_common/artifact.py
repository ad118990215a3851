"""The backbone artifact, the contract between pre-training and transfer.

`<name>.pth` is a plain state_dict that loads with strict=True into the constructor named in
`<name>.json` (e.g. `torchvision.models.resnet18(num_classes=1000)`), so any tool that reads
torchvision weights can use it. `<name>.json` says how it was made and how to feed it:

    format               "kdcl-bench/backbone-v1"
    architecture         registry name (kdcl_common.models), e.g. "resnet18"
    constructor          importable constructor, e.g. "torchvision.models.resnet18"
    constructor_kwargs   e.g. {"num_classes": 1000, "width_mult": 0.5}
    preprocessing        color order, mean/std on the 0-1 and 0-255 scales, input size
    sha256               of the .pth
    ...                  method, dataset, epochs, metrics, seed, config, git commit (provenance)

The sha256 is what identifies the weights downstream: a transfer run (or a KD run, whose
teacher is an artifact) records it as its input, and is stale once the file at that path has
another one (kdcl_common/runs.py).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from . import KdclError, models
from .identity import metadata_path
from .io import atomic_torch_save, atomic_write_json, load_tensors, sha256_file

FORMAT = "kdcl-bench/backbone-v1"


def preprocessing(mean: Sequence[float], std: Sequence[float], input_size: int,
                  eval_resize: int | None, interpolation: str = "bilinear") -> dict:
    """The preprocessing contract: RGB input, (x/255 - mean)/std, at `input_size`."""
    return {
        "color": "RGB",
        "mean": [round(m, 6) for m in mean],
        "std": [round(s, 6) for s in std],
        "mean_255": [round(255 * m, 4) for m in mean],
        "std_255": [round(255 * s, 4) for s in std],
        "input_size": input_size,
        "eval_resize": eval_resize,
        "interpolation": interpolation,
    }


def save(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any]) -> dict:
    """Write `<path>.pth` and its `.json`; check that the weights load back strictly first."""
    path = Path(path)
    arch, kwargs = meta["architecture"], meta["constructor_kwargs"]
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    models.build(arch, **kwargs).load_state_dict(state, strict=True)
    atomic_torch_save(state, path)
    meta = {"format": FORMAT, "architecture": arch,
            "constructor": models.constructor_name(arch), "constructor_kwargs": kwargs,
            **{k: v for k, v in meta.items() if k not in ("architecture", "constructor_kwargs")},
            "sha256": sha256_file(path)}
    atomic_write_json(metadata_path(path), meta)
    return meta


def read_metadata(path: str | os.PathLike) -> dict:
    meta_file = metadata_path(path)
    if not meta_file.is_file():
        raise KdclError(f"backbone metadata {meta_file} is missing: every backbone .pth needs its "
                        f".json beside it (written by `python -m pretrain`), which says its "
                        f"architecture and preprocessing")
    try:
        meta = json.loads(meta_file.read_text(errors="replace"))
    except json.JSONDecodeError as e:
        raise KdclError(f"backbone metadata {meta_file} is not valid JSON: {e}") from None
    except RecursionError:
        raise KdclError(f"backbone metadata {meta_file} is nested too deeply to be the .json "
                        f"that `python -m pretrain` writes") from None
    again = ("export the backbone again with `python -m pretrain` (or "
             "kdcl_common.artifact.save), or restore the .json it wrote")
    if not isinstance(meta, dict):
        raise KdclError(f"backbone metadata {meta_file} holds {_json_kind(meta)}, not a JSON "
                        f"object ({{\"format\": \"{FORMAT}\", \"architecture\": ...}}): {again}")
    missing = [k for k in ("architecture", "constructor_kwargs", "preprocessing") if k not in meta]
    if meta.get("format") != FORMAT or missing:
        raise KdclError(f"{meta_file} is not a kdcl-bench backbone description (format "
                        f"{meta.get('format')!r}, missing keys {missing})")
    wrong = [f"{key} is {_json_kind(meta[key])}, not {kind}" for key, kind, ok in (
        ("architecture", "a string", isinstance(meta["architecture"], str)),
        ("constructor_kwargs", "an object", isinstance(meta["constructor_kwargs"], dict)),
        ("preprocessing", "an object", isinstance(meta["preprocessing"], dict))) if not ok]
    if wrong:
        raise KdclError(f"backbone metadata {meta_file}: {'; '.join(wrong)} (e.g. "
                        f"\"constructor_kwargs\": {{\"num_classes\": 1000}}): {again}")
    return meta


def _json_kind(value) -> str:
    """A JSON value's kind in JSON's words, with the value when it is short."""
    kind = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")
    shown = json.dumps(value)
    return f"{kind} ({shown})" if len(shown) <= 40 and kind != "null" else kind


def verified_metadata(path: str | os.PathLike) -> tuple[Path, dict]:
    """(the .pth, its metadata) with the file's sha256 checked against the metadata's."""
    if Path(path).is_dir():
        found = sorted(p.name for p in Path(path).glob("*.pth"))
        raise KdclError(f"{path} is a folder, not a backbone file: name one of its .pth files ("
                        + (", ".join(found) if found else "it holds none; an export folder "
                           "holds <student>.pth beside <student>.json") + ")")
    path = Path(path).with_suffix(".pth")
    if not path.is_file():
        raise KdclError(f"backbone weights not found: {path}")
    meta = read_metadata(path)
    if not meta.get("sha256"):
        raise KdclError(f"{metadata_path(path)} gives no sha256 for {path}: export the backbone "
                        f"again with `python -m pretrain` (or kdcl_common.artifact.save)")
    if sha256_file(path) != meta["sha256"]:
        raise KdclError(f"{path} does not match the sha256 in {metadata_path(path)}: the file "
                        f"was changed or truncated after export")
    return path, meta


def as_input(path: str | os.PathLike) -> dict:
    """The artifact as a run's input: its path and verified sha256 (kdcl_common/runs.py)."""
    path, meta = verified_metadata(path)
    return {"path": str(path), "sha256": meta["sha256"]}


def load(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Build the network described by `<path>.json` and load `<path>.pth` into it strictly,
    after checking the file against the sha256 in its metadata."""
    path, meta = verified_metadata(path)
    return build(path, meta), meta


def build(path: Path, meta: dict) -> nn.Module:
    """The network of `meta` with the weights of `path` loaded strictly (`path` and `meta` from
    verified_metadata: the file is not hashed again)."""
    state = load_tensors(path, "state_dict")
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise KdclError(f"{path} is not a plain state_dict (a mapping of names to tensors)")
    model = models.build(meta["architecture"], **meta["constructor_kwargs"])
    load_strict(model, state, f"{path} ({meta['architecture']})")
    return model


def load_strict(model: nn.Module, state: dict, what: str) -> None:
    """load_state_dict(strict=True) with an error that lists what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def show(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")
        parts = [f"missing keys: {show(missing)}" if missing else "",
                 f"unexpected keys: {show(unexpected)}" if unexpected else "",
                 f"shape mismatches: {show(shapes)}" if shapes else ""]
        raise KdclError(f"the weights of {what} do not fit the architecture: "
                        + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=True)
