"""Learning-rate schedules and atomic writes."""
import os

import pytest

from kdcl_common.io import atomic_write_text
from kdcl_common.schedule import OptimConfig, learning_rate


def test_paper_schedule_warm_up_then_multistep():
    cfg = OptimConfig(lr=0.8, warmup_epochs=5, warmup_start_lr=0.1, epochs=200,
                      milestones=[60, 120, 180], gamma=0.1)
    steps = 100  # per epoch
    assert learning_rate(cfg, 0, steps) == pytest.approx(0.1)
    assert learning_rate(cfg, 250, steps) == pytest.approx(0.1 + 0.7 * 2.5 / 5)  # epoch 2.5
    assert learning_rate(cfg, 500, steps) == pytest.approx(0.8)
    assert learning_rate(cfg, 5999, steps) == pytest.approx(0.8)
    assert learning_rate(cfg, 6000, steps) == pytest.approx(0.08)
    assert learning_rate(cfg, 12000, steps) == pytest.approx(0.008)
    assert learning_rate(cfg, 19999, steps) == pytest.approx(0.0008)


def test_cosine_schedule():
    cfg = OptimConfig(lr=0.1, schedule="cosine", epochs=10, warmup_epochs=0, min_lr=0.001)
    assert learning_rate(cfg, 0, 10) == pytest.approx(0.1)
    assert learning_rate(cfg, 50, 10) == pytest.approx(0.001 + 0.099 * 0.5)
    assert learning_rate(cfg, 100, 10) == pytest.approx(0.001)


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "table.md"
    atomic_write_text(target, "old")

    def crash(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind
