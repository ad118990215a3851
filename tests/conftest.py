"""Shared fixtures: a tiny generated dataset and config overrides that make a full
pre-training run take seconds."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.data import synthetic

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "pretrain" / "configs" / "smoke"
TINY_DATA = {"classes": 4, "train_per_class": 12, "val_per_class": 4, "image_size": 32}


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "tiny"
    return synthetic.generate(root, **TINY_DATA)


def tiny_overrides(root: Path, out: Path, **extra) -> list[str]:
    """The smoke config shrunk to seconds: 4 classes, 40 training images, 24 px, 2 epochs."""
    values = {
        "data.root": root, "data.image_size": 24, "data.eval_resize": 28,
        "data.held_out_per_class": 2, "data.workers": 0,
        **{f"data.synthetic.{k}": v for k, v in TINY_DATA.items()},
        "optim.batch_size": 8, "optim.epochs": 2, "optim.warmup_epochs": 0,
        "train.log_interval": 2, "output_root": out / "runs", "records": out / "records",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


TINY_COCO = {"train_images": 12, "val_images": 6, "min_size": 64, "max_size": 96}


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory) -> Path:
    from transfer.coco import synthetic as coco_synthetic

    return coco_synthetic.generate(tmp_path_factory.mktemp("coco") / "coco", **TINY_COCO)


def make_backbone(folder: Path, arch: str, seed: int = 0, weights_seed: int | None = None,
                  **kwargs) -> Path:
    """A backbone artifact straight from a constructor (random weights from `weights_seed`,
    default `seed`; ImageNet contract), as pre-training `test/made` with `seed` exports it."""
    import torch

    from kdcl_common import artifact, models

    torch.manual_seed(seed if weights_seed is None else weights_seed)
    kwargs = {"num_classes": 10, **kwargs}
    model = models.build(arch, **kwargs)
    pre = artifact.preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224, 256)
    name = models.label(arch, kwargs)
    path = folder / f"{name}.pth"
    artifact.save(path, model, {"architecture": arch, "constructor_kwargs": kwargs,
                                "preprocessing": pre, "name": name, "method": "independent",
                                "config_name": "test/made", "seed": seed})
    return path


def read_records(out: Path, stage: str | None = None) -> list[dict]:
    """The records the runs of a test wrote under `out`/records (kdcl_common/records.py), in
    the order of their files."""
    from kdcl_common import records

    return [r for _, r in records.scan([out / "records"])
            if isinstance(r, dict) and (stage is None or r["stage"] == stage)]


def tiny_transfer_overrides(root: Path, out: Path, **extra) -> list[str]:
    """A torchvision smoke config shrunk to seconds: 12 scenes of 64-96 px, one epoch."""
    values = {
        "data.root": root, "data.workers": 0,
        **{f"data.synthetic.{k}": v for k, v in TINY_COCO.items()},
        "model.min_size": 64, "model.max_size": 96, "model.roi_batch_size_per_image": 32,
        "optim.batch_size": 2, "optim.epochs": 1, "optim.milestones": "[1]",
        "optim.warmup_epochs": 0.5, "train.log_interval": 2, "train.eval_batch_size": 3,
        "output_root": out / "runs", "records": out / "records",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    """The transfer tests' backbones: ResNet-18 and MobileNetV2 x0.5, random weights."""
    folder = tmp_path_factory.mktemp("backbones")
    return {"resnet18": make_backbone(folder, "resnet18"),
            "mobilenet_v2_x0.5": make_backbone(folder, "mobilenet_v2", width_mult=0.5)}


def tiny_mmengine_overrides(root: Path, out: Path, iters: int = 4, **extra) -> list[str]:
    """An mmseg or mmdet smoke config shrunk to seconds on the tiny scene set (the first
    scheduler, mmseg's poly decay or mmdet's warm-up, spans the run)."""
    values = {"kdcl.synthetic": False, "kdcl.output_root": out / "runs",
              "kdcl.records": out / "records", "train_cfg.max_iters": iters,
              "train_cfg.val_interval": iters, "param_scheduler.0.end": iters,
              "default_hooks.checkpoint.interval": 2, "train_dataloader.batch_size": 2}
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        values.update({f"{loader}.dataset.data_root": root, f"{loader}.num_workers": 0,
                       f"{loader}.persistent_workers": False})
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def torchrun(nproc: int, module: str, *args, timeout: float = 240) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node nproc -m module args` from the repository, one
    thread per process, asserted to succeed. Past `timeout` the whole process group is killed
    and the test fails with the tail of what it printed, so that a hang shows where it stopped
    (within the suite's own per-test timeout of 300 s)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", module, *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun -m {module} did not finish in {timeout} s; its last output:\n"
                    f"{(out + err)[-4000:]}")
    assert proc.returncode == 0, (out + err)[-3000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
