"""The mmdetection backend: conversion fidelity into mmdet's ResNet and MobileNetV2, its configs
(mmdet's own bases), end-to-end runs on the generated scenes with mmdet's COCO evaluation, a
kill and an exact resume, and the bad-input messages."""
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmdet", reason="mmdet is not installed (bash scripts/setup.sh)")

from kdcl_common import artifact  # noqa: E402
from transfer import cli, convert  # noqa: E402
from transfer.backends.mmdet import Backend, classes, split_files  # noqa: E402

from .conftest import (REPO, TINY_COCO, make_backbone, read_records,  # noqa: E402
                       tiny_mmengine_overrides)

MMDET = REPO / "transfer" / "configs" / "mmdet"
EXPERIMENTS = sorted(MMDET.glob("*.py"))


@pytest.mark.parametrize("config,arch,kwargs", [
    ("faster-rcnn_r18_fpn_paper14ep_syncbn", "resnet18", {}),
    ("mask-rcnn_r50_fpn_1x_frozenbn", "resnet50", {}),
    ("faster-rcnn_mbv2_fpn_paper14ep_syncbn", "mobilenet_v2", {}),
    ("mask-rcnn_mbv2_fpn_smoke", "mobilenet_v2", {"width_mult": 0.5}),
])
def test_mmdet_backbone_gives_the_same_feature_maps(tmp_path, config, arch, kwargs):
    """The converted backbone's four maps equal the torchvision network's (ResNet's layer1-4;
    MobileNetV2's features[3], [6], [13] and [18], as the other detection backends)."""
    from mmdet.registry import MODELS

    torch.manual_seed(0)
    path = make_backbone(tmp_path, arch, **kwargs)
    source, meta = artifact.load(path)
    with torch.no_grad():
        source.train()(torch.randn(4, 3, 64, 64))  # non-trivial BatchNorm statistics
    source.eval()
    cfg = Backend().fit_backbone(Backend.read(MMDET / f"{config}.py", []), meta, path)
    target = MODELS.build(cfg.model.backbone)
    converted = convert.convert(source.state_dict(), arch, "mmdet", target.state_dict().keys())
    skipped = {"fc"} if arch.startswith("resnet") else {"classifier"}  # features.18 is used
    assert {k.split(".")[0] for k in converted.skipped} == skipped
    target.load_state_dict(converted.state, strict=True)
    target.eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ours = list(target(x))
        theirs = convert.torchvision_features(source, arch, x)
    assert [m.shape[1] for m in ours] == cfg.model.neck.in_channels
    assert convert.max_relative_error(theirs, ours) < 1e-5


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_configs_load_from_mmdets_bases(path):
    cfg = Backend.read(path, [])
    assert cfg.kdcl.protocol in path.stem and cfg.default_scope == "mmdet"
    backbone = cfg.model.backbone
    assert backbone.type == ("MobileNetV2" if "_mbv2_" in path.name else "ResNet")
    if backbone.type == "ResNet":
        assert backbone.style == "pytorch" and not backbone.get("deep_stem", False)
        assert f"_r{backbone.depth}_" in path.name
    else:
        assert tuple(backbone.out_indices) == (1, 2, 4, 7)
    assert (cfg.model.type, bool(cfg.model.roi_head.get("mask_head"))) == {
        "faster-rcnn": ("FasterRCNN", False), "mask-rcnn": ("MaskRCNN", True)}[
        path.stem.split("_")[0]]
    assert backbone.init_cfg is None  # the weights come via --backbone
    assert cfg.train_cfg.type == "IterBasedTrainLoop"
    frozen = "frozenbn" in path.stem
    assert backbone.norm_eval is frozen and backbone.norm_cfg.requires_grad is not frozen
    if "syncbn" in path.stem:
        assert {backbone.norm_cfg.type, cfg.model.neck.norm_cfg.type,
                cfg.model.roi_head.bbox_head.norm_cfg.type} == {"SyncBN"}
    # the evaluator scores against what the validation loader reads
    assert cfg.val_evaluator.ann_file == str(split_files(cfg, "val_dataloader")[1])


def test_a_data_root_override_moves_the_evaluators_annotations_too(tmp_path):
    cfg = Backend.read(MMDET / "faster-rcnn_r18_fpn_smoke.py",
                       [f"val_dataloader.dataset.data_root={tmp_path}"])
    assert cfg.val_evaluator.ann_file == str(tmp_path / "annotations/instances_val2017.json")


def run(config, backbone, root, out, *extra, flags=(), iters=4):
    return cli.main([str(MMDET / f"{config}.py"), "--backbone", str(backbone),
                     *tiny_mmengine_overrides(root, out, iters), *extra, *flags])


@pytest.mark.parametrize("config,backbone,task", [
    ("faster-rcnn_r18_fpn_smoke", "resnet18", "detection"),
    ("mask-rcnn_mbv2_fpn_smoke", "mobilenet_v2_x0.5", "instance_segmentation")])
def test_trains_evaluates_and_records_coco_ap(tmp_path, tiny_coco, backbones, config, backbone,
                                              task, capsys):
    assert run(config, backbones[backbone], tiny_coco, tmp_path) == 0
    err = capsys.readouterr().err
    assert "loading annotations" not in err and "Average Precision" not in err  # in log.txt
    (record,) = read_records(tmp_path)
    assert (record["task"], record["backend"], record["backbone"]) == (task, "mmdet", backbone)
    assert record["detector"] == config.split("_")[0].replace("-", "_")
    assert record["classes"] == 5 and record["evaluated_images"] == TINY_COCO["val_images"]
    kinds = ("bbox", "segm") if task == "instance_segmentation" else ("bbox",)
    assert set(record["metrics"]) == {f"{k}_{s}" for k in kinds
                                      for s in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    assert all(v is None or 0 <= v <= 100 for v in record["metrics"].values())
    run_dir = Path(record["run_dir"])
    assert (run_dir / "result.json").is_file() and (run_dir / "iter_4.pth").is_file()
    assert "Average Precision" in (run_dir / "log.txt").read_text()
    # a finished run: refused without --resume, a no-op with it; --eval-only scores it again
    assert run(config, backbones[backbone], tiny_coco, tmp_path) == 2
    assert run(config, backbones[backbone], tiny_coco, tmp_path, flags=["--resume"]) == 0
    assert run(config, backbones[backbone], tiny_coco, tmp_path, flags=["--eval-only"]) == 0
    again = json.loads((run_dir / "eval-val.json").read_text())["metrics"]
    assert again == record["metrics"]


def test_kill_and_resume_ends_as_an_uninterrupted_run(tmp_path, tiny_coco, backbones):
    """SIGKILL after the first checkpoint, then --resume: the shared mmengine hooks make the
    resumed run end with the uninterrupted one's weights and metrics."""
    iters, killed, whole = 6, tmp_path / "killed", tmp_path / "whole"

    def command(out):
        return [sys.executable, "-m", "transfer", str(MMDET / "faster-rcnn_r18_fpn_smoke.py"),
                "--backbone", str(backbones["resnet18"]),
                *tiny_mmengine_overrides(tiny_coco, out, iters,
                                         **{"default_hooks.checkpoint.interval": 3})]

    proc = subprocess.Popen(command(killed), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while not list(killed.rglob("iter_3.pth")):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert cli.main(command(killed)[3:] + ["--resume"]) == 0
    assert cli.main(command(whole)[3:]) == 0

    def final(out):
        (checkpoint,) = out.rglob(f"iter_{iters}.pth")
        return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]

    a, b = final(killed), final(whole)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    (resumed,), (uninterrupted,) = read_records(killed), read_records(whole)
    assert resumed["metrics"] == uninterrupted["metrics"]
    assert (resumed["resumes"], uninterrupted["resumes"]) == (1, 0)


def copy_scenes(tiny_coco: Path, tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    shutil.copytree(tiny_coco, root, symlinks=True)
    return root


def test_classes_that_are_not_the_annotations_categories_are_refused(tmp_path, tiny_coco,
                                                                     backbones, capsys):
    """mmdet keeps only the objects of the config's classes: COCO's 80 names on other data
    would train on nothing and score nothing, silently."""
    assert run("faster-rcnn_r18_fpn_smoke", backbones["resnet18"], tiny_coco, tmp_path,
               "train_dataloader.dataset.metainfo.classes=[circle, square]") == 2
    err = capsys.readouterr().err
    assert "has the categories ['circle', 'square', 'triangle', 'ring', 'cross'], but the " \
           "config trains on the classes ['circle', 'square']" in err
    assert not (tmp_path / "runs").exists()


def test_missing_coco_files_are_named(tmp_path, backbones, capsys):
    assert run("faster-rcnn_r18_fpn_smoke", backbones["resnet18"], tmp_path / "nowhere",
               tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: COCO files not found: ") and "$COCO_ROOT" in err


def test_an_image_the_annotations_list_but_the_folder_lacks_is_named(tmp_path, tiny_coco,
                                                                      backbones, capsys):
    root = copy_scenes(tiny_coco, tmp_path)
    index = json.loads((root / "annotations/instances_val2017.json").read_text())
    (root / "val2017" / index["images"][0]["file_name"]).unlink()
    assert run("faster-rcnn_r18_fpn_smoke", backbones["resnet18"], root, tmp_path) == 2
    assert (f"1 images listed in {root / 'annotations/instances_val2017.json'} are not in "
            f"{root / 'val2017'}") in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_an_image_stored_at_another_size_than_annotated_is_named(tmp_path, tiny_coco,
                                                                 backbones, capsys):
    from PIL import Image

    root = copy_scenes(tiny_coco, tmp_path)
    index = json.loads((root / "annotations/instances_train2017.json").read_text())
    info = index["images"][0]
    image = root / "train2017" / info["file_name"]
    Image.new("RGB", (info["width"] + 8, info["height"])).save(image)
    assert run("faster-rcnn_r18_fpn_smoke", backbones["resnet18"], root, tmp_path,
               "train_dataloader.batch_size=12", iters=1) == 2
    err = capsys.readouterr().err
    assert f"{image} is stored as {info['width'] + 8}x{info['height']} pixels" in err
    assert "the labels would not fall on the objects" in err


def test_mmdets_classes_are_the_configs(tmp_path):
    cfg = Backend.read(MMDET / "mask-rcnn_r18_fpn_smoke.py", [])
    assert classes(cfg) == ("circle", "square", "triangle", "ring", "cross")
    assert len(classes(Backend.read(MMDET / "mask-rcnn_r50_fpn_paper14ep_syncbn.py", []))) == 80


def test_cocometrics_names_become_the_records_and_no_detection_scores_zero():
    cfg = Backend.read(MMDET / "mask-rcnn_r18_fpn_smoke.py", [])
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    metrics = {"coco/bbox_mAP": 0.123, "coco/bbox_mAP_50": 0.5, "coco/bbox_mAP_75": 0.0,
               "coco/bbox_mAP_s": 0.25, "coco/bbox_mAP_m": 0.3, "coco/bbox_mAP_l": -1.0}
    got = Backend().record_metrics(metrics, cfg)
    assert {f"bbox_{n}": got[f"bbox_{n}"] for n in names} == {
        "bbox_AP": 12.3, "bbox_AP50": 50.0, "bbox_AP75": 0.0, "bbox_APs": 25.0, "bbox_APm": 30.0,
        "bbox_APl": None}
    # CocoMetric returns nothing for a kind when the model detected nothing: AP 0
    assert {k: v for k, v in got.items() if k.startswith("segm_")} == {
        f"segm_{n}": 0.0 for n in names}
    assert Backend().record_metrics({}, cfg) == {f"{kind}_{n}": 0.0 for kind in ("bbox", "segm")
                                                 for n in names}
