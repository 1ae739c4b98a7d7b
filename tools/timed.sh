#!/usr/bin/env bash
# tools/timed.sh TIER COMMAND...: run COMMAND and append "TIER SECONDS RESULT" to
# build/tier-times, which .ci/run prints at the end (every tier, including failed ones).
set -uo pipefail
tier=$1
shift
started=$SECONDS
"$@"
status=$?
mkdir -p build
printf '%-18s %5d s  %s\n' "$tier" $((SECONDS - started)) "$( ((status == 0)) && echo ok || echo "FAILED (exit $status)")" >>build/tier-times
exit "$status"
