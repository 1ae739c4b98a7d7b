#!/usr/bin/env bash
# ansible-lint (production profile, see .ansible-lint) with this checkout visible as the
# collection anycast.edge, so playbooks and roles that call anycast.edge.* modules resolve them.
# (.ansible-lint sets offline: true, so ansible-lint never installs the collection itself.)
# The collection tree lives in a temporary folder outside the checkout: a symlink back to the
# checkout inside it would be a loop for every tool that walks the tree.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
collections_root=$(mktemp -d)
trap 'rm -rf "$collections_root"' EXIT
mkdir -p "$collections_root/ansible_collections/anycast"
ln -s "$repo_root" "$collections_root/ansible_collections/anycast/edge"

cd "$repo_root"
ANSIBLE_COLLECTIONS_PATH="$collections_root" "$repo_root/.venv/bin/ansible-lint" "$@"
