"""The chain of run_all.sh: the plans of the presets, and that their done-markers are the files the
stages actually write (a wrong marker would redo or, worse, skip work)."""
from pathlib import Path

import pytest

from chain import __main__ as chain_main
from chain import plan

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("preset", plan.PRESETS)
def test_every_planned_config_and_backbone_exists(preset, monkeypatch):
    from pretrain import config as pretrain_config
    from pretrain.engine import student_names

    for var in plan.DATA_VARIABLES:
        monkeypatch.setenv(var, "/datasets/placeholder")
    steps = plan.build(preset, [0], list(plan.BACKENDS), ROOT)
    students = {}
    for step in steps:
        if step.stage == "pretrain":
            cfg = pretrain_config.load(ROOT / step.args[1], [step.args[2]])
            assert step.done == cfg.run_dir / "export" / "manifest.json"
            students[cfg.name] = student_names(cfg)
        elif step.stage == "transfer":
            assert (ROOT / step.args[1]).is_file(), step.args[1]
            source, student = step.backbone.parts[2:-3], step.backbone.stem
            assert student in students["/".join(source)], step.label  # trained before it is used
    assert [s.stage for s in steps][-1] == "results"
    pretrain_steps = [s for s in steps if s.stage == "pretrain"]
    first_other = next(i for i, s in enumerate(pretrain_steps) if "independent" not in s.label)
    assert all("independent" in s.label for s in pretrain_steps[:first_other])


def test_smoke_plan_covers_every_task_with_a_baseline():
    steps = plan.build("smoke", [0], ["torchvision", "mmseg"], ROOT)
    transfer = [s for s in steps if s.stage == "transfer"]
    assert len(transfer) == 6  # 2 backbones x (Faster R-CNN, Mask R-CNN, Semantic FPN)
    assert {s.backbone.parts[3] for s in transfer} == {"independent", "kdcl_minlogit"}
    methods = [Path(s.args[1]).stem for s in steps if s.stage == "pretrain"]
    assert methods == ["independent", "kdcl_general", "kdcl_linear", "kdcl_minlogit",
                       "kdcl_naive"]


def test_transfer_markers_are_the_run_directories_of_the_backends():
    from transfer import config as transfer_config
    from transfer.backends.torchvision.engine import run_dir_of

    step = next(s for s in plan.build("smoke", [0], ["torchvision"], ROOT)
                if s.stage == "transfer")
    cfg = transfer_config.load(ROOT / step.args[1])
    meta = {"config_name": "smoke/independent", "seed": 0, "name": "resnet18"}
    assert step.done == run_dir_of(cfg, meta, step.backbone) / "result.json"


def test_only_selects_stages_backends_and_names():
    steps = plan.build("smoke", [0], ["torchvision", "mmseg"], ROOT)
    assert {s.stage for s in plan.select(steps, ["pretrain"])} == {"pretrain"}
    assert {s.backend for s in plan.select(steps, ["mmseg"])} == {"mmseg"}
    linear = plan.select(steps, ["kdcl_linear"])
    assert len(linear) == 1 and linear[0].stage == "pretrain"
    assert plan.select(steps, []) == steps


def test_dry_run_prints_the_plan(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # restored afterwards: main() works from the repository root
    assert chain_main.main(["--dry-run", "--backends", "torchvision"]) == 0
    out = capsys.readouterr().out
    assert "python -m pretrain pretrain/configs/smoke/independent.yaml seed=0 --resume" in out
    assert "python -m results" in out and ("[todo]" in out or "[done]" in out)


def test_missing_dataset_variables_stop_the_chain_with_what_to_set(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    for var in plan.DATA_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COCO_ROOT", "/no/such/folder")
    code = chain_main.main(["--preset", "paper", "--backends", "torchvision", "--only",
                            "r50_r18/kdcl_linear"])
    err = capsys.readouterr().err
    assert code == 2
    assert "$IMAGENET_ROOT is not set" in err and "$COCO_ROOT=/no/such/folder is not a folder" in err
    assert "--only" in err


def test_launcher_uses_torchrun_for_several_processes(monkeypatch):
    step = plan.build("smoke", [0], ["torchvision", "detectron2"], ROOT)
    pretrain_step = step[0]
    d2 = next(s for s in step if s.backend == "detectron2")
    monkeypatch.setenv("NPROC_PER_NODE", "8")
    monkeypatch.setenv("D2_LAUNCH_ARGS", "--num-machines 2")
    assert chain_main.launcher(pretrain_step)[:3] == ["torchrun", "--nproc_per_node", "8"]
    assert chain_main.launcher(d2)[-4:] == ["--num-gpus", "8", "--num-machines", "2"]
    monkeypatch.delenv("NPROC_PER_NODE")
    assert chain_main.launcher(pretrain_step)[1:3] == ["-m", "pretrain"]
