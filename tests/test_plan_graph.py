"""The plan as a graph (chain/plan.py) and what a SLURM submission does with each step
(chain/slurm.py `decide`), without a scheduler: every edge a job's dependency needs, and the
decisions for done, queued, running, failed and never-running steps."""
from pathlib import Path

import pytest

from chain import plan, slurm
from chain.plan import State

ROOT = Path(__file__).resolve().parent.parent


def by_key(steps):
    return {s.key: s for s in steps}


def test_edges_follow_what_each_step_reads():
    steps = plan.build("smoke", [0, 1], ["torchvision", "mmseg"], ROOT, all_methods=True)
    keys = by_key(steps)
    for step in steps:
        assert all(k in keys for k in step.after), step.label  # edges point into the plan
        before = {s.key for s in steps[:steps.index(step)]}
        assert set(step.after) <= before, step.label  # and backwards: a valid local order
    kd = [s for s in steps if s.stage == "pretrain" and Path(s.config).stem == "kd"]
    assert [s.after for s in kd] == [(f"pretrain/smoke/independent/seed{n}",) for n in (0, 1)]
    for step in (s for s in steps if s.stage == "transfer"):
        (producer,) = step.after
        assert keys[producer].stage == "pretrain" and step.backbone.is_relative_to(
            keys[producer].run_dir())
    (robustness0, robustness1) = [s for s in steps if s.stage == "robustness"]
    assert set(robustness0.after) == {"pretrain/smoke/independent/seed0",
                                      "pretrain/smoke/kdcl_general/seed0"}
    results = steps[-1]
    assert results.stage == "results" and set(results.after) == set(keys) - {results.key}


def test_paper_plan_is_three_steps_deep():
    """The paper preset's ~140 steps run in the time of its longest chain of dependencies."""
    steps = plan.build("paper", [0], list(plan.backends.names()), ROOT)
    path = plan.critical_path(steps, {s.key for s in steps}, lambda s: 1.0)
    assert len(steps) > 100
    assert len(path) == 3 and path[0].stage == "pretrain" and path[-1].stage == "results"
    transfer = next(s for s in steps if s.stage == "transfer")
    assert len(plan.critical_path(steps, {transfer.key, *transfer.after}, lambda s: 1.0)) == 2


def test_transfer_seeds_multiply_the_transfer_steps():
    one = plan.build("smoke", [0], ["torchvision"], ROOT)
    three = plan.build("smoke", [0], ["torchvision"], ROOT, transfer_seeds=(0, 1, 2))
    count = lambda steps: sum(s.stage == "transfer" for s in steps)  # noqa: E731
    assert count(three) == 3 * count(one)
    assert len({s.key for s in three}) == len(three)  # each its own run folder and job
    assert {s.seed for s in three if s.stage == "transfer"} == {0, 1, 2}


def test_a_layout_moves_every_output_and_keeps_the_keys(tmp_path):
    layout = plan.Layout(tmp_path / "runs", tmp_path / "records", tmp_path / "results")
    moved = plan.build("smoke", [0], ["torchvision"], ROOT, layout=layout)
    default = plan.build("smoke", [0], ["torchvision"], ROOT)
    assert [s.key for s in moved] == [s.key for s in default]
    pretrain = moved[0]
    assert f"output_root={tmp_path / 'runs' / 'pretrain'}" in pretrain.args
    assert pretrain.run_dir().is_relative_to(tmp_path / "runs")
    transfer = next(s for s in moved if s.stage == "transfer")
    assert transfer.backbone.is_relative_to(tmp_path / "runs" / "pretrain")
    assert "--output-root" in transfer.args and transfer.run_dir().is_relative_to(tmp_path)
    assert moved[-1].args == ("results", "--records", str(tmp_path / "records"), "--out",
                              str(tmp_path / "results"))


def status(step, state, job=None, never=False):
    return slurm.Status(step, state, job=job, never_runs=never)


@pytest.fixture
def small():
    """independent and kdcl_minlogit, each -> two transfers, then results."""
    steps = plan.build("smoke", [0], ["torchvision"], ROOT)
    keep = ("pretrain/smoke/independent/", "pretrain/smoke/kdcl_minlogit/", "transfer/",
            "results")
    return [s for s in steps if s.key.startswith(keep)]


def decisions(steps, states):
    known = {s.key: states.get(s.key) or status(s, State.TODO) for s in steps}
    return {d.step.key: d for d in slurm.decide(steps, steps, known)}


def test_a_first_submission_submits_everything_in_dependency_order(small):
    out = decisions(small, {})
    assert all(d.action == "submit" for d in out.values())
    transfer = next(s for s in small if s.stage == "transfer")
    assert out[transfer.key].dependencies == [f"<{transfer.after[0]}>"]


def test_done_queued_and_running_steps_are_not_submitted_again(small):
    states = {s.key: status(s, State.DONE) for s in small}
    assert {d.action for d in decisions(small, states).values()} == {"skip"}
    first = small[0]
    states[first.key] = status(first, State.RUNNING, job="17")
    out = decisions(small, states)
    assert out[first.key].action == "keep"
    # a done step downstream of a running one waits for it: its job decides when it starts
    after_first = [s for s in small if first.key in s.after and s.stage != "results"]
    assert after_first and all(out[s.key].action == "submit" and
                               out[s.key].dependencies == ["17"] for s in after_first)
    assert out["results"].action == "submit" and "17" in out["results"].dependencies


def test_a_failed_step_and_everything_after_it_are_submitted_again(small):
    states = {s.key: status(s, State.DONE) for s in small}
    failed = small[0]
    states[failed.key] = status(failed, State.FAILED, job="12")
    for s in small:
        if failed.key in s.after:  # left pending forever, or cancelled (kill_invalid_depend)
            states[s.key] = status(s, State.QUEUED, job="13", never=True)
    out = decisions(small, states)
    assert out[failed.key].action == "submit"
    downstream = [s.key for s in small if failed.key in s.after and s.stage != "results"]
    assert downstream and all(out[k].action == "submit" and
                              out[k].dependencies == [f"<{failed.key}>"] for k in downstream)
    assert out["results"].action == "submit"
    untouched = [s.key for s in small if s.key != failed.key and s.key not in downstream
                 and s.stage != "results"]
    assert all(out[k].action == "skip" for k in untouched)


def test_a_selection_waits_for_steps_outside_it_or_says_what_to_submit(small):
    transfer = next(s for s in small if s.stage == "transfer")
    producer = next(s for s in small if s.key == transfer.after[0])
    known = {s.key: status(s, State.TODO) for s in small}
    (d,) = slurm.decide([transfer], small, known)
    assert d.action == "blocked" and producer.key in d.why and "--only" in d.why
    known[producer.key] = status(producer, State.QUEUED, job="40")
    (d,) = slurm.decide([transfer], small, known)
    assert d.action == "submit" and d.dependencies == ["40"]
