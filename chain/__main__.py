"""`python -m chain`: the whole chain of a preset (what `bash run_all.sh` calls after set-up).

  python -m chain                               # smoke: generated data, CPU, about 15 minutes
  python -m chain --dry-run                     # the plan, with each step's state now
  python -m chain --only pretrain               # a subset: stage, backend or part of a label
  python -m chain --only transfer --only mmseg  # (several --only: any of them)
  CIFAR100_ROOT=/data/cifar-100-python python -m chain --preset cifar
  IMAGENET_ROOT=... COCO_ROOT=... COCO_STUFF_ROOT=... NPROC_PER_NODE=8 python -m chain --preset paper

GPUs and nodes: NPROC_PER_NODE is torchrun's --nproc_per_node (default 1: plain python);
TORCHRUN_ARGS adds torchrun's rendezvous options for several nodes, e.g.
"--nnodes 2 --node_rank 0 --rdzv_backend c10d --rdzv_endpoint host:29500". Detectron2 uses its
own launcher: it gets --num-gpus NPROC_PER_NODE, plus D2_LAUNCH_ARGS for several machines
("--num-machines 2 --machine-rank 0 --dist-url tcp://host:29500").
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from . import plan

ROOT = Path(__file__).resolve().parent.parent


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bash run_all.sh", description="Pre-train, export, transfer and tabulate: every "
        "stage of a preset, skipping the runs that have finished.",
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="smoke", choices=plan.PRESETS)
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="pre-training seeds (default 0; cifar: 0 1 2 3 4)")
    parser.add_argument("--backends", nargs="+", choices=plan.BACKENDS,
                        help="transfer backends (default: every one installed)")
    parser.add_argument("--only", action="append", default=[], metavar="WHAT",
                        help="run only the steps of a stage (pretrain, transfer, robustness, results), a "
                             "backend (torchvision, detectron2, mmseg) or whose label contains "
                             "WHAT (e.g. kdcl_linear, smoke_mask_rcnn_fpn); repeatable")
    parser.add_argument("--all-methods", action="store_true",
                        help="smoke: every method with a smoke config (DML, KD, mean, "
                             "KDCL-Naive and -Linear too; about 5 more minutes), not only those "
                             "pretrain/registry.py marks smoke")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    return parser


def launcher(step: plan.Step, state: str = "todo") -> list[str]:
    """python -m, or torchrun -m with the GPUs/nodes from the environment; --resume for a
    step to do (it continues a killed run), --restart for a stale one."""
    nproc = os.environ.get("NPROC_PER_NODE", "1")
    extra = shlex.split(os.environ.get("TORCHRUN_ARGS", ""))
    args = [*step.args]
    if step.stage in ("pretrain", "transfer"):  # the others skip what is done themselves
        args.append("--restart" if state == "stale" else "--resume")
    if step.backend == "detectron2":  # its own launcher spawns the processes
        return [sys.executable, "-m", *args, "--num-gpus", nproc,
                *shlex.split(os.environ.get("D2_LAUNCH_ARGS", ""))]
    if step.stage in ("pretrain", "transfer") and (nproc != "1" or extra):
        return ["torchrun", *extra, "--nproc_per_node", nproc, "-m", *args]
    return [sys.executable, "-m", *args]


def missing_data(steps: list[plan.Step]) -> list[str]:
    """One line per dataset variable that a step to run needs and that is unset or wrong."""
    lines = []
    for name in sorted({n for s in steps for n in s.needs}):
        value = os.environ.get(name)
        users = sorted({s.stage for s in steps if name in s.needs})
        if not value:
            lines.append(f"  ${name} is not set ({'/'.join(users)} reads it): "
                         f"{plan.DATA_VARIABLES[name]}")
        elif not Path(value).is_dir():
            lines.append(f"  ${name}={value} is not a folder: it should hold "
                         f"{plan.DATA_VARIABLES[name]}")
    return lines


def shown(command: list[str]) -> str:
    return shlex.join(["python" if c == sys.executable else c for c in command])


def clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def environment_ready() -> bool:
    """Whether the stages' own code can be imported here (else states come from files)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "omegaconf"))


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    os.chdir(ROOT)
    seeds = args.seeds or ([0, 1, 2, 3, 4] if args.preset == "cifar" else [0])
    installed = plan.available_backends()
    backends = args.backends or [b for b in plan.BACKENDS if installed[b]]
    absent = [b for b in backends if not installed[b]]
    try:
        steps = plan.select(plan.build(args.preset, seeds, backends, all_methods=args.all_methods), args.only)
    except ValueError as e:
        print(f"run_all: {e}", file=sys.stderr)
        return 2
    exact = environment_ready()

    transfers = "" if args.preset == "cifar" else f", backends {', '.join(backends) or 'none'}"
    print(f"run_all: preset {args.preset}, seeds {' '.join(map(str, seeds))}{transfers}: "
          f"{len(steps)} steps")
    if not installed["detectron2"] and plan.TRANSFER_CONFIGS[args.preset].get("detectron2") \
            and args.backends is None:
        print("run_all: Detectron2 is not installed, so its transfer runs are left out; add "
              "them with `bash scripts/setup.sh --detectron2` (builds it from its git repository)")
    if args.dry_run:
        if not exact:
            print("run_all: states from the run folders' files only (configs not compared: "
                  "the environment is not set up)")
        for step in steps:
            state, why = step.state(exact)
            print(f"  [{state}] {shown(launcher(step, state))}" + (f"\n         {why}" if why else ""))
        return 0
    if absent:
        print(f"run_all: backend {', '.join(absent)} is not installed in {sys.executable}; "
              f"install it (README, Set-up) or leave it out of --backends", file=sys.stderr)
        return 2
    problems = missing_data([s for s in steps if s.needs and s.state(exact)[0] != "done"])
    if problems:
        print("run_all: the dataset paths are missing:\n" + "\n".join(problems) + "\nSet them, "
              f"e.g. `IMAGENET_ROOT=/data/imagenet bash run_all.sh --preset {args.preset}`, or "
              "run a subset with --only (e.g. --only pretrain).", file=sys.stderr)
        return 2

    start = time.monotonic()
    for number, step in enumerate(steps, start=1):
        head = f"[run_all {clock(time.monotonic() - start)}] {number}/{len(steps)} {step.label}"
        if step.backbone is not None and not step.backbone.is_file():
            print(f"{head}: the backbone {step.backbone} does not exist; run its pre-training "
                  f"first (bash run_all.sh --preset {args.preset} --only pretrain)",
                  file=sys.stderr)
            return 2
        state, why = step.state(exact)  # now: earlier steps may have replaced its inputs
        if state == "done":
            print(f"{head}: done, skipped")
            continue
        print(head + (f": stale ({why}), running it again" if state == "stale" else ""),
              flush=True)
        command = launcher(step, state)
        code = subprocess.call(command)
        if code != 0:
            print(f"run_all: step {number} failed (exit code {code}):\n  {shown(command)}\n"
                  "Fix the cause and run the same run_all.sh command again: finished steps are "
                  "skipped and this one resumes from its last checkpoint.", file=sys.stderr)
            return code
    print(f"[run_all {clock(time.monotonic() - start)}] finished: tables in results/tables/, "
          "figures in results/figures/, the run's provenance in results/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
