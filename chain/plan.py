"""What `run_all.sh` runs: the steps of a preset, in order, and how to tell that one has finished.

Standard library only, so `run_all.sh --dry-run` can print the plan before the environment
exists. Every step is a command a user could type; the chain adds nothing they could not do by
hand. A step is finished when the file its stage writes last exists (a pre-training run's export
manifest, a transfer run's result.json); such steps are skipped, so a killed chain resumes.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

PRETRAIN_ROOT = Path("runs/pretrain")
TRANSFER_ROOT = Path("runs/transfer")
PRESETS = ("smoke", "cifar", "paper")
STAGES = ("pretrain", "transfer", "results")
BACKENDS = ("torchvision", "detectron2", "mmseg")

# The dataset each kind of step reads, and what the variable should point to.
DATA_VARIABLES = {
    "IMAGENET_ROOT": "ImageNet with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG",
    "CIFAR100_ROOT": "the extracted cifar-100-python folder (train, test, meta)",
    "COCO_ROOT": "COCO 2017: train2017/, val2017/, annotations/instances_*2017.json",
    "COCO_STUFF_ROOT": "COCO-Stuff 164k: images/{train,val}2017, annotations/{train,val}2017",
}


@dataclass(frozen=True)
class Step:
    stage: str                     # pretrain | transfer | results
    label: str                     # shown in progress lines and matched by --only
    args: tuple[str, ...]          # `python -m <args>`
    done: Path | None = None       # exists once the step has finished
    needs: tuple[str, ...] = ()    # environment variables naming its datasets
    backend: str | None = None     # transfer backend
    backbone: Path | None = None   # the exported backbone a transfer step fine-tunes


# --------------------------------------------------------------------------- the presets
# Pre-training: config folders under pretrain/configs, and for each the configs to run (None: all).
# Independent runs come first and vanilla KD last: KD's teacher is an independent run's export.
PRETRAIN = {
    "smoke": {"smoke": ("independent", "kdcl_naive", "kdcl_linear", "kdcl_minlogit",
                        "kdcl_general")},
    "cifar": {"cifar": None},
    "paper": {"imagenet": None},
}
# Transfer: (pre-training configs, students) whose exports are fine-tuned, and the transfer
# configs for each student architecture, per backend. Smoke keeps to ResNet-18 from independent
# training and KDCL-MinLogit: one delta per task within the preset's time budget.
TRANSFER_SOURCES = {
    "smoke": [(("smoke/independent", "smoke/kdcl_minlogit"), ("resnet18",))],
    "cifar": [],
    "paper": [
        (tuple(f"imagenet/r50_r18/{m}" for m in ("independent", "kdcl_naive", "kdcl_linear",
                                                 "kdcl_minlogit", "kdcl_general")),
         ("resnet50", "resnet18")),
        (tuple(f"imagenet/r18_mbv2/{m}" for m in ("independent", "kdcl_linear",
                                                  "kdcl_minlogit")), ("mobilenet_v2",)),
    ],
}
_PAPER_DETECTION = {
    "torchvision": ["faster_rcnn_fpn_paper14ep_syncbn.yaml", "mask_rcnn_fpn_paper14ep_syncbn.yaml"],
    "detectron2": ["faster_rcnn_{d2}_FPN_paper14ep_syncbn.yaml",
                   "mask_rcnn_{d2}_FPN_paper14ep_syncbn.yaml"],
    "mmseg": ["sem-fpn_{mm}_80k_syncbn_coco-stuff164k-512x512.py",
              "upernet_{mm}_80k_syncbn_coco-stuff164k-512x512.py"],
}
TRANSFER_CONFIGS = {
    "smoke": {
        "torchvision": ["smoke_faster_rcnn_fpn.yaml", "smoke_mask_rcnn_fpn.yaml"],
        "detectron2": ["faster_rcnn_{d2}_FPN_smoke.yaml", "mask_rcnn_{d2}_FPN_smoke.yaml"],
        "mmseg": ["sem-fpn_{mm}_smoke.py"],
    },
    "cifar": {},
    "paper": _PAPER_DETECTION,
}
# Short architecture names in the Detectron2 and mmseg config file names.
ARCH_TAGS = {
    "resnet18": {"d2": "R18", "mm": "r18"},
    "resnet50": {"d2": "R50", "mm": "r50"},
    "mobilenet_v2": {"d2": "MBV2", "mm": "mbv2"},
    "mobilenet_v2_x0.5": {"d2": "MBV2", "mm": "mbv2"},
}
TRANSFER_NEEDS = {"torchvision": ("COCO_ROOT",), "detectron2": ("COCO_ROOT",),
                  "mmseg": ("COCO_STUFF_ROOT",)}
PRETRAIN_NEEDS = {"smoke": (), "cifar": ("CIFAR100_ROOT",), "paper": ("IMAGENET_ROOT",)}


def pretrain_configs(preset: str, root: Path) -> list[str]:
    """Config names (path under pretrain/configs, no suffix), independent first, KD last."""
    names = []
    for folder, chosen in PRETRAIN[preset].items():
        base = root / "pretrain" / "configs" / folder
        files = sorted(p for p in base.rglob("*.yaml") if not p.name.startswith("_"))
        found = {str(p.relative_to(base.parent).with_suffix("")): p.stem for p in files}
        if chosen is not None:
            found = {n: s for n, s in found.items() if s in chosen}
        names += found
    rank = lambda name: (0 if name.endswith("/independent") else   # noqa: E731
                         2 if Path(name).stem.startswith("kd_") or name.endswith("/kd") else 1)
    return sorted(names, key=lambda n: (rank(n), n))


def backbone_id(pretrain_config: str, seed: int, student: str) -> str:
    """The transfer run folder of a backbone (transfer.backends.torchvision.engine.backbone_id)."""
    return f"{pretrain_config.replace('/', '-')}-seed{seed}-{student}"


def export_of(pretrain_config: str, seed: int, student: str) -> Path:
    return PRETRAIN_ROOT / pretrain_config / f"seed{seed}" / "export" / f"{student}.pth"


def transfer_configs(preset: str, backend: str, student: str) -> list[str]:
    tags = ARCH_TAGS.get(student, {})
    out = []
    for pattern in TRANSFER_CONFIGS[preset].get(backend, []):
        if "{" in pattern and not tags:
            continue  # no config of this backend for the architecture
        out.append(f"transfer/configs/{backend}/{pattern.format(**tags)}")
    return out


def available_backends() -> dict[str, bool]:
    """Which transfer backends this Python can import (torchvision is always there)."""
    return {"torchvision": True,
            "detectron2": importlib.util.find_spec("detectron2") is not None,
            "mmseg": importlib.util.find_spec("mmseg") is not None}


def build(preset: str, seeds: list[int], backends: list[str], root: Path = Path(".")) -> list[Step]:
    """Every step of a preset, in the order they must run."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    steps = []
    for seed in seeds:
        for name in pretrain_configs(preset, root):
            steps.append(Step(
                "pretrain", f"pretrain {name} seed{seed}",
                ("pretrain", f"pretrain/configs/{name}.yaml", f"seed={seed}", "--resume"),
                done=PRETRAIN_ROOT / name / f"seed{seed}" / "export" / "manifest.json",
                needs=PRETRAIN_NEEDS[preset]))
    for seed in seeds:
        for sources, students in TRANSFER_SOURCES[preset]:
            for source in sources:
                for student in students:
                    backbone = export_of(source, seed, student)
                    for backend in backends:
                        for config in transfer_configs(preset, backend, student):
                            run = Path(config).relative_to("transfer/configs").with_suffix("")
                            steps.append(Step(
                                "transfer",
                                f"transfer {run} <- {source} seed{seed} {student}",
                                ("transfer", config, "--backbone", str(backbone), "--resume"),
                                done=(TRANSFER_ROOT / run / backbone_id(source, seed, student)
                                      / "seed0" / "result.json"),
                                needs=() if preset == "smoke" else TRANSFER_NEEDS[backend],
                                backend=backend, backbone=backbone))
    steps.append(Step("results", "results tables and figures", ("results",)))
    return steps


def select(steps: list[Step], only: list[str]) -> list[Step]:
    """The steps matching any of `only`: a stage, a backend, or a piece of a step's label."""
    if not only:
        return steps
    return [s for s in steps
            if any(t == s.stage or t == s.backend or t in s.label for t in only)]
