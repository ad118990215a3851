"""A step's SLURM job (what chain/slurm.py's batch scripts run):

    python -m chain.job runs/chain/steps/<step>.json          the batch script's body
    python -m chain.job node runs/chain/steps/<step>.json MODE each node's task (under srun)

The batch part decides what the step needs now, as the local chain does when it reaches a step
(done: the job ends at once; stale: --restart; else --resume), then starts one task per node
with srun; each task starts its node's processes (chain/launch.py: torchrun with the node's rank,
the first node's address and the job's port, or the backend's own launcher).

Signals. sbatch --signal=B:USR1@<s> warns the batch part <s> seconds before the time limit; it
passes SIGTERM on to the job's steps (`scancel --signal=TERM`: SLURM signals every process of a
step, and torchrun forwards TERM to its workers too), the training processes write a checkpoint
of the step they reached and stop, and the job requeues itself (`scontrol requeue`): it keeps its
id, dependent jobs keep waiting, and the next run resumes from that checkpoint. On preemption or
at the limit itself SLURM sends SIGTERM to every process (then SIGKILL after KillWait): the
training processes checkpoint the same way, and the batch part waits for them.
When the job ends it writes runs/chain/jobs/<step>.end.json: its exit code, node and time.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from kdcl_common.identity import RunState

from . import launch, slurm
from .plan import Step


def load_step(path: str | os.PathLike) -> tuple[Step, dict]:
    spec = json.loads(Path(path).read_text())
    fields = dict(spec["step"])
    for key in ("backbone", "output_root"):
        fields[key] = Path(fields[key]) if fields.get(key) else None
    for key in ("args", "needs", "after"):
        fields[key] = tuple(fields[key])
    return Step(**fields), spec


STARTED = time.time()


def write_end(step: Step, spec: dict, code: int, requeued: bool = False,
              signalled: int | None = None) -> None:
    files = slurm.Files(Path(spec["state_dir"]))
    slurm._write(files.end(step.key), {
        "job_id": os.environ.get("SLURM_JOB_ID"), "code": code, "requeued": requeued,
        "restarts": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        "node": socket.gethostname(), "ended": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "started_at": STARTED, "ended_at": time.time(),
        **({"signal": signal.Signals(signalled).name} if signalled else {})})


def batch(step_path: str) -> int:
    step, spec = load_step(step_path)
    for name, value in spec.get("env", {}).items():
        os.environ.setdefault(name, value)
    job = os.environ.get("SLURM_JOB_ID", "?")
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    print(f"[chain.job {time.strftime('%H:%M:%S')}] {step.label}: job {job}"
          + (f", run {int(restarts) + 1} (requeued)" if restarts != "0" else ""), flush=True)
    state, why = step.state(exact=True)
    if state == RunState.DONE:
        print(f"[chain.job] done already{f' ({why})' if why else ''}: nothing to run", flush=True)
        write_end(step, spec, 0)
        return 0
    if state == RunState.STALE:
        print(f"[chain.job] stale ({why}): running it again with --restart", flush=True)
    warned: list[int] = []

    def on_signal(signum, frame):
        warned.append(signum)
        if signum == signal.SIGUSR1:  # the time limit is near: checkpoint, then requeue
            print(f"[chain.job {time.strftime('%H:%M:%S')}] the time limit is near: stopping "
                  f"the step at a checkpoint, then requeueing job {job}", flush=True)
            subprocess.run(["scancel", "--signal=TERM", job], check=False)

    for s in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        signal.signal(s, on_signal)  # TERM: SLURM signalled the steps too; wait for them
    argv = ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1", sys.executable, "-m",
            "chain.job", "node", step_path, str(state)]
    proc = subprocess.Popen(argv)
    code = proc.wait()
    if signal.SIGUSR1 in warned and step.state(exact=True)[0] != RunState.DONE:
        write_end(step, spec, code, requeued=True)
        print(f"[chain.job {time.strftime('%H:%M:%S')}] requeueing job {job}", flush=True)
        subprocess.run(["scontrol", "requeue", job], check=False)
        time.sleep(30)  # SLURM ends this run of the job
        return 0
    write_end(step, spec, code, signalled=warned[-1] if warned else None)
    return code


def node(step_path: str, mode: str) -> int:
    """One node's processes: replaced by torchrun, the backend's launcher or python."""
    step, spec = load_step(step_path)
    topology = launch.Topology.from_slurm(spec.get("processes_per_node", 1))
    argv = launch.command(step, mode, topology)
    print(f"[chain.job] node {topology.node_rank}/{topology.nodes}: {launch.shown(argv)}",
          flush=True)
    os.execv(argv[0], argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "node":
        return node(argv[1], argv[2])
    return batch(argv[0])


if __name__ == "__main__":
    sys.exit(main())
