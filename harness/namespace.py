"""A network namespace that the test process's thread steps into.

BPF_PROG_TEST_RUN resolves bpf_fib_lookup and ingress devices in the caller's namespace, so the
BPF tier builds its little worlds (harness/topology.py, the mapper's host) in a namespace of
its own and runs the programs from inside it. Commands started meanwhile (`ip ...`) inherit it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace open as ``fd``."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "setns: " + os.strerror(err))


@contextlib.contextmanager
def inside(name: str):
    """Run the block with this thread in the named namespace (`ip netns add NAME`), then come
    back. Sockets made inside stay in that namespace after the thread leaves."""
    original = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open("/run/netns/" + name, os.O_RDONLY)
    try:
        setns(target)
        try:
            yield
        finally:
            setns(original)
    finally:
        os.close(target)
        os.close(original)


def ip(*args: str) -> None:
    """`ip ARGS` in the current namespace; fails with ip's own message."""
    done = subprocess.run(("ip",) + args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError("ip %s: %s" % (" ".join(args), done.stderr.strip()))


class EnteredNamespace:
    """A fresh named namespace (`ip netns add`), entered by enter() and removed by leave()."""

    def __init__(self, name: str):
        self.name = name
        self._own = None
        self._original = None

    def enter(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, check=False)
        ip("netns", "add", self.name)
        self._original = os.open("/proc/self/ns/net", os.O_RDONLY)
        self._own = os.open("/run/netns/" + self.name, os.O_RDONLY)
        setns(self._own)
        ip("link", "set", "lo", "up")

    def leave(self) -> None:
        """Back to the namespace we came from; safe to call after a failed or partial enter()."""
        if self._original is not None:
            setns(self._original)
            os.close(self._original)
            self._original = None
        if self._own is not None:
            os.close(self._own)
            self._own = None
            subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, check=False)
