"""The TC mapper on crafted frames: flows learned on ingress, replies steered to their POP on egress.

Ingress frames are what the host's NIC receives from a POP: Ethernet | outer IPv4 (POP -> this
host's tunnel address, protocol IPIP) | the player's packet to a service. Egress frames are what
the kernel's ipip device hands the NIC for a game server's reply: Ethernet | outer IPv4 (this
host -> the POP whose tunnel the routing chose) | the service's packet to the player.
"""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import raw

from harness.edge_env import monotonic_ns
from .mapper_env import (GATEWAY_MAC, HOST_ADDR, NIC_MAC, PEERED_POP, PEERING_ROUTER_MAC, SECOND_LINK_POP,
                         SECOND_LINK_ROUTER_MAC, SECOND_NIC_MAC, MapperEnv)

SECOND = 10**9
IDLE_NS = 30 * SECOND

POP_A = "10.0.0.1"      # the default POP (and where the kernel's routing sends replies)
POP_B = "10.0.0.2"
POP_C = "10.0.0.3"
UNKNOWN_POP = "10.0.0.99"
GAME = "198.51.100.10"
GAME_PORT = 27015
DSR_GAME = "198.51.100.20"
DSR_PORT = 7777
PLAYER = "203.0.113.5"
PLAYER_PORT = 50000
NAT = "203.0.113.77"    # one public address, several players behind it
OTHER_MAC = "02:00:00:00:00:77"


@pytest.fixture(scope="module")
def mapper_session(tc_mapper_object):
    """One loaded object for this module (entered namespace restored when the module ends)."""
    with MapperEnv.running(tc_mapper_object) as env:
        yield env


@pytest.fixture
def host(mapper_session):
    """A configured game-server host: three POPs, POP_A the default, one DSR service."""
    env = mapper_session
    env.reset()
    env.configure(default_pop=POP_A, idle_ns=IDLE_NS)
    for pop in (POP_A, POP_B, POP_C, PEERED_POP):
        env.add_pop(pop)
    env.add_service("udp", GAME, GAME_PORT)
    env.add_service("tcp", GAME, GAME_PORT)
    env.add_service("udp", DSR_GAME, DSR_PORT, dsr=True)
    return env


def l4(proto, sport, dport, payload):
    if proto == "udp":
        return UDP(sport=sport, dport=dport) / payload
    if proto == "tcp":
        return TCP(sport=sport, dport=dport, flags="PA") / payload
    return ICMP(type=8, id=sport) / payload


def inbound(pop=POP_B, player=PLAYER, player_port=PLAYER_PORT, service=GAME, service_port=GAME_PORT,
            proto="udp", payload=b"player input", outer_dst=HOST_ADDR, vlan=None):
    """What the NIC receives: a player's packet through a POP's tunnel."""
    frame = Ether(src=GATEWAY_MAC, dst=NIC_MAC)
    if vlan is not None:
        frame = frame / Dot1Q(vlan=vlan)
    inner = IP(src=player, dst=service, ttl=60) / l4(proto, player_port, service_port, payload)
    return raw(frame / IP(src=pop, dst=outer_dst, ttl=61) / inner)


def reply(player=PLAYER, player_port=PLAYER_PORT, service=GAME, service_port=GAME_PORT, proto="udp",
          payload=b"server snapshot", routed_to=POP_A, outer_src=HOST_ADDR, vlan=None, dst_mac=GATEWAY_MAC):
    """What the kernel's ipip device hands the NIC: a game server's reply, encapsulated to the POP
    its routing chose (routed_to)."""
    frame = Ether(src=NIC_MAC, dst=dst_mac)
    if vlan is not None:
        frame = frame / Dot1Q(vlan=vlan)
    inner = IP(src=service, dst=player, ttl=64, id=4321) / l4(proto, service_port, player_port, payload)
    return raw(frame / IP(src=outer_src, dst=routed_to, ttl=64, id=777, flags="DF") / inner)


def ones_complement_sum_is_valid(header: bytes) -> bool:
    total = sum(struct.unpack("!%dH" % (len(header) // 2), header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def checksums_valid(frame: bytes) -> bool:
    """Every IPv4 header checksum and the innermost UDP/TCP checksum are right."""
    packet = Ether(frame)
    layer = packet.getlayer(IP)
    while layer is not None:
        header = raw(layer)[:layer.ihl * 4]
        if not ones_complement_sum_is_valid(header):
            return False
        inner = layer.payload
        layer = inner if isinstance(inner, IP) else None
    innermost = packet.getlayer(IP, nb=len([x for x in packet.layers() if x is IP]))
    for proto in (UDP, TCP):
        if proto in innermost:
            sent = innermost[proto].chksum
            fresh = innermost.copy()
            del fresh[proto].chksum
            if IP(raw(fresh))[proto].chksum != sent:
                return False
    return True


def outer_dst(frame: bytes, l3_off: int = 14) -> str:
    return ".".join(str(b) for b in frame[l3_off + 16:l3_off + 20])


# ---- learning on ingress -------------------------------------------------------------------------

def test_ingress_learns_the_flow_and_the_pop_it_came_through(host):
    frame = inbound(pop=POP_B)
    before = monotonic_ns()
    result = host.ingress(frame)
    after = monotonic_ns()
    assert (result.action, result.reason) == ("OK", "ingress_learned")
    assert result.data == frame  # ingress only watches
    flows = host.flows()
    assert list(flows) == [(17, PLAYER, PLAYER_PORT, GAME, GAME_PORT)]
    pop, last_seen = flows[(17, PLAYER, PLAYER_PORT, GAME, GAME_PORT)]
    assert pop == POP_B and before <= last_seen <= after


def test_a_later_packet_refreshes_the_time_and_the_latest_pop_wins(host):
    host.set_flow("udp", PLAYER, PLAYER_PORT, GAME, GAME_PORT, POP_B, 1)
    host.ingress(inbound(pop=POP_B))
    pop, last_seen = host.flow("udp", PLAYER, PLAYER_PORT, GAME, GAME_PORT)
    assert pop == POP_B and last_seen > 1
    host.ingress(inbound(pop=POP_C))  # BGP moved the player to another POP
    assert host.flow("udp", PLAYER, PLAYER_PORT, GAME, GAME_PORT)[0] == POP_C


@pytest.mark.parametrize("proto, number", [("udp", 17), ("tcp", 6)])
def test_flows_are_keyed_by_protocol_and_both_ports(host, proto, number):
    host.ingress(inbound(proto=proto, player_port=40000))
    assert list(host.flows()) == [(number, PLAYER, 40000, GAME, GAME_PORT)]


def test_icmp_is_learned_without_ports(host):
    host.ingress(inbound(proto="icmp", player_port=99, service_port=0))
    assert list(host.flows()) == [(1, PLAYER, 0, GAME, 0)]


def test_ipip_to_the_tunnel_address_from_an_unknown_source_is_dropped(host):
    """Not a POP: nothing learned, and not handed to the kernel's ipip device either."""
    result = host.ingress(inbound(pop=UNKNOWN_POP))
    assert (result.action, result.reason) == ("SHOT", "ingress_unknown_pop")
    assert host.flows() == {}


def test_a_pop_spoofed_on_another_device_neither_resteers_nor_reaches_the_host(host):
    """The attack: a player's flow came in through POP_A (on nic0); one packet "from" POP_B (whose
    traffic the host routes over nic1) arrives on nic0. On the old program it re-steered every
    reply of that flow to POP_B; now it is dropped and the replies stay with POP_A. Control: the
    very same packet on POP_B's own device is the player's path really moving, and is learned."""
    host.add_pop(POP_B, ifindex=host.second_ifindex)
    assert host.ingress(inbound(pop=POP_A)).reason == "ingress_learned"
    spoofed = inbound(pop=POP_B, payload=b"spoofed")
    result = host.ingress(spoofed)
    assert (result.action, result.reason) == ("SHOT", "ingress_wrong_device")
    assert host.flow("udp", PLAYER, PLAYER_PORT, GAME, GAME_PORT)[0] == POP_A
    steered = host.egress(reply(routed_to=POP_A))
    assert (steered.reason, outer_dst(steered.data)) == ("egress_mapped", POP_A)

    control = host.ingress(spoofed, ifindex=host.second_ifindex)
    assert (control.action, control.reason) == ("OK", "ingress_learned")
    assert host.flow("udp", PLAYER, PLAYER_PORT, GAME, GAME_PORT)[0] == POP_B


@pytest.mark.parametrize("pop,on_second_link,expected", [
    (POP_B, False, ("OK", "ingress_fragment")),
    (POP_B, True, ("SHOT", "ingress_wrong_device")),
    (UNKNOWN_POP, False, ("SHOT", "ingress_unknown_pop")),
], ids=["from a POP on its device", "in a POP's name on another device", "from an unknown source"])
def test_outer_fragments_to_the_tunnel_address_are_checked_like_whole_packets(host, pop, on_second_link, expected):
    """The kernel reassembles outer fragments and decapsulates them: the same source check."""
    frame = Ether(inbound(pop=pop))
    frame[IP].flags = "MF"
    result = host.ingress(raw(frame), ifindex=host.second_ifindex if on_second_link else 0)
    assert (result.action, result.reason) == expected
    assert host.flows() == {}


def test_ipip_to_another_address_is_not_the_mappers_business(host):
    result = host.ingress(inbound(outer_dst="10.1.0.11"))
    assert (result.action, result.reason) == ("OK", "ingress_pass")
    assert host.flows() == {}


def test_plain_traffic_passes_ingress_untouched(host):
    frame = raw(Ether(src=GATEWAY_MAC, dst=NIC_MAC) / IP(src=PLAYER, dst=HOST_ADDR) / UDP(sport=1, dport=22))
    result = host.ingress(frame)
    assert (result.action, result.reason, result.data) == ("OK", "ingress_pass", frame)


def test_inner_fragments_are_not_learned(host):
    frame = Ether(inbound())
    frame[IP].payload.flags = "MF"
    result = host.ingress(raw(frame))
    assert (result.action, result.reason) == ("OK", "ingress_fragment")
    assert host.flows() == {}


def test_a_vlan_tagged_frame_is_learned(host):
    assert host.ingress(inbound(vlan=42)).reason == "ingress_learned"
    assert host.flow("udp", PLAYER, PLAYER_PORT, GAME, GAME_PORT)[0] == POP_B


def test_an_unconfigured_host_learns_nothing(mapper_session):
    mapper_session.reset()
    mapper_session.add_pop(POP_B)
    assert mapper_session.ingress(inbound()).reason == "ingress_pass"
    assert mapper_session.flows() == {}


# ---- steering on egress --------------------------------------------------------------------------

def test_a_reply_goes_to_the_pop_its_flow_came_through(host):
    host.ingress(inbound(pop=POP_B))
    frame = reply(routed_to=POP_A)
    result = host.egress(frame)
    assert (result.action, result.reason) == ("OK", "egress_mapped")
    assert outer_dst(result.data) == POP_B
    assert checksums_valid(result.data)
    # Only the outer destination and the outer checksum changed: MACs, outer source, TTL, ID, DF
    # and the whole inner packet are byte for byte what the kernel built.
    changed = [i for i in range(len(frame)) if frame[i] != result.data[i]]
    assert len(result.data) == len(frame)
    assert set(changed) <= set(range(14 + 10, 14 + 12)) | set(range(14 + 16, 14 + 20))
    assert result.data[34:] == frame[34:]


def test_two_players_behind_one_nat_get_replies_through_their_own_pops(host):
    host.ingress(inbound(pop=POP_B, player=NAT, player_port=40001))
    host.ingress(inbound(pop=POP_C, player=NAT, player_port=40002))
    assert host.flows() == {
        (17, NAT, 40001, GAME, GAME_PORT): (POP_B, host.flow("udp", NAT, 40001, GAME, GAME_PORT)[1]),
        (17, NAT, 40002, GAME, GAME_PORT): (POP_C, host.flow("udp", NAT, 40002, GAME, GAME_PORT)[1]),
    }
    first = host.egress(reply(player=NAT, player_port=40001))
    second = host.egress(reply(player=NAT, player_port=40002))
    assert (outer_dst(first.data), outer_dst(second.data)) == (POP_B, POP_C)
    assert first.reason == second.reason == "egress_mapped"
    assert checksums_valid(first.data) and checksums_valid(second.data)


def test_the_same_player_on_two_services_keeps_two_pops(host):
    host.ingress(inbound(pop=POP_B, proto="udp"))
    host.ingress(inbound(pop=POP_C, proto="tcp"))
    assert outer_dst(host.egress(reply(proto="udp")).data) == POP_B
    assert outer_dst(host.egress(reply(proto="tcp")).data) == POP_C


def test_a_reply_without_a_mapping_goes_to_the_default_pop(host):
    """E.g. a master-server heartbeat: the server speaks first."""
    result = host.egress(reply(routed_to=POP_C))
    assert (result.action, result.reason) == ("OK", "egress_defaulted")
    assert outer_dst(result.data) == POP_A
    assert checksums_valid(result.data)


def test_a_reply_already_addressed_to_its_pop_is_left_byte_for_byte(host):
    host.ingress(inbound(pop=POP_A))
    frame = reply(routed_to=POP_A)
    result = host.egress(frame)
    assert (result.reason, result.data) == ("egress_mapped", frame)


@pytest.mark.parametrize("age_ns, expected", [
    (IDLE_NS - 2 * SECOND, POP_B),
    (IDLE_NS + 1, POP_A),
    (10 * IDLE_NS, POP_A),
], ids=["younger than idle", "just older than idle", "long gone"])
def test_a_mapping_idle_for_longer_than_the_idle_time_is_ignored(host, age_ns, expected):
    host.set_flow("udp", PLAYER, PLAYER_PORT, GAME, GAME_PORT, POP_B, monotonic_ns() - age_ns)
    result = host.egress(reply(routed_to=POP_C))
    assert outer_dst(result.data) == expected
    assert result.reason == ("egress_mapped" if expected == POP_B else "egress_defaulted")
    assert checksums_valid(result.data)


def test_without_an_idle_time_mappings_last_the_programs_default(host):
    host.configure(default_pop=POP_A, idle_ns=0)
    host.set_flow("udp", PLAYER, PLAYER_PORT, GAME, GAME_PORT, POP_B, monotonic_ns() - 100 * SECOND)
    assert outer_dst(host.egress(reply()).data) == POP_B
    host.set_flow("udp", PLAYER, PLAYER_PORT, GAME, GAME_PORT, POP_B, monotonic_ns() - 121 * SECOND)
    assert outer_dst(host.egress(reply()).data) == POP_A


def test_a_mapping_to_a_pop_no_longer_listed_falls_back_to_the_default(host):
    host.ingress(inbound(pop=POP_B))
    host.remove_pop(POP_B)
    result = host.egress(reply())
    assert (result.reason, outer_dst(result.data)) == ("egress_defaulted", POP_A)


def test_without_a_default_pop_an_unmapped_reply_keeps_the_kernels_route(host):
    host.configure(default_pop=None, idle_ns=IDLE_NS)
    frame = reply(routed_to=POP_C)
    result = host.egress(frame)
    assert (result.action, result.reason, result.data) == ("OK", "egress_unmapped", frame)


def test_an_icmp_reply_follows_its_flow(host):
    host.ingress(inbound(pop=POP_C, proto="icmp", player_port=99, service_port=0))
    result = host.egress(reply(proto="icmp", player_port=0, service_port=0))
    assert (result.reason, outer_dst(result.data)) == ("egress_mapped", POP_C)


def test_inner_fragments_go_to_the_default_pop(host):
    host.ingress(inbound(pop=POP_B))
    frame = Ether(reply())
    frame[IP].payload.flags = "MF"
    result = host.egress(raw(frame))
    assert (result.reason, outer_dst(result.data)) == ("egress_defaulted", POP_A)


def test_a_vlan_tagged_reply_is_rewritten_at_the_right_offset(host):
    host.ingress(inbound(pop=POP_B))
    result = host.egress(reply(vlan=42))
    assert (result.reason, outer_dst(result.data, l3_off=18)) == ("egress_mapped", POP_B)
    assert checksums_valid(result.data)


def test_outer_ip_options_are_stepped_over(host):
    host.ingress(inbound(pop=POP_B))
    frame = Ether(reply())
    frame[IP].options = b"\x01\x01\x01\x00"  # NOP NOP NOP EOL: a 24-byte outer header
    frame[IP].ihl = None
    frame[IP].len = None
    frame[IP].chksum = None
    result = host.egress(raw(frame))
    assert (result.reason, outer_dst(result.data)) == ("egress_mapped", POP_B)
    assert checksums_valid(result.data)


@pytest.mark.parametrize("fib_next_hop, expected_mac", [(False, GATEWAY_MAC), (True, PEERING_ROUTER_MAC)],
                         ids=["kernel's next hop kept", "next hop from the FIB"])
def test_a_pop_behind_another_router_gets_that_routers_mac_only_when_asked(host, fib_next_hop, expected_mac):
    host.configure(default_pop=POP_A, idle_ns=IDLE_NS, fib_next_hop=fib_next_hop)
    host.ingress(inbound(pop=PEERED_POP))
    result = host.egress(reply(routed_to=POP_A))
    out = Ether(result.data)
    assert (result.action, result.reason) == ("OK", "egress_mapped")
    assert (out.dst, out.src, out[IP].dst) == (expected_mac, NIC_MAC, PEERED_POP)
    assert checksums_valid(result.data) and result.data[34:] == reply()[34:]


def test_a_pop_behind_another_link_is_redirected_to_that_link(host):
    """A host with a link per POP: the reply the kernel routed to the default POP's link leaves by
    the link toward the player's POP, with that link's MACs (the lookup must not be tied to the
    device the packet is on)."""
    host.configure(default_pop=POP_A, idle_ns=IDLE_NS, fib_next_hop=True)
    host.add_pop(SECOND_LINK_POP)
    host.ingress(inbound(pop=SECOND_LINK_POP))
    result = host.egress(reply(routed_to=POP_A))
    out = Ether(result.data)
    assert (result.action, result.reason) == ("REDIRECT", "egress_mapped")
    assert (out.dst, out.src, out[IP].dst) == (SECOND_LINK_ROUTER_MAC, SECOND_NIC_MAC, SECOND_LINK_POP)
    assert checksums_valid(result.data)


def test_without_an_answer_from_the_fib_the_kernels_next_hop_is_kept(host):
    """An on-link POP whose neighbour entry does not exist yet (NO_NEIGH): still steered."""
    host.configure(default_pop=POP_A, idle_ns=IDLE_NS, fib_next_hop=True)
    host.add_pop("10.1.0.50")
    host.ingress(inbound(pop="10.1.0.50"))
    result = host.egress(reply(routed_to=POP_A))
    expected = ("egress_mapped", GATEWAY_MAC, "10.1.0.50")
    assert (result.reason, Ether(result.data).dst, outer_dst(result.data)) == expected


def test_the_fib_is_not_asked_when_the_kernel_already_routed_to_the_right_pop(host):
    host.configure(default_pop=POP_A, idle_ns=IDLE_NS, fib_next_hop=True)
    frame = reply(routed_to=POP_A, dst_mac=OTHER_MAC)
    assert host.egress(frame).data == frame


@pytest.mark.parametrize("frame", [
    raw(Ether(src=NIC_MAC, dst=GATEWAY_MAC) / IP(src=HOST_ADDR, dst=PLAYER) / UDP(sport=22, dport=5)),
    reply(outer_src="10.1.0.11"),
    raw(Ether(src=NIC_MAC, dst=GATEWAY_MAC, type=0x0806) / (b"\x00" * 28)),
], ids=["not IPIP", "IPIP from another local address", "ARP"])
def test_what_is_not_our_ipip_leaves_untouched(host, frame):
    result = host.egress(frame)
    assert (result.action, result.reason, result.data) == ("OK", "egress_pass", frame)


def test_an_unconfigured_host_steers_nothing(mapper_session):
    mapper_session.reset()
    frame = reply()
    assert mapper_session.egress(frame).data == frame


# ---- direct server return ------------------------------------------------------------------------

def test_dsr_strips_the_tunnel_and_sends_from_the_anycast_address_via_the_gateway(host):
    host.configure(default_pop=POP_A, idle_ns=IDLE_NS, gateway_mac="02:00:00:00:99:99")
    frame = reply(service=DSR_GAME, service_port=DSR_PORT)
    result = host.egress(frame)
    assert (result.action, result.reason) == ("OK", "egress_dsr")
    out = Ether(result.data)
    assert (out.dst, out.src, out.type) == ("02:00:00:00:99:99", NIC_MAC, 0x0800)
    assert (out[IP].src, out[IP].dst, out[IP].proto) == (DSR_GAME, PLAYER, 17)
    assert not isinstance(out[IP].payload, IP)
    assert result.data[14:] == frame[34:]  # the inner packet, byte for byte
    assert len(result.data) == len(frame) - 20
    assert checksums_valid(result.data)


def test_dsr_without_a_configured_gateway_asks_the_fib(host):
    frame = reply(service=DSR_GAME, service_port=DSR_PORT, dst_mac=OTHER_MAC)
    result = host.egress(frame)
    out = Ether(result.data)
    assert result.reason == "egress_dsr"
    assert (out.dst, out.src) == (GATEWAY_MAC, NIC_MAC)
    assert result.data[14:] == frame[34:]


def test_dsr_ignores_any_learned_mapping(host):
    host.ingress(inbound(pop=POP_B, service=DSR_GAME, service_port=DSR_PORT))
    result = host.egress(reply(service=DSR_GAME, service_port=DSR_PORT))
    assert result.reason == "egress_dsr" and IP not in Ether(result.data)[IP].payload


def test_only_services_marked_dsr_skip_the_pop(host):
    result = host.egress(reply(service=DSR_GAME, service_port=DSR_PORT, proto="tcp"))
    assert (result.reason, outer_dst(result.data)) == ("egress_defaulted", POP_A)


def test_a_vlan_tagged_dsr_reply_goes_through_a_pop_instead(host):
    """adjust_room(MAC) would cut at the wrong place behind an in-band tag."""
    result = host.egress(reply(service=DSR_GAME, service_port=DSR_PORT, vlan=42, routed_to=POP_C))
    assert (result.reason, outer_dst(result.data, l3_off=18)) == ("egress_defaulted", POP_A)


# ---- statistics ------------------------------------------------------------------------------------

def test_every_packet_is_counted_once_with_its_bytes(host):
    learned, mapped, defaulted = inbound(pop=POP_B), reply(), reply(player_port=1)
    dsr = reply(service=DSR_GAME, service_port=DSR_PORT, payload=b"x" * 100)
    host.ingress(learned)
    host.egress(mapped)
    host.egress(mapped)
    host.egress(defaulted)
    host.egress(dsr)
    assert host.reason_counts() == {
        "ingress_learned": (1, len(learned)),
        "egress_mapped": (2, 2 * len(mapped)),
        "egress_defaulted": (1, len(defaulted)),
        "egress_dsr": (1, len(dsr)),
    }


# ---- malformed and truncated ------------------------------------------------------------------------

def shortest_test_run_frame(frame: bytes) -> int:
    """BPF_PROG_TEST_RUN refuses an untagged IPv4 frame shorter than Ethernet + 20 bytes (it pulls
    the IP header first); behind a VLAN tag it takes anything from 14 bytes on, so the tagged
    variants cover the truncations inside the Ethernet, tag and outer headers."""
    return 14 if frame[12:14] == b"\x81\x00" else 34


@pytest.mark.parametrize("vlan", [None, 42], ids=["untagged", "tagged"])
def test_truncated_ingress_frames_never_teach_anything(host, vlan):
    frame = inbound(vlan=vlan)
    for length in range(shortest_test_run_frame(frame), len(frame)):
        result = host.ingress(frame[:length])
        assert (result.action, result.reason) == ("OK", "ingress_malformed"), length
    assert host.flows() == {}


@pytest.mark.parametrize("vlan", [None, 42], ids=["untagged", "tagged"])
def test_truncated_egress_frames_are_never_steered(host, vlan):
    host.ingress(inbound(pop=POP_B))
    frame = reply(vlan=vlan)
    for length in range(shortest_test_run_frame(frame), len(frame)):
        result = host.egress(frame[:length])
        assert result.reason in ("egress_pass", "egress_malformed"), length
        assert result.action == "SHOT" or result.data == frame[:length], length


def broken_inner(frame: bytes, l3_off: int = 14, **fields) -> bytes:
    """The frame with inner IPv4 header fields overwritten (outer header left consistent)."""
    data = bytearray(frame)
    inner = l3_off + 20
    if "version_ihl" in fields:
        data[inner] = fields["version_ihl"]
    if "tot_len" in fields:
        data[inner + 2:inner + 4] = struct.pack("!H", fields["tot_len"])
    return bytes(data)


def short_udp(frame_builder, **kwargs) -> bytes:
    """Outer and inner lengths consistent, but the inner UDP header cut to 4 bytes."""
    frame = bytearray(frame_builder(payload=b"", **kwargs)[:14 + 20 + 20 + 4])
    frame[14 + 2:14 + 4] = struct.pack("!H", 20 + 20 + 4)
    frame[14 + 20 + 2:14 + 20 + 4] = struct.pack("!H", 20 + 4)
    return bytes(frame)


MALFORMED_INNER = {
    "inner version 6": lambda build: broken_inner(build(), version_ihl=0x65),
    "inner IHL 4": lambda build: broken_inner(build(), version_ihl=0x44),
    "inner length too long": lambda build: broken_inner(build(), tot_len=200),
    "inner length too short": lambda build: broken_inner(build(), tot_len=30),
    "inner length below header": lambda build: broken_inner(build(), tot_len=12),
    "UDP header cut": short_udp,
}


@pytest.mark.parametrize("name", sorted(MALFORMED_INNER))
def test_a_malformed_inner_packet_from_a_pop_teaches_nothing(host, name):
    result = host.ingress(MALFORMED_INNER[name](inbound))
    assert (result.action, result.reason) == ("OK", "ingress_malformed")
    assert host.flows() == {}


@pytest.mark.parametrize("name", sorted(MALFORMED_INNER))
def test_our_ipip_with_a_malformed_inner_packet_is_dropped_not_steered(host, name):
    host.ingress(inbound(pop=POP_B))
    result = host.egress(MALFORMED_INNER[name](reply))
    assert (result.action, result.reason) == ("SHOT", "egress_malformed")


@pytest.mark.parametrize("version_ihl", [0x44, 0x65], ids=["outer IHL 4", "outer version 6"])
def test_a_broken_outer_header_is_left_alone(host, version_ihl):
    frame = bytearray(reply())
    frame[14] = version_ihl
    result = host.egress(bytes(frame))
    assert (result.action, result.reason, result.data) == ("OK", "egress_pass", bytes(frame))
    assert host.ingress(bytes(frame)).reason == "ingress_malformed"


def test_outer_fragments_are_not_parsed(host):
    frame = Ether(inbound())
    frame[IP].flags = "MF"
    assert host.ingress(raw(frame)).reason == "ingress_fragment"
    assert host.flows() == {}
    egress = Ether(reply())
    egress[IP].flags = "MF"
    result = host.egress(raw(egress))
    assert (result.action, result.reason, result.data) == ("OK", "egress_pass", raw(egress))


def test_trailing_bytes_after_the_ip_packet_are_allowed_and_kept(host):
    """Ethernet pads short frames; some drivers hand over more than the IP total length."""
    padding = b"\0" * 10
    assert host.ingress(inbound(proto="icmp", player_port=7, service_port=0) + padding).reason == "ingress_learned"
    frame = reply(proto="icmp", player_port=0, service_port=0, routed_to=POP_C) + padding
    result = host.egress(frame)
    assert (result.reason, outer_dst(result.data)) == ("egress_mapped", POP_B)
    assert len(result.data) == len(frame) and result.data.endswith(padding)
