"""torchrun with 2 CPU processes (gloo)."""
import json

import pytest
import torch

from kdcl_common import models
from kdcl_common.io import load_tensors

from .conftest import SMOKE, tiny_overrides, torchrun, read_records

pytestmark = pytest.mark.distributed


def test_two_ranks_train_and_export(tmp_path, tiny_root):
    torchrun(2, "pretrain", SMOKE / "kdcl_general.yaml",
             *tiny_overrides(tiny_root, tmp_path, **{"optim.epochs": 1}))
    records = read_records(tmp_path)
    assert len(records) == 2 and all(r["world_size"] == 2 for r in records)
    state = load_tensors(tmp_path / "runs/smoke/kdcl_general/seed0/export/resnet18.pth",
                         "state_dict")
    assert not any(k.startswith("module.") for k in state)


def test_one_step_on_two_ranks_equals_one_step_on_one_rank(tmp_path, tiny_root):
    """The same global batch of 40 images, split 20 + 20 across ranks or not split. GroupNorm
    students: with BatchNorm each rank would normalise with its own half-batch statistics
    (SyncBatchNorm, which would remove the difference, runs only on GPUs)."""
    overrides = {
        "students": "[{arch: cifar_resnet20, kwargs: {norm: gn}}, "
                    "{arch: wrn_16_2, kwargs: {norm: gn}}]",
        "data.held_out_per_class": 0, "optim.batch_size": 40, "optim.epochs": 1,
        "optim.lr": 0.5, "optim.schedule": "multistep",
    }
    exports = {}
    for nproc in (1, 2):
        out = tmp_path / f"world{nproc}"
        torchrun(nproc, "pretrain", SMOKE / "kdcl_minlogit.yaml",
                 *tiny_overrides(tiny_root, out, **overrides))
        exports[nproc] = out / "runs/smoke/kdcl_minlogit/seed0/export"
    torch.manual_seed(0)  # the engine's initialisation: seed, then the students in order
    initial = [models.build("cifar_resnet20", num_classes=4, norm="gn").state_dict(),
               models.build("wrn_16_2", num_classes=4, norm="gn").state_dict()]
    for name, init in zip(("cifar_resnet20", "wrn_16_2"), initial):
        one = load_tensors(exports[1] / f"{name}.pth", "state_dict")
        two = load_tensors(exports[2] / f"{name}.pth", "state_dict")
        for key in one:
            torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6, msg=key)
        # the step is large compared with the tolerance, so a wrong gradient scale would show
        step = max(float((one[k] - init[k]).abs().max()) for k in one)
        assert step > 1e-3
    top1 = [json.loads((exports[n] / "cifar_resnet20.json").read_text())["metrics"]["top1"]
            for n in (1, 2)]
    assert top1[0] == top1[1]


def _earliest_bad_step(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    from kdcl_common import distributed as kdist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    local = torch.tensor([[-1, 7, -1, 5], [3, -1, -1, 9]][rank])
    with open(f"{out}.{rank}", "w") as f:
        json.dump(kdist.earliest_across_ranks(local).tolist(), f)
    dist.destroy_process_group()


def test_ranks_agree_on_the_first_non_finite_step(tmp_path):
    """A NaN on one rank stops every rank at once (alone, it would leave the other waiting in
    its next all-reduce), at the earliest step any rank saw."""
    import torch.multiprocessing as mp

    mp.spawn(_earliest_bad_step, args=(str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"out.{rank}").read_text()) == [3, 7, -1, 5]


def test_two_nodes_as_the_slurm_path_starts_them_train_as_one_node_with_two(tmp_path,
                                                                           tiny_root):
    """Two torchrun agents with --nnodes 2 on 127.0.0.1, each started by `python -m chain.job
    node` with the rank and address a SLURM job gives its tasks (SLURM_NODEID, the job's node
    list, a port from the job id), train a step with gloo to the same weights as torchrun with
    2 processes on one node."""
    import os
    import subprocess
    import sys

    from chain import plan

    from .conftest import REPO

    overrides = tiny_overrides(tiny_root, tmp_path / "two_nodes", **{"optim.epochs": 1,
                                                                     "data.held_out_per_class": 0})
    step = plan.Step("pretrain", "tiny", ("pretrain", str(SMOKE / "independent.yaml"), "seed=0",
                                          *overrides))
    step_file = tmp_path / "step.json"
    step_file.write_text(json.dumps({"step": {**step.__dict__, "backbone": None,
                                              "output_root": None},
                                     "processes_per_node": 1}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SLURM_JOB_ID": str(os.getpid()),
           "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "127.0.0.1"}
    nodes = [subprocess.Popen([sys.executable, "-m", "chain.job", "node", str(step_file), "todo"],
                              cwd=REPO, env={**env, "SLURM_NODEID": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outputs = [p.communicate(timeout=240)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "--nnodes 2 --node_rank 1 --master_addr 127.0.0.1 --master_port" in outputs[1]
    one_node = tmp_path / "one_node"
    torchrun(2, "pretrain", SMOKE / "independent.yaml",
             *tiny_overrides(tiny_root, one_node, **{"optim.epochs": 1,
                                                     "data.held_out_per_class": 0}))
    for name in ("resnet18", "mobilenet_v2_x0.5"):
        a = load_tensors(tmp_path / f"two_nodes/runs/smoke/independent/seed0/export/{name}.pth",
                         "state_dict")
        b = load_tensors(one_node / f"runs/smoke/independent/seed0/export/{name}.pth",
                         "state_dict")
        assert all(torch.equal(a[k], b[k]) for k in a), name
