"""Network namespaces and veth pairs for tests; nothing here touches the host's own links.

A NetNs is created with ``ip netns add`` (so ``ip netns exec`` and ``ip -n`` can use it) and
deleted with everything inside it (veths, qdiscs, XDP programs) by ``delete()``.
``entered()`` moves the calling thread into the namespace for a block: sockets made there stay
in the namespace after the thread leaves, which is how tests send and capture from Python.
"""

from __future__ import annotations

import contextlib
import subprocess
import uuid

from harness import namespace


def run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a command; on failure the exception text includes its stderr."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError("%s failed (rc %d):\n%s%s" % (" ".join(argv), done.returncode,
                                                           done.stdout, done.stderr))
    return done


def terminate(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Stop a child process the test started: SIGTERM, and SIGKILL if it is still there after
    ``timeout`` seconds; reaped either way. Nothing if it has ended already."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class NetNs:
    def __init__(self, label: str):
        self.name = "aedge-it-%s-%s" % (label, uuid.uuid4().hex[:6])
        run("ip", "netns", "add", self.name)
        self.ip("link", "set", "lo", "up")

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run("ip", "-n", self.name, *args, check=check)

    def exec(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", self.name, *argv, check=check, timeout=timeout)

    def sysctl(self, key: str, value: str) -> None:
        self.exec("sysctl", "-qw", "%s=%s" % (key, value))

    @contextlib.contextmanager
    def entered(self):
        """Run the block (in this thread) inside the namespace."""
        with namespace.inside(self.name):
            yield self

    def delete(self) -> None:
        run("ip", "netns", "delete", self.name, check=False)


def veth(ns_a: NetNs, name_a: str, ns_b: NetNs, name_b: str) -> None:
    """A veth pair with one end in each namespace (the same namespace twice is fine), both up."""
    ns_a.ip("link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b.name)
    ns_a.ip("link", "set", name_a, "up")
    ns_b.ip("link", "set", name_b, "up")


def link_mac(ns: NetNs, dev: str) -> str:
    out = ns.ip("-o", "link", "show", dev).stdout
    return out.split("link/ether", 1)[1].split()[0]
