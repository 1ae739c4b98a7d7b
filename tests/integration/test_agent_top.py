"""``anycast-edge top`` against real agent processes: two agents (POPs "ams" and "fra") serve the
counters of the real xdp_edge program's pinned maps, the test sends known traffic through the
program, and the numbers top prints (``--once --json``, and the screen) match the maps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi

from agent_world import AGENT_DIR, IFACE, AgentWorld, wait_until
from bpf.scenario import A2S_REQUEST, GAME, GAME_UDP_ID, PLAYER, cookie_for, player_tcp, player_udp, setup_pop

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF and namespaces need root")

POP_ADDRESS = "10.0.0.1"  # the EdgeEnv POP's uplink address: the exporters listen there
PORTS = {"ams": 19601, "fra": 19602}


@pytest.fixture(scope="module")
def world(repo_root, tmp_path_factory):
    yield from AgentWorld.serving(repo_root, tmp_path_factory.mktemp("top"))


def in_pop_ns(world, *argv):
    return ["ip", "netns", "exec", world.edge.netns, *argv]


@pytest.fixture
def agents(world, collections_root):
    """Two agent processes on the same maps (two "POPs"), by their own pids."""
    env = dict(os.environ, PYTHONPATH="%s:%s" % (AGENT_DIR, collections_root))
    processes = []
    for pop, port in PORTS.items():
        path = world.workdir / ("agent-%s.json" % pop)
        path.write_text(json.dumps({
            "iface": IFACE, "pin_root": world.pin_root, "tunnel_address": POP_ADDRESS,
            "listen_address": POP_ADDRESS, "listen_port": port, "top_clients": 3,
            # The ranking is "since the previous read of the client map", whoever scraped: read it
            # once per test (top's first reading), then reuse it.
            "top_clients_interval_sec": 60,
            "bird_manage": False, "check_dataplane": False,
            "services": [{"name": "cs2-main", "id": GAME_UDP_ID, "address": GAME, "protocol": "udp",
                          "port": 27015, "backend": "game1", "probe": "none"}]}))
        log = open(world.workdir / ("agent-%s.log" % pop), "w")  # pylint: disable=consider-using-with
        processes.append((subprocess.Popen(in_pop_ns(world, sys.executable, "-m", "anycast_edge_agent", "--config",
                                                     str(path)), env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        for port in PORTS.values():
            # Ready when it accepts connections; not scraped, so top's first reading is the first.
            wait_until(lambda port=port: _listening(world, port), "the agent exporter on port %d" % port)
        yield env
    finally:
        for process, log in processes:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=10)
            log.close()


def _listening(world, port):
    listening = subprocess.run(in_pop_ns(world, "ss", "-Hltn", "sport = :%d" % port), capture_output=True,
                               text=True, check=False)
    return bool(listening.stdout.strip())


def top(world, env, *args):
    argv = [sys.executable, "-m", "anycast_edge_agent.top"]
    for pop, port in PORTS.items():
        argv += ["--exporter", "%s=http://%s:%d/metrics" % (pop, POP_ADDRESS, port)]
    done = subprocess.run(in_pop_ns(world, *argv, "--once", "--interval", "0.3", *args), capture_output=True,
                          text=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_top_prints_what_the_maps_count(world, agents):
    world.edge.reset()
    setup_pop(world.edge)
    for index, count in enumerate((12, 7, 3)):  # three players of different weights
        for dummy in range(count):
            world.edge.run(player_udp(b"x" * 20, src="203.0.113.%d" % (10 + index)))
    world.edge.deny("192.0.2.66/32")
    for dummy in range(4):
        world.edge.run(player_udp(src="192.0.2.66"))
    world.edge.run(player_tcp())
    # No such service: counted in the player's entry (made by the TCP packet, which was accepted;
    # a packet that is dropped makes none).
    world.edge.run(player_udp(dport=1))
    # A2S: a bare query gets a challenge; with a fresh cache entry, the echoed cookie gets the
    # cached reply.
    world.edge.set_a2s_cache(GAME_UDP_ID, b"\xff\xff\xff\xffI" + b"\x00" * 20, time.monotonic_ns())
    assert world.edge.run(player_udp(A2S_REQUEST)).reason == "tx_a2s_challenge"
    assert world.edge.run(player_udp(A2S_REQUEST + cookie_for())).reason == "tx_a2s_cached"

    reasons = world.edge.reason_counts()
    seen_packets = sum(packets for packets, dummy in reasons.values())
    seen_bytes = sum(size for dummy, size in reasons.values())
    out_packets, out_bytes = world.edge.service_counters(GAME_UDP_ID)[2:]

    summaries = {item["pop"]: item for item in json.loads(top(world, agents, "--json"))}
    assert set(summaries) == set(PORTS)
    for pop in PORTS:
        summary = summaries[pop]
        assert (summary["in"]["packets"], summary["in"]["bytes"]) == (seen_packets, seen_bytes)
        assert (summary["out"]["packets"], summary["out"]["bytes"]) == (out_packets, out_bytes)
        # No traffic between top's two readings: every rate is zero.
        assert summary["in"]["pps"] == 0 and summary["out"]["bps"] == 0
        drops = {reason: item["total"] for reason, item in summary["drops"].items() if item["total"]}
        assert drops == {reason: packets for reason, (packets, dummy) in reasons.items()
                         if reason.startswith("drop_")}
        assert drops["drop_deny"] == 4
        assert (summary["a2s"]["cached"], summary["a2s"]["challenges"]) == (1, 1)
        assert summary["a2s"]["hit_ratio"] == 1.0
        info = summary["a2s"]["by_kind"]["info"]
        assert (info["cached"]["total"], info["challenge"]["total"], info["bad_cookie"]["total"]) == (1, 1, 0)
        assert {answer["total"] for answer in summary["a2s"]["by_kind"]["player"].values()} == {0}
        players = [(player["client"], player["packets"]) for player in summary["top_players"]]
        # The player of the A2S, TCP and no-service packets (4) outranks the one with 3.
        assert players == [("203.0.113.10", 12), ("203.0.113.11", 7), (PLAYER, 4)]
        assert [world.edge.client_counters(client)[0] for client, dummy in players] == [12, 7, 4]
        assert summary["clients_tracked"] == len(list(world.edge.maps["edge_sources"].keys()))
        assert summary["backends"] == {"cs2-main/game1": "unknown"}  # probe: none

    # The screen shows the same numbers.
    screen = top(world, agents)
    assert "ams " in screen and "fra " in screen
    assert "total %d packets, %d bytes" % (seen_packets, seen_bytes) in screen
    assert "drop_deny 0 /s (total 4)" in screen
    assert "#1 203.0.113.10" in screen
    assert "  a2s by kind: info 0 /s cached / 0 /s challenges / 0 /s bad cookie\n" in screen   # only kinds seen


def test_rates_come_from_the_traffic_between_two_readings(world, agents):
    """Traffic sent while top waits between its readings shows up as a rate."""
    world.edge.reset()
    setup_pop(world.edge)
    argv = [sys.executable, "-m", "anycast_edge_agent.top", "--exporter",
            "ams=http://%s:%d/metrics" % (POP_ADDRESS, PORTS["ams"]), "--once", "--json", "--interval", "2"]
    process = subprocess.Popen(in_pop_ns(world, *argv), env=agents, stdout=subprocess.PIPE, text=True)
    time.sleep(0.8)  # top has taken its first reading (well inside its 2 s interval)
    for dummy in range(50):
        world.edge.run(player_udp(b"y" * 30))
    output, dummy = process.communicate(timeout=30)
    assert process.returncode == 0
    summary = json.loads(output)[0]
    assert summary["in"]["packets"] == 50
    seconds = summary["interval_sec"]
    assert 1.5 < seconds < 4
    assert summary["in"]["pps"] == pytest.approx(50 / seconds)
    assert summary["in"]["bps"] == pytest.approx(summary["in"]["bytes"] * 8 / seconds)


def test_each_payload_rule_has_its_hits_in_the_exporter_and_top(world, agents):
    world.edge.reset()
    setup_pop(world.edge)
    rules = [abi.pack_payload_rule("drop", "udp", payload=b"\xff\xff\xff\xffq"),
             abi.pack_payload_rule("limit", "udp", dport=(27015, 27015), limit=(1000, 0)),
             abi.pack_payload_rule("drop", "tcp")]
    world.edge.set_payload_rules(rules)
    for dummy in range(5):
        assert world.edge.run(player_udp(b"\xff\xff\xff\xffq")).reason == "drop_rule"
    for dummy in range(3):
        assert world.edge.run(player_udp(b"join")).reason == "tx_forward"
    summaries = {item["pop"]: item for item in json.loads(top(world, agents, "--json"))}
    for pop in PORTS:
        hits = [(rule["rule"], rule["packets"], rule["match"]) for rule in summaries[pop]["payload_rules"]]
        assert hits == [(0, 5, "drop udp payload@0 ffffffff71"),
                        (1, 3, "limit udp dport 27015 limit 1000 pps / - Bps"),
                        (2, 0, "drop tcp")]
        assert summaries[pop]["drops"]["drop_rule"]["total"] == 5
    # What the exporter says, as Prometheus reads it.
    exposition = subprocess.run(in_pop_ns(world, "curl", "-s", "http://%s:%d/metrics" % (POP_ADDRESS, PORTS["ams"])),
                                capture_output=True, text=True, check=True).stdout
    assert ('anycast_edge_payload_rule_packets_total{action="drop",match="drop udp payload@0 ffffffff71",rule="0"} 5.0'
            in exposition)
    screen = top(world, agents)
    assert "rule 0 " in screen and "5 hits   drop udp payload@0 ffffffff71" in screen
