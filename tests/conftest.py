"""Fixtures shared by every test tier (unit, bpf, integration)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The checkout's top folder."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def bpf_cflags() -> list:
    """clang's flags for a BPF object, as the Makefile (their one home) builds bpf/*.c with."""
    done = subprocess.run(["make", "-s", "--no-print-directory", "print-bpf-cflags"], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=True)
    return shlex.split(done.stdout)


def make_object(name: str) -> str:
    """build/<name>.o, (re)built by make (the objects' one recipe) so that no test runs a stale object."""
    subprocess.run(["make", "--no-print-directory", "build/%s.o" % name], cwd=REPO_ROOT, check=True)
    return str(REPO_ROOT / "build" / (name + ".o"))


@pytest.fixture(scope="session")
def xdp_edge_object() -> str:
    """build/xdp_edge.o, the POP program (make_object)."""
    return make_object("xdp_edge")


@pytest.fixture(scope="session")
def tc_mapper_object() -> str:
    """build/tc_mapper.o, the backend's mapper (make_object)."""
    return make_object("tc_mapper")


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
