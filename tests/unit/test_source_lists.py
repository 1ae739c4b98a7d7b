"""The deny/allow lists as XDP reads them (_source_lists), and the order edge_rules writes them in.

The derived maps are checked against the prefixes themselves (ipaddress), address by address; the
plan is replayed step by step on dictionaries standing for the maps, and after every step no
address may be treated more leniently than both the old and the new rule set would treat it.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _rules
from ansible_collections.anycast.edge.plugins.module_utils import _source_lists as sl

# A few /16s so that random prefixes overlap and random addresses hit them.
NEIGHBOURHOODS = (0x0A000000, 0xC0A80000, 0xCB007100)


@st.composite
def prefixes(draw):
    base = draw(st.sampled_from(NEIGHBOURHOODS))
    length = draw(st.sampled_from((8, 12, 16, 18, 20, 23, 24, 25, 26, 28, 30, 31, 32)))
    address = (base | draw(st.integers(0, 0xFFFF))) & (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF
    return "%s/%d" % (ipaddress.IPv4Address(address), length)


def addresses_near(cidrs):
    """Addresses inside, at the edges of and just outside every prefix, plus the neighbourhoods."""
    found = set(NEIGHBOURHOODS)
    for cidr in cidrs:
        network = ipaddress.IPv4Network(cidr)
        first, last = int(network.network_address), int(network.broadcast_address)
        found.update(a & 0xFFFFFFFF for a in (first - 1, first, first + 1, (first + last) // 2, last - 1, last, last + 1))
    return sorted(found)


def listed(cidrs, address):
    return any(ipaddress.IPv4Address(address) in ipaddress.IPv4Network(cidr) for cidr in cidrs)


def as_pairs(cidrs):
    return [(int(n.network_address), n.prefixlen) for n in map(ipaddress.IPv4Network, cidrs)]


@settings(max_examples=300, deadline=None)
@given(st.lists(prefixes(), max_size=8), st.lists(prefixes(), max_size=8))
def test_the_derived_lists_answer_like_the_prefixes(deny, allow):
    filter_bytes, hosts = sl.derive(as_pairs(deny), as_pairs(allow))
    assert len(filter_bytes) == sl.FILTER_SIZE
    for address in addresses_near(deny + allow):
        assert sl.is_listed(filter_bytes, hosts, address, sl.DENY) == listed(deny, address), (deny, address)
        assert sl.is_listed(filter_bytes, hosts, address, sl.ALLOW) == listed(allow, address), (allow, address)


def non_zero_entries(filter_bytes):
    return dict((index, sl.entry_words(filter_bytes, index)) for index in range(sl.FILTER_ENTRIES)
                if any(sl.entry_words(filter_bytes, index)))


def test_a_slash8_sets_1024_whole_entries_and_a_slash32_one_bitmap():
    filter_bytes, hosts = sl.derive(as_pairs(["10.0.0.0/8", "192.0.2.7/32"]), [])
    entries = non_zero_entries(filter_bytes)
    tens = [index for index in entries if (index * 64) >> 16 == 10]
    assert len(tens) == 1024 and all(entries[index] == ((1 << 64) - 1, 0, 0, 0) for index in tens)
    assert len(entries) == 1024 + 1
    assert hosts == {(0xC00002, sl.DENY): 1 << 7}
    assert entries[0xC00002 // 64] == (0, 1 << (0xC00002 % 64), 0, 0)


def test_longer_prefixes_that_fill_a_slash24_make_it_whole_and_a_whole_slash24_needs_no_bitmap():
    filter_bytes, hosts = sl.derive(as_pairs(["192.0.2.0/25", "192.0.2.128/25", "198.51.100.0/24", "198.51.100.9/32"]),
                                    [])
    assert hosts == {}
    for net24 in (0xC00002, 0xC63364):
        assert sl.entry_words(filter_bytes, net24 // 64) == (1 << (net24 % 64), 0, 0, 0)


def test_the_empty_lists_derive_nothing_and_unset_bits_read_as_unlisted():
    assert sl.derive([], []) == (bytes(sl.FILTER_SIZE), {})
    assert not sl.is_listed(bytes(sl.FILTER_SIZE), {}, 0x0A000001, sl.DENY)


def params(deny, allow):
    return dict(tunnel_address="10.0.0.1", services=[], anycast_prefixes=[], backends=[], allow=allow, deny=deny,
                rate_limits={}, ban_sec=60, punch_idle_sec=120, a2s_cookie_epoch_sec=30)


def as_read_by_xdp(maps):
    """(filter bytes, hosts) in _source_lists' form, from the derived maps' contents."""
    hosts = {}
    for key, value in maps[_rules.SOURCE_HOSTS_MAP].items():
        bits = 0
        for index, word in enumerate(abi.SRC_HOSTS_VALUE.unpack(value)):
            bits |= word << (64 * index)
        hosts[abi.SRC_HOSTS_KEY.unpack(key)] = bits
    return bytes(maps[_rules.SOURCE_FILTER_MAP]), hosts


@settings(max_examples=150, deadline=None)
@given(st.lists(prefixes(), max_size=6), st.lists(prefixes(), max_size=4),
       st.lists(prefixes(), max_size=6), st.lists(prefixes(), max_size=4))
def test_no_step_of_a_rule_change_is_more_lenient_than_both_rule_sets(old_deny, old_allow, new_deny, new_allow):
    present = _rules.desired_entries(params(old_deny, old_allow), bytes(16))[0]
    desired = _rules.desired_entries(params(new_deny, new_allow), bytes(16))[0]
    maps = {_rules.SOURCE_FILTER_MAP: bytearray(present[_rules.SOURCE_FILTER_MAP]),
            _rules.SOURCE_HOSTS_MAP: dict(present[_rules.SOURCE_HOSTS_MAP])}
    probes = addresses_near(old_deny + old_allow + new_deny + new_allow)

    def allowed_by(deny, allow, address):
        return not listed(deny, address) and listed(allow, address)

    def check(after_step, tightened):
        filter_bytes, hosts = as_read_by_xdp(maps)
        for address in probes:
            denied = sl.is_listed(filter_bytes, hosts, address, sl.DENY)
            allowed = not denied and sl.is_listed(filter_bytes, hosts, address, sl.ALLOW)
            # a source both rule sets deny never slips through; once the lists are tightened,
            # nothing the new rules deny does
            if listed(old_deny, address) and listed(new_deny, address):
                assert denied, (after_step, address)
            if tightened and listed(new_deny, address):
                assert denied, (after_step, address)
            # an exemption from limits only ever comes from the old rules or the new ones
            if allowed:
                assert allowed_by(old_deny, old_allow, address) or allowed_by(new_deny, new_allow, address), \
                    (after_step, address)

    tightened = False
    for step in _rules.plan_writes(present, desired):
        if step.map_name not in _rules.DERIVED_MAPS:
            continue
        for key, value, dummy in step.entries:
            if step.map_name == _rules.SOURCE_FILTER_MAP:
                offset = abi.U32.unpack(key)[0] * abi.SRC_FILTER_ENTRY.size
                maps[step.map_name][offset:offset + len(value)] = value
            elif step.operation == "delete":
                del maps[step.map_name][key]
            else:
                maps[step.map_name][key] = value
        tightened = tightened or step.name == "src_filter_tighten"
        check(step.name, tightened)
    assert as_read_by_xdp(maps) == as_read_by_xdp(dict((name, desired[name]) for name in _rules.DERIVED_MAPS))


@settings(max_examples=100, deadline=None)
@given(st.lists(prefixes(), max_size=6))
def test_the_pass_plane_marks_exactly_the_24s_no_prefix_touches(cidrs):
    """edge_dst_pass: a /24's bit is set iff no prefix has an address in it (read as XDP reads it)."""
    networks = [ipaddress.IPv4Network(cidr) for cidr in cidrs]
    plane = sl.not_ours_plane([(int(n.network_address), n.prefixlen) for n in networks])
    assert len(plane) == abi.SRC_FILTER_ENTRIES * abi.U64.size
    for address in addresses_near(cidrs):
        net24 = ipaddress.IPv4Network((address & 0xFFFFFF00, 24))
        word = abi.U64.unpack_from(plane, (address >> 8) // 64 * abi.U64.size)[0]
        passed = bool((word >> ((address >> 8) % 64)) & 1)
        assert passed == (not any(n.overlaps(net24) for n in networks)), (cidrs, ipaddress.IPv4Address(address))
