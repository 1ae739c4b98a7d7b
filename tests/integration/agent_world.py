"""The agent's integration world: the real xdp_edge program, its maps pinned in a private bpffs,
and a game server in a "backend" namespace that the POP reaches by a /32 route.

    [POP ns, EdgeEnv topology: up0 10.0.0.1 = tunnel address]  ag0 10.200.0.1/30
         route 198.51.100.10/32 via 10.200.0.2   (stands in for the IPIP tunnel route)
    [backend ns] ag0b 10.200.0.2/30, 198.51.100.10/32 on lo: tests/a2s_responder.py

This host's kernel has no ipip (DESIGN.md), so the veth route stands in for the tunnel: what
the agent relies on is only that the kernel routes the service address to the backend.
The calling thread is moved into the POP namespace (EdgeEnv does that for BPF_PROG_TEST_RUN's
FIB lookups); the responder runs as a subprocess in the backend namespace, so stopping the game
server is killing that process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent.parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import pytest  # noqa: E402  pylint: disable=wrong-import-position

from a2s_responder import AGENT_DIR  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import
from bpf.scenario import setup_pop  # noqa: E402  pylint: disable=wrong-import-position
from harness import topology as topo  # noqa: E402  pylint: disable=wrong-import-position
from harness.edge_env import EdgeEnv  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.anycast.edge.plugins.module_utils import _pins  # noqa: E402  pylint: disable=wrong-import-position

IFACE = topo.UPLINK
SERVICE_ADDRESS = "198.51.100.10"
SERVICE_PORT = 27015
POP_LINK = "10.200.0.1"
BACKEND_LINK = "10.200.0.2"


@pytest.fixture(scope="module")
def world(repo_root, tmp_path_factory):
    """The test module's AgentWorld (a module imports this fixture by name)."""
    yield from AgentWorld.serving(repo_root, tmp_path_factory.mktemp("agent"))


def scenario_pop(world):
    """``world`` with its program's maps emptied and the scenario's POP set up (bpf.scenario)."""
    world.edge.reset()
    setup_pop(world.edge)
    return world


def run(*argv, check=True):
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if check and done.returncode:
        raise AssertionError("%s failed: %s%s" % (" ".join(argv), done.stdout, done.stderr))
    return done


class AgentWorld:
    def __init__(self, object_path: str, workdir: Path):
        tag = uuid.uuid4().hex[:6]
        self.workdir = workdir
        self.pin_root = str(workdir / "pins")
        self.backend_ns = "aedge-agent-bk-" + tag
        self.edge = None
        self.responder = None
        self._mounted = False
        self._object_path = object_path
        self._pop_ns = "aedge-agent-pop-" + tag

    @classmethod
    def serving(cls, repo_root: Path, workdir: Path):
        """A module fixture's body (``yield from AgentWorld.serving(...)``): build/xdp_edge.o made
        up to date, a world started on it, yielded, and stopped after the module's tests."""
        subprocess.run(["make", "--no-print-directory", "build/xdp_edge.o"], cwd=repo_root, check=True,
                       capture_output=True)
        world = cls(str(repo_root / "build" / "xdp_edge.o"), workdir).start()
        try:
            yield world
        finally:
            world.stop()

    def start(self) -> "AgentWorld":
        try:
            os.makedirs(self.pin_root)
            run("mount", "-t", "bpf", "-o", "mode=700", "bpf", self.pin_root)
            self._mounted = True
            self.edge = EdgeEnv.start(self._object_path, netns=self._pop_ns)
            self._pin()
            self._backend()
        except BaseException:
            self.stop()
            raise
        return self

    def _pin(self):
        """Pin like xdp_program does: <pin_root>/<iface>/program and maps/<name>."""
        os.makedirs(_pins.maps_dir(self.pin_root, IFACE))
        self.edge.prog.pin(_pins.program_pin_path(self.pin_root, IFACE))
        for name, bpf_map in self.edge.maps.items():
            bpf_map.pin(_pins.map_pin_path(self.pin_root, IFACE, name))

    def _backend(self):
        run("ip", "netns", "add", self.backend_ns)
        run("ip", "-n", self.backend_ns, "link", "set", "lo", "up")
        run("ip", "-n", self._pop_ns, "link", "add", "ag0", "type", "veth", "peer", "name", "ag0b",
            "netns", self.backend_ns)
        run("ip", "-n", self._pop_ns, "addr", "add", POP_LINK + "/30", "dev", "ag0")
        run("ip", "-n", self._pop_ns, "link", "set", "ag0", "up")
        run("ip", "-n", self.backend_ns, "addr", "add", BACKEND_LINK + "/30", "dev", "ag0b")
        run("ip", "-n", self.backend_ns, "addr", "add", SERVICE_ADDRESS + "/32", "dev", "lo")
        run("ip", "-n", self.backend_ns, "link", "set", "ag0b", "up")
        run("ip", "-n", self.backend_ns, "route", "add", topo.POP_TUNNEL_ADDR + "/32", "via", POP_LINK)
        run("ip", "-n", self._pop_ns, "route", "add", SERVICE_ADDRESS + "/32", "via", BACKEND_LINK)

    def start_game_server(self, *flags: str) -> None:
        self.responder = subprocess.Popen(
            ["ip", "netns", "exec", self.backend_ns, sys.executable, str(TESTS_DIR / "a2s_responder.py"),
             SERVICE_ADDRESS, str(SERVICE_PORT), *flags],
            stdout=subprocess.PIPE, text=True)
        assert self.responder.stdout.readline().strip() == "ready"

    def stop_game_server(self) -> None:
        if self.responder is not None:
            self.responder.terminate()
            self.responder.wait(timeout=10)
            self.responder.stdout.close()
            self.responder = None

    def stop(self) -> None:
        self.stop_game_server()
        if self.edge is not None:
            self.edge.stop()
            self.edge = None
        run("ip", "netns", "del", self.backend_ns, check=False)
        if self._mounted:
            run("umount", "-l", self.pin_root, check=False)
            self._mounted = False


def wait_until(predicate, what, timeout=15.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
