"""Make this checkout importable as the collection ``anycast.edge`` during tests.

Modules and module_utils import each other as
``ansible_collections.anycast.edge.plugins...``. That only resolves when the checkout sits at
``<dir>/ansible_collections/anycast/edge``, but a clone lives wherever it was cloned. So, unless
it already sits in such a tree, we build one in a temporary folder (a symlink back to the
checkout), put it first on ``sys.path``, and export it as ``ANSIBLE_COLLECTIONS_PATH`` so that
``ansible-playbook``/``ansible-doc`` started by tests find the very same collection.

The temporary folder is outside the checkout on purpose: a symlink to the checkout inside the
checkout would be a loop for every tool that walks the tree.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent
COLLECTION_NAMESPACE = "anycast"
COLLECTION_NAME = "edge"

_temporary_tree: Path | None = None


def _collections_root() -> Path:
    """Folder that contains ``ansible_collections/anycast/edge`` pointing at this checkout."""
    global _temporary_tree
    parents = REPO_ROOT.parents
    if (
        REPO_ROOT.name == COLLECTION_NAME
        and parents[0].name == COLLECTION_NAMESPACE
        and parents[1].name == "ansible_collections"
    ):
        return parents[2]
    _temporary_tree = Path(tempfile.mkdtemp(prefix="anycast-edge-collections-"))
    namespace_dir = _temporary_tree / "ansible_collections" / COLLECTION_NAMESPACE
    namespace_dir.mkdir(parents=True)
    (namespace_dir / COLLECTION_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    return _temporary_tree


# Done at import time, not in pytest_configure: pytest imports the conftest.py of the folders
# named on its command line (tests/bpf/conftest.py, ...) before it calls pytest_configure, and
# those may import the collection at module level.
COLLECTIONS_ROOT = _collections_root()
sys.path.insert(0, str(COLLECTIONS_ROOT))
os.environ["ANSIBLE_COLLECTIONS_PATH"] = str(COLLECTIONS_ROOT)


def pytest_configure(config):
    config.anycast_edge_collections_root = COLLECTIONS_ROOT


def pytest_unconfigure(config):
    if _temporary_tree is not None:
        shutil.rmtree(_temporary_tree, ignore_errors=True)
