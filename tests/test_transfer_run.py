"""End-to-end runs of `python -m transfer` with the torchvision backend (seconds each)."""
import json
import os
import subprocess
import sys

import pytest

from transfer import cli

from .conftest import REPO, make_backbone, tiny_transfer_overrides

TV = REPO / "transfer" / "configs" / "torchvision"


def run(config, backbone, root, out, *extra, flags=()):
    return cli.main([str(TV / f"{config}.yaml"), "--backbone", str(backbone),
                     *tiny_transfer_overrides(root, out), *extra, *flags])


def records(out):
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    folder = tmp_path_factory.mktemp("backbones")
    return {"resnet18": make_backbone(folder, "resnet18"),
            "mobilenet_v2_x0.5": make_backbone(folder, "mobilenet_v2", width_mult=0.5)}


@pytest.mark.parametrize("config,backbone,task", [
    ("smoke_faster_rcnn_fpn", "resnet18", "detection"),
    ("smoke_mask_rcnn_fpn", "mobilenet_v2_x0.5", "instance_segmentation"),
])
def test_trains_evaluates_and_records(tmp_path, tiny_coco, backbones, config, backbone, task):
    assert run(config, backbones[backbone], tiny_coco, tmp_path) == 0
    (record,) = records(tmp_path)
    assert record["stage"] == "transfer" and record["task"] == task
    assert record["backend"] == "torchvision" and record["backbone"] == backbone
    assert record["method"] == "independent" and record["protocol"] == "smoke"
    expected = {"bbox_AP", "bbox_AP50", "bbox_AP75", "bbox_APs", "bbox_APm", "bbox_APl"}
    if task == "instance_segmentation":
        expected |= {k.replace("bbox", "segm") for k in expected}
    assert set(record["metrics"]) == expected
    assert all(v is None or 0 <= v <= 100 for v in record["metrics"].values())
    run_dir = tmp_path / "runs" / "torchvision" / config / f"test-made-seed0-{backbone}" / "seed0"
    assert record["run_dir"] == str(run_dir)
    for name in ("result.json", "checkpoint.pth", "config.yaml", "environment.json",
                 "metrics.jsonl", "log.txt"):
        assert (run_dir / name).is_file(), name


def test_resume_eval_only_and_finished_runs(tmp_path, tiny_coco, backbones, capsys):
    backbone = backbones["resnet18"]
    assert run("smoke_faster_rcnn_fpn", backbone, tiny_coco, tmp_path, flags=["--eval-only"]) == 2
    assert "has no checkpoint: train it first" in capsys.readouterr().err
    assert run("smoke_faster_rcnn_fpn", backbone, tiny_coco, tmp_path) == 0
    assert run("smoke_faster_rcnn_fpn", backbone, tiny_coco, tmp_path) == 2
    assert "holds a finished run" in capsys.readouterr().err
    assert run("smoke_faster_rcnn_fpn", backbone, tiny_coco, tmp_path, flags=["--resume"]) == 0
    assert len(records(tmp_path)) == 1
    assert run("smoke_faster_rcnn_fpn", backbone, tiny_coco, tmp_path, "optim.lr=0.5",
               flags=["--resume"]) == 2
    assert "optim.lr: 0.01 -> 0.5" in capsys.readouterr().err
    assert run("smoke_faster_rcnn_fpn", backbone, tiny_coco, tmp_path, flags=["--eval-only"]) == 0
    evaluated = list((tmp_path / "runs").rglob("eval-val2017.json"))
    assert len(evaluated) == 1
    first = json.loads(evaluated[0].read_text())["metrics"]
    assert first == {**records(tmp_path)[0]["metrics"], "detections": first["detections"]}


def test_bad_input_messages(tmp_path, tiny_coco, backbones, capsys):
    backbone = backbones["resnet18"]
    assert run("smoke_faster_rcnn_fpn", backbone, tiny_coco, tmp_path,
               "model.backbone=resnet50") == 2
    assert "is a resnet18 backbone, but torchvision/smoke_faster_rcnn_fpn is a config for " \
           "resnet50" in capsys.readouterr().err
    orphan = tmp_path / "orphan.pth"
    orphan.write_bytes(backbone.read_bytes())
    assert run("smoke_faster_rcnn_fpn", orphan, tiny_coco, tmp_path) == 2
    assert "orphan.json is missing" in capsys.readouterr().err
    assert run("smoke_faster_rcnn_fpn", backbone, tmp_path / "nowhere", tmp_path,
               "data.dataset=coco") == 2
    assert "COCO files not found" in capsys.readouterr().err
    cifar = make_backbone(tmp_path, "cifar_resnet20")
    assert run("smoke_faster_rcnn_fpn", cifar, tiny_coco, tmp_path) == 2
    assert "cannot serve as a detection backbone" in capsys.readouterr().err
    assert run("smoke_faster_rcnn_fpn", backbone, tiny_coco, tmp_path, "model.detektor=x") == 2
    assert "Did you mean 'model.detector'" in capsys.readouterr().err


def test_syncbn_falls_back_with_a_warning(tmp_path, tiny_coco, backbones, capsys):
    assert run("smoke_faster_rcnn_fpn", backbones["resnet18"], tiny_coco, tmp_path,
               "model.norm=syncbn", "model.head_norm=bn") == 0
    assert "model.norm=syncbn has no effect on the CPU" in capsys.readouterr().err


@pytest.mark.distributed
def test_two_ranks_with_torchrun(tmp_path, tiny_coco, backbones):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "transfer", str(TV / "smoke_mask_rcnn_fpn.yaml"), "--backbone",
           str(backbones["resnet18"]), *tiny_transfer_overrides(tiny_coco, tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = records(tmp_path)
    assert record["world_size"] == 2 and "segm_AP" in record["metrics"]


def test_every_torchvision_config_loads_and_names_its_protocol(monkeypatch):
    from transfer import config

    monkeypatch.setenv("COCO_ROOT", "/datasets/coco")
    paths = sorted(TV.glob("[!_]*.yaml"))
    assert len(paths) == 6
    for path in paths:
        cfg = config.load(path)
        assert cfg.protocol in path.stem and cfg.model.detector in path.stem
        if cfg.protocol == "paper14ep_syncbn":
            o = cfg.optim
            assert (o.batch_size, o.lr, o.epochs, o.milestones) == (32, 0.04, 14, [9, 12])
            assert cfg.model.norm == "syncbn" and cfg.model.trainable_layers == 5


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tmp_path, tiny_coco, backbones, capsys,
                                                      monkeypatch):
    import torch
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

    real, calls = GeneralizedRCNN.forward, {"n": 0}

    def poisoned(self, images, targets=None):
        out = real(self, images, targets)
        if self.training:
            calls["n"] += 1
            if calls["n"] > 5:  # epoch 2 (5 steps of 2 images per epoch)
                out = {k: v * float("nan") for k, v in out.items()}
        return out

    monkeypatch.setattr(GeneralizedRCNN, "forward", poisoned)
    assert run("smoke_faster_rcnn_fpn", backbones["resnet18"], tiny_coco, tmp_path,
               "optim.epochs=2", "train.log_interval=1") == 2
    assert "loss became NaN/inf at epoch 2, step 1 of 5" in capsys.readouterr().err
    (checkpoint,) = (tmp_path / "runs").rglob("checkpoint.pth")
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
