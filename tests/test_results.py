"""The results stage on constructed records: cell values, paper columns, significance, skipped
lines (malformed, or a field of the wrong type), stale records (transfer from replaced weights,
KD from a replaced teacher, robustness from a replaced export), atomic replacement of the output
folders and their modes, the smoke caption and the CLI end to end (a records path that does not
exist included); the best-epoch column, the paper-layout Tables 1, 3, 4, 5, 9 and 10 with their
paper and parameter columns, ONE/CLNN rows, and Fig. 4's gaps against hand computation, with
records that lack the newer fields."""
import json
import math
import re
import os
import stat
import warnings

import pandas as pd
import pytest
import scipy.stats

from results import build, cells, collect, fig4, layouts, render, stats, tabulate
from results.__main__ import main

GROUP = "cifar_resnet32+wrn_16_2"
PAPER_ONLY = cells.PAPER_ONLY


def pretrain(method, student, seed, top1, *, setting="cifar", preset="cifar", icl=False,
             run_root=None, **extra):
    config = f"{setting}/{method}{'_icl' if icl else ''}"
    run_dir = f"runs/pretrain/{config}/seed{seed}"
    if run_root is not None:
        run_dir = str(run_root / config / f"seed{seed}")
    return {"stage": "pretrain", "task": "classification", "dataset": "cifar100",
            "backend": "pytorch", "backbone": student, "student": student, "method": method,
            "icl": icl, "group": GROUP, "teacher": None,
            "metrics": {"top1": top1, "top5": top1 + 20, "ensemble_top1": top1 + 1},
            "epochs": 200, "seed": seed, "preset": preset, "config": config,
            "config_hash": "abc", "run_dir": run_dir, "git_commit": "0123456789ab",
            "git_dirty": False, "world_size": 1, "devices": ["x86_64"], "wall_seconds": 60.0,
            "images_per_second": 100.0, "versions": {"torch": "2.13.0"},
            "created": f"2026-01-0{seed + 1}T00:00:00+00:00", **extra}


def transfer(method, seed, ap, *, backbone="resnet18", protocol="paper14ep_syncbn"):
    return {"stage": "transfer", "task": "detection", "dataset": "coco", "backend": "torchvision",
            "backbone": backbone, "method": method, "icl": None, "detector": "faster_rcnn",
            "metrics": {"bbox_AP": ap, "bbox_AP50": ap + 20, "bbox_AP75": ap + 2},
            "seed": seed, "preset": "paper", "protocol": protocol,
            "config": "torchvision/faster_rcnn_fpn_paper14ep_syncbn",
            "run_dir": f"runs/transfer/{method}-{backbone}/seed{seed}",
            "pretrain_config": f"imagenet/r50_r18/{method}", "pretrain_seed": seed,
            "world_size": 8, "devices": ["NVIDIA A100-SXM4-80GB"] * 8, "wall_seconds": 3600.0,
            "created": "2026-02-01T00:00:00+00:00"}


def cifar_records():
    out = []
    for seed, (a, b) in enumerate([(70, 72), (71, 73), (72, 74)]):
        out += [pretrain("independent", "cifar_resnet32", seed, a),
                pretrain("independent", "wrn_16_2", seed, b)]
    for seed, a in enumerate([74, 75, 76]):  # +4 over independent, clearly significant
        out += [pretrain("kdcl_general", "cifar_resnet32", seed, a, icl=True),
                pretrain("kdcl_general", "wrn_16_2", seed, a + 1, icl=True)]
    for seed, a in enumerate([69, 72, 75]):  # +1 over independent, within the seed noise
        out += [pretrain("kdcl_naive", "cifar_resnet32", seed, a)]
    return out


def write_jsonl(path, items):
    path.write_text("".join((i if isinstance(i, str) else json.dumps(i)) + "\n" for i in items))
    return path


def build_tables(items):
    return {t.name: t for t in build.tables(collect.frame(items), tabulate.load_paper())}


def test_pretrain_cells_mean_std_delta_and_paper():
    table = build_tables(cifar_records())["pretrain_cifar"]
    data = table.data
    cell = data.loc[("kdcl_general", True), "cifar_resnet32"]
    assert cell[("top-1", "mean")] == pytest.approx(75.0)
    assert cell[("top-1", "std")] == pytest.approx(1.0)
    assert cell[("top-1", "n")] == 3
    assert cell[("top-1", "delta")] == pytest.approx(4.0)
    half = scipy.stats.t.ppf(0.975, 4) * math.sqrt(2 / 3)  # Welch, equal variances and sizes
    assert cell[("top-1", "ci_low")] == pytest.approx(4.0 - half)
    assert cell[("top-1", "significant")] is True
    # The paper's Table 7: KDCL-General with ICL, ResNet-32 74.3; its independent 69.9.
    assert cell[("top-1", "paper")] == pytest.approx(74.3)
    assert cell[("top-1", "paper_delta")] == pytest.approx(74.3 - 69.9)
    assert data.loc[("kdcl_naive", False), ("cifar_resnet32", "top-1", "significant")] is False
    # Independent first, then the KDCL variants; paper rows we did not run are labelled.
    labels = [m for m, _ in data.index]
    assert labels[0] == "independent"
    assert labels.index("kdcl_naive") < labels.index("kdcl_general")
    assert "dml (paper only)" in labels

    md = render.markdown(table)
    assert "| 75.00 ± 1.00 " in md and "+4.00*" in md
    naive = next(line for line in md.splitlines() if line.startswith("| kdcl_naive "))
    assert "+1.00 " in naive and "+1.00*" not in naive
    assert "paper cifar_resnet32 top-1" in md and "| 74.3 " in md
    assert "Table 7" in table.caption and "prove the plumbing" not in table.caption


def test_one_seed_shows_the_value_alone():
    assert render._cell_text(49.5, math.nan, 1, 1) == "49.50"
    assert render._cell_text(49.5, 0.25, 2, 3) == "49.50 ± 0.25 (n=2)"
    assert stats.delta([1.0], [0.0]).significant is None


def test_smoke_tables_say_they_prove_plumbing_only():
    items = [pretrain("independent", "cifar_resnet32", 0, 40, setting="smoke", preset="smoke"),
             pretrain("kdcl_naive", "cifar_resnet32", 0, 42, setting="smoke", preset="smoke")]
    table = build_tables(items)["pretrain_smoke"]
    assert "prove the plumbing, not the science" in table.caption
    assert "prove the plumbing, not the science" in render.markdown(table)


def test_transfer_delta_against_independent_backbone_and_paper_table_8():
    items = [transfer("independent", s, ap) for s, ap in enumerate([32.0, 32.5])]
    items += [transfer("kdcl_minlogit", s, ap) for s, ap in enumerate([33.0, 33.5])]
    built = build_tables(items)
    data = built["transfer_paper_paper14ep_syncbn"].data
    block = "torchvision faster_rcnn"
    row = data.xs("kdcl_minlogit", level="method").iloc[0]
    assert row[(block, "box AP", "mean")] == pytest.approx(33.25)
    assert row[(block, "box AP", "delta")] == pytest.approx(1.0)
    assert row[(block, "box AP50", "mean")] == pytest.approx(53.25)
    independent = data.xs("independent", level="method").iloc[0]
    assert independent[(block, "box AP", "paper")] == pytest.approx(32.2)
    assert "kdcl* (paper only)" in data.index.get_level_values("method")
    # Cost: GPUs only when the devices are GPUs.
    cost = built["cost"].data
    assert set(cost["gpus"]) == {8} and cost["gpu_hours"].sum() == pytest.approx(32.0)
    assert tabulate.device(["x86_64"], 2) == (0, "CPU (x86_64)")


def test_transfer_cells_pool_fine_tuning_seeds_within_each_backbone():
    """Two pre-training seeds x three fine-tuning seeds: n counts backbones (each the mean of its
    fine-tunings); one pre-training seed: n counts its fine-tunings. The caption says which."""
    def ft(method, pre, seed, ap):
        return {**transfer(method, seed, ap), "pretrain_seed": pre,
                "run_dir": f"runs/transfer/{method}-pre{pre}/seed{seed}"}

    items = [ft("independent", p, s, 30.0 + p + 0.1 * s) for p in (0, 1) for s in (0, 1, 2)]
    items += [ft("kdcl_minlogit", p, s, 31.0 + p + 0.1 * s) for p in (0, 1) for s in (0, 1, 2)]
    table = build_tables(items)["transfer_paper_paper14ep_syncbn"]
    row = table.data.xs("kdcl_minlogit", level="method").iloc[0]
    block = "torchvision faster_rcnn"
    assert row[(block, "box AP", "n")] == 2  # backbones, not the 6 fine-tunings
    assert row[(block, "box AP", "mean")] == pytest.approx(31.6)
    assert row[(block, "box AP", "std")] == pytest.approx(math.sqrt(0.5))
    assert row[(block, "box AP", "delta")] == pytest.approx(1.0)
    assert "Seeds: pre-training 0, 1, fine-tuning 0, 1, 2. n counts pre-training seeds" \
        in table.caption
    one = build_tables([i for i in items if i["pretrain_seed"] == 0])[
        "transfer_paper_paper14ep_syncbn"]
    row = one.data.xs("kdcl_minlogit", level="method").iloc[0]
    assert row[(block, "box AP", "n")] == 3 and "fine-tuning noise only" in one.caption


def test_a_config_changed_between_seeds_is_reported():
    items = [pretrain("independent", "cifar_resnet32", s, 70, config_hash=h)
             for s, h in enumerate(["aaa", "bbb"])]
    with pytest.warns(collect.RecordWarning, match="2 different versions of the config"):
        collect.frame(items)


def test_malformed_lines_are_skipped_with_file_and_line(tmp_path):
    good = pretrain("independent", "cifar_resnet32", 0, 70)
    missing = {k: v for k, v in good.items() if k != "seed"}
    path = write_jsonl(tmp_path / "r.jsonl", [good, "{not json", missing, "[1, 2]"])
    with pytest.warns(collect.RecordWarning) as caught:
        got = collect.read([tmp_path])
    assert len(got) == 1
    messages = [str(w.message) for w in caught]
    assert any(f"{path}:2" in m and "not JSON" in m for m in messages)
    assert any(f"{path}:3" in m and "missing seed" in m for m in messages)
    assert any(f"{path}:4" in m for m in messages)


def test_a_line_that_is_not_utf8_is_skipped_not_a_traceback(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [pretrain("independent", "cifar_resnet32", 0, 70)])
    path.write_bytes(path.read_bytes() + b"\x89PNG\r\n\x1a\n\x00\xff\n")
    with pytest.warns(collect.RecordWarning) as caught:
        got = collect.read([tmp_path])
    assert len(got) == 1
    assert any(f"{path}:2" in str(w.message) and "not JSON" in str(w.message) for w in caught)


def test_output_folder_is_replaced_whole(tmp_path, monkeypatch):
    target = tmp_path / "tables"
    target.mkdir()
    (target / "stale.md").write_text("old")
    with build.staged(target) as tmp:
        (tmp / "new.md").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tables"]  # no temporary folders left

    with pytest.raises(RuntimeError), build.staged(target) as tmp:
        (tmp / "half.md").write_text("half")
        raise RuntimeError("crash while rendering")
    assert [p.name for p in target.iterdir()] == ["new.md"]  # the previous folder, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tables"]


def test_cli_end_to_end(tmp_path, capsys):
    runs = tmp_path / "runs"
    items = cifar_records()
    for item in items:
        item["run_dir"] = str(runs / item["config"] / f"seed{item['seed']}")
    for item in items[:-3]:  # the last kdcl_naive seeds have no run folder: warned, skipped
        path = runs / item["config"] / f"seed{item['seed']}"
        path.mkdir(parents=True, exist_ok=True)
        write_jsonl(path / "metrics.jsonl", [
            {"kind": "epoch", "epoch": e, "val/cifar_resnet32/top1": 10.0 * e,
             "val/wrn_16_2/top1": 11.0 * e, "val/ensemble/top1": 12.0 * e} for e in (1, 2, 3)])
    items += [transfer("independent", 0, 32.0), transfer("kdcl_minlogit", 0, 33.0)]
    (tmp_path / "records").mkdir()
    source = write_jsonl(tmp_path / "records" / "all.jsonl", [*items, "{broken"])
    out = tmp_path / "out"
    (out / "tables").mkdir(parents=True)
    (out / "tables" / "stale.csv").write_text("x")

    assert main(["--records", str(source.parent), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{source}:{len(items) + 1}" in printed and "not JSON" in printed
    assert "metrics.jsonl: missing" in printed
    assert str(out / "tables") in printed
    names = {p.name for p in (out / "tables").iterdir()}
    assert "stale.csv" not in names
    assert {f"{t}.{e}" for t in ("pretrain_cifar", "transfer_paper_paper14ep_syncbn", "cost")
            for e in ("md", "csv", "tex")} <= names
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"delta_pretrain_cifar.png", "curves_pretrain_cifar.png"} <= figures
    assert (out / "figures" / "curves_pretrain_cifar.png").read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".build.lock"]

    csv = pd.read_csv(out / "tables" / "pretrain_cifar.csv")
    row = csv[(csv["method"] == "kdcl_general")].iloc[0]
    assert row["cifar_resnet32/top-1/mean"] == pytest.approx(75.0)
    assert row["cifar_resnet32/top-1/paper"] == pytest.approx(74.3)
    assert str(runs / "cifar/kdcl_general_icl/seed0") in row["runs"]
    tex = (out / "tables" / "pretrain_cifar.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"$\pm$" in tex
    readme = (out / "README.md").read_text()
    assert "0123456789" in readme and "tables/pretrain_cifar.md" in readme
    assert "warning:" in readme and "not JSON" in readme


def test_cli_without_records_says_so(tmp_path, capsys):
    assert main(["--records", str(tmp_path), "--out", str(tmp_path / "out"), "--no-figures"]) == 0
    assert "No result records" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field, value, message", [
    ("seed", "zero", "seed is 'zero', not an integer"),
    ("seed", True, "seed is true, not an integer"),
    ("config", None, "config is null, not a non-empty string"),
    ("run_dir", "", "run_dir is '', not a non-empty string"),
    ("metrics", [70.0], "metrics is a list, not an object"),
])
def test_a_field_of_the_wrong_type_is_skipped_with_file_and_line(tmp_path, capsys, field, value,
                                                                 message):
    items = cifar_records()
    bad = {**pretrain("kdcl_linear", "cifar_resnet32", 0, 71), field: value}
    source = write_jsonl(tmp_path / "records.jsonl", [*items[:2], bad, *items[2:]])
    out = tmp_path / "out"
    assert main(["--records", str(source), "--out", str(out), "--no-figures"]) == 0
    warning = f"{source}:3: skipped, {message}"
    assert f"warning: {warning}" in capsys.readouterr().out
    assert f"- warning: {warning}" in (out / "README.md").read_text()
    csv = pd.read_csv(out / "tables" / "pretrain_cifar.csv")  # the good records still count
    assert set(csv["method"]) >= {"independent", "kdcl_general", "kdcl_naive"}
    assert "kdcl_linear" not in set(csv["method"])
    assert csv[csv["method"] == "kdcl_general"].iloc[0]["cifar_resnet32/top-1/n"] == 3


def test_records_path_that_does_not_exist_is_an_error(tmp_path, capsys):
    missing = tmp_path / "no" / "records.jsonl"
    out = tmp_path / "out"
    assert main(["--records", str(tmp_path), str(missing), "--out", str(out)]) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and "Traceback" not in printed.err
    assert (f"--records {missing} does not exist: give a records folder (e.g. results/records) "
            "or a record file") in printed.err
    assert not out.exists()


def test_output_folders_honour_the_umask(tmp_path):
    source = write_jsonl(tmp_path / "records.jsonl", cifar_records())
    old = os.umask(0o022)
    try:
        assert main(["--records", str(source), "--out", str(tmp_path / "out"),
                     "--no-figures"]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out" / "tables").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "tables" / "pretrain_cifar.md").stat().st_mode) \
        == 0o644
    assert stat.S_IMODE((tmp_path / "out" / "README.md").stat().st_mode) == 0o644


# Staleness: pre-training records name their export (artifact) and its sha256; transfer records
# the export they fine-tuned (backbone_path) and its sha256; KD records their teacher's.
EXPORT = "runs/pretrain/smoke/{method}/seed0/export/resnet18.pth"
SHA = {"a": "a" * 12 + "1" * 52, "b": "b" * 12 + "2" * 52, "c": "c" * 12 + "3" * 52}


def export_record(method, sha, day, **extra):
    return pretrain(method, "resnet18", 0, 60.0, setting="smoke", preset="smoke",
                    artifact=EXPORT.format(method=method), backbone_sha256=SHA[sha],
                    created=f"2026-01-0{day}T00:00:00+00:00", **extra)


def transfer_from(method, sha, path=None, **extra):
    return {**transfer(method, 0, 30.0), "backbone_path": path or EXPORT.format(method=method),
            "backbone_sha256": SHA[sha], "config_file": "transfer/configs/x.yaml", **extra}


def test_a_transfer_record_from_replaced_weights_is_dropped_with_a_warning(tmp_path, capsys):
    items = [export_record("independent", "a", 1),
             export_record("kdcl_minlogit", "c", 1),
             # written as an absolute path and with `./`: the same export once normalised
             transfer_from("independent", "a",
                           str(collect.REPO_ROOT / EXPORT.format(method="independent"))),
             transfer_from("kdcl_minlogit", "c", "./" + EXPORT.format(method="kdcl_minlogit")),
             export_record("independent", "b", 3)]  # pre-training re-run: new weights
    source = write_jsonl(tmp_path / "records.jsonl", items)
    out = tmp_path / "out"
    assert main(["--records", str(source), "--out", str(out), "--no-figures"]) == 0
    path = collect.REPO_ROOT / EXPORT.format(method="independent")
    warning = (f"{source}:3: skipped, stale: made from the backbone {path} with sha256 "
               f"aaaaaaaaaaaa, which pre-training has since replaced (newest record {source}:5: "
               "sha256 bbbbbbbbbbbb); refresh it with `bash run_all.sh` (it reruns stale "
               "transfer steps) or `python -m transfer transfer/configs/x.yaml --backbone "
               f"{path} --restart`")
    assert f"warning: {warning}" in capsys.readouterr().out
    assert f"- warning: {warning}" in (out / "README.md").read_text()
    csv = pd.read_csv(out / "tables" / "transfer_paper_paper14ep_syncbn.csv")
    ours = [m for m in csv["method"] if not m.endswith(PAPER_ONLY)]
    assert ours == ["kdcl_minlogit"]  # the fresh record stays, the stale one is gone


def test_fresh_and_foreign_transfer_records_are_kept(tmp_path):
    items = [export_record("independent", "a", 1), export_record("independent", "a", 3),
             transfer_from("independent", "a"),
             # weights from elsewhere: no pre-training record names the export
             transfer_from("kdcl_minlogit", "c", str(tmp_path / "elsewhere" / "resnet18.pth")),
             # older records carry no sha256: nothing to compare
             {**transfer("dml", 0, 31.0), "backbone_path": EXPORT.format(method="independent")}]
    source = write_jsonl(tmp_path / "records.jsonl", items)
    with warnings.catch_warnings():
        warnings.simplefilter("error", collect.RecordWarning)
        data = collect.load([source])
    transfer_runs = data[data["stage"] == "transfer"]
    assert set(transfer_runs["method"]) == {"independent", "kdcl_minlogit", "dml"}


def test_a_kd_record_from_a_replaced_teacher_is_dropped_with_a_warning(tmp_path):
    teacher = EXPORT.format(method="independent")
    kd = dict(method="kd", teacher=teacher, config="smoke/kd",
              config_file="pretrain/configs/x.yaml")
    items = [export_record("independent", "a", 1),
             {**pretrain("kd", "mobilenet_v2", 0, 50.0, setting="smoke", preset="smoke"), **kd,
              "teacher_sha256": SHA["a"], "run_dir": "runs/pretrain/smoke/kd/seed0"},
             {**pretrain("kd", "mobilenet_v2", 1, 51.0, setting="smoke", preset="smoke"), **kd,
              "run_dir": "runs/pretrain/smoke/kd/seed1"},  # older: no teacher_sha256, kept
             {**pretrain("kd", "mobilenet_v2", 2, 52.0, setting="smoke", preset="smoke"), **kd,
              "teacher_sha256": SHA["b"], "run_dir": "runs/pretrain/smoke/kd/seed2"},  # fresh
             export_record("independent", "b", 4)]
    source = write_jsonl(tmp_path / "records.jsonl", items)
    with pytest.warns(collect.RecordWarning) as caught:
        data = collect.load([source])
    assert [str(w.message) for w in caught] == [
        f"{source}:2: skipped, stale: made from the teacher {teacher} with sha256 aaaaaaaaaaaa, "
        f"which pre-training has since replaced (newest record {source}:5: sha256 "
        "bbbbbbbbbbbb); refresh it with `bash run_all.sh` (it reruns stale KD runs) or "
        "`python -m pretrain pretrain/configs/x.yaml seed=0 --restart`"]
    kd_runs = data[data["method"] == "kd"]
    assert sorted(set(kd_runs["seed"])) == [1, 2]


# ------------------------------------------------------------------ which epoch, paper layouts
# Records as pre-training writes them now: the final epoch's top-1 (the tables' number), the best
# epoch's with its epoch, and the parameter count of everything trained together.
def run(config, student, seed, top1, *, method="independent", backbone=None, icl=False,
        preset="paper", best=None, epoch=None, params=None, **extra):
    record = pretrain(method, student, seed, top1, setting=config.rsplit("/", 1)[0],
                      preset=preset, icl=icl, backbone=backbone or student, group=student,
                      **extra)
    record.update(config=config, run_dir=f"runs/pretrain/{config}/seed{seed}")
    if best is not None:
        record["metrics"].update(best_top1=best, best_epoch=epoch)
    if params is not None:
        record["system_parameters"] = params
    return record


def row_cells(md, *starts):
    """{column: cell} of the Markdown row that starts with `starts` (joined by |)."""
    lines = [line for line in md.splitlines() if line.startswith("|")]
    split = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    row = next(r for r in split[2:] if r[:len(starts)] == list(starts))
    return dict(zip(split[0], row))


def frame_of(items):
    with warnings.catch_warnings():
        warnings.simplefilter("error", collect.RecordWarning)  # none expected
        return collect.frame(items)


def test_best_epoch_column_beside_the_final_epoch_and_dash_for_older_records():
    items = [pretrain("independent", "cifar_resnet32", s, 70.0 + s) for s in range(2)]
    for s, (top1, best, epoch) in enumerate([(74.0, 74.6, 180), (75.0, 75.4, 195)]):
        item = pretrain("kdcl_general", "cifar_resnet32", s, top1, icl=True)
        item["metrics"].update(best_top1=best, best_epoch=epoch)
        items.append(item)
    # a third seed from before best_top1 was recorded
    items.append(pretrain("kdcl_general", "cifar_resnet32", 2, 76.0, icl=True))
    table = build_tables(items)["pretrain_cifar"]
    cell = table.data.loc[("kdcl_general", True), "cifar_resnet32"]
    assert cell[("top-1", "mean")] == pytest.approx(75.0)  # the final epoch's, all 3 seeds
    assert cell[(cells.BEST, "mean")] == pytest.approx(75.0)  # (74.6 + 75.4) / 2
    assert cell[(cells.BEST, "n")] == 2
    assert (cell[(cells.BEST, "epoch_min")], cell[(cells.BEST, "epoch_max")]) == (180, 195)
    assert pd.isna(table.data.loc[("independent", False),
                                     ("cifar_resnet32", cells.BEST, "mean")])
    md = render.markdown(table)
    best = "cifar_resnet32 best-epoch top-1"
    assert row_cells(md, "kdcl_general", "yes")[best] == "75.00 ± 0.57 (n=2) (epochs 180–195)"
    assert row_cells(md, "independent", "no")[best] == "–"
    assert "final epoch's" in table.caption
    assert render._cell_text(72.0, math.nan, 1, 1, 187.0, 187.0) == "72.00 (epoch 187)"


def test_a_sweep_in_one_folder_is_a_row_per_config_not_pooled_seeds():
    items = [run(f"cifar/lambda/lambda_{lam}", "cifar_resnet32", s, 70 + lam + s,
                 method="kdcl_general", icl=True, preset="cifar")
             for lam in (0.1, 2) for s in range(2)]
    data = build_tables(items)["pretrain_cifar_lambda"].data
    assert list(data.index.get_level_values("method")) == ["kdcl_general [lambda_0.1]",
                                                           "kdcl_general [lambda_2]"]
    assert data[("cifar_resnet32", "top-1", "n")].tolist() == [2, 2]


def one_run(config, backbone, seed, exported_top1, others, *, method="one", params=None,
            preset="paper", prefix="branch"):
    """A multi-branch run: branch 0 exported, the others recorded only."""
    names = [f"{prefix}{i}" for i in range(1 + len(others))]
    out = []
    for i, (name, top1) in enumerate(zip(names, [exported_top1, *others])):
        item = run(config, name, seed, top1, method=method, backbone=backbone, preset=preset,
                   params=params, exported=i == 0)
        item["group"] = "+".join(names)
        item["metrics"]["ensemble_top1"] = 80.0 + seed
        out.append(item)
    return out


def test_table_7_one_and_clnn_rows_are_the_exported_branch_with_paper_columns():
    items = [pretrain("independent", "cifar_resnet32", s, 70.0) for s in range(2)]
    for s in range(2):
        items += one_run("cifar/one", "cifar_resnet32", s, 73.0 + s, [10.0, 20.0],
                         preset="cifar")
        items += one_run("cifar/clnn", "cifar_resnet32", s, 72.0 + s, [5.0, 6.0, 7.0],
                         method="clnn", preset="cifar", prefix="head")
    table = build_tables(items)["pretrain_cifar"]
    data = table.data
    assert "branch0" not in data.columns.get_level_values(0)  # folded into the architecture
    one = data.loc[("one", False)]
    assert one[("cifar_resnet32", "top-1", "mean")] == pytest.approx(73.5)  # branch 0 only
    assert one[("cifar_resnet32", "top-1", "paper")] == pytest.approx(73.6)
    assert one[("cifar_resnet32", "top-1", "paper_delta")] == pytest.approx(73.6 - 69.9)
    assert one[("ensemble", "top-1", "mean")] == pytest.approx(80.5)
    clnn = data.loc[("clnn", False)]
    assert clnn[("cifar_resnet32", "top-1", "mean")] == pytest.approx(72.5)
    assert clnn[("cifar_resnet32", "top-1", "paper")] == pytest.approx(73.4)
    assert "exported branch" in table.caption


def layouts_of(items):
    return {t.name: t for t in layouts.build(frame_of(items), tabulate.load_paper())}


def test_table_1_teacher_quality_in_the_paper_layout():
    items = []
    for s in range(2):
        items.append(run("imagenet/r18x1/independent", "resnet18", s, 70.0 + s, best=70.5 + s,
                         epoch=99))
        for tag, arch, teacher_top1, student_top1 in [("r34", "resnet34", 73.0, 71.0),
                                                      ("r50", "resnet50", 76.0, 71.5)]:
            items.append(run(f"imagenet/teachers/independent_{tag}", arch, s, teacher_top1 + s))
            items.append(run(f"imagenet/teachers/kd_{tag}_to_r18", "resnet18", s,
                             student_top1 + s, method="kd",
                             teacher=f"runs/pretrain/imagenet/teachers/independent_{tag}/"
                                     f"seed{s}/export/{arch}.pth"))
    table = layouts_of(items)["paper_table1"]
    data = table.data
    assert list(data.index.get_level_values("teacher")) == [
        "none (hard labels)", "resnet34", "resnet50", "resnet101"]
    assert [b for b in dict.fromkeys(data.columns.get_level_values(0))] == ["teacher", "student"]
    base = data.loc[("none (hard labels)",)]
    assert base[("student", "top-1", "mean")] == pytest.approx(70.5)
    assert base[("student", "top-1", "paper")] == pytest.approx(70.1)
    assert base[("student", cells.BEST, "mean")] == pytest.approx(71.0)
    r50 = data.loc[("resnet50",)]
    assert r50[("teacher", "top-1", "mean")] == pytest.approx(76.5)
    assert r50[("teacher", "top-1", "paper")] == pytest.approx(76.5)
    assert r50[("student", "top-1", "delta")] == pytest.approx(1.5)  # 72.0 - 70.5
    assert r50[("student", "top-1", "paper")] == pytest.approx(71.2)
    assert r50[("student", "top-1", "paper_delta")] == pytest.approx(71.2 - 70.1)
    assert pd.isna(r50[("student", cells.BEST, "mean")])  # not recorded: –
    r101 = data.loc[("resnet101",)]  # not run: the paper's numbers alone
    assert pd.isna(r101[("teacher", "top-1", "mean")])
    assert r101[("teacher", "top-1", "paper")] == pytest.approx(77.9)
    assert r101[("student", "top-1", "paper")] == pytest.approx(71.4)
    md = render.markdown(table)
    assert "| teacher top-1 " in md and "| paper student top-1 " in md
    assert "student best-epoch top-1" in md and "hard-label ResNet-18" in table.caption


def test_table_3_rows_parameter_column_and_the_exported_one_branch():
    items = []
    for s in range(2):
        items.append(run("imagenet/r18/independent", "resnet18", s, 71.0 + s,
                         params=11_689_512))
        items += one_run("imagenet/r18/one", "resnet18", s, 72.0 + s, [60.0, 61.0],
                         params=29_502_000)
        # older records: no system_parameters
        items += one_run("imagenet/r18/clnn", "resnet18", s, 72.4, [50.0, 51.0, 52.0],
                         method="clnn", prefix="head")
        for arch in ("resnet50", "resnet18"):
            item = run("imagenet/r50_r18/kdcl_minlogit", arch, s, 73.0 + s,
                       method="kdcl_minlogit", icl=True, params=37_250_000)
            item["group"] = "resnet50+resnet18"
            items.append(item)
    table = layouts_of(items)["paper_table3"]
    data = table.data
    assert list(data.index.get_level_values("method")) == [
        "Vanilla", "ONE (3 branches)", "KDCL-MinLogit, peer MobileNetV2 x1.2", "CLNN (4 heads)",
        "KDCL-MinLogit, peer ResNet-50"]
    one = data.loc[("ONE (3 branches)",)]
    assert one[("resnet18", "top-1", "mean")] == pytest.approx(72.5)  # branch 0, not the mean
    assert one[("resnet18", "top-1", "delta")] == pytest.approx(1.0)
    assert one[("resnet18", "params (M)", "mean")] == pytest.approx(29.502)
    assert one[("resnet18", "params (M)", "paper")] == pytest.approx(29.5)
    assert one[("resnet18", "top-5", "paper")] == pytest.approx(90.6)
    peer = data.loc[("KDCL-MinLogit, peer ResNet-50",)]
    assert peer[("resnet18", "params (M)", "mean")] == pytest.approx(37.25)
    assert peer[("resnet18", "params (M)", "paper")] == pytest.approx(37.2)
    assert peer[("resnet18", "top-1", "paper")] == pytest.approx(73.1)
    assert peer[("resnet18", "top-1", "paper_delta")] == pytest.approx(73.1 - 71.2)
    assert data.loc[("KDCL-MinLogit, peer MobileNetV2 x1.2",),
                    ("resnet18", "top-1", "paper")] == pytest.approx(72.9)
    md = render.markdown(table)
    clnn = row_cells(md, "CLNN (4 heads)")
    assert clnn["resnet18 params (M)"] == "–"  # older records: no count
    assert clnn["paper resnet18 params (M)"] == "40.5"
    assert clnn["resnet18 best-epoch top-1"] == "–"
    assert row_cells(md, "Vanilla")["resnet18 params (M)"] == "11.69"


def test_table_4_pairs_from_several_folders_in_the_paper_order():
    items = []
    for s in range(2):
        for folder, pair in [("imagenet/r50_r18_100ep", ("resnet50", "resnet18")),
                             ("imagenet/mbv2_mbv2x0.5", ("mobilenet_v2", "mobilenet_v2_x0.5"))]:
            for method, gain in [("independent", 0.0), ("kdcl_minlogit", 1.0)]:
                for k, arch in enumerate(pair):
                    item = run(f"{folder}/{method}", arch, s, 70.0 + k + gain + s,
                               method=method, icl=method != "independent")
                    item["group"] = "+".join(pair)
                    items.append(item)
    data = layouts_of(items)["paper_table4"].data
    pairs = list(dict.fromkeys(zip(data.index.get_level_values("model 1"),
                                   data.index.get_level_values("model 2"))))
    assert pairs == [("mobilenet_v2", "mobilenet_v2_x0.5"), ("resnet18", "mobilenet_v2_x0.5"),
                     ("resnet18", "mobilenet_v2"), ("resnet50", "mobilenet_v2_x0.5"),
                     ("resnet50", "resnet18")]
    row = data.xs(("resnet50", "resnet18", "kdcl_minlogit"),
                  level=["model 1", "model 2", "method"]).iloc[0]
    assert row[("model 1", "top-1", "mean")] == pytest.approx(71.5)
    assert row[("model 1", "top-1", "delta")] == pytest.approx(1.0)
    assert row[("model 1", "top-1", "paper")] == pytest.approx(77.0)
    assert row[("model 2", "top-1", "paper")] == pytest.approx(72.1)
    assert row[("model 2", "top-1", "paper_delta")] == pytest.approx(72.1 - 71.2)
    assert "200" in data.xs("resnet50", level="model 1").index.get_level_values("epochs")
    # a pair without records: the paper's rows alone
    only = data.xs(("resnet18", "mobilenet_v2"), level=["model 1", "model 2"])
    assert only[("model 1", "top-1", "paper")].tolist() == [71.2, 72.1, 72.2]
    assert only[("model 1", "top-1", "mean")].isna().all()


def test_table_5_networks_as_columns_mean_over_the_run_s_resnet18s():
    items = [run("imagenet/r18x1/independent", "resnet18", s, 70.0 + s) for s in range(2)]
    for s in range(2):
        names = ["resnet18_0", "resnet18_1", "resnet18_2"]
        for name, top1 in zip(names, [71.0, 72.0, 73.0]):
            item = run("imagenet/r18x3/kdcl_minlogit", name, s, top1 + s,
                       method="kdcl_minlogit", icl=True, backbone="resnet18")
            item["group"] = "+".join(names)
            item["metrics"]["ensemble_top1"] = 74.0 + s
            items.append(item)
    table = layouts_of(items)["paper_table5"]
    data = table.data
    assert list(data.index.get_level_values("network")) == ["resnet18 (each network)",
                                                            "ensemble"]
    assert list(dict.fromkeys(data.columns.get_level_values(0))) == [
        "1 network", "2 networks", "3 networks", "4 networks", "5 networks"]
    each = data.loc[("resnet18 (each network)",)]
    assert each[("3 networks", "top-1", "mean")] == pytest.approx(72.5)  # mean of 72, 73
    assert each[("3 networks", "top-1", "delta")] == pytest.approx(2.0)
    assert each[("3 networks", "top-1", "paper")] == pytest.approx(71.61)
    assert each[("3 networks", "top-1", "paper_delta")] == pytest.approx(71.61 - 70.1)
    assert each[("1 network", "top-1", "paper")] == pytest.approx(70.1)
    assert each[("5 networks", "top-1", "paper")] == pytest.approx(71.87)
    assert data.loc[("ensemble",), ("3 networks", "top-1", "mean")] == pytest.approx(74.5)
    assert "| paper 3 networks top-1 " in render.markdown(table)


def test_table_9_lambda_columns_with_lambda_1_from_table_7():
    items = []
    for s in range(2):
        for config, top1 in [("cifar/kdcl_general_icl", 74.0), ("cifar/lambda/lambda_0.1", 71.0),
                             ("cifar/lambda/lambda_10", 73.0)]:
            for student in ("cifar_resnet32", "wrn_16_2"):
                item = run(config, student, s, top1 + s, method="kdcl_general", icl=True,
                           preset="cifar")
                item["group"] = GROUP
                items.append(item)
    table = layouts_of(items)["paper_table9"]
    data = table.data
    assert list(dict.fromkeys(data.columns.get_level_values(0))) == [
        "λ=0.1", "λ=0.2", "λ=0.5", "λ=1", "λ=2", "λ=5", "λ=10"]
    r32 = data.loc[("cifar_resnet32",)]
    assert r32[("λ=1", "top-1", "mean")] == pytest.approx(74.5)
    assert r32[("λ=1", "top-1", "paper")] == pytest.approx(74.3)
    assert ("λ=1", "top-1", "delta") not in data.columns or pd.isna(
        r32[("λ=1", "top-1", "delta")])
    assert r32[("λ=0.1", "top-1", "delta")] == pytest.approx(-3.0)
    assert r32[("λ=0.1", "top-1", "paper")] == pytest.approx(71.5)
    assert r32[("λ=0.1", "top-1", "paper_delta")] == pytest.approx(71.5 - 74.3)
    assert data.loc[("wrn_16_2",), ("λ=2", "top-1", "paper")] == pytest.approx(76.1)
    assert ("λ=2", "top-1", "mean") not in data.columns  # no run: the paper's value alone
    assert row_cells(render.markdown(table), "wrn_16_2")["λ=2 top-1"] == "–"
    assert "cifar/lambda/lambda_0.1" in table.trace.loc[("cifar_resnet32",), "configs"]
    assert r"$\lambda$=0.1 top-1" in render.latex(table)


def test_table_10_cutout_rows_with_the_same_method_without_cutout():
    items = []
    for s in range(2):
        for config, method, icl, top1 in [
                ("cifar/cutout/independent", "independent", False, 72.0),
                ("cifar/cutout/kdcl_general_icl", "kdcl_general", True, 75.0),
                ("cifar/kdcl_general_icl", "kdcl_general", True, 74.0)]:
            item = run(config, "cifar_resnet32", s, top1 + s, method=method, icl=icl,
                       preset="cifar")
            items.append(item)
    table = layouts_of(items)["paper_table10"]
    data = table.data
    assert list(data.index) == [("independent", False), ("kdcl_general", False),
                                ("kdcl_general", True)]
    icl = data.loc[("kdcl_general", True), "cifar_resnet32"]
    assert icl[("top-1", "mean")] == pytest.approx(75.5)
    assert icl[("top-1", "delta")] == pytest.approx(3.0)
    assert icl[("top-1", "paper")] == pytest.approx(74.6)
    assert icl[("top-1", "paper_delta")] == pytest.approx(74.6 - 72.3)
    assert icl[("top-1 without Cutout", "mean")] == pytest.approx(74.5)
    assert icl[("top-1 without Cutout", "paper")] == pytest.approx(74.3)  # Table 7
    assert data.loc[("independent", False), ("wrn_16_2", "top-1", "paper")] == \
        pytest.approx(74.3)
    assert data.loc[("independent", False), ("cifar_resnet32", "top-1 without Cutout",
                                             "paper")] == pytest.approx(69.9)


def test_paper_layout_tables_are_built_only_with_records_of_their_configs():
    data = frame_of(cifar_records())  # Table 7 configs: cifar/independent, kdcl_general_icl, ...
    names = [t.name for t in layouts.build(data, tabulate.load_paper())]
    assert names == ["paper_table9"]  # lambda = 1 is Table 7's run; Table 10 has no Cutout run
    assert layouts.notes(data) == [
        "paper-layout Tables 1, 3, 4, 5, 10: not built, no records of their configs yet (the "
        "paper and cifar presets run them)"]


# ---------------------------------------------------------------------------------- Fig. 4
def noise(method, seed, delta, loss, *, icl=False, student="cifar_resnet32", **extra):
    config = f"cifar/{method}{'_icl' if icl else ''}"
    return {"stage": "robustness", "task": "classification", "dataset": "cifar100",
            "backend": "pytorch", "backbone": student, "student": student, "method": method,
            "icl": icl, "metrics": {"loss": loss, "loss_std": 0.01, "top1": 60.0},
            "seed": seed, "preset": "cifar", "config": config, "config_hash": "abc",
            "run_dir": f"runs/pretrain/{config}/seed{seed}", "delta": delta,
            "created": "2026-01-05T00:00:00+00:00", "world_size": 1, "devices": ["x86_64"],
            **extra}


def fig4_records():
    # loss[method][seed] at delta 0.0 and 0.1
    losses = {("kdcl_general", True): [(1.0, 2.0), (1.2, 2.4), (1.1, 2.1)],
              ("kdcl_general", False): [(1.0, 2.2), (1.1, 2.3), (1.0, 2.4)],
              ("independent", False): [(1.3, 3.0), (1.4, 3.5), (1.2, 3.9)],
              ("dml", False): [(1.1, 2.5), (1.3, 2.6)]}  # two seeds only
    return [noise(m, seed, d, value, icl=icl)
            for (m, icl), per_seed in losses.items() for seed, pair in enumerate(per_seed)
            for d, value in zip((0.0, 0.1), pair)]


def test_fig4_gaps_against_hand_computation():
    spread = fig4.summary(fig4.gaps(frame_of(fig4_records())))
    at = spread.set_index(["icl", "against", "delta"])
    # independent - KDCL-General + ICL at 0.1, per seed: 1.0, 1.1, 1.8
    row = at.loc[(True, "independent", 0.1)]
    assert row["mean"] == pytest.approx(3.9 / 3)
    assert row["std"] == pytest.approx(pd.Series([1.0, 1.1, 1.8]).std())
    assert (row["min"], row["max"], row["n"]) == (pytest.approx(1.0), pytest.approx(1.8), 3)
    # DML - KDCL-General + ICL at 0.1: seeds 0 and 1 only (paired by seed): 0.5, 0.2
    row = at.loc[(True, "dml", 0.1)]
    assert (row["mean"], row["n"]) == (pytest.approx(0.35), 2)
    # without ICL at 0.0: independent 1.3-1.0, 1.4-1.1, 1.2-1.0
    assert at.loc[(False, "independent", 0.0), "mean"] == pytest.approx(0.8 / 3)


def test_fig4_table_figure_and_readme(tmp_path):
    source = write_jsonl(tmp_path / "records.jsonl", fig4_records())
    out = tmp_path / "out"
    assert main(["--records", str(source), "--out", str(out)]) == 0
    table = (out / "tables" / "fig4_robustness_cifar.md").read_text()
    row = next(line for line in table.splitlines()
               if line.startswith("| cifar_resnet32 | yes ") and "| 0.1 " in line)
    assert "| 1.30 ± 0.44 " in row  # the gap to independent, mean ± std over 3 seeds
    csv = pd.read_csv(out / "tables" / "fig4_robustness_cifar.csv")
    row = csv[(csv["KDCL-General ICL"]) & (csv["δ"] == 0.1)].iloc[0]
    assert row["gap/independent − KDCL-General/max"] == pytest.approx(1.8)
    assert row["loss/DML/n"] == 2
    assert (out / "figures" / "fig4_robustness_cifar.png").read_bytes()[:4] == b"\x89PNG"
    readme = (out / "README.md").read_text()
    assert "fig4_robustness_cifar.png" in readme and "tables/fig4_robustness_cifar.md" in readme
    assert "- robustness: 11 runs; by setting: cifar (11)" in readme  # (config, seed) pairs
    assert "Fig. 4 (robustness to noise)" not in readme  # drawn: nothing to note


def test_fig4_missing_records_are_a_note_not_a_crash(tmp_path, capsys):
    # no robustness records at all
    assert fig4.tables(frame_of(cifar_records())) == []
    assert fig4.notes(frame_of(cifar_records()))[0].startswith(
        "Fig. 4 (robustness to noise): not drawn, no records of stage robustness")
    # KDCL-General only: nothing to compare; independent only for a gap; a record without delta
    items = [noise("kdcl_general", 0, 0.0, 1.0, icl=True),
             noise("independent", 1, 0.0, 1.5),  # another seed: no pair
             {k: v for k, v in noise("dml", 0, 0.0, 1.2).items() if k != "delta"}]
    source = write_jsonl(tmp_path / "records.jsonl", items)
    out = tmp_path / "out"
    assert main(["--records", str(source), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert ("note: Fig. 4 for cifar (cifar preset): not drawn, it needs robustness records of "
            "kdcl_general and of independent or dml for the same seeds; found independent, "
            "kdcl_general") in printed
    assert not list((out / "figures").glob("fig4_*"))
    assert "## Not built" in (out / "README.md").read_text()
    items = [noise("kdcl_general", 0, 0.0, 1.0), noise("independent", 0, 0.0, 1.5)]
    assert fig4.notes(frame_of(items)) == [
        "Fig. 4 for cifar (cifar preset): no gap against dml (no records of the same seeds)"]


def test_a_robustness_record_of_a_replaced_export_is_dropped_with_a_warning(tmp_path):
    export = "runs/pretrain/cifar/independent/seed0/export/cifar_resnet32.pth"
    old = {**pretrain("independent", "cifar_resnet32", 0, 70.0), "artifact": export,
           "backbone_sha256": SHA["a"], "created": "2026-01-01T00:00:00+00:00"}
    new = {**old, "backbone_sha256": SHA["b"], "created": "2026-01-03T00:00:00+00:00"}
    by_path = noise("independent", 0, 0.05, 2.0, backbone_path=export,
                    backbone_sha256=SHA["a"])
    # no path: found by config, seed and student
    by_run = noise("independent", 0, 0.1, 2.5, backbone_sha256=SHA["a"])
    fresh = noise("independent", 0, 0.0, 1.5, backbone_sha256=SHA["b"])
    source = write_jsonl(tmp_path / "records.jsonl", [old, by_path, by_run, fresh, new])
    with pytest.warns(collect.RecordWarning) as caught:
        data = collect.load([source])
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert messages[0].startswith(f"{source}:2: skipped, stale: made from the evaluated "
                                  f"backbone {export} with sha256 aaaaaaaaaaaa, which "
                                  f"pre-training has since replaced (newest record {source}:5")
    assert "`python -m pretrain.robustness` on" in messages[0]
    assert messages[1].startswith(f"{source}:3: skipped, stale")
    kept = data[(data["stage"] == "robustness") & (data["metric"] == "loss")]
    assert kept["delta"].tolist() == [0.0]


def test_records_without_the_new_fields_still_tabulate():
    # no best_top1/best_epoch, no system_parameters, no exported flag (first branch taken)
    items = [run("imagenet/r18/independent", "resnet18", 0, 71.0)]
    for i, top1 in enumerate([72.0, 10.0, 11.0]):
        item = run("imagenet/r18/one", f"branch{i}", 0, top1, method="one", backbone="resnet18")
        item["group"] = "branch0+branch1+branch2"
        items.append(item)
    data = frame_of(items)
    table = {t.name: t for t in layouts.build(data, tabulate.load_paper())}["paper_table3"]
    one = table.data.loc[("ONE (3 branches)",)]
    assert one[("resnet18", "top-1", "mean")] == pytest.approx(72.0)
    assert pd.isna(one[("resnet18", "params (M)", "mean")])
    assert pd.isna(one[("resnet18", cells.BEST, "mean")])
    assert "–" in render.markdown(table)
    built = build_tables(items)
    assert "pretrain_paper_imagenet_r18" in built and "cost" in built


# --out that cannot take the output, concurrent builds, many warnings, a kill between renames
def test_an_out_that_is_a_file_is_an_error(tmp_path, capsys):
    source = write_jsonl(tmp_path / "records.jsonl", cifar_records())
    out = tmp_path / "report.md"
    out.write_text("mine")
    assert main(["--records", str(source), "--out", str(out), "--no-figures"]) == 2
    assert capsys.readouterr().err == (f"python -m results: error: --out {out} is a file, not a "
                                       f"folder: give the folder where tables/, figures/ and "
                                       f"README.md go (default: results/)\n")
    assert out.read_text() == "mine"


@pytest.fixture()
def read_only_folder(tmp_path):
    """A folder this process cannot write: by its mode, or for root (whom modes do not stop)
    a read-only file system mounted on it, where the system allows."""
    import subprocess

    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                           capture_output=True)
    if mount.returncode:
        pytest.skip("running as root and cannot mount a read-only file system")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_out_is_an_error(tmp_path, read_only_folder, capsys):
    source = write_jsonl(tmp_path / "records.jsonl", cifar_records())
    out = read_only_folder / "report"
    assert main(["--records", str(source), "--out", str(out), "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(f"python -m results: error: --out {out} cannot be written \\((a "
                        f"read-only file system|no write permission) at {read_only_folder}\\): "
                        f"give a folder you can write to, e.g. --out /tmp/report\n", err), err


def test_a_full_disk_keeps_the_previous_output_and_says_so(tmp_path, capsys, monkeypatch):
    import errno

    source = write_jsonl(tmp_path / "records.jsonl", cifar_records())
    out = tmp_path / "out"
    assert main(["--records", str(source), "--out", str(out), "--no-figures"]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    written = render.write

    def full(table, folder):  # the disk fills up in the middle of the tables
        if any(folder.iterdir()):
            raise OSError(errno.ENOSPC, "No space left on device", str(folder / table.name))
        return written(table, folder)

    monkeypatch.setattr(render, "write", full)
    capsys.readouterr()
    assert main(["--records", str(source), "--out", str(out), "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert err == (f"python -m results: error: no space left on the device to write the "
                   f"results in {out}: tables/, figures/ and README.md are each the previous one "
                   f"or the new one, whole (nothing half written); free space and run `python -m "
                   f"results` again, or give another --out\n")
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # and no temporary folder left


def test_two_builds_at_once_on_one_out_both_succeed(tmp_path):
    """The second waits for the first (it used to delete the first's temporary folder: a
    FileNotFoundError); the lock is held here so that both start while it is taken."""
    import fcntl
    import subprocess
    import sys
    import time

    source = write_jsonl(tmp_path / "records.jsonl", cifar_records())
    out = tmp_path / "out"
    out.mkdir()
    lock = open(out / build.LOCK, "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    command = [sys.executable, "-m", "results", "--records", str(source), "--out", str(out),
               "--no-figures"]
    procs = [subprocess.Popen(command, cwd=collect.REPO_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    waiting = f"waiting for another `python -m results` writing to {out} to finish\n"
    deadline = time.time() + 60
    lines = [p.stdout.readline() for p in procs]  # each says it waits, holding nothing
    assert lines == [waiting, waiting] and time.time() < deadline, lines
    lock.close()
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "Traceback" not in stderr, stderr
        assert f"tables (md, csv, tex) in {out / 'tables'}" in stdout
    assert {p.name for p in (out / "tables").iterdir()} >= {"pretrain_cifar.md", "cost.csv"}
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [build.LOCK]


def test_many_warnings_are_counted_by_kind_with_the_full_list_in_a_file(tmp_path, capsys):
    good = cifar_records()
    bad = ["{not json"] * 300 + [{**good[0], "seed": "one"}] * 200 + \
          [{k: v for k, v in good[1].items() if k != "config"}] * 100
    source = write_jsonl(tmp_path / "records.jsonl", [*good, *bad])
    out = tmp_path / "out"
    assert main(["--records", str(source), "--out", str(out), "--no-figures"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines()
               if line.startswith("warning:")]
    first = len(good) + 1
    assert printed[0] == f"warning: 600 warnings, all of them in {out / 'warnings.txt'}; by kind:"
    assert printed[1] == (f"warning:   300 x not JSON: {source}:{first}, {source}:{first + 1}, "
                          f"{source}:{first + 2}, ...; e.g. {source}:{first}: skipped, not JSON "
                          f"(Expecting property name enclosed in double quotes)")
    assert printed[2].startswith(f"warning:   200 x seed not an integer: {source}:{first + 300}")
    assert printed[2].endswith(f"e.g. {source}:{first + 300}: skipped, seed is 'one', not an "
                               f"integer")
    assert printed[3].startswith(f"warning:   100 x missing config: {source}:{first + 500}")
    assert len(printed) == 4
    listed = (out / "warnings.txt").read_text().splitlines()
    assert len(listed) == 600 and listed[-1] == f"{source}:{first + 599}: skipped, missing config"
    readme = (out / "README.md").read_text()
    assert "- ... and 590 more warnings (all of them in [warnings.txt](warnings.txt))" in readme
    write_jsonl(source, good)  # fixed: the list goes, so that it cannot mislead
    assert main(["--records", str(source), "--out", str(out), "--no-figures"]) == 0
    assert not (out / "warnings.txt").exists()


def test_tables_stay_in_place_while_the_new_ones_are_swapped_in(tmp_path, monkeypatch):
    """Where the file system can exchange two folders atomically (Linux: ext4, xfs, tmpfs,
    ...), the old tables are never moved aside: a kill at any moment leaves a whole folder."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    if not build._exchange(a, b):
        pytest.skip("this file system cannot exchange two folders atomically")
    target = tmp_path / "tables"
    target.mkdir()
    (target / "old.md").write_text("old")
    renames = []
    real_rename = os.rename
    monkeypatch.setattr(os, "rename", lambda *args: (renames.append(args), real_rename(*args)))
    with build.staged(target) as tmp:
        (tmp / "new.md").write_text("new")
    assert not [args for args in renames if str(target) in map(str, args)]
    assert [p.name for p in target.iterdir()] == ["new.md"]


def test_a_kill_between_the_two_renames_loses_no_tables(tmp_path, monkeypatch):
    """Where folders can only be renamed, a build killed between moving the old tables aside
    and moving the new ones in leaves both hidden; the next build puts the new ones (complete:
    the old ones are moved only then) back in place first, even when it fails itself."""
    target = tmp_path / "tables"
    target.mkdir()
    (target / "old.md").write_text("old")
    monkeypatch.setattr(build, "_exchange", lambda a, b: False, raising=False)
    real_rename, calls = os.rename, []

    def killed(src, dst):  # the second rename never happens
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", killed)
    with pytest.raises(KeyboardInterrupt), build.staged(target) as tmp:
        (tmp / "new.md").write_text("new")
    monkeypatch.setattr(os, "rename", real_rename)
    assert not target.exists()  # the moment of the kill
    with pytest.raises(RuntimeError), build.staged(target) as tmp:
        raise RuntimeError("the next build fails while rendering")
    assert [p.read_text() for p in target.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tables"]
