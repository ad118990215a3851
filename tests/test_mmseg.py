"""The mmsegmentation backend: mmcv's compiled ops, conversion fidelity, configs, end-to-end
runs on the generated scenes, kill-and-resume, and the bad-input messages."""
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdcl_common import artifact
from transfer import cli, convert
from transfer.backends.mmseg import Backend, launcher
from transfer.openmmlab import config as mmconfig
from transfer.openmmlab import hooks

from .conftest import REPO, make_backbone, torchrun, tiny_mmengine_overrides, read_records

MMSEG = REPO / "transfer" / "configs" / "mmseg"
EXPERIMENTS = sorted(MMSEG.glob("*.py"))


def test_mmcv_compiled_ops_load_and_run():
    from mmcv.ops import RoIAlign, nms

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    features = torch.arange(16.0).view(1, 1, 4, 4)
    rois = torch.tensor([[0, 0, 0, 4, 4]], dtype=torch.float32)
    pooled = RoIAlign((2, 2), 1.0, 0)(features, rois)
    assert pooled.shape == (1, 1, 2, 2)


@pytest.mark.parametrize("config,arch,kwargs", [
    ("sem-fpn_r18_80k_syncbn_coco-stuff164k-512x512", "resnet18", {}),
    ("upernet_r50_80k_syncbn_coco-stuff164k-512x512", "resnet50", {}),
    ("sem-fpn_mbv2_80k_syncbn_coco-stuff164k-512x512", "mobilenet_v2", {}),
    ("upernet_mbv2_80k_syncbn_coco-stuff164k-512x512", "mobilenet_v2", {"width_mult": 0.5}),
])
def test_mmseg_backbone_gives_the_same_feature_maps(tmp_path, config, arch, kwargs):
    from mmseg.registry import MODELS

    torch.manual_seed(0)
    path = make_backbone(tmp_path, arch, **kwargs)
    source, meta = artifact.load(path)
    with torch.no_grad():
        source.train()(torch.randn(4, 3, 64, 64))  # non-trivial BatchNorm statistics
    source.eval()
    cfg = Backend.read(MMSEG / f"{config}.py", [])
    channels = launcher.fit_backbone(cfg, meta, path)
    target = MODELS.build(cfg.model.backbone)
    converted = convert.convert(source.state_dict(), arch, "mmseg", target.state_dict().keys())
    if arch == "mobilenet_v2":
        assert {k.split(".")[0] + "." + k.split(".")[1] for k in converted.skipped} == {
            "features.18", "classifier.1"}
    target.load_state_dict(converted.state, strict=True)
    target.eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ours = list(target(x))
        theirs = convert.torchvision_features(source, arch, x, mobilenet_ends=(3, 6, 13, 17))
    assert [m.shape[1] for m in ours] == channels
    assert convert.max_relative_error(theirs, ours) < 1e-5


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_configs_load_with_mmengine(path):
    cfg = Backend.read(path, [])
    assert cfg.kdcl.protocol in path.stem
    backbone = cfg.model.backbone
    assert backbone.type == ("MobileNetV2" if "_mbv2_" in path.name else "ResNet")
    if backbone.type == "ResNet":
        assert backbone.style == "pytorch" and not backbone.get("deep_stem", False)
        assert f"_r{backbone.depth}_" in path.name
    head = {"sem-fpn": "FPNHead", "upernet": "UPerHead"}[path.stem.split("_")[0]]
    assert cfg.model.decode_head.type == head
    assert cfg.model.pretrained is None and backbone.init_cfg is None  # weights come via --backbone


def test_unknown_override_names_the_nearest_key():
    from kdcl_common import ConfigError

    with pytest.raises(ConfigError, match="unknown config key 'train_cfg.max_iter'.*max_iters"):
        Backend.read(EXPERIMENTS[0], ["train_cfg.max_iter=3"])


@pytest.mark.parametrize("text,message", [
    (b"\x89PNG\r\n\x1a\n\x00", "{path} is not a text file (byte 0 is not UTF-8): a config "
                                "is a Python text file; was a checkpoint, image or archive "
                                "given in its place?"),
    (b"_base_ = [3]\n", "{path}, line 1: _base_ = [3] must name a config file or a list of "
                        "them, e.g. _base_ = ['./_base_/upernet_torchvision.py', "
                        "'./_base_/coco-stuff164k_80k.py']"),
    (f"x = {'[' * 2000}{']' * 2000}\n".encode(), "{path}, line 1, is not valid Python (too "
                                                  "many nested parentheses): an mmseg config is "
                                                  "a Python file like those in "
                                                  "transfer/configs/mmseg"),
], ids=["binary", "base", "deep"])
def test_a_config_file_that_is_no_config_is_refused(tmp_path, capsys, text, message):
    path = tmp_path / "bad.py"
    path.write_bytes(text)
    assert cli.main([str(path), "--backend", "mmseg", "--backbone",
                     str(make_backbone(tmp_path, "resnet18"))]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message.format(path=path)}\n"


def test_an_alias_in_an_override_is_refused(capsys):
    assert cli.main([str(MMSEG / "sem-fpn_r18_smoke.py"), "--backbone", "unused.pth",
                     "train_cfg.max_iters=[&n 8, *n]"]) == 2
    assert capsys.readouterr().err == (
        "error: override 'train_cfg.max_iters=[&n 8, *n]' holds a YAML anchor or alias "
        "(&name, *name), which an override may not use: write the value out in full (a string "
        "that starts with * or & must be quoted: key='\"*text\"')\n")


def run(config, backbone, root, out, *extra, flags=()):
    return cli.main([str(MMSEG / f"{config}.py"), "--backbone", str(backbone),
                     *tiny_mmengine_overrides(root, out), *extra, *flags])


@pytest.mark.parametrize("config,backbone", [("sem-fpn_r18_smoke", "resnet18"),
                                             ("upernet_mbv2_smoke", "mobilenet_v2_x0.5")])
def test_trains_evaluates_and_records_miou(tmp_path, tiny_coco, backbones, config, backbone,
                                          capsys):
    assert run(config, backbones[backbone], tiny_coco, tmp_path) == 0
    assert "SyncBN has no effect on the CPU: using BN" in capsys.readouterr().err
    (record,) = read_records(tmp_path)
    assert record["task"] == "semantic_segmentation" and record["backend"] == "mmseg"
    assert record["backbone"] == backbone and record["classes"] == 7
    assert set(record["metrics"]) == {"mIoU", "mAcc", "aAcc"}
    assert all(isinstance(v, float) and 0 <= v <= 100 for v in record["metrics"].values())
    run_dir = Path(record["run_dir"])
    assert (run_dir / "result.json").is_file() and (run_dir / "iter_4.pth").is_file()
    # a finished run: refused without --resume, a no-op with it; --eval-only scores it again
    assert run(config, backbones[backbone], tiny_coco, tmp_path) == 2
    assert run(config, backbones[backbone], tiny_coco, tmp_path, flags=["--resume"]) == 0
    assert run(config, backbones[backbone], tiny_coco, tmp_path, flags=["--eval-only"]) == 0
    again = json.loads((run_dir / "eval-val.json").read_text())["metrics"]
    assert again["mIoU"] == pytest.approx(record["metrics"]["mIoU"], abs=0.01)


def command(backbone, root, out, iters, checkpoint_interval, *flags) -> list[str]:
    """`python -m transfer` of the r18 Semantic FPN smoke config, shrunk to `iters` iterations."""
    return [sys.executable, "-m", "transfer", str(MMSEG / "sem-fpn_r18_smoke.py"), "--backbone",
            str(backbone), *tiny_mmengine_overrides(root, out, iters=iters, **{
                "default_hooks.checkpoint.interval": checkpoint_interval}), *flags]


def final_weights(out: Path, iters: int) -> dict:
    (checkpoint,) = out.rglob(f"iter_{iters}.pth")
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


def record_of(out: Path) -> dict:
    (record,) = read_records(out)
    return record


def test_kill_and_resume_ends_as_an_uninterrupted_run(tmp_path, tiny_coco, backbones):
    """SIGKILL a run after its first checkpoint and resume it: mmengine's own checkpoint loads
    with torch.load(weights_only=True), and the resumed run ends with the weights and mIoU of
    the uninterrupted one (mmengine restores no random state: the resumed iterations drew the
    dropout masks of the first ones). The record counts the resume and the time of both
    processes."""
    iters, killed, whole = 8, tmp_path / "killed", tmp_path / "whole"
    args = command(backbones["resnet18"], tiny_coco, killed, iters, 4)
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while not list(killed.rglob("iter_4.pth")):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (checkpoint,) = killed.rglob("iter_4.pth")
    run_dir = checkpoint.parent
    assert not (run_dir / "result.json").exists(), "finished before it was killed"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["meta"]["iter"] == 4
    assert cli.main(args[3:] + ["--resume"]) == 0
    assert cli.main(command(backbones["resnet18"], tiny_coco, whole, iters, 4)[3:]) == 0
    assert_same_weights(final_weights(killed, iters), final_weights(whole, iters))
    resumed, uninterrupted = record_of(killed), record_of(whole)
    assert resumed["metrics"] == uninterrupted["metrics"]
    assert "Auto resumed from the latest checkpoint" in (run_dir / "log.txt").read_text()
    assert (resumed["resumes"], uninterrupted["resumes"]) == (1, 0)
    first = state[hooks.ExactResume.KEY]["wall_seconds"]  # the killed process's, saved
    assert resumed["wall_seconds"] > round(first, 1) > 0


def interrupt_at_iteration(monkeypatch, n: int) -> None:
    """Ctrl-C (KeyboardInterrupt) in mmengine's train loop before iteration `n`."""
    from mmengine.runner import IterBasedTrainLoop

    real = IterBasedTrainLoop.run_iter

    def run_iter(self, data_batch):
        if self.iter + 1 == n:
            raise KeyboardInterrupt
        return real(self, data_batch)

    monkeypatch.setattr(IterBasedTrainLoop, "run_iter", run_iter)


def test_weights_left_by_a_stopped_run_are_never_trained_from(tmp_path, tiny_coco,
                                                              monkeypatch):
    """A run stopped before its first checkpoint leaves its converted weights in the folder.
    The next command there, with other weights at the same path, starts afresh (even with
    --resume, as there is nothing to resume): it must train the new weights, as a fresh run of
    them does, and not the converted file it finds."""
    backbone = make_backbone(tmp_path / "exports", "resnet18", weights_seed=1)
    with monkeypatch.context() as patch:
        interrupt_at_iteration(patch, 2)  # a Ctrl-C: one line, exit code 130
        assert cli.main(command(backbone, tiny_coco, tmp_path, 40, 1000)[3:]) == 130
    assert list(tmp_path.glob("runs/**/backbone.pth")) and not list(tmp_path.rglob("iter_*.pth"))
    assert make_backbone(tmp_path / "exports", "resnet18", weights_seed=2) == backbone
    assert cli.main(command(backbone, tiny_coco, tmp_path, 2, 1000, "--resume")[3:]) == 0
    assert cli.main(command(backbone, tiny_coco, tmp_path / "fresh", 2, 1000)[3:]) == 0
    assert_same_weights(final_weights(tmp_path / "runs", 2), final_weights(tmp_path / "fresh", 2))
    assert (record_of(tmp_path)["backbone_sha256"]
            == record_of(tmp_path / "fresh")["backbone_sha256"])


def test_the_console_holds_the_projects_lines_and_log_txt_the_frameworks(tmp_path, tiny_coco,
                                                                        backbones, capsys,
                                                                        monkeypatch):
    """An mmseg run prints the same kind of lines as every backend (start, progress, result,
    where the log is); mmengine's environment, config, hook table and per-class table go to
    log.txt, and --verbose shows them on the console again."""
    args = command(backbones["resnet18"], tiny_coco, tmp_path, 2, 2)
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert all(re.match(r"\[\d\d:\d\d:\d\d transfer\] ", l) for l in lines), done.stderr
    text = "\n".join(lines)
    run_dir = Path(record_of(tmp_path)["run_dir"])
    for expected in (f"writing to {run_dir}", "SyncBN has no effect on the CPU",
                     "iter 2/2 | loss ", "evaluating on 6 images", "result: mIoU ",
                     f"the full log is {run_dir / 'log.txt'}"):
        assert expected in text
    assert len(lines) <= 8
    log = (run_dir / "log.txt").read_text()
    for framework in ("System environment:", "Config:", "before_train_iter:",
                      "per class results:", "UserWarning"):
        assert framework in log
    assert lines[0] in log and "result: mIoU " in log
    monkeypatch.setenv("KDCL_VERBOSE", "")  # restored after the test: --verbose sets it
    assert cli.main(args[3:] + ["--eval-only", "--verbose"]) == 0
    loud = capsys.readouterr()
    assert "per class results:" in loud.out and "evaluated " in loud.err


def copy_scenes(tiny_coco, tmp_path) -> Path:
    root = tmp_path / "scenes"
    shutil.copytree(tiny_coco, root, symlinks=True)
    return root


def test_label_values_outside_the_classes(tmp_path, tiny_coco, backbones, capsys):
    root = copy_scenes(tiny_coco, tmp_path)
    victim = sorted((root / "annotations" / "train2017").glob("*.png"))[0]
    label = np.array(Image.open(victim))
    label[:4, :4] = 9
    Image.fromarray(label).save(victim)
    code = run("sem-fpn_r18_smoke", backbones["resnet18"], root, tmp_path,
               "train_dataloader.sampler.shuffle=False", "train_dataloader.num_workers=1")
    assert code == 2
    err = capsys.readouterr().err
    error = err[err.index("error: "):]  # a worker's error: its message only
    assert error.startswith(f"error: {victim} holds label values [9] outside the 7 classes")
    assert "Traceback" not in err and len(error.splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # found while loading, before any checkpoint


def test_images_and_labels_must_pair_up(tmp_path, tiny_coco, backbones, capsys):
    root = copy_scenes(tiny_coco, tmp_path)
    sorted((root / "annotations" / "val2017").glob("*.png"))[0].unlink()
    assert run("sem-fpn_r18_smoke", backbones["resnet18"], root, tmp_path) == 2
    assert "images and label maps do not pair up" in capsys.readouterr().err
    shutil.rmtree(root / "annotations" / "val2017")
    assert run("sem-fpn_r18_smoke", backbones["resnet18"], root, tmp_path) == 2
    assert "annotations/val2017 does not exist" in capsys.readouterr().err


def test_a_label_of_another_size_is_named(tmp_path, tiny_coco, backbones, capsys):
    """Found from the two headers, before either is decoded."""
    root = copy_scenes(tiny_coco, tmp_path)
    victim = sorted((root / "annotations" / "val2017").glob("*.png"))[0]
    image = root / "images" / "val2017" / victim.name.replace("_labelTrainIds.png", ".jpg")
    Image.fromarray(np.zeros((7, 9), dtype=np.uint8)).save(victim)
    assert run("sem-fpn_r18_smoke", backbones["resnet18"], root, tmp_path) == 2
    width, height = Image.open(image).size
    assert capsys.readouterr().err.endswith(
        f"error: {image} is stored as {width}x{height} pixels (width x height), but its label "
        f"map {victim} is 9x7: the labels would not fall on the objects. Are these the labels "
        f"of this image?\n")


def scene_pair(root, split="train2017"):
    """(image, label map) of a scene that is not square."""
    for label in sorted((root / "annotations" / split).glob("*.png")):
        image = root / "images" / split / label.name.replace("_labelTrainIds.png", ".jpg")
        width, height = Image.open(image).size
        if width != height:
            return image, label
    raise AssertionError("every scene is square")


def make_square(image: Path, label: Path) -> None:
    """Crop a scene's image and label map to the same square."""
    side = min(Image.open(image).size)
    for path in (image, label):
        Image.open(path).crop((0, 0, side, side)).save(path, quality=95)


def store_on_its_side(image: Path) -> None:
    """Store the image's pixels rotated a quarter turn, with the EXIF tag that shows them as
    before (a camera's file): its label map, made from the upright image, fits as shown."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    Image.open(image).transpose(Image.Transpose.ROTATE_90).save(image, exif=exif, quality=95)


def test_a_camera_file_rotated_by_its_exif_tag_is_named(tmp_path, tiny_coco, backbones, capsys):
    """cv2 would rotate the image by its tag and mmseg load its label map unrotated: images
    are used as stored (as on the other backends), and the mismatch names the tag."""
    root = copy_scenes(tiny_coco, tmp_path)
    image, label = scene_pair(root)
    width, height = Image.open(image).size
    store_on_its_side(image)
    assert run("sem-fpn_r18_smoke", backbones["resnet18"], root, tmp_path,
               "train_dataloader.sampler.shuffle=False") == 2
    err = capsys.readouterr().err
    assert (f"error: {image} is stored as {height}x{width} pixels (width x height), but its "
            f"label map {label} is {width}x{height}: the labels would not fall on the objects. "
            f"The file has an EXIF Orientation tag (6: rotated 90 degrees clockwise), which "
            f"viewers apply and kdcl-bench does not") in err and "Traceback" not in err


def test_an_exif_tag_does_not_rotate_a_square_image_away_from_its_label(tmp_path, tiny_coco):
    """A square image fits its label map either way: mmcv's default (cv2, 'color') would
    rotate the image by its tag, not its label map, and train on them misaligned."""
    import cv2
    from mmseg.registry import DATASETS


    root = copy_scenes(tiny_coco, tmp_path)
    image, label = scene_pair(root)
    make_square(image, label)
    store_on_its_side(image)
    cfg = Backend.read(MMSEG / "sem-fpn_r18_smoke.py",
                        [f"train_dataloader.dataset.data_root={root}"])
    dataset = cfg.train_dataloader.dataset
    dataset.pipeline = dataset.pipeline[:2]  # the image and the label map, as loaded
    loaded = DATASETS.build(dataset)
    (sample,) = [loaded[i] for i in range(len(loaded)) if loaded[i]["img_path"] == str(image)]
    stored = cv2.imread(str(image), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    assert np.array_equal(sample["img"], stored)
    assert not np.array_equal(stored, cv2.imread(str(image), cv2.IMREAD_COLOR))  # cv2 rotates


def test_an_image_above_the_pixel_limit_is_refused_unread(tmp_path, tiny_coco, backbones,
                                                          capsys):
    images = sorted((tiny_coco / "images" / "train2017").glob("*.jpg"))
    sizes = [Image.open(path).size for path in images]
    limit = min(w * h for w, h in sizes) - 1  # every image is above it: the first one stops
    assert run("sem-fpn_r18_smoke", backbones["resnet18"], tiny_coco, tmp_path,
               "train_dataloader.sampler.shuffle=False", f"kdcl.max_image_pixels={limit}") == 2
    (width, height) = sizes[0]
    assert capsys.readouterr().err.endswith(
        f"error: {images[0]}: {width}x{height} = {width * height:,} pixels, more than "
        f"kdcl.max_image_pixels={limit:,}; not decoded. Shrink or remove the image (with its "
        f"label map), or raise kdcl.max_image_pixels in the config\n")
    assert run("sem-fpn_r18_smoke", backbones["resnet18"], tiny_coco, tmp_path,
               "kdcl.max_image_pixels=0") == 2
    assert capsys.readouterr().err == ("error: kdcl.max_image_pixels=0 must be a number of "
                                       "pixels in [1, 178,956,970] (default 89,478,485; PIL "
                                       "refuses larger images itself)\n")


def test_a_backbone_that_does_not_fit(tmp_path, tiny_coco, capsys):
    r50 = make_backbone(tmp_path, "resnet50")
    assert run("sem-fpn_r18_smoke", r50, tiny_coco, tmp_path) == 2
    assert "is a resnet50 backbone, but the config builds a resnet18" in capsys.readouterr().err
    cifar = make_backbone(tmp_path, "cifar_resnet20")
    assert run("sem-fpn_r18_smoke", cifar, tiny_coco, tmp_path) == 2
    err = capsys.readouterr().err
    assert "is a cifar_resnet20 backbone, which cannot serve as a detection or segmentation " \
           "backbone: the mmseg backend takes resnet18" in err
    assert "config for cifar_resnet20" not in err
    assert not (tmp_path / "runs").exists()


def test_a_failed_check_leaves_no_folder_and_no_converted_weights(tmp_path, tiny_coco,
                                                                  backbones, capsys):
    root = copy_scenes(tiny_coco, tmp_path)
    (root / "images" / "val2017").unlink()  # a link to the COCO layout's val2017/
    assert run("sem-fpn_r18_smoke", backbones["resnet18"], root, tmp_path) == 2
    assert "images/val2017 does not exist" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_an_override_of_the_wrong_type_is_named(tmp_path, tiny_coco, backbones, capsys):
    assert run("sem-fpn_r18_smoke", backbones["resnet18"], tiny_coco, tmp_path,
               "train_cfg.max_iters=ten") == 2
    err = capsys.readouterr().err
    assert "train_cfg.max_iters='ten': expected an integer, like its current value 4" in err
    assert "Traceback" not in err
    assert run("sem-fpn_r18_smoke", backbones["resnet18"], tiny_coco, tmp_path,
               "randomness.seed=-1") == 2
    assert "randomness.seed=-1 must be an integer >= 0" in capsys.readouterr().err


def test_a_nan_loss_stops_the_run_without_a_record(tmp_path, tiny_coco, backbones, capsys):
    """mmengine trains on through NaN; the run would then record the mIoU of NaN weights."""
    assert run("sem-fpn_r18_smoke", backbones["resnet18"], tiny_coco, tmp_path,
               "optim_wrapper.optimizer.lr=1e30") == 2
    err = capsys.readouterr().err
    assert "the segmentation loss became NaN/inf at iteration" in err
    assert "run the same command with the new value and --restart" in err
    assert not (tmp_path / "records").exists()
    (run_dir,) = (tmp_path / "runs").rglob("seed0")
    assert not (run_dir / "result.json").exists()
    assert json.loads((run_dir / "run.json").read_text())["stopped"]["reason"] == "non-finite loss"
    assert not mmconfig.checkpoints(run_dir)  # none holds NaN weights


@pytest.mark.distributed
def test_two_ranks_with_torchrun(tmp_path, tiny_coco, backbones):
    torchrun(2, "transfer", MMSEG / "sem-fpn_r18_smoke.py", "--backbone", backbones["resnet18"],
             *tiny_mmengine_overrides(tiny_coco, tmp_path))
    (record,) = read_records(tmp_path)
    assert record["world_size"] == 2 and record["metrics"]["mIoU"] is not None
    assert not (REPO / ".dist_test").exists()  # mmengine's default place to gather results
