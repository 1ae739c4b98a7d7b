"""Fixtures shared by every test tier (unit, bpf, integration)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The checkout's top folder."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def build_dir() -> Path:
    """Where `make` puts the compiled BPF objects (build/xdp_edge.o, ...)."""
    return REPO_ROOT / "build"


@pytest.fixture(scope="session")
def collections_root(pytestconfig) -> Path:
    """Folder holding ansible_collections/anycast/edge -> this checkout (see ../conftest.py).

    Also exported as ANSIBLE_COLLECTIONS_PATH for ansible-* subprocesses.
    """
    return pytestconfig.anycast_edge_collections_root
