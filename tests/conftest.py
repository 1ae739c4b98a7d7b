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
def tc_wireguard_redirect_object() -> str:
    """build/tc_wireguard_redirect.o, the POP's uplink TC ingress for WireGuard forwards (make_object)."""
    return make_object("tc_wireguard_redirect")


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


# `--file-durations=N` (the Makefile's test tiers pass it): after the run, the N test files that
# took longest (setup, call and teardown of their tests summed), so that a slow tier shows where
# its time went; pytest's own --durations names single tests, not a file's shared set-ups.
# (A session fixture's set-up counts for the file of the first test that uses it.)
_SECONDS_BY_FILE: dict = {}


def pytest_addoption(parser):
    parser.addoption("--file-durations", type=int, default=0, metavar="N",
                     help="list the N slowest test files at the end (default 0: none)")


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    _SECONDS_BY_FILE[path] = _SECONDS_BY_FILE.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter, config):
    count = config.getoption("--file-durations")
    if count <= 0 or not _SECONDS_BY_FILE:
        return
    terminalreporter.write_sep("=", "slowest %d test files" % count)
    for path, seconds in sorted(_SECONDS_BY_FILE.items(), key=lambda item: -item[1])[:count]:
        terminalreporter.write_line("%8.2fs %s" % (seconds, path))
    terminalreporter.write_line("%8.2fs in all, %d files" % (sum(_SECONDS_BY_FILE.values()), len(_SECONDS_BY_FILE)))
