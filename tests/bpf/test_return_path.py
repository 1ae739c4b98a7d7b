"""Return path: IPIP from a backend, decapsulated to the player; punches learned, A2S snooped."""

from __future__ import annotations

import struct
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import raw

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi

from harness.edge_env import monotonic_ns
from .scenario import (A2S_INFO_REPLY, A2S_REQUEST, BACKEND, GAME, GAME_PORT, GAME_UDP_ID, PLAYER, PLAYER_PORT,
                       SIDE_BACKEND, SIDE_GAME, SIDE_PORT, backend_reply, checksums_valid, cookie_for, eth,
                       player_tcp, player_udp, setup_pop)
from harness import topology as topo

SECOND = 10**9
OTHER_PLAYER = "203.0.113.6"


def test_a_backend_reply_is_decapsulated_to_the_player(pop):
    frame = backend_reply(b"snapshot")
    result = pop.run(frame)
    assert (result.action, result.reason) == ("TX", "tx_return")
    out = Ether(result.data)
    assert (out.src, out.dst, out.type) == (topo.MAC[topo.UPLINK], topo.ROUTER_MAC, 0x0800)
    assert (out[IP].src, out[IP].dst, out[IP].ttl, out[IP].proto) == (GAME, PLAYER, 63, 17)
    assert out[UDP].load == b"snapshot"
    assert len(result.data) == len(frame) - 20
    assert checksums_valid(result.data)
    assert pop.service_counters(GAME_UDP_ID)[2] == 1


def test_the_reply_learns_a_port_punch_for_its_flow(pop):
    before = monotonic_ns()
    pop.run(backend_reply())
    seen = pop.punch_last_seen("udp", GAME, GAME_PORT, PLAYER, PLAYER_PORT)
    assert seen is not None and before <= seen <= monotonic_ns()


def test_a_punch_lets_the_players_answers_past_the_rate_limit(edge):
    """A connection the game server opened (master-server style) gets its replies through."""
    setup_pop(edge, limits={"udp": (1, 0)}, ban_sec=60)
    edge.run(backend_reply(sport=GAME_PORT, dport=PLAYER_PORT))
    assert [edge.run(player_udp()).reason for dummy in range(4)] == ["tx_punched"] * 4


def test_tcp_replies_learn_punches_too(pop):
    pop.run(backend_reply(proto="tcp", tcp_flags="A"))
    assert pop.punch_last_seen("tcp", GAME, GAME_PORT, PLAYER, PLAYER_PORT) is not None


def next_rate_window():
    """Sleep into the start of the next one-second rate window (the counts below in one window)."""
    time.sleep(1 - monotonic_ns() % SECOND / SECOND + 0.01)


# Replies a game server sends whoever asks - a spoofed address as readily as an attacker's own:
# connectionless (an A2S challenge; one part of a split A2S answer, header -2) and TCP's SYN-ACK
# and RST.
ANYONE_GETS = {"connectionless": ("udp", b"\xff\xff\xff\xffA\x01\x02\x03\x04", None),
               "split": ("udp", struct.pack("<iiBB", -2, 7, 2, 0) + b"\xff\xff\xff\xffE\x10\x00", None),
               "syn-ack": ("tcp", b"", "SA"), "rst": ("tcp", b"", "RA")}


@pytest.mark.parametrize("reply", sorted(ANYONE_GETS))
def test_a_reply_anyone_can_provoke_punches_no_flow_past_the_rate_limit(edge, reply):
    """The attack: ask the game server something it answers anyone (a getchallenge, an A2S query,
    a SYN) from the address and port to flood from - spoofed, or one's own - and the flow is
    punched: its flood skips the rate limit and the ban. A reply that answers whoever asked
    punches nothing; a reply of an established session still does (the same flood, punched)."""
    proto, payload, flags = ANYONE_GETS[reply]
    setup_pop(edge, limits={proto: (2, 0)}, ban_sec=0)
    flood = player_udp(b"\x00" * 40) if proto == "udp" else player_tcp(flags="A")
    assert edge.run(backend_reply(payload, proto=proto, tcp_flags=flags)).reason == "tx_return"
    assert edge.punch_last_seen(proto, GAME, GAME_PORT, PLAYER, PLAYER_PORT) is None
    next_rate_window()
    assert [edge.run(flood).reason for dummy in range(6)] == ["tx_forward"] * 2 + ["drop_rate_limit"] * 4
    # The unprotected path: a flow the game server spoke on in session lets the same flood through.
    assert edge.run(backend_reply(b"session", proto=proto, tcp_flags="A")).reason == "tx_return"
    assert [edge.run(flood).reason for dummy in range(6)] == ["tx_punched"] * 6


def test_ipip_from_an_unknown_source_is_dropped(pop):
    result = pop.run(backend_reply(outer_src="10.1.0.99"))
    assert (result.action, result.reason) == ("DROP", "drop_bad_return")
    assert pop.punch_last_seen("udp", GAME, GAME_PORT, PLAYER, PLAYER_PORT) is None


@pytest.mark.parametrize("inner", [dict(inner_src="198.51.100.99"), dict(sport=1234), dict(inner_src=PLAYER)],
                         ids=["not a service address", "not a service port", "spoofed player"])
def test_a_backend_may_only_send_from_its_services(pop, inner):
    assert pop.run(backend_reply(**inner)).reason == "drop_bad_return"


def test_a_backend_cannot_speak_for_another_backends_service(pop):
    frame = backend_reply(outer_src=SIDE_BACKEND, inner_src=GAME, sport=GAME_PORT)
    assert pop.run(frame).reason == "drop_bad_return"
    frame = backend_reply(outer_src=SIDE_BACKEND, inner_src=SIDE_GAME, sport=SIDE_PORT)
    assert pop.run(frame).reason == "tx_return"


def test_a_malformed_inner_packet_is_dropped(pop):
    frame = bytearray(backend_reply())
    frame[14 + 20 + 2:14 + 20 + 4] = (2000).to_bytes(2, "big")  # inner total length beyond the frame
    assert pop.run(bytes(frame)).reason == "drop_malformed"


def test_ipip_to_another_address_is_not_the_return_path(pop):
    frame = raw(eth() / IP(src=BACKEND, dst="10.0.0.77", proto=4) / IP(src=GAME, dst=PLAYER) / UDP(sport=GAME_PORT))
    assert pop.run(frame).reason == "pass_not_ours"


def test_a2s_replies_are_snooped_into_the_cache(pop):
    before = monotonic_ns()
    result = pop.run(backend_reply(A2S_INFO_REPLY))
    assert result.reason == "tx_return"
    updated_ns, payload, csum = pop.a2s_cache(GAME_UDP_ID)
    assert payload == A2S_INFO_REPLY
    assert csum == abi.payload_csum(A2S_INFO_REPLY)
    assert before <= updated_ns <= monotonic_ns()
    # ... and served to the next player that proves its address. (Another player: the one the reply
    # went to now holds a port punch, and punched flows always go to the game server.)
    served = pop.run(player_udp(A2S_REQUEST + cookie_for(src=OTHER_PLAYER), src=OTHER_PLAYER))
    assert served.reason == "tx_a2s_cached" and Ether(served.data)[UDP].load == A2S_INFO_REPLY
    assert checksums_valid(served.data)


@pytest.mark.parametrize("length", [5, 6, 7, 8, 511, 512, 513, 1023, 1024, 1025, 1399, 1400])
def test_snooped_entries_of_every_length_checksum_right(pop, length):
    payload = (b"\xff\xff\xff\xffI" + bytes(range(256)) * 6)[:length]
    pop.run(backend_reply(payload))
    assert pop.a2s_cache(GAME_UDP_ID)[1:] == (payload, abi.payload_csum(payload))
    served = pop.run(player_udp(A2S_REQUEST + cookie_for(src=OTHER_PLAYER), src=OTHER_PLAYER))
    assert served.reason == "tx_a2s_cached"
    assert checksums_valid(served.data) and Ether(served.data)[UDP].load == payload


def test_a_punched_player_reaches_the_game_server_even_for_a2s(pop):
    pop.set_a2s_cache(GAME_UDP_ID, A2S_INFO_REPLY, monotonic_ns())
    pop.run(backend_reply())
    assert pop.run(player_udp(A2S_REQUEST)).reason == "tx_punched"


def test_split_or_other_replies_are_not_cached(pop):
    for payload in (b"\xfe\xff\xff\xff" + b"\x00" * 40, b"\xff\xff\xff\xffA1234", b"\xff\xff\xff\xffI" + b"x" * 1400):
        pop.run(backend_reply(payload))
    assert pop.a2s_cache(GAME_UDP_ID) is None


def test_services_without_snooping_do_not_fill_the_cache(pop):
    pop.add_service("udp", GAME, GAME_PORT, GAME_UDP_ID, BACKEND, flags=abi.SERVICE_F_A2S_CACHE, a2s_max_age_ms=5000)
    pop.run(backend_reply(A2S_INFO_REPLY))
    assert pop.a2s_cache(GAME_UDP_ID) is None


def test_a_reply_to_the_pop_itself_is_left_to_the_kernels_tunnel(pop):
    """The agent probes game servers through the tunnel from the POP's own address."""
    frame = backend_reply(A2S_INFO_REPLY, dst=topo.POP_TUNNEL_ADDR, dport=40123)
    result = pop.run(frame)
    assert (result.action, result.reason, result.data) == ("PASS", "pass_local", frame)
    assert pop.a2s_cache(GAME_UDP_ID)[1] == A2S_INFO_REPLY  # still snooped
