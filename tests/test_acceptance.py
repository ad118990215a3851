"""The acceptance command (chain/acceptance.py) in its CPU toy mode: every stage runs end to end
through the commands a user types, and the report says what passed and what it measured."""
import json
import os
import subprocess
import sys
import tarfile

import pytest
import torch

from chain import acceptance

from .conftest import REPO


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "chain.acceptance", *args], capture_output=True,
                          text=True, timeout=850, cwd=cwd)


@pytest.mark.timeout(900)
def test_toy_run_of_every_stage(tmp_path):
    report_dir = tmp_path / "report"
    proc = run("--mode", "toy", "--work", str(tmp_path / "work"), "--report", str(report_dir))
    report = json.loads((report_dir / "report.json").read_text())
    stages = report["stages"]
    planned = acceptance.stages("toy")
    assert list(stages) == [s.name for s in planned]
    for stage in planned:
        result = stages[stage.name]
        if stage.requires and not acceptance.importable(stage.requires):
            assert result == {"status": "skipped",
                              "why": f"{stage.requires} is not installed here"}
            continue
        assert result["status"] == "passed", (stage.name, result.get("error"),
                                              proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stderr[-3000:]

    bench = stages["bench"]["measured"]
    for case in ("kdcl", "train[decode=cpu]", "train[decode=device]"):
        assert bench[case]["images_per_second"] > 0
    assert set(bench["data[decode=cpu]"]["us_per_image"]) == {"read", "decode", "draw", "crop",
                                                              "batch"}
    assert 0 < bench["end_to_end_over_compute[decode=device]"] < 5
    exports = stages["pretrain"]["measured"]["exports"]
    assert set(exports) == {"resnet18", "mobilenet_v2_x0.5"}
    assert stages["cifar_epoch"]["measured"]["epochs"] == 1
    # one stage per transfer config of every backend (transfer/backends/__init__.py)
    for name, metric in (("torchvision/smoke_faster_rcnn_fpn", "bbox_AP"),
                         ("torchvision/smoke_mask_rcnn_fpn", "segm_AP"),
                         ("mmdet/mask-rcnn_r18_fpn_smoke", "segm_AP"),
                         ("mmseg/sem-fpn_r18_smoke", "mIoU")):
        measured = stages[name]["measured"]
        assert metric in measured["metrics"], (name, measured)
        assert measured["seconds_per_iteration"] > 0
    # SyncBN in the mmseg configs falls back on the CPU, and the report says so
    assert any("SyncBN" in line for line in stages["mmseg/sem-fpn_r18_smoke"]["fallbacks"])
    md = (report_dir / "report.md").read_text()
    assert "| bench | passed |" in md and "# Acceptance run (toy)" in md
    # every stage's log in one file beside the report, for a node that hands back a few files
    with tarfile.open(report_dir / "logs.tar.gz") as tar:
        logs = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    ran = [n for n, r in stages.items() if r["status"] != "skipped"]
    assert set(logs) == {f"logs/{n}.log" for n in ran}
    assert all(logs[f"logs/{n}.log"].startswith(b"$ python -m ") for n in ran)


def test_an_unknown_stage_is_refused(tmp_path):
    proc = run("--only", "nope", "--work", str(tmp_path / "w"), "--report", str(tmp_path / "r"))
    assert proc.returncode == 2 and "no such stage" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="--mode gpu is valid where CUDA is")
def test_gpu_mode_without_a_gpu_is_refused(tmp_path):
    proc = run("--mode", "gpu", "--work", str(tmp_path / "w"), "--report", str(tmp_path / "r"))
    assert proc.returncode == 2 and "needs a GPU" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r").exists()


def test_work_folder_of_something_else_is_not_replaced(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "precious.txt").write_text("keep")
    proc = run("--mode", "toy", "--work", str(tmp_path / "w"), "--report", str(tmp_path / "r"))
    assert proc.returncode == 2 and "not empty and was not made by this command" in proc.stderr
    assert (tmp_path / "w" / "precious.txt").read_text() == "keep"


# ------------------------------------------------------- scripts/gpu_wheels.sh (no downloads)
def gpu_wheels(out, *args):
    """scripts/gpu_wheels.sh with pip offline: its downloads fail, what comes before them runs."""
    empty = out.parent / "no-index"
    empty.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHON": sys.executable, "PIP_NO_INDEX": "1",
           "PIP_FIND_LINKS": str(empty)}
    return subprocess.run(["bash", str(REPO / "scripts" / "gpu_wheels.sh"), str(out), *args],
                          capture_output=True, text=True, timeout=120, env=env)


def detectron2_archive(tmp_path, setup_py=True):
    """A .tar.gz laid out as Detectron2's source archive: one top folder."""
    src = tmp_path / "src" / "detectron2"
    for name in ("detectron2/__init__.py", "projects/PointRend/point_rend/__init__.py",
                 "projects/DensePose/README.md", "configs/Base-RCNN-FPN.yaml", "docs/index.md",
                 "tests/test_x.py", *(["setup.py"] if setup_py else [])):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text("")
    archive = tmp_path / "detectron2-0000000.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="detectron2")
    return archive


def test_gpu_wheels_keeps_the_detectron2_projects_its_setup_installs(tmp_path):
    out = tmp_path / "whl"
    proc = gpu_wheels(out, "--detectron2", str(detectron2_archive(tmp_path)))
    assert proc.returncode != 0  # the first download, offline
    d2 = out / "detectron2"
    # setup.py installs detectron2.projects.point_rend (and others) from projects/
    for kept in ("setup.py", "detectron2/__init__.py", "projects/PointRend/point_rend/__init__.py",
                 "configs/Base-RCNN-FPN.yaml"):
        assert (d2 / kept).is_file(), (kept, proc.stderr)
    assert not (d2 / "docs").exists() and not (d2 / "tests").exists()
    assert sorted(p.name for p in out.iterdir()) == ["detectron2"]  # no staging folder left


def test_gpu_wheels_refuses_a_detectron2_source_without_setup_py(tmp_path):
    out = tmp_path / "whl"
    (out / "detectron2").mkdir(parents=True)
    (out / "detectron2" / "setup.py").write_text("# prepared before")
    for source, message in ((detectron2_archive(tmp_path, setup_py=False), "holds no setup.py"),
                            (tmp_path / "nope", "no such file or folder"),
                            (REPO / "README.md", "not a tar archive")):
        proc = gpu_wheels(out, "--detectron2", str(source))
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"error: --detectron2 {source}") and message in proc.stderr
        # the folder prepared before is left as it was, and nothing was downloaded
        assert sorted(p.name for p in out.iterdir()) == ["detectron2"]
        assert (out / "detectron2" / "setup.py").read_text() == "# prepared before"
