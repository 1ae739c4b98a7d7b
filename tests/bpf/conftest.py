"""Fixtures of the BPF tier: the compiled xdp_edge program loaded in its own namespace."""

from __future__ import annotations

import subprocess

import pytest

from harness.edge_env import EdgeEnv


@pytest.fixture(scope="session")
def xdp_edge_object(repo_root):
    """build/xdp_edge.o, (re)built by make so the tests never run a stale object."""
    subprocess.run(["make", "--no-print-directory", "build/xdp_edge.o"], cwd=repo_root, check=True)
    return str(repo_root / "build" / "xdp_edge.o")


@pytest.fixture(scope="session")
def edge_session(xdp_edge_object):
    """One loaded program for the whole session (loading it costs the verifier ~1 s)."""
    env = EdgeEnv.start(xdp_edge_object)
    yield env
    env.stop()


@pytest.fixture
def edge(edge_session):
    """The loaded program with every map emptied: a blank POP for each test."""
    edge_session.reset()
    return edge_session
