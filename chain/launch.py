"""How a step's processes start: `python -m`, torchrun, or a backend's own launcher
(transfer/backends/__init__.py says which), with the GPUs and machines of a `Topology`.

The local chain takes its topology from the environment (NPROC_PER_NODE, TORCHRUN_ARGS,
D2_LAUNCH_ARGS); a SLURM job from SLURM's (chain/job.py): the number of nodes, this node's rank,
the first node's address, and a port derived from the job id, so that two jobs of one user on
one node never meet at the same port (torchrun's, mmengine's and Detectron2's defaults do).

Standard library only.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass

from kdcl_common.identity import RunState
from transfer import backends

from .plan import Step

PORT_BASE, PORT_SPAN = 15000, 20000  # job ports: 15000-34999, below Linux's ephemeral range


def port_for_job(job_id: str | int) -> int:
    """The rendezvous port of a job: one per job id, the same on every node of the job."""
    return PORT_BASE + int(str(job_id).split("_")[0]) % PORT_SPAN


@dataclass(frozen=True)
class Topology:
    """The processes of one step: `nproc` per node on `nodes` nodes, this node's rank, and
    where the processes meet (the first node's address and a port); `extra`: torchrun's own
    options as the user gave them (TORCHRUN_ARGS)."""

    nproc: int = 1
    nodes: int = 1
    node_rank: int = 0
    master: str | None = None
    port: int | None = None
    extra: tuple[str, ...] = ()
    own_launcher_extra: tuple[str, ...] = ()

    @property
    def distributed(self) -> bool:
        return self.nproc * self.nodes > 1 or bool(self.extra)

    @classmethod
    def from_environment(cls, env: dict | None = None) -> "Topology":
        """The local chain's: NPROC_PER_NODE processes (default 1); TORCHRUN_ARGS and
        D2_LAUNCH_ARGS carry the rendezvous options for several machines as given."""
        env = os.environ if env is None else env
        return cls(nproc=int(env.get("NPROC_PER_NODE", "1")),
                   extra=tuple(shlex.split(env.get("TORCHRUN_ARGS", ""))),
                   own_launcher_extra=tuple(shlex.split(env.get("D2_LAUNCH_ARGS", ""))))

    @classmethod
    def from_slurm(cls, nproc: int, env: dict | None = None) -> "Topology":
        """A SLURM job's, on the node this runs on (one task per node): its rank among the
        job's nodes, the job's first node, the job's port."""
        env = os.environ if env is None else env
        nodes = int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1")))
        master = first_node(env.get("SLURM_JOB_NODELIST", "")) if nodes > 1 else "127.0.0.1"
        return cls(nproc=nproc, nodes=nodes, node_rank=int(env.get("SLURM_NODEID", "0")),
                   master=master, port=port_for_job(env["SLURM_JOB_ID"]))


def first_node(nodelist: str) -> str:
    """The first host of a SLURM node list (`gpu[03-05],gpu09` -> gpu03), as SLURM expands it."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True,
                             capture_output=True, text=True).stdout.split()
        return out[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return nodelist.split(",")[0]


def mode_flag(state: RunState | str) -> str:
    """--restart for a stale run (its folder is archived), else --resume (which also
    starts a new run and continues a killed one)."""
    return "--restart" if str(state) == RunState.STALE else "--resume"


def command(step: Step, state: RunState | str, topology: Topology) -> list[str]:
    """The command that runs `step` with `topology`'s processes."""
    args = [*step.args]
    if step.stage in ("pretrain", "transfer"):  # the others skip what is done themselves
        args.append(mode_flag(state))
    python = [sys.executable, "-m", *args]
    if step.stage not in ("pretrain", "transfer"):
        return python
    entry = backends.get(step.backend) if step.backend else None
    if entry is not None and entry.launcher is not None:  # the framework starts its processes
        address = f"{topology.master}:{topology.port}" if topology.master and topology.port \
            else None
        return [*python, *entry.launcher.arguments(topology.nproc, topology.nodes,
                                                   topology.node_rank, address),
                *topology.own_launcher_extra]
    if not topology.distributed:
        return python
    rendezvous = list(topology.extra)
    if topology.master is not None:
        rendezvous += ["--nnodes", str(topology.nodes), "--node_rank", str(topology.node_rank),
                       "--master_addr", topology.master, "--master_port", str(topology.port)]
    elif not rendezvous:
        rendezvous = ["--standalone"]  # one machine: torchrun picks a free port
    return [sys.executable, "-m", TORCHRUN, *rendezvous, "--nproc_per_node", str(topology.nproc),
            "-m", *args]


TORCHRUN = "torch.distributed.run"  # torchrun, from this Python (its bin/ need not be on PATH)


def shown(argv: list[str]) -> str:
    """A command as a user would type it."""
    if argv[:3] == [sys.executable, "-m", TORCHRUN]:
        argv = ["torchrun", *argv[3:]]
    return shlex.join(["python" if c == sys.executable else c for c in argv])
