"""The chain on a real SLURM cluster (scripts/slurm_local.sh starts a one-node one; .ci/run does
it in CI): every step its own job in dependency order, a second submission submitting nothing,
a failed step holding back its dependents until a submission after the fix, a requeue mid-epoch
resuming to the weights of an uninterrupted run, one writer per run folder, and record files
that many processes write at once without losing any. Skipped, saying why, where no cluster
answers."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .conftest import REPO, TINY_COCO, TINY_DATA

pytestmark = pytest.mark.slurm


def cluster_up() -> str | None:
    if shutil.which("sinfo") is None:
        return "SLURM is not installed (bash scripts/slurm_local.sh start installs and starts it)"
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if out.returncode != 0 or not any(s.startswith(("idle", "mixed", "alloc"))
                                      for s in out.stdout.split()):
        return "no SLURM cluster answers (bash scripts/slurm_local.sh start)"
    return None


@pytest.fixture(scope="module")
def cluster():
    why = cluster_up()
    if why:
        pytest.skip(why)


def tiny(data: Path) -> list[str]:
    """--set options that make the smoke steps take seconds."""
    pretrain = {"data.root": data / "classification", "data.image_size": 24,
                "data.eval_resize": 28, "data.held_out_per_class": 2, "data.workers": 0,
                **{f"data.synthetic.{k}": v for k, v in TINY_DATA.items()},
                "optim.batch_size": 8, "optim.epochs": 1, "optim.warmup_epochs": 0,
                "train.log_interval": 2, "train.deterministic": True}
    transfer = {"data.root": data / "coco", "data.workers": 0,
                **{f"data.synthetic.{k}": v for k, v in TINY_COCO.items()},
                "model.min_size": 64, "model.max_size": 96, "model.roi_batch_size_per_image": 32,
                "optim.batch_size": 2, "optim.epochs": 1, "optim.milestones": "[1]",
                "optim.warmup_epochs": 0.5, "train.eval_batch_size": 3}
    return [*(f"--set=pretrain:{k}={v}" for k, v in pretrain.items()),
            *(f"--set=torchvision:{k}={v}" for k, v in transfer.items())]


RESOURCES = ["defaults.gpus_per_node=0", "defaults.cpus_per_task=1", "defaults.time=00:15:00",
             "results.cpus_per_task=1", "results.mem=null"]
REDUCED = ["--only", "pretrain smoke/independent seed0", "--only",
           "pretrain smoke/kdcl_minlogit seed0", "--only",
           "smoke_faster_rcnn_fpn <- smoke/kdcl_minlogit", "--only", "results"]


def chain(tmp: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m chain ...` as a user types it, with the outputs under `tmp`."""
    cmd = [sys.executable, "-m", "chain", "--backends", "torchvision", "--runs",
           str(tmp / "runs"), "--records", str(tmp / "records"), "--results",
           str(tmp / "results"), *tiny(tmp / "data"), *args]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def jobs(tmp: Path) -> dict[str, dict]:
    """step key -> its job file (runs/chain/jobs/<key>.json)."""
    root = tmp / "runs" / "chain" / "jobs"
    return {str(p.relative_to(root))[:-len(".json")]: json.loads(p.read_text())
            for p in root.rglob("*.json") if not p.name.endswith(".end.json")}


def ends(tmp: Path) -> dict[str, dict]:
    root = tmp / "runs" / "chain" / "jobs"
    return {str(p.relative_to(root))[:-len(".end.json")]: json.loads(p.read_text())
            for p in root.rglob("*.end.json")}


def wait_for(ids: list[str], timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T %r"],
                             capture_output=True, text=True)
        if not out.stdout.strip():
            return
        for line in out.stdout.splitlines():  # held after a requeue: release it now
            job, state, reason = line.split(maxsplit=2)
            if state == "PENDING" and reason.startswith("BeginTime"):
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"])
        time.sleep(2)
    pytest.fail(f"jobs {ids} still queued or running after {timeout} s:\n"
                + subprocess.run(["squeue"], capture_output=True, text=True).stdout)


def test_the_reduced_smoke_plan_runs_as_jobs_in_dependency_order(cluster, tmp_path):
    out = chain(tmp_path, "--slurm", *REDUCED, *RESOURCES)
    assert "submitted 4 job(s)" in out.stdout, out.stdout
    submitted = jobs(tmp_path)
    wait_for([j["job_id"] for j in submitted.values()])
    end = ends(tmp_path)
    assert {k: e["code"] for k, e in end.items()} == dict.fromkeys(submitted, 0), \
        {k: Path(j["log"]).read_text()[-2000:] for k, j in submitted.items()}
    pre, kdcl = "pretrain/smoke/independent/seed0", "pretrain/smoke/kdcl_minlogit/seed0"
    (transfer,) = [k for k in end if k.startswith("transfer/")]
    assert end[transfer]["started_at"] >= end[kdcl]["ended_at"]
    assert end["results"]["started_at"] >= max(end[k]["ended_at"] for k in (pre, kdcl, transfer))
    tables = tmp_path / "results" / "tables"
    assert (tables / "pretrain_smoke.md").is_file() and (tables / "transfer_smoke.md").is_file()
    assert "minlogit" in (tables / "transfer_smoke.csv").read_text().lower()

    # a second submission submits nothing
    again = chain(tmp_path, "--slurm", *REDUCED, *RESOURCES)
    assert "nothing to submit" in again.stdout and jobs(tmp_path) == submitted
    status = chain(tmp_path, "--status", *REDUCED, check=False)
    assert status.returncode == 0 and "4 done" in status.stdout, status.stdout

    # the same tables as the local chain of the same plan
    local = tmp_path / "local"
    chain(local, *REDUCED)
    for name in ("pretrain_smoke.csv", "transfer_smoke.csv"):  # (the run folders' paths aside)
        assert (local / "results" / "tables" / name).read_text().replace(str(local), "") == \
            (tables / name).read_text().replace(str(tmp_path), "")


def test_a_failed_step_holds_back_its_dependents_until_it_is_fixed(cluster, tmp_path):
    plan = ["--only", "pretrain smoke/independent seed0", "--only",
            "smoke_faster_rcnn_fpn <- smoke/independent", *RESOURCES]
    broken = ["--set=pretrain:data.dataset=imagefolder"]  # data.root holds no ImageNet layout
    chain(tmp_path, "--slurm", *plan, *broken)
    submitted = jobs(tmp_path)
    wait_for([j["job_id"] for j in submitted.values()])
    pre = "pretrain/smoke/independent/seed0"
    (transfer,) = [k for k in submitted if k.startswith("transfer/")]
    end = ends(tmp_path)
    assert end[pre]["code"] == 2 and transfer not in end  # never started
    status = chain(tmp_path, "--status", *plan, *broken, check=False)
    assert status.returncode == 1
    assert f"failed (job {submitted[pre]['job_id']}, exit code 2, log " in status.stdout
    assert "does not exist: set data.root" in Path(submitted[pre]["log"]).read_text()
    # the fix: the data it wants, where it wants it; then the same command again
    subprocess.run([sys.executable, "-m", "pretrain.data.synthetic",
                    str(tmp_path / "data" / "classification"), "--classes", "4",
                    "--train-per-class", "12", "--val-per-class", "4", "--image-size", "32"],
                   cwd=REPO, check=True, capture_output=True)
    again = chain(tmp_path, "--slurm", *plan, *broken)
    assert "submitted 2 job(s)" in again.stdout, again.stdout
    wait_for([j["job_id"] for j in jobs(tmp_path).values()])
    assert {k: e["code"] for k, e in ends(tmp_path).items()} == {pre: 0, transfer: 0}


def test_a_requeue_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run(cluster, tmp_path):
    # 20 steps an epoch, at a learning rate that does not diverge at this batch size (at the
    # smoke lr, 0.02, a student's BatchNorm statistics once diverged to NaN outputs)
    settings = ["--set=pretrain:optim.batch_size=2", "--set=pretrain:optim.lr=0.005",
                "--set=pretrain:optim.epochs=2", "--set=pretrain:train.log_interval=1"]
    steps = ["--only", "pretrain smoke/independent seed0", *RESOURCES, *settings]
    chain(tmp_path, "--slurm", *steps)
    (job,) = [j["job_id"] for j in jobs(tmp_path).values()]
    run_dir = tmp_path / "runs" / "pretrain" / "smoke" / "independent" / "seed0"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # requeue it once it is past a few steps of epoch 1
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                ] if (run_dir / "metrics.jsonl").is_file() else []
        if any(r.get("kind") == "train" and r["step"] >= 3 for r in rows):
            break
        time.sleep(0.2)
    subprocess.run(["scontrol", "requeue", job], check=True)
    wait_for([job])
    log = Path(jobs(tmp_path)["pretrain/smoke/independent/seed0"]["log"]).read_text()
    assert "stopped by SIGTERM at epoch 1, step" in log, log[-3000:]
    assert "resumed from" in log and "at epoch 1, step" in log, log[-3000:]
    assert ends(tmp_path)["pretrain/smoke/independent/seed0"]["code"] == 0
    # the same run without interruption
    local = tmp_path / "local"
    chain(local, "--only", "pretrain smoke/independent seed0", *settings)
    for name in ("resnet18.pth", "mobilenet_v2_x0.5.pth"):
        a = torch.load(run_dir / "export" / name, weights_only=True)
        b = torch.load(local / "runs" / "pretrain" / "smoke" / "independent" / "seed0" /
                       "export" / name, weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_two_submissions_of_one_step_train_it_once(cluster, tmp_path):
    step = ["--only", "pretrain smoke/independent seed0", *RESOURCES]
    cmd = [sys.executable, "-m", "chain", "--backends", "torchvision", "--runs",
           str(tmp_path / "runs"), "--records", str(tmp_path / "records"), "--results",
           str(tmp_path / "results"), *tiny(tmp_path / "data"), "--slurm", *step]
    both = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in both]
    assert [p.returncode for p in both] == [0, 0], outputs
    assert sorted("submitted 1 job(s)" in o for o in outputs) == [False, True], outputs
    (job,) = [j["job_id"] for j in jobs(tmp_path).values()]
    # a user's own run of the same step next to the job is refused, naming the job
    run_dir = tmp_path / "runs" / "pretrain" / "smoke" / "independent" / "seed0"
    deadline = time.monotonic() + 120
    while not run_dir.with_name("seed0.lock").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    settings = [a.split(":", 1)[1] for a in tiny(tmp_path / "data") if a.startswith("--set=pre")]
    manual = subprocess.run([sys.executable, "-m", "pretrain",
                             "pretrain/configs/smoke/independent.yaml", "seed=0",
                             f"output_root={tmp_path / 'runs' / 'pretrain'}", *settings,
                             "--resume"], cwd=REPO, capture_output=True, text=True)
    wait_for([job])
    if "already finished" not in manual.stderr:  # it did not finish before the job started
        assert manual.returncode == 2, manual.stderr
        assert "is in use by another run (host " in manual.stderr
        assert f"SLURM job {job}" in manual.stderr
    assert ends(tmp_path)["pretrain/smoke/independent/seed0"]["code"] == 0


def test_eight_processes_writing_records_at_once_lose_none(cluster, tmp_path):
    """8 jobs on the cluster, 200 runs' record files each, into one records folder."""
    script = ("import sys; from kdcl_common import records; w = int(sys.argv[1]); "
              "[records.write(sys.argv[2], 'pretrain', f'w{w}/run{i}', "
              "[{'stage': 'pretrain', 'i': i, 'writer': w}]) for i in range(200)]")
    ids = [subprocess.run(["sbatch", "--parsable", "--cpus-per-task=1", "-o", "/dev/null",
                           f"--wrap={sys.executable} -c \"{script}\" {w} {tmp_path}"],
                          cwd=REPO, check=True, capture_output=True, text=True
                          ).stdout.strip() for w in range(8)]
    wait_for(ids)
    from kdcl_common import records

    found = [r for _, r in records.scan([tmp_path])]
    assert len(found) == 1600
    assert sorted((r["writer"], r["i"]) for r in found) == [(w, i) for w in range(8)
                                                           for i in range(200)]
