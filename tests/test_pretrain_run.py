"""End-to-end runs of `python -m pretrain` on a tiny generated set (seconds each)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torchvision

from pretrain import cli, engine

from .conftest import REPO, SMOKE, read_records, tiny_overrides


def run_cli(config_name, root, out, *extra, resume=False):
    argv = [str(SMOKE / f"{config_name}.yaml"), *tiny_overrides(root, out), *extra]
    return cli.main(argv + (["--resume"] if resume else []))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_root):
    """One finished KDCL-MinLogit run, shared by the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("minlogit")
    assert run_cli("kdcl_minlogit", tiny_root, out) == 0
    return out, out / "runs" / "smoke" / "kdcl_minlogit" / "seed0"


def test_exports_load_strictly_into_torchvision_constructors(finished):
    out, run_dir = finished
    r18 = torchvision.models.resnet18(num_classes=4)
    r18.load_state_dict(torch.load(run_dir / "export" / "resnet18.pth", weights_only=True))
    mbv2 = torchvision.models.mobilenet_v2(num_classes=4, width_mult=0.5)
    mbv2_weights = run_dir / "export" / "mobilenet_v2_x0.5.pth"
    mbv2.load_state_dict(torch.load(mbv2_weights, weights_only=True))
    meta = json.loads((run_dir / "export" / "mobilenet_v2_x0.5.json").read_text())
    assert meta["constructor"] == "torchvision.models.mobilenet_v2"
    assert meta["constructor_kwargs"] == {"num_classes": 4, "width_mult": 0.5}
    assert meta["preprocessing"]["color"] == "RGB" and meta["preprocessing"]["input_size"] == 24
    assert meta["method"] == "kdcl_minlogit" and meta["icl"] is True and meta["epochs"] == 2
    assert meta["git_commit"] is None or len(meta["git_commit"]) == 40
    assert len(meta["sha256"]) == 64


def test_run_directory_and_records(finished):
    out, run_dir = finished
    for name in ("config.yaml", "environment.json", "log.txt", "metrics.jsonl", "held_out.txt",
                 "checkpoint.pth", "export/manifest.json"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard").iterdir())
    assert len((run_dir / "held_out.txt").read_text().splitlines()) == 4 * 2
    records = read_records(out)
    assert [r["backbone"] for r in records] == ["resnet18", "mobilenet_v2_x0.5"]
    for r in records:
        assert r["stage"] == "pretrain" and r["task"] == "classification"
        assert r["method"] == "kdcl_minlogit" and r["preset"] == "smoke" and r["world_size"] == 1
        assert 0 <= r["metrics"]["top1"] <= 100 and len(r["backbone_sha256"]) == 64
    epochs = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()
              if json.loads(l)["kind"] == "epoch"]
    assert [e["step"] for e in epochs] == [1, 2]
    assert epochs[-1]["val/resnet18/top1"] == records[0]["metrics"]["top1"]
    assert len(epochs[-1]["general_weights"]) == 2


def test_finished_run_is_not_overwritten(finished, tiny_root, capsys):
    out, run_dir = finished
    assert run_cli("kdcl_minlogit", tiny_root, out) == 2
    assert "holds a finished run" in capsys.readouterr().err
    assert run_cli("kdcl_minlogit", tiny_root, out, resume=True) == 0  # a no-op
    assert len(read_records(out)) == 2
    assert run_cli("kdcl_minlogit", tiny_root, out, "optim.lr=0.5", resume=True) == 2
    assert "optim.lr: 0.02 -> 0.5" in capsys.readouterr().err


@pytest.mark.parametrize("method,extra", [
    ("independent", ["train.sync_bn=true"]),
    ("dml", []),
    ("mean", ["method.icl=false"]),
    ("kdcl_naive", ["data.decode=device"]),  # nvjpeg's code path, decoding on the CPU here
    ("kdcl_linear", ["train.channels_last=true"]),
    ("kdcl_general", []),
])
def test_every_method_trains_and_exports(tmp_path, tiny_root, capsys, method, extra):
    assert run_cli(method, tiny_root, tmp_path, "optim.epochs=1", *extra) == 0
    records = read_records(tmp_path)
    assert {r["method"] for r in records} == {method}
    err = capsys.readouterr().err
    if method == "independent":
        assert "sync_bn=true has no effect on the CPU" in err
        assert "kd 0.000" in err
    else:
        assert "kd 0.000 " not in err.split("epoch 1/1")[1]


def test_vanilla_kd_from_an_exported_teacher(finished, tmp_path, tiny_root):
    _, run_dir = finished
    teacher = run_dir / "export" / "resnet18.pth"
    before = teacher.read_bytes()
    assert run_cli("kd", tiny_root, tmp_path, "optim.epochs=1", f"method.teacher={teacher}") == 0
    (record,) = read_records(tmp_path)
    assert record["method"] == "kd" and record["teacher"] == str(teacher)
    assert record["backbone"] == "mobilenet_v2_x0.5"
    assert teacher.read_bytes() == before


def test_kd_teacher_errors(finished, tmp_path, tiny_root, capsys):
    _, run_dir = finished
    assert run_cli("kd", tiny_root, tmp_path, f"method.teacher={tmp_path / 'none.pth'}") == 2
    assert "backbone weights not found" in capsys.readouterr().err
    teacher = run_dir / "export" / "resnet18.pth"
    assert run_cli("kd", tiny_root, tmp_path, f"method.teacher={teacher}",
                   "data.synthetic.classes=3", f"data.root={tmp_path / 'three'}") == 2
    assert "predicts 4 classes but this dataset has 3" in capsys.readouterr().err


def test_cifar100_pickles_end_to_end(tmp_path):
    """The CIFAR recipe (pad-4 crop, CIFAR networks) on CIFAR-100 pickles written here."""
    from .test_data import write_cifar100

    write_cifar100(tmp_path / "cifar-100-python", n_train=400, n_test=50)  # 4 images per class
    argv = [str(SMOKE.parent / "cifar" / "kdcl_minlogit_icl.yaml"),
            f"data.root={tmp_path}", "data.held_out_per_class=1", "data.workers=0",
            "students.0.arch=cifar_resnet20", "optim.batch_size=100", "optim.epochs=1",
            f"output_root={tmp_path / 'runs'}", f"records={tmp_path / 'records'}"]
    assert cli.main(argv) == 0
    records = read_records(tmp_path)
    assert [r["backbone"] for r in records] == ["cifar_resnet20", "wrn_16_2"]
    assert records[0]["dataset"] == "cifar100" and records[0]["preset"] == "cifar"
    meta = json.loads((tmp_path / "runs/cifar/kdcl_minlogit_icl/seed0/export/wrn_16_2.json")
                      .read_text())
    assert meta["constructor"] == "kdcl_common.models.cifar.wrn_16_2"
    assert meta["preprocessing"]["eval_resize"] is None


def test_bad_input_messages(tmp_path, tiny_root, capsys):
    assert run_cli("independent", tiny_root, tmp_path, "data.dataset=imagefolder",
                   f"data.root={tmp_path / 'missing'}") == 2
    assert "does not exist: set data.root" in capsys.readouterr().err
    assert run_cli("independent", tiny_root, tmp_path, "students.0.arch=resnet19") == 2
    assert "known architectures: resnet18" in capsys.readouterr().err
    assert run_cli("independent", tiny_root, tmp_path, "optim.lrr=0.1") == 2
    assert "Did you mean 'optim.lr'" in capsys.readouterr().err


def test_nan_outputs_with_a_finite_loss_stop_the_run_before_a_record(tmp_path, tiny_root,
                                                                    capsys, monkeypatch):
    """A student whose BatchNorm statistics diverge scores NaN logits in evaluation while its
    training loss is finite: that is not a top-1 to record (nor KDCL-General weights, which
    have no minimum then); the run stops as on a NaN loss."""
    real = engine.Trainer.sync_buffers

    def poisoned(self):
        real(self)
        for module in self.modules[0].modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.fill_(float("nan"))
                break

    monkeypatch.setattr(engine.Trainer, "sync_buffers", poisoned)
    assert run_cli("kdcl_general", tiny_root, tmp_path) == 2
    err = capsys.readouterr().err
    assert "NaN/inf outputs on the val images (resnet18 on 16 of 16)" in err
    assert "--resume accepts new values of these keys" in err
    assert not (tmp_path / "records").exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_root, capsys,
                                                          monkeypatch):
    real = engine.collaborative_loss
    calls = {"n": 0}

    def poisoned(logits, *args):
        terms = real(logits, *args)
        calls["n"] += 1
        if calls["n"] > 5:  # epoch 2 (5 steps per epoch): student 1's loss becomes NaN
            nan = torch.tensor([0.0, float("nan")])
            return terms._replace(total=terms.total + nan.sum(), ce=terms.ce + nan)
        return terms

    monkeypatch.setattr(engine, "collaborative_loss", poisoned)
    assert run_cli("kdcl_minlogit", tiny_root, tmp_path, "train.log_interval=1") == 2
    err = capsys.readouterr().err
    assert "student mobilenet_v2_x0.5 became NaN/inf at epoch 2, step 1 of 5" in err
    assert "last good checkpoint" in err
    checkpoint = tmp_path / "runs/smoke/kdcl_minlogit/seed0/checkpoint.pth"
    state = torch.load(checkpoint, weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for sd in state["students"] for v in sd.values()
               if v.is_floating_point())
    assert "--resume accepts new values of these keys" in err
    # after the stop, --resume accepts a lower learning rate (and records it), nothing else
    monkeypatch.setattr(engine, "collaborative_loss", real)
    assert run_cli("kdcl_minlogit", tiny_root, tmp_path, "train.log_interval=1", "optim.lr=0.01",
                   "optim.epochs=3", resume=True) == 2
    err = capsys.readouterr().err
    assert "refusing to resume" in err and "optim.epochs: 2 -> 3" in err
    assert "optim.lr:" not in err
    assert run_cli("kdcl_minlogit", tiny_root, tmp_path, "train.log_interval=1", "optim.lr=0.01",
                   resume=True) == 0
    assert "after epoch 1 with optim.lr: 0.02 -> 0.01" in capsys.readouterr().err
    records = read_records(tmp_path)
    assert len(records) == 2
    assert records[0]["config_changes"][0]["diff"] == ["  optim.lr: 0.02 -> 0.01"]
    # a finished run is not stopped any more: the recovery keys are fixed again
    assert run_cli("kdcl_minlogit", tiny_root, tmp_path, "train.log_interval=1", "optim.lr=0.02",
                   resume=True) == 2


def test_kill_and_resume_reaches_the_same_weights(tmp_path, tiny_root):
    """SIGKILL a deterministic CPU run after its first checkpoint, resume it, and compare
    every exported tensor with an uninterrupted run: they must be bit-identical."""
    def command(out, resume=False):
        return [sys.executable, "-m", "pretrain", str(SMOKE / "kdcl_linear.yaml"),
                *tiny_overrides(tiny_root, out, **{"optim.epochs": 4, "train.deterministic": True,
                                                   "data.workers": 1}),
                *(["--resume"] if resume else [])]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run(command(straight), check=True, cwd=REPO, env=env, capture_output=True)

    killed = tmp_path / "killed"
    run_dir = killed / "runs/smoke/kdcl_linear/seed0"
    proc = subprocess.Popen(command(killed), cwd=REPO, env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run_dir / "checkpoint.pth").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "export").exists(), "the run finished before it could be killed"
    assert torch.load(run_dir / "checkpoint.pth", weights_only=True)["epoch"] < 4

    resumed = subprocess.run(command(killed, resume=True), cwd=REPO, env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    for name in ("resnet18", "mobilenet_v2_x0.5"):
        reference = straight / f"runs/smoke/kdcl_linear/seed0/export/{name}.pth"
        a = torch.load(reference, weights_only=True)
        b = torch.load(run_dir / f"export/{name}.pth", weights_only=True)
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    for out, resumes in ((straight, 0), (killed, 1)):
        assert {r["resumes"] for r in read_records(out)} == {resumes}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_a_stop_signal_mid_epoch_checkpoints_the_step_and_resumes_to_the_same_weights(
        tmp_path, tiny_root, signum):
    """SIGTERM (a scheduler's time limit or preemption), SIGINT (Ctrl-C) or SIGUSR1 (SLURM's
    --signal) in the middle of an epoch: the run writes a checkpoint of the step it reached,
    says how to resume and exits with 128 + the signal; resumed, it ends bit-identical to an
    uninterrupted run."""
    def command(out, resume=False):
        return [sys.executable, "-m", "pretrain", str(SMOKE / "kdcl_minlogit.yaml"),
                *tiny_overrides(tiny_root, out, **{"optim.epochs": 2, "optim.batch_size": 4,
                                                   "train.log_interval": 1,
                                                   "train.deterministic": True,
                                                   "data.workers": 1}),
                *(["--resume"] if resume else [])]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run(command(straight), check=True, cwd=REPO, env=env, capture_output=True)
    stopped = tmp_path / "stopped"
    run_dir = stopped / "runs/smoke/kdcl_minlogit/seed0"
    proc = subprocess.Popen(command(stopped), cwd=REPO, env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 120
    while not (run_dir / "metrics.jsonl").is_file() or \
            '"step": 2,' not in (run_dir / "metrics.jsonl").read_text():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signum)
    err = proc.communicate(timeout=120)[1]
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, err
    assert f"stopped by {name} at epoch 1, step " in err and "--resume" in err, err
    assert "Traceback" not in err
    partial = torch.load(run_dir / "checkpoint.pth", weights_only=True)["partial"]
    assert 2 <= partial["step"] < 8  # mid-epoch: 8 steps an epoch
    resumed = subprocess.run(command(stopped, resume=True), cwd=REPO, env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"at epoch 1, step {partial['step']}" in resumed.stderr
    for student in ("resnet18", "mobilenet_v2_x0.5"):
        a = torch.load(straight / f"runs/smoke/kdcl_minlogit/seed0/export/{student}.pth",
                       weights_only=True)
        b = torch.load(run_dir / f"export/{student}.pth", weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), student
    # the epoch's metrics are whole too: the training loss of epoch 1 summed over both processes
    epochs = [[json.loads(line) for line in (out / "runs/smoke/kdcl_minlogit/seed0/"
                                             "metrics.jsonl").read_text().splitlines()
               if json.loads(line)["kind"] == "epoch"] for out in (straight, stopped)]
    assert epochs[0][0]["train/resnet18/ce"] == pytest.approx(epochs[1][0]["train/resnet18/ce"])
