"""`python -m transfer CONFIG --backbone PATH [key=value ...]`: fine-tune a pre-trained backbone
on COCO and evaluate it. The backend follows from the config:

  transfer/configs/torchvision/*.yaml   this project's YAML (torchvision detection models)
  transfer/configs/detectron2/*.yaml    Detectron2's own YAML (needs Detectron2 installed)
  transfer/configs/mmseg/*.py           mmsegmentation's own Python configs (segmentation)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from kdcl_common import ConfigError, KdclError
from kdcl_common.config import describe, to_yaml

EXAMPLES = """\
examples:
  python -m transfer transfer/configs/torchvision/smoke_faster_rcnn_fpn.yaml \\
      --backbone runs/pretrain/smoke/kdcl_minlogit/seed0/export/resnet18.pth
  torchrun --nproc_per_node 8 -m transfer \\
      transfer/configs/torchvision/mask_rcnn_fpn_paper14ep_syncbn.yaml --backbone R18.pth
  python -m transfer transfer/configs/detectron2/faster_rcnn_R18_FPN_paper14ep_syncbn.yaml \\
      --backbone R18.pth --num-gpus 8                    # Detectron2's own launcher
  python -m transfer transfer/configs/mmseg/sem-fpn_r18_smoke.py --backbone R18.pth
  torchrun --nproc_per_node 4 -m transfer \
      transfer/configs/mmseg/upernet_r50_80k_syncbn_coco-stuff164k-512x512.py --backbone R50.pth
  python -m transfer CONFIG --backbone PATH --resume     # continue a killed run
  python -m transfer CONFIG --backbone PATH --eval-only  # evaluate a trained run again

Overrides are key=value: for the torchvision backend the keys below; for Detectron2 its own
keys (SOLVER.BASE_LR=0.02); for mmseg its config's keys (train_cfg.max_iters=1000). Runs go to <output root>/<config name>/<backbone>/seed<n>/, and one
result record per finished run is appended to results/records/transfer.jsonl.

torchvision backend config keys (key = default, then what it means):
"""


def backend_of(config: str | Path) -> str:
    """'mmseg' for Python configs, 'detectron2' for Detectron2 YAML (upper-case keys or
    _BASE_), else 'torchvision'."""
    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.suffix == ".py":
        return "mmseg"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if isinstance(data, dict) and any(k == "_BASE_" or k.isupper() for k in data):
        return "detectron2"
    return "torchvision"


def get_args_parser() -> argparse.ArgumentParser:
    from .config import TransferConfig

    parser = argparse.ArgumentParser(
        prog="python -m transfer",
        description="Fine-tune a pre-trained backbone on COCO detection, instance "
                    "segmentation or COCO-Stuff semantic segmentation, and evaluate it.",
        epilog=EXAMPLES + "\n".join(describe(TransferConfig)),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a transfer config (see transfer/configs)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--backbone", required=True,
                        help="an exported backbone .pth with its .json beside it")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run from its last checkpoint")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate the run's trained weights instead of training")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config and exit")
    d2 = parser.add_argument_group("Detectron2 launcher (detectron2.engine.launch)")
    d2.add_argument("--num-gpus", type=int, default=1, help="GPUs per machine")
    d2.add_argument("--num-machines", type=int, default=1)
    d2.add_argument("--machine-rank", type=int, default=0)
    d2.add_argument("--dist-url", default="auto",
                    help="initialisation URL of the process group, e.g. tcp://host:port")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_intermixed_args(argv)
    try:
        backend = backend_of(args.config)
        if backend == "detectron2":
            from .backends.detectron2 import launcher

            return launcher.main(args)
        if backend == "mmseg":
            from .backends.mmseg import launcher

            return launcher.main(args)
        from . import config

        cfg = config.load(args.config, args.overrides)
        if args.print_config:
            print(to_yaml(cfg), end="")
            return 0
        from .backends.torchvision.engine import run

        run(cfg, args.backbone, args.config, resume=args.resume, eval_only=args.eval_only)
    except KdclError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
