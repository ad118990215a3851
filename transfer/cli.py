"""`python -m transfer CONFIG --backbone PATH [key=value ...]`: fine-tune a pre-trained backbone
on COCO or COCO-Stuff and evaluate it. The backend follows from the config
(transfer/backends/__init__.py lists them):

  transfer/configs/torchvision/*.yaml   this project's YAML (torchvision detection models)
  transfer/configs/detectron2/*.yaml    Detectron2's own YAML (needs Detectron2 installed)
  transfer/configs/mmseg/*.py           mmsegmentation's own Python configs (segmentation)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from kdcl_common import ConfigError, KdclError, user_message
from kdcl_common import runs
from kdcl_common.config import describe, read_text, safe_load_yaml

from .backends import BACKENDS
from .backends.base import Backend, refuse_other_options

EXAMPLES = """\
examples:
  python -m transfer transfer/configs/torchvision/smoke_faster_rcnn_fpn.yaml \\
      --backbone runs/pretrain/smoke/kdcl_minlogit/seed0/export/resnet18.pth
  torchrun --nproc_per_node 8 -m transfer \\
      transfer/configs/torchvision/mask_rcnn_fpn_paper14ep_syncbn.yaml --backbone R18.pth
  python -m transfer transfer/configs/detectron2/faster_rcnn_R18_FPN_paper14ep_syncbn.yaml \\
      --backbone R18.pth --num-gpus 8                    # Detectron2's own launcher
  python -m transfer transfer/configs/mmseg/sem-fpn_r18_smoke.py --backbone R18.pth
  torchrun --nproc_per_node 4 -m transfer \\
      transfer/configs/mmseg/upernet_r50_80k_syncbn_coco-stuff164k-512x512.py --backbone R50.pth
  python -m transfer CONFIG --backbone PATH --resume     # continue a killed run
  python -m transfer CONFIG --backbone PATH --restart    # archive the run, run it again
  python -m transfer CONFIG --backbone PATH --eval-only  # evaluate a trained run again

Overrides are key=value: for the torchvision backend the keys below; for Detectron2 its own
keys (SOLVER.BASE_LR=0.02); for mmseg its config's keys (train_cfg.max_iters=1000).

Runs go to <output root>/<config name>/<pretrain config>-seed<n>-<student>/seed<n>/. A run is
identified by its resolved config and the backbone's sha256 (run.json): --resume continues, or
leaves finished, only a run of the same identity, and refuses one of other weights or another
config, saying what differs; --restart renames that folder to <folder>.superseded-<time> and
runs again. One result record per finished run is appended to results/records/transfer.jsonl.

torchvision backend config keys (key = default, then what it means):
"""


def registered() -> list[type[Backend]]:
    return [entry.load() for entry in BACKENDS.values()]


def backend_of(config: str | Path) -> type[Backend]:
    """The registered backend that claims the config file."""
    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = None
    if path.suffix in (".yaml", ".yml"):
        try:
            data = safe_load_yaml(read_text(path), str(path)) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
    for backend in registered():
        if backend.claims(path, data):
            return backend
    raise ConfigError(f"{path} is not a config of any transfer backend "
                      f"({', '.join(BACKENDS)}): see transfer/configs")


def get_args_parser() -> argparse.ArgumentParser:
    from .backends.torchvision.config import TransferConfig

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
    mode = runs.add_arguments(parser, weights="backbone weights")
    mode.add_argument("--eval-only", action="store_true",
                      help="evaluate the run's trained weights instead of training")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (fitted to the backbone) and exit")
    for backend in registered():
        if backend.options:
            group = parser.add_argument_group(f"{backend.name} backend only")
            for dest, spec in backend.options.items():
                spec = {k: v for k, v in spec.items() if k != "flag"}
                group.add_argument(backend.options[dest]["flag"], dest=dest, default=None,
                                   **spec)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_intermixed_args(argv)
    try:
        from . import lifecycle

        backend = backend_of(args.config)
        refuse_other_options(backend, args, registered(), args.config)
        return lifecycle.run(backend(args), args)
    except KdclError as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2
