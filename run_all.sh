#!/usr/bin/env bash
# The whole chain: pre-training (independent baselines, then the KDCL variants), export, transfer
# (detection, instance and semantic segmentation on every installed backend), then the tables.
# Sets up the environment first if it is missing (scripts/setup.sh), then runs `python -m chain`.
#
#   bash run_all.sh                        # smoke: generated data, CPU, about 15 minutes
#   bash run_all.sh --dry-run              # the plan, with what is already done
#   bash run_all.sh --only pretrain        # a subset (a stage, a backend, part of a step's name)
#   CIFAR100_ROOT=/data/cifar-100-python bash run_all.sh --preset cifar     # 5 seeds
#   IMAGENET_ROOT=/data/imagenet COCO_ROOT=/data/coco COCO_STUFF_ROOT=/data/coco_stuff164k \
#     NPROC_PER_NODE=8 bash run_all.sh --preset paper
#
# GPUs: NPROC_PER_NODE (torchrun --nproc_per_node); nodes: TORCHRUN_ARGS (torchrun rendezvous
# options) and D2_LAUNCH_ARGS (Detectron2's launcher); --slurm submits every step as a job.
# Finished runs are skipped and unfinished ones resume: run the same command again after a crash.
# All options: bash run_all.sh --help
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=${KDCL_VENV:-$root/.venv}
cd "$root"

# The plan and the help need no environment: print them with any Python 3.9+.
for arg in "$@"; do
  if [[ "$arg" == --dry-run || "$arg" == -h || "$arg" == --help ]] && [ ! -x "$venv/bin/python" ]; then
    echo "run_all: no environment yet, so the plan leaves out backends that need it" >&2
    exec python3 -m chain "$@"
  fi
done
bash scripts/setup.sh
exec "$venv/bin/python" -m chain "$@"
