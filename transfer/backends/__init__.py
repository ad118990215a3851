"""The transfer backends: the one list of them, which everything else reads.

Each entry says all that the rest of the suite needs to know about its backend, so that no
module outside a backend's package names one:

    name          the backend's name; its configs live in transfer/configs/<name>/, which is
                  how `python -m transfer` knows a config's backend (or --backend NAME)
    package       the package holding its `Backend` class (transfer/backends/base.py)
    requires      the library it drives: the backend is available when that imports
    data          the environment variable of its real dataset's root, and what it holds
    configs       per preset (and `acceptance`, the GPU acceptance check), the config files
                  the chain runs for each backbone; `{arch}` stands for `arch_tags[arch]`
    arch_tags     the short names of architectures in its config file names; a pattern with
                  `{arch}` has no config for an architecture missing here
    launcher      None: torchrun starts its processes; else the framework's own launcher
                  and the options that give it GPUs and machines (Detectron2's `launch`)
    data_overrides  config overrides that point its configs at COCO-format data in `{data}`
                  (the acceptance check's generated scenes)
    short_run     config overrides that shrink a smoke config to a few iterations (the
                  acceptance check's toy mode)

The order of REGISTRY is the order of plans and tables. Adding a backend is one package and one
line: transfer/backends/<name>/ with a `Backend` subclass and its weight-name conversion
(`conversions`), its configs in transfer/configs/<name>/, and its `BackendEntry` here.

Standard library only: the chain reads this before the environment exists; a backend's package
is imported when it is used.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class DataVariable:
    name: str  # e.g. COCO_ROOT
    holds: str  # what the folder it names must hold, for messages


@dataclass(frozen=True)
class OwnLauncher:
    """A framework that starts its own processes: the `python -m transfer` options that tell
    it how many GPUs per machine, how many machines, this machine's rank and where to meet."""

    gpus: str
    machines: str
    machine_rank: str
    dist_url: str

    def arguments(self, gpus: int, machines: int = 1, rank: int | str = 0,
                  address: str | None = None) -> list[str]:
        args = [self.gpus, str(gpus)]
        if machines > 1 or address:
            args += [self.machines, str(machines), self.machine_rank, str(rank)]
        if address:
            args += [self.dist_url, f"tcp://{address}"]
        return args


@dataclass(frozen=True)
class BackendEntry:
    name: str
    package: str
    requires: str
    data: DataVariable
    configs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    arch_tags: dict[str, str] = field(default_factory=dict)
    launcher: OwnLauncher | None = None
    data_overrides: tuple[str, ...] = ()
    short_run: tuple[str, ...] = ()

    @property
    def config_folder(self) -> Path:
        return CONFIG_ROOT / self.name

    def available(self) -> bool:
        return importlib.util.find_spec(self.requires) is not None

    def load(self):
        # the frameworks import setuptools' deprecated pkg_resources (mmengine, Detectron2's
        # model zoo): a note for their authors, printed above every message of ours
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        return importlib.import_module(self.package).Backend

    def config_files(self, preset: str, arch: str) -> list[str]:
        """The configs of `preset` for a backbone of `arch` (paths from the repository root)."""
        tag = self.arch_tags.get(arch)
        return [f"transfer/configs/{self.name}/{pattern.format(arch=tag)}"
                for pattern in self.configs.get(preset, ()) if tag or "{arch}" not in pattern]


COCO = DataVariable("COCO_ROOT", "COCO 2017: train2017/, val2017/, "
                                 "annotations/instances_*2017.json")
COCO_STUFF = DataVariable("COCO_STUFF_ROOT", "COCO-Stuff 164k: images/{train,val}2017, "
                                             "annotations/{train,val}2017")

REGISTRY: tuple[BackendEntry, ...] = (
    BackendEntry(
        "torchvision", "transfer.backends.torchvision", "torchvision", COCO,
        configs={"smoke": ("smoke_faster_rcnn_fpn.yaml", "smoke_mask_rcnn_fpn.yaml"),
                 "paper": ("faster_rcnn_fpn_paper14ep_syncbn.yaml",
                           "mask_rcnn_fpn_paper14ep_syncbn.yaml"),
                 "acceptance": ("acceptance_faster_rcnn_fpn.yaml",
                                "acceptance_mask_rcnn_fpn.yaml")},
        data_overrides=("data.dataset=coco", "data.root={data}"),
        short_run=("optim.epochs=1", "optim.milestones=[]", "optim.warmup_epochs=0",
                   "data.workers=1", "model.min_size=96", "model.max_size=128")),
    BackendEntry(
        "detectron2", "transfer.backends.detectron2", "detectron2", COCO,
        configs={"smoke": ("faster_rcnn_{arch}_FPN_smoke.yaml", "mask_rcnn_{arch}_FPN_smoke.yaml"),
                 "paper": ("faster_rcnn_{arch}_FPN_paper14ep_syncbn.yaml",
                           "mask_rcnn_{arch}_FPN_paper14ep_syncbn.yaml"),
                 "acceptance": ("mask_rcnn_{arch}_FPN_acceptance.yaml",)},
        arch_tags={"resnet18": "R18", "resnet50": "R50", "mobilenet_v2": "MBV2"},
        launcher=OwnLauncher("--num-gpus", "--num-machines", "--machine-rank", "--dist-url"),
        data_overrides=("KDCL.DATA_ROOT={data}", "KDCL.SYNTHETIC=False"),
        short_run=("SOLVER.MAX_ITER=4", "SOLVER.STEPS=(3,)", "SOLVER.WARMUP_ITERS=1",
                   "SOLVER.CHECKPOINT_PERIOD=4", "DATALOADER.NUM_WORKERS=1")),
    BackendEntry(
        "mmdet", "transfer.backends.mmdet", "mmdet", COCO,
        configs={"smoke": ("faster-rcnn_{arch}_fpn_smoke.py", "mask-rcnn_{arch}_fpn_smoke.py"),
                 "paper": ("faster-rcnn_{arch}_fpn_paper14ep_syncbn.py",
                           "mask-rcnn_{arch}_fpn_paper14ep_syncbn.py")},
        arch_tags={"resnet18": "r18", "resnet50": "r50", "mobilenet_v2": "mbv2"},
        data_overrides=("train_dataloader.dataset.data_root={data}",
                        "val_dataloader.dataset.data_root={data}", "kdcl.synthetic=False"),
        short_run=("train_cfg.max_iters=4", "train_cfg.val_interval=4",
                   "train_dataloader.num_workers=1", "val_dataloader.num_workers=1")),
    BackendEntry(
        "mmseg", "transfer.backends.mmseg", "mmseg", COCO_STUFF,
        configs={"smoke": ("sem-fpn_{arch}_smoke.py",),
                 "paper": ("sem-fpn_{arch}_80k_syncbn_coco-stuff164k-512x512.py",
                           "upernet_{arch}_80k_syncbn_coco-stuff164k-512x512.py"),
                 "acceptance": ("sem-fpn_{arch}_acceptance.py", "upernet_{arch}_acceptance.py")},
        arch_tags={"resnet18": "r18", "resnet50": "r50", "mobilenet_v2": "mbv2"},
        data_overrides=("train_dataloader.dataset.data_root={data}",
                        "val_dataloader.dataset.data_root={data}", "kdcl.synthetic=False"),
        short_run=("train_cfg.max_iters=4", "train_cfg.val_interval=4",
                   "train_dataloader.num_workers=1", "val_dataloader.num_workers=1")),
)


def names() -> tuple[str, ...]:
    return tuple(entry.name for entry in REGISTRY)


def get(name: str) -> BackendEntry:
    for entry in REGISTRY:
        if entry.name == name:
            return entry
    raise KeyError(f"unknown transfer backend {name!r}: the backends are {', '.join(names())}")


def of_config(config: str | os.PathLike, backend: str | None = None) -> BackendEntry:
    """The backend of a config: `backend` when given (--backend), else the folder it sits in,
    transfer/configs/<backend>/. Never guessed from the file's content."""
    from kdcl_common import ConfigError

    if backend is not None:
        if backend not in names():
            raise ConfigError(f"--backend {backend}: no such backend; the backends are "
                              f"{', '.join(names())}")
        return get(backend)
    try:
        folder = Path(config).resolve().relative_to(CONFIG_ROOT).parts[0]
    except (ValueError, IndexError):
        folder = None
    if folder in names():
        return get(folder)
    raise ConfigError(f"{config} is not in a backend's config folder (transfer/configs/<backend>/ "
                      f"for {', '.join(names())}), so its backend is not known: move it there, "
                      f"or say which it is with --backend NAME")
