"""The benchmark's arithmetic on hand-made windows, and one small run of the command (every kind
of case, tiny students and images, two windows of one step: it checks the plumbing and the
report, not the speed)."""
import json

import pytest

from pretrain import bench

from .conftest import SMOKE, tiny_overrides


def run(step, **extra):
    return {"case": "x", "students": ["a"], "views": 1, "batch_size": 10,
            "windows_ms": {"step": step, **extra}}


def test_summary_pools_the_windows_of_every_process():
    runs = [run([10.0, 12.0, 11.0]), run([20.0, 9.0, 30.0])]
    runs[0]["peak_memory_mb"], runs[1]["peak_memory_mb"] = 5.0, 7.0
    out = bench.summarize(runs)
    assert out["step_ms"] == {"median": 11.5, "min": 9.0, "max": 30.0, "per_process": [11.0, 20.0]}
    assert out["images_per_second"] == pytest.approx(10 / 0.0115)
    assert out["peak_memory_mb"] == 7.0


def test_derived_ratios_by_hand():
    def case(per_process, views=1, **extra):
        r = bench.summarize([run([t]) for t in per_process])
        r["views"] = views
        r.update(extra)
        return r

    results = {
        "data:1": case([4.0]), "data:2": case([5.0], views=2),
        "solo:a": case([10.0, 30.0]), "solo:b": case([5.0, 15.0]),
        "kdcl:kdcl_naive": case([16.0, 42.0], views=2, input_ms={"median": 1.0},
                                soft_target_ms={"median": 0.29}, paired_ratio=[1.01, 0.99, 1.0]),
    }
    derived = bench.derive(results, peak=None)
    # medians: solo a 20, solo b 10, kdcl 29 -> 29 / 30
    assert derived["overhead_ratio"]["kdcl_naive"] == pytest.approx(29 / 30)
    assert derived["overhead_ratio_per_round"]["kdcl_naive"] == pytest.approx([16 / 15, 42 / 45])
    assert derived["overhead_ratio_paired"]["kdcl_naive"] == {"median": 1.0, "min": 0.99,
                                                              "max": 1.01}
    assert derived["soft_target_share"]["kdcl_naive"] == pytest.approx(0.01)
    assert derived["icl_data_cost"] == {"views": 2, "ratio": 1.25}


def test_reports_go_to_an_untracked_folder_by_default():
    # results/bench holds the reports the README quotes, copied there on purpose; a run must not
    # overwrite them (runs/ is in .gitignore).
    args = bench.get_args_parser().parse_args([str(SMOKE / "kdcl_naive.yaml")])
    assert args.out == "runs/bench"
    assert "runs/bench" in bench.get_args_parser().format_help()


@pytest.mark.slow  # 40 s; tests/test_acceptance.py runs the command (data, kdcl, train cases) too
def test_the_command_end_to_end(tmp_path, tiny_root):
    overrides = tiny_overrides(tiny_root, tmp_path, **{"optim.batch_size": 8})
    argv = [str(SMOKE / "kdcl_naive.yaml"), *overrides, "--warmup", "1", "--windows", "2",
            "--steps", "1", "--data-steps", "1", "--methods", "kdcl_naive", "--out",
            str(tmp_path / "bench"), "--name", "tiny"]
    assert bench.main(argv) == 0
    report = json.loads((tmp_path / "bench" / "tiny.json").read_text())
    assert list(report["cases"]) == ["data:1", "data:2", "solo:resnet18",
                                     "solo:mobilenet_v2_x0.5", "kdcl:kdcl_naive",
                                     "train:kdcl_naive"]
    derived = report["derived"]
    assert len(report["cases"]["kdcl:kdcl_naive"]["paired_ratio"]) == 2
    assert 0.2 < derived["overhead_ratio_paired"]["kdcl_naive"]["median"] < 5
    assert derived["icl_data_cost"]["views"] == 2
    table = (tmp_path / "bench" / "tiny.md").read_text()
    assert "| kdcl:kdcl_naive | resnet18 + mobilenet_v2_x0.5 | 2 | 8 |" in table
    assert "paired in one process" in table and "ICL data cost, 2 views over 1" in table
    assert bench.main([*argv, "--only", "nothing"]) == 2
