"""The results stage on constructed records: cell values, paper columns, significance, skipped
lines, atomic replacement of the output folders, the smoke caption and the CLI end to end."""
import json
import math

import pandas as pd
import pytest
import scipy.stats

from results import build, records, render, stats, tables
from results.__main__ import main

GROUP = "cifar_resnet32+wrn_16_2"


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
    return {t.name: t for t in tables.build(records.frame(items), tables.load_paper())}


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
    assert tables.device(["x86_64"], 2) == (0, "CPU (x86_64)")


def test_a_config_changed_between_seeds_is_reported():
    items = [pretrain("independent", "cifar_resnet32", s, 70, config_hash=h)
             for s, h in enumerate(["aaa", "bbb"])]
    with pytest.warns(records.RecordWarning, match="2 different versions of the config"):
        records.frame(items)


def test_malformed_lines_are_skipped_with_file_and_line(tmp_path):
    good = pretrain("independent", "cifar_resnet32", 0, 70)
    missing = {k: v for k, v in good.items() if k != "seed"}
    path = write_jsonl(tmp_path / "r.jsonl", [good, "{not json", missing, "[1, 2]"])
    with pytest.warns(records.RecordWarning) as caught:
        got = records.read([tmp_path])
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
