"""Fixtures of the integration tier: modules run by real ansible-playbook against real kernel
state in network namespaces (see helpers/)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# The helpers package sits beside this file; pytest puts this folder on sys.path for the
# test modules (rootdir-relative "prepend" import mode), and this makes it so for conftest too.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers.bpffs import private_bpffs  # noqa: E402  pylint: disable=wrong-import-position
from helpers.edge_lab import EdgeLab  # noqa: E402  pylint: disable=wrong-import-position
from helpers.netns import NetNs  # noqa: E402  pylint: disable=wrong-import-position

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _needs_root():
    if os.geteuid() != 0:
        pytest.skip("the integration tier needs root (BPF, netlink, namespaces)")


@pytest.fixture(scope="session")
def fixture_object(tmp_path_factory, bpf_cflags):
    """compile(name, *defines) -> path of tests/integration/fixtures/<name>.c compiled with
    the Makefile's flags plus ``-D<define>`` for each define (cached per combination)."""
    folder = tmp_path_factory.mktemp("fixture-objects")
    compiled = {}

    def compile_fixture(name: str, *defines: str) -> str:
        key = (name,) + defines
        if key not in compiled:
            output = folder / ("%s%s.o" % (name, "".join("-" + d.replace("=", "_") for d in defines)))
            argv = ["clang"] + bpf_cflags + ["-D" + d for d in defines] + \
                ["-c", str(FIXTURES / (name + ".c")), "-o", str(output)]
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            assert done.returncode == 0, done.stderr
            compiled[key] = str(output)
        return compiled[key]

    return compile_fixture


@pytest.fixture
def pin_root(tmp_path):
    """A private bpffs for this test's pins (never the host's /sys/fs/bpf)."""
    _needs_root()
    with private_bpffs(tmp_path / "bpffs") as folder:
        yield str(folder)


@pytest.fixture
def netns():
    """make(label) -> a fresh NetNs; all deleted after the test."""
    _needs_root()
    made = []

    def make(label: str) -> NetNs:
        made.append(NetNs(label))
        return made[-1]

    yield make
    for namespace in made:
        namespace.delete()


@pytest.fixture
def edge_lab(fixture_object):
    """The POP/world namespaces of helpers/edge_lab.py (nothing attached to the POP yet)."""
    _needs_root()
    lab = EdgeLab(fixture_object("xdp_pass"))
    yield lab
    lab.delete()
