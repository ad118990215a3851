"""`python -m chain`: the whole chain of a preset (what `bash run_all.sh` calls after set-up).

  python -m chain                               # smoke: generated data, CPU, about 15 minutes
  python -m chain --dry-run                     # the plan, with each step's state now
  python -m chain --only pretrain               # a subset: stage, backend or part of a label
  python -m chain --only transfer --only mmseg  # (several --only: any of them)
  CIFAR100_ROOT=/data/cifar-100-python python -m chain --preset cifar
  IMAGENET_ROOT=... COCO_ROOT=... COCO_STUFF_ROOT=... NPROC_PER_NODE=8 \\
      python -m chain --preset paper

On SLURM, every step is its own job, in dependency order (chain/slurm.py):

  python -m chain --preset paper --slurm                      # submit what is not done
  python -m chain --preset paper --slurm --resources my.yaml pretrain.partition=a100
  python -m chain --preset paper --status                     # every step's state and job
  python -m chain --preset paper --slurm --dry-run            # what would be submitted, GPU-hours

Submitting again submits only the steps that are neither finished, queued nor running; a failed
step and everything after it are submitted again. The resources of each stage (nodes, GPUs,
time limit, partition, ...) come from chain/resources.yaml, or --resources FILE, and key=value
overrides of it.

Without SLURM: NPROC_PER_NODE is torchrun's --nproc_per_node (default 1: plain python);
TORCHRUN_ARGS adds torchrun's rendezvous options for several nodes, e.g.
"--nnodes 2 --node_rank 0 --rdzv_backend c10d --rdzv_endpoint host:29500". A backend with its
own launcher (Detectron2) gets NPROC_PER_NODE as its GPU count, plus D2_LAUNCH_ARGS for several
machines ("--num-machines 2 --machine-rank 0 --dist-url tcp://host:29500").
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from kdcl_common import KdclError

from . import launch, local, plan

ROOT = Path(__file__).resolve().parent.parent


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bash run_all.sh", description="Pre-train, export, transfer and tabulate: every "
        "stage of a preset, skipping the runs that have finished.",
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="smoke", choices=plan.PRESETS)
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="pre-training seeds (default 0; cifar: 0 1 2 3 4)")
    parser.add_argument("--transfer-seeds", type=int, nargs="+", default=[0], metavar="SEED",
                        help="fine-tuning seeds of every transfer cell (default 0): each adds a "
                             "transfer run per backbone and config (--dry-run shows the cost)")
    parser.add_argument("--backends", nargs="+", choices=plan.backends.names(),
                        help="transfer backends (default: every one installed)")
    parser.add_argument("--only", action="append", default=[], metavar="WHAT",
                        help="run only the steps of a stage (pretrain, transfer, robustness, "
                             "results), a backend or whose label contains WHAT (e.g. "
                             "kdcl_linear, smoke_mask_rcnn_fpn); repeatable")
    parser.add_argument("--all-methods", action="store_true",
                        help="smoke: every method with a smoke config (DML, KD, mean, "
                             "KDCL-Naive and -Linear too; about 5 more minutes), not only those "
                             "pretrain/registry.py marks smoke")
    parser.add_argument("--set", action="append", default=[], metavar="SCOPE:KEY=VALUE",
                        dest="settings",
                        help="a config override for every step of a stage or backend, e.g. "
                             "pretrain:optim.epochs=1 torchvision:optim.epochs=1 "
                             "mmseg:train_cfg.max_iters=20 (they are part of the runs' "
                             "configs); repeatable")
    parser.add_argument("--runs", type=Path, default=plan.DEFAULT.runs, metavar="DIR",
                        help="where run folders and the chain's own files go (default runs)")
    parser.add_argument("--records", type=Path, default=plan.DEFAULT.records, metavar="DIR",
                        help="the records folder (default results/records)")
    parser.add_argument("--results", type=Path, default=plan.DEFAULT.results, metavar="DIR",
                        help="where tables and figures go (default results)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (with --slurm: what would be submitted) and exit")
    cluster = parser.add_argument_group("SLURM")
    cluster.add_argument("--slurm", action="store_true",
                         help="submit every step as its own SLURM job, in dependency order")
    cluster.add_argument("--status", action="store_true",
                         help="every step's state: done, queued, running, failed, stale or "
                              "todo, what it waits for, and the critical path")
    cluster.add_argument("--resources", type=Path, metavar="FILE",
                         help="per-stage SLURM resources (default: chain/resources.yaml)")
    cluster.add_argument("resource_overrides", nargs="*", metavar="stage.key=value",
                         help="resource overrides, e.g. pretrain.time=2-00:00:00 "
                              "transfer.gpus_per_node=4 defaults.partition=gpu")
    return parser


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


def environment_ready() -> bool:
    """Whether the stages' own code can be imported here (else states come from files)."""
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "omegaconf"))


def parse_settings(items: list[str]) -> dict[str, tuple[str, ...]]:
    """--set SCOPE:KEY=VALUE -> {scope: (KEY=VALUE, ...)}; a scope is pretrain or a backend."""
    scopes = ("pretrain", *plan.backends.names())
    out: dict[str, tuple[str, ...]] = {}
    for item in items:
        scope, sep, override = item.partition(":")
        if not sep or scope not in scopes or "=" not in override:
            raise ValueError(f"--set {item}: write SCOPE:KEY=VALUE with SCOPE one of "
                             f"{', '.join(scopes)}, e.g. --set pretrain:optim.epochs=1")
        out[scope] = (*out.get(scope, ()), override)
    return out


def rerun_command(argv: list[str]) -> str:
    return "bash run_all.sh " + " ".join(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = get_args_parser().parse_intermixed_args(argv)
    os.chdir(ROOT)
    seeds = args.seeds or ([0, 1, 2, 3, 4] if args.preset == "cifar" else [0])
    installed = plan.available_backends()
    backends = args.backends or [b for b in plan.backends.names() if installed[b]]
    absent = [b for b in backends if not installed[b]]
    layout = plan.Layout(args.runs, args.records, args.results)
    try:
        everything = plan.build(args.preset, seeds, backends, all_methods=args.all_methods,
                                transfer_seeds=tuple(args.transfer_seeds), layout=layout,
                                settings=parse_settings(args.settings))
        steps = plan.select(everything, args.only)
    except (ValueError, KdclError) as e:
        print(f"run_all: {e}", file=sys.stderr)
        return 2
    exact = environment_ready()
    if args.resource_overrides and not (args.slurm or args.status):
        print(f"run_all: {' '.join(args.resource_overrides)}: resource overrides are for "
              f"--slurm (and --status); the local chain takes no positional arguments",
              file=sys.stderr)
        return 2

    transfers = "" if args.preset == "cifar" else f", backends {', '.join(backends) or 'none'}"
    print(f"run_all: preset {args.preset}, seeds {' '.join(map(str, seeds))}{transfers}: "
          f"{len(steps)} steps")
    left_out = [e for e in plan.backends.REGISTRY
                if not installed[e.name] and e.configs.get(args.preset)]
    if args.backends is None and left_out:
        for entry in left_out:
            print(f"run_all: {entry.name} is not installed ({entry.requires} does not import), "
                  f"so its transfer runs are left out (README, Set-up, says how to install it)")
    if args.slurm or args.status:
        from . import slurm

        return slurm.main(args, steps, everything, exact, rerun_command(argv), layout)
    if args.dry_run:
        if not exact:
            print("run_all: states from the run folders' files only (configs not compared: "
                  "the environment is not set up)")
        topology = launch.Topology.from_environment()
        for step in steps:
            state, why = step.state(exact)
            print(f"  [{state}] {launch.shown(launch.command(step, state, topology))}"
                  + (f"\n         {why}" if why else ""))
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
    return local.run(steps, exact, rerun_command(argv))


if __name__ == "__main__":
    sys.exit(main())
