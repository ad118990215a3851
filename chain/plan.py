"""What `run_all.sh` runs: the steps of a preset, in order, and the state of each.

Every step is a command a user could type; the chain adds nothing they could not do by hand.
A step's state is decided when the chain reaches it (pre-training earlier in the same call may
have replaced the export a transfer step fine-tunes), by the stage's own run-folder policy
(kdcl_common/runs.py): 'done' (finished, from the same config and weights: skipped), 'todo'
(run with --resume, which also continues a killed run) or 'stale' (made from other weights or
another config: run with --restart, which archives the old folder).

Standard library only at import, so `run_all.sh --dry-run` prints the plan before the
environment exists; without it, a state is judged from the files alone (kdcl_common/identity.py:
finished, and from the weights recorded), not from the configs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kdcl_common import KdclError, identity
from pretrain import registry
from transfer import naming
from transfer.backends import BACKENDS as REGISTERED

PRETRAIN_ROOT = Path("runs/pretrain")
TRANSFER_ROOT = Path("runs/transfer")
TRANSFER_SEED = 0  # every transfer config's seed: the chain varies pre-training seeds only
PRESETS = ("smoke", "cifar", "paper")
STAGES = ("pretrain", "transfer", "robustness", "results")
BACKENDS = tuple(sorted(REGISTERED, key=["torchvision", "detectron2", "mmseg"].index))

# The dataset each kind of step reads, and what the variable should point to.
DATA_VARIABLES = {
    "IMAGENET_ROOT": "ImageNet with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG",
    "CIFAR100_ROOT": "the extracted cifar-100-python folder (train, test, meta)",
    "COCO_ROOT": "COCO 2017: train2017/, val2017/, annotations/instances_*2017.json",
    "COCO_STUFF_ROOT": "COCO-Stuff 164k: images/{train,val}2017, annotations/{train,val}2017",
}


@dataclass(frozen=True)
class Step:
    stage: str                     # pretrain | transfer | robustness | results
    label: str                     # shown in progress lines and matched by --only
    args: tuple[str, ...]          # `python -m <args>` (the chain adds --resume or --restart)
    needs: tuple[str, ...] = ()    # environment variables naming its datasets
    backend: str | None = None     # transfer backend
    backbone: Path | None = None   # the exported backbone a transfer step fine-tunes

    @property
    def config(self) -> str:
        return self.args[1]

    @property
    def overrides(self) -> list[str]:
        return [a for a in self.args[2:] if "=" in a and not a.startswith("-")]

    def run_dir(self) -> Path | None:
        """The run folder the step writes; None for results, and for a transfer step whose
        backbone is not exported yet (its folder is named after the export's metadata)."""
        if self.stage == "pretrain":
            seed = next(a.split("=", 1)[1] for a in self.overrides if a.startswith("seed="))
            return PRETRAIN_ROOT / Path(self.config).relative_to("pretrain/configs") \
                .with_suffix("") / f"seed{seed}"
        if self.stage == "transfer":
            try:
                meta = json.loads(identity.metadata_path(self.backbone).read_text())
            except (OSError, ValueError):
                return None
            return naming.run_dir(TRANSFER_ROOT, naming.config_name(self.config), meta,
                                  self.backbone, TRANSFER_SEED)
        return None

    def state(self, exact: bool = True) -> tuple[str, str]:
        """('done' | 'todo' | 'stale', why), from the files as they are now. `exact` asks the
        stage itself (configs and weights compared; needs the environment), else files only."""
        if self.stage in ("robustness", "results"):  # they skip what is done themselves
            return "todo", ""
        if self.stage == "transfer" and not identity.metadata_path(self.backbone).is_file():
            return "todo", f"waits for its backbone {self.backbone}"
        if exact:
            from kdcl_common import KdclError

            try:
                if self.stage == "pretrain":
                    from pretrain.engine import status
                    return status(self.config, self.overrides)
                from transfer.lifecycle import status
                return status(self.config, self.backbone, self.overrides)
            except KdclError as e:  # the stage says it again, in full, when the step runs
                return "todo", f"not checked yet: {str(e).splitlines()[0]}"
        return file_state(self.run_dir(), "result.json" if self.stage == "transfer"
                          else "export/manifest.json")


def file_state(run_dir: Path, marker: str) -> tuple[str, str]:
    """A step's state from its files alone: finished, and from the weights it recorded."""
    if not run_dir.is_dir():
        return "todo", ""
    stale = identity.stale_inputs(run_dir)
    if stale is None:
        return "stale", f"{run_dir} does not record its inputs (an older kdcl-bench)"
    if stale:
        return "stale", "made from other weights: " + "; ".join(stale)
    return ("done", "") if (run_dir / marker).is_file() else ("todo", "")


# --------------------------------------------------------------------------- the presets
# Pre-training: config folders under pretrain/configs, and for each the configs to run (None: all).
# Independent runs come first and vanilla KD last: KD's teacher is an independent run's export.
# Smoke runs the methods pretrain/registry.py marks `smoke`.
PRETRAIN = {
    "smoke": {"smoke": tuple(m.name for m in registry.METHODS if m.smoke)},
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
        (tuple(f"imagenet/r50_r18/{m}" for m in (registry.BASELINE, *registry.kdcl_variants())),
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
# Fig. 4: exports evaluated under pixel noise (pretrain.robustness), per preset: the configs
# (KDCL-General and what the figure compares it with), the student, and the command's options.
# Smoke: a coarse grid, enough to draw the figure's plumbing; cifar: the paper's grid.
ROBUSTNESS = {
    "smoke": (("smoke/independent", "smoke/kdcl_general"), "resnet18",
              ("--draws", "2", "--deltas", "0", "0.05", "0.1", "0.15")),
    "cifar": (("cifar/independent", "cifar/dml", "cifar/kdcl_general", "cifar/kdcl_general_icl"),
              "cifar_resnet32", ()),
}
TRANSFER_NEEDS = {name: (entry.data_variable,) for name, entry in REGISTERED.items()}
PRETRAIN_NEEDS = {"smoke": (), "cifar": ("CIFAR100_ROOT",), "paper": ("IMAGENET_ROOT",)}


def pretrain_configs(preset: str, root: Path, all_methods: bool = False) -> list[str]:
    """Config names (path under pretrain/configs, no suffix), independent first, KD last.
    `all_methods`: every config of the preset's folders, not only its chosen ones."""
    names = []
    for folder, chosen in PRETRAIN[preset].items():
        chosen = None if all_methods else chosen
        base = root / "pretrain" / "configs" / folder
        files = sorted(p for p in base.rglob("*.yaml") if not p.name.startswith("_"))
        found = {str(p.relative_to(base.parent).with_suffix("")): p.stem for p in files}
        if chosen is not None:
            found = {n: s for n, s in found.items() if s in chosen}
            if missing := sorted(set(chosen) - set(found.values())):
                raise KdclError(f"{base} has no config for {', '.join(missing)} (the {preset} "
                                f"methods of pretrain/registry.py): add <name>.yaml there")
        names += found
    def rank(name: str) -> int:  # configs are named after their method (registry.of_config)
        method = registry.of_config(Path(name).stem)
        return (0 if method and method.name == registry.BASELINE else
                2 if method and method.needs_teacher else 1)

    return sorted(names, key=lambda n: (rank(n), n))


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
    """Which transfer backends this Python can import."""
    return {name: entry.available() for name, entry in REGISTERED.items()}


def build(preset: str, seeds: list[int], backends: list[str], root: Path = Path("."),
          all_methods: bool = False) -> list[Step]:
    """Every step of a preset, in the order they must run (`all_methods`: pretrain_configs)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    steps = []
    for seed in seeds:
        for name in pretrain_configs(preset, root, all_methods):
            steps.append(Step(
                "pretrain", f"pretrain {name} seed{seed}",
                ("pretrain", f"pretrain/configs/{name}.yaml", f"seed={seed}"),
                needs=PRETRAIN_NEEDS[preset]))
    for seed in seeds:
        for sources, students in TRANSFER_SOURCES[preset]:
            for source in sources:
                for student in students:
                    backbone = export_of(source, seed, student)
                    for backend in backends:
                        for config in transfer_configs(preset, backend, student):
                            steps.append(Step(
                                "transfer", f"transfer {naming.config_name(config)} <- "
                                            f"{source} seed{seed} {student}",
                                ("transfer", config, "--backbone", str(backbone)),
                                needs=() if preset == "smoke" else TRANSFER_NEEDS[backend],
                                backend=backend, backbone=backbone))
    if preset in ROBUSTNESS:
        configs, student, options = ROBUSTNESS[preset]
        for seed in seeds:  # one step per seed: the exports share one pass over the test split
            steps.append(Step(
                "robustness", f"robustness {student} seed{seed} ({', '.join(configs)})",
                ("pretrain.robustness", *(str(export_of(c, seed, student)) for c in configs),
                 *options), needs=PRETRAIN_NEEDS[preset]))
    steps.append(Step("results", "results tables and figures", ("results",)))
    return steps


def matches(step: Step, what: str) -> bool:
    return what == step.stage or what == step.backend or what in step.label


def select(steps: list[Step], only: list[str]) -> list[Step]:
    """The steps matching any of `only`: a stage, a backend, or a piece of a step's label.
    A `what` that matches no step is an error that lists what would."""
    unmatched = [w for w in only if not any(matches(s, w) for s in steps)]
    if unmatched:
        raise ValueError(
            f"--only {' '.join(unmatched)} matches no step of this plan. --only takes a stage "
            f"({', '.join(STAGES)}), a backend ({', '.join(sorted({s.backend for s in steps if s.backend}) or ['none planned'])}) "
            f"or a piece of a step's name, e.g. {steps[0].label.split()[1] if steps else '?'}; "
            f"`bash run_all.sh --dry-run` lists the steps")
    return [s for s in steps if not only or any(matches(s, w) for w in only)]
