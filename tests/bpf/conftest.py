"""Fixtures of the BPF tier: the compiled xdp_edge program loaded in its own namespace."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _bpf

from harness.edge_env import EdgeEnv

from .scenario import setup_pop


@pytest.fixture(scope="session")
def edge_session(xdp_edge_object):
    """One loaded program for the whole session (loading it costs the verifier ~1 s)."""
    with EdgeEnv.running(xdp_edge_object) as env:
        yield env


@pytest.fixture
def edge(edge_session):
    """The loaded program with every map emptied: a blank POP for each test."""
    edge_session.reset()
    return edge_session


@pytest.fixture
def one_cpu():
    """Every test run of the test on one CPU (a test run executes on the calling CPU): for state
    the kernel keeps per CPU - the next-hop cache and the admission buckets (per-CPU maps), and the
    LRU maps' per-CPU lists of recently added entries, which only that CPU's own additions hand back
    to the shared LRU (an entry added on another CPU than a flood's escapes the flood's eviction)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    yield
    os.sched_setaffinity(0, before)


@pytest.fixture
def pop(edge):
    """A blank POP set up as scenario.setup_pop does: the anycast prefix, services, backends."""
    setup_pop(edge)
    return edge


@pytest.fixture(scope="session")
def fixture_program(tmp_path_factory, bpf_cflags, repo_root):
    """load(source) -> a C fixture program compiled with the Makefile's flags and loaded (the
    verifier accepts it); closed at the end of the session."""
    loaded = []

    def load(source: Path):
        target = tmp_path_factory.mktemp(source.stem) / (source.stem + ".o")
        subprocess.run(["clang", *bpf_cflags, "-c", str(source), "-o", str(target)], cwd=repo_root,
                       check=True, capture_output=True, text=True)
        obj = _bpf.BpfObject.open(target)
        loaded.append(obj)
        obj.load()
        return obj

    yield load
    for obj in loaded:
        obj.close()
