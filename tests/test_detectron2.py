"""The Detectron2 backend. Protocol checks read the YAML files and run everywhere; loading with
Detectron2's config system, fidelity and training need Detectron2, which is not on PyPI, and are
skipped with that reason where it is not installed."""
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kdcl_common import KdclError, models
from transfer import cli, convert
from transfer.backends.detectron2 import weights as d2_weights

from .conftest import REPO, TINY_COCO, make_backbone, read_records

D2_CONFIGS = REPO / "transfer" / "configs" / "detectron2"
EXPERIMENTS = sorted(p for p in D2_CONFIGS.glob("*.yaml") if not p.name.startswith("_"))
HAS_D2 = importlib.util.find_spec("detectron2") is not None
needs_d2 = pytest.mark.skipif(not HAS_D2, reason="Detectron2 is not installed (it is not on "
                              "PyPI; install it with: bash scripts/setup.sh --detectron2)")
TRAIN2017_WITH_ANNOTATIONS = 117_266


def chain(path: Path) -> dict:
    """The config with its local bases merged (the model-zoo base left out), via PyYAML."""
    data = yaml.safe_load(path.read_text())
    base = data.pop("_BASE_", None)
    merged: dict = {}
    if base and (path.parent / base).is_file():
        merged = chain(path.parent / base)

    def merge(a, b):
        for k, v in b.items():
            a[k] = (merge(a.get(k, {}), v) if isinstance(v, dict) and isinstance(a.get(k), dict)
                    else v)
        return a
    return merge(merged, data)


def test_every_experiment_names_its_protocol_and_backbone():
    assert len(EXPERIMENTS) == 17  # 16 protocol configs and the acceptance check's
    for path in EXPERIMENTS:
        cfg = chain(path)
        assert cfg["KDCL"]["PROTOCOL"] in path.stem, path.name
        assert path.stem.startswith(("faster_rcnn_", "mask_rcnn_"))
        assert cfg["MODEL"].get("MASK_ON", False) == path.stem.startswith("mask_rcnn_")
        assert cfg["INPUT"]["FORMAT"] == "RGB" and cfg["MODEL"]["RESNETS"]["STRIDE_IN_1X1"] is False
        assert cfg["MODEL"]["WEIGHTS"] == ""  # nothing is downloaded
        if "_R18_" in path.name:
            assert cfg["MODEL"]["RESNETS"]["DEPTH"] == 18
            assert cfg["MODEL"]["RESNETS"]["RES2_OUT_CHANNELS"] == 64
        if "_MBV2_" in path.name:
            assert cfg["MODEL"]["BACKBONE"]["NAME"] == "build_mobilenet_v2_fpn_backbone"


def test_paper_protocol_is_the_papers():
    cfg = chain(D2_CONFIGS / "_paper14ep_syncbn.yaml")
    solver = cfg["SOLVER"]
    assert solver["IMS_PER_BATCH"] == 32 and solver["BASE_LR"] == 0.04
    assert solver["WEIGHT_DECAY"] == 1e-4 and solver["MOMENTUM"] == 0.9
    per_epoch = TRAIN2017_WITH_ANNOTATIONS / 32
    assert solver["MAX_ITER"] == math.ceil(14 * per_epoch)
    assert solver["STEPS"] == f"({round(9 * per_epoch)}, {round(12 * per_epoch)})"
    assert cfg["MODEL"]["BACKBONE"]["FREEZE_AT"] == 0  # nothing frozen
    for key in ("RESNETS", "MOBILENET_V2", "FPN", "ROI_BOX_HEAD", "ROI_MASK_HEAD"):
        assert cfg["MODEL"][key]["NORM"] == "SyncBN", key
    frozen = chain(D2_CONFIGS / "_1x_frozenbn.yaml")
    assert frozen["MODEL"]["BACKBONE"]["FREEZE_AT"] == 2
    assert (frozen["MODEL"]["RESNETS"]["NORM"] == frozen["MODEL"]["MOBILENET_V2"]["NORM"]
            == "FrozenBN")


def test_cli_routes_detectron2_yaml_to_detectron2():
    from transfer import backends

    assert backends.of_config(EXPERIMENTS[0]).name == "detectron2"
    assert backends.of_config(
        REPO / "transfer/configs/torchvision/smoke_faster_rcnn_fpn.yaml").name == "torchvision"


def test_missing_detectron2_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "detectron2", None)  # import detectron2 -> ImportError
    backbone = make_backbone(tmp_path, "resnet18")
    assert cli.main([str(D2_CONFIGS / "faster_rcnn_R18_FPN_smoke.yaml"),
                     "--backbone", str(backbone)]) == 2
    err = capsys.readouterr().err
    assert "Detectron2 is not installed" in err and "scripts/setup.sh --detectron2" in err
    assert "git+https://github.com/facebookresearch/detectron2.git" in err


def test_setup_refuses_a_detectron2_source_that_is_not_there(tmp_path):
    """scripts/setup.sh --detectron2=SRC (CI: the archive in ../shared/deps) checks SRC before it
    creates or installs anything."""
    venv = tmp_path / "venv"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh"),
                           f"--detectron2={tmp_path / 'detectron2.tar.gz'}"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "KDCL_VENV": str(venv)})
    assert proc.returncode == 2 and not venv.exists()
    assert proc.stderr == (f"setup.sh: --detectron2={tmp_path / 'detectron2.tar.gz'}: no such file "
                           "or folder (give a Detectron2 source archive or checkout, or "
                           "--detectron2 alone for its git repository)\n")


# ------------------------------------------------------------------- with Detectron2 installed
@needs_d2
@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_configs_load_with_detectron2(path):
    from transfer.backends.detectron2 import config as d2config

    cfg = d2config.load(path)
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[32], [64], [128], [256], [512]]  # from the zoo
    assert cfg.KDCL.PROTOCOL in path.stem


@needs_d2
def test_unknown_detectron2_key_is_an_error():
    from kdcl_common import ConfigError
    from transfer.backends.detectron2 import config as d2config

    with pytest.raises(ConfigError, match="SOLVER.BASE_LRR"):
        d2config.load(EXPERIMENTS[0], ["SOLVER.BASE_LRR=0.1"])


@needs_d2
@pytest.mark.parametrize("config,arch,kwargs", [
    ("faster_rcnn_R18_FPN_1x_frozenbn", "resnet18", {}),
    ("faster_rcnn_R50_FPN_1x_frozenbn", "resnet50", {}),
    ("faster_rcnn_MBV2_FPN_smoke", "mobilenet_v2", {"width_mult": 0.5}),
])
def test_detectron2_backbone_gives_the_same_feature_maps(tmp_path, config, arch, kwargs):
    """The converted weights through Detectron2's own loading (pickle, name matching) and its own
    input normalisation (0-255 RGB), against torchvision's network on 0-1 normalised input."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from transfer.backends.detectron2 import launcher
    from transfer.backends.detectron2 import config as d2config

    torch.manual_seed(0)
    path = make_backbone(tmp_path, arch, **kwargs)
    source, meta = __import__("kdcl_common.artifact", fromlist=["load"]).load(path)
    with torch.no_grad():
        source.train()(torch.randn(4, 3, 64, 64))  # non-trivial BatchNorm statistics
    source.eval()
    cfg = d2config.load(D2_CONFIGS / f"{config}.yaml", ["MODEL.DEVICE=cpu"])
    launcher.fit_backbone(cfg, meta, path)
    cfg.OUTPUT_DIR = str(tmp_path)
    model = build_model(cfg).eval()
    target = model.backbone.bottom_up.state_dict()
    converted = convert.convert(source.state_dict(), arch, "detectron2", target.keys())
    weights = d2_weights.save(converted, tmp_path / "backbone.pkl", "test")
    DetectionCheckpointer(model).load(str(weights))
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)  # a multiple of 32: no padding
    with torch.no_grad():
        d2_input = model.preprocess_image([{"image": image}]).tensor
        d2_maps = model.backbone.bottom_up(d2_input)
        mean = torch.tensor(meta["preprocessing"]["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(meta["preprocessing"]["std"]).view(1, 3, 1, 1)
        tv_maps = convert.torchvision_features(source, arch,
                                               (image[None].float() / 255 - mean) / std)
    error = convert.max_relative_error(tv_maps,
                                       [d2_maps[k] for k in ("res2", "res3", "res4", "res5")])
    assert error < 1e-4


def tiny_d2(backbone, root, out, iters: int = 3, *extra) -> list[str]:
    """A Mask R-CNN smoke run of `iters` iterations on the tiny scenes."""
    return [str(D2_CONFIGS / "mask_rcnn_R18_FPN_smoke.yaml"), "--backbone", str(backbone),
            f"KDCL.DATA_ROOT={root}", "KDCL.SYNTHETIC=False", f"SOLVER.MAX_ITER={iters}",
            "SOLVER.STEPS=(2,)", "SOLVER.WARMUP_ITERS=1", "SOLVER.IMS_PER_BATCH=2",
            "INPUT.MIN_SIZE_TRAIN=(64,)", "INPUT.MIN_SIZE_TEST=64", "DATALOADER.NUM_WORKERS=0",
            f"KDCL.OUTPUT_ROOT={out / 'runs'}", f"KDCL.RECORDS={out / 'records'}", *extra]


@needs_d2
def test_detectron2_trains_a_few_iterations_and_writes_a_record(tmp_path, tiny_coco, capsys):
    backbone = make_backbone(tmp_path, "resnet18")
    argv = tiny_d2(backbone, tiny_coco, tmp_path)
    assert cli.main(argv) == 0
    # the console: the project's lines only; Detectron2's log (environment, config, metrics,
    # pycocotools' tables) in log.txt
    out, err = capsys.readouterr()
    assert out == "" and all(" transfer] " in line for line in err.splitlines()), err
    for expected in ("writing to ", "iter 3/3 | loss ", "evaluating on 6 images",
                     "result: bbox_AP"):
        assert expected in err
    (record,) = read_records(tmp_path)
    assert record["backend"] == "detectron2" and record["task"] == "instance_segmentation"
    assert set(record["metrics"]) >= {"bbox_AP", "segm_AP", "segm_AP50"}
    run_dir = Path(record["run_dir"])
    assert (run_dir / "result.json").is_file() and (run_dir / "model_final.pth").is_file()
    assert not list(run_dir.glob(".*.partial.pth"))
    log = (run_dir / "log.txt").read_text()
    assert "Environment info:" in log and "Average Precision" in log and "result: bbox_AP" in log
    assert record["resumes"] == 0 and "resume_note" not in record
    # a second run of a finished config refuses; --resume is a no-op
    assert cli.main(argv) == 2
    assert cli.main(argv + ["--resume"]) == 0


@needs_d2
def test_detectron2_refuses_a_backbone_of_another_architecture(tmp_path, capsys):
    backbone = make_backbone(tmp_path, "resnet50")
    assert cli.main([str(D2_CONFIGS / "faster_rcnn_R18_FPN_smoke.yaml"), "--backbone",
                     str(backbone)]) == 2
    assert "is a resnet50 backbone, but the config builds a resnet18" in capsys.readouterr().err


@needs_d2
def test_detectron2_refuses_a_random_seed(tmp_path, capsys):
    """Detectron2 reads a negative SEED as "draw one": a run that cannot be repeated."""
    backbone = make_backbone(tmp_path, "resnet18")
    assert cli.main([str(D2_CONFIGS / "faster_rcnn_R18_FPN_smoke.yaml"), "--backbone",
                     str(backbone), "SEED=-1", "--print-config"]) == 2
    assert "SEED=-1 must be an integer >= 0" in capsys.readouterr().err


@needs_d2
def test_detectron2_names_splits_with_other_categories(tmp_path, tiny_coco, capsys):
    from .test_transfer_run import coco_with_other_val_categories

    root = coco_with_other_val_categories(tiny_coco, tmp_path)
    backbone = make_backbone(tmp_path, "resnet18")
    assert cli.main([str(D2_CONFIGS / "faster_rcnn_R18_FPN_smoke.yaml"), "--backbone",
                     str(backbone), f"KDCL.DATA_ROOT={root}", "KDCL.SYNTHETIC=False",
                     f"KDCL.OUTPUT_ROOT={tmp_path / 'runs'}"]) == 2
    assert "the categories of train2017 and val2017 differ" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@needs_d2
def test_syncbn_falls_back_to_bn_in_one_process(caplog):
    import logging

    from transfer.backends.detectron2 import launcher
    from transfer.backends.detectron2 import config as d2config

    cfg = d2config.load(D2_CONFIGS / "mask_rcnn_R18_FPN_paper14ep_syncbn.yaml")
    launcher.fall_back_from_syncbn(cfg, 1, logging.getLogger("test"))
    assert "SyncBN has no effect in a single process" in caplog.text
    assert cfg.MODEL.RESNETS.NORM == cfg.MODEL.FPN.NORM == cfg.MODEL.ROI_MASK_HEAD.NORM == "BN"


def test_tiny_coco_fixture_matches(tiny_coco):
    assert TINY_COCO["train_images"] == len(list((tiny_coco / "train2017").iterdir()))
    assert models.label("resnet18") == "resnet18"
    assert KdclError


@needs_d2
def test_detectron2_records_a_resume_and_what_may_differ(tmp_path, tiny_coco, monkeypatch):
    """Detectron2 resumes the weights, optimizer and iteration but starts its data order and
    random streams again: the record says the run was resumed and what may differ, and its
    wall time adds the first process's (saved in the checkpoint it resumed from)."""
    from detectron2.engine import DefaultTrainer

    backbone = make_backbone(tmp_path, "resnet18")
    argv = tiny_d2(backbone, tiny_coco, tmp_path, 4, "SOLVER.CHECKPOINT_PERIOD=2")
    real = DefaultTrainer.run_step

    def interrupted(self):  # Ctrl-C after the checkpoint of iteration 2
        if self.iter == 2:
            raise KeyboardInterrupt
        real(self)

    with monkeypatch.context() as patch:
        patch.setattr(DefaultTrainer, "run_step", interrupted)
        assert cli.main(argv) == 130  # a Ctrl-C: one line, the exit code of SIGINT
    (checkpoint,) = tmp_path.rglob("model_0000001.pth")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["trainer"]["hooks"]
    (first,) = [state["wall_seconds"] for name, state in saved.items() if "TrainingTime" in name]
    assert cli.main(argv + ["--resume"]) == 0
    (record,) = read_records(tmp_path)
    assert record["resumes"] == 1
    assert "start again from SEED" in record["resume_note"]
    assert record["wall_seconds"] > round(first, 1) > 0


def d2_run(root, tmp_path, config="faster_rcnn_R18_FPN_smoke.yaml", *extra):
    backbone = make_backbone(tmp_path, "resnet18")
    return cli.main([str(D2_CONFIGS / config), "--backbone", str(backbone),
                     f"KDCL.DATA_ROOT={root}", "KDCL.SYNTHETIC=False", "SOLVER.MAX_ITER=2",
                     "SOLVER.STEPS=(1,)", "SOLVER.WARMUP_ITERS=1", "SOLVER.IMS_PER_BATCH=2",
                     "INPUT.MIN_SIZE_TRAIN=(64,)", "INPUT.MIN_SIZE_TEST=64",
                     "DATALOADER.NUM_WORKERS=0", f"KDCL.OUTPUT_ROOT={tmp_path / 'runs'}",
                     f"KDCL.RECORDS={tmp_path / 'records'}", *extra])


@needs_d2
def test_detectron2_names_a_camera_file_by_its_exif_tag(tmp_path, tiny_coco, capsys):
    """Detectron2 itself would turn the file by its tag; images are used as stored on every
    backend, and the stored size, against the annotation's, stops the run naming the tag."""
    from PIL import Image

    from .test_transfer_run import scenes

    root, data = scenes(tiny_coco, tmp_path)
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = [i for i in data["images"] if i["width"] != i["height"]]
    for info in turned:  # all of them: the first batch meets one, whatever the sampler draws
        path = root / "train2017" / info["file_name"]
        Image.open(path).convert("RGB").transpose(Image.Transpose.ROTATE_90).save(path,
                                                                                  exif=exif)
    assert d2_run(root, tmp_path) == 2
    err = capsys.readouterr().err
    assert any(f"error: {root / 'train2017' / i['file_name']} is stored as {i['height']}x"
               f"{i['width']} pixels (width x height), but image {i['id']} in its annotations "
               f"is {i['width']}x{i['height']}: the labels would not fall on the objects. The "
               f"file has an EXIF Orientation tag (6: rotated 90 degrees clockwise)" in err
               for i in turned) and "Traceback" not in err, err


@needs_d2
def test_detectron2_reads_a_tagged_image_as_stored(tmp_path, tiny_coco):
    """A square image keeps its size when turned: Detectron2's reader would turn it by its tag
    and train it against boxes of the stored image. The project's mapper leaves it as stored."""
    import numpy as np
    from PIL import Image

    from transfer.backends.detectron2 import config as d2config
    from transfer.backends.detectron2 import launcher

    path = tmp_path / "square.png"
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif)
    cfg = d2config.load(D2_CONFIGS / "faster_rcnn_R18_FPN_smoke.yaml",
                        ["INPUT.MIN_SIZE_TEST=64", "INPUT.MAX_SIZE_TEST=64"])
    launcher.read_as_stored()
    mapper = launcher._mapper_class()(cfg, is_train=False)
    sample = mapper({"file_name": str(path), "image_id": 1, "width": 64, "height": 64})
    assert np.array_equal(sample["image"].permute(1, 2, 0).numpy(), pixels)  # RGB, as stored


@needs_d2
def test_detectron2_refuses_images_above_the_pixel_limit(tmp_path, tiny_coco, capsys):
    assert d2_run(tiny_coco, tmp_path, "faster_rcnn_R18_FPN_smoke.yaml",
                  "KDCL.MAX_IMAGE_PIXELS=6000") == 2
    err = capsys.readouterr().err
    assert f"{tiny_coco / 'annotations' / 'instances_train2017.json'}: " in err
    assert "images have more than KDCL.MAX_IMAGE_PIXELS=6,000 pixels: " in err
    assert not (tmp_path / "runs").exists()


@needs_d2
def test_detectron2_refuses_an_empty_segmentation_for_mask_rcnn(tmp_path, tiny_coco, capsys):
    """Detectron2 would drop the object and train on; the torchvision backend refuses it: one
    rule for both."""
    from .test_transfer_run import scenes

    def empty(data):
        data["annotations"][3]["segmentation"] = []

    root, data = scenes(tiny_coco, tmp_path, empty)
    ann = data["annotations"][3]
    assert d2_run(root, tmp_path, "mask_rcnn_R18_FPN_smoke.yaml") == 2
    assert f"annotation {ann['id']} (image {ann['image_id']}) has an empty segmentation ([]), " \
           f"which Mask R-CNN needs" in capsys.readouterr().err
