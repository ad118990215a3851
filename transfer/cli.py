"""`python -m transfer CONFIG --backbone PATH [key=value ...]`: fine-tune a pre-trained backbone
on COCO or COCO-Stuff and evaluate it. The backend is the config's folder,
transfer/configs/<backend>/ (transfer/backends/__init__.py lists them), or --backend NAME for a
config kept elsewhere:

  transfer/configs/torchvision/*.yaml   this project's YAML (torchvision detection models)
  transfer/configs/detectron2/*.yaml    Detectron2's own YAML (needs Detectron2 installed)
  transfer/configs/mmseg/*.py           mmsegmentation's own Python configs (segmentation)
"""
from __future__ import annotations

import argparse

from kdcl_common import runs
from kdcl_common.cli import guarded
from kdcl_common.config import describe

from . import backends
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
runs again. Each finished run writes its result record to <records>/transfer/<run folder>.json.

torchvision backend config keys (key = default, then what it means):
"""


def registered() -> list[type[Backend]]:
    return [entry.load() for entry in backends.REGISTRY]


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
    parser.add_argument("--backend", choices=backends.names(),
                        help="the config's backend (default: its folder under transfer/configs)")
    parser.add_argument("--output-root", metavar="DIR",
                        help="where run folders go, over the config's (not part of a run's "
                             "identity: a moved run is the same run)")
    parser.add_argument("--records", metavar="DIR",
                        help="the records folder, over the config's (default results/records)")
    parser.add_argument("--seed", type=int, metavar="N",
                        help="the fine-tuning seed (the backend's seed key: seed, SEED or "
                             "randomness.seed), so that a chain can vary it for any backend")
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

    def body() -> int:
        from . import lifecycle

        backend = backends.of_config(args.config, args.backend).load()
        refuse_other_options(backend, args, registered(), args.config)
        return lifecycle.run(backend(args), args)

    return guarded(body)
