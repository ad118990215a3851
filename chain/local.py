"""The chain on this machine: the plan's steps one after another, each skipped when done, resumed
when unfinished, run again with --restart when stale. A step's state is decided when the chain
reaches it: pre-training earlier in the same call may have replaced the export a transfer step
fine-tunes. A Ctrl-C or SIGTERM reaches the running step, which checkpoints where it is and
stops; the same command then resumes it."""
from __future__ import annotations

import os
import signal
import sys
import time

from kdcl_common.identity import RunState

from . import launch, runner
from .plan import Step


def clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def run(steps: list[Step], exact: bool, rerun: str) -> int:
    """Run `steps` in order; `rerun` is the command to give again after a failure."""
    topology = launch.Topology.from_environment()
    start = time.monotonic()
    for number, step in enumerate(steps, start=1):
        head = f"[run_all {clock(time.monotonic() - start)}] {number}/{len(steps)} {step.label}"
        if step.backbone is not None and not step.backbone.is_file():
            print(f"{head}: the backbone {step.backbone} does not exist; run its pre-training "
                  f"first ({rerun} --only pretrain)", file=sys.stderr)
            return 2
        state, why = step.state(exact)  # now: earlier steps may have replaced its inputs
        if state == RunState.DONE:
            print(f"{head}: done, skipped")
            continue
        print(head + (f": stale ({why}), running it again" if state == RunState.STALE else ""),
              flush=True)
        command = launch.command(step, state, topology)
        outcome = runner.run(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if outcome.signalled is not None:
            name = signal.Signals(outcome.signalled).name
            print(f"run_all: stopped by {name} at step {number} ({step.label}); the run "
                  f"checkpointed where it was. Run the same command again to resume:\n  {rerun}",
                  file=sys.stderr)
            return 128 + outcome.signalled
        if not outcome.ok:
            print(f"run_all: step {number} failed (exit code {outcome.code}):\n  "
                  f"{launch.shown(command)}\nFix the cause and run the same command again: "
                  f"finished steps are skipped and this one resumes from its last checkpoint.",
                  file=sys.stderr)
            return outcome.code or 1
    print(f"[run_all {clock(time.monotonic() - start)}] finished: tables in results/tables/, "
          "figures in results/figures/, the run's provenance in results/README.md")
    return 0
