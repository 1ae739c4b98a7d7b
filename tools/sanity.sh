#!/usr/bin/env bash
# Run `ansible-test sanity` on this checkout:  tools/sanity.sh [extra ansible-test args...]
#
# ansible-test only works from inside <dir>/ansible_collections/<namespace>/<name>/, and it
# judges the files git would ship: tracked plus untracked-but-not-ignored. So we copy exactly
# those files (`git ls-files -co --exclude-standard`, minus tracked files deleted in the work
# tree) into a fresh temporary tree of that shape and run it there. The copy has no .git of its
# own; ansible-test then lists every file in it, which is the same set.
#
# ansible-test runs each sanity test in its own virtualenv under ~/.ansible/test/venv/ (cached
# across runs, so only the first run on a machine pays for the installs, from PyPI). See
# tools/ansible_test_get_pip.py for how those virtualenvs get pip without ansible-test's own
# download host.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

venv_bin="$repo_root/.venv/bin"
[[ -x $venv_bin/ansible-test ]] || {
    echo "sanity: $venv_bin/ansible-test missing; run 'make setup' first" >&2
    exit 1
}
export PATH="$venv_bin:$PATH"

namespace=$(sed -n 's/^namespace: *//p' galaxy.yml)
name=$(sed -n 's/^name: *//p' galaxy.yml)

# --- pip bootstrap stand-in, keyed by the pip version this ansible-test asks for ----------
bootstrap_pip_version=$("$venv_bin/python" - <<'EOF'
from types import SimpleNamespace
from ansible_test._internal.python_requirements import get_venv_packages
print(get_venv_packages(SimpleNamespace(version="3.11"))["pip"])
EOF
)
bootstrap_cache="$HOME/.ansible/test/cache/get_pip_${bootstrap_pip_version//./_}.py"
if [[ ! -f $bootstrap_cache ]]; then
    mkdir -p "$(dirname "$bootstrap_cache")"
    cp tools/ansible_test_get_pip.py "$bootstrap_cache"
fi

# --- the copy that ansible-test looks at ---------------------------------------------------
work_dir=$(mktemp -d -t anycast-edge-sanity.XXXXXX)
trap 'rm -rf "$work_dir"' EXIT
collection_dir="$work_dir/ansible_collections/$namespace/$name"
mkdir -p "$collection_dir"

git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' path; do
        # A tracked file deleted in the work tree is still listed by --cached.
        if [[ -e $path || -L $path ]]; then printf '%s\0' "$path"; fi
    done |
    tar --null --files-from=- --create --file=- |
    tar --extract --file=- --directory="$collection_dir"

cd "$collection_dir"
# --local: use the pinned ansible-core of .venv as the controller and install nothing into it.
# --color no: the log is read in CI output, not a terminal.
ansible-test sanity --local --python 3.11 --color no "$@"
