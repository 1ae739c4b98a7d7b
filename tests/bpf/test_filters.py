"""Rules 2-6: deny and allow lists, bans, service lookup, port punches, rate limits."""

from __future__ import annotations

import time

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _rules

from harness.edge_env import hammer_from_two_cpus, monotonic_ns
from .scenario import (ANYCAST, BACKEND, GAME, GAME_PORT, GAME_UDP_ID, PLAYER, PLAYER_PORT, SIDE_GAME, SIDE_PORT,
                       player_tcp, player_udp, setup_pop)

SECOND = 10**9


# Kilimanjaro masked network-order addresses with host-order masks: nothing shorter than /32 ever
# matched. Each prefix length must match the addresses inside it and nothing outside.
# The program reads the lists as a bit per /24 and a bitmap per partly listed /24 (edge_abi.h), so
# the lengths around those boundaries are here too: /18 (one whole 64-bit word of /24s), /23 (two
# bits), /25 and /30 (part of one /24's bitmap).
PREFIXES = [
    ("1.0.0.0/8", "1.200.3.4", "2.0.0.1"),
    ("100.64.0.0/16", "100.64.250.9", "100.65.0.1"),
    ("100.64.192.0/18", "100.64.255.255", "100.64.191.255"),
    ("198.18.4.0/23", "198.18.5.200", "198.18.6.1"),
    ("203.0.113.0/24", "203.0.113.77", "203.0.112.77"),
    ("203.0.113.128/25", "203.0.113.128", "203.0.113.127"),
    ("198.51.100.252/30", "198.51.100.255", "198.51.100.251"),
    ("192.0.2.55/32", "192.0.2.55", "192.0.2.56"),
]


@pytest.mark.parametrize("cidr,inside,outside", PREFIXES, ids=[p[0] for p in PREFIXES])
def test_deny_list_matches_every_prefix_length_in_network_byte_order(pop, cidr, inside, outside):
    pop.deny(cidr)
    assert pop.run(player_udp(src=inside)).reason == "drop_deny"
    assert pop.run(player_udp(src=outside)).reason == "tx_forward"


def test_deny_drops_even_traffic_to_the_pop_itself(pop):
    pop.deny("192.0.2.0/24")
    assert pop.run(player_tcp(src="192.0.2.9", dst="10.0.0.1", dport=22)).reason == "drop_deny"


def test_the_allow_list_never_overrides_the_deny_list(pop):
    pop.deny("203.0.113.0/24")
    pop.allow("203.0.113.5/32")
    assert pop.run(player_udp()).reason == "drop_deny"


def test_host_prefixes_of_one_slash24_combine_and_a_partly_denied_slash24_lets_the_rest_through(pop):
    pop.deny("192.0.2.8/30")
    pop.deny("192.0.2.200/32")
    for source in ("192.0.2.8", "192.0.2.11", "192.0.2.200"):
        assert pop.run(player_udp(src=source)).reason == "drop_deny", source
    for source in ("192.0.2.7", "192.0.2.12", "192.0.2.199", "192.0.2.201"):
        assert pop.run(player_udp(src=source)).reason == "tx_forward", source


def test_the_lists_are_a_bit_per_slash24_and_a_bitmap_per_partly_listed_slash24(pop):
    """What the program reads does not grow with the list (the bench times it): 200 /24s in a row
    are 4 entries of 64 bits, a /32 one more entry and one bitmap."""
    for index in range(200):
        pop.deny("100.64.%d.0/24" % index)
    pop.deny("100.70.0.9/32")
    filter_map = pop.maps["edge_src_filter"]
    assert filter_map.max_entries == abi.SRC_FILTER_ENTRIES
    assert len(_rules.source_filter_changes(None, filter_map.array_bytes())[0]) == 5
    assert len(list(pop.maps["edge_src_hosts"].keys())) == 1
    assert pop.run(player_udp(src="100.64.0.1")).reason == "drop_deny"
    assert pop.run(player_udp(src="100.70.0.9")).reason == "drop_deny"
    assert pop.run(player_udp(src="100.70.0.10")).reason == "tx_forward"


@pytest.mark.parametrize("cidr,inside,outside", PREFIXES, ids=[p[0] for p in PREFIXES])
def test_allowed_sources_skip_bans(pop, cidr, inside, outside):
    pop.allow(cidr)
    for source in (inside, outside):
        pop.ban(source, monotonic_ns() + 600 * SECOND)
    assert pop.run(player_udp(src=inside)).reason == "tx_forward"
    assert pop.run(player_udp(src=outside)).reason == "drop_banned"


def test_a_ban_drops_until_it_ends(pop):
    pop.ban(PLAYER, monotonic_ns() + 600 * SECOND)
    assert pop.run(player_udp()).reason == "drop_banned"
    pop.ban(PLAYER, monotonic_ns() - SECOND)
    assert pop.run(player_udp()).reason == "tx_forward"


def test_not_a_service_inside_the_anycast_prefix_is_dropped(pop):
    assert pop.run(player_udp(dport=27016)).reason == "drop_no_service"
    assert pop.run(player_udp(dst="198.51.100.99")).reason == "drop_no_service"
    assert pop.run(player_tcp(dport=80)).reason == "drop_no_service"


def test_a_service_is_looked_up_before_the_anycast_prefixes(pop):
    """The service decides for its own (protocol, address, port); the prefixes only for the rest
    (inventory validation keeps every service inside them: this is an edge_rules-only setup)."""
    pop.add_service("udp", "192.0.2.200", 27015, 9, BACKEND)
    assert pop.run(player_udp(dst="192.0.2.200")).reason == "tx_forward"
    assert pop.run(player_udp(dst="192.0.2.200", dport=27016)).reason == "pass_not_ours"


@pytest.mark.parametrize("frame", [player_tcp(dst="10.0.0.1", dport=179), player_tcp(dst="10.0.0.1", dport=22),
                                   player_udp(dst="192.0.2.80", dport=53)], ids=["bgp", "ssh", "elsewhere"])
def test_traffic_not_to_an_anycast_prefix_goes_to_the_kernel_untouched(pop, frame):
    result = pop.run(frame)
    assert (result.action, result.reason, result.data) == ("PASS", "pass_not_ours", frame)


def test_the_pass_map_is_what_edge_rules_derives_from_the_prefixes_and_services(pop):
    """The harness writes edge_dst_pass word by word; edge_rules derives it whole: the same bytes."""
    anycast = [abi.pack_lpm_v4(ANYCAST)]
    services = [abi.pack_service_key(proto, address, port) for proto, address, port in (
        ("udp", GAME, GAME_PORT), ("tcp", GAME, GAME_PORT), ("icmp", GAME, 0), ("udp", SIDE_GAME, SIDE_PORT))]
    derived = _rules.dest_pass_entries(anycast, services)
    assert pop.maps[_rules.DEST_PASS_MAP].array_bytes() == derived
    pop.add_service("udp", "192.0.2.200", 27015, 9, BACKEND)    # outside the prefixes: its /24 is claimed too
    assert pop.maps[_rules.DEST_PASS_MAP].array_bytes() == _rules.dest_pass_entries(
        anycast, services + [abi.pack_service_key("udp", "192.0.2.200", 27015)])


# Every path of the filter, to the prefix, a service outside it, and elsewhere: the verdicts must not
# depend on whether edge_dst_pass was written (it only spares the POP's own traffic two lookups).
PASS_MAP_FRAMES = [
    ("service", player_udp(), "tx_forward"),
    ("not a service in the prefix", player_udp(dport=27016), "drop_no_service"),
    ("fragment to the prefix", player_udp(dst="198.51.100.99", flags="MF"), "drop_fragment"),
    ("service outside the prefixes", player_udp(dst="192.0.2.200"), "tx_forward"),
    ("its /24, another port", player_udp(dst="192.0.2.200", dport=27016), "pass_not_ours"),
    ("the POP's BGP", player_tcp(dst="10.0.0.1", dport=179), "pass_not_ours"),
    ("elsewhere", player_udp(dst="203.0.113.80", dport=53), "pass_not_ours"),
    ("a fragment elsewhere", player_udp(dst="203.0.113.80", flags="MF"), "pass_not_ours"),
    ("denied, elsewhere", player_udp(src="192.0.2.66", dst="203.0.113.80"), "drop_deny"),
]


def test_the_pass_map_changes_no_verdict_and_an_unwritten_one_passes_nothing_early(pop):
    pop.deny("192.0.2.66/32")
    pop.add_service("udp", "192.0.2.200", 27015, 9, BACKEND)
    written = [pop.run(frame).reason for dummy, frame, dummy in PASS_MAP_FRAMES]
    assert written == [reason for dummy, dummy, reason in PASS_MAP_FRAMES]
    # all zero, as a program just loaded before edge_rules writes it: every lookup is asked, same verdicts
    pop.clear_dest_pass()
    assert [pop.run(frame).reason for dummy, frame, dummy in PASS_MAP_FRAMES] == written


def test_a_pass_bit_over_a_claimed_prefix_would_let_its_traffic_past_every_filter(pop):
    """Why edge_rules clears a /24's bit before it writes the prefix or service there, and sets it
    only after they are gone (_rules.STEP_ORDER): the map is read before any other lookup. A bit
    set by hand over the anycast /24 hands a flood from a banned source to the kernel."""
    pop.ban("192.0.2.99", monotonic_ns() + 60 * SECOND)
    flood = player_udp(src="192.0.2.99")
    assert pop.run(flood).reason == "drop_banned"
    net24 = int.from_bytes(abi.ipv4(GAME), "big") >> 8
    index = net24 // abi.SRC_NETS_PER_ENTRY
    word = abi.U64.unpack(pop.maps[_rules.DEST_PASS_MAP].lookup(abi.U32.pack(index)))[0]
    pop.maps[_rules.DEST_PASS_MAP].update(abi.U32.pack(index),
                                          abi.U64.pack(word | 1 << (net24 % abi.SRC_NETS_PER_ENTRY)))
    assert pop.run(flood).reason == "pass_not_ours"


def test_counters_per_reason_per_service_and_per_player(pop):
    frame = player_udp(payload=b"x" * 100)
    for dummy in range(3):
        pop.run(frame)
    pop.run(player_udp(dport=1))
    assert pop.reason_counts()["tx_forward"] == (3, 3 * len(frame))
    assert pop.service_counters(GAME_UDP_ID)[:2] == (3, 3 * len(frame))
    assert pop.client_counters(PLAYER)[0] == 4


# ---- rate limits -------------------------------------------------------------------------------

def wait_for_fresh_window(margin_ms=100):
    """Sleep until just after a second boundary, so a short burst stays in one rate window."""
    while (monotonic_ns() % SECOND) > (SECOND - margin_ms * 10**6) or (monotonic_ns() % SECOND) < 10**6:
        time.sleep(0.005)
    remaining = SECOND - monotonic_ns() % SECOND
    time.sleep(remaining / 1e9 + 0.002)


def test_packets_per_second_limit_drops_and_bans(edge):
    setup_pop(edge, limits={"udp": (5, 0)}, ban_sec=30)
    frame = player_udp()
    wait_for_fresh_window()
    reasons = [edge.run(frame).reason for dummy in range(6)]
    assert reasons == ["tx_forward"] * 5 + ["drop_rate_limit"]
    until = edge.ban_until(PLAYER)
    assert until is not None and 29 * SECOND < until - monotonic_ns() <= 30 * SECOND
    assert edge.run(frame).reason == "drop_banned"


def test_bytes_per_second_limit(edge):
    frame = player_udp(payload=b"x" * 972)  # 1000 bytes of IP
    setup_pop(edge, limits={"udp": (0, 2500)}, ban_sec=0)
    wait_for_fresh_window()
    reasons = [edge.run(frame).reason for dummy in range(3)]
    assert reasons == ["tx_forward", "tx_forward", "drop_rate_limit"]
    assert edge.ban_until(PLAYER) is None  # ban_sec 0: limited, never banned


def test_limits_are_per_protocol(edge):
    setup_pop(edge, limits={"tcp": (1, 0)}, ban_sec=0)
    wait_for_fresh_window()
    assert [edge.run(player_tcp()).reason for dummy in range(2)] == ["tx_forward", "drop_rate_limit"]
    assert edge.run(player_udp()).reason == "tx_forward"


def test_a_service_override_replaces_the_global_limit(edge):
    setup_pop(edge, limits={"udp": (100, 0)}, ban_sec=0)
    edge.add_service("udp", GAME, GAME_PORT, GAME_UDP_ID, BACKEND, limit=(2, 0))
    wait_for_fresh_window()
    assert [edge.run(player_udp()).reason for dummy in range(3)] == ["tx_forward"] * 2 + ["drop_rate_limit"]


def test_allowed_sources_are_not_rate_limited(edge):
    setup_pop(edge, limits={"udp": (1, 0)}, ban_sec=60)
    edge.allow("203.0.113.0/24")
    assert {edge.run(player_udp()).reason for dummy in range(5)} == {"tx_forward"}
    assert edge.ban_until(PLAYER) is None


def counted_not_forwarded(edge):
    """A POP whose game service's backend is behind a blackhole route. BPF_PROG_TEST_RUN reruns the
    program on the frame it left behind: a forwarded frame would come back encapsulated; this one
    is left as it was (counted, then dropped as no_route), so every repetition is the same packet."""
    setup_pop(edge, limits={"udp": (10**12, 0)})  # counted, never over
    edge.add_service("udp", GAME, GAME_PORT, GAME_UDP_ID, "10.9.0.1")
    return player_udp()


def test_source_counting_is_exact_across_cpus(edge):
    """Two CPUs hammer one source at once; its counters (one entry, atomic adds) hold every packet."""
    frame = counted_not_forwarded(edge)
    assert edge.run(frame).reason == "drop_no_route"
    repeat = 200_000
    hammer_from_two_cpus(edge, frame, repeat)
    assert edge.client_counters(PLAYER) == (2 * repeat + 1, (2 * repeat + 1) * len(frame))


def test_rate_window_is_exact_across_cpus_within_a_second(edge):
    """Two CPUs hammer one source inside one second: its window holds every packet and every byte
    of IP (atomic adds). The window is opened by a first packet: the reset at a second's start is
    exact only to a packet or two when CPUs race on it (rate_limit_exceeded says why)."""
    frame = counted_not_forwarded(edge)
    repeat = 20_000
    for dummy in range(3):
        edge.maps["edge_sources"].delete(abi.ipv4(PLAYER))
        wait_for_fresh_window()
        window = monotonic_ns() // SECOND
        assert edge.run(frame).reason == "drop_no_route"
        hammer_from_two_cpus(edge, frame, repeat)
        if monotonic_ns() // SECOND == window:
            break
    else:
        pytest.fail("two runs of %d packets never fitted in one second" % repeat)
    state = edge.source(PLAYER)
    sent = 2 * repeat + 1
    assert (state.window, state.window_packets, state.window_bytes) == (window, sent, sent * (len(frame) - 14))


# ---- port punches ------------------------------------------------------------------------------

def test_a_live_punch_forwards_without_rate_limit(edge):
    setup_pop(edge, limits={"udp": (1, 0)}, ban_sec=60)
    edge.punch("udp", GAME, GAME_PORT, PLAYER, PLAYER_PORT, monotonic_ns())
    reasons = [edge.run(player_udp()).reason for dummy in range(5)]
    assert reasons == ["tx_punched"] * 5
    assert edge.ban_until(PLAYER) is None


def test_a_punch_is_per_flow(edge):
    setup_pop(edge, limits={"udp": (1, 0)}, ban_sec=0)
    edge.punch("udp", GAME, GAME_PORT, PLAYER, PLAYER_PORT, monotonic_ns())
    wait_for_fresh_window()
    other_port = [edge.run(player_udp(sport=PLAYER_PORT + 1)).reason for dummy in range(2)]
    assert other_port == ["tx_forward", "drop_rate_limit"]
    assert edge.run(player_tcp()).reason != "tx_punched"  # same ports, other protocol


def test_an_idle_punch_expires_and_is_deleted(edge):
    setup_pop(edge, punch_idle_ns=120 * SECOND)
    edge.punch("udp", GAME, GAME_PORT, PLAYER, PLAYER_PORT, monotonic_ns() - 121 * SECOND)
    assert edge.run(player_udp()).reason == "tx_forward"
    assert edge.punch_last_seen("udp", GAME, GAME_PORT, PLAYER, PLAYER_PORT) is None
