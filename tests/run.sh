#!/usr/bin/env bash
# The test command: creates the environment if it is missing (scripts/setup.sh), then runs the
# suite with pytest. Extra arguments go to pytest:
#   bash tests/run.sh                   # the default suite (under 10 minutes on 2 CPU cores)
#   bash tests/run.sh -m slow           # only the long, opt-in runs
#   bash tests/run.sh -m "slow or not slow"   # everything
#   bash tests/run.sh -k soft_targets   # a subset
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
cd "$root"
exec "${KDCL_VENV:-$root/.venv}/bin/python" -m pytest "$@"
