"""End-to-end runs of `python -m transfer` with the torchvision backend (seconds each)."""
import json
import shutil
from pathlib import Path

import pytest

from transfer import cli

from .conftest import REPO, make_backbone, torchrun, tiny_transfer_overrides, read_records
from .test_config import alias_tree

TV = REPO / "transfer" / "configs" / "torchvision"


def run(config, backbone, root, out, *extra, flags=()):
    return cli.main([str(TV / f"{config}.yaml"), "--backbone", str(backbone),
                     *tiny_transfer_overrides(root, out), *extra, *flags])


def records(out):
    return read_records(out)


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
    assert len(records(tmp_path)) == 1 and records(tmp_path)[0]["resumes"] == 0
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
    assert "which cannot serve as a detection or segmentation backbone" in capsys.readouterr().err
    assert run("smoke_faster_rcnn_fpn", backbone, tiny_coco, tmp_path, "model.detektor=x") == 2
    assert "Did you mean 'model.detector'" in capsys.readouterr().err
    assert run("smoke_faster_rcnn_fpn", backbone.parent, tiny_coco, tmp_path) == 2
    assert f"{backbone.parent} is a folder, not a backbone file: name one of its .pth files " \
           f"(mobilenet_v2_x0.5.pth, resnet18.pth)" in capsys.readouterr().err
    assert run("smoke_faster_rcnn_fpn", backbone, tiny_coco, tmp_path, "seed=-1") == 2
    assert "seed=-1 must be an integer >= 0" in capsys.readouterr().err
    assert run("smoke_faster_rcnn_fpn", backbone, tiny_coco, tmp_path, "name=../x") == 2
    assert "name='../x' must be a relative path" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("text,message", [
    (b"PK\x03\x04\x9c\xff", "{path} is not a text file (byte 4 is not UTF-8): a config is a "
                            "YAML text file; was a checkpoint, image or archive given in its "
                            "place?"),
    (b"_base_: [3]\n", "{path}: _base_: [3] must name a config file or a list of them, as "
                       "paths relative to {folder}"),
    (f"a: {'[' * 2000}{']' * 2000}\n".encode(), "{path} is nested more than 50 levels deep"),
    (f"_base_: _base_/smoke.yaml\nx: {alias_tree()}\n".encode(),
     "{path}, line 2, has YAML aliases (*name) that expand to more than 100,000 values"),
], ids=["binary", "base", "deep", "aliases"])
def test_a_config_file_that_is_no_config_is_refused(tmp_path, backbones, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text)
    assert cli.main([str(path), "--backend", "torchvision", "--backbone",
                     str(backbones["resnet18"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message.format(path=path, folder=tmp_path)), err
    assert "Traceback" not in err


def test_syncbn_falls_back_with_a_warning(tmp_path, tiny_coco, backbones, capsys):
    assert run("smoke_faster_rcnn_fpn", backbones["resnet18"], tiny_coco, tmp_path,
               "model.norm=syncbn", "model.head_norm=bn") == 0
    assert "model.norm=syncbn has no effect on the CPU" in capsys.readouterr().err


@pytest.mark.distributed
def test_two_ranks_with_torchrun(tmp_path, tiny_coco, backbones):
    torchrun(2, "transfer", TV / "smoke_mask_rcnn_fpn.yaml", "--backbone", backbones["resnet18"],
             *tiny_transfer_overrides(tiny_coco, tmp_path))
    (record,) = records(tmp_path)
    assert record["world_size"] == 2 and "segm_AP" in record["metrics"]


def test_every_torchvision_config_loads_and_names_its_protocol(monkeypatch, tmp_path):
    from transfer.backends.torchvision import config

    monkeypatch.setenv("COCO_ROOT", str(tmp_path / "coco"))
    paths = sorted(TV.glob("[!_]*.yaml"))
    assert len(paths) == 8  # 6 protocol configs and the acceptance check's 2
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


# ------------------------------------------------------------------ run identity and bad input
def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_other_weights_of_the_same_name_are_refused_then_restarted(tmp_path, tiny_coco,
                                                                   capsys):
    """The same pre-training config, seed and student, other weights (a re-run of the
    pre-training): --resume neither calls the old run finished nor discards its result;
    --restart archives it and runs again; the same weights again are finished."""
    folder = tmp_path / "export"
    backbone = make_backbone(folder, "resnet18")
    assert run("smoke_faster_rcnn_fpn", backbone, tiny_coco, tmp_path) == 0
    (first,) = records(tmp_path)
    run_dir = Path(first["run_dir"])
    assert json.loads((run_dir / "run.json").read_text())["inputs"]["backbone"]["sha256"] == \
        first["backbone_sha256"]
    make_backbone(folder, "resnet18", weights_seed=1)  # same path and names, new weights
    before = snapshot(run_dir)
    assert run("smoke_faster_rcnn_fpn", backbone, tiny_coco, tmp_path, flags=["--resume"]) == 2
    err = capsys.readouterr().err
    assert "refusing to resume" in err and "made from other weights" in err
    assert f"backbone {backbone}: sha256 {first['backbone_sha256'][:12]} -> " in err
    assert "Its result stays as it is. --restart archives it" in err
    assert snapshot(run_dir) == before and len(records(tmp_path)) == 1
    assert run("smoke_faster_rcnn_fpn", backbone, tiny_coco, tmp_path, flags=["--eval-only"]) == 2
    assert "was trained from other weights" in capsys.readouterr().err
    assert run("smoke_faster_rcnn_fpn", backbone, tiny_coco, tmp_path, flags=["--restart"]) == 0
    (archived,) = run_dir.parent.glob("seed0.superseded-*")
    assert snapshot(archived) == before
    (second,) = records(tmp_path)  # the run's record file now holds the new run's
    assert second["backbone_sha256"] != first["backbone_sha256"]
    assert json.loads((archived / "result.json").read_text())["backbone_sha256"] == \
        first["backbone_sha256"]  # the archived run keeps its own result
    assert run("smoke_faster_rcnn_fpn", backbone, tiny_coco, tmp_path, flags=["--resume"]) == 0
    assert "is already finished" in capsys.readouterr().err
    assert records(tmp_path) == [second]


def test_a_failed_check_writes_nothing(tmp_path, tiny_coco, backbones, capsys):
    backbone = backbones["resnet18"]
    assert run("smoke_faster_rcnn_fpn", backbone, tmp_path / "nowhere", tmp_path,
               "data.dataset=coco") == 2
    assert "COCO files not found" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert run("smoke_faster_rcnn_fpn", backbone, tiny_coco, tmp_path, "--num-gpus", "2") == 2
    err = capsys.readouterr().err
    assert "--num-gpus is an option of the detectron2 backend" in err
    assert "is a torchvision config. For several processes use torchrun" in err


def copy_coco(tiny_coco, tmp_path, split, keep_images: bool):
    """The tiny scenes with `split`'s annotation file emptied (no images, or no annotations)."""
    root = tmp_path / "coco"
    shutil.copytree(tiny_coco, root, symlinks=True)
    file = root / "annotations" / f"instances_{split}.json"
    data = json.loads(file.read_text())
    data["annotations"] = []
    if not keep_images:
        data["images"] = []
    file.write_text(json.dumps(data))
    return root


def test_an_empty_evaluation_split_stops_before_training(tmp_path, tiny_coco, backbones,
                                                         capsys):
    root = copy_coco(tiny_coco, tmp_path, "val2017", keep_images=False)
    assert run("smoke_faster_rcnn_fpn", backbones["resnet18"], root, tmp_path,
               "data.dataset=coco") == 2
    err = capsys.readouterr().err
    assert "the evaluation split (val2017) of" in err and "holds no images" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "records").exists()


def test_an_empty_training_split_says_so(tmp_path, tiny_coco, backbones, capsys):
    root = copy_coco(tiny_coco, tmp_path, "train2017", keep_images=True)
    assert run("smoke_faster_rcnn_fpn", backbones["resnet18"], root, tmp_path,
               "data.dataset=coco") == 2
    err = capsys.readouterr().err
    assert "train2017 of" in err and "has no image with a training target" in err
    assert "batch_size" not in err
    assert not (tmp_path / "runs").exists()


def coco_with_other_val_categories(tiny_coco, tmp_path):
    """The tiny scenes, with one category (and its objects) left out of val2017."""
    root = tmp_path / "coco"
    shutil.copytree(tiny_coco, root, symlinks=True)
    file = root / "annotations" / "instances_val2017.json"
    data = json.loads(file.read_text())
    dropped = data["categories"].pop()["id"]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] != dropped]
    file.write_text(json.dumps(data))
    return root


def test_splits_with_other_categories_are_named(tmp_path, tiny_coco, backbones, capsys):
    root = coco_with_other_val_categories(tiny_coco, tmp_path)
    assert run("smoke_faster_rcnn_fpn", backbones["resnet18"], root, tmp_path,
               "data.dataset=coco") == 2
    err = capsys.readouterr().err
    assert "the categories of train2017 and val2017 differ" in err
    assert "Both splits must come from one dataset" in err
    assert not (tmp_path / "runs").exists()


def test_no_record_from_an_evaluation_of_nothing(tmp_path, tiny_coco, backbones, monkeypatch,
                                                 capsys):
    from transfer.backends.torchvision import engine

    real = engine.DetectionRun.evaluate

    def blind(self):
        scores = real(self)
        return scores and {**scores, "images": 0}

    monkeypatch.setattr(engine.DetectionRun, "evaluate", blind)
    assert run("smoke_faster_rcnn_fpn", backbones["resnet18"], tiny_coco, tmp_path) == 2
    assert "saw no images, so there is no result to record" in capsys.readouterr().err
    assert not (tmp_path / "records").exists()
    assert not list((tmp_path / "runs").rglob("result.json"))


def test_after_a_nan_stop_resume_accepts_a_lower_learning_rate(tmp_path, tiny_coco, backbones,
                                                               capsys, monkeypatch):
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

    real, calls = GeneralizedRCNN.forward, {"n": 0}

    def poisoned(self, images, targets=None):
        out = real(self, images, targets)
        if self.training:
            calls["n"] += 1
            if calls["n"] > 5:
                out = {k: v * float("nan") for k, v in out.items()}
        return out

    monkeypatch.setattr(GeneralizedRCNN, "forward", poisoned)
    backbone = backbones["resnet18"]
    assert run("smoke_faster_rcnn_fpn", backbone, tiny_coco, tmp_path, "optim.epochs=2",
               "train.log_interval=1") == 2
    assert "--resume accepts new values of optim.lr" in capsys.readouterr().err
    monkeypatch.setattr(GeneralizedRCNN, "forward", real)
    assert run("smoke_faster_rcnn_fpn", backbone, tiny_coco, tmp_path, "optim.epochs=2",
               "train.log_interval=1", "optim.lr=0.005", flags=["--resume"]) == 0
    (record,) = records(tmp_path)
    assert record["config_changes"][0]["diff"] == ["  optim.lr: 0.01 -> 0.005"]
    assert record["resumes"] == 1


def scenes(tiny_coco, tmp_path, change=None):
    """A copy of the tiny scenes; `change(data)` edits its training annotations."""
    root = tmp_path / "coco"
    shutil.copytree(tiny_coco, root, symlinks=True)
    file = root / "annotations" / "instances_train2017.json"
    data = json.loads(file.read_text())
    if change is not None:
        change(data)
        file.write_text(json.dumps(data))
    return root, data


def oblong(data) -> dict:
    """A training image that is not square."""
    return next(i for i in data["images"] if i["width"] != i["height"])


def test_a_camera_file_rotated_by_its_exif_tag_is_named(tmp_path, tiny_coco, backbones, capsys):
    """Stored on its side, shown upright by its EXIF Orientation tag, annotated as shown: the
    boxes would fall beside the objects (images are used as stored, as COCO's tools read
    them), so the stored size, checked against the annotation, stops the run."""
    from PIL import Image, ImageOps

    root, data = scenes(tiny_coco, tmp_path)
    info = oblong(data)
    path = root / "train2017" / info["file_name"]
    shown = Image.open(path).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    shown.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)
    assert ImageOps.exif_transpose(Image.open(path)).size == shown.size
    assert run("smoke_faster_rcnn_fpn", backbones["resnet18"], root, tmp_path,
               "data.dataset=coco") == 2
    err = capsys.readouterr().err
    annotations = root / "annotations" / "instances_train2017.json"
    assert (f"error: {path} is stored as {info['height']}x{info['width']} pixels (width x "
            f"height), but image {info['id']} in {annotations} is {info['width']}x"
            f"{info['height']}: the labels would not fall on the objects. The file has an EXIF "
            f"Orientation tag (6: rotated 90 degrees clockwise), which viewers apply and "
            f"kdcl-bench does not: images are used as stored, as COCO's images are and as "
            f"COCO's tools read them. Rotate the file's pixels upright and drop the tag (e.g. "
            f"`exiftran -ai FILE`, or PIL's ImageOps.exif_transpose, then save), or label the "
            f"image as stored.") in err and "Traceback" not in err


def test_an_image_of_another_size_than_its_annotation_is_named(tmp_path, tiny_coco, backbones,
                                                               capsys):
    from PIL import Image

    root, data = scenes(tiny_coco, tmp_path)
    info = oblong(data)
    path = root / "train2017" / info["file_name"]
    Image.open(path).convert("RGB").resize((info["width"] * 3, info["height"] * 2)).save(path)
    assert run("smoke_faster_rcnn_fpn", backbones["resnet18"], root, tmp_path,
               "data.dataset=coco") == 2
    assert (f"{path} is stored as {info['width'] * 3}x{info['height'] * 2} pixels (width x "
            f"height), but image {info['id']} in ") in capsys.readouterr().err


def test_images_above_the_pixel_limit_are_refused_before_training(tmp_path, tiny_coco,
                                                                   backbones, capsys):
    root, data = scenes(tiny_coco, tmp_path)
    large = [i for i in data["images"] if i["width"] * i["height"] > 6000]
    assert run("smoke_faster_rcnn_fpn", backbones["resnet18"], root, tmp_path,
               "data.dataset=coco", "data.max_image_pixels=6000") == 2
    err = capsys.readouterr().err
    first = large[0]
    assert (f"error: {root / 'annotations' / 'instances_train2017.json'}: {len(large)} images "
            f"have more than data.max_image_pixels=6,000 pixels: {first['file_name']} "
            f"({first['width']}x{first['height']}), ") in err
    assert "shrink these images (and their annotations), remove them, or raise " \
           "data.max_image_pixels." in err
    assert not (tmp_path / "runs").exists()


def test_an_empty_segmentation_is_refused_for_mask_rcnn(tmp_path, tiny_coco, backbones, capsys):
    """pycocotools fails on `segmentation: []` with an IndexError in a data worker, mid-run:
    it is found when the annotations are checked, like the other malformed ones."""
    def empty(data):
        data["annotations"][3]["segmentation"] = []

    root, data = scenes(tiny_coco, tmp_path, empty)
    ann = data["annotations"][3]
    assert run("smoke_mask_rcnn_fpn", backbones["resnet18"], root, tmp_path,
               "data.dataset=coco") == 2
    assert capsys.readouterr().err.endswith(
        f"error: {root / 'annotations' / 'instances_train2017.json'}: annotation {ann['id']} "
        f"(image {ann['image_id']}) has an empty segmentation ([]), which Mask R-CNN needs: "
        f"give it its polygons or RLE, remove the annotation, or train Faster R-CNN (boxes "
        f"only)\n")
    assert not (tmp_path / "runs").exists()
    assert run("smoke_faster_rcnn_fpn", backbones["resnet18"], root, tmp_path,
               "data.dataset=coco", "optim.epochs=1") == 0  # boxes only: fine


def test_an_image_file_that_cannot_be_read_is_named(tmp_path, tiny_coco, backbones, capsys):
    root, data = scenes(tiny_coco, tmp_path)
    info = data["images"][0]
    path = root / "train2017" / info["file_name"]
    path.write_bytes(b"not an image")
    assert run("smoke_faster_rcnn_fpn", backbones["resnet18"], root, tmp_path,
               "data.dataset=coco") == 2
    err = capsys.readouterr().err
    assert f"error: {path} cannot be read as an image (UnidentifiedImageError: cannot identify " \
           f"image file '{path}'): repair or replace it, or remove image {info['id']} in " \
           f"{root / 'annotations' / 'instances_train2017.json'}\n" in err, err


def test_the_pixel_limit_is_no_part_of_a_run_s_identity(tmp_path, tiny_coco, backbones, capsys):
    """It only refuses a run before it starts: another limit, or a run folder written before
    the key existed, is the same run."""
    backbone = backbones["resnet18"]
    assert run("smoke_faster_rcnn_fpn", backbone, tiny_coco, tmp_path) == 0
    assert run("smoke_faster_rcnn_fpn", backbone, tiny_coco, tmp_path,
               "data.max_image_pixels=1000000", flags=["--resume"]) == 0
    assert "is already finished" in capsys.readouterr().err


def test_sigterm_mid_epoch_checkpoints_the_step_and_resumes_to_the_same_weights(
        tmp_path, tiny_coco, backbones):
    """The torchvision engine stops on SIGTERM at the step it reached, with a checkpoint of it,
    and resumed from there ends with the weights of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    def command(out, *flags):
        return [sys.executable, "-m", "transfer", str(TV / "smoke_faster_rcnn_fpn.yaml"),
                "--backbone", str(backbones["resnet18"]),
                *tiny_transfer_overrides(tiny_coco, out, **{
                    "optim.epochs": 2, "optim.milestones": "[2]", "train.log_interval": 1}),
                *flags]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command(tmp_path / "straight"), check=True, cwd=REPO, env=env,
                   capture_output=True)
    proc = subprocess.Popen(command(tmp_path / "stopped"), cwd=REPO, env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    metrics = []
    deadline = time.time() + 120
    while not any('"step": 2,' in m.read_text() for m in metrics):
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        metrics = list((tmp_path / "stopped").rglob("metrics.jsonl"))
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM at epoch 1" in err, err
    (run_dir,) = [m.parent for m in metrics]
    assert torch.load(run_dir / "checkpoint.pth", weights_only=True)["partial"]["step"] < 6
    resumed = subprocess.run(command(tmp_path / "stopped", "--resume"), cwd=REPO, env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0 and "at epoch 1, step" in resumed.stderr, resumed.stderr
    (straight,) = (tmp_path / "straight").rglob("checkpoint.pth")
    a = torch.load(straight, weights_only=True)["model"]
    b = torch.load(run_dir / "checkpoint.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
