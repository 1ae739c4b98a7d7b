#!/usr/bin/env bash
# Run one pytest tier:  tools/pytest-tier.sh [--needs-root] TEST_DIR [pytest args...]
#
# A tier whose folder holds no tests yet passes: pytest's exit code 5 ("no tests were
# collected") and only that code is turned into success, with a line saying so. Every other
# non-zero code (failures, errors, interrupted, usage) is passed through unchanged.
# --needs-root makes a tier that manipulates kernel state (BPF, netlink, namespaces) fail
# up front with a clear message instead of with a pile of EPERMs.
set -uo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root" || exit

needs_root=false
if [[ ${1:-} == --needs-root ]]; then
    needs_root=true
    shift
fi
if (($# < 1)); then
    echo "usage: $0 [--needs-root] TEST_DIR [pytest args...]" >&2
    exit 2
fi
tier_dir=$1
shift

# git keeps no empty folders: in a fresh clone a tier without tests may have no folder at all.
if [[ ! -d $tier_dir ]]; then
    echo "pytest-tier: $tier_dir does not exist yet; the tier has no tests and passes vacuously"
    exit 0
fi

if $needs_root && ((EUID != 0)); then
    echo "pytest-tier: $tier_dir needs root (BPF, netlink, network namespaces); run it as root" >&2
    exit 1
fi

python=${PYTHON_VENV:-.venv/bin/python}
"$python" -m pytest "$tier_dir" "$@"
rc=$?
if ((rc == 5)); then
    echo "pytest-tier: no tests collected in $tier_dir yet; the tier passes vacuously"
    exit 0
fi
exit "$rc"
