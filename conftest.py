"""Make this checkout importable as the collection ``anycast.edge`` during tests.

harness/collection.py makes the tree (its docstring says why); here it is put first on
``sys.path`` and exported as ``ANSIBLE_COLLECTIONS_PATH`` so that ``ansible-playbook``/``ansible-doc``
started by tests find the very same collection.
"""

from __future__ import annotations

from harness import collection

# Done at import time, not in pytest_configure: pytest imports the conftest.py of the folders
# named on its command line (tests/bpf/conftest.py, ...) before it calls pytest_configure, and
# those may import the collection at module level.
COLLECTIONS_ROOT = collection.use()


def pytest_configure(config):
    config.anycast_edge_collections_root = COLLECTIONS_ROOT


def pytest_unconfigure(config):
    collection.remove(COLLECTIONS_ROOT)
