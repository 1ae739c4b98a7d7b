"""A network namespace that the test process's thread steps into, and a BPF object loaded in one.

BPF_PROG_TEST_RUN resolves bpf_fib_lookup and ingress devices in the caller's namespace, so the
BPF tier builds its little worlds (harness/topology.py, the mapper's host) in a namespace of
its own and runs the programs from inside it. Commands started meanwhile (`ip ...`) inherit it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
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


def add_veth(dev: str, mac: str, mtu: int | None = None) -> None:
    """A veth pair ``dev`` - ``dev``p, both up, ``dev`` with the MAC address ``mac`` (and ``mtu``)."""
    ip("link", "add", dev, "address", mac, *(("mtu", str(mtu)) if mtu else ()),
       "type", "veth", "peer", "name", dev + "p")
    ip("link", "set", dev + "p", "up")
    ip("link", "set", dev, "up")


def enable_forwarding(*devs: str) -> None:
    """IPv4 forwarding on for ``devs`` (and all, default): bpf_fib_lookup refuses to route
    (BPF_FIB_LKUP_RET_FWD_DISABLED) from a device without it."""
    for conf in ("all", "default") + devs:
        with open("/proc/sys/net/ipv4/conf/%s/forwarding" % conf, "w") as knob:
            knob.write("1")


class ProgramInNamespace:
    """A BPF object loaded in a namespace of its own, beside the devices a subclass builds there
    (``_build``) for its programs to see. ``start`` enters the namespace, builds and loads
    (``_load`` sets ``obj``); ``stop`` closes the object and removes the namespace."""

    NETNS_PREFIX = "aedge"

    def __init__(self, object_path: str, netns: str):
        self.object_path = object_path
        self.netns = netns
        self._namespace = EnteredNamespace(netns)
        self._owns_namespace = True
        self.obj = None

    @classmethod
    def start(cls, object_path: str, netns: str | None = None):
        env = cls(object_path, netns or "%s-%d" % (cls.NETNS_PREFIX, os.getpid()))
        try:
            env._namespace.enter()
            env._build()
            env._load()
        except BaseException:
            env.stop()
            raise
        return env

    @classmethod
    @contextlib.contextmanager
    def running(cls, object_path: str, netns: str | None = None):
        """start() for the block, stop() after it."""
        env = cls.start(object_path, netns)
        try:
            yield env
        finally:
            env.stop()

    def stop(self) -> None:
        if self.obj is not None:
            self.obj.close()
            self.obj = None
        if self._owns_namespace:
            self._namespace.leave()

    def _build(self) -> None:
        raise NotImplementedError

    def _load(self) -> None:
        raise NotImplementedError


def reason_counts(stats_map, reasons, unpack_counters) -> dict:
    """{reason: (packets, bytes)} of a per-CPU stats map indexed by reason, summed over CPUs
    (``unpack_counters``, the program's ABI's), zero reasons left out."""
    counts = {}
    for index, name in enumerate(reasons):
        totals = unpack_counters(stats_map.lookup_percpu(struct.pack("<I", index)))
        if totals[0]:
            counts[name] = totals
    return counts
