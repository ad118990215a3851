#!/usr/bin/env bash
# Prepares, on a machine with access to PyPI, what a bare GPU node needs for the acceptance
# check (scripts/gpu_check.sh) beyond Python, torch, torchvision and a compiler: the lock file's
# versions of pycocotools, OmegaConf, mmengine, mmsegmentation and their small pure-Python
# needs, as wheels for the node's Python, plus mmcv's source (compiled on the node against the
# node's own torch: a build made against another torch does not load).
#
#   bash scripts/gpu_wheels.sh [DIR] [--python-version 3.12] [--detectron2 SRC]
#
# DIR defaults to .whl (about 6 MB; 12 MB with Detectron2). Then copy DIR and the repository to
# the node and run `bash scripts/gpu_check.sh --wheels DIR`. Detectron2 is not on PyPI: with
# --detectron2 SRC (a checkout of facebookresearch/detectron2), its source is copied to
# DIR/detectron2/ and its pure-Python needs are downloaded, and gpu_check.sh builds it there.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=$root/.whl
pyver=3.12
d2src=
while (($#)); do
  case $1 in
    --python-version) pyver=$2; shift 2 ;;
    --detectron2) d2src=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) dir=$1; shift ;;
  esac
done
lock=$root/requirements/lock.txt
pin() { grep -i -E "^$1==" "$lock" || { echo "error: $1 is not in $lock" >&2; exit 2; }; }
# pip reads a source package's metadata by running its setup.py: mmcv's needs torch and
# pkg_resources (setuptools<81), which the project's environment has (bash scripts/setup.sh).
py=${PYTHON:-${KDCL_VENV:-$root/.venv}/bin/python}
[[ -x $py ]] || { echo "error: $py not found: run bash scripts/setup.sh first, or set PYTHON" >&2; exit 2; }
mkdir -p "$dir"
# Wheels: binary for the node's Python (pycocotools has compiled code), pure Python otherwise.
wheels=(pycocotools omegaconf mmengine mmsegmentation addict yapf termcolor prettytable wcwidth
        ftfy platformdirs setuptools)
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$dir" $(for w in "${wheels[@]}"; do pin "$w"; done)
# Sources: OmegaConf's parser runtime is published as a source package only; mmcv is compiled.
"$py" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d "$dir" \
  "$(pin antlr4-python3-runtime)" "mmcv==$(sed -n "s/^MMCV_VERSION=//p" "$root/scripts/setup.sh")"
if [[ -n $d2src ]]; then
  rm -rf "$dir/detectron2" && mkdir -p "$dir/detectron2"
  if git -C "$d2src" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$d2src" archive HEAD | tar -x -C "$dir/detectron2"
  else
    cp -r "$d2src"/. "$dir/detectron2"
  fi
  rm -rf "$dir/detectron2"/{docs,projects,tests,demo,datasets}  # not needed to build or run
  # Detectron2's needs that a torch image lacks (versions that work with the lock file's).
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" \
    --implementation cp -d "$dir" yacs==0.1.8 hydra-core==1.3.2 iopath==0.1.9
  "$py" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d "$dir" \
    fvcore==0.1.5.post20221221
fi
du -sh "$dir"
ls "$dir"
