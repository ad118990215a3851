"""What a command may do with a run folder (kdcl_common/runs.py), through `python -m pretrain`:
a refused or failed command writes nothing, a run's identity includes the KD teacher's weights,
--restart archives, a full disk is reported with what is intact, stale temporaries go, and
files honour the umask."""
import errno
import json
import os
import stat
from pathlib import Path

import pytest
import torch

from kdcl_common import KdclError, user_message
from kdcl_common import io as kio
from pretrain import cli

from .conftest import SMOKE, make_backbone, read_records, tiny_overrides


def run_cli(config, root, out, *extra, flag=None):
    return cli.main([str(SMOKE / f"{config}.yaml"), *tiny_overrides(root, out),
                     "optim.epochs=1", *extra, *([flag] if flag else [])])


def snapshot(folder: Path) -> dict:
    """Every file below `folder` with its bytes and mode."""
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mode)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_root):
    out = tmp_path_factory.mktemp("independent")
    assert run_cli("independent", tiny_root, out) == 0
    return out, out / "runs/smoke/independent/seed0"


def test_a_refused_resume_leaves_the_run_folder_byte_identical(finished, tiny_root, capsys):
    out, run_dir = finished
    before = snapshot(run_dir)
    assert run_cli("independent", tiny_root, out, "optim.lr=0.5", flag="--resume") == 2
    err = capsys.readouterr().err
    assert "refusing to resume" in err and "optim.lr: 0.02 -> 0.5" in err
    assert f"saved in {run_dir / 'config.yaml'}" in err
    assert run_cli("independent", tiny_root, out) == 2  # finished, and no flag
    assert "holds a finished run: pass --resume" in capsys.readouterr().err
    assert snapshot(run_dir) == before
    assert "lr: 0.02" in (run_dir / "config.yaml").read_text()  # the original config


def test_a_run_that_fails_its_checks_leaves_no_folder(tmp_path, tiny_root, capsys):
    assert run_cli("independent", tiny_root, tmp_path, "data.dataset=imagefolder",
                   f"data.root={tmp_path / 'missing'}") == 2
    assert "does not exist: set data.root" in capsys.readouterr().err
    assert run_cli("kd", tiny_root, tmp_path, f"method.teacher={tmp_path / 'none.pth'}") == 2
    assert "backbone weights not found" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_kd_run_is_identified_by_its_teachers_weights(tmp_path, tiny_root, capsys):
    teacher = make_backbone(tmp_path / "teacher", "resnet18", num_classes=4)
    before_meta = json.loads(teacher.with_suffix(".json").read_text())
    assert run_cli("kd", tiny_root, tmp_path, f"method.teacher={teacher}") == 0
    run_dir = tmp_path / "runs/smoke/kd/seed0"
    saved = json.loads((run_dir / "run.json").read_text())
    assert saved["inputs"]["teacher"]["sha256"] == before_meta["sha256"]
    record = read_records(tmp_path)[0]
    assert record["teacher_sha256"] == before_meta["sha256"]
    # the independent run behind the teacher is run again: other weights at the same path
    make_backbone(tmp_path / "teacher", "resnet18", seed=1, num_classes=4)
    before = snapshot(run_dir)
    assert run_cli("kd", tiny_root, tmp_path, f"method.teacher={teacher}", flag="--resume") == 2
    err = capsys.readouterr().err
    assert "refusing to resume" in err and "made from other weights" in err
    assert f"teacher {teacher}: sha256 {before_meta['sha256'][:12]} -> " in err
    assert "--restart archives it" in err
    # other weights and another config: both are named
    assert run_cli("kd", tiny_root, tmp_path, f"method.teacher={teacher}", "optim.lr=0.5",
                   flag="--resume") == 2
    err = capsys.readouterr().err
    assert "made from other weights" in err and "and its config differs too" in err
    assert "optim.lr: 0.02 -> 0.5" in err
    assert snapshot(run_dir) == before
    # --restart archives the old run (nothing deleted) and runs again from the new teacher
    assert run_cli("kd", tiny_root, tmp_path, f"method.teacher={teacher}", flag="--restart") == 0
    (archived,) = run_dir.parent.glob("seed0.superseded-*")
    assert snapshot(archived) == before
    new = json.loads((run_dir / "run.json").read_text())["inputs"]["teacher"]["sha256"]
    assert new != before_meta["sha256"]


def test_stale_temporaries_of_the_run_are_removed_on_resume(tmp_path, tiny_root):
    out_of_run = tmp_path / ".someone-else.pth.abcd1234.tmp"
    out_of_run.write_bytes(b"x")
    run_dir = tmp_path / "runs/smoke/independent/seed0"
    assert run_cli("independent", tiny_root, tmp_path, "optim.epochs=2") == 0
    (run_dir / "export/manifest.json").unlink()  # as if killed while exporting
    leftovers = [run_dir / ".checkpoint.pth.k2j4h5g6.tmp",
                 run_dir / "export" / ".resnet18.pth.a1b2c3d4.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"half a file")
    assert run_cli("independent", tiny_root, tmp_path, "optim.epochs=2", flag="--resume") == 0
    assert not any(p.exists() for p in leftovers)
    assert out_of_run.exists()  # outside the run folder: not ours to remove


def test_files_honour_the_umask(tmp_path, tiny_root):
    old = os.umask(0o022)
    try:
        assert run_cli("independent", tiny_root, tmp_path) == 0
    finally:
        os.umask(old)
    run_dir = tmp_path / "runs/smoke/independent/seed0"
    for name in ("checkpoint.pth", "run.json", "config.yaml", "export/resnet18.pth",
                 "export/resnet18.json", "export/manifest.json"):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o644, name
    (record_file,) = (tmp_path / "records").rglob("*.json")
    assert stat.S_IMODE(record_file.stat().st_mode) == 0o644


def test_a_full_disk_at_a_checkpoint_names_the_file_and_keeps_the_last(tmp_path, tiny_root,
                                                                      capsys, monkeypatch):
    real_fsync, calls = os.fsync, {"n": 0}

    def fsync(fd):  # the second checkpoint's write finds the disk full
        if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(".checkpoint.pth."):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(kio.os, "fsync", fsync)
    assert run_cli("independent", tiny_root, tmp_path, "optim.epochs=2") == 2
    err = capsys.readouterr().err
    run_dir = tmp_path / "runs/smoke/independent/seed0"
    assert (f"no space left on the device to write {run_dir / 'checkpoint.pth'}: it was not "
            f"written, and no existing file was changed. The previous checkpoint (after epoch "
            f"1) is intact") in err
    assert "Traceback" not in err
    assert torch.load(run_dir / "checkpoint.pth", weights_only=True)["epoch"] == 1
    assert not list(run_dir.glob(".*.tmp"))
    monkeypatch.setattr(kio.os, "fsync", real_fsync)
    assert run_cli("independent", tiny_root, tmp_path, "optim.epochs=2", flag="--resume") == 0


def test_a_worker_traceback_is_reduced_to_its_message():
    from kdcl_common import DataError

    error = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback "
                      "(most recent call last):\n  File \"x.py\", line 1, in f\n    raise\n"
                      "kdcl_common.DataError: labels/a.png holds label values [9]\nsecond line")
    assert user_message(error) == "labels/a.png holds label values [9]\nsecond line"
    assert user_message(KdclError("plain")) == "plain"
