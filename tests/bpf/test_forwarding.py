"""Rule 8: IPIP to the backend, next hop from the FIB, MTU and TTL handled."""

from __future__ import annotations

import socket
import time

import pytest
from scapy.layers.inet import ICMP, IP, IPerror, UDP
from scapy.layers.l2 import Ether
from scapy.packet import raw

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi

from harness.edge_env import monotonic_ns
from harness.namespace import ip
from .scenario import (BACKEND, GAME, GAME_PORT, GAME_UDP_ID, PLAYER, SIDE_BACKEND, SIDE_GAME, SIDE_PORT,
                       checksums_valid, eth, player_udp)
from harness import topology as topo


def mac_bytes(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


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


def test_the_fibs_answer_is_cached_per_cpu_and_asked_again_after_100_ms(pop, one_cpu):
    assert pop.run(player_udp()).reason == "tx_forward"
    cached = [entry for entry in pop.cached_next_hops(GAME_UDP_ID) if entry[0]]
    assert len(cached) == 1
    expires_ns, saddr, daddr, dummy, ifindex, smac, dmac, fits_len, dummy = cached[0]
    assert 0 < expires_ns - monotonic_ns() <= abi.NEXT_HOP_CACHE_NS
    assert (socket.inet_ntoa(saddr), socket.inet_ntoa(daddr), ifindex) == (topo.POP_TUNNEL_ADDR, BACKEND,
                                                                           pop.ifindex[topo.UPLINK])
    assert (smac, dmac) == (mac_bytes(topo.MAC[topo.UPLINK]), mac_bytes(topo.ROUTER_MAC))
    assert fits_len == 20 + len(player_udp()) - 14

    # The router's MAC changes: the cache answers with the old one until it expires.
    new_mac = "02:00:00:00:00:fd"
    ip("neigh", "replace", topo.ROUTER_IP, "lladdr", new_mac, "nud", "permanent", "dev", topo.UPLINK)
    try:
        assert Ether(pop.run(player_udp()).data).dst == topo.ROUTER_MAC
        time.sleep(abi.NEXT_HOP_CACHE_NS / 1e9 + 0.05)
        assert Ether(pop.run(player_udp()).data).dst == new_mac
    finally:
        ip("neigh", "replace", topo.ROUTER_IP, "lladdr", topo.ROUTER_MAC, "nud", "permanent", "dev", topo.UPLINK)


def test_a_packet_larger_than_any_the_fib_let_through_is_asked_about_again(pop, one_cpu):
    """The cached answer holds for the sizes the FIB's MTU check accepted, not beyond."""
    assert pop.run(player_udp(b"x" * 100, flags="DF")).reason == "tx_forward"
    assert pop.run(player_udp(b"x" * (1500 - 28), flags="DF")).reason == "tx_icmp_too_big"
    assert pop.run(player_udp(b"x" * (1480 - 28), flags="DF")).reason == "tx_forward"
    assert [entry[7] for entry in pop.cached_next_hops(GAME_UDP_ID) if entry[0]] == [1500]


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
