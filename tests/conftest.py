"""Shared fixtures: a tiny generated dataset and config overrides that make a full
pre-training run take seconds."""
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
        "train.log_interval": 2, "output_root": out / "runs", "records": out / "records.jsonl",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]
