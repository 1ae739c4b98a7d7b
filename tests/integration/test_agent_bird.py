"""The agent as a process in a POP namespace: backend down after `fall` probes -> BIRD withdraws
the anycast route (the upstream loses it); backend back -> announced again. XDP detached -> withdrawn.

    [upstream ns] BIRD  <-BGP->  [POP ns] BIRD + anycast-edge-agent, xdp_edge on veth-pop
                                     route 198.51.100.10/32 via the backend link (the tunnel's stand-in)
                                 [backend ns] tests/a2s_responder.py on 198.51.100.10:27015
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from agent_world import AGENT_DIR, SERVICE_ADDRESS, SERVICE_PORT, TESTS_DIR, run
from bird_lab import POP_ADDRESS, POP_ASN, UPSTREAM_ADDRESS, UPSTREAM_ASN, BirdLab
from helpers.netns import terminate

from ansible_collections.anycast.edge.plugins.module_utils import _bpf, _pins

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BIRD, BPF and namespaces need root")

PREFIX = "198.51.100.0/24"
IFACE = "veth-pop"
POP_BIRD_CONFIG = """\
router id {pop};
protocol device {{}}
protocol static anycast_edge_announce {{
  ipv4;
  route {prefix} blackhole;
}}
protocol bgp bgp_upstream {{
  local {pop} as {pop_asn};
  neighbor {upstream} as {upstream_asn};
  hold time 6; keepalive time 2; connect retry time 1;
  ipv4 {{ import none; export where proto = "anycast_edge_announce"; }};
}}
"""


@pytest.fixture(scope="module")
def lab(repo_root, tmp_path_factory):
    subprocess.run(["make", "--no-print-directory", "build/xdp_edge.o"], cwd=repo_root, check=True,
                   capture_output=True)
    workdir = tmp_path_factory.mktemp("agent-bird")
    tag = uuid.uuid4().hex[:6]
    bird_lab = BirdLab(workdir, tag).start()
    backend_ns = "aedge-agbk-" + tag
    pin_root = workdir / "pins"
    pin_root.mkdir()
    run("mount", "-t", "bpf", "-o", "mode=700", "bpf", str(pin_root))
    obj = None
    try:
        bird_lab.pop_config.write_text(POP_BIRD_CONFIG.format(
            pop=POP_ADDRESS, prefix=PREFIX, pop_asn=POP_ASN, upstream=UPSTREAM_ADDRESS, upstream_asn=UPSTREAM_ASN))
        bird_lab.birdc(bird_lab.pop_socket, "configure")
        # The real program, pinned like xdp_program pins it, attached (generic XDP) to the BGP link.
        obj = _bpf.BpfObject.open(str(repo_root / "build" / "xdp_edge.o"))
        obj.load()
        os.makedirs(_pins.maps_dir(str(pin_root), IFACE))
        program_pin = _pins.program_pin_path(str(pin_root), IFACE)
        obj.program("xdp_edge").pin(program_pin)
        for bpf_map in obj.maps():
            bpf_map.pin(_pins.map_pin_path(str(pin_root), IFACE, bpf_map.name))
        run("ip", "-n", bird_lab.pop_ns, "link", "set", "dev", IFACE, "xdpgeneric", "pinned", program_pin)
        # The backend, reached by a /32 route (what the IPIP tunnel route is on a real POP).
        run("ip", "netns", "add", backend_ns)
        run("ip", "-n", backend_ns, "link", "set", "lo", "up")
        run("ip", "-n", bird_lab.pop_ns, "link", "add", "ag0", "type", "veth", "peer", "name", "ag0b",
            "netns", backend_ns)
        run("ip", "-n", bird_lab.pop_ns, "addr", "add", "10.200.0.1/30", "dev", "ag0")
        run("ip", "-n", bird_lab.pop_ns, "link", "set", "ag0", "up")
        run("ip", "-n", backend_ns, "addr", "add", "10.200.0.2/30", "dev", "ag0b")
        run("ip", "-n", backend_ns, "addr", "add", SERVICE_ADDRESS + "/32", "dev", "lo")
        run("ip", "-n", backend_ns, "link", "set", "ag0b", "up")
        run("ip", "-n", backend_ns, "route", "add", POP_ADDRESS + "/32", "via", "10.200.0.1")
        run("ip", "-n", bird_lab.pop_ns, "route", "add", SERVICE_ADDRESS + "/32", "via", "10.200.0.2")
        bird_lab.backend_ns = backend_ns
        bird_lab.program_pin = program_pin
        bird_lab.pin_root = str(pin_root)
        yield bird_lab
    finally:
        run("ip", "netns", "del", backend_ns, check=False)
        bird_lab.stop()
        if obj is not None:
            obj.close()
        run("umount", "-l", str(pin_root), check=False)


class Process:
    """A child process in a namespace, killed by its own pid at the end."""

    def __init__(self, ns, argv, env=None, log=None):
        self.log = log
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], env=env,
                                     stdout=subprocess.PIPE if log is None else log, stderr=subprocess.STDOUT,
                                     text=True)

    def terminate(self):
        terminate(self.proc)


def start_game_server(lab):
    server = Process(lab.backend_ns, [sys.executable, str(TESTS_DIR / "a2s_responder.py"), SERVICE_ADDRESS,
                                      str(SERVICE_PORT)])
    assert server.proc.stdout.readline().strip() == "ready"
    return server


def start_agent(lab, collections_root):
    config = {
        "iface": IFACE, "pin_root": lab.pin_root, "tunnel_address": POP_ADDRESS, "listen_address": POP_ADDRESS,
        "listen_port": 19591, "anycast_prefixes": [PREFIX], "probe_interval_sec": 0.3, "probe_timeout_sec": 0.3,
        "rise": 2, "fall": 3, "bird_socket": str(lab.pop_socket),
        "drain_state_file": str(lab.workdir / "bird_drain_state"),
        "services": [{"name": "cs2-main", "id": 17, "address": SERVICE_ADDRESS, "protocol": "udp",
                      "port": SERVICE_PORT, "backend": "game1", "a2s_cache": True, "a2s_refresh_sec": 0.3,
                      "a2s_max_age_sec": 5}],
    }
    path = lab.workdir / "agent.json"
    path.write_text(json.dumps(config))
    env = dict(os.environ, PYTHONPATH="%s:%s" % (AGENT_DIR, collections_root))
    log = open(lab.workdir / "agent.log", "w")  # pylint: disable=consider-using-with
    return Process(lab.pop_ns, [sys.executable, "-m", "anycast_edge_agent", "--config", str(path)], env=env, log=log)


def announced(lab):
    return PREFIX in lab.upstream_routes()


def test_backend_down_withdraws_and_backend_up_announces_again(lab, collections_root):
    lab.wait_for(lab.session_established, "the BGP session")
    lab.wait_for(lambda: announced(lab), "the prefix at the upstream")
    server = start_game_server(lab)
    agent = start_agent(lab, collections_root)
    try:
        time.sleep(2)  # probes every 0.3 s: up after rise=2
        assert announced(lab)
        assert agent.proc.poll() is None, (lab.workdir / "agent.log").read_text()

        server.terminate()
        started = time.monotonic()
        lab.wait_for(lambda: not announced(lab), "the withdrawal after the backend stopped", timeout=15)
        # fall=3 probes 0.3 s apart, each waiting 0.3 s for its answer: not before ~1 s.
        assert time.monotonic() - started > 0.8

        server = start_game_server(lab)
        lab.wait_for(lambda: announced(lab), "the announcement after the backend came back", timeout=15)

        # The data plane check: our XDP program detached -> withdraw; attached again -> announce.
        run("ip", "-n", lab.pop_ns, "link", "set", "dev", IFACE, "xdpgeneric", "off")
        lab.wait_for(lambda: not announced(lab), "the withdrawal after XDP was detached", timeout=15)
        run("ip", "-n", lab.pop_ns, "link", "set", "dev", IFACE, "xdpgeneric", "pinned", lab.program_pin)
        lab.wait_for(lambda: announced(lab), "the announcement after XDP came back", timeout=15)
    finally:
        agent.terminate()
        server.terminate()
    log = (lab.workdir / "agent.log").read_text()
    assert "withdrawing: disabled BIRD protocol anycast_edge_announce" in log
    assert "announcing again" in log


def test_a_drained_pop_is_not_announced_by_the_agent(lab, collections_root):
    lab.birdc(lab.pop_socket, "enable", "anycast_edge_announce")
    (lab.workdir / "bird_drain_state").write_text("withdrawn\n")
    lab.birdc(lab.pop_socket, "disable", "anycast_edge_announce")  # what drain.yml does
    server = start_game_server(lab)
    agent = start_agent(lab, collections_root)
    try:
        time.sleep(3)
        assert not announced(lab)
        assert "drained by an operator" in (lab.workdir / "agent.log").read_text()
    finally:
        agent.terminate()
        server.terminate()
        (lab.workdir / "bird_drain_state").unlink()
