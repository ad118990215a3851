"""The results stage on constructed records: cell values, paper columns, significance, skipped
lines (malformed, or a field of the wrong type), stale records (transfer from replaced weights,
KD from a replaced teacher), atomic replacement of the output folders and their modes, the smoke
caption and the CLI end to end (a records path that does not exist included)."""
import json
import math
import os
import stat
import warnings

import pandas as pd
import pytest
import scipy.stats

from results import build, collect, render, stats, tabulate
from results.__main__ import main

GROUP = "cifar_resnet32+wrn_16_2"
PAPER_ONLY = tabulate.PAPER_ONLY


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
    return {t.name: t for t in tabulate.build(collect.frame(items), tabulate.load_paper())}


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
    assert not [p for p in out.iterdir() if p.name.startswith(".")]

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
    assert (f"--records {missing} does not exist: give a JSONL file of result records or a "
            "folder of *.jsonl files") in printed.err
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
             transfer_from("kdcl_minlogit", "c", "/elsewhere/resnet18.pth"),
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
