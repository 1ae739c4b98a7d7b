"""The forward to a backend whose pair with this POP is WireGuard (edge_wireguard_pairs): xdp_edge
passes the player's packet to the kernel, untagged and one hop older, with the pair's device in
the frame's Ethernet addresses (struct edge_wireguard_handoff) for the uplink's TC to redirect;
the pair's MTU is the forward's. The uplink's TC program redirects only a handoff xdp_edge could
have made, to a device edge_rules listed (the end of this file). (The redirect itself, on real
devices: tests/integration/test_wireguard_forward.py.)"""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, IPerror, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import raw

from ansible_collections.anycast.edge.plugins.module_utils import _bpf
from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from harness.edge_env import monotonic_ns

from .scenario import (BACKEND, GAME, GAME_PORT, PLAYER, SIDE_BACKEND, SIDE_GAME, SIDE_PORT,
                       checksums_valid, eth, player_icmp, player_udp)

WG_IFINDEX = 4242    # the pair's device: TC redirects to it
WG_MTU = 1440


def handoff(backend=BACKEND) -> bytes:
    """The handoff's Ethernet addresses, naming the pair by its backend's tunnel address."""
    return abi.WG_HANDOFF.pack(abi.WG_HANDOFF_DEST, abi.ipv4(backend))


def test_the_players_packet_is_passed_with_the_pairs_device_and_no_ipip_header(pop):
    pop.add_wireguard_pair(BACKEND, WG_IFINDEX, WG_MTU)
    frame = player_udp(b"state update", ttl=50, tos=0xB8, flags="DF", id=777)
    result = pop.run(frame)
    assert (result.action, result.reason) == ("PASS", "tx_forward_wireguard")
    assert result.data[:12] == handoff() and result.data[12:14] == b"\x08\x00"
    inner = IP(result.data[14:])
    assert (inner.src, inner.dst, inner.proto, inner.ttl, inner.id, inner.tos) == (PLAYER, GAME, 17, 49, 777, 0xB8)
    assert result.data[14 + 12:] == frame[14 + 12:]     # past TTL and checksum: the player's bytes
    assert checksums_valid(result.data)
    assert pop.reason_counts() == {"tx_forward_wireguard": (1, len(frame))}   # counted once


def test_only_the_services_of_a_wireguard_backend_take_it(pop):
    pop.add_wireguard_pair(SIDE_BACKEND, WG_IFINDEX, WG_MTU)
    assert pop.run(player_udp()).reason == "tx_forward"                     # BACKEND: IPIP
    result = pop.run(player_udp(dst=SIDE_GAME, dport=SIDE_PORT))
    assert (result.action, result.reason) == ("PASS", "tx_forward_wireguard")
    assert result.data[:12] == handoff(SIDE_BACKEND)


def test_a_tagged_frame_is_handed_over_untagged(pop):
    pop.add_wireguard_pair(BACKEND, WG_IFINDEX, WG_MTU)
    frame = raw(eth() / Dot1Q(vlan=10) / IP(src=PLAYER, dst=GAME) / UDP(sport=5000, dport=GAME_PORT) / b"tagged")
    result = pop.run(frame)
    assert result.reason == "tx_forward_wireguard"
    assert result.data[12:14] == b"\x08\x00" and IP(result.data[14:])[UDP].load == b"tagged"


def test_a_punched_flow_is_counted_as_a_wireguard_forward(pop):
    pop.add_wireguard_pair(BACKEND, WG_IFINDEX, WG_MTU)
    pop.punch("udp", GAME, GAME_PORT, PLAYER, 50000, monotonic_ns())
    assert pop.run(player_udp()).reason == "tx_forward_wireguard"


def test_the_pairs_mtu_is_the_forwards(pop):
    pop.add_wireguard_pair(BACKEND, WG_IFINDEX, WG_MTU)
    # The largest that fits goes; one byte more with DF is answered with the pair's MTU.
    assert pop.run(player_udp(b"x" * (WG_MTU - 28), flags="DF")).reason == "tx_forward_wireguard"
    result = pop.run(player_udp(b"x" * (WG_MTU - 27), flags="DF", ttl=33))
    assert (result.action, result.reason) == ("TX", "tx_icmp_too_big")
    out = Ether(result.data)
    assert (out[IP].src, out[IP].dst) == (GAME, PLAYER)
    assert (out[ICMP].type, out[ICMP].code, out[ICMP].nexthopmtu) == (3, 4, WG_MTU)
    assert out[IPerror].len == WG_MTU + 1
    assert checksums_valid(result.data)
    # Without DF it goes as it is: WireGuard sends it, its outer UDP fragmented on the way.
    assert pop.run(player_udp(b"x" * (WG_MTU - 27))).reason == "tx_forward_wireguard"
    # An echo request too big with DF is answered; a TTL about to expire is dropped first.
    assert pop.run(player_icmp(payload=b"x" * WG_MTU, flags="DF")).reason == "tx_icmp_too_big"
    assert pop.run(player_udp(ttl=1)).reason == "drop_ttl"


def test_a_frame_arriving_with_the_handoffs_mark_is_never_passed(pop):
    """Frames the program would pass (to the POP itself, non-IP, ...) that arrive carrying the
    handoff's destination are dropped: only the forward step hands one to TC."""
    pop.add_wireguard_pair(BACKEND, WG_IFINDEX, WG_MTU)
    to_the_pop = raw(eth() / IP(src=PLAYER, dst="10.0.0.1") / UDP(sport=5000, dport=22) / b"ssh")
    for frame in (handoff() + to_the_pop[12:], handoff("0.0.0.1") + b"\x08\x06" + bytes(28)):
        result = pop.run(frame)
        assert (result.action, result.reason) == ("DROP", "drop_forged_handoff")
    # Without the mark, the same packet is the POP's.
    assert pop.run(to_the_pop).reason == "pass_not_ours"
    # To a service it goes through the pipeline like any other frame (and gets the pair's mark anew).
    result = pop.run(handoff(SIDE_BACKEND) + b"\x08\x00" + player_udp()[14:])
    assert (result.reason, result.data[:12]) == ("tx_forward_wireguard", handoff())


# -- tc_wireguard_redirect: the uplink's TC ingress, on its own (BPF_PROG_TEST_RUN) ---------------

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7


@pytest.fixture(scope="module")
def tc_redirect(tc_wireguard_redirect_object, xdp_edge_object):
    """The TC program loaded with BACKEND's pair on WG_IFINDEX (edge_wireguard_pairs), and the map's
    layout in xdp_edge's object (which pins the map TC is loaded with)."""
    with _bpf.BpfObject.open(xdp_edge_object) as edge:
        edge_pairs = edge.map("edge_wireguard_pairs")
        edge_layout = (edge_pairs.type, edge_pairs.key_size, edge_pairs.value_size, edge_pairs.max_entries)
    with _bpf.BpfObject.open(tc_wireguard_redirect_object) as obj:
        obj.load()
        pairs = obj.map("edge_wireguard_pairs")
        pairs.update(abi.ipv4(BACKEND), abi.WIREGUARD_PAIR.pack(WG_IFINDEX, WG_MTU))
        yield obj.program("tc_wireguard_redirect"), pairs, edge_layout


def test_the_tc_redirect_shares_xdp_edges_pairs_map(tc_redirect):
    """One declaration (wireguard_maps.h) in both objects: tc_program's share_maps hands TC the
    map xdp_program pinned, which it does only for the same layout."""
    dummy, pairs, edge_layout = tc_redirect
    assert (pairs.type, pairs.key_size, pairs.value_size, pairs.max_entries) == edge_layout
    assert (pairs.key_size, pairs.value_size) == (abi.BE32.size, abi.WIREGUARD_PAIR.size)
    assert pairs.max_entries == abi.MAP_CAPACITY["edge_wireguard_pairs"]


def test_the_tc_redirect_takes_only_a_clean_handoff_naming_a_pair(tc_redirect):
    program, dummy, dummy = tc_redirect
    packet = player_udp(b"forwarded")[12:]          # ethertype + the IPv4 packet
    assert program.test_run(handoff() + packet).retval == TC_ACT_REDIRECT            # the control
    # Not a handoff at all: the stack's, untouched.
    assert program.test_run(player_udp(b"plain")).retval == TC_ACT_OK
    # A backend without a WireGuard pair (another backend, an ifindex as the first version's
    # handoff carried it, nothing): dropped, never redirected.
    for named in (SIDE_BACKEND, "1.0.0.0", "0.0.0.0"):
        assert program.test_run(handoff(named) + packet).retval == TC_ACT_SHOT, named
    # The padding xdp_edge writes as zero, set: not made by xdp_edge.
    for pad in (b"\x00\x01", b"\x80\x00", b"\xff\xff"):
        forged = abi.WG_HANDOFF_DEST + pad + abi.ipv4(BACKEND) + packet
        assert program.test_run(forged).retval == TC_ACT_SHOT, pad
