"""The pre-training methods: one table of what each method is and needs, read by every stage.

Standard library only, so that the chain's plan (`run_all.sh --dry-run`, before the environment
exists) and the results tables read it without importing torch. Each entry names the class that
implements the method as "module:Class"; `pretrain.methods.method_class` imports it only when a
run builds the method. The order of `METHODS` is the row order of the tables (baseline,
the paper's baselines, controls, then the KDCL variants).

Adding a method is one file and one line here: a `Method` subclass (pretrain/methods.py says
which hooks it may override) and its `Entry`. The config check, the engine, the chain, the
benchmark and the tables read the rest from the entry:

    name            method.name in the configs; also the file stem of its configs
    target          "module:Class" of the implementation
    label           its row label in the paper's tables
    min_students    how many entries `students:` needs (2: students learn from each other)
    max_students    how many it may have (1: the method builds its own branches from one)
    needs_teacher   a frozen teacher, method.teacher (exported by an independent run first)
    needs_held_out  per-epoch state estimated on the held-out split (data.held_out_per_class)
    multi_branch    one network with several branches, built from the one student
    icl             whether method.icl=true (one view per student) is meaningful
    kdcl_variant    one of the paper's KDCL soft targets (the benchmark times these)
    smoke           run by the smoke preset of `run_all.sh` (the others with --all-methods: the
                    preset keeps to about 15 minutes on 2 cores)
    params          keyword arguments of the class (e.g. which soft target)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BASELINE = "independent"  # what every table compares with; its exports are KD's teachers


@dataclass(frozen=True)
class Entry:
    name: str
    target: str
    label: str
    min_students: int = 1
    max_students: int | None = None
    needs_teacher: bool = False
    needs_held_out: bool = False
    multi_branch: bool = False
    icl: bool = True
    kdcl_variant: bool = False
    smoke: bool = False
    params: dict[str, Any] = field(default_factory=dict)


def _kdcl(name: str, label: str, ensemble: str | None, smoke: bool = True, **facts: Any) -> Entry:
    target = "pretrain.methods:General" if ensemble is None else "pretrain.methods:SharedTarget"
    return Entry(name, target, label, min_students=2, kdcl_variant=True, smoke=smoke,
                 params={} if ensemble is None else {"ensemble": ensemble}, **facts)


METHODS: tuple[Entry, ...] = (
    Entry("independent", "pretrain.methods:Independent", "Vanilla", smoke=True),
    Entry("dml", "pretrain.methods:DML", "DML", min_students=2),
    Entry("kd", "pretrain.methods:KD", "KD [Hinton]", needs_teacher=True),
    Entry("one", "pretrain.one:ONE", "ONE", max_students=1, multi_branch=True, icl=False,
          smoke=True),
    Entry("clnn", "pretrain.clnn:CLNN", "CLNN", max_students=1, multi_branch=True, icl=False,
          smoke=True),
    Entry("mean", "pretrain.methods:SharedTarget", "mean logit (control)", min_students=2,
          params={"ensemble": "mean"}),
    # Naive and Linear differ from MinLogit only in the ensemble function (tested on its own):
    # the smoke chain's least informative runs
    _kdcl("kdcl_naive", "KDCL-Naive", "naive", smoke=False),
    _kdcl("kdcl_linear", "KDCL-Linear", "linear", smoke=False),
    _kdcl("kdcl_minlogit", "KDCL-MinLogit", "minlogit"),
    _kdcl("kdcl_general", "KDCL-General", None, needs_held_out=True),
)
NAMES: tuple[str, ...] = tuple(m.name for m in METHODS)


def get(name: str) -> Entry:
    """The entry of method `name` (KeyError for an unknown one: configs check with NAMES)."""
    for entry in METHODS:
        if entry.name == name:
            return entry
    raise KeyError(f"unknown method {name!r}; known methods: {', '.join(NAMES)}")


def kdcl_variants() -> tuple[str, ...]:
    return tuple(m.name for m in METHODS if m.kdcl_variant)


def of_config(stem: str) -> Entry | None:
    """The method a config file is named after: its stem is the method's name, or starts with
    it and an underscore (kdcl_general_icl, kd_wrn_16_2_to_resnet32); the longest name wins."""
    matches = [m for m in METHODS if stem == m.name or stem.startswith(m.name + "_")]
    return max(matches, key=lambda m: len(m.name)) if matches else None
