"""`python -m pretrain CONFIG [key=value ...]`: train students together, then export them."""
from __future__ import annotations

import argparse

from kdcl_common import runs
from kdcl_common.cli import guarded
from kdcl_common.config import describe, to_yaml

from . import config

EXAMPLES = """\
examples:
  python -m pretrain pretrain/configs/smoke/kdcl_minlogit.yaml
  python -m pretrain pretrain/configs/cifar/kdcl_linear_icl.yaml data.root=$CIFAR100_ROOT seed=1
  torchrun --nproc_per_node 8 -m pretrain pretrain/configs/imagenet/r50_r18/kdcl_minlogit.yaml
  torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint $HOST:29500 \\
      -m pretrain pretrain/configs/imagenet/four_students/kdcl_minlogit.yaml
  python -m pretrain CONFIG --resume      # continue a killed run from its last checkpoint
  python -m pretrain CONFIG --restart     # archive the run (<run>.superseded-<time>), run again

outputs: <output_root>/<name>/seed<seed>/ holds config.yaml, environment.json, log.txt,
metrics.jsonl, tensorboard/, checkpoint.pth and export/<student>.{pth,json}; its result
records (one per student) are one file under `records`. A run is identified by its resolved
config and, for kd, its teacher's sha256 (run.json): --resume continues only a run of the same
identity, so a changed config or teacher is refused with what differs, and --restart runs it
anew.

config keys (key = default, then what it means):
"""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pretrain",
        description="Train students together (KDCL and its baselines), then export them.",
        epilog=EXAMPLES + "\n".join(describe(config.schema())),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config",
                        help="a YAML config, e.g. pretrain/configs/smoke/kdcl_minlogit.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. optim.lr=0.2 students.0.arch=resnet34")
    runs.add_arguments(parser, weights="KD teacher weights")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_intermixed_args(argv)

    def body() -> None:
        cfg = config.load(args.config, args.overrides)
        if args.print_config:
            print(to_yaml(cfg), end="")
            return
        from .engine import run  # imports torch.distributed etc. only when training

        run(cfg, args.config, resume=args.resume, restart=args.restart)

    return guarded(body)
