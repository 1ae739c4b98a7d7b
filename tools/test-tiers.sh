#!/usr/bin/env bash
# make test:  tools/test-tiers.sh [--keep-going] TIER...
#
# Runs each test tier (a make target) in order and ends with the time each one took and its
# result, also when one failed. Without --keep-going it stops at the first failed tier (as
# make would); with it (`make --keep-going test`, what .ci/run does) every tier runs. The
# exit code is non-zero when any tier failed.
#
# test-unit is not run a second time when test-fresh passed earlier in the same run on the very
# same files: test-fresh ends with `make bpf-objects test-unit` in its fresh root, on the tracked
# files of this working tree (~150 s each). Same files means: no untracked file (test-fresh copies
# tracked files only) and no file changed since test-fresh copied them (a hash of every file git
# would list, taken before test-fresh and again before test-unit). Whenever test-fresh was not
# run, failed, or the files differ, test-unit runs as always; a skip is printed and shown in the
# table. (The interpreter differs: the fresh root's venv is Debian's python3, this tree's .venv
# may be another 3.11 — the same requirements.txt pins in both.)
set -uo pipefail

keep_going=false
if [[ ${1:-} == --keep-going ]]; then
    keep_going=true
    shift
fi

make=${MAKE:-make}
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# A hash of the content of every file test-fresh would copy or test-unit would read (tracked and
# untracked, ignored ones excepted).
tree_state() {
    git -C "$repo_root" ls-files -z --cached --others --exclude-standard |
        (cd "$repo_root" && while IFS= read -r -d '' file; do
            [[ -e $file ]] && printf '%s\0' "$file"
        done) | (cd "$repo_root" && xargs -0 -r sha256sum --) | sha256sum | cut -c1-16
}
untracked_files() {
    git -C "$repo_root" ls-files --others --exclude-standard
}

names=() seconds=() results=()
status=0
fresh_state=""   # the tree's state when a test-fresh that then passed started
for tier in "$@"; do
    started=$SECONDS
    if [[ $tier == test-unit && -n $fresh_state ]]; then
        untracked=$(untracked_files)
        if [[ -z $untracked && $(tree_state) == "$fresh_state" ]]; then
            echo "test-tiers: test-unit skipped: test-fresh ran it on these very files (state $fresh_state) and passed"
            names+=("$tier") seconds+=(0) results+=("skipped: test-fresh ran it and passed")
            continue
        fi
        if [[ -n $untracked ]]; then
            echo "test-tiers: test-unit runs again: untracked files, which test-fresh did not copy"
        else
            echo "test-tiers: test-unit runs again: files changed since test-fresh copied them"
        fi
    fi
    if [[ $tier == test-fresh ]]; then
        state_before=$(tree_state)
    fi
    "$make" --no-print-directory "$tier"
    rc=$?
    names+=("$tier")
    seconds+=($((SECONDS - started)))
    if ((rc == 0)); then
        results+=(passed)
        [[ $tier == test-fresh ]] && fresh_state=$state_before
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
