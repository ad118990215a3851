"""The chain on SLURM: every step of the plan is its own job, submitted with `sbatch
--dependency=afterok:<the jobs of the steps it waits for>` (the results step: afterany, so that
it runs with what finished and its README says what is missing).

Why generated sbatch scripts and not submitit: every step is already a command (`python -m
pretrain ...`), so there is no Python callable to pickle; the scripts are files a user can read,
resubmit by hand (`sbatch runs/chain/scripts/<step>.sbatch`) or adapt to their site; and the
chain needs no job state that SLURM keeps only in its accounting database (submitit's job
states come from sacct, which many clusters, and this project's test cluster, do not run). What
submitit would add, the requeue-on-signal, is chain/job.py's few lines.

What the chain keeps, under runs/chain/ (beside the run folders, on the shared file system):

    steps/<step>.json        the step as submitted (its command, data variables, resources)
    scripts/<step>.sbatch    its batch script
    jobs/<step>.json         its job id, when it was submitted, its log
    jobs/<step>.end.json     written by the job when it ends: exit code, node, requeued or not
    logs/<step>-<job>.log    the job's output (a requeued job appends to its own)

A step's state: QUEUED or RUNNING while squeue lists its job; FAILED when its last job ended with
an error; else its run folder's (DONE, STALE or TODO). Submitting again submits only the steps
that are neither done, queued nor running, plus those downstream of a step submitted now; a job
that can never run (its dependency failed) is cancelled and submitted again.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from kdcl_common import ConfigError, KdclError

from . import cost, plan, resources
from .plan import State, Step

RUNNING_STATES = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
NEVER_RUNS = ("DependencyNeverSatisfied",)


# ------------------------------------------------------------------------------- the files
@dataclass(frozen=True)
class Files:
    """The chain's own files under <runs>/chain (the module docstring lists them)."""

    root: Path

    def step(self, key: str) -> Path:
        return self.root / "steps" / f"{key}.json"

    def script(self, key: str) -> Path:
        return self.root / "scripts" / f"{key}.sbatch"

    def job(self, key: str) -> Path:
        return self.root / "jobs" / f"{key}.json"

    def end(self, key: str) -> Path:
        return self.root / "jobs" / f"{key}.end.json"

    def log(self, key: str, job: str = "%j") -> Path:
        return self.root / "logs" / f"{key}-{job}.log"


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _write(path: Path, data: dict) -> None:
    from kdcl_common.io import atomic_write_json

    atomic_write_json(path, data)


# ------------------------------------------------------------------------------ the scheduler
@dataclass(frozen=True)
class Live:
    """A job squeue lists."""
    state: str
    start: str
    nodes: str
    reason: str


def _slurm(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise KdclError(f"{argv[0]} is not on PATH: --slurm needs the SLURM client commands "
                        f"(sbatch, squeue, scontrol) of a cluster. Without SLURM, run the "
                        f"chain locally (no --slurm; README, Cluster)") from None
    if check and out.returncode != 0:
        raise KdclError(f"{' '.join(argv[:2])} failed: {(out.stderr or out.stdout).strip()}")
    return out


def squeue(ids: list[str]) -> dict[str, Live]:
    """The jobs among `ids` that SLURM still holds (pending, running, requeued)."""
    if not ids:
        return {}
    out = _slurm("squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T|%S|%N|%r", check=False)
    live = {}
    for line in out.stdout.splitlines():
        job, state, start, nodes, reason = (line.split("|") + [""] * 5)[:5]
        live[job.strip()] = Live(state.strip(), start.strip(), nodes.strip(), reason.strip())
    return live


def scontrol_job(job: str) -> dict[str, str]:
    """`scontrol show job` of an ended job (SLURM forgets it MinJobAge after its end)."""
    out = _slurm("scontrol", "-o", "show", "job", job, check=False)
    fields = {}
    for item in out.stdout.split():
        key, sep, value = item.partition("=")
        if sep:
            fields[key] = value
    return fields


# ---------------------------------------------------------------------------- step states
@dataclass
class Status:
    step: Step
    state: State
    why: str = ""
    job: str | None = None
    since: str | None = None
    node: str | None = None
    log: str | None = None
    code: int | None = None
    never_runs: bool = False   # queued, but its dependency failed
    ended: float | None = None  # when its last job ended (time.time())

    def line(self) -> str:
        if self.state == State.QUEUED:
            what = f"queued (job {self.job}" + (f", {self.why}" if self.why else "") + ")"
        elif self.state == State.RUNNING:
            what = f"running (job {self.job} since {self.since} on {self.node})"
        elif self.state == State.FAILED:
            what = f"failed (job {self.job}, exit code {self.code}, log {self.log})"
        else:
            what = str(self.state) + (f" ({self.why})" if self.why else "")
        return what


def status_of(step: Step, exact: bool, live: dict[str, Live], files: Files) -> Status:
    record = _read(files.job(step.key))
    job = record.get("job_id") if record else None
    if job and job in live:
        info = live[job]
        if info.state in RUNNING_STATES:
            return Status(step, State.RUNNING, job=job, since=info.start, node=info.nodes,
                          log=record.get("log"))
        never = info.reason.startswith(NEVER_RUNS)
        why = ("waits for a step that failed: it never runs; submitting again submits it anew"
               if never else info.reason if info.reason not in ("None", "") else "")
        return Status(step, State.QUEUED, why, job=job, log=record.get("log"), never_runs=never)
    end = _read(files.end(step.key))
    if job and (end is None or end.get("job_id") != job):
        # ended without writing its end (killed, cancelled before it started): ask scontrol
        fields = scontrol_job(job)
        state = fields.get("JobState", "")
        code = int(fields.get("ExitCode", "0:0").split(":")[0] or 0)
        if state and state not in ("COMPLETED", "CANCELLED") or code:
            return Status(step, State.FAILED, job=job, code=code or 1, log=record.get("log"),
                          why=state.lower())
        end = None
    ended = end.get("ended_at") if end else None
    if end and end.get("code") not in (0, None) and not end.get("requeued"):
        return Status(step, State.FAILED, job=job, code=end["code"], log=record.get("log"),
                      ended=ended)
    if step.stage in ("robustness", "results"):  # no run folder: done when its job succeeded
        done = end is not None and end.get("code") == 0
        return Status(step, State.DONE if done else State.TODO, job=job, ended=ended,
                      log=record.get("log") if record else None)
    state, why = step.state(exact)
    return Status(step, State(str(state)), why, job=job, ended=ended,
                  log=record.get("log") if record else None)


def statuses(steps: list[Step], exact: bool, files: Files) -> dict[str, Status]:
    ids = [r["job_id"] for s in steps if (r := _read(files.job(s.key))) and r.get("job_id")]
    live = squeue(ids)
    out = {s.key: status_of(s, exact, live, files) for s in steps}
    # a step without a run folder is done while nothing it reads has run since its job
    for s in steps:
        st = out[s.key]
        if s.stage in ("robustness", "results") and st.state == State.DONE:
            later = [k for k in s.after if k in out and (
                out[k].state in (State.QUEUED, State.RUNNING)
                or (out[k].ended or 0) > (st.ended or 0))]
            if later:
                st.state, st.why = State.TODO, "steps it reads have run since"
    return out


# ------------------------------------------------------------------------------ submitting
def script(step: Step, res: resources.Resources, root: Path, files: Files) -> str:
    lines = ["#!/bin/bash", f"# kdcl-bench: {step.label}",
             f"#SBATCH --job-name=kdcl:{step.key}"[:200],
             f"#SBATCH --output={root / files.log(step.key)}", "#SBATCH --open-mode=append",
             *(f"#SBATCH {o}" for o in res.sbatch_options()),
             f"cd {shlex.quote(str(root))}",
             f"exec {shlex.quote(sys.executable)} -m chain.job "
             f"{shlex.quote(str(root / files.step(step.key)))}", ""]
    return "\n".join(lines)


def submit_one(step: Step, res: resources.Resources, dependencies: list[str], root: Path,
               data_env: dict[str, str], files: Files) -> str:
    fields = {**asdict(step), "backbone": str(step.backbone) if step.backbone else None,
              "output_root": str(step.output_root) if step.output_root else None}
    _write(files.step(step.key), {"step": fields, "env": data_env,
                                  "state_dir": str(root / files.root),
                                  "processes_per_node": res.processes_per_node,
                                  "resources": asdict(res)})
    path = files.script(step.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.log(step.key).parent.mkdir(parents=True, exist_ok=True)
    from kdcl_common.io import atomic_write_text

    atomic_write_text(path, script(step, res, root, files))
    argv = ["sbatch", "--parsable"]
    if dependencies:
        kind = "afterany" if step.stage == "results" else "afterok"
        argv.append(f"--dependency={kind}:{':'.join(dependencies)}")
    out = _slurm(*argv, str(path))
    job = out.stdout.strip().split(";")[0]
    _write(files.job(step.key), {"job_id": job,
                                 "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                 "script": str(path), "log": str(files.log(step.key, job)),
                                 "dependencies": dependencies})
    return job


@dataclass
class Decision:
    step: Step
    status: Status
    action: str                  # submit | keep | skip | blocked
    dependencies: list[str]
    why: str = ""


def decide(steps: list[Step], everything: list[Step], known: dict[str, Status]
           ) -> list[Decision]:
    """What a submission does with each step, in plan order (`everything`: the whole plan, for
    the steps a selection waits for; `known`: every step's status now). Writes nothing."""
    selected = {s.key for s in steps}
    active: dict[str, str] = {k: st.job for k, st in known.items()
                              if st.state in (State.QUEUED, State.RUNNING) and not st.never_runs}
    out = []
    for step in everything:
        if step.key not in selected:
            continue
        st = known[step.key]
        if st.state in (State.QUEUED, State.RUNNING) and not st.never_runs:
            out.append(Decision(step, st, "keep", [], f"job {st.job}"))
            continue
        dependencies = [active[k] for k in step.after if k in active]
        missing = [] if step.stage == "results" else [  # results runs with what finished
            k for k in step.after if k not in active and known[k].state != State.DONE]
        if missing:
            out.append(Decision(step, st, "blocked", [], "waits for " + ", ".join(missing)
                                + " (not done, not queued: leave --only out to submit it too)"))
            continue
        if st.state == State.DONE and not dependencies:
            out.append(Decision(step, st, "skip", []))
            continue
        active[step.key] = f"<{step.key}>"  # placeholder until submitted
        out.append(Decision(step, st, "submit", dependencies))
    return out


def submit(decisions: list[Decision], table: resources.ResourceTable, root: Path,
           files: Files) -> int:
    data_env = {name: os.environ[name] for name in plan.DATA_VARIABLES if name in os.environ}
    submitted: dict[str, str] = {}
    for d in decisions:
        if d.action != "submit":
            continue
        if d.status.never_runs and d.status.job:
            _slurm("scancel", d.status.job, check=False)
        deps = [submitted[j[1:-1]] if j.startswith("<") else j for j in d.dependencies]
        job = submit_one(d.step, table.of(d.step), deps, root, data_env, files)
        submitted[d.step.key] = job
        after = f" after job(s) {', '.join(deps)}" if deps else ""
        print(f"  submitted {d.step.label}: job {job}{after}")
    return len(submitted)


# --------------------------------------------------------------------------------- the CLI
def main(args, steps: list[Step], everything: list[Step], exact: bool, rerun: str,
         layout: plan.Layout = plan.DEFAULT) -> int:
    """--slurm (with --dry-run) and --status for the selected `steps` of the plan
    `everything`."""
    try:
        return _main(args, steps, everything, exact, rerun, layout)
    except (KdclError, ConfigError) as e:
        print(f"run_all: {e}", file=sys.stderr)
        return 2


def _main(args, steps: list[Step], everything: list[Step], exact: bool, rerun: str,
          layout: plan.Layout) -> int:
    from kdcl_common.locks import RunLock

    root = Path.cwd()
    files = Files(layout.chain)
    table = resources.load(args.resources, args.resource_overrides)
    if args.status:
        return show_status(steps, everything, exact, table, files)
    files.root.mkdir(parents=True, exist_ok=True)
    # one submitter at a time: a second waits, then finds the first's jobs queued
    with RunLock(files.root / "submission", log=print, wait=300):
        return _submit(args, steps, everything, exact, rerun, table, root, files)


def _submit(args, steps, everything, exact, rerun, table, root, files) -> int:
    decisions = decide(steps, everything, statuses(everything, exact, files))
    estimates = cost.Estimator(table)
    planned = [d for d in decisions if d.action == "submit"]
    for d in decisions:
        res = table.of(d.step)
        note = {"submit": f"submit ({res.nodes}x{res.gpus_per_node} GPUs, {res.time}"
                          + (f", after {len(d.dependencies)} job(s)" if d.dependencies else "")
                          + f"; {estimates.describe(d.step)})",
                "keep": f"{d.status.line()}: left as it is", "skip": "done",
                "blocked": f"not submitted: {d.why}"}[d.action]
        print(f"  [{d.status.state}] {d.step.label}: {note}")
    total = sum(estimates.gpu_hours(d.step) or 0.0 for d in planned)
    unknown = sum(estimates.gpu_hours(d.step) is None for d in planned)
    print(f"run_all: {len(planned)} job(s) to submit, about {total:,.0f} GPU-hours"
          + (f" (+{unknown} step(s) without an estimate)" if unknown else ""))
    if args.transfer_seeds != [0]:
        extra = [d for d in planned if d.step.stage == "transfer" and d.step.seed != 0]
        hours = sum(estimates.gpu_hours(d.step) or 0.0 for d in extra)
        print(f"run_all: the fine-tuning seeds {' '.join(map(str, args.transfer_seeds[1:]))} "
              f"add {len(extra)} of these jobs, about {hours:,.0f} GPU-hours")
    if args.dry_run or not planned:
        if not planned:
            print("run_all: nothing to submit: every step is done, queued or running "
                  f"(`{rerun.replace('--slurm', '--status')}` shows them)")
        return 0
    count = submit(decisions, table, root, files)
    print(f"run_all: submitted {count} job(s); follow them with "
          f"`{rerun.replace('--slurm', '--status')}`; submitting again submits only what is "
          f"neither done, queued nor running")
    return 0


def show_status(steps: list[Step], everything: list[Step], exact: bool,
                table: resources.ResourceTable, files: Files) -> int:
    known = statuses(everything, exact, files)
    selected = {s.key for s in steps}
    estimates = cost.Estimator(table)
    for step in everything:
        if step.key not in selected:
            continue
        st = known[step.key]
        waits = [k for k in step.after if known[k].state != State.DONE]
        print(f"  [{st.state}] {step.label}: {st.line()}"
              + (f"\n           waits for: {', '.join(waits)}" if waits else ""))
    remaining = {k for k, st in known.items() if st.state != State.DONE and k in selected}
    path = plan.critical_path(everything, remaining,
                              lambda s: estimates.wall_hours(s) or 1.0)
    failed = [st for st in known.values() if st.state == State.FAILED and st.step.key in selected]
    counts: dict[str, int] = {}
    for k in selected:
        counts[str(known[k].state)] = counts.get(str(known[k].state), 0) + 1
    print("run_all: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    if path:
        hours = sum(estimates.wall_hours(s) or 0.0 for s in path)
        print(f"run_all: critical path, {len(path)} step(s) left (about {hours:,.1f} h if "
              f"every job starts at once): " + " -> ".join(s.label for s in path))
    if failed:
        print(f"run_all: {len(failed)} step(s) failed; fix the cause and submit again: the "
              f"failed steps and those after them are submitted anew")
    return 1 if failed else 0

