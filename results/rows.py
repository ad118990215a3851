"""Which rows a table has and in what order, read from the method registry
(pretrain/registry.py): row labels, row order, and multi-branch runs (ONE, CLNN) as the one
network they export."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pretrain import registry  # standard library only: no torch

# The paper's KDCL variant that it does not name (paper_kdcl.csv); after the registry's methods.
PAPER_VARIANT = "kdcl*"


def method_of(label: str) -> str:
    """The method of a row label: "kd ← resnet50", "independent [lambda_0.1]" and
    "dml (paper only)" are rows of kd, independent and dml."""
    return label.split(" ")[0]


def method_label(method: str, teacher) -> str:
    # A KD row is defined by its teacher's architecture (the path differs per seed).
    return f"kd ← {Path(teacher).stem}" if method == "kd" and teacher else method


def method_rank(method: str) -> int:
    """A method's place in tables and legends: the registry's order, then the paper's unnamed
    variant, then anything else."""
    names = registry.NAMES
    if method in names:
        return names.index(method)
    return len(names) + (method != PAPER_VARIANT)


def row_order(label: str, icl) -> tuple:
    return (method_rank(method_of(label)), icl is True, label)


def multi_branch(method) -> bool:
    try:
        return registry.get(method).multi_branch
    except KeyError:
        return False


def fold_branches(data: pd.DataFrame) -> pd.DataFrame:
    """A multi-branch run (ONE, CLNN) as the one network it exports, under its architecture's
    name: the table's number is the exported branch's (records with `exported`: branch 0 or
    head 0, as the configs say; the branches are exchangeable), the others leave the tables.
    Records without the flag: the first branch."""
    mask = (data["stage"] == "pretrain") & data["method"].map(multi_branch).astype(bool)
    if not mask.any():
        return data
    part = data[mask]
    chosen = part[exported_branch(part)]
    return pd.concat([data[~mask], chosen.assign(student=chosen["backbone"])], ignore_index=True)


def exported_branch(part: pd.DataFrame) -> pd.Series:
    """Per record of multi-branch runs: whether it is its run's exported branch (the flag, or the
    first branch for records without it)."""
    flagged = part["exported"].map(lambda v: v is True)
    any_flag = flagged.groupby(part["run_dir"]).transform("any")
    first = part.groupby("run_dir")["student"].transform(
        lambda names: min(names, key=lambda n: (len(n), n)))
    return flagged | (~any_flag & (part["student"] == first))


def student_order(groups: pd.Series) -> list[str]:
    """Students in the order of their group (largest group first), as the config lists them."""
    order: list[str] = []
    for group in sorted(set(groups.dropna()), key=lambda g: -len(g.split("+"))):
        order += [s for s in group.split("+") if s not in order]
    return order


def row_labels(part: pd.DataFrame) -> list[str]:
    """Each record's row label: the method (and KD's teacher). Several configs of one folder with
    the same method, ICL and students (a sweep: cifar/lambda) are rows of their own, named by
    config, not seeds of one row."""
    labels = [method_label(m, t) for m, t in zip(part["method"], part["teacher"])]
    keys = list(zip(labels, part["icl"].map(repr), part["student"]))
    configs: dict[tuple, set] = {}
    for key, config in zip(keys, part["config"]):
        configs.setdefault(key, set()).add(config)
    swept = {k[:2] for k, c in configs.items() if len(c) > 1}
    return [f"{label} [{Path(config).name}]" if key[:2] in swept else label
            for label, key, config in zip(labels, keys, part["config"])]
