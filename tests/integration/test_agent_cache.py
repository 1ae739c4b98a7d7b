"""The agent fills the A2S cache map (INFO, PLAYER, RULES) from a game server; the XDP program answers from it."""

from __future__ import annotations

import os
import time

import pytest

from agent_world import IFACE, SERVICE_ADDRESS, SERVICE_PORT, scenario_pop, wait_until
from agent_world import world  # noqa: F401  pylint: disable=unused-import
from bpf.packets import a2s_field_request
from bpf.scenario import A2S_REQUEST, GAME_UDP_ID, PLAYER, cookie_for, player_udp
from anycast_edge_agent import config as agent_config
from anycast_edge_agent import health, refresher
from anycast_edge_agent.maps import EdgeMaps
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF and namespaces need root")
MAX_AGE_SEC = 1.5


@pytest.fixture
def pop(world):
    scenario_pop(world)
    # The scenario's game service, with a short max age so expiry is seen within the test.
    world.edge.add_service("udp", SERVICE_ADDRESS, SERVICE_PORT, GAME_UDP_ID, "10.1.0.10",
                           flags=abi.SERVICE_F_A2S_CACHE, a2s_max_age_ms=int(MAX_AGE_SEC * 1000))
    yield world
    world.stop_game_server()


def watch_for(world):
    config = agent_config.parse({
        "iface": IFACE, "pin_root": world.pin_root, "tunnel_address": "10.0.0.1", "listen_address": "10.0.0.1",
        "rise": 1, "fall": 2, "probe_timeout_sec": 0.5,
        "services": [{"name": "cs2-main", "id": GAME_UDP_ID, "address": SERVICE_ADDRESS, "protocol": "udp",
                      "port": SERVICE_PORT, "a2s_cache": True, "a2s_refresh_sec": 0.5,
                      "a2s_max_age_sec": MAX_AGE_SEC}]})
    return refresher.ServiceWatch(config.services[0], config, EdgeMaps(world.pin_root, IFACE))


def ask_the_pop(world, kind="info"):
    """A player's A2S query of `kind` with the POP's cookie, through the XDP program."""
    if kind == "info":
        return world.edge.run(player_udp(A2S_REQUEST + cookie_for()))
    return world.edge.run(player_udp(a2s_field_request(kind, int.from_bytes(cookie_for(), "little"))))


def test_the_agent_fills_the_cache_and_the_pop_answers_from_it(pop):
    assert ask_the_pop(pop).reason == "tx_forward"  # nothing cached: the game server answers itself
    pop.start_game_server()  # demands a challenge, like a current Source server
    watch = watch_for(pop)
    outcome = watch.probe_once()
    assert outcome.evidence == health.UP and watch.challenges == len(abi.A2S_KINDS)  # one per kind
    updated_ns, payload = EdgeMaps(pop.pin_root, IFACE).read_a2s_cache(GAME_UDP_ID)
    assert payload.startswith(b"\xff\xff\xff\xffI") and 0 < time.monotonic_ns() - updated_ns < 2 * 10**9

    result = ask_the_pop(pop)
    assert (result.action, result.reason) == ("TX", "tx_a2s_cached")
    frame = Ether(result.data)
    assert (frame[IP].src, frame[IP].dst) == (SERVICE_ADDRESS, PLAYER)
    assert frame[UDP].load == payload  # exactly what the game server said


def test_the_agent_fills_all_three_kinds_and_the_pop_answers_each_from_its_own(pop):
    """One refresh asks INFO, PLAYER and RULES (each through the game server's challenge) and
    writes three entries; the POP then answers a cookie-holding player's A2S_PLAYER and A2S_RULES
    with exactly the bytes the game server sent for each."""
    for kind in abi.A2S_KINDS:
        assert ask_the_pop(pop, kind).reason == "tx_forward"
    pop.start_game_server()
    watch = watch_for(pop)
    assert watch.probe_once().evidence == health.UP and watch.challenges == len(abi.A2S_KINDS)
    payloads = {}
    for kind, reply_type in zip(abi.A2S_KINDS, (b"I", b"D", b"E")):
        updated_ns, payloads[kind] = EdgeMaps(pop.pin_root, IFACE).read_a2s_cache(GAME_UDP_ID, kind)
        assert payloads[kind].startswith(b"\xff\xff\xff\xff" + reply_type)
        assert 0 < time.monotonic_ns() - updated_ns < 2 * 10**9
        assert watch.refreshes[kind, refresher.REFRESHED] == 1
    assert len(set(payloads.values())) == len(abi.A2S_KINDS)
    for kind in abi.A2S_KINDS:
        result = ask_the_pop(pop, kind)
        assert (result.action, result.reason) == ("TX", "tx_a2s_cached")
        assert Ether(result.data)[UDP].load == payloads[kind]


def test_a_split_reply_is_not_cached(pop):
    pop.start_game_server("--split", "info")
    watch = watch_for(pop)
    assert watch.probe_once().evidence == health.UP
    assert EdgeMaps(pop.pin_root, IFACE).read_a2s_cache(GAME_UDP_ID) is None
    assert ask_the_pop(pop).reason == "tx_forward"


def test_a_split_player_list_is_not_cached_and_player_queries_go_to_the_server(pop):
    pop.start_game_server("--split", "player")
    watch = watch_for(pop)
    assert watch.probe_once().evidence == health.UP
    assert EdgeMaps(pop.pin_root, IFACE).read_a2s_cache(GAME_UDP_ID, "player") is None
    assert watch.refreshes["player", refresher.SPLIT_NOT_CACHED] == 1
    assert ask_the_pop(pop, "player").reason == "tx_forward"
    assert ask_the_pop(pop, "rules").reason == "tx_a2s_cached"


def test_when_the_server_stops_the_entry_ages_out_and_queries_go_to_the_server(pop):
    pop.start_game_server()
    watch = watch_for(pop)
    watch.probe_once()
    assert ask_the_pop(pop).reason == "tx_a2s_cached"
    pop.stop_game_server()
    assert watch.probe_once().evidence == health.DOWN
    assert watch.probe_once().evidence == health.DOWN and watch.health.state == health.DOWN
    wait_until(lambda: ask_the_pop(pop).reason == "tx_forward", "the stale entry to stop being served",
               timeout=MAX_AGE_SEC + 2)
