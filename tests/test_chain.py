"""The chain of run_all.sh: the plans of the presets, that a step's run folder is the one its
stage writes, and that a step's state (done, to do, stale) is decided when the chain reaches it
(a wrong state would redo or, worse, skip work)."""
import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from chain import __main__ as chain_main
from chain import plan
from pretrain import registry

from .conftest import SMOKE, make_backbone, read_records, tiny_overrides, tiny_transfer_overrides

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("preset", plan.PRESETS)
def test_every_planned_config_and_backbone_exists(preset, monkeypatch, tmp_path):
    from pretrain import config as pretrain_config
    from pretrain.engine import student_names

    for var in plan.DATA_VARIABLES:
        monkeypatch.setenv(var, str(tmp_path / "placeholder"))
    steps = plan.build(preset, [0], list(plan.backends.names()), ROOT)
    students = {}
    for step in steps:
        if step.stage == "pretrain":
            cfg = pretrain_config.load(ROOT / step.args[1], [step.args[2]])
            assert step.run_dir() == cfg.run_dir
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
    # the methods pretrain/registry.py marks smoke, the baseline first; with --all-methods every
    # method, those with a teacher last (KD's is independent's export)
    methods = [Path(s.args[1]).stem for s in steps if s.stage == "pretrain"]
    assert methods[0] == registry.BASELINE
    assert sorted(methods) == sorted(m.name for m in registry.METHODS if m.smoke)
    everything = plan.build("smoke", [0], [], ROOT, all_methods=True)
    everything = [Path(s.args[1]).stem for s in everything if s.stage == "pretrain"]
    taught = [m.name for m in registry.METHODS if m.needs_teacher]
    assert everything[0] == registry.BASELINE and sorted(everything[-len(taught):]) == taught
    assert sorted(everything) == sorted(registry.NAMES)
    # Fig. 4's noise evaluation of KDCL-General's and the baseline's exports, before the tables
    assert [s.stage for s in steps[-2:]] == ["robustness", "results"]
    exports = [a for a in steps[-2].args if a.endswith(".pth")]
    assert exports == [str(plan.export_of(c, 0, "resnet18"))
                       for c in ("smoke/independent", "smoke/kdcl_general")]


@pytest.mark.parametrize("backend", ["torchvision", "mmseg"])
def test_a_transfer_step_names_the_run_folder_its_backend_writes(backend, tmp_path, monkeypatch):
    from transfer import backends, lifecycle

    monkeypatch.chdir(ROOT)  # the plan's paths are relative to the repository
    step = next(s for s in plan.build("smoke", [0], [backend], ROOT) if s.stage == "transfer")
    planned = step.run_dir()  # known before the backbone is exported: it names the step's job
    assert planned.parent.name == "smoke-independent-seed0-resnet18"
    backbone = make_backbone(tmp_path, "resnet18")
    meta = json.loads(backbone.with_suffix(".json").read_text())
    backbone.with_suffix(".json").write_text(json.dumps(
        {**meta, "config_name": "smoke/independent", "name": "resnet18"}))
    step = dataclasses.replace(step, backbone=backbone,
                               args=(*step.args[:3], str(backbone), *step.args[4:]))
    resolved = lifecycle.resolve(backends.get(backend).load()(), Path(step.config), [],
                                 backbone, step.seed)
    assert step.run_dir() == resolved.folder.path == planned


def test_only_selects_stages_backends_and_names():
    steps = plan.build("smoke", [0], ["torchvision", "mmseg"], ROOT)
    assert {s.stage for s in plan.select(steps, ["pretrain"])} == {"pretrain"}
    assert {s.backend for s in plan.select(steps, ["mmseg"])} == {"mmseg"}
    general = plan.select(steps, ["smoke/kdcl_general seed0"])
    assert len(general) == 1 and general[0].stage == "pretrain"
    assert plan.select(steps, []) == steps
    with pytest.raises(ValueError, match="--only nonsense matches no step.*a stage \\(pretrain, "
                                         "transfer, robustness, results\\), "
                                         "a backend \\(mmseg, torchvision\\)"):
        plan.select(steps, ["pretrain", "nonsense"])


def test_only_that_matches_nothing_stops_the_chain(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert chain_main.main(["--only", "nonsense", "--backends", "torchvision"]) == 2
    err = capsys.readouterr().err
    assert "--only nonsense matches no step" in err and "--dry-run" in err


def test_dry_run_prints_the_plan(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # restored afterwards: main() works from the repository root
    assert chain_main.main(["--dry-run", "--backends", "torchvision"]) == 0
    out = capsys.readouterr().out
    assert "python -m pretrain pretrain/configs/smoke/independent.yaml seed=0 --re" in out
    assert "python -m results" in out and ("[todo]" in out or "[done]" in out)


def test_missing_dataset_variables_stop_the_chain_with_what_to_set(monkeypatch, capsys,
                                                                  tmp_path):
    monkeypatch.chdir(ROOT)
    for var in plan.DATA_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COCO_ROOT", str(tmp_path / "no-such-folder"))
    code = chain_main.main(["--preset", "paper", "--backends", "torchvision", "--only",
                            "r50_r18/kdcl_linear"])
    err = capsys.readouterr().err
    assert code == 2
    assert "$IMAGENET_ROOT is not set" in err
    assert f"$COCO_ROOT={tmp_path / 'no-such-folder'} is not a folder" in err
    assert "--only" in err


def test_launcher_uses_torchrun_for_several_processes():
    from chain import launch

    steps = plan.build("smoke", [0], ["torchvision", "detectron2"], ROOT)
    pretrain_step = steps[0]
    d2 = next(s for s in steps if s.backend == "detectron2")
    local = launch.Topology.from_environment({"NPROC_PER_NODE": "8",
                                              "D2_LAUNCH_ARGS": "--num-machines 2"})
    shown = launch.shown(launch.command(pretrain_step, "todo", local))
    assert shown.startswith("torchrun --standalone --nproc_per_node 8 -m pretrain ")
    assert shown.endswith(" --resume")
    assert launch.command(d2, "stale", local)[-5:] == ["--restart", "--num-gpus", "8",
                                                       "--num-machines", "2"]
    single = launch.Topology.from_environment({})
    assert launch.shown(launch.command(pretrain_step, "todo", single)).startswith(
        "python -m pretrain pretrain/configs/smoke/independent.yaml seed=0")


def test_slurm_topology_takes_ranks_from_slurm_and_the_port_from_the_job_id():
    """Two jobs of one user on one node meet at different ports (torchrun's, mmengine's and
    Detectron2's defaults would collide); every node of a job uses the same one."""
    from chain import launch

    steps = plan.build("smoke", [0], ["torchvision", "detectron2"], ROOT)
    env = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1",
           "SLURM_JOB_NODELIST": "gpu07,gpu08"}
    topology = launch.Topology.from_slurm(4, env)
    assert (topology.nodes, topology.node_rank, topology.master) == (2, 1, "gpu07")
    assert topology.port == launch.port_for_job(4242) != launch.port_for_job(4243)
    shown = launch.shown(launch.command(steps[0], "todo", topology))
    assert shown.startswith(f"torchrun --nnodes 2 --node_rank 1 --master_addr gpu07 "
                            f"--master_port {topology.port} --nproc_per_node 4 -m pretrain")
    d2 = next(s for s in steps if s.backend == "detectron2")
    assert launch.command(d2, "todo", topology)[-8:] == [
        "--num-gpus", "4", "--num-machines", "2", "--machine-rank", "1", "--dist-url",
        f"tcp://gpu07:{topology.port}"]


TV = ROOT / "transfer" / "configs" / "torchvision"


def test_a_transfer_step_reruns_when_pretraining_replaced_its_weights(tmp_path, tiny_root,
                                                                      tiny_coco, monkeypatch,
                                                                      capsys):
    """Pre-training re-run in the same run_all call: with identical weights (a deterministic
    run) its transfer step stays done; with other weights it is stale and runs again, with the
    old run archived, not deleted."""
    def steps(lr):
        pretrain = plan.Step("pretrain", "pretrain tiny", (
            "pretrain", str(SMOKE / "independent.yaml"), "seed=0",
            *tiny_overrides(tiny_root, tmp_path, **{"optim.epochs": 1, "optim.lr": lr,
                                                    "train.deterministic": True})))
        export = tmp_path / "runs/smoke/independent/seed0/export/resnet18.pth"
        transfer = plan.Step("transfer", "transfer tiny", (
            "transfer", str(TV / "smoke_faster_rcnn_fpn.yaml"), "--backbone", str(export),
            *tiny_transfer_overrides(tiny_coco, tmp_path)), backend="torchvision",
            backbone=export)
        return [pretrain, transfer]

    def chain(lr):
        monkeypatch.setattr(plan, "build", lambda *args, **kwargs: steps(lr))
        assert chain_main.main(["--backends", "torchvision"]) == 0
        return capsys.readouterr().out

    def transfer_records():
        return read_records(tmp_path, "transfer")

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = chain(0.02)
    assert "done, skipped" not in out and len(transfer_records()) == 1
    first = transfer_records()[0]
    # the same pre-training again (its folder deleted): the same weights, the transfer is done
    shutil.rmtree(tmp_path / "runs/smoke/independent")
    out = chain(0.02)
    assert "1/2 pretrain tiny\n" in out and "2/2 transfer tiny: done, skipped" in out
    assert len(transfer_records()) == 1
    # pre-training with another config: it is stale, runs again, and so does the transfer
    out = chain(0.05)
    assert "1/2 pretrain tiny: stale (its config changed: optim.lr: 0.02 -> 0.05)" in out
    assert "2/2 transfer tiny: stale (made from other weights: backbone" in out
    (record,) = transfer_records()  # the run's record file now holds the new run's record
    assert record["backbone_sha256"] != first["backbone_sha256"]
    assert record["run_dir"] == first["run_dir"]
    run_dir = Path(first["run_dir"])
    (archived,) = run_dir.parent.glob("seed0.superseded-*")
    assert json.loads((archived / "result.json").read_text())["backbone_sha256"] == \
        first["backbone_sha256"]
    assert len(list((tmp_path / "runs/smoke/independent").glob("seed0.superseded-*"))) == 1
    out = chain(0.05)
    assert out.count("done, skipped") == 2
