"""Issue 12 section 3 on the POP: the return path trusts only what it should.

Each attack is sent as an attacker would send it, through the real object, and each test also
shows the packet (or its honest twin) passing where it should: on the device that carries IPIP,
unfragmented, with a live TTL, as an echo request. On the program before this change every attack
below got through: spoofed IPIP on the uplink of a POP with an underlay was decapsulated
(tx_return), fragmented IPIP and GRE to the tunnel address went to the kernel (pass_not_ours),
a TTL-1 reply left a punch and an A2S cache entry behind, a QinQ frame skipped every filter
(pass_non_ip), ICMP errors to an ICMP service were forwarded or answered (tx_forward,
tx_icmp_too_big), and the POP's own address as a source was the kernel's business (pass_not_ours).
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import GRE
from scapy.layers.l2 import Dot1AD, Dot1Q

from harness.edge_env import monotonic_ns
from .scenario import (A2S_INFO_REPLY, A2S_REQUEST, BACKEND, GAME, GAME_PORT, GAME_UDP_ID, PLAYER, PLAYER_PORT,
                       SIDE_BACKEND, SIDE_GAME, SIDE_PORT, ICMP, IP, UDP, Ether, backend_reply, eth, player_icmp,
                       player_udp, raw, setup_pop)
from harness import topology as topo

SECOND = 10**9
BLACKHOLED_PLAYER = "10.9.1.1"


def learnt_nothing(edge, dst=PLAYER, dport=PLAYER_PORT):
    return (edge.punch_last_seen("udp", GAME, GAME_PORT, dst, dport) is None
            and edge.a2s_cache(GAME_UDP_ID) is None)


# ---- 1. IPIP only on the devices that carry it, whole, from a known backend -------------------------

def test_a_pop_with_an_underlay_takes_ipip_only_there(pop):
    """bk0 is the underlay: a reply spoofed in a backend's name from the internet (the uplink) is
    not decapsulated to the player any more; the same bytes on the underlay are."""
    pop.set_tunnel_devices(topo.SIDE)
    pop.add_tx_port(topo.UPLINK)
    frame = backend_reply(A2S_INFO_REPLY)
    spoofed = pop.run(frame, ingress=topo.UPLINK)
    assert (spoofed.action, spoofed.reason) == ("DROP", "drop_bad_tunnel")
    assert learnt_nothing(pop)
    honest = pop.run(frame, ingress=topo.SIDE)
    assert (honest.action, honest.reason) == ("REDIRECT", "tx_return")
    assert pop.a2s_cache(GAME_UDP_ID)[1] == A2S_INFO_REPLY


def test_without_underlay_devices_the_uplink_carries_ipip(pop):
    """The standard POP (setup_pop): the uplink is flagged, another device is not."""
    frame = backend_reply(outer_src=SIDE_BACKEND, inner_src=SIDE_GAME, sport=SIDE_PORT)
    assert pop.run(frame, ingress=topo.UPLINK).reason == "tx_return"
    assert pop.run(frame, ingress=topo.SIDE).reason == "drop_bad_tunnel"


def test_no_device_flagged_no_return_path(pop):
    """A program whose loader never said which devices carry IPIP takes IPIP from none."""
    pop.set_tunnel_devices()
    assert pop.run(backend_reply()).reason == "drop_bad_tunnel"


@pytest.mark.parametrize("flags, frag", [("MF", 0), (0, 10), ("MF", 10)], ids=["first", "last", "middle"])
def test_fragmented_ipip_to_the_tunnel_address_is_dropped(pop, flags, frag):
    """The kernel's ipip device would reassemble these and forward the result past every filter."""
    assert pop.run(backend_reply()).reason == "tx_return"         # whole: the return path
    result = pop.run(backend_reply(outer_flags=flags, outer_frag=frag))
    assert (result.action, result.reason) == ("DROP", "drop_bad_tunnel")
    assert pop.reason_counts()["drop_bad_tunnel"][0] == 1


def test_ipip_from_a_stranger_on_the_right_device_is_still_refused(pop):
    result = pop.run(backend_reply(outer_src="10.1.0.99"))
    assert (result.action, result.reason) == ("DROP", "drop_bad_return")
    assert learnt_nothing(pop)


@pytest.mark.parametrize("proto", [47, 41], ids=["gre", "6in4"])
def test_other_tunnel_protocols_to_the_tunnel_address_are_dropped(pop, proto):
    inner = IP(src=GAME, dst=PLAYER) / UDP(sport=GAME_PORT, dport=PLAYER_PORT) / b"x"
    payload = GRE(proto=0x0800) / inner if proto == 47 else raw(inner)
    to_tunnel = raw(eth() / IP(src=BACKEND, dst=topo.POP_TUNNEL_ADDR, proto=proto) / payload)
    assert pop.run(to_tunnel).reason == "drop_bad_tunnel"
    # Elsewhere (not the POP's tunnel address) it stays the kernel's business, as before.
    elsewhere = raw(eth() / IP(src=BACKEND, dst="10.0.0.77", proto=proto) / payload)
    assert pop.run(elsewhere).reason == "pass_not_ours"


def test_fragments_of_anything_to_the_tunnel_address_are_dropped(pop):
    ping = raw(eth() / IP(src=PLAYER, dst=topo.POP_TUNNEL_ADDR) / ICMP() / (b"x" * 64))
    assert pop.run(ping).reason == "pass_not_ours"                # the POP answers its own pings
    fragment = raw(eth() / IP(src=PLAYER, dst=topo.POP_TUNNEL_ADDR, flags="MF") / ICMP() / (b"x" * 64))
    assert pop.run(fragment).reason == "drop_bad_tunnel"


# ---- 2. punches and snoops only for replies that leave ------------------------------------------------

def test_a_ttl_1_reply_leaves_no_punch_and_no_cache_entry(edge):
    """The attack: a reply with inner TTL 1 is dropped, but used to punch the attacker's flow
    (then a flood passed as tx_punched at a 1 pps limit) and overwrite the A2S cache."""
    setup_pop(edge, limits={"udp": (1, 0)}, ban_sec=60)
    poison = b"\xff\xff\xff\xffI" + b"attacker's server name\x00" * 4
    for reply in (poison, b"session"):      # (a connectionless reply punches nothing in any case)
        result = edge.run(backend_reply(reply, inner_ttl=1))
        assert (result.action, result.reason) == ("DROP", "drop_ttl")
    assert learnt_nothing(edge)
    flood = [edge.run(player_udp()).reason for dummy in range(20)]
    assert flood[:2] == ["tx_forward", "drop_rate_limit"] and set(flood[2:]) == {"drop_banned"}


def test_the_same_replies_with_a_live_ttl_teach_both(pop):
    """The A2S reply fills the cache; a reply of the player's session punches its flow (an A2S
    reply goes to whoever asked: it punches nothing, test_return_path)."""
    before = monotonic_ns()
    assert pop.run(backend_reply(A2S_INFO_REPLY)).reason == "tx_return"
    assert pop.a2s_cache(GAME_UDP_ID)[1] == A2S_INFO_REPLY
    assert pop.run(backend_reply(b"session")).reason == "tx_return"
    assert before <= pop.punch_last_seen("udp", GAME, GAME_PORT, PLAYER, PLAYER_PORT) <= monotonic_ns()


def test_a_reply_without_a_route_leaves_nothing(pop):
    for reply in (A2S_INFO_REPLY, b"session"):      # what would fill the cache, what would punch
        result = pop.run(backend_reply(reply, dst=BLACKHOLED_PLAYER))
        assert (result.action, result.reason) == ("DROP", "drop_no_route")
    assert learnt_nothing(pop, dst=BLACKHOLED_PLAYER)


def test_a_too_big_reply_is_learnt_only_when_the_kernel_forwards_it(pop):
    """pass_too_big: without DF the kernel fragments and forwards (learnt); with DF it answers
    and drops (not learnt)."""
    # An inner packet of 1513 bytes: more than the uplink's MTU (1500) once decapsulated.
    df_frame = raw(eth() / IP(src=BACKEND, dst=topo.POP_TUNNEL_ADDR, proto=4)
                   / IP(src=GAME, dst=PLAYER, flags="DF") / UDP(sport=GAME_PORT, dport=PLAYER_PORT)
                   / (b"z" * 1485))      # a session's packet: what would punch
    assert pop.run(df_frame).reason == "pass_too_big"
    assert learnt_nothing(pop)
    no_df = raw(eth() / IP(src=BACKEND, dst=topo.POP_TUNNEL_ADDR, proto=4)
                / IP(src=GAME, dst=PLAYER) / UDP(sport=GAME_PORT, dport=PLAYER_PORT) / (b"z" * 1480))
    assert pop.run(no_df).reason == "pass_too_big"
    assert pop.punch_last_seen("udp", GAME, GAME_PORT, PLAYER, PLAYER_PORT) is not None


# ---- 3. QinQ: parsed and filtered ----------------------------------------------------------------------

def qinq(frame: bytes, outer_vid=100, inner_vid=7) -> bytes:
    """The same IP packet behind an 802.1ad tag and an 802.1Q tag."""
    packet = Ether(frame)
    return raw(Ether(src=packet.src, dst=packet.dst) / Dot1AD(vlan=outer_vid) / Dot1Q(vlan=inner_vid)
               / packet[IP])


def test_a_double_tagged_frame_meets_the_filters(pop):
    pop.ban(PLAYER, monotonic_ns() + 60 * SECOND)
    assert pop.run(player_udp()).reason == "drop_banned"
    assert pop.run(qinq(player_udp())).reason == "drop_banned"        # was pass_non_ip: unfiltered
    pop.deny("203.0.113.0/24")
    assert pop.run(qinq(player_udp(dst="10.0.0.1", dport=179))).reason == "drop_deny"


def test_a_double_tagged_player_is_forwarded_untagged(pop):
    result = pop.run(qinq(player_udp(src="203.0.113.9")))
    assert result.reason == "tx_forward"
    out = Ether(result.data)
    assert out.type == 0x0800 and out[IP].dst == BACKEND and out[IP].payload[IP].src == "203.0.113.9"


def test_a_double_tagged_a2s_request_is_challenged_with_both_tags_kept(pop):
    pop.set_a2s_cache(GAME_UDP_ID, A2S_INFO_REPLY, monotonic_ns())
    result = pop.run(qinq(player_udp(A2S_REQUEST, src="203.0.113.9")))
    assert (result.action, result.reason) == ("TX", "tx_a2s_challenge")
    out = Ether(result.data)
    assert (out[Dot1AD].vlan, out[Dot1Q].vlan) == (100, 7)
    assert out[IP].dst == "203.0.113.9" and out[UDP].load[:5] == b"\xff\xff\xff\xff\x41"


def test_a_third_tag_is_dropped(pop):
    frame = qinq(player_udp())
    triple = frame[:12] + b"\x81\x00\x00\x05" + frame[12:]
    assert pop.run(triple).reason == "drop_malformed"


# ---- 4, 5. ICMP services: echo only; no error answered ----------------------------------------------------

def test_an_icmp_service_forwards_echo_requests(pop):
    assert pop.run(player_icmp(8)).reason == "tx_forward"


@pytest.mark.parametrize("icmp_type", [0, 3, 5, 11, 13, 17])
def test_an_icmp_service_drops_every_other_type(pop, icmp_type):
    result = pop.run(player_icmp(icmp_type))
    assert (result.action, result.reason) == ("DROP", "drop_icmp_type")


def test_no_icmp_error_answers_an_icmp_error(pop):
    """A too-big echo request with DF is answered (RFC 1191); a too-big ICMP error never is."""
    big = b"x" * 1460
    echo = pop.run(player_icmp(8, big, flags="DF"))
    assert echo.reason == "tx_icmp_too_big"
    error = pop.run(player_icmp(3, big, code=1, flags="DF"))
    assert error.action == "DROP" and error.reason != "tx_icmp_too_big"


# ---- 6. the POP's own addresses as a source --------------------------------------------------------------

@pytest.mark.parametrize("source", [topo.POP_TUNNEL_ADDR, "10.2.0.1"], ids=["tunnel/uplink", "other interface"])
@pytest.mark.parametrize("dst, dport", [(topo.POP_TUNNEL_ADDR, 179), (GAME, GAME_PORT)], ids=["pop", "service"])
def test_the_pops_own_address_as_source_is_dropped(pop, source, dst, dport):
    result = pop.run(player_udp(src=source, dst=dst, dport=dport))
    assert (result.action, result.reason) == ("DROP", "drop_own_source")
    assert pop.run(player_udp(src=source, dst=dst, dport=dport), ingress=topo.SIDE).reason == "drop_own_source"


def test_the_neighbours_own_packets_still_reach_the_pop(pop):
    assert pop.run(player_udp(src=topo.ROUTER_IP, dst=topo.POP_TUNNEL_ADDR, dport=179)).reason == "pass_not_ours"


def test_the_tunnel_address_is_own_even_when_not_listed(edge):
    """The tunnel address comes from edge_config, whatever edge_own_addrs holds."""
    setup_pop(edge, tunnel_addr="10.0.0.50")
    assert edge.run(player_udp(src="10.0.0.50", dst=topo.UPLINK_ADDR.split("/", maxsplit=1)[0], dport=22)).reason == \
        "drop_own_source"


def test_an_unconfigured_pop_drops_nothing_as_its_own(edge):
    """Before edge_rules writes the tunnel address (0.0.0.0), a DHCP client's 0.0.0.0 is not ours."""
    dhcp = raw(eth() / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) / (b"\x01" * 240))
    assert edge.run(dhcp).reason == "pass_not_ours"
