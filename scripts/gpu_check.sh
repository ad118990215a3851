#!/usr/bin/env bash
# The GPU acceptance check on a fresh node, unattended: installs what the node lacks from a
# folder prepared beforehand on a machine with PyPI access (bash scripts/gpu_wheels.sh), then
# runs every stage (python -m chain.acceptance) and writes its report.
#
#   bash scripts/gpu_check.sh [--wheels DIR] [--site DIR] [chain.acceptance options]
#   bash scripts/gpu_check.sh --wheels .whl --report $OUT     # e.g.
#
# The node needs Python with torch and torchvision (any recent pair: nothing is compiled
# against the lock file's), a C++ compiler, and no network. Into --site (default
# /tmp/kdcl-site, put first on PYTHONPATH; the node's own environment is left as it is) it
# installs the wheels of DIR and builds from source: OmegaConf's parser runtime, mmcv 2.1.0
# with its CPU ops (nothing the acceptance configs run needs mmcv's CUDA ops: Mask R-CNN uses
# torchvision's roi_align, Semantic FPN and UPerNet no mmcv op), and Detectron2 where
# DIR/detectron2/ holds its source (CPU ops only, likewise). A rerun on the same node reuses
# --site. The seconds of each step go into the report (setup.json beside it), their output into
# setup.log there; a step that fails is noted and the check goes on (its stages then fail or
# skip, saying why). What the report folder ends with: report.json, report.md, logs.tar.gz (each
# stage's log), setup.json and setup.log.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
wheels=$root/.whl
site=${KDCL_SITE:-/tmp/kdcl-site}
py=${PYTHON:-python3}
report=runs/acceptance
args=()
while (($#)); do
  case $1 in
    --wheels) wheels=$2; shift 2 ;;
    --site) site=$2; shift 2 ;;
    --report) report=$2; args+=("$1" "$2"); shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done
mkdir -p "$site" "$report"
log=$report/setup.log
: > "$log"
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
steps=()
say() { echo "[gpu_check] $*"; }
timed() {  # timed NAME COMMAND...: run, and note its seconds (or its failure) for the report
  local name=$1 start=$SECONDS; shift
  say "$name ..."
  echo "[gpu_check] $name: $*" >> "$log"
  if "$@" >> "$log" 2>&1; then
    steps+=("\"$name\": $((SECONDS - start))")
    say "$name: $((SECONDS - start)) s"
  else
    steps+=("\"$name\": \"failed after $((SECONDS - start)) s (setup.log)\"")
    say "$name FAILED after $((SECONDS - start)) s; the end of setup.log:"
    tail -n 20 "$log"
  fi
}
has() { "$py" -c "import $1" >/dev/null 2>&1; }
pip_site() { "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
               --disable-pip-version-check --target "$site" --upgrade "$@"; }
# A CPU-only build of a torch extension: with no GPU visible, mmcv's and Detectron2's setup.py
# compile their C++ ops only, in a fraction of the CUDA build's time.
build_cpu() { CUDA_VISIBLE_DEVICES= FORCE_CUDA=0 MMCV_WITH_OPS=1 MAX_JOBS=$(nproc) \
                "$py" -m pip install -q --no-index --no-deps --no-build-isolation --upgrade \
                --disable-pip-version-check --target "$site" "$@"; }

has torch && has torchvision || { echo "error: $py has no torch/torchvision" >&2; exit 2; }
"$py" -c 'import torch, torchvision, sys; print(f"[gpu_check] Python {sys.version.split()[0]}, torch {torch.__version__}, torchvision {torchvision.__version__}, CUDA available: {torch.cuda.is_available()}")'
if compgen -G "$wheels/*.whl" >/dev/null; then
  has omegaconf && has pycocotools && has mmseg || timed wheels pip_site "$wheels"/*.whl
  has antlr4 || timed antlr4 build_cpu "$wheels"/antlr4-python3-runtime-*.tar.gz
  if compgen -G "$wheels/fvcore-*.tar.gz" >/dev/null && ! has fvcore; then
    timed fvcore build_cpu "$wheels"/fvcore-*.tar.gz
  fi
else
  say "no wheels in $wheels: using what $py has (bash scripts/gpu_wheels.sh prepares them)"
fi
if ! has mmcv.ops && compgen -G "$wheels/mmcv-*.tar.gz" >/dev/null; then
  timed mmcv_build build_cpu "$wheels"/mmcv-*.tar.gz
fi
if ! has detectron2 && [[ -f $wheels/detectron2/setup.py ]]; then
  timed detectron2_build build_cpu "$wheels/detectron2"
fi
(IFS=,; echo "{${steps[*]:-}}") > "$report/setup.json"
exec "$py" -m chain.acceptance --setup "$report/setup.json" "${args[@]}"
