"""The paper's Tables 1, 3, 4, 5, 9 and 10 in its own layout, assembled from rows that live in
several config folders (the per-folder tables of tabulate.py stay as they are).

Each table names the configs behind its rows (pretrain/configs/...); a table is built when the
records hold at least one of them, and its other rows show the paper's numbers alone. Cells are
the same as tabulate's (mean ± std over seeds, Δ with a Welch interval, paper columns). ONE and
CLNN count by their exported branch (rows.fold_branches); Table 5's ResNet-18s, separate
networks of one run, by their mean per seed. Paper values are looked up in paper_kdcl.csv by
setting, which is the config folder (rows shared with the per-folder tables) or the config
itself (Tables 1, 9, 10, whose cells belong to one config each).
"""
from __future__ import annotations

import math
import pandas as pd

from . import cells, stats
from .cells import BEST, EPOCH_NOTE, PAPER_ONLY, Table, seed_means
from .rows import PAPER_VARIANT, fold_branches, method_label, row_order

NAN = (math.nan, math.nan)
PAPER = ("paper: Guo et al.'s (CVPR 2020) value for the same cell ({table}), from "
         "results/paper_kdcl.csv; paper Δ: their own gain over their own baseline.")

# Table 1. The hard-label ResNet-18 is Table 5's one network: the same recipe (100 epochs, alone),
# and the paper gives 70.1 for both (Table 1's caption and Table 5).
T1_BASELINE = "imagenet/r18x1/independent"
T1_TEACHERS = [("resnet34", "r34"), ("resnet50", "r50"), ("resnet101", "r101")]
# Table 3: (row, config, paper setting, paper method). KDCL with either peer is MinLogit, the one
# variant the MobileNetV2 x1.2 folder has; the paper names none (its 73.1 / 91.2 with ResNet-50 are
# both Linear's and MinLogit's in Table 2).
T3_ROWS = [
    ("Vanilla", "imagenet/r18/independent", "imagenet/r18", "independent"),
    ("ONE (3 branches)", "imagenet/r18/one", "imagenet/r18", "one"),
    ("KDCL-MinLogit, peer MobileNetV2 x1.2", "imagenet/r18_mbv2x1.2/kdcl_minlogit",
     "imagenet/r18_mbv2x1.2", PAPER_VARIANT),
    ("CLNN (4 heads)", "imagenet/r18/clnn", "imagenet/r18", "clnn"),
    ("KDCL-MinLogit, peer ResNet-50", "imagenet/r50_r18/kdcl_minlogit", "imagenet/r50_r18",
     "kdcl_minlogit"),
]
# Table 4: (folder, model 1, model 2), in the paper's row order.
T4_PAIRS = [
    ("imagenet/mbv2_mbv2x0.5", "mobilenet_v2", "mobilenet_v2_x0.5"),
    ("imagenet/r18_mbv2x0.5", "resnet18", "mobilenet_v2_x0.5"),
    ("imagenet/r18_mbv2", "resnet18", "mobilenet_v2"),
    ("imagenet/r50_mbv2x0.5", "resnet50", "mobilenet_v2_x0.5"),
    ("imagenet/r50_r18_100ep", "resnet50", "resnet18"),
]
# Table 5: (number of ResNet-18s, config); MinLogit, as the configs say.
T5_CONFIGS = [(1, "imagenet/r18x1/independent")] + \
    [(n, f"imagenet/r18x{n}/kdcl_minlogit") for n in range(2, 6)]
# Table 9: (lambda, config), KDCL-General with ICL. Lambda = 1 is Table 7's row, whose runs it
# reuses (the paper's Table 9 repeats its 74.3 / 75.5).
T9_LAMBDAS = [(0.1, "cifar/lambda/lambda_0.1"), (0.2, "cifar/lambda/lambda_0.2"),
              (0.5, "cifar/lambda/lambda_0.5"), (1.0, "cifar/kdcl_general_icl"),
              (2.0, "cifar/lambda/lambda_2"), (5.0, "cifar/lambda/lambda_5"),
              (10.0, "cifar/lambda/lambda_10")]
CIFAR_STUDENTS = ["cifar_resnet32", "wrn_16_2"]
# Table 10: (method, ICL, config with Cutout, the same without it: Table 7's row). The paper does
# not name the KDCL variant; the section around it is about KDCL-General.
T10_ROWS = [("independent", False, "cifar/cutout/independent", "cifar/independent"),
            ("kdcl_general", False, "cifar/cutout/kdcl_general", "cifar/kdcl_general"),
            ("kdcl_general", True, "cifar/cutout/kdcl_general_icl", "cifar/kdcl_general_icl")]

T1_CONFIGS = (T1_BASELINE,) + tuple(config for _, tag in T1_TEACHERS for config in (
    f"imagenet/teachers/independent_{tag}", f"imagenet/teachers/kd_{tag}_to_r18"))
# Per table: its title and the configs behind its rows (Table 4: config folders).
SPECS = {
    "paper_table1": ("Table 1 (paper layout): teacher quality, KD into ResNet-18 (ImageNet, "
                     "100 epochs)", T1_CONFIGS),
    "paper_table3": ("Table 3 (paper layout): ResNet-18 alone, with ONE, CLNN and KDCL "
                     "(ImageNet)", tuple(r[1] for r in T3_ROWS)),
    "paper_table4": ("Table 4 (paper layout): pairs of networks (ImageNet)",
                     tuple(f for f, _, _ in T4_PAIRS)),
    "paper_table5": ("Table 5 (paper layout): number of ResNet-18s trained together (ImageNet, "
                     "100 epochs)", tuple(c for _, c in T5_CONFIGS)),
    "paper_table9": ("Table 9 (paper layout): λ, the weight of the distillation term "
                     "(KDCL-General with ICL, CIFAR-100)", tuple(c for _, c in T9_LAMBDAS)),
    "paper_table10": ("Table 10 (paper layout): the Cutout policy (CIFAR-100)",
                      tuple(r[2] for r in T10_ROWS)),
}


def _runs(data: pd.DataFrame, config: str) -> pd.DataFrame:
    return data[data["config"] == config]


def _arch(frame: pd.DataFrame, backbone: str) -> pd.DataFrame:
    return frame[frame["backbone"] == backbone]


def paper_value(paper: pd.DataFrame, setting: str, backbone: str, metric: str = "top1",
                method: str | None = None, icl=None) -> float:
    rows = paper[(paper["setting"] == setting) & (paper["backbone"] == backbone)
                 & (paper["metric"] == metric) & (paper["task"] == "classification")]
    if method is not None:
        rows = rows[rows["method"] == method]
    if icl is not None:
        rows = rows[rows["icl"].isna() | (rows["icl"] == icl)]
    return float(rows["value"].iloc[0]) if len(rows) else math.nan


def _top1(block: str, mine: pd.DataFrame, baseline=None, paper=NAN) -> dict:
    """top-1 (Δ against `baseline`'s per-seed values unless None), and the best epoch's."""
    return cells.cell(block, "top-1", seed_means(mine, "top1"), baseline, paper) | \
        cells.best_cell(block, mine)


def _params(block: str, runs: pd.DataFrame, paper: float) -> dict:
    """The training system's parameter count in millions (a property of the config: no spread);
    – for records from before the engine wrote it."""
    counts = pd.to_numeric(runs.drop_duplicates("run_dir")["system_parameters"],
                           errors="coerce").dropna()
    out = {(block, "params (M)", "mean"): counts.mean() / 1e6 if len(counts) else math.nan,
           (block, "params (M)", "n"): len(counts) if len(counts) else math.nan}
    if not math.isnan(paper):
        out[(block, "params (M)", "paper")] = paper
    return out


def _caption(what: str, baseline: str, table: str) -> str:
    return " ".join([what, f"Δ compares with {baseline}.", stats.CAPTION, EPOCH_NOTE,
                     PAPER.format(table=table)])


def _table(name: str, rows: dict, pieces: list[tuple[tuple, pd.DataFrame]], names: list[str],
           blocks: list[str], columns: list[str], caption: str, baseline: str) -> Table:
    """Rows in the order given; `pieces` tie each row to the records behind it (the trace)."""
    frames = [f.assign(row=[key] * len(f)) for key, f in pieces if not f.empty]
    part = pd.concat(frames, ignore_index=True) if frames else \
        pd.DataFrame(columns=["row", "config", "run_dir"])
    data, trace = cells.frame(rows, part, names, list(rows).index, blocks, columns)
    return Table(name, SPECS[name][0], caption, data, trace, baseline=baseline, headline=False)


def table1(data: pd.DataFrame, paper: pd.DataFrame) -> Table:
    student, teacher = "student", "teacher"
    base_runs = _arch(_runs(data, T1_BASELINE), "resnet18")
    base = seed_means(base_runs, "top1")
    paper_base = paper_value(paper, T1_BASELINE, "resnet18")
    key = ("none (hard labels)",)
    rows = {key: _top1(student, base_runs, None, (paper_base, math.nan))}
    pieces = [(key, base_runs)]
    for arch, tag in T1_TEACHERS:
        t_config = f"imagenet/teachers/independent_{tag}"
        kd_config = f"imagenet/teachers/kd_{tag}_to_r18"
        t_runs = _arch(_runs(data, t_config), arch)
        kd_runs = _arch(_runs(data, kd_config), "resnet18")
        key = (arch,)
        rows[key] = _top1(teacher, t_runs, None, (paper_value(paper, t_config, arch), math.nan))
        rows[key] |= _top1(student, kd_runs, base,
                           (paper_value(paper, kd_config, "resnet18"), paper_base))
        pieces += [(key, t_runs), (key, kd_runs)]
    what = ("Rows: the teacher of vanilla KD (each the export of its own independent run of the "
            "same seed, imagenet/teachers/independent_*); teacher: its top-1; student: the "
            "ResNet-18 distilled from it (imagenet/teachers/kd_*_to_r18). The hard-label "
            f"ResNet-18 is {T1_BASELINE} (the same 100-epoch recipe).")
    return _table("paper_table1", rows, pieces, ["teacher"], [teacher, student], ["top-1", BEST],
                  _caption(what, "the hard-label ResNet-18", "Table 1"), "the hard-label ResNet-18")


def table3(data: pd.DataFrame, paper: pd.DataFrame) -> Table:
    block = "resnet18"
    vanilla = _arch(_runs(data, T3_ROWS[0][1]), block)
    base = seed_means(vanilla, "top1")
    paper_base = paper_value(paper, T3_ROWS[0][2], block, method=T3_ROWS[0][3])
    rows, pieces = {}, []
    for label, config, setting, method in T3_ROWS:
        runs = _runs(data, config)
        mine = _arch(runs, block)
        first = config == T3_ROWS[0][1]
        top1 = paper_value(paper, setting, block, "top1", method)
        top5 = paper_value(paper, setting, block, "top5", method)
        row = _top1(block, mine, None if first else base,
                    (top1, math.nan if first else paper_base))
        row |= cells.cell(block, "top-5", seed_means(mine, "top5"), None, (top5, math.nan))
        row |= _params(block, runs, paper_value(paper, setting, block, "params", method))
        rows[(label,)] = row
        pieces.append(((label,), mine))
    what = ("ResNet-18's top-1/top-5 (%) after training alone, in a multi-branch network (ONE, "
            "CLNN: the exported branch, head 0, a plain ResNet-18) or with a KDCL peer; "
            "params (M): the parameters of the whole training system, counted from the models "
            "(record field system_parameters; – for records without it).")
    return _table("paper_table3", rows, pieces, ["method"], [block],
                  ["top-1", BEST, "top-5", "params (M)"],
                  _caption(what, "Vanilla (ResNet-18 alone, imagenet/r18/independent)",
                           "Table 3; Table 2 for the ResNet-50 peer's top-1"),
                  "Vanilla (ResNet-18 alone)")


def table4(data: pd.DataFrame, paper: pd.DataFrame) -> Table:
    blocks = ["model 1", "model 2"]
    rows, pieces = {}, []
    for folder, first, second in T4_PAIRS:
        runs = data[data["setting"] == folder]
        runs = runs.assign(label=[method_label(m, t) for m, t in zip(runs["method"],
                                                                       runs["teacher"])])
        keys = set(zip(runs["label"], runs["icl"]))
        methods = paper[paper["setting"] == folder][["method", "icl"]].drop_duplicates()
        for method, icl in methods.itertuples(index=False):
            if not any(m == method and (icl is None or i is None or i == icl) for m, i in keys):
                keys.add((method + PAPER_ONLY, icl))
        for label, icl in sorted(keys, key=lambda k: row_order(*k)):
            mine = runs[(runs["label"] == label) & runs["icl"].map(lambda v: v is icl)]
            method = label.removesuffix(PAPER_ONLY)
            epochs = ", ".join(str(int(e)) for e in sorted(set(mine["epochs"].dropna())))
            key = (first, second, epochs, method, icl)
            row = {}
            for block, arch in zip(blocks, (first, second)):
                independent = _arch(runs[runs["method"] == "independent"], arch)
                compare = None if method == "independent" else seed_means(independent, "top1")
                ref = (paper_value(paper, folder, arch, method=method, icl=icl),
                       math.nan if method == "independent" else
                       paper_value(paper, folder, arch, method="independent"))
                row |= _top1(block, _arch(mine, arch), compare, ref)
            rows[key] = row
            pieces.append((key, mine))
    what = ("Each pair of networks trained together (config folders imagenet/mbv2_mbv2x0.5, "
            "r18_mbv2x0.5, r18_mbv2, r50_mbv2x0.5, r50_r18_100ep); epochs: ours, per row (the "
            "paper's * marks 100-epoch ResNets and 200-epoch MobileNetV2s; its vanilla "
            "MobileNetV2s trained 300 epochs alone).")
    return _table("paper_table4", rows, pieces, ["model 1", "model 2", "epochs", "method", "ICL"],
                  blocks, ["top-1", BEST],
                  _caption(what, "the same pair trained independently", "Table 4"),
                  "the same pair trained independently")


def table5(data: pd.DataFrame, paper: pd.DataFrame) -> Table:
    arch = "resnet18"
    one = _arch(_runs(data, T5_CONFIGS[0][1]), arch)
    base, paper_base = seed_means(one, "top1"), paper_value(paper, "imagenet/r18x1", arch)
    network, ensemble = ("resnet18 (each network)",), ("ensemble",)
    rows: dict[tuple, dict] = {network: {}, ensemble: {}}
    pieces, blocks = [], []
    for n, config in T5_CONFIGS:
        block = f"{n} network" + ("s" if n > 1 else "")
        blocks.append(block)
        mine = _arch(_runs(data, config), arch)
        method = "independent" if n == 1 else PAPER_VARIANT
        ref = paper_value(paper, f"imagenet/r18x{n}", arch, method=method)
        rows[network] |= _top1(block, mine, None if n == 1 else base,
                               (ref, math.nan if n == 1 else paper_base))
        if n > 1:
            ens = mine[mine["metric"] == "ensemble_top1"].drop_duplicates("run_dir")
            rows[ensemble] |= cells.cell(block, "top-1", seed_means(ens, "ensemble_top1"))
        pieces.append((network, mine))
    what = ("Columns: the number of ResNet-18s trained together with KDCL-MinLogit (one: "
            "alone); resnet18: per seed the mean top-1 over the run's networks; ensemble: the "
            "mean of their probabilities.")
    return _table("paper_table5", rows, pieces, ["network"], blocks, ["top-1", BEST],
                  _caption(what, "one network trained alone", "Table 5"), "one network alone")


def table9(data: pd.DataFrame, paper: pd.DataFrame) -> Table:
    rows, pieces = {}, []
    blocks = [f"λ={lam:g}" for lam, _ in T9_LAMBDAS]
    reference = dict(T9_LAMBDAS)[1.0]
    for student in CIFAR_STUDENTS:
        base = seed_means(_arch(_runs(data, reference), student), "top1")
        paper_base = paper_value(paper, reference, student)
        row = {}
        for block, (lam, config) in zip(blocks, T9_LAMBDAS):
            mine = _arch(_runs(data, config), student)
            same = config == reference
            row |= _top1(block, mine, None if same else base,
                         (paper_value(paper, config, student), math.nan if same else paper_base))
            pieces.append(((student,), mine))
        rows[(student,)] = row
    what = ("KDCL-General with ICL on CIFAR-100 for each λ (method.kd_weight; configs "
            "cifar/lambda/lambda_*; λ = 1 is cifar/kdcl_general_icl, Table 7's row, reused).")
    return _table("paper_table9", rows, pieces, ["network"], blocks, ["top-1", BEST],
                  _caption(what, "λ = 1 for the same network", "Table 9"), "λ = 1")


def table10(data: pd.DataFrame, paper: pd.DataFrame) -> Table:
    rows, pieces = {}, []
    vanilla = _runs(data, T10_ROWS[0][2])
    for method, icl, config, plain in T10_ROWS:
        mine, without = _runs(data, config), _runs(data, plain)
        first = config == T10_ROWS[0][2]
        row = {}
        for student in CIFAR_STUDENTS:
            base = None if first else seed_means(_arch(vanilla, student), "top1")
            ref = (paper_value(paper, config, student),
                   math.nan if first else paper_value(paper, T10_ROWS[0][2], student))
            row |= _top1(student, _arch(mine, student), base, ref)
            row |= cells.cell(student, "top-1 without Cutout",
                         seed_means(_arch(without, student), "top1"), None,
                         (paper_value(paper, "cifar", student, method=method, icl=icl),
                          math.nan))
        rows[(method, icl)] = row
        pieces += [((method, icl), mine), ((method, icl), without)]
    what = ("CIFAR-100 with Cutout (one square hole per view, data.cutout; configs "
            "cifar/cutout/*); top-1 without Cutout: the same method's Table 7 run (paper: Table "
            "7's value). The paper does not name its KDCL variant here; its section is about "
            "KDCL-General.")
    return _table("paper_table10", rows, pieces, ["method", "ICL"], CIFAR_STUDENTS,
                  ["top-1", BEST, "top-1 without Cutout"],
                  _caption(what, "Vanilla with Cutout", "Table 10; Table 7 without Cutout"),
                  "Vanilla with Cutout")


BUILDERS = {"paper_table1": table1, "paper_table3": table3, "paper_table4": table4,
            "paper_table5": table5, "paper_table9": table9, "paper_table10": table10}


def _pretrain(data: pd.DataFrame) -> pd.DataFrame:
    return fold_branches(data[data["stage"] == "pretrain"])


def has_records(data: pd.DataFrame, name: str) -> bool:
    """Whether the records hold a run of one of the table's configs (Table 4: config folders)."""
    configs = SPECS[name][1]
    data = data[data["stage"] == "pretrain"]
    return bool((data["config"].isin(configs) | data["setting"].isin(configs)).any())


def build(data: pd.DataFrame, paper: pd.DataFrame) -> list[Table]:
    """The tables that have records of at least one of their configs."""
    data = _pretrain(data)
    return [BUILDERS[name](data, paper) for name in SPECS if has_records(data, name)]


def notes(data: pd.DataFrame) -> list[str]:
    """What was not built for want of records, for the log and results/README.md."""
    missing = [name.removeprefix("paper_table") for name in SPECS if not has_records(data, name)]
    if not missing:
        return []
    return [f"paper-layout Table{'s' if len(missing) > 1 else ''} {', '.join(missing)}: not "
            "built, no records of their configs yet (the paper and cifar presets run them)"]
