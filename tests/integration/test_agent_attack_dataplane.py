"""The whole loop of attack mode: a spoofed flood through the real program, the agent (its own
Agent class, in this process) reading what the program counts, the program dropping the flood once
the agent says "under attack", and letting the same packets through again once it is over.

The program runs on crafted packets (BPF_PROG_TEST_RUN, harness/edge_env.py) in the agent world
of agent_world.py, its maps pinned where xdp_program pins them; the agent opens those pins.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import struct
import time

import pytest

from agent_world import IFACE, AgentWorld
from anycast_edge_agent import config as agent_config
from anycast_edge_agent import main as agent_main
from bpf.scenario import BACKEND, GAME, GAME_PORT, GAME_UDP_ID, player_udp, setup_pop

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF and namespaces need root")

THRESHOLD, ENTER_SEC, LEAVE_SEC = 300, 1, 1


@pytest.fixture(scope="module")
def world(repo_root, tmp_path_factory):
    yield from AgentWorld.serving(repo_root, tmp_path_factory.mktemp("attack"))


def spoofed(count, seed=7):
    rng = random.Random(seed)
    return [socket.inet_ntoa(struct.pack("!I", (100 << 24) | rng.getrandbits(24))) for dummy in range(count)]


def attack_state(edge):
    return abi.ATTACK_STATE.unpack(edge.maps["edge_attack_state"].lookup(abi.U32.pack(GAME_UDP_ID)))[0]


def flood(edge, frames, until, timeout):
    """Send the frames round and round until until() or timeout; (reasons seen, seconds taken)."""
    started = time.monotonic()
    reasons = []
    while time.monotonic() - started < timeout:
        for frame in frames:
            reasons.append(edge.run(frame).reason)
        if until():
            break
    return reasons, time.monotonic() - started


def test_the_agent_turns_a_real_flood_away_and_lets_the_same_packets_back_when_it_is_over(world, caplog):
    caplog.set_level(logging.INFO, logger="anycast_edge_agent")
    edge = world.edge
    edge.reset()
    setup_pop(edge)
    # The service as edge_rules writes it: auto (the agent decides), no budget for the unverified.
    edge.add_service("udp", GAME, GAME_PORT, GAME_UDP_ID, BACKEND, admission=(0, 0), game_protocol="source",
                     attack_mode="auto")
    config = agent_config.parse({
        "iface": IFACE, "pin_root": world.pin_root, "tunnel_address": "10.0.0.1", "listen_address": "127.0.0.1",
        "bird_manage": False, "check_dataplane": False,
        "services": [{"name": "cs2", "id": GAME_UDP_ID, "address": GAME, "protocol": "udp", "port": GAME_PORT,
                      "probe": "none", "attack_mode": "auto",
                      "attack_detection": {"unverified_packets_per_sec": THRESHOLD, "enter_after_sec": ENTER_SEC,
                                           "leave_after_sec": LEAVE_SEC}}]})
    agent = agent_main.Agent(config)
    frames = [player_udp(b"\x00" * 40, src=source) for source in spoofed(200)]
    agent.start()
    try:
        # Calm: the flood's first packets pass (attack mode auto, the agent has not decided).
        assert set(edge.run(frame).reason for frame in frames[:20]) == {"tx_forward"}
        # The flood, faster than the threshold: the agent puts the service under attack, and the
        # program drops the same packets from then on.
        reasons, took = flood(edge, frames, lambda: attack_state(edge) == 1, timeout=ENTER_SEC + 5)
        assert attack_state(edge) == 1, "no attack mode after %.1f s of %d packets" % (took, len(reasons))
        rate = len(reasons) / took
        assert rate > 2 * THRESHOLD, rate
        assert took <= ENTER_SEC + 2, took
        assert reasons[0] == "tx_forward"
        assert set(edge.run(frame).reason for frame in frames) == {"drop_unverified"}
        # Over: quiet for the leave time, the agent lets go, the same packets pass again.
        time.sleep(LEAVE_SEC + 0.5)
        assert attack_state(edge) == 0
        assert set(edge.run(frame).reason for frame in frames[:20]) == {"tx_forward"}
    finally:
        agent.stop()
    lines = [record.getMessage() for record in caplog.records if record.name == "anycast_edge_agent.attack"]
    assert len(lines) == 2 and "under attack" in lines[0] and "attack over" in lines[1], lines
    print("flood %.0f packets/s; attack mode after %.2f s (enter_after_sec %d)" % (rate, took, ENTER_SEC))
