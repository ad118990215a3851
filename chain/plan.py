"""What `run_all.sh` runs: the steps of a preset, what each waits for, and the state of each.

Every step is a command a user could type; the chain adds nothing they could not do by hand.
The steps form a graph: a KD run waits for the run that exports its teacher, a transfer step for
the pre-training that exports its backbone, the noise evaluation for its exports, and the
results for everything. The local chain runs them in order (chain/local.py); on SLURM each is a
job whose dependencies are these edges (chain/slurm.py).

A step's state is decided by the stage's own run-folder policy (kdcl_common/runs.py), when it is
needed (pre-training earlier in the same call may have replaced the export a transfer step
fine-tunes): DONE (finished, from the same config and weights: skipped), TODO (run with
--resume, which also continues a killed run) or STALE (made from other weights or another
config: run with --restart, which archives the old folder). A scheduler adds QUEUED, RUNNING
and FAILED.

Standard library only at import, so `run_all.sh --dry-run` prints the plan before the
environment exists; without it, a state is judged from the files alone (kdcl_common/identity.py:
finished, and from the weights recorded), not from the configs.
"""
from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from pathlib import Path

from kdcl_common import KdclError, identity
from pretrain import registry
from transfer import backends, naming

PRESETS = ("smoke", "cifar", "paper")
STAGES = ("pretrain", "transfer", "robustness", "results")


class State(str, enum.Enum):
    DONE = "done"          # finished, from the same config and weights
    TODO = "todo"          # not started, or unfinished: runs with --resume
    STALE = "stale"        # made from another config or other weights: runs with --restart
    QUEUED = "queued"      # a scheduler holds its job
    RUNNING = "running"
    FAILED = "failed"      # its last job ended with an error

    def __str__(self) -> str:
        return self.value


# The dataset each kind of step reads, and what the variable should point to.
DATA_VARIABLES = {
    "IMAGENET_ROOT": "ImageNet with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG",
    "CIFAR100_ROOT": "the extracted cifar-100-python folder (train, test, meta)",
    **{entry.data.name: entry.data.holds for entry in backends.REGISTRY},
}


@dataclass(frozen=True)
class Layout:
    """Where the chain's outputs go: run folders under `runs` (pretrain/, transfer/, and the
    chain's own files in chain/), result records in `records`, tables and figures in
    `results`. Relative paths are relative to the repository. Locations are not part of a run's
    identity: the same run moved elsewhere is the same run."""

    runs: Path = Path("runs")
    records: Path = Path("results/records")
    results: Path = Path("results")

    @property
    def pretrain(self) -> Path:
        return self.runs / "pretrain"

    @property
    def transfer(self) -> Path:
        return self.runs / "transfer"

    @property
    def chain(self) -> Path:
        return self.runs / "chain"

    @property
    def default(self) -> bool:
        return self == Layout()


DEFAULT = Layout()


@dataclass(frozen=True)
class Step:
    stage: str                     # pretrain | transfer | robustness | results
    label: str                     # shown in progress lines and matched by --only
    args: tuple[str, ...]          # `python -m <args>` (the chain adds --resume or --restart)
    needs: tuple[str, ...] = ()    # environment variables naming its datasets
    backend: str | None = None     # transfer backend
    backbone: Path | None = None   # the exported backbone a transfer step fine-tunes
    after: tuple[str, ...] = ()    # keys of the steps it waits for
    key: str = ""                  # unique and stable: names its job and its chain files
    output_root: Path | None = None  # where a pre-training or transfer step's run folder is

    @property
    def config(self) -> str:
        return self.args[1]

    @property
    def overrides(self) -> list[str]:
        return [a for a in self.args[2:] if "=" in a and not a.startswith("-")]

    @property
    def seed(self) -> int | None:
        """A transfer step's fine-tuning seed (--seed), a pre-training step's seed."""
        if "--seed" in self.args:
            return int(self.args[self.args.index("--seed") + 1])
        seeds = [a.split("=", 1)[1] for a in self.overrides if a.startswith("seed=")]
        return int(seeds[0]) if seeds else None

    def run_dir(self) -> Path | None:
        """The run folder the step writes (None for robustness and results, which keep their
        outputs themselves)."""
        if self.stage == "pretrain":
            return self.output_root / Path(self.config).relative_to("pretrain/configs") \
                .with_suffix("") / f"seed{self.seed}"
        if self.stage == "transfer":
            try:  # the export's own metadata, when it exists, names the folder
                meta = json.loads(identity.metadata_path(self.backbone).read_text())
            except (OSError, ValueError):
                meta = exported_meta(self.backbone)
            return naming.run_dir(self.output_root, naming.config_name(self.config), meta,
                                  self.backbone, self.seed or 0)
        return None

    def state(self, exact: bool = True) -> tuple[State, str]:
        """(DONE | TODO | STALE, why), from the files as they are now. `exact` asks the stage
        itself (configs and weights compared; needs the environment), else files only."""
        if self.stage in ("robustness", "results"):  # they skip what is done themselves
            return State.TODO, ""
        if self.stage == "transfer" and not identity.metadata_path(self.backbone).is_file():
            return State.TODO, f"waits for its backbone {self.backbone}"
        if exact:
            try:
                if self.stage == "pretrain":
                    from pretrain.engine import status
                    state, why = status(self.config, self.overrides)
                else:
                    from transfer.lifecycle import status
                    state, why = status(self.config, self.backbone, self.overrides, self.seed,
                                        output_root=self.output_root)
                return State(state), why
            except KdclError as e:  # the stage says it again, in full, when the step runs
                return State.TODO, f"not checked yet: {str(e).splitlines()[0]}"
        return file_state(self.run_dir(), "result.json" if self.stage == "transfer"
                          else "export/manifest.json")


def exported_meta(backbone: Path) -> dict:
    """What an export's metadata will say about where it comes from, read off its path
    (<runs>/pretrain/<config>/seed<n>/export/<student>.pth), before it exists."""
    parts = backbone.parts
    start = len(parts) - 1 - parts[::-1].index("pretrain")
    config = "/".join(parts[start + 1:-3])
    return {"config_name": config, "seed": int(parts[-3][len("seed"):]), "name": backbone.stem}


def file_state(run_dir: Path, marker: str) -> tuple[State, str]:
    """A step's state from its files alone: finished, and from the weights it recorded."""
    if not run_dir.is_dir():
        return State.TODO, ""
    stale = identity.stale_inputs(run_dir)
    if stale is None:
        return State.STALE, f"{run_dir} does not record its inputs (an older kdcl-bench)"
    if stale:
        return State.STALE, "made from other weights: " + "; ".join(stale)
    return (State.DONE, "") if (run_dir / marker).is_file() else (State.TODO, "")


# --------------------------------------------------------------------------- the presets
# Pre-training: config folders under pretrain/configs, and for each the configs to run (None: all).
# Smoke runs the methods pretrain/registry.py marks `smoke`.
PRETRAIN = {
    "smoke": {"smoke": tuple(m.name for m in registry.METHODS if m.smoke)},
    "cifar": {"cifar": None},
    "paper": {"imagenet": None},
}
# Transfer: (pre-training configs, students) whose exports are fine-tuned with each backend's
# configs of the preset (transfer/backends/__init__.py). Smoke keeps to ResNet-18 from
# independent training and KDCL-MinLogit: one delta per task within the preset's time budget.
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
# Fig. 4: exports evaluated under pixel noise (pretrain.robustness), per preset: the configs
# (KDCL-General and what the figure compares it with), the student, and the command's options.
# Smoke: a coarse grid, enough to draw the figure's plumbing; cifar: the paper's grid.
ROBUSTNESS = {
    "smoke": (("smoke/independent", "smoke/kdcl_general"), "resnet18",
              ("--draws", "2", "--deltas", "0", "0.05", "0.1", "0.15")),
    "cifar": (("cifar/independent", "cifar/dml", "cifar/kdcl_general", "cifar/kdcl_general_icl"),
              "cifar_resnet32", ()),
}
PRETRAIN_NEEDS = {"smoke": (), "cifar": ("CIFAR100_ROOT",), "paper": ("IMAGENET_ROOT",)}
_WIDTH = re.compile(r"_x[0-9.]+$")  # models.label's width suffix: mobilenet_v2_x0.5


def architecture(student: str) -> str:
    """A student's architecture from its export name (models.label: mobilenet_v2_x0.5)."""
    return _WIDTH.sub("", student)


def pretrain_configs(preset: str, root: Path, all_methods: bool = False) -> list[str]:
    """Config names (path under pretrain/configs, no suffix), sorted by name.
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
    return sorted(names)


def export_of(pretrain_config: str, seed: int, student: str, layout: Layout = DEFAULT) -> Path:
    return layout.pretrain / pretrain_config / f"seed{seed}" / "export" / f"{student}.pth"


def available_backends() -> dict[str, bool]:
    """Which transfer backends this Python can import."""
    return {entry.name: entry.available() for entry in backends.REGISTRY}


def key_of(run_dir: Path | None, label: str, layout: Layout) -> str:
    """A step's key: its run folder under the runs folder (pretrain/smoke/kdcl_minlogit/seed0),
    or its label as a file name."""
    if run_dir is None:
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")
    return str(run_dir.relative_to(layout.runs))


def teacher_of(config: str, seed: int, root: Path, layout: Layout = DEFAULT) -> Path | None:
    """The export a KD config's run reads as its teacher (None for other methods), resolved
    through the config loader when the environment has it; without it (a dry run before
    set-up), the baseline run of the same config folder and seed is assumed."""
    method = registry.of_config(Path(config).stem)
    if method is None or not method.needs_teacher:
        return None
    try:
        from omegaconf import OmegaConf

        from kdcl_common.config import read_yaml
    except ImportError:
        folder = Path(config).relative_to("pretrain/configs").parent
        return layout.pretrain / folder / registry.BASELINE / f"seed{seed}" / "export"
    # only method.teacher is resolved: the dataset variables need not be set for a plan
    data = {**read_yaml(root / config), "seed": seed, "output_root": str(layout.pretrain)}
    teacher = OmegaConf.select(OmegaConf.create(data), "method.teacher")
    return Path(teacher) if teacher else None


def producer(path: Path, steps: list[Step]) -> Step | None:
    """The pre-training step whose run folder holds `path` (an export, or its folder)."""
    for step in steps:
        if step.stage == "pretrain" and (step.run_dir() == path or step.run_dir() in path.parents):
            return step
    return None


def build(preset: str, seeds: list[int], backend_names: list[str], root: Path = Path("."),
          all_methods: bool = False, transfer_seeds: tuple[int, ...] = (0,),
          layout: Layout = DEFAULT, settings: dict[str, tuple[str, ...]] | None = None
          ) -> list[Step]:
    """Every step of a preset, in an order in which they can run one after another
    (`all_methods`: pretrain_configs; `transfer_seeds`: the fine-tuning seeds of every
    transfer cell; `layout`: where outputs go; `settings`: config overrides per stage or
    backend, e.g. {"pretrain": ("optim.epochs=1",)})."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    steps: list[Step] = []
    settings = settings or {}
    moved = not layout.default

    def add(stage: str, label: str, args: tuple[str, ...], after=(), key: str = "",
            **kwargs) -> Step:
        step = Step(stage, label, args, after=tuple(s.key for s in after if s), **kwargs)
        step = Step(**{**step.__dict__, "key": key or key_of(step.run_dir(), label, layout)})
        steps.append(step)
        return step

    pretrain = []
    for seed in seeds:
        for name in pretrain_configs(preset, root, all_methods):
            config = f"pretrain/configs/{name}.yaml"
            teacher = teacher_of(config, seed, root, layout)
            pretrain.append((config, seed, teacher))
    # the baseline first (every table compares with it), runs with a teacher last: the plan is
    # also the local chain's order
    def rank(run: tuple) -> int:
        method = registry.of_config(Path(run[0]).stem)
        return 2 if run[2] is not None else 0 if method and method.name == registry.BASELINE else 1

    for config, seed, teacher in sorted(pretrain, key=rank):
        where = (f"output_root={layout.pretrain}", f"records={layout.records}") if moved else ()
        add("pretrain", f"pretrain {Path(config).relative_to('pretrain/configs').with_suffix('')} "
                        f"seed{seed}",
            ("pretrain", config, f"seed={seed}", *where, *settings.get("pretrain", ())),
            after=[producer(teacher, steps)] if teacher else (), needs=PRETRAIN_NEEDS[preset],
            output_root=layout.pretrain)
    selected = [backends.get(name) for name in backends.names() if name in backend_names]
    for seed in seeds:
        for sources, students in TRANSFER_SOURCES[preset]:
            for source in sources:
                for student in students:
                    backbone = export_of(source, seed, student, layout)
                    for entry in selected:
                        for config in entry.config_files(preset, architecture(student)):
                            for transfer_seed in transfer_seeds:
                                add("transfer",
                                    f"transfer {naming.config_name(config)} <- {source} seed{seed} "
                                    f"{student}" + (f" ft-seed{transfer_seed}"
                                                    if transfer_seeds != (0,) else ""),
                                    ("transfer", config, "--backbone", str(backbone),
                                     "--seed", str(transfer_seed),
                                     *(("--output-root", str(layout.transfer), "--records",
                                        str(layout.records)) if moved else ()),
                                     *settings.get(entry.name, ())),
                                    after=[producer(backbone, steps)],
                                    needs=() if preset == "smoke" else (entry.data.name,),
                                    backend=entry.name, backbone=backbone,
                                    output_root=layout.transfer)
    if preset in ROBUSTNESS:
        configs, student, options = ROBUSTNESS[preset]
        for seed in seeds:  # one step per seed: the exports share one pass over the test split
            exports = [export_of(c, seed, student, layout) for c in configs]
            add("robustness", f"robustness {student} seed{seed} ({', '.join(configs)})",
                ("pretrain.robustness", *map(str, exports), *options,
                 *(("--records", str(layout.records)) if moved else ())),
                after=[producer(e, steps) for e in exports], needs=PRETRAIN_NEEDS[preset],
                key=f"robustness/{student}/seed{seed}")
    add("results", "results tables and figures",
        ("results", *(("--records", str(layout.records), "--out", str(layout.results))
                      if moved else ())), after=list(steps), key="results")
    return steps


def matches(step: Step, what: str) -> bool:
    return what == step.stage or what == step.backend or what in step.label


def select(steps: list[Step], only: list[str]) -> list[Step]:
    """The steps matching any of `only`: a stage, a backend, or a piece of a step's label.
    A `what` that matches no step is an error that lists what would."""
    unmatched = [w for w in only if not any(matches(s, w) for s in steps)]
    if unmatched:
        planned = sorted({s.backend for s in steps if s.backend}) or ["none planned"]
        raise ValueError(
            f"--only {' '.join(unmatched)} matches no step of this plan. --only takes a stage "
            f"({', '.join(STAGES)}), a backend ({', '.join(planned)}) "
            f"or a piece of a step's name, e.g. {steps[0].label.split()[1] if steps else '?'}; "
            f"`bash run_all.sh --dry-run` lists the steps")
    return [s for s in steps if not only or any(matches(s, w) for w in only)]


def critical_path(steps: list[Step], remaining: set[str], cost) -> list[Step]:
    """The longest chain of dependent steps among `remaining` (keys), by `cost(step)` in any
    unit (hours), in order: what bounds the time the rest takes on an unbounded cluster."""
    by_key = {s.key: s for s in steps}
    best: dict[str, tuple[float, list[Step]]] = {}
    for step in steps:  # in plan order: every step after those it waits for
        if step.key not in remaining:
            continue
        before = max((best[k] for k in step.after if k in best), key=lambda b: b[0],
                     default=(0.0, []))
        best[step.key] = (before[0] + cost(by_key[step.key]), [*before[1], step])
    return max(best.values(), key=lambda b: b[0], default=(0.0, []))[1]
