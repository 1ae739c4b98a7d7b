"""playbooks/status.yml against a POP in a network namespace: the table's row says what the
maps, the kernel, BIRD and nats-server say.

The POP of helpers/edge_lab.py with xdp_edge attached (xdp_program) and its rules; a BIRD in the
POP's namespace announcing through a BGP session to a BIRD in the world's namespace; a three-server
nats-server cluster in the POP's namespace (its first server is "the POP's"). Players in the
world send paced datagrams: an allowed player's forwarded, a denied player's dropped. One service
is put in attack mode in edge_attack_state. Then the POP loses its program, its announcement
and its nats-server, and the table says so.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from helpers import edge_lab as topo
from helpers.nats_cluster import NatsCluster
from helpers.playbook import recap_counts
from test_xdp_edge_role import inventory

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils._pins import open_pinned_maps

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF, bpffs and namespaces need root")

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
FORWARDED_PPS = 200
DENIED_PPS = 100

POP_BIRD = """\
router id {pop};
protocol device {{}}
protocol static anycast_edge_announce {{ ipv4; route {prefix} blackhole; }}
protocol bgp upstream {{
  local {pop} as 64500; neighbor {router} as 64600;
  connect retry time 1; hold time 6; keepalive time 2;
  ipv4 {{ import none; export where proto = "anycast_edge_announce"; }};
}}
"""
WORLD_BIRD = """\
router id {router};
protocol device {{}}
protocol bgp pop {{
  local {router} as 64600; neighbor {pop} as 64500;
  connect retry time 1; hold time 6; keepalive time 2;
  ipv4 {{ import all; export none; }};
}}
"""


class Bird:
    """A BIRD in a namespace with its own config, socket and pid file (killed by its pid)."""

    def __init__(self, namespace, folder: Path, config: str):
        folder.mkdir(parents=True)
        (folder / "bird.conf").write_text(config)
        self.socket = folder / "bird.ctl"
        self.pidfile = folder / "bird.pid"
        subprocess.run(["ip", "netns", "exec", namespace.name, "bird", "-c", str(folder / "bird.conf"),
                        "-s", str(self.socket), "-P", str(self.pidfile)], check=True, capture_output=True)
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            assert time.monotonic() < deadline, "BIRD did not start"
            time.sleep(0.05)

    def birdc(self, *command):
        return subprocess.run(["birdc", "-s", str(self.socket), *command], capture_output=True, text=True,
                              check=False).stdout

    def stop(self):
        try:
            os.kill(int(self.pidfile.read_text()), signal.SIGTERM)
        except (OSError, ValueError):
            pass


class Sender(threading.Thread):
    """Datagrams from ``source`` to the service at ``pps`` from the world namespace, until stopped."""

    def __init__(self, world, source, pps):
        super().__init__(daemon=True)
        with world.entered():
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))
        self.pps = pps
        self.stopping = threading.Event()

    def run(self):
        started = time.monotonic()
        sent = 0
        while not self.stopping.is_set():
            due = int((time.monotonic() - started) * self.pps)
            for dummy in range(due - sent):
                self.sock.sendto(b"x" * 22, (topo.SERVICE[1], topo.SERVICE[2]))
            sent = max(sent, due)
            time.sleep(0.005)
        self.sock.close()


def status_row(namespace, inventory_path, *extra):
    """The cells of pop1's row of the table status.yml prints, and how many tasks changed."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0",
               PATH="%s:%s" % (VENV_BIN, os.environ.get("PATH", "")))
    done = subprocess.run(["ip", "netns", "exec", namespace.name, str(VENV_BIN / "ansible-playbook"),
                           "-i", str(inventory_path), str(REPO / "playbooks" / "status.yml"), *extra],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    header = re.search(r'^\s*"POP\s+announced\s+XDP.*",?$', output, re.M)
    row = re.search(r'^\s*"(pop1 .*?)",?$', output, re.M)
    assert header and row, output
    changed = recap_counts(output)["pop1"]["changed"]
    return re.split(r"\s{2,}", row.group(1).strip()), changed, output


def test_the_status_table_says_what_the_pop_is(edge_lab, xdp_edge_object, pin_root, tmp_path):
    edge_lab.attach_with_rules(xdp_edge_object, pin_root, tmp_path / "attach")
    inv = inventory(tmp_path, pin_root, deny=[])   # its pop1 is this lab's POP (up0, 10.0.0.1)
    data = yaml.safe_load(inv.read_text())
    data["all"]["vars"]["anycast_edge_services"][0].update(id=topo.SERVICE_ID, name="cs2")
    inv.write_text(yaml.safe_dump(data))

    # The service is under attack (the agent's switch, written as the agent writes it).
    with open_pinned_maps(pin_root, topo.POP_IFACE, ("edge_attack_state",)) as maps:
        maps["edge_attack_state"].update(abi.U32.pack(topo.SERVICE_ID), abi.ATTACK_STATE.pack(1, 0))

    names = dict(pop=topo.POP_ADDRESS, router=topo.ROUTER_ADDRESS, prefix=topo.ANYCAST_PREFIX)
    pop_bird = Bird(edge_lab.pop, tmp_path / "bird-pop", POP_BIRD.format(**names))
    world_bird = Bird(edge_lab.world, tmp_path / "bird-world", WORLD_BIRD.format(**names))
    (tmp_path / "nats").mkdir()
    with edge_lab.pop.entered():
        cluster = NatsCluster(tmp_path / "nats", size=3).start()
    senders = [Sender(edge_lab.world, topo.ALLOWED_PLAYER, FORWARDED_PPS),
               Sender(edge_lab.world, topo.DENIED_PLAYER, DENIED_PPS)]
    try:
        deadline = time.monotonic() + 60
        while "Established" not in pop_bird.birdc("show", "protocols", "upstream"):
            assert time.monotonic() < deadline, pop_bird.birdc("show", "protocols", "all")
            time.sleep(0.5)
        assert topo.ANYCAST_PREFIX in world_bird.birdc("show", "route")     # announced, as BIRD sees it
        for sender in senders:
            sender.start()
        extra = ["-e", "anycast_edge_bird_socket=%s" % pop_bird.socket, "-e", "anycast_edge_status_interval=2",
                 "-e", "anycast_edge_status_nats_monitor_url=http://127.0.0.1:%d" % cluster.monitor_ports[0]]
        deadline = time.monotonic() + 30
        while True:     # the cluster's routes come up in a second or two
            row, changed, output = status_row(edge_lab.pop, inv, *extra)
            if row[-1].startswith("2:") or time.monotonic() > deadline:
                break
        assert changed == 0, output
        pop, announced, xdp, attack, pps_in, pps_out, drops, peers = row
        assert (pop, announced, xdp, attack) == ("pop1", "yes (1 BGP)", "attached", "ATTACK: cs2"), row
        # The paced players: forwarded in, denied dropped (rates of this test's own traffic, loosely:
        # a shared 2-core machine paces them late, never early).
        assert 0.5 * FORWARDED_PPS <= float(pps_in) <= 1.2 * FORWARDED_PPS, row
        assert pps_out == "0", row                                   # no backend answers
        reason, rate = drops.split()
        assert reason == "drop_deny" and 0.5 * DENIED_PPS <= float(rate) <= 1.2 * DENIED_PPS, row
        assert peers == "2: 127.0.0.1, 127.0.0.1", row             # the other two servers (2.9 names no route's server)

        # The POP loses its program, its announcement and its nats-server: the table says so.
        edge_lab.pop.ip("link", "set", "dev", topo.POP_IFACE, "xdp", "off")
        pop_bird.birdc("disable", "anycast_edge_announce")
        cluster.kill(0)
        row, changed, output = status_row(edge_lab.pop, inv, *extra)
        assert row[:4] == ["pop1", "no (announce down)", "NOT attached", "ATTACK: cs2"], row
        assert row[-1] == "?", row
    finally:
        for sender in senders:
            sender.stopping.set()
        cluster.stop()
        pop_bird.stop()
        world_bird.stop()
