"""The fleet guard under simultaneous decisions: POPs whose backends all fail at once decide to
withdraw at the same instant, and the fleet still never has fewer than ``min_announcing_peers``
announcing POPs, while the POP that may go (the lowest name) does go.

Everything is real but the clock of the failure: one real BIRD 2 per POP (each in its own network
namespace, holding the anycast static protocol), each POP a real ``Agent`` of the agent package
(its FleetGuard and Announcer, its exporter serving on 127.0.0.1), reading the others' exporters
over HTTP. A barrier releases every POP's ``Announcer.apply(WITHDRAW)`` at the same instant (what
``decide_once`` calls when the backends are down), many times over. The only addition is a
recorder around each POP's real Birdc that timestamps every change BIRD made, from which the
number of announcing POPs is known at every instant.

Before the intent/settle protocol (check-then-act) two POPs deciding together both saw the
other announcing and both withdrew: the fleet was empty in most rounds of the first test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import uuid

import pytest

# agent_world puts the agent's package on sys.path.
import agent_world  # noqa: F401  pylint: disable=unused-import
from anycast_edge_agent import config as agent_config
from anycast_edge_agent import health
from anycast_edge_agent.main import Agent

from ansible_collections.anycast.edge.plugins.module_utils._birdc import Birdc

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BIRD in network namespaces needs root")

PROTOCOL = "anycast_edge_announce"
BIRD_CONFIG = """\
router id 10.99.0.{index};
protocol device {{}}
protocol static {protocol} {{
  ipv4;
  route 198.51.100.0/24 blackhole;
}}
"""


def run(*argv, check=True):
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=30)


class RecordingBirdc:
    """The POP's real Birdc; every change it made BIRD do is timestamped (monotonic)."""

    def __init__(self, birdc, name, timeline, lock):
        self.birdc = birdc
        self.name = name
        self.timeline = timeline
        self.lock = lock

    def set_protocol(self, name, enabled):
        changed = self.birdc.set_protocol(name, enabled)
        with self.lock:
            self.timeline.append((time.monotonic(), self.name, enabled))
        return changed


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Fleet:
    def __init__(self, workdir, names):
        self.workdir = workdir
        self.names = names
        self.tag = uuid.uuid4().hex[:6]
        self.namespaces, self.pidfiles, self.servers = [], [], []
        self.birdcs, self.agents = {}, {}
        self.timeline, self.lock = [], threading.Lock()
        self.ports = {name: free_port() for name in names}

    def start(self, min_announcing, settle_sec=0.4, jitter_sec=0.05, timeout_sec=0.15):
        for index, name in enumerate(self.names, 1):
            ns = "aefleet-%s-%s" % (self.tag, name)
            run("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            folder = self.workdir / name
            folder.mkdir()
            (folder / "bird.conf").write_text(BIRD_CONFIG.format(index=index, protocol=PROTOCOL))
            pidfile = folder / "bird.pid"
            run("ip", "netns", "exec", ns, "bird", "-c", str(folder / "bird.conf"), "-s", str(folder / "bird.ctl"),
                "-P", str(pidfile))
            self.pidfiles.append(pidfile)
            deadline = time.monotonic() + 10
            while not (folder / "bird.ctl").exists():
                assert time.monotonic() < deadline, "BIRD of %s did not start" % name
                time.sleep(0.05)
            self.birdcs[name] = Birdc(str(folder / "bird.ctl"))
        for name in self.names:
            config = agent_config.parse({
                "iface": "lo", "tunnel_address": "127.0.0.1", "listen_address": "127.0.0.1",
                "listen_port": self.ports[name], "pin_root": str(self.workdir / "no-pins"),
                "pop_name": name, "check_dataplane": False,
                "bird_socket": str(self.workdir / name / "bird.ctl"),
                "drain_state_file": str(self.workdir / name / "drain_state"),
                "fleet_peers": ["http://127.0.0.1:%d/metrics" % self.ports[peer] for peer in self.names if peer != name],
                "min_announcing_peers": min_announcing,
                "fleet_settle_sec": settle_sec, "fleet_jitter_sec": jitter_sec, "fleet_timeout_sec": timeout_sec,
            })
            agent = Agent(config, birdc=RecordingBirdc(self.birdcs[name], name, self.timeline, self.lock))
            self.servers.append(agent.serve_metrics())
            self.agents[name] = agent
        return self

    def stop(self):
        for server, thread in self.servers:
            server.shutdown()
            thread.join()
        for pidfile in self.pidfiles:
            try:
                os.kill(int(pidfile.read_text()), 15)
            except (OSError, ValueError):
                pass
        time.sleep(0.2)
        for ns in self.namespaces:
            run("ip", "netns", "del", ns, check=False)

    def announcing(self):
        """Names of the POPs whose BIRD has the anycast protocol up, as BIRD itself says."""
        return {name for name, birdc in self.birdcs.items() if birdc.protocol(PROTOCOL)["state"] == "up"}

    def all_announce(self):
        for name in self.names:
            self.birdcs[name].set_protocol(PROTOCOL, True)
            self.agents[name].announcer.announced = True
        assert self.announcing() == set(self.names)
        with self.lock:
            self.timeline.clear()

    def everyone_withdraws_at_once(self, who):
        """Every POP of ``who`` calls Announcer.apply(WITHDRAW) at the same instant."""
        barrier = threading.Barrier(len(who))
        errors = []

        def decide(name):
            try:
                barrier.wait()
                self.agents[name].announcer.apply(health.WITHDRAW)
            except Exception as exc:  # pylint: disable=broad-except
                errors.append(exc)

        threads = [threading.Thread(target=decide, args=(name,)) for name in who]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not errors, errors

    def fewest_announcing(self):
        """The least number of POPs announcing at any instant of the round (from the timeline)."""
        up = set(self.names)
        fewest = len(up)
        with self.lock:
            events = sorted(self.timeline)
        for dummy, name, enabled in events:
            if enabled:
                up.add(name)
            else:
                up.discard(name)
            fewest = min(fewest, len(up))
        return fewest


@pytest.fixture
def fleet(tmp_path):
    fleets = []

    def make(names, min_announcing, **timing):
        made = Fleet(tmp_path, names)
        fleets.append(made)
        return made.start(min_announcing, **timing)

    yield make
    for made in fleets:
        made.stop()


ROUNDS = 20


def eventually_withdrawn(pops, name, decisions=3):
    """The POP that may go goes, at the latest within a few more decisions (a round where its
    reads were slower than the protocol allows makes it defer, never act on stale answers)."""
    for dummy in range(decisions):
        if name not in pops.announcing():
            return
        pops.agents[name].announcer.apply(health.WITHDRAW)


def test_two_pops_deciding_at_once_leave_one_announcing(fleet):
    pops = fleet(["pop-a", "pop-b"], min_announcing=1)
    for dummy in range(ROUNDS):
        pops.all_announce()
        pops.everyone_withdraws_at_once(["pop-a", "pop-b"])
        assert pops.fewest_announcing() >= 1, pops.timeline
        eventually_withdrawn(pops, "pop-a")
        # The tie-break: the lower name goes first, the other defers and then is the last one.
        assert pops.announcing() == {"pop-b"}
        # Its next decisions (backends still down) keep it: the fleet guard refuses.
        pops.agents["pop-b"].announcer.apply(health.WITHDRAW)
        assert pops.announcing() == {"pop-b"}
        assert pops.fewest_announcing() >= 1


def test_three_pops_two_failing_at_once_keep_the_minimum(fleet):
    pops = fleet(["pop-a", "pop-b", "pop-c"], min_announcing=2)
    for dummy in range(ROUNDS // 2):
        pops.all_announce()
        pops.everyone_withdraws_at_once(["pop-b", "pop-c"])
        assert pops.fewest_announcing() >= 2, pops.timeline
        eventually_withdrawn(pops, "pop-b")
        assert pops.fewest_announcing() >= 2, pops.timeline
        assert pops.announcing() == {"pop-a", "pop-c"}  # pop-b goes first, pop-c stays: 2 others needed


def test_a_withdrawn_pop_announces_again_when_the_fleet_falls_below_the_minimum(fleet):
    pops = fleet(["pop-a", "pop-b"], min_announcing=1)
    pops.all_announce()
    pops.agents["pop-a"].announcer.apply(health.WITHDRAW)
    assert pops.announcing() == {"pop-b"}
    # pop-b goes away behind the guard's back (an operator, a crash of its BIRD session, ...):
    pops.birdcs["pop-b"].set_protocol(PROTOCOL, False)
    pops.agents["pop-b"].announcer.announced = False
    # pop-a's next decision (backends still down) re-checks the fleet and comes back.
    pops.agents["pop-a"].announcer.apply(health.WITHDRAW)
    assert pops.announcing() == {"pop-a"}
