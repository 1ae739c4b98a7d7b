#!/usr/bin/env bash
# make test:  tools/test-tiers.sh [--keep-going] TIER...
#
# Runs each test tier (a make target) in order and ends with the time each one took and its
# result, also when one failed. Without --keep-going it stops at the first failed tier (as
# make would); with it (`make --keep-going test`, what .ci/run does) every tier runs. The
# exit code is non-zero when any tier failed.
set -uo pipefail

keep_going=false
if [[ ${1:-} == --keep-going ]]; then
    keep_going=true
    shift
fi

make=${MAKE:-make}
names=() seconds=() results=()
status=0
for tier in "$@"; do
    started=$SECONDS
    "$make" --no-print-directory "$tier"
    rc=$?
    names+=("$tier")
    seconds+=($((SECONDS - started)))
    if ((rc == 0)); then
        results+=(passed)
    else
        results+=("FAILED (exit $rc)")
        status=1
        $keep_going || break
    fi
done

echo "test tiers:"
total=0
for i in "${!names[@]}"; do
    printf '  %-18s %5d s  %s\n' "${names[i]}" "${seconds[i]}" "${results[i]}"
    total=$((total + seconds[i]))
done
for tier in "${@:${#names[@]}+1}"; do
    printf '  %-18s %5s    %s\n' "$tier" - "not run (an earlier tier failed)"
done
printf '  %-18s %5d s\n' total "$total"
exit "$status"
