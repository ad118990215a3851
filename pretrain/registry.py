"""The pre-training methods: one table of what each method is and needs, read by every stage.

Standard library only, so that the chain's plan (`run_all.sh --dry-run`, before the environment
exists) and the results tables read it without importing torch. Each entry names the class that
implements the method as "module:Class"; `pretrain.methods.method_class` imports it only when a
run builds the method. The order of `METHODS` is the row order of the tables (baseline,
the paper's baselines, controls, then the KDCL variants). Everything that lists methods reads
`METHODS` when it needs it (NAMES below is computed from it on each read), so one new entry is
the whole registration.

Adding a method is one file and one line here: a `Method` subclass (pretrain/methods.py says
which hooks it may override) and its `Entry`. The config check, the config schema, the engine,
the chain, the benchmark and the tables read the rest from the entry:

    name            method.name in the configs; also the file stem of its configs
    target          "module:Class" of the implementation
    label           its row label in the paper's tables
    min_students    how many entries `students:` needs (2: students learn from each other)
    max_students    how many it may have (1: the method builds its own branches from one)
    needs_held_out  per-epoch state estimated on the held-out split (data.held_out_per_class)
    multi_branch    one network with several branches, built from the one student
    icl             whether method.icl=true (one view per student) is meaningful
    kdcl_variant    one of the paper's KDCL soft targets (the benchmark times these)
    smoke           run by the smoke preset of `run_all.sh` (the others with --all-methods: the
                    preset keeps to about 15 minutes on 2 cores); its config must exist as
                    pretrain/configs/smoke/<name>.yaml (tests/test_registry.py checks)
    options         the method's own config keys (`Option`s), method.<key> beside the keys
                    every method reads (name, temperature, kd_weight, ce_weight, icl)
    params          keyword arguments of the class (e.g. which soft target)

An entry needs a frozen teacher (`needs_teacher`: the chain trains the teacher's run first)
when it declares the `TEACHER` option.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

BASELINE = "independent"  # what every table compares with; its exports are KD's teachers


@dataclass
class SplitConfig:
    """One split of a multi-branch network (an item of method.splits)."""
    stage: str = field(metadata={"help": "the stage where the branches begin (resnet: layer1.."
                                         "layer4; cifar_resnet: layer1..layer3; wrn: block1.."
                                         "block3)"})
    fan_out: int = field(metadata={"help": "copies of that stage and everything after it, per "
                                           "node above"})


@dataclass(frozen=True)
class Option:
    """A config key of a method's own, method.<name>. The config schema (pretrain/config.py)
    has one field per option that some entry declares; the config check refuses a value other
    than the default for a method that does not declare it, naming the methods that do. Methods
    that share a key (ONE's and CLNN's splits) declare the same Option object."""
    name: str
    type: Any                # the schema type: str, float, Optional[str], List[SplitConfig], ...
    default: Any             # also "unset": what every method that does not declare it has
    help: str
    choices: tuple = ()      # the allowed values (empty: any value of `type`)
    required: bool = False   # the declaring method refuses the default (KD's teacher)


TEACHER = Option("teacher", Optional[str], None, "an exported backbone .pth (with its .json) "
                 "used as the frozen teacher", required=True)
SPLITS = Option("splits", List[SplitConfig], [], "where the network branches, from the input "
                "on, e.g. [{stage: layer4, fan_out: 3}]; [] = the method's default (one: 3 "
                "branches of the last stage; clnn: 2 of the second-last, each with 2 of the "
                "last), resolved into the config")
RAMPUP_EPOCHS = Option("rampup_epochs", Optional[float], None, "epochs over which the weight of "
                       "the KL terms ramps up, exp(-5 (1 - e/R)^2) in epoch e (0-based, 1 from "
                       "e = R on), as ONE's official code (--consistency_rampup 80 of its 300 "
                       "epochs); null = the same fraction of this run, 80/300 x optim.epochs, "
                       "resolved into the config; 0 = weight 1 from the first step")
GENERAL_ERROR = Option("general_error", str, "squared", "the held-out error: 'squared' (Eq. 8) "
                       "or 'cross_entropy' (Eq. 12)", choices=("squared", "cross_entropy"))


@dataclass(frozen=True)
class Entry:
    name: str
    target: str
    label: str
    min_students: int = 1
    max_students: int | None = None
    needs_held_out: bool = False
    multi_branch: bool = False
    icl: bool = True
    kdcl_variant: bool = False
    smoke: bool = False
    options: tuple[Option, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_teacher(self) -> bool:
        """A frozen teacher, method.teacher (exported by an independent run first)."""
        return TEACHER in self.options


def _kdcl(name: str, label: str, ensemble: str | None, smoke: bool = True, **facts: Any) -> Entry:
    target = "pretrain.methods:General" if ensemble is None else "pretrain.methods:SharedTarget"
    return Entry(name, target, label, min_students=2, kdcl_variant=True, smoke=smoke,
                 params={} if ensemble is None else {"ensemble": ensemble}, **facts)


METHODS: tuple[Entry, ...] = (
    Entry("independent", "pretrain.methods:Independent", "Vanilla", smoke=True),
    Entry("dml", "pretrain.methods:DML", "DML", min_students=2),
    Entry("kd", "pretrain.methods:KD", "KD [Hinton]", options=(TEACHER,)),
    Entry("one", "pretrain.one:ONE", "ONE", max_students=1, multi_branch=True, icl=False,
          smoke=True, options=(SPLITS, RAMPUP_EPOCHS)),
    Entry("clnn", "pretrain.clnn:CLNN", "CLNN", max_students=1, multi_branch=True, icl=False,
          smoke=True, options=(SPLITS,)),
    Entry("mean", "pretrain.methods:SharedTarget", "mean logit (control)", min_students=2,
          params={"ensemble": "mean"}),
    # Naive and Linear differ from MinLogit only in the ensemble function (tested on its own):
    # the smoke chain's least informative runs
    _kdcl("kdcl_naive", "KDCL-Naive", "naive", smoke=False),
    _kdcl("kdcl_linear", "KDCL-Linear", "linear", smoke=False),
    _kdcl("kdcl_minlogit", "KDCL-MinLogit", "minlogit"),
    _kdcl("kdcl_general", "KDCL-General", None, needs_held_out=True, options=(GENERAL_ERROR,)),
)


def __getattr__(name: str) -> Any:
    # NAMES is read from METHODS each time (PEP 562), so that it can never be a stale copy.
    if name == "NAMES":
        return tuple(m.name for m in METHODS)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get(name: str) -> Entry:
    """The entry of method `name` (KeyError for an unknown one: configs check with NAMES)."""
    for entry in METHODS:
        if entry.name == name:
            return entry
    raise KeyError(f"unknown method {name!r}; known methods: {', '.join(m.name for m in METHODS)}")


def options() -> dict[str, tuple[Option, tuple[str, ...]]]:
    """Every declared option by key, with the names of the methods that declare it, in the
    registry's order. Raises TypeError when two entries declare one key differently (declare
    one Option object and give it to both)."""
    out: dict[str, tuple[Option, tuple[str, ...]]] = {}
    for entry in METHODS:
        for opt in entry.options:
            known, users = out.get(opt.name, (opt, ()))
            if known != opt:
                raise TypeError(f"method option {opt.name!r} is declared differently by "
                                f"{', '.join(users)} and {entry.name}: declare one Option and "
                                f"use it in each entry")
            out[opt.name] = (opt, (*users, entry.name))
    return out


def kdcl_variants() -> tuple[str, ...]:
    return tuple(m.name for m in METHODS if m.kdcl_variant)


def of_config(stem: str) -> Entry | None:
    """The method a config file is named after: its stem is the method's name, or starts with
    it and an underscore (kdcl_general_icl, kd_wrn_16_2_to_resnet32); the longest name wins."""
    matches = [m for m in METHODS if stem == m.name or stem.startswith(m.name + "_")]
    return max(matches, key=lambda m: len(m.name)) if matches else None
