"""Rule 7: A2S_INFO answered at the POP, never amplifying."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import raw

from .edge_env import monotonic_ns
from .scenario import (A2S_INFO_REPLY, A2S_MAX_AGE_MS, A2S_REQUEST, BACKEND, COOKIE_EPOCH_NS, GAME, GAME_PORT,
                       GAME_UDP_ID, PLAYER, PLAYER_PORT, checksums_valid, cookie_for, player_udp, setup_pop)
from . import topology as topo

SECOND = 10**9


@pytest.fixture
def pop(edge):
    setup_pop(edge)
    return edge


@pytest.fixture
def cached(pop):
    pop.set_a2s_cache(GAME_UDP_ID, A2S_INFO_REPLY, monotonic_ns())
    return pop


def assert_reply_to_player(frame: bytes, payload: bytes):
    out = Ether(frame)
    assert (out.src, out.dst) == (topo.MAC[topo.UPLINK], topo.ROUTER_MAC)
    assert (out[IP].src, out[IP].dst, out[IP].ttl) == (GAME, PLAYER, 64)
    assert (out[UDP].sport, out[UDP].dport) == (GAME_PORT, PLAYER_PORT)
    assert out[UDP].load == payload
    assert out[IP].len == 28 + len(payload) and len(frame) == 14 + 28 + len(payload)
    assert checksums_valid(frame)


def test_answers_go_back_the_way_the_request_came_vlan_tag_and_all(cached):
    """XDP_TX to the router that handed the request over (Ethernet addresses swapped), in the
    request's VLAN: no route lookup per query."""
    other_router = "02:00:00:00:00:aa"

    def tagged(payload):
        return raw(Ether(src=other_router, dst=topo.MAC[topo.UPLINK]) / Dot1Q(vlan=42) / IP(src=PLAYER, dst=GAME)
                   / UDP(sport=PLAYER_PORT, dport=GAME_PORT) / payload)

    challenge = cached.run(tagged(A2S_REQUEST))
    assert (challenge.action, challenge.reason) == ("TX", "tx_a2s_challenge")
    out = Ether(challenge.data)
    assert (out.src, out.dst, out[Dot1Q].vlan) == (topo.MAC[topo.UPLINK], other_router, 42)
    assert (out[IP].src, out[IP].dst) == (GAME, PLAYER) and len(challenge.data) == 18 + 28 + 9
    assert checksums_valid(challenge.data)

    answered = cached.run(tagged(A2S_REQUEST + out[UDP].load[5:9]))
    assert (answered.action, answered.reason) == ("TX", "tx_a2s_cached")
    out = Ether(answered.data)
    assert (out.src, out.dst, out[Dot1Q].vlan) == (topo.MAC[topo.UPLINK], other_router, 42)
    assert out[UDP].load == A2S_INFO_REPLY and len(answered.data) == 18 + 28 + len(A2S_INFO_REPLY)
    assert checksums_valid(answered.data)


def test_a_request_gets_this_pops_challenge(cached):
    request = player_udp(A2S_REQUEST)
    result = cached.run(request)
    assert (result.action, result.reason) == ("TX", "tx_a2s_challenge")
    assert_reply_to_player(result.data, b"\xff\xff\xff\xffA" + cookie_for(now_ns=monotonic_ns()))
    assert len(result.data) < len(request)  # 9 bytes of payload for 25: no amplification


def test_a_request_with_the_cookie_is_answered_from_the_cache(cached):
    result = cached.run(player_udp(A2S_REQUEST + cookie_for(now_ns=monotonic_ns())))
    assert (result.action, result.reason) == ("TX", "tx_a2s_cached")
    assert_reply_to_player(result.data, A2S_INFO_REPLY)
    assert cached.service_counters(GAME_UDP_ID)[2] == 1  # counted out


def test_the_previous_epochs_cookie_is_still_accepted_but_not_older(cached):
    epoch = monotonic_ns() // COOKIE_EPOCH_NS
    assert cached.run(player_udp(A2S_REQUEST + cookie_for(epoch=epoch - 1))).reason == "tx_a2s_cached"
    assert cached.run(player_udp(A2S_REQUEST + cookie_for(epoch=epoch - 2))).reason == "drop_bad_cookie"


@pytest.mark.parametrize("cookie", [b"\x00\x00\x00\x00", b"\xde\xad\xbe\xef"], ids=["zero", "random"])
def test_a_wrong_cookie_is_dropped(cached, cookie):
    assert cached.run(player_udp(A2S_REQUEST + cookie)).reason == "drop_bad_cookie"


def test_a_cookie_is_bound_to_the_clients_address_and_port(cached):
    now = monotonic_ns()
    stolen = cookie_for(now_ns=now)  # issued to PLAYER:PLAYER_PORT
    assert cached.run(player_udp(A2S_REQUEST + stolen, src="203.0.113.6")).reason == "drop_bad_cookie"
    assert cached.run(player_udp(A2S_REQUEST + stolen, sport=PLAYER_PORT + 1)).reason == "drop_bad_cookie"


def test_without_a_cache_entry_requests_go_to_the_game_server(pop):
    for payload in (A2S_REQUEST, A2S_REQUEST + b"\x01\x02\x03\x04"):
        result = pop.run(player_udp(payload))
        assert (result.action, result.reason) == ("TX", "tx_forward")
        assert Ether(result.data)[IP].dst == BACKEND


def test_a_stale_entry_is_not_served(pop):
    pop.set_a2s_cache(GAME_UDP_ID, A2S_INFO_REPLY, monotonic_ns() - (A2S_MAX_AGE_MS + 1000) * 10**6)
    assert pop.run(player_udp(A2S_REQUEST)).reason == "tx_forward"
    assert pop.run(player_udp(A2S_REQUEST + cookie_for(now_ns=monotonic_ns()))).reason == "tx_forward"


def test_other_queries_and_lookalikes_go_to_the_game_server(cached):
    for payload in (b"\xff\xff\xff\xffU\xff\xff\xff\xff", A2S_REQUEST[:-1] + b"X", A2S_REQUEST + b"\x00" * 8):
        assert cached.run(player_udp(payload)).reason == "tx_forward"


def test_services_without_the_cache_forward_requests(pop):
    pop.add_service("udp", GAME, GAME_PORT, GAME_UDP_ID, BACKEND)  # flags 0
    pop.set_a2s_cache(GAME_UDP_ID, A2S_INFO_REPLY, monotonic_ns())
    assert pop.run(player_udp(A2S_REQUEST)).reason == "tx_forward"


def test_spoofed_requests_never_get_more_bytes_than_they_sent(cached):
    """Amplification <= 1 for a sender that has not proven it owns its address."""
    sent = received = 0
    for source in ("192.0.2.%d" % i for i in range(1, 40)):
        for payload in (A2S_REQUEST, A2S_REQUEST + b"\x11\x22\x33\x44"):
            frame = player_udp(payload, src=source)
            result = cached.run(frame)
            sent += len(frame)
            if result.action in ("TX", "REDIRECT") and result.reason.startswith("tx_a2s"):
                received += len(result.data)
    assert 0 < received <= sent
