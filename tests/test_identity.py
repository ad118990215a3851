"""A run is what it is, not where it is (kdcl_common/runs.py): the same data staged under
another path and a run folder moved to another disk are the same run; another dataset under the
same path is not; where records and outputs go is checked before any training."""
import shutil

from kdcl_common import fingerprint
from pretrain import cli

from .conftest import SMOKE, read_records, tiny_overrides


def run(root, out, *extra, flag=None, runs=None, records=None):
    args = [str(SMOKE / "independent.yaml"),
            *tiny_overrides(root, out, **{"optim.epochs": 1, "data.dataset": "imagefolder"}),
            *extra]
    if runs is not None:
        args.append(f"output_root={runs}")
    if records is not None:
        args.append(f"records={records}")
    return cli.main([*args, *([flag] if flag else [])])


def test_the_same_data_elsewhere_and_a_moved_run_are_the_same_run(tmp_path, tiny_root, capsys):
    assert run(tiny_root, tmp_path) == 0
    staged = tmp_path / "scratch" / "copy-of-the-data"
    shutil.copytree(tiny_root, staged)  # e.g. node-local scratch
    moved = tmp_path / "other-disk" / "runs"
    shutil.copytree(tmp_path / "runs", moved)
    capsys.readouterr()
    assert run(staged, tmp_path, runs=moved, records=tmp_path / "elsewhere",
               flag="--resume") == 0
    assert "is already finished" in capsys.readouterr().err
    # another dataset under that path: not the same run
    extra = next((staged / "train").iterdir())
    shutil.copy(next(extra.iterdir()), extra / "one-more.png")
    assert run(staged, tmp_path, runs=moved, flag="--resume") == 2
    err = capsys.readouterr().err
    assert "refusing to resume" in err and f"data {staged}: other files than the run was made " \
                                             f"from" in err
    assert "Traceback" not in err


def test_the_fingerprint_is_of_the_files_not_their_place(tmp_path, tiny_root):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_root, copy)
    a, b = fingerprint.of(tiny_root, ("train", "val")), fingerprint.of(copy, ("train", "val"))
    assert a == b and a["files"] == 4 * (12 + 4)
    first_class = sorted((copy / "val").iterdir())[0]
    image = sorted(first_class.iterdir())[0]
    image.rename(image.with_name("renamed.png"))  # in the same process: not a cached answer
    assert fingerprint.of(copy, ("train", "val"))["sha256"] != a["sha256"]


def test_unwritable_outputs_are_refused_before_training(tmp_path, tiny_root, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert run(tiny_root, tmp_path, records=blocker / "records") == 2
    err = capsys.readouterr().err
    assert f"{blocker / 'records'} cannot be a folder: {blocker} is a file" in err
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written
    assert run(tiny_root, tmp_path, runs=blocker) == 2
    assert f"{blocker / 'smoke' / 'independent'} cannot be a folder: {blocker} is a file" in \
        capsys.readouterr().err
    assert blocker.read_text() == "not a folder"


def test_records_go_to_one_file_per_run(tmp_path, tiny_root):
    assert run(tiny_root, tmp_path) == 0
    (path,) = (tmp_path / "records").rglob("*.json")
    assert path.relative_to(tmp_path / "records").as_posix() == \
        "pretrain/smoke/independent/seed0.json"
    assert {r["student"] for r in read_records(tmp_path)} == {"resnet18", "mobilenet_v2_x0.5"}
