#!/usr/bin/env bash
# The whole chain: set up the environment if it is missing, then run every stage of a preset.
# The transfer and results stages are not built yet: for now the chain is pre-training, which
# trains every config of the preset and exports its students to runs/pretrain/<config>/seed<n>/.
#
#   bash run_all.sh                          # smoke: generated data, CPU, about 10 minutes
#   CIFAR100_ROOT=/data/cifar-100-python bash run_all.sh --preset cifar
#   IMAGENET_ROOT=/data/imagenet NPROC_PER_NODE=8 bash run_all.sh --preset paper
#
# Options: --preset smoke|cifar|paper, --seeds "0 1 2 3 4" (default: 0; cifar: 0-4),
#          --dry-run (print the plan and exit).
# Environment: NPROC_PER_NODE (processes per node, default 1), TORCHRUN_ARGS (extra torchrun
#   options for several nodes, e.g. "--nnodes 2 --rdzv_backend c10d --rdzv_endpoint host:29500").
# Runs are resumed with --resume, and finished runs are skipped: a killed chain continues
# where it stopped when started again.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$root"

preset=smoke seeds="" dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    --preset) preset=$2; shift 2 ;;
    --seeds) seeds=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

case "$preset" in
  smoke) folder=smoke; seeds=${seeds:-0} ;;
  cifar) folder=cifar; seeds=${seeds:-"0 1 2 3 4"}; need=CIFAR100_ROOT ;;
  paper) folder=imagenet; seeds=${seeds:-0}; need=IMAGENET_ROOT ;;
  *) echo "run_all.sh: unknown preset '$preset' (smoke, cifar or paper)" >&2; exit 2 ;;
esac
# Every config of the preset; independent runs first (the KD baselines use their exports).
mapfile -t configs < <(find "pretrain/configs/$folder" -name '*.yaml' ! -name '_*' \
  | awk '{ rank = /independent/ ? 0 : (/\/kd/ && !/kdcl/) ? 2 : 1; print rank "\t" $0 }' \
  | sort | cut -f2)

nproc=${NPROC_PER_NODE:-1}
if [ "$nproc" -gt 1 ] || [ -n "${TORCHRUN_ARGS:-}" ]; then
  # shellcheck disable=SC2206
  launch=(torchrun ${TORCHRUN_ARGS:-} --nproc_per_node "$nproc" -m pretrain)
else
  launch=(python -m pretrain)
fi

total=$(( ${#configs[@]} * $(wc -w <<<"$seeds") ))
echo "run_all: preset $preset, $total pre-training runs (${#configs[@]} configs x seeds $seeds)"
if [ "$dry_run" = 1 ]; then
  for seed in $seeds; do for c in "${configs[@]}"; do
    echo "  ${launch[*]} $c seed=$seed --resume"
  done; done
  exit 0
fi

if [ -n "${need:-}" ] && [ -z "${!need:-}" ]; then
  echo "run_all.sh: the $preset preset reads its dataset from \$$need; set it, e.g." >&2
  echo "  $need=/path/to/data bash run_all.sh --preset $preset" >&2
  exit 2
fi

bash scripts/setup.sh
source "${KDCL_VENV:-$root/.venv}/bin/activate"
n=0 t0=$SECONDS
for seed in $seeds; do
  for c in "${configs[@]}"; do
    n=$((n + 1))
    echo "[run_all $((SECONDS - t0))s] pretrain $n/$total: $c seed=$seed"
    "${launch[@]}" "$c" "seed=$seed" --resume
  done
done
echo "[run_all $((SECONDS - t0))s] done: backbones in runs/pretrain/*/seed*/export/," \
     "records in results/records/pretrain.jsonl"
