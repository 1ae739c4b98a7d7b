"""Payload rules (anycast_edge_filters.rules, payload_rules.h) through the real program.

Every test shows the same packets forwarded without the rule (or before it is loaded) and what
the rule does to them: a defence is shown to change something.
"""

from __future__ import annotations

import socket
import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.packet import raw

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi

from harness.edge_env import monotonic_ns
from .packets import pad
from .scenario import GAME, GAME_PORT, PLAYER, PLAYER_PORT, SIDE_GAME, SIDE_PORT, eth, player_icmp, player_udp, setup_pop

rule = abi.pack_payload_rule
SECOND = 10**9


def tcp(flags="S", payload=b"", src=PLAYER, sport=PLAYER_PORT, ttl=64):
    return raw(eth() / IP(src=src, dst=GAME, ttl=ttl) / TCP(sport=sport, dport=GAME_PORT, flags=flags) / payload)


def udp(payload=b"join", **fields):
    return player_udp(payload=payload, **fields)


def verdicts(pop, frames):
    return [pop.run(frame).reason for frame in frames]


def in_one_window(pop, frames):
    """verdicts() of frames that all fall in one one-second window (per-second limits): started
    early in a second, and run again (after the windows they filled are gone) if a second
    boundary fell between them anyway."""
    for dummy in range(5):
        while monotonic_ns() % SECOND > SECOND // 2:
            time.sleep(0.005)
        second = monotonic_ns() // SECOND
        reasons = verdicts(pop, frames)
        if monotonic_ns() // SECOND == second:
            return reasons
        for name in ("edge_rule_limits", "edge_sources"):
            for key in list(pop.maps[name].keys()):
                pop.maps[name].delete(key)
    raise AssertionError("five tries never fitted %d packets in one second" % len(frames))


# ---- the list itself ---------------------------------------------------------------------------------


def test_no_rules_forwards_as_before(pop):
    assert pop.run(udp()).reason == "tx_forward"
    assert pop.rule_hits(0) == (0, 0)


def test_one_drop_rule_drops_what_it_matches_and_counts_it(pop):
    frame = udp(b"\xff\xff\xff\xffq junk")
    assert pop.run(frame).reason == "tx_forward"
    pop.set_payload_rules([rule("drop", "udp", dport=(GAME_PORT, GAME_PORT), payload=b"\xff\xff\xff\xffq")])
    result = pop.run(frame)
    assert (result.action, result.reason) == ("DROP", "drop_rule")
    assert pop.rule_hits(0) == (1, len(frame))
    assert pop.run(udp(b"\xff\xff\xff\xffT")).reason == "tx_forward"   # other bytes: no match
    assert pop.rule_hits(0) == (1, len(frame))


def test_first_match_wins_pass_before_a_broader_drop(pop):
    wanted, junk = udp(b"\xff\xff\xff\xffTSource"), udp(b"\x00junk")
    pop.set_payload_rules([rule("pass", "udp", payload=b"\xff\xff\xff\xff"),
                           rule("drop", "udp", dport=(GAME_PORT, GAME_PORT))])
    assert verdicts(pop, [wanted, junk]) == ["tx_forward", "drop_rule"]
    assert pop.rule_hits(0)[0] == 1 and pop.rule_hits(1)[0] == 1
    # The same rules the other way round: the drop comes first and takes both.
    pop.set_payload_rules([rule("drop", "udp", dport=(GAME_PORT, GAME_PORT)),
                           rule("pass", "udp", payload=b"\xff\xff\xff\xff")])
    assert verdicts(pop, [wanted, junk]) == ["drop_rule", "drop_rule"]


def test_the_list_ends_at_its_first_empty_entry(pop):
    """A rule written past the list's end (as a shorter list leaves the old tail in the other
    bank only) is never read: set_payload_rules empties the rest of the bank."""
    pop.set_payload_rules([rule("pass", "tcp"), rule("drop", "udp")])
    assert pop.run(udp()).reason == "drop_rule"
    pop.set_payload_rules([rule("pass", "tcp")])
    assert pop.run(udp()).reason == "tx_forward"


def test_256_rules_the_last_one_matching(pop):
    frame = udp(b"needle")
    filler = [rule("drop", "udp", dport=(1000 + index, 1000 + index)) for index in range(abi.MAX_PAYLOAD_RULES - 1)]
    pop.set_payload_rules(filler)
    assert pop.run(frame).reason == "tx_forward"
    pop.set_payload_rules(filler + [rule("drop", "udp", payload=b"needle")])
    assert pop.run(frame).reason == "drop_rule"
    assert pop.rule_hits(abi.MAX_PAYLOAD_RULES - 1)[0] == 1
    assert all(pop.rule_hits(position) == (0, 0) for position in (0, 1, 254))


def test_a_bank_switch_is_whole_the_old_list_stays_in_the_other_bank(pop):
    pop.set_payload_rules([rule("drop", "udp")])
    first = pop.payload_rule_bank()
    pop.set_payload_rules([])
    assert pop.payload_rule_bank() == 1 - first
    assert pop.run(udp()).reason == "tx_forward"


# ---- every field at its edges --------------------------------------------------------------------------


def test_protocol(pop):
    pop.set_payload_rules([rule("drop", "tcp")])
    assert verdicts(pop, [udp(), tcp(), player_icmp()]) == ["tx_forward", "drop_rule", "tx_forward"]
    pop.set_payload_rules([rule("drop", "icmp")])
    assert verdicts(pop, [udp(), tcp(), player_icmp()]) == ["tx_forward", "tx_forward", "drop_rule"]
    pop.set_payload_rules([rule("drop")])   # protocol any
    assert verdicts(pop, [udp(), tcp(), player_icmp()]) == ["drop_rule"] * 3


def test_destination_port_range_edges(pop):
    side = udp(dst=SIDE_GAME, dport=SIDE_PORT)
    unprotected = pop.run(side).reason           # its backend is on another device: the kernel's
    assert unprotected != "drop_rule"
    pop.set_payload_rules([rule("drop", "udp", dport=(SIDE_PORT, GAME_PORT - 1))])
    assert pop.run(udp()).reason == "tx_forward"                                     # 27015: one past
    assert pop.run(side).reason == "drop_rule"                                         # 7777: the min
    pop.set_payload_rules([rule("drop", "udp", dport=(GAME_PORT, GAME_PORT))])
    assert pop.run(udp()).reason == "drop_rule"                                         # the max
    assert pop.run(side).reason == unprotected


@pytest.mark.parametrize("field,bounds,value,dropped", [
    ("sport", (1024, 2000), 1023, False), ("sport", (1024, 2000), 1024, True),
    ("sport", (1024, 2000), 2000, True), ("sport", (1024, 2000), 2001, False),
    ("ttl", (3, 64), 1 + 1, False), ("ttl", (3, 64), 3, True), ("ttl", (3, 64), 64, True), ("ttl", (3, 64), 65, False),
])
def test_source_port_and_ttl_range_edges(pop, field, bounds, value, dropped):
    frame = udp(**{field: value})
    assert pop.run(frame).reason == "tx_forward"
    pop.set_payload_rules([rule("drop", "udp", **{field: bounds})])
    assert pop.run(frame).reason == ("drop_rule" if dropped else "tx_forward")


def test_length_range_is_the_ip_total_length(pop):
    # IP 20 + UDP 8 + payload: 28 + n bytes; the frame adds 14 (Ethernet) and padding to 60.
    pop.set_payload_rules([rule("drop", "udp", length=(30, 40))])
    sizes = {1: "tx_forward", 2: "drop_rule", 12: "drop_rule", 13: "tx_forward"}
    for size, reason in sizes.items():
        assert pop.run(udp(b"x" * size)).reason == reason, size


def test_tcp_flags_mask_and_value(pop):
    syn, synack, ack, fin = tcp("S"), tcp("SA"), tcp("A"), tcp("F")
    assert verdicts(pop, [syn, synack, ack, fin]) == ["tx_forward"] * 4
    # SYN without ACK: mask SYN|ACK (0x12), value SYN (0x02).
    pop.set_payload_rules([rule("drop", "tcp", tcp_flags=(0x12, 0x02))])
    assert verdicts(pop, [syn, synack, ack, fin]) == ["drop_rule", "tx_forward", "tx_forward", "tx_forward"]
    # Any packet with ACK set, whatever else.
    pop.set_payload_rules([rule("drop", "tcp", tcp_flags=(0x10, 0x10))])
    assert verdicts(pop, [syn, synack, ack, fin]) == ["tx_forward", "drop_rule", "drop_rule", "tx_forward"]


def test_a_tcp_flags_rule_never_matches_udp(pop):
    """UDP has no flags: a rule asking for flags value 0 under a mask must not match UDP's 'zero'."""
    pop.set_payload_rules([rule("drop", 0, tcp_flags=(0x02, 0x00))])
    assert pop.run(udp()).reason == "tx_forward"
    assert pop.run(tcp("A")).reason == "drop_rule"


def test_payload_at_an_offset_with_a_mask(pop):
    # Bytes 4..7 of the payload, the high nibble of byte 5 ignored.
    pop.set_payload_rules([rule("drop", "udp", payload_offset=4, payload=b"\x54\x05\x00\x01",
                                payload_mask=b"\xff\x0f\xff\xff")])
    assert pop.run(udp(b"\xff\xff\xff\xff\x54\x05\x00\x01tail")).reason == "drop_rule"
    assert pop.run(udp(b"\xff\xff\xff\xff\x54\xf5\x00\x01")).reason == "drop_rule"     # masked nibble
    assert pop.run(udp(b"\xff\xff\xff\xff\x54\x06\x00\x01")).reason == "tx_forward"    # one bit off
    assert pop.run(udp(b"\xff\xff\xff\x54\x05\x00\x01")).reason == "tx_forward"        # shifted by one


def test_payload_of_16_bytes_the_whole_window(pop):
    needle = bytes(range(0x30, 0x40))
    pop.set_payload_rules([rule("drop", "udp", payload_offset=3, payload=needle)])
    assert pop.run(udp(b"abc" + needle)).reason == "drop_rule"
    assert pop.run(udp(b"abc" + needle[:15] + b"X")).reason == "tx_forward"   # the 16th byte counts


def test_a_payload_match_past_the_packets_end_does_not_match(pop):
    """The rule would read past the IP packet: no match, even where Ethernet padding (zeros) would
    match a zero pattern. Exactly at the end, it matches."""
    pop.set_payload_rules([rule("drop", "udp", payload_offset=4, payload=b"\x00\x00")])
    assert pop.run(udp(b"abcd\x00\x00")).reason == "drop_rule"      # ends exactly at the packet's end
    short = udp(b"abcd\x00")                                        # one byte short ...
    assert pop.run(short).reason == "tx_forward"
    padded = pad(short, bytes(60 - len(short)))                     # ... and Ethernet padding (zeros) after it
    assert pop.run(padded).reason == "tx_forward"
    assert pop.run(udp(b"")).reason == "tx_forward"


def test_payload_offset_counts_from_after_the_tcp_header_with_options(pop):
    options = [("MSS", 1400), ("NOP", None), ("NOP", None)]
    with_options = raw(eth() / IP(src=PLAYER, dst=GAME) /
                       TCP(sport=PLAYER_PORT, dport=GAME_PORT, flags="PA", options=options) / b"GET /")
    pop.set_payload_rules([rule("drop", "tcp", payload=b"GET ")])
    assert pop.run(with_options).reason == "drop_rule"
    assert pop.run(tcp("PA", b"PUT /")).reason == "tx_forward"


def test_verified_or_not(pop):
    """'verified' by the allow list here; by a proof: test_admission.py."""
    frame = udp()
    pop.set_payload_rules([rule("drop", "udp", verified="unverified")])
    assert pop.run(frame).reason == "drop_rule"
    pop.allow(PLAYER + "/32")
    assert pop.run(frame).reason == "tx_forward"
    pop.set_payload_rules([rule("drop", "udp", verified="verified")])
    assert pop.run(frame).reason == "drop_rule"
    assert pop.run(udp(src="203.0.113.6")).reason == "tx_forward"
    assert pop.rule_hits(0)[0] == 2


# ---- what comes before the rules, and the limit action ---------------------------------------------------


def test_pass_never_bypasses_the_deny_list_own_source_or_bans(pop):
    pop.set_payload_rules([rule("pass")])
    pop.deny("203.0.113.0/28")
    assert pop.run(udp()).reason == "drop_deny"
    pop.ban("203.0.113.66", monotonic_ns() + 60 * 10**9)
    assert pop.run(udp(src="203.0.113.66")).reason == "drop_banned"
    assert pop.run(udp(src="10.0.0.1")).reason == "drop_own_source"
    assert pop.run(player_icmp(icmp_type=0, src="203.0.113.99")).reason == "drop_icmp_type"
    assert pop.rule_hits(0) == (0, 0)


def test_pass_does_not_exempt_from_the_rate_limit(pop):
    setup_pop(pop, limits={"udp": (2, 0)})
    pop.set_payload_rules([rule("pass", "udp")])
    assert in_one_window(pop, [udp()] * 3) == ["tx_forward", "tx_forward", "drop_rate_limit"]


def test_limit_action_per_source_and_rule(pop):
    frames = [udp(b"\xff\xff\xff\xffq")] * 4
    other = udp(b"\xff\xff\xff\xffq", src="203.0.113.77")
    assert verdicts(pop, frames) == ["tx_forward"] * 4
    pop.set_payload_rules([rule("limit", "udp", payload=b"\xff\xff\xff\xffq", limit=(2, 0))])
    assert in_one_window(pop, frames) == ["tx_forward", "tx_forward", "drop_rule", "drop_rule"]
    hits = pop.rule_hits(0)[0]
    assert pop.run(other).reason == "tx_forward"               # per source
    assert pop.run(udp(b"join")).reason == "tx_forward"        # other packets of the same source
    assert pop.ban_until(PLAYER) is None                       # a limit rule drops, never bans
    assert pop.rule_hits(0)[0] == hits + 1                     # every match counts, dropped or not


def test_limit_action_in_bytes(pop):
    frame = udp(b"x" * 72)                                      # IP total length 100
    pop.set_payload_rules([rule("limit", "udp", limit=(0, 250))])
    assert in_one_window(pop, [frame] * 3) == ["tx_forward", "tx_forward", "drop_rule"]


def test_limit_action_spares_the_allow_list(pop):
    pop.allow(PLAYER + "/32")
    pop.set_payload_rules([rule("limit", "udp", limit=(1, 0))])
    assert verdicts(pop, [udp()] * 3) == ["tx_forward"] * 3


def test_many_spoofed_sources_each_get_their_own_window(pop):
    """A flood from many sources is limited per source: each its own window (in edge_rule_limits,
    not in the per-source state the players' entries live in)."""
    pop.set_payload_rules([rule("limit", "udp", limit=(1, 0))])
    sources = ["100.64.%d.%d" % (index // 250, index % 250 + 1) for index in range(500)]
    assert verdicts(pop, [udp(src=source) for source in sources]) == ["tx_forward"] * 500
    windows = {}
    for key, value in pop.maps["edge_rule_limits"].items():
        saddr, dummy, position = abi.RULE_LIMIT_KEY.unpack(key)
        windows.setdefault(socket.inet_ntoa(saddr), []).append((position, abi.RULE_LIMIT_VALUE.unpack(value)[0]))
    assert set(windows) == set(sources)
    assert all(counts == [(0, 1)] for counts in windows.values())
    assert in_one_window(pop, [udp(src=sources[7])] * 2) == ["tx_forward", "drop_rule"]


def test_a_range_of_zero_is_port_zero_not_any(pop):
    """Spoofed floods use source port 0: a rule can name it (the whole range is "any", not 0-0)."""
    zero, normal = udp(sport=0), udp()
    assert verdicts(pop, [zero, normal]) == ["tx_forward", "tx_forward"]
    pop.set_payload_rules([rule("drop", "udp", sport=(0, 0))])
    assert verdicts(pop, [zero, normal]) == ["drop_rule", "tx_forward"]
