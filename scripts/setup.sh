#!/usr/bin/env bash
# Idempotent environment set-up for kdcl-bench, shared by run_all.sh and tests/run.sh.
#
#   bash scripts/setup.sh                  # .venv/ in the repository (or $KDCL_VENV)
#   bash scripts/setup.sh --current-env    # install into the active Python (e.g. a conda env)
#   bash scripts/setup.sh --detectron2     # also build Detectron2 from its git repository
#   bash scripts/setup.sh --detectron2=SRC # ... or from a local source: archive or checkout
#
# Steps, each skipped when already done:
#   1. a virtual environment with Python >= 3.10;
#   2. the exact versions of requirements/lock.txt (PyPI's torch + torchvision pair, ~5 GB);
#   3. mmcv with its compiled ops (about 10 minutes on 2 cores, once: the wheel is cached in
#      $KDCL_WHEEL_CACHE, by default ~/.cache/kdcl-bench/wheels);
#   4. this project, editable;
#   5. optionally Detectron2 (not on PyPI): from GitHub, or from SRC (CI builds it from the
#      archive in ../shared/deps), with requirements/detectron2.txt's versions of its needs.
# A stamp file records what was installed, so a second call returns in about a second.
set -euo pipefail

MMCV_VERSION=2.1.0
DETECTRON2_GIT="git+https://github.com/facebookresearch/detectron2.git"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${KDCL_VENV:-$root/.venv}
current_env=0
with_detectron2=0
detectron2_src=$DETECTRON2_GIT
for arg in "$@"; do
  case "$arg" in
    --current-env) current_env=1 ;;
    --detectron2) with_detectron2=1 ;;
    --detectron2=*)
      with_detectron2=1
      detectron2_src=$(realpath -e -- "${arg#*=}" 2>/dev/null) || {
        echo "setup.sh: --detectron2=${arg#*=}: no such file or folder (give a Detectron2 source archive or checkout, or --detectron2 alone for its git repository)" >&2
        exit 2; } ;;
    -h|--help) sed -n '2,19p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

t0=$SECONDS
step() { printf '[setup %4ds] %s\n' $((SECONDS - t0)) "$*"; }
die() { echo "setup.sh: error: $*" >&2; exit 1; }

# --- 1. Python ---------------------------------------------------------------------------------
if [ "$current_env" = 1 ]; then
  py=$(command -v python || command -v python3) || die "no python on PATH"
  stamp_dir=$("$py" -c 'import sys; print(sys.prefix)')
else
  py="$venv/bin/python"
  stamp_dir=$venv
  if [ ! -x "$py" ]; then
    base=${PYTHON:-}
    if [ -z "$base" ]; then
      for candidate in python3.11 python3.12 python3.10 python3; do
        if command -v "$candidate" >/dev/null; then base=$candidate; break; fi
      done
    fi
    [ -n "$base" ] || die "no python3 found; install Python 3.10-3.12 or set PYTHON=/path/to/python"
    "$base" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
      || die "$base is $("$base" -V 2>&1); kdcl-bench needs Python >= 3.10 (set PYTHON=...)"
    step "creating virtual environment $venv with $("$base" -V 2>&1)"
    "$base" -m venv "$venv"
  fi
fi

stamp="$stamp_dir/.kdcl-bench-setup"
want=$(cat "$root"/requirements/{lock,detectron2}.txt "$root/pyproject.toml" "${BASH_SOURCE[0]}" \
       | sha256sum | cut -c1-16)
has_detectron2() { "$py" -c 'import detectron2' 2>/dev/null; }
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && { [ "$with_detectron2" = 0 ] || has_detectron2; }; then
  step "environment up to date ($stamp_dir)"
  exit 0
fi

pip=("$py" -m pip --disable-pip-version-check)

# --- 2. locked dependencies --------------------------------------------------------------------
step "installing the locked dependencies (requirements/lock.txt; the first time this downloads ~5 GB and takes a few minutes)"
"${pip[@]}" install -q -r "$root/requirements/lock.txt"
"$py" - <<'EOF' || die "torch and torchvision do not match (a local '+cpu' torch build?). Reinstall with: pip install -r requirements/lock.txt --force-reinstall"
import torch, torchvision
from torchvision.ops import nms
nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
EOF

# --- 3. mmcv with compiled ops -----------------------------------------------------------------
torch_version=$("$py" -c 'import torch; print(torch.__version__.split("+")[0])')
py_tag=$("$py" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
cache=${KDCL_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kdcl-bench/wheels}/$py_tag-torch$torch_version
if "$py" -c "import mmcv, mmcv.ops, sys; sys.exit(mmcv.__version__ != '$MMCV_VERSION')" 2>/dev/null; then
  step "mmcv $MMCV_VERSION with ops already installed"
else
  if ! ls "$cache"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
    step "compiling mmcv $MMCV_VERSION with its ops against torch $torch_version (about 10 minutes on 2 cores; cached in $cache)"
    mkdir -p "$cache"
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
      "${pip[@]}" wheel -q --no-build-isolation --no-deps -w "$cache" "mmcv==$MMCV_VERSION"
  else
    step "using the cached mmcv wheel in $cache"
  fi
  "${pip[@]}" install -q --no-deps --force-reinstall "$cache"/mmcv-"$MMCV_VERSION"-*.whl
  "$py" -c "import mmcv.ops" || die "mmcv $MMCV_VERSION was installed but its compiled ops do not load; delete $cache and run again"
fi

# --- 4. this project ---------------------------------------------------------------------------
step "installing kdcl-bench (editable)"
"${pip[@]}" install -q --no-deps --no-build-isolation -e "$root"

# --- 5. Detectron2 (optional) ------------------------------------------------------------------
if [ "$with_detectron2" = 1 ] && ! has_detectron2; then
  step "building Detectron2 from $detectron2_src (3-5 minutes on 2 cores)"
  "${pip[@]}" install -q --no-build-isolation --use-pep517 -c "$root/requirements/lock.txt" \
    -r "$root/requirements/detectron2.txt" "$detectron2_src" \
    || die "could not build Detectron2; see https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
fi

echo "$want" > "$stamp"
step "done: $("$py" -c 'import torch, torchvision; print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")')"
