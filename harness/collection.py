"""This checkout as the collection ``anycast.edge``, for imports and for ansible-* commands.

Modules and module_utils import each other as ``ansible_collections.anycast.edge.plugins...``.
That resolves only when the checkout sits at ``<root>/ansible_collections/anycast/edge``, but a
clone lives wherever it was cloned. So, unless it already sits in such a tree, a tree is made
whose ``edge`` is a symlink back to the checkout. The tree is outside the checkout on purpose: a
symlink to the checkout inside the checkout would be a loop for every tool that walks the tree.

The one place the tree is made: the tests' conftest.py, the bench's entry points and the lab's
labctl.py call ``collections_root`` (tools/ansible-lint.sh through ``python -m harness.collection``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
NAMESPACE, NAME = "anycast", "edge"
_TEMPORARY_PREFIX = "anycast-edge-collections-"


def own_tree() -> Path | None:
    """The root of the collections tree the checkout itself sits in, if it does."""
    parents = REPO_ROOT.parents
    if REPO_ROOT.name == NAME and parents[0].name == NAMESPACE and parents[1].name == "ansible_collections":
        return parents[2]
    return None


def collections_root(folder: str | Path | None = None) -> Path:
    """A folder holding ``ansible_collections/anycast/edge`` -> this checkout.

    The checkout's own tree if it sits in one; else ``folder`` (made, or its link repaired, so that
    repeated runs reuse it); else a new temporary folder, which ``remove`` takes away."""
    root = own_tree()
    if root is not None:
        return root
    root = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix=_TEMPORARY_PREFIX))
    link = root / "ansible_collections" / NAMESPACE / NAME
    if not link.is_symlink() or link.resolve() != REPO_ROOT:
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    return root


def use(folder: str | Path | None = None) -> Path:
    """``collections_root(folder)``, first on sys.path and exported as ANSIBLE_COLLECTIONS_PATH
    (so that ansible-playbook, ansible-doc and modules started from here find the same collection)."""
    root = collections_root(folder)
    sys.path.insert(0, str(root))
    os.environ["ANSIBLE_COLLECTIONS_PATH"] = str(root)
    return root


def remove(root: Path) -> None:
    """Take away a temporary tree ``collections_root`` made (never the checkout's own tree, never
    a caller's folder)."""
    if root != own_tree() and root.name.startswith(_TEMPORARY_PREFIX):
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    # tools/ansible-lint.sh: a tree in the folder given (or a temporary one), its root printed.
    print(collections_root(sys.argv[1] if len(sys.argv) > 1 else None))
