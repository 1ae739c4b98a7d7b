#!/usr/bin/env bash
# ansible-lint (production profile, see .ansible-lint) with this checkout visible as the
# collection anycast.edge, so playbooks and roles that call anycast.edge.* modules resolve them.
# (.ansible-lint sets offline: true, so ansible-lint never installs the collection itself.)
# The collection tree is made by harness/collection.py (the one place; its docstring says why
# it lives outside the checkout), in a temporary folder removed on exit.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
temporary=$(mktemp -d)
trap 'rm -rf "$temporary"' EXIT

cd "$repo_root"
collections_root=$("$repo_root/.venv/bin/python" -m harness.collection "$temporary")
ANSIBLE_COLLECTIONS_PATH="$collections_root" "$repo_root/.venv/bin/ansible-lint" "$@"
