"""Inventory rules -> map entries, and the write plan (plugins/module_utils/_rules.py).

The plan is a pure function, so its ORDER is tested here: by name for a change that needs every
step, and as a property over random old/new rule sets (hypothesis), replaying the plan step by
step on a model of the maps and checking, after every single step, that

  - a source the new rules deny is denied (once the first step is made), and one both rule
    sets deny is never let through;
  - no source is allowed that neither rule set allows, and once old allows are removed only
    new allows remain;
  - a newly claimed anycast prefix has all its new services; an old prefix still claimed has
    all its old services;
  - every service's backend is accepted on the return path;
  - a service with A2S flags never meets a cache entry filled for another service or backend;
  - a service that did not exist before only exists once the new edge_config is in place.
"""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _payload_rules
from ansible_collections.anycast.edge.plugins.module_utils import _rules
from ansible_collections.anycast.edge.plugins.module_utils import _source_lists

ZERO_KEY = bytes(16)


def params(**overrides):
    base = dict(tunnel_address="10.0.0.1", services=[], anycast_prefixes=[], backends=[], allow=[], deny=[],
                rate_limits={}, ban_sec=60, punch_idle_sec=120, a2s_cookie_epoch_sec=30)
    base.update(overrides)
    return base


def service(name, address="198.51.100.10", protocol="udp", port=27015, backend="10.1.0.10", **extra):
    item = dict(name=name, address=address, protocol=protocol, port=port, backend_address=backend)
    item.update(extra)
    return item


def lpm(cidr):
    return abi.pack_lpm_v4(cidr)


# --- ids and parsing ------------------------------------------------------------------------

def test_default_service_id_is_a_stable_crc_in_range():
    assert _rules.default_service_id("cs2-main") == 237       # zlib.crc32(b"cs2-main") % 1023 + 1
    ids = [_rules.default_service_id("svc-%d" % index) for index in range(5000)]
    assert min(ids) == 1 and max(ids) == 1023


@pytest.mark.parametrize("text, key", [
    ("10.0.0.0/8", struct.pack("<I", 8) + bytes([10, 0, 0, 0])),          # address in network order
    ("192.0.2.128/25", struct.pack("<I", 25) + bytes([192, 0, 2, 128])),
    ("203.0.113.7", struct.pack("<I", 32) + bytes([203, 0, 113, 7])),      # bare address = /32
    ("0.0.0.0/0", struct.pack("<I", 0) + bytes(4)),
])
def test_cidr_keys(text, key):
    assert _rules.parse_cidr(text, "deny[0]") == key
    assert _rules.cidr_entries([text], "deny") == {key: _rules.LPM_PRESENT}


@pytest.mark.parametrize("text, message", [
    ("10.0.0.1/8", "deny[1]: 10.0.0.1/8 has host bits set (did you mean 10.0.0.0/8?)"),
    ("10.0.0.0/33", "deny[1]: '10.0.0.0/33' has no valid prefix length (0..32)"),
    ("10.0.0.0/-1", "deny[1]: '10.0.0.0/-1' has no valid prefix length (0..32)"),
    ("10.0.0/8", "deny[1]: '10.0.0' is not an IPv4 address"),
    (" 10.0.0.0/8", "deny[1]: ' 10.0.0.0' is not an IPv4 address"),
    ("2001:db8::/32", "deny[1]: '2001:db8::' is not an IPv4 address"),
    (17, "deny[1]: 17 is not an IPv4 CIDR"),
    # Spellings str.isdigit() or inet_pton did not refuse cleanly (review finding): '²' raised an
    # unnamed ValueError, full-width digits were read as 32, a NUL or a lone surrogate raised.
    ("1.2.3.4/\u00b2", "deny[1]: '1.2.3.4/\u00b2' has no valid prefix length (0..32)"),
    ("1.2.3.0/\uff13\uff12", "deny[1]: '1.2.3.0/\uff13\uff12' has no valid prefix length (0..32)"),
    ("1.2.3.4\x00/32", "deny[1]: '1.2.3.4\\x00' is not an IPv4 address"),
    ("1.2.3.4\ud800/32", "deny[1]: '1.2.3.4\\ud800' is not an IPv4 address"),
])
def test_bad_cidrs_name_their_index(text, message):
    with pytest.raises(_rules.RuleError) as error:
        _rules.cidr_entries(["192.0.2.0/24", text, "198.51.100.0/24"], "deny")
    assert str(error.value) == message


def test_two_wrong_items_cannot_pass_as_two_right_ones():
    """The bulk parser joins and splits the list on '/': an item without a slash next to one
    with two must not realign into two valid prefixes."""
    with pytest.raises(_rules.RuleError) as error:
        _rules.cidr_entries(["1.2.3.0", "24/1.2.4.0/24"], "deny")
    assert str(error.value) == "deny[1]: '24' is not an IPv4 address"


def test_bulk_and_item_parsing_agree_and_duplicates_collapse():
    cidrs = ["%d.%d.0.0/16" % (a, b) for a in range(1, 40) for b in range(0, 256, 7)] + ["1.0.0.0/16", "9.9.9.9"]
    bulk = _rules.cidr_entries(cidrs, "deny")
    assert bulk == dict((_rules.parse_cidr(text, "x"), _rules.LPM_PRESENT) for text in cidrs)
    assert len(bulk) == len(cidrs) - 1


# --- services and config --------------------------------------------------------------------

# What a service that sets none of admission, game_protocol, attack_mode is packed with, and the
# edge_config fields of the same defence (verified idle time, the CPUs the budgets are shared among).
DEFENCE_DEFAULTS = dict(admission=(2000, 2000000), game_protocol="none", attack_mode="auto")
CONFIG_DEFAULTS = dict(verified_idle_ns=600 * 10**9, nr_cpus=1)


def test_service_entry_packs_key_and_value():
    key, value = _rules.service_entry(service("cs2-main", a2s_cache=True, a2s_max_age_sec=45,
                                              rate_limit={"packets_per_sec": 200}), 0)
    assert key == abi.pack_service_key("udp", "198.51.100.10", 27015)
    assert value == abi.pack_service_value(237, "10.1.0.10", abi.SERVICE_F_A2S_CACHE | abi.SERVICE_F_A2S_SNOOP,
                                           45000, (200, 0), **DEFENCE_DEFAULTS)


def test_syn_auth_is_packed_for_tcp_services_only_and_shown_in_the_diff():
    syn_auth = abi.SERVICE_VALUE.unpack(_rules.service_entry(service("rcon", protocol="tcp"), 0)[1])[10]
    assert syn_auth == abi.SYN_AUTH_MODES.index(_rules.DEFAULT_SYN_AUTH)
    dummy, value = _rules.service_entry(service("rcon", protocol="tcp", syn_auth="always"), 0)
    assert abi.SERVICE_VALUE.unpack(value)[10] == abi.SYN_AUTH_MODES.index("always")
    assert _rules.render_service_value(value).endswith(" syn_auth always")
    # A UDP service: never, whatever it says (XDP reads it for TCP only), and the diff says nothing.
    dummy, value = _rules.service_entry(service("game", syn_auth="always"), 0)
    assert abi.SERVICE_VALUE.unpack(value)[10] == abi.SYN_AUTH_MODES.index("never")
    assert "syn_auth" not in _rules.render_service_value(value)
    with pytest.raises(_rules.RuleError, match=r"services\[0\].syn_auth: 'on' is not one of auto, always, never"):
        _rules.service_entry(service("rcon", protocol="tcp", syn_auth="on"), 0)


def test_service_entry_variants():
    # snoop only: the cache is filled but not served, so no max age
    dummy, value = _rules.service_entry(service("s", id=9, a2s_snoop=True), 0)
    assert abi.SERVICE_VALUE.unpack(value)[:6] == (9, abi.ipv4("10.1.0.10"), abi.SERVICE_F_A2S_SNOOP, 0, 0, 0)
    # cache without snoop: refreshed by the agent only
    dummy, value = _rules.service_entry(service("s", id=9, a2s_cache=True, a2s_snoop=False), 0)
    assert abi.SERVICE_VALUE.unpack(value)[2] == abi.SERVICE_F_A2S_CACHE
    # icmp: port 0 in the key
    key, dummy = _rules.service_entry(service("p", protocol="icmp", port=0), 0)
    assert key == abi.pack_service_key("icmp", "198.51.100.10", 0)


@pytest.mark.parametrize("item, message", [
    (service("x", port=0), "services[0].port: 0 is not a port (1..65535)"),
    (service("x", protocol="icmp", port=8), "services[0].port: 8 given for an icmp service (icmp has no port)"),
    (service("x", protocol="gre"), "services[0].protocol: 'gre' is not one of udp, tcp, icmp"),
    (service("x", id=1024), "services[0].id: 1024 is not in 1..1023"),
    (service("x", address="198.51.100.300"), "services[0].address: '198.51.100.300' is not an IPv4 address"),
    (service("x", backend="game1"), "services[0].backend_address: 'game1' is not an IPv4 address"),
    (service("x", protocol="tcp", a2s_cache=True), "services[0]: a2s_cache/a2s_snoop need protocol udp, not tcp"),
    (service("x", a2s_cache=True, a2s_max_age_sec=0), "services[0].a2s_max_age_sec: 0 must be > 0"),
    (service("x", rate_limit={"bytes_per_sec": -1}),
     "services[0].rate_limit.bytes_per_sec: -1 must be > 0 (omit it for no limit)"),
])
def test_bad_services(item, message):
    with pytest.raises(_rules.RuleError) as error:
        _rules.desired_entries(params(services=[item]), ZERO_KEY)
    assert str(error.value) == message


def test_duplicate_service_endpoint_and_id_are_refused():
    with pytest.raises(_rules.RuleError, match=r"services\[1\]: udp 198.51.100.10:27015 is also a"):
        _rules.desired_entries(params(services=[service("a"), service("b")]), ZERO_KEY)
    with pytest.raises(_rules.RuleError, match=r"services\[1\].id: 5 is also the id of a"):
        _rules.desired_entries(params(services=[service("a", id=5), service("b", port=1, id=5)]), ZERO_KEY)


def test_config_value_and_cookie_key():
    key = bytes(range(16))
    desired, dummy = _rules.desired_entries(params(tunnel_address="10.0.0.7", ban_sec=0, punch_idle_sec=90,
                                                   a2s_cookie_epoch_sec=15,
                                                   rate_limits={"udp": {"packets_per_sec": 500},
                                                                "other": {"bytes_per_sec": 1000}}), key)
    config = desired["edge_config"][_rules.CONFIG_KEY]
    k0, k1 = struct.unpack("<QQ", key)
    assert config == abi.pack_config("10.0.0.7", ban_sec=0, punch_idle_ns=90 * 10**9, cookie_epoch_ns=15 * 10**9,
                                     cookie_key=(k0, k1), limits={"udp": (500, 0), "other": (0, 1000)},
                                     **CONFIG_DEFAULTS)
    assert _rules.config_cookie_key(config) == key
    other = bytes(range(16, 32))
    replaced = _rules.with_cookie_key(config, other)
    assert _rules.config_cookie_key(replaced) == other and len(replaced) == len(config)
    assert replaced[:24] == config[:24] and replaced[40:] == config[40:]


def test_the_previous_key_generation_sits_before_the_tai_offset_at_the_end_of_edge_config():
    current, previous = bytes(range(16)), bytes(range(100, 116))
    config = _rules.config_value("10.0.0.7", {}, 60, 120, 30, current, previous)
    assert config == abi.pack_config("10.0.0.7", ban_sec=60, punch_idle_ns=120 * 10**9, cookie_epoch_ns=30 * 10**9,
                                     cookie_key=struct.unpack("<QQ", current),
                                     cookie_key_previous=struct.unpack("<QQ", previous), **CONFIG_DEFAULTS)
    assert (_rules.config_cookie_key(config), _rules.config_cookie_key_previous(config)) == (current, previous)
    assert _rules.config_cookie_key_previous(_rules.config_value("10.0.0.7", {}, 60, 120, 30, current)) == bytes(16)
    # Rotating: the new key issues, the old one moves to the previous slot; nothing else moves.
    new = bytes(range(50, 66))
    rotated = _rules.with_cookie_keys(config, new, current)
    assert (_rules.config_cookie_key(rotated), _rules.config_cookie_key_previous(rotated)) == (new, current)
    previous_at = _rules._COOKIE_KEY_PREVIOUS_OFFSET
    assert rotated[:24] == config[:24] and rotated[40:previous_at] == config[40:previous_at]
    assert rotated[previous_at + 16:] == config[previous_at + 16:] and len(rotated) == len(config)
    # the current one alone keeps the previous
    assert _rules.with_cookie_key(config, new)[previous_at:previous_at + 16] == previous
    lines = _rules.render_config(rotated)
    assert "cookie_key current (set)" in lines and "cookie_key previous (set)" in lines


def test_the_pops_tai_offset_follows_the_previous_key_in_edge_config():
    """edge_rules passes the POP's CLOCK_TAI - CLOCK_REALTIME; it lands in cookie_tai_offset_ns
    (signed), the keys stay where they are, and the diff shows it in seconds."""
    key = bytes(range(16))
    config = _rules.config_value("10.0.0.7", {}, 60, 120, 30, key, cookie_tai_offset_ns=37 * 10**9)
    assert config == abi.pack_config("10.0.0.7", ban_sec=60, punch_idle_ns=120 * 10**9, cookie_epoch_ns=30 * 10**9,
                                     cookie_key=struct.unpack("<QQ", key), cookie_tai_offset_ns=37 * 10**9,
                                     **CONFIG_DEFAULTS)
    assert struct.unpack_from("<q", config, _rules._COOKIE_KEY_PREVIOUS_OFFSET + 16) == (37 * 10**9,)
    assert _rules.config_cookie_key(config) == key and _rules.config_cookie_key_previous(config) == bytes(16)
    assert "cookie_tai_offset_sec 37" in _rules.render_config(config)
    tai_at = _rules._COOKIE_KEY_PREVIOUS_OFFSET + 16
    assert struct.unpack_from("<q", _rules.config_value("10.0.0.7", {}, 60, 120, 30, key,
                                                        cookie_tai_offset_ns=-1 * 10**9), tai_at) == (-10**9,)
    desired, dummy = _rules.desired_entries(params(), key, cookie_tai_offset_ns=37 * 10**9)
    assert desired["edge_config"][_rules.CONFIG_KEY][tai_at:tai_at + 8] == config[tai_at:tai_at + 8]


KEY_A, KEY_B = "00112233445566778899aabbccddeeff", "ffeeddccbbaa99887766554433221100"


@pytest.mark.parametrize("given, keys", [
    ([KEY_A], (bytes.fromhex(KEY_A), bytes(16))),
    ([KEY_B, KEY_A], (bytes.fromhex(KEY_B), bytes.fromhex(KEY_A))),
    ([" %s\n" % KEY_A.upper()], (bytes.fromhex(KEY_A), bytes(16))),     # as read from a file
])
def test_cookie_keys_newest_first(given, keys):
    assert _rules.parse_cookie_keys(given) == keys


@pytest.mark.parametrize("given, message", [
    ([], "cookie_keys: empty; give at least the current key, or leave it unset"),
    ([KEY_A, KEY_B, "0f" * 16], "cookie_keys: 3 keys given; the data plane holds 2 generations"),
    (KEY_A, r"cookie_keys: must be a list of keys \(newest first\), got a str"),
    ([KEY_A[:-1]], r"cookie_keys\[0\]: must be 32 hex digits \(16 bytes\); got 31 characters"),
    ([KEY_A, "g" * 32], r"cookie_keys\[1\]: must be 32 hex digits \(16 bytes\); got a character that is not a hex"),
    ([5], r"cookie_keys\[0\]: must be 32 hex digits \(16 bytes\); got a int"),
    (["0" * 32], r"cookie_keys\[0\]: all zero, which the program reads as no key"),
    ([KEY_A, KEY_A.upper()], r"cookie_keys\[1\]: the same key as cookie_keys\[0\]"),
])
def test_bad_cookie_keys_are_refused_without_showing_them(given, message):
    with pytest.raises(_rules.RuleError, match=message) as caught:
        _rules.parse_cookie_keys(given)
    for key in (KEY_A, KEY_B, KEY_A[:-1]):
        assert key not in str(caught.value).lower()


@pytest.mark.parametrize("overrides, message", [
    (dict(ban_sec=-1), "ban_sec: -1 must be >= 0"),
    (dict(punch_idle_sec=0), "punch_idle_sec: 0 must be > 0"),
    (dict(a2s_cookie_epoch_sec=0), "a2s_cookie_epoch_sec: 0 must be > 0"),
    (dict(rate_limits={"udp": {"packets_per_sec": 0}}), "rate_limits.udp.packets_per_sec: 0 must be > 0 (omit it for no limit)"),
    (dict(tunnel_address="pop1"), "tunnel_address: 'pop1' is not an IPv4 address"),
    (dict(backends=["10.1.0.1", "x"]), "backends[1]: 'x' is not an IPv4 address"),
    (dict(anycast_prefixes=["198.51.100.5/24"]),
     "anycast_prefixes[0]: 198.51.100.5/24 has host bits set (did you mean 198.51.100.0/24?)"),
])
def test_bad_parameters(overrides, message):
    with pytest.raises(_rules.RuleError) as error:
        _rules.desired_entries(params(**overrides), ZERO_KEY)
    assert str(error.value) == message


def test_backends_of_services_are_always_accepted_on_the_return_path():
    desired, dummy = _rules.desired_entries(params(services=[service("a", backend="10.1.0.99")],
                                                   backends=["10.1.0.10"]), ZERO_KEY)
    assert set(desired["edge_backends"]) == {abi.ipv4("10.1.0.10"), abi.ipv4("10.1.0.99")}


def test_capacity_is_checked_before_anything_is_written():
    prefixes = ["10.%d.%d.0/24" % (index // 256, index % 256) for index in range(257)]
    with pytest.raises(_rules.RuleError, match=r"anycast: 257 entries do not fit in edge_anycast_v4 \(max 256\)"):
        _rules.desired_entries(params(anycast_prefixes=prefixes), ZERO_KEY)


# --- changes and the plan --------------------------------------------------------------------

def test_map_changes():
    present = {b"a": b"1", b"b": b"1", b"c": b"1"}
    desired = {b"a": b"1", b"b": b"2", b"d": b"1"}
    assert _rules.map_changes(present, desired) == ({b"d": b"1"}, {b"b": (b"2", b"1")}, {b"c": b"1"})
    assert _rules.map_changes(present, dict(present)) == ({}, {}, {})


def entries_of(rule_params, key=ZERO_KEY):
    return _rules.desired_entries(rule_params, key)[0]


def test_no_change_no_plan():
    desired = entries_of(params(services=[service("a", id=5, a2s_cache=True)], anycast_prefixes=["198.51.100.0/24"],
                                deny=["10.0.0.0/8"]))
    assert _rules.plan_writes(desired, desired, [5]) == []


def test_a_change_that_needs_every_step_makes_them_in_the_documented_order():
    old = params(
        tunnel_address="10.0.0.1",
        anycast_prefixes=["198.51.100.0/24", "198.51.101.0/24"],
        backends=["10.1.0.10", "10.1.0.20"],
        services=[
            service("stays", id=1, a2s_cache=True),
            service("moves-backend", id=2, port=27016, a2s_cache=True),
            service("goes", id=3, address="198.51.101.10", backend="10.1.0.20"),
            service("edited", id=4, port=27018, rate_limit={"packets_per_sec": 5}),
        ],
        allow=["192.0.2.0/24", "192.0.3.0/24"],
        deny=["10.0.0.0/8", "172.16.0.0/12", "203.0.113.0/26", "198.18.0.7/32"],
        payload_rules=[{"action": "drop", "protocol": "udp", "dst_port": [27015, 27015]}],
        # (edge_rules resolves each pair's device to its ifindex and MTU before this)
        wireguard_pairs=[{"backend": "10.1.0.20", "device": "aw-goes", "ifindex": 7, "mtu": 1440}],
    )
    new = params(
        tunnel_address="10.0.0.1",
        ban_sec=30,
        anycast_prefixes=["198.51.100.0/24", "198.51.102.0/24"],
        backends=["10.1.0.10", "10.1.0.30"],
        services=[
            service("stays", id=1, a2s_cache=True),
            service("moves-backend", id=2, port=27016, a2s_cache=True, backend="10.1.0.30"),
            service("edited", id=4, port=27018),
            service("new", id=5, address="198.51.102.10", backend="10.1.0.30"),
        ],
        allow=["192.0.2.0/24", "192.0.4.0/24"],
        deny=["10.0.0.0/8", "100.64.0.0/10", "203.0.113.128/26"],
        payload_rules=[{"action": "pass", "protocol": "udp", "payload": {"value": "ffffffff54"}},
                       {"action": "drop", "protocol": "udp", "dst_port": [27015, 27015]}],
        wireguard_pairs=[{"backend": "10.1.0.30", "device": "aw-new", "ifindex": 8, "mtu": 1420}],
    )
    present = entries_of(old)
    # The payload rules as the maps hold them once loaded (two banks and the switch), not as a list.
    present.update(_payload_rules.present_entries(present.pop(_payload_rules.RULES_MAP)))
    # and a key written by hand into the deny trie: a new deny's prefix with a host bit set
    present["edge_deny_v4"][lpm("100.64.0.1/10")] = _rules.LPM_PRESENT
    desired = entries_of(new)
    plan = _rules.plan_writes(present, desired, present_cache_ids=[1, 2])
    assert [step.name for step in plan] == list(_rules.STEP_ORDER)
    by_name = dict((step.name, step) for step in plan)
    assert [_rules.render_lpm(key) for key, dummy, dummy in by_name["deny_add"].entries] == [
        "100.64.0.0/10", "203.0.113.128/26"]
    assert sorted(_rules.render_lpm(key) for key, dummy, dummy in by_name["deny_remove"].entries) == [
        "172.16.0.0/12", "198.18.0.7/32", "203.0.113.0/26"]
    assert [_rules.render_lpm(key) for key, dummy, dummy in by_name["deny_unalias"].entries] == ["100.64.0.1/10"]
    # the derived lists: 203.0.113.0/24 holds both /26s in between, then only the new one;
    # 198.18.0.0/24's bitmap goes last
    hosts_key = abi.SRC_HOSTS_KEY.pack(0xCB0071, _source_lists.DENY)
    (key, interim, old), = by_name["src_hosts_tighten"].entries
    assert (key, _source_lists.host_words((1 << 64) - 1 | ((1 << 64) - 1) << 128)) == (
        hosts_key, abi.SRC_HOSTS_VALUE.unpack(interim))
    (key, final, dummy), = by_name["src_hosts_final"].entries
    assert (key, abi.SRC_HOSTS_VALUE.unpack(final)) == (hosts_key, (0, 0, (1 << 64) - 1, 0))
    assert [key for key, dummy, dummy in by_name["src_hosts_remove"].entries] == [
        abi.SRC_HOSTS_KEY.pack(0xC61200, _source_lists.DENY)]
    assert [_rules.render_lpm(key) for key, dummy, dummy in by_name["allow_remove"].entries] == ["192.0.3.0/24"]
    assert [_rules.render_lpm(key) for key, dummy, dummy in by_name["allow_add"].entries] == ["192.0.4.0/24"]
    # the backend move disarms service 2, deletes its cache entries of every kind (1 stays), then re-arms it
    assert [abi.unpack_a2s_cache_key(key) for key, dummy, dummy in by_name["a2s_cache_delete"].entries] == [
        (2, "info"), (2, "player"), (2, "rules")]
    (disarm_key, disarmed, dummy), = by_name["services_disarm"].entries
    assert abi.SERVICE_VALUE.unpack(disarmed)[:3] == (2, abi.ipv4("10.1.0.30"), 0)
    rearmed = dict((key, new_value) for key, new_value, dummy in by_name["services_change"].entries)
    assert abi.SERVICE_VALUE.unpack(rearmed[disarm_key])[2] == _rules.A2S_FLAGS
    assert [socket.inet_ntoa(key) for key, dummy, dummy in by_name["backends_remove"].entries] == ["10.1.0.20"]
    # the WireGuard pair of the backend that goes is taken off, the new backend's is set
    assert [socket.inet_ntoa(key) for key, dummy, dummy in by_name["wireguard_pairs_remove"].entries] == ["10.1.0.20"]
    assert [(socket.inet_ntoa(key), abi.WIREGUARD_PAIR.unpack(value))
            for key, value, dummy in by_name["wireguard_pairs_set"].entries] == [("10.1.0.30", (8, 1420))]
    counts, writes = _rules.summarize(plan, _rules.compare(present, desired))
    assert counts["edge_services"] == {"added": 1, "changed": 2, "removed": 1}
    assert counts["edge_a2s_cache"] == {"added": 0, "changed": 0, "removed": 1}
    assert writes == sum(len(step.entries) for step in plan)


def test_first_deployment_writes_config_before_any_service_and_prefixes_last():
    desired = entries_of(params(services=[service("a", a2s_cache=True)], anycast_prefixes=["198.51.100.0/24"],
                                deny=["10.0.0.0/8"], allow=["192.0.2.0/24"]), key=bytes(range(16)))
    empty = {"edge_config": {_rules.CONFIG_KEY: bytes(abi.EDGE_CONFIG.size)}}
    names = [step.name for step in _rules.plan_writes(empty, desired)]
    # the derived lists: the deny first, the allow (which the empty maps did not have) last
    assert names == ["src_filter_tighten", "deny_add", "backends_add", "config", "services_add", "anycast_add",
                     "allow_add", "src_filter_final", "dst_pass_final"]


def test_an_id_passed_to_another_service_clears_the_cache_before_the_new_owner_arrives():
    old = entries_of(params(services=[service("old-game", id=7, a2s_cache=True)]))
    new = entries_of(params(services=[service("new-game", id=7, port=28000, a2s_cache=True)]))
    plan = _rules.plan_writes(old, new, present_cache_ids=[7])
    assert [step.name for step in plan] == ["services_remove", "a2s_cache_delete", "services_add"]


def test_two_services_swapping_ids_are_disarmed_until_both_cache_entries_are_gone():
    old = entries_of(params(services=[service("game", id=7, a2s_cache=True),
                                      service("other", id=8, port=1, a2s_cache=True)]))
    new = entries_of(params(services=[service("game", id=8, a2s_cache=True),
                                      service("other", id=7, port=1, a2s_cache=True)]))
    plan = _rules.plan_writes(old, new, present_cache_ids=[7])
    assert [step.name for step in plan] == ["services_disarm", "a2s_cache_delete", "services_change"]
    assert all(abi.SERVICE_VALUE.unpack(value)[2] == 0 for dummy, value, dummy in plan[0].entries)
    # 8 has no entry yet, but "other" may snoop one into it until it is disarmed: both go
    assert _rules.cache_service_ids(key for key, dummy, dummy in plan[1].entries) == [7, 8]
    assert len(plan[1].entries) == 2 * len(abi.A2S_KINDS)


def test_a_renumbered_service_without_a2s_needs_no_cache_work():
    old = entries_of(params(services=[service("game", id=7)]))
    new = entries_of(params(services=[service("game", id=8)]))
    assert [step.name for step in _rules.plan_writes(old, new, present_cache_ids=[])] == ["services_change"]


def test_unowned_cache_entries_are_deleted_and_owned_ones_kept():
    services = entries_of(params(services=[service("game", id=7, a2s_cache=True)]))
    assert _rules.stale_cache_ids(services["edge_services"], services["edge_services"], [7, 9]) == [9]


def test_a_cache_key_of_a_kind_this_collection_does_not_know_is_named_with_its_value():
    with pytest.raises(ValueError, match=r"edge_a2s_cache key 0x00030011: kind 3 is none of 0 info, 1 player, 2 rules"):
        _rules.cache_service_ids([abi.U32.pack(3 << abi.A2S_CACHE_KEY_KIND_SHIFT | 17)])


def test_inverse_restores_the_maps():
    present = entries_of(params(deny=["10.0.0.0/8", "172.16.0.0/12"], services=[service("a", id=3)]))
    desired = entries_of(params(deny=["10.0.0.0/8", "100.64.0.0/10"], services=[service("a", id=4)]))
    state = copy_of(present)
    plan = _rules.plan_writes(present, desired)
    for step in plan:
        apply_step(state, step)
    assert state == desired
    for step in reversed(plan):
        for undo in _rules.inverse(step):
            apply_step(state, undo)
    assert state == present


def test_diff_is_readable_and_capped():
    present = entries_of(params(deny=["10.%d.0.0/16" % index for index in range(150)], services=[service("old", id=3)]),
                         key=bytes(range(16)))
    desired = entries_of(params(deny=["11.%d.0.0/16" % index for index in range(150)],
                                services=[service("cs2-main", a2s_cache=True)], ban_sec=5), key=bytes(range(16, 32)))
    diff = _rules.render_diff(present, desired, {abi.pack_service_key("udp", "198.51.100.10", 27015): "cs2-main"},
                              cache_deleted_ids=[3], limit=100)
    before, after = diff["before"].splitlines(), diff["after"].splitlines()
    assert "  10.0.0.0/16" in before and "  11.0.0.0/16" in after
    assert before.count("  ... and 50 more") == 1 and after.count("  ... and 50 more") == 1
    assert ("  cs2-main: udp 198.51.100.10:27015 id 237 -> backend 10.1.0.10 a2s_cache,a2s_snoop max_age 30s "
            "game none attack_mode auto admission 2000 pps / 2000000 Bps") in after
    assert ("  cs2-main: udp 198.51.100.10:27015 id 3 -> backend 10.1.0.10 "
            "game none attack_mode auto admission 2000 pps / 2000000 Bps") in before   # changed in place
    assert "  ban_sec 60" in before and "  ban_sec 5" in after
    assert "  cookie_key current (set, changed)" in after
    assert "  cookie_key previous (unset)" in before and "  cookie_key previous (unset)" in after
    assert "  cached replies of service id 3" in before
    # the key itself never appears
    assert bytes(range(16)).hex() not in diff["before"] + diff["after"]


# --- control-plane sources: exempt through the allow record, labelled apart -------------------

NEIGHBOUR = dict(address="172.16.1.1", reason="BGP neighbour upstream of pop1")
OTHER_POP = dict(address="10.0.0.2", reason="tunnel address of POP pop2")


def test_control_plane_sources_are_allow_entries_with_their_own_bit():
    desired = entries_of(params(allow=["192.0.2.0/28", "10.0.0.2/32"], control_plane=[NEIGHBOUR, OTHER_POP]))
    assert desired["edge_allow_v4"] == {
        lpm("192.0.2.0/28"): abi.U32.pack(abi.ALLOW_OPERATOR),
        lpm("10.0.0.2/32"): abi.U32.pack(abi.ALLOW_OPERATOR | abi.ALLOW_CONTROL_PLANE),   # in both lists
        lpm("172.16.1.1/32"): abi.U32.pack(abi.ALLOW_CONTROL_PLANE),
    }
    # XDP reads the derived lists, which know nothing of the labels: the same as one allow list
    plain = entries_of(params(allow=["192.0.2.0/28", "10.0.0.2/32", "172.16.1.1/32"]))
    for name in _rules.DERIVED_MAPS:
        assert desired[name] == plain[name]
    assert _rules.ALLOW_OPERATOR == _rules.LPM_PRESENT   # an operator-only entry reads as before


def test_a_control_plane_source_inside_a_deny_prefix_is_refused():
    with pytest.raises(_rules.RuleError) as error:
        entries_of(params(deny=["100.64.0.0/10", "172.16.0.0/12"], control_plane=[OTHER_POP, NEIGHBOUR]))
    assert str(error.value) == ("control_plane[1].address: 172.16.1.1/32 (BGP neighbour upstream of pop1) is inside "
                                "the deny prefix 172.16.0.0/12: deny beats the exemption, every packet from it "
                                "would be dropped")
    with pytest.raises(_rules.RuleError, match=r"control_plane\[0\].address: 'nonsense' is not an IPv4 address"):
        entries_of(params(control_plane=[dict(address="nonsense", reason="")]))


def test_covering_prefix_finds_the_shortest():
    deny = _rules.cidr_entries(["10.0.0.0/8", "10.1.0.0/16", "0.0.0.0/32"], "deny")
    assert _rules.covering_prefix(deny, lpm("10.1.2.3/32")) == lpm("10.0.0.0/8")
    assert _rules.covering_prefix(deny, lpm("11.0.0.1/32")) is None
    assert _rules.covering_prefix(_rules.cidr_entries(["0.0.0.0/0"], "deny"), lpm("11.0.0.1/32")) == lpm("0.0.0.0/0")


def test_the_diff_says_why_a_source_is_exempt():
    present = entries_of(params(allow=["10.0.0.2/32"], control_plane=[dict(address="172.16.9.9", reason="old")]))
    desired = entries_of(params(allow=["10.0.0.2/32"], control_plane=[NEIGHBOUR, OTHER_POP]))
    reasons = _rules.control_plane_entries([NEIGHBOUR, OTHER_POP])
    diff = _rules.render_diff(present, desired, {}, reasons=reasons)
    assert diff["before"].splitlines() == ["edge_allow_v4:", "  172.16.9.9/32 (control plane)", "  10.0.0.2/32"]
    assert diff["after"].splitlines() == [
        "edge_allow_v4:", "  172.16.1.1/32 (control plane: BGP neighbour upstream of pop1)",
        "  10.0.0.2/32 (allow list; control plane: tunnel address of POP pop2)"]
    assert _rules.control_plane_changes(present["edge_allow_v4"], desired["edge_allow_v4"]) == (2, 1)
    assert _rules.control_plane_changes(desired["edge_allow_v4"], desired["edge_allow_v4"]) == (0, 0)
    # a label change is a value change of the record only: the derived lists need no write
    plan = _rules.plan_writes(entries_of(params(allow=["10.0.0.2/32"])),
                              entries_of(params(control_plane=[OTHER_POP])))
    assert [(step.name, len(step.entries)) for step in plan] == [("allow_add", 1)]


def test_a_source_listed_twice_keeps_both_reasons():
    reasons = _rules.control_plane_entries([NEIGHBOUR, dict(address="172.16.1.1/32", reason="monitoring host m"),
                                            NEIGHBOUR])
    assert list(reasons.items()) == [(lpm("172.16.1.1/32"), "BGP neighbour upstream of pop1; monitoring host m")]


# --- the order, as a property over random rule sets ------------------------------------------

DENY_ALLOW_POOL = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "192.0.2.0/24", "192.0.2.128/25", "203.0.113.7/32"]
ANYCAST_POOL = ["198.51.100.0/24", "198.51.101.0/24", "198.51.102.0/24"]
ENDPOINTS = [(proto, "198.51.10%d.10" % net, port) for proto in ("udp", "tcp") for net in range(3)
             for port in (27015, 27016)]
BACKENDS = ["10.1.0.10", "10.1.0.11", "10.1.0.12"]


@st.composite
def rule_sets(draw):
    endpoints = draw(st.lists(st.sampled_from(ENDPOINTS), unique=True, max_size=6))
    ids = draw(st.permutations(range(1, 9)))
    services = []
    for index, (proto, address, port) in enumerate(endpoints):
        a2s = proto == "udp" and draw(st.booleans())
        services.append(service("s%d" % index, address=address, protocol=proto, port=port, id=ids[index],
                                backend=draw(st.sampled_from(BACKENDS)), a2s_cache=a2s))
    prefixes = sorted({".".join(item["address"].split(".")[:3]) + ".0/24" for item in services}
                      | set(draw(st.lists(st.sampled_from(ANYCAST_POOL), unique=True))))
    deny = draw(st.lists(st.sampled_from(DENY_ALLOW_POOL), unique=True))
    allow = [cidr for cidr in draw(st.lists(st.sampled_from(DENY_ALLOW_POOL), unique=True)) if cidr not in deny]
    return params(tunnel_address=draw(st.sampled_from(["10.0.0.1", "10.0.0.2"])), services=services,
                  anycast_prefixes=prefixes, backends=draw(st.lists(st.sampled_from(BACKENDS), unique=True)),
                  deny=deny, allow=allow, ban_sec=draw(st.sampled_from([0, 60])))


def copy_of(entries):
    """A copy of {map: contents} to apply steps to (edge_src_filter's contents are bytes)."""
    return dict((name, contents if isinstance(contents, bytes) else dict(contents)) for name, contents in entries.items())


def apply_step(state, step):
    if step.map_name in (_rules.SOURCE_FILTER_MAP, _rules.DEST_PASS_MAP):
        # the array, kept whole as bytes (absent: all zero); "delete" never happens to it
        assert step.operation == "update"
        size = abi.SRC_FILTER_ENTRY.size if step.map_name == _rules.SOURCE_FILTER_MAP else abi.U64.size
        array = bytearray(state.get(step.map_name) or bytes(abi.SRC_FILTER_ENTRIES * size))
        for key, value, dummy in step.entries:
            offset = abi.U32.unpack(key)[0] * size
            array[offset:offset + len(value)] = value
        state[step.map_name] = bytes(array)
        return
    target = state.setdefault(step.map_name, {})
    for key, value, dummy in step.entries:
        if step.operation == "update":
            target[key] = value
        else:
            target.pop(key, None)


def passed_at_once(dest_pass, address):
    """Whether XDP passes a packet to `address` (raw bytes) after its one edge_dst_pass lookup."""
    net24 = int.from_bytes(address, "big") >> 8
    word = abi.U64.unpack_from(dest_pass, (net24 // 64) * abi.U64.size)[0] if dest_pass else 0
    return bool((word >> (net24 % 64)) & 1)


def services_in(prefix_key, services):
    length, network = abi.LPM_V4_KEY.unpack(prefix_key)
    mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF
    return set(key for key in services
               if int.from_bytes(abi.SERVICE_KEY.unpack(key)[0], "big") & mask == int.from_bytes(network, "big"))


@settings(max_examples=400, deadline=None)
@given(rule_sets(), rule_sets(), st.data())
def test_every_intermediate_state_is_safe(old_params, new_params, data):
    old = entries_of(old_params, key=bytes(range(16)))
    new = entries_of(new_params, key=bytes(range(16)))
    old_ids = sorted(abi.SERVICE_VALUE.unpack(value)[0] for value in old["edge_services"].values())
    cache_ids = data.draw(st.lists(st.sampled_from(old_ids), unique=True)) if old_ids else []
    # The cache as the program would have it: each entry filled by the service owning the id.
    owner_of = dict((abi.SERVICE_VALUE.unpack(value)[0], (key, abi.SERVICE_VALUE.unpack(value)[1]))
                    for key, value in old["edge_services"].items())
    cache = dict((service_id, owner_of[service_id]) for service_id in cache_ids)

    plan = _rules.plan_writes(old, new, cache_ids)
    state = copy_of(old)
    for number, step in enumerate(plan):
        apply_step(state, step)
        if step.map_name == _rules.A2S_CACHE_MAP:
            for key, dummy, dummy in step.entries:
                cache.pop(abi.unpack_a2s_cache_key(key)[0], None)
            continue
        where = "after step %d (%s) of %s" % (number, step.name, [s.name for s in plan])
        # nothing claimed (a prefix, a service) is passed by edge_dst_pass before the lookups
        for key in state["edge_services"]:
            assert not passed_at_once(state.get(_rules.DEST_PASS_MAP), abi.SERVICE_KEY.unpack(key)[0]), where
        for key in state["edge_anycast_v4"]:
            assert not passed_at_once(state.get(_rules.DEST_PASS_MAP), abi.LPM_V4_KEY.unpack(key)[1]), where
        if step.map_name in _rules.DERIVED_MAPS + (_rules.DEST_PASS_MAP,):
            continue   # what XDP reads of the lists: test_source_lists replays those steps
        deny, allow = set(state["edge_deny_v4"]), set(state["edge_allow_v4"])
        assert deny >= set(new["edge_deny_v4"]), where
        assert allow <= set(old["edge_allow_v4"]) | set(new["edge_allow_v4"]), where
        if "allow_remove" in [s.name for s in plan[:number + 1]]:
            assert allow <= set(new["edge_allow_v4"]), where
        services = state["edge_services"]
        for prefix in state["edge_anycast_v4"]:
            if prefix in new["edge_anycast_v4"] and prefix not in old["edge_anycast_v4"]:
                assert services_in(prefix, new["edge_services"]) <= set(services), where
            if prefix not in new["edge_anycast_v4"]:
                assert services_in(prefix, old["edge_services"]) <= set(services), where
        for key, value in services.items():
            service_id, backend, flags = abi.SERVICE_VALUE.unpack(value)[:3]
            assert backend in state["edge_backends"], where
            if key not in old["edge_services"]:
                assert state["edge_config"] == new["edge_config"], where
            if flags & _rules.A2S_FLAGS:
                assert cache.get(service_id, (key, backend)) == (key, backend), where
                cache[service_id] = (key, backend)     # what snooping would write
    state.pop(_rules.A2S_CACHE_MAP, None)
    assert state == new


@pytest.mark.parametrize("protocol, game_protocol, transport", [
    ("udp", "minecraft", "tcp"), ("icmp", "minecraft", "tcp"), ("tcp", "source", "udp"), ("tcp", "goldsrc", "udp"),
])
def test_a_game_protocol_runs_only_on_its_own_transport(protocol, game_protocol, transport):
    message = r"services\[2\].game_protocol: %s is a %s game protocol, the service is %s" % (
        game_protocol, transport, protocol)
    with pytest.raises(_rules.RuleError, match=message):
        _rules.attack_fields({"protocol": protocol, "game_protocol": game_protocol}, "services[2]")
    assert _rules.attack_fields({"protocol": transport, "game_protocol": game_protocol}, "services[2]")[1] == game_protocol


@given(st.lists(st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(0, 32)), max_size=40))
def test_prefixes_are_unpacked_column_by_column_as_struct_unpacks_them(pairs):
    keys = [abi.LPM_V4_KEY.pack(length, ((address >> (32 - length)) << (32 - length) if length else 0)
                                .to_bytes(4, "big")) for address, length in pairs]
    expected = [(int.from_bytes(raw, "big"), length) for length, raw in map(abi.LPM_V4_KEY.unpack, keys)]
    assert _rules._prefixes(keys) == expected


def test_a_hosts_bitmap_packs_as_its_four_words():
    bits = (1 << 255) | (0xDEADBEEF << 70) | 5
    assert _rules._hosts_value(bits) == abi.SRC_HOSTS_VALUE.pack(*_source_lists.host_words(bits))


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.integers(0, abi.SRC_FILTER_ENTRIES - 1), st.binary(min_size=32, max_size=32), max_size=6),
       st.dictionaries(st.integers(0, abi.SRC_FILTER_ENTRIES - 1), st.binary(min_size=32, max_size=32), max_size=6))
def test_the_array_changes_are_those_entry_by_entry(old_entries, new_entries):
    """source_filter_changes finds the differing entries with whole-array operations: the same
    (added, changed, removed) as comparing every entry, an all-zero entry counting as absent."""
    size = abi.SRC_FILTER_ENTRY.size
    before, after = bytearray(abi.SRC_FILTER_ENTRIES * size), bytearray(abi.SRC_FILTER_ENTRIES * size)
    for plane, entries in ((before, old_entries), (after, new_entries)):
        for index, value in entries.items():
            plane[index * size:(index + 1) * size] = value
    zero = bytes(size)
    expected = ({}, {}, {})
    for index in sorted(set(old_entries) | set(new_entries)):
        old, new = bytes(before[index * size:(index + 1) * size]), bytes(after[index * size:(index + 1) * size])
        key = abi.U32.pack(index)
        if old == new:
            continue
        if old == zero:
            expected[0][key] = new
        elif new == zero:
            expected[2][key] = old
        else:
            expected[1][key] = (new, old)
    assert _rules.source_filter_changes(bytes(before), bytes(after)) == expected


def test_the_dest_pass_interim_is_the_and_of_both_planes():
    before = bytes([0b1100, 0xFF, 0]) + bytes(5)
    after = bytes([0b1010, 0x0F, 0xFF]) + bytes(5)
    assert _rules.dest_pass_tightened(before, after) == bytes([0b1000, 0x0F, 0]) + bytes(5)
    assert _rules.dest_pass_tightened(None, after) == bytes(8)


# --- keys written by hand with host bits set (the kernel's trie keeps one node per prefix) -----

def apply_to_trie(trie, step):
    """A step made on a model of the kernel's LPM trie, {prefix: (key as written, value)}: an update
    replaces the node of its key's prefix bits, a delete deletes it, whatever host bits either has."""
    for key, value, dummy in step.entries:
        if step.operation == "update":
            trie[_rules.lpm_network(key)] = (key, value)
        else:
            trie.pop(_rules.lpm_network(key), None)


def read_back(trie):
    """The trie's entries as edge_rules reads them: each node's key as it was written."""
    return dict(trie.values())


@settings(max_examples=60, deadline=None)   # each example derives the 8 MiB filter a few times
@given(st.lists(st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(0, 32)), max_size=12),
       st.lists(st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(1, 31)), max_size=6), st.data())
def test_keys_written_by_hand_with_host_bits_are_replaced_and_undone_as_the_trie_keeps_them(wanted, others, data):
    """The kernel's trie replaces and deletes by the prefix bits only. Whatever keys with host bits
    were written over the wanted prefixes (or beside them), the plan leaves exactly the wanted
    prefixes in the trie, every one of them denied by the derived lists at every step, and its
    inverse puts back the trie as it was read, key for key."""
    deny = sorted(set(_rules.render_lpm(_rules.lpm_network(abi.LPM_V4_KEY.pack(length, address.to_bytes(4, "big"))))
                      for address, length in wanted))
    desired = entries_of(params(deny=deny))
    trie = dict((_rules.lpm_network(key), (key, value)) for key, value in desired["edge_deny_v4"].items())
    # written by hand: some wanted prefixes again with host bits, and prefixes of their own
    rewritten = data.draw(st.lists(st.sampled_from(deny), unique=True)) if deny else []
    for text in rewritten:
        length, raw = abi.LPM_V4_KEY.unpack(lpm(text))
        host = data.draw(st.integers(0, _rules._HOST_MASKS[length]))
        trie[lpm(text)] = (abi.LPM_V4_KEY.pack(length, (int.from_bytes(raw, "big") | host).to_bytes(4, "big")),
                           _rules.LPM_PRESENT)
    for address, length in others:
        key = abi.LPM_V4_KEY.pack(length, address.to_bytes(4, "big"))
        trie[_rules.lpm_network(key)] = (key, _rules.LPM_PRESENT)
    present = dict(desired, edge_deny_v4=read_back(trie))
    as_read = dict(trie)

    plan = _rules.plan_writes(present, desired)
    state = copy_of(present)
    for step in plan:
        if step.map_name == "edge_deny_v4":
            apply_to_trie(trie, step)
        else:
            apply_step(state, step)
        for text in deny:
            address = int.from_bytes(abi.LPM_V4_KEY.unpack(lpm(text))[1], "big")
            assert _source_lists.is_listed(state[_rules.SOURCE_FILTER_MAP], hosts_of(state), address,
                                           _source_lists.DENY), (text, step.name)
    assert read_back(trie) == desired["edge_deny_v4"]
    assert dict(state, edge_deny_v4=read_back(trie)) == desired
    for step in reversed(plan):
        for undo in _rules.inverse(step):
            if undo.map_name == "edge_deny_v4":
                apply_to_trie(trie, undo)
    assert trie == as_read


def hosts_of(state):
    """edge_src_hosts of a state as _source_lists reads it: {(/24 number, list): 256-bit int}."""
    return dict((abi.SRC_HOSTS_KEY.unpack(key), int.from_bytes(value, "little"))
                for key, value in state.get(_rules.SOURCE_HOSTS_MAP, {}).items())
