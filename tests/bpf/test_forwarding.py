"""Rule 8: IPIP to the backend, next hop from the FIB, MTU and TTL handled."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, IPerror, UDP
from scapy.layers.l2 import Ether
from scapy.packet import raw

from .scenario import (BACKEND, GAME, GAME_PORT, PLAYER, SIDE_BACKEND, SIDE_GAME, SIDE_PORT, checksums_valid,
                       eth, player_udp, setup_pop)
from . import topology as topo


@pytest.fixture
def pop(edge):
    setup_pop(edge)
    return edge


def test_forwarded_packet_is_encapsulated_exactly(pop):
    frame = raw(eth() / IP(src=PLAYER, dst=GAME, tos=0xB8, ttl=50, flags="DF", id=777)
                / UDP(sport=40000, dport=GAME_PORT) / b"state update")
    result = pop.run(frame)
    assert (result.action, result.reason) == ("TX", "tx_forward")
    out = Ether(result.data)
    assert (out.src, out.dst, out.type) == (topo.MAC[topo.UPLINK], topo.ROUTER_MAC, 0x0800)
    outer = out[IP]
    assert (outer.version, outer.ihl, outer.proto, outer.ttl, outer.id) == (4, 5, 4, 64, 0)
    assert (outer.src, outer.dst) == (topo.POP_TUNNEL_ADDR, BACKEND)
    assert outer.tos == 0xB8 and outer.flags == "DF"
    assert outer.len == 20 + len(frame) - 14
    inner = outer.payload
    assert isinstance(inner, IP)
    assert (inner.src, inner.dst, inner.ttl, inner.id, inner.tos) == (PLAYER, GAME, 49, 777, 0xB8)
    # Everything after the TTL/checksum is the player's packet, byte for byte.
    assert raw(inner)[10:] != b"" and raw(inner)[12:] == frame[14 + 12:]
    assert checksums_valid(result.data)


def test_no_df_on_the_inner_packet_means_no_df_outside(pop):
    result = pop.run(player_udp())
    assert Ether(result.data)[IP].flags == 0


def test_next_hop_on_another_device_is_redirected_through_the_devmap(pop):
    pop.add_tx_port(topo.SIDE)
    result = pop.run(player_udp(dst=SIDE_GAME, dport=SIDE_PORT))
    assert (result.action, result.reason) == ("REDIRECT", "tx_forward")
    out = Ether(result.data)
    assert (out.src, out.dst) == (topo.MAC[topo.SIDE], topo.SIDE_NEIGHBOURS[SIDE_BACKEND])
    assert out[IP].dst == SIDE_BACKEND


def test_a_device_not_in_the_devmap_leaves_forwarding_to_the_kernel(pop):
    result = pop.run(player_udp(dst=SIDE_GAME, dport=SIDE_PORT))
    assert (result.action, result.reason) == ("PASS", "pass_no_neigh")
    out = Ether(result.data)
    assert out[IP].dst == SIDE_BACKEND and out.dst == topo.MAC[topo.UPLINK]  # still addressed to us


def test_unknown_neighbour_hands_the_encapsulated_packet_to_the_kernel(pop):
    pop.add_service("udp", SIDE_GAME, SIDE_PORT, 4, "10.2.0.20")  # on bk0, no ARP entry
    pop.add_tx_port(topo.SIDE)
    result = pop.run(player_udp(dst=SIDE_GAME, dport=SIDE_PORT))
    assert (result.action, result.reason) == ("PASS", "pass_no_neigh")
    assert Ether(result.data)[IP].dst == "10.2.0.20" and Ether(result.data)[IP].proto == 4


def test_no_route_to_the_backend_is_dropped(pop):
    pop.add_service("udp", GAME, GAME_PORT, 1, "10.9.0.1")
    assert pop.run(player_udp()).reason == "drop_no_route"


@pytest.mark.parametrize("ttl", [0, 1])
def test_an_expiring_ttl_is_dropped(pop, ttl):
    assert pop.run(player_udp(ttl=ttl)).reason == "drop_ttl"


def test_too_big_with_df_gets_icmp_fragmentation_needed(pop):
    frame = player_udp(b"x" * (1500 - 28), flags="DF", ttl=33)  # 1500 bytes of IP: 1520 once wrapped
    result = pop.run(frame)
    assert (result.action, result.reason) == ("TX", "tx_icmp_too_big")
    out = Ether(result.data)
    assert len(result.data) == 14 + 20 + 8 + 28
    assert (out.src, out.dst) == (topo.MAC[topo.UPLINK], topo.ROUTER_MAC)
    assert (out[IP].src, out[IP].dst, out[IP].proto) == (GAME, PLAYER, 1)
    assert (out[ICMP].type, out[ICMP].code, out[ICMP].nexthopmtu) == (3, 4, 1480)
    quoted = out[IPerror]
    assert (quoted.src, quoted.dst, quoted.ttl, quoted.len) == (PLAYER, GAME, 33, 1500)
    assert checksums_valid(result.data)


def test_too_big_without_df_goes_to_the_kernel_unchanged(pop):
    frame = player_udp(b"x" * (1500 - 28))
    result = pop.run(frame)
    assert (result.action, result.reason, result.data) == ("PASS", "pass_too_big", frame)


def test_the_largest_packet_that_fits_is_forwarded(pop):
    frame = player_udp(b"x" * (1480 - 28), flags="DF")
    result = pop.run(frame)
    assert (result.action, result.reason) == ("TX", "tx_forward")
    assert Ether(result.data)[IP].len == 1500
