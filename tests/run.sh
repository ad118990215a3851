#!/usr/bin/env bash
# The test command: creates the environment if it is missing (scripts/setup.sh), then runs the
# suite with pytest. Extra arguments go to pytest:
#   bash tests/run.sh                   # the default suite (under 10 minutes on 2 CPU cores)
#   bash tests/run.sh -m slow           # only the long, opt-in runs
#   bash tests/run.sh -m "slow or not slow"   # everything
#   bash tests/run.sh -k soft_targets   # a subset
#   KDCL_TEST_WORKERS=1 bash tests/run.sh   # in one process (default: 2, pytest-xdist)
# With several workers each test file runs in one of them and torch uses one thread per
# process: much of the suite starts processes and imports libraries, which parallelises, while
# two workers with two threads each on two cores would fight over them.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
cd "$root"
workers=${KDCL_TEST_WORKERS:-2}
if [[ $workers != 1 ]]; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
  set -- -n "$workers" --dist loadfile "$@"
fi
exec "${KDCL_VENV:-$root/.venv}/bin/python" -m pytest "$@"
