"""The transfer backends, one line each. `python -m transfer` picks the one whose `claims()`
accepts the config (in this order; the last is the fallback for YAML), and `run_all.sh`
(chain/plan.py) reads which are installed and which dataset each needs.

To add a backend: a package under transfer/backends whose `Backend` subclasses
transfer.backends.base.Backend, and a line here.

Standard library only (the chain imports this before the environment exists); the backends
themselves are imported when used.
"""
from __future__ import annotations

import importlib
import importlib.util
import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    name: str
    package: str        # holds `Backend`
    requires: str       # the library it drives: the backend is available when it imports
    data_variable: str  # the environment variable of its real dataset's root

    def available(self) -> bool:
        return importlib.util.find_spec(self.requires) is not None

    def load(self):
        # the frameworks import setuptools' deprecated pkg_resources (mmengine, Detectron2's
        # model zoo): a note for their authors, printed above every message of ours
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        return importlib.import_module(self.package).Backend


BACKENDS = {e.name: e for e in (
    Entry("mmseg", "transfer.backends.mmseg", "mmseg", "COCO_STUFF_ROOT"),
    Entry("detectron2", "transfer.backends.detectron2", "detectron2", "COCO_ROOT"),
    Entry("torchvision", "transfer.backends.torchvision", "torchvision", "COCO_ROOT"),
)}
REGISTRY = tuple(BACKENDS[n] for n in ("torchvision", "detectron2", "mmseg"))
