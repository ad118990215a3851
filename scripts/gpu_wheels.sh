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
# --detectron2 SRC (a checkout of facebookresearch/detectron2, or a .tar.gz of its source), its
# source is copied to DIR/detectron2/ and its pure-Python needs are downloaded, and gpu_check.sh
# builds it there.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=$root/.whl
pyver=3.12
d2src=
die() { echo "error: $*" >&2; exit 2; }
while (($#)); do
  case $1 in
    --python-version|--detectron2) (($# > 1)) || die "$1 needs a value (see --help)" ;;&
    --python-version) pyver=$2; shift 2 ;;
    --detectron2) d2src=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) dir=$1; shift ;;
  esac
done
lock=$root/requirements/lock.txt
pin() { grep -i -E "^$1==" "${2:-$lock}" || die "$1 is not in ${2:-$lock}"; }
# pip reads a source package's metadata by running its setup.py: mmcv's needs torch and
# pkg_resources (setuptools<81), which the project's environment has (bash scripts/setup.sh).
py=${PYTHON:-${KDCL_VENV:-$root/.venv}/bin/python}
[[ -x $py ]] || die "$py not found: run bash scripts/setup.sh first, or set PYTHON"
mkdir -p "$dir"
# Detectron2's source first, so that a wrong SRC is refused before anything is downloaded or
# replaced: it is staged beside DIR/detectron2 and moved there once it is checked.
if [[ -n $d2src ]]; then
  [[ -e $d2src ]] || die "--detectron2 $d2src: no such file or folder"
  stage=$(mktemp -d "$dir/.detectron2.XXXXXX") && trap 'rm -rf "$stage"' EXIT
  src=$stage/detectron2
  if [[ -f $d2src ]]; then  # a source archive: the folder in it that holds setup.py
    tar -xf "$d2src" -C "$stage" 2>/dev/null || die "--detectron2 $d2src: not a tar archive"
    top=$(find "$stage" -maxdepth 2 -name setup.py -printf '%h\n' | sort | head -n 1)
    src=${top:-$stage}
  elif git -C "$d2src" rev-parse --git-dir >/dev/null 2>&1; then
    mkdir "$src" && git -C "$d2src" archive HEAD | tar -x -C "$src"
  else
    cp -r "$d2src" "$src"
  fi
  [[ -f $src/setup.py ]] || die "--detectron2 $d2src holds no setup.py: give a checkout of" \
    "facebookresearch/detectron2 or a .tar.gz of its source"
  # Not needed to build or run. projects/ stays: setup.py installs detectron2.projects.point_rend,
  # deeplab and panoptic_deeplab from it.
  rm -rf "$src"/{docs,tests,demo,datasets,dev,.github}
  rm -rf "$dir/detectron2" && mv "$src" "$dir/detectron2"
fi
# Wheels: binary for the node's Python (pycocotools has compiled code), pure Python otherwise.
wheels=(pycocotools omegaconf mmengine mmsegmentation addict yapf termcolor prettytable wcwidth
        ftfy platformdirs setuptools)
pins=$(for w in "${wheels[@]}"; do pin "$w"; done)
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$dir" $pins
# Sources: OmegaConf's parser runtime is published as a source package only; mmcv is compiled.
"$py" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d "$dir" \
  "$(pin antlr4-python3-runtime)" "mmcv==$(sed -n "s/^MMCV_VERSION=//p" "$root/scripts/setup.sh")"
if [[ -n $d2src ]]; then
  # Detectron2's needs that a torch image lacks, at requirements/detectron2.txt's versions.
  d2_lock=$root/requirements/detectron2.txt
  pins=$(for w in yacs hydra-core iopath; do pin "$w" "$d2_lock"; done)
  fvcore=$(pin fvcore "$d2_lock")
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" \
    --implementation cp -d "$dir" $pins
  "$py" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d "$dir" "$fvcore"
fi
du -sh "$dir"
ls "$dir"
