"""Rule 1: parsing. Every malformed header is dropped; what is not ours goes to the kernel."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import raw

from .scenario import BACKEND, GAME, GAME_PORT, PLAYER, eth, player_tcp, player_udp


def with_ip_field(frame: bytes, offset: int, fmt: str, value: int) -> bytes:
    """Overwrite a field of the IPv4 header (offset from the IP header) without fixing anything."""
    data = bytearray(frame)
    struct.pack_into(fmt, data, 14 + offset, value)
    return bytes(data)


# (A frame shorter than its Ethernet header cannot be tested: BPF_PROG_TEST_RUN refuses XDP input
# under 14 bytes, as NICs never deliver one; parse_frame() still checks for it.)
MALFORMED = {
    "vlan tag cut": raw(Ether(src="02:00:00:00:00:fe", dst="02:00:00:00:00:01", type=0x8100)) + b"\x00\x01",
    "ipv4 header cut": player_udp()[:14 + 12],
    "ihl below 5": with_ip_field(player_udp(), 0, "!B", 0x44),
    "ihl beyond the frame": raw(eth() / IP(src=PLAYER, dst=GAME, ihl=15, proto=17))[:14 + 24],
    "version 6 in an ipv4 frame": with_ip_field(player_udp(), 0, "!B", 0x65),
    "total length beyond the frame": with_ip_field(player_udp(), 2, "!H", 1400),
    "total length below the header": with_ip_field(player_udp(), 2, "!H", 12),
    "udp header cut": raw(eth() / IP(src=PLAYER, dst=GAME, proto=17, len=24) / b"\x01\x02\x03\x04"),
    "udp length mismatch": raw(eth() / IP(src=PLAYER, dst=GAME) / UDP(sport=1, dport=GAME_PORT, len=30) / b"abcd"),
    "udp length too small": raw(eth() / IP(src=PLAYER, dst=GAME) / UDP(sport=1, dport=GAME_PORT, len=4) / b"abcd"),
    "tcp data offset below 5": raw(eth() / IP(src=PLAYER, dst=GAME) / TCP(sport=1, dport=GAME_PORT, dataofs=4)),
    "tcp data offset beyond payload": raw(eth() / IP(src=PLAYER, dst=GAME) / TCP(sport=1, dport=GAME_PORT, dataofs=15)),
    "tcp header cut": raw(eth() / IP(src=PLAYER, dst=GAME, proto=6, len=30) / (b"\x00" * 10)),
    "icmp header cut": raw(eth() / IP(src=PLAYER, dst=GAME, proto=1, len=24) / b"\x08\x00\x00\x00"),
    "ipv6 header cut": raw(Ether(src="02:00:00:00:00:fe", dst="02:00:00:00:00:01") / IPv6(dst="2001:db8:100::1"))[:14 + 30],
}


@pytest.mark.parametrize("frame", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_headers_are_dropped(pop, frame):
    result = pop.run(frame)
    assert (result.action, result.reason) == ("DROP", "drop_malformed")


def test_malformed_to_anything_is_dropped_even_when_not_ours(pop):
    frame = with_ip_field(player_udp(dst="192.0.2.1"), 2, "!H", 1400)
    assert pop.run(frame).reason == "drop_malformed"


def test_ethernet_padding_after_the_ip_packet_is_accepted(pop):
    frame = player_udp(payload=b"x")
    assert len(frame) < 60
    padded = frame + b"\x00" * (60 - len(frame))
    result = pop.run(padded)
    assert (result.action, result.reason) == ("TX", "tx_forward")


def test_non_ip_goes_to_the_kernel_untouched(pop):
    frame = raw(Ether(src="02:00:00:00:00:fe", dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.0.0.1"))
    result = pop.run(frame)
    assert (result.action, result.reason, result.data) == ("PASS", "pass_non_ip", frame)


def test_ipv6_not_to_an_anycast_prefix_goes_to_the_kernel(pop):
    frame = raw(Ether(src="02:00:00:00:00:fe", dst="02:00:00:00:00:01") / IPv6(src="2001:db8:1::5", dst="2001:db8:99::1") / UDP(dport=179))
    result = pop.run(frame)
    assert (result.action, result.reason, result.data) == ("PASS", "pass_not_ours", frame)


def test_ipv6_to_an_anycast_prefix_is_dropped_until_ipv6_services_exist(pop):
    frame = raw(Ether(src="02:00:00:00:00:fe", dst="02:00:00:00:00:01") / IPv6(src="2001:db8:1::5", dst="2001:db8:100::10") / UDP(dport=GAME_PORT))
    assert pop.run(frame).reason == "drop_no_service"


def test_one_vlan_tag_is_parsed_and_the_forwarded_frame_is_untagged(pop):
    frame = raw(eth() / Dot1Q(vlan=42) / IP(src=PLAYER, dst=GAME) / UDP(sport=5, dport=GAME_PORT) / b"tagged")
    result = pop.run(frame)
    assert (result.action, result.reason) == ("TX", "tx_forward")
    out = Ether(result.data)
    assert out.type == 0x0800 and Dot1Q not in out
    assert out[IP].dst == BACKEND and out[IP].payload[UDP].load == b"tagged"


def test_a_deny_applies_to_vlan_tagged_frames_too(pop):
    pop.deny(PLAYER + "/32")
    frame = raw(eth() / Dot1Q(vlan=42) / IP(src=PLAYER, dst=GAME) / UDP(sport=5, dport=GAME_PORT))
    assert pop.run(frame).reason == "drop_deny"


# Decided behaviour: fragments and IP options to an anycast address are dropped (game traffic has
# neither; a non-first fragment has no ports to filter on); to anything else they go to the kernel.
@pytest.mark.parametrize("fragment", [dict(flags="MF"), dict(frag=100), dict(flags="MF", frag=8)], ids=["first", "last", "middle"])
def test_fragments_to_a_service_are_dropped(pop, fragment):
    frame = raw(eth() / IP(src=PLAYER, dst=GAME, proto=17, **fragment) / (b"\x00" * 16))
    assert pop.run(frame).reason == "drop_fragment"


def test_fragments_not_to_us_go_to_the_kernel(pop):
    frame = raw(eth() / IP(src=PLAYER, dst="192.0.2.7", proto=17, flags="MF") / (b"\x00" * 16))
    result = pop.run(frame)
    assert (result.action, result.reason) == ("PASS", "pass_not_ours")


def test_ip_options_to_a_service_are_dropped(pop):
    frame = raw(eth() / IP(src=PLAYER, dst=GAME, options=[IPOption_RR()]) / UDP(sport=5, dport=GAME_PORT) / b"x")
    assert pop.run(frame).reason == "drop_ip_options"


def test_ip_options_not_to_us_go_to_the_kernel(pop):
    frame = raw(eth() / IP(src=PLAYER, dst="192.0.2.7", options=[IPOption_RR()]) / UDP(sport=5, dport=22))
    assert pop.run(frame).action == "PASS"


def test_tcp_and_udp_and_icmp_to_their_services_are_forwarded(pop):
    from scapy.layers.inet import ICMP

    for frame in (player_udp(), player_tcp(), raw(eth() / IP(src=PLAYER, dst=GAME) / ICMP())):
        result = pop.run(frame)
        assert (result.action, result.reason) == ("TX", "tx_forward")
