"""Detectron2's names for a backbone's weights: its ResNet (`stem.conv1`, `res2`..`res5`,
`conv<k>.norm`, `shortcut`), or the `features` of the project's registered MobileNetV2
(mobilenet.py); and Detectron2's weight file format. Per family (transfer/families.py); the
mechanism is transfer/convert.py's."""
from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path

from kdcl_common.io import atomic_write_bytes

from ...convert import SKIP, Converted

_BLOCK = re.compile(r"layer([1-4])\.(\d+)\.(.+)")


def _resnet(key: str) -> str | None:
    if key.startswith("fc."):
        return SKIP
    if key == "conv1.weight":
        return "stem.conv1.weight"
    if key.startswith("bn1."):
        return "stem.conv1.norm." + key[len("bn1."):]
    match = _BLOCK.fullmatch(key)
    if not match:
        return None
    stage, block, rest = int(match[1]) + 1, match[2], match[3]
    prefix = f"res{stage}.{block}."
    if re.fullmatch(r"conv\d\.weight", rest):
        return prefix + rest
    if m := re.fullmatch(r"bn(\d)\.(.+)", rest):
        return f"{prefix}conv{m[1]}.norm.{m[2]}"
    if rest == "downsample.0.weight":
        return prefix + "shortcut.weight"
    if rest.startswith("downsample.1."):
        return prefix + "shortcut.norm." + rest[len("downsample.1."):]
    return None


def _mobilenet_v2(key: str) -> str | None:
    if key.startswith("classifier."):
        return SKIP
    return key if key.startswith("features.") else None


RULES = {"resnet": _resnet, "mobilenet_v2": _mobilenet_v2}


def save(converted: Converted, path: str | os.PathLike, author: str) -> Path:
    """Detectron2's weight format: a pickle of {"model": numpy arrays, "__author__",
    "matching_heuristics": True}, written atomically. (Written here, and read only by
    Detectron2's checkpointer; never load such pickles from untrusted sources.)"""
    path = Path(path)
    payload = {"model": {k: v.detach().cpu().numpy() for k, v in converted.state.items()},
               "__author__": author, "matching_heuristics": True}
    buffer = io.BytesIO()
    pickle.dump(payload, buffer, protocol=pickle.HIGHEST_PROTOCOL)
    atomic_write_bytes(path, buffer.getvalue())
    return path
