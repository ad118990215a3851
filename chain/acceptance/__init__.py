"""`python -m chain.acceptance`: every stage of the suite on this machine, unattended, with a
report of what passed and how fast. Run it on a new GPU node before committing a week of GPU
time to it (`bash scripts/gpu_check.sh` installs what a bare node lacks first).

Stages, each the command a user would type, in its own process with its own deadline:

  data          generated ImageNet-size JPEGs (448 px, quality 90), 800 px COCO-format scenes
                (detection and COCO-Stuff layouts) and a CIFAR-100-format set
  bench         pretrain.bench, ResNet-50 + ResNet-18 at 224 px (bf16, channels-last, ICL):
                compute only, end to end with the workers' decode, end to end with
                data.decode=device, and compiled
  bench_cifar   pretrain.bench, ResNet-32 and WRN-16-2 (the cifar preset) each alone,
                contiguous and channels-last
  pretrain      a short KDCL run of the same students on the generated JPEGs, through to export
  cifar_epoch   one CIFAR epoch of ResNet-32 + WRN-16-2 with KDCL-MinLogit
  <backend>/<config>
                one stage per `acceptance` config of every registered transfer backend
                (transfer/backends/__init__.py), from that export: the paper protocol's model
                and precision, a few iterations, then evaluation; a backend whose library is
                not installed is skipped, saying so

Without a GPU (`--mode toy`, the default there) the same stages run at toy size on the CPU:
the smoke students and configs, tiny generated sets, a handful of steps, no compilation.
tests/test_acceptance.py runs it so, so the command cannot rot between GPU runs.

The report (`report.json` and `report.md` in --report) is rewritten after every stage: a slow
or failing stage cannot lose the others' results. Each stage's output is in `logs/<stage>.log`
under --work, and all of them in `logs.tar.gz` beside the report (one file to bring back from a
node). Both default to runs/acceptance (not tracked); the reports of real GPU runs that
the README quotes are copied to results/acceptance.
"""
from __future__ import annotations

from .stages import MODES, STAGES_BEFORE, Context, Stage, importable, stages  # noqa: F401
