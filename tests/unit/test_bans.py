"""Hand-made bans' pure parts: the request's check and expansion (plugins/module_utils/_bans.py),
the plans of a ban and a lift, and the fleet's message for them (a manual ban, a lift: version 2,
which an agent of version 1 refuses rather than reads as a ban). The writes against real maps,
the module, the playbooks and the fleet: tests/integration/test_fleet_ban.py."""

from __future__ import annotations

import importlib
import json

import pytest

importlib.import_module("a2s_responder")  # puts agent/ on sys.path (see its docstring)

from anycast_edge_agent import fleet_sync  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.anycast.edge.plugins.module_utils import _bans  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi  # noqa: E402  pylint: disable=wrong-import-position

NS = 10**9


def test_addresses_and_prefixes_are_expanded_sorted_and_once():
    assert _bans.resolve(["203.0.113.9", "198.18.4.0/30", "203.0.113.9/32", " 10.0.0.1 "]) == [
        "10.0.0.1", "198.18.4.0", "198.18.4.1", "198.18.4.2", "198.18.4.3", "203.0.113.9"]


@pytest.mark.parametrize("addresses, problem", [
    (["203.0.113.300"], "anycast_edge_ban_addresses[0]: '203.0.113.300': is not an IPv4 address or prefix"),
    (["192.0.2.0/24", "198.18.4.1/24"], "anycast_edge_ban_addresses[1]: '198.18.4.1/24': has host bits set"),
    (["2001:db8::1"], "anycast_edge_ban_addresses[0]: '2001:db8::1': is not an IPv4 address or prefix"),
    (["0.0.0.0/0"], "anycast_edge_ban_addresses[0]: '0.0.0.0/0': not a unicast source"),
    (["224.0.0.1"], "anycast_edge_ban_addresses[0]: '224.0.0.1': not a unicast source"),
    (["127.0.0.1"], "anycast_edge_ban_addresses[0]: '127.0.0.1': not a unicast source"),
    (["10.0.0.0/16"], "anycast_edge_ban_addresses[0]: '10.0.0.0/16': 65536 addresses, more than the 4096 one "
                      "request may ban (a /20)"),
    ("203.0.113.9", "anycast_edge_ban_addresses: '203.0.113.9': must be a list"),
    ([], "anycast_edge_ban_addresses: []: names no address"),
])
def test_a_bad_request_names_the_variable_path_and_the_value(addresses, problem):
    with pytest.raises(_bans.BanRequestError) as caught:
        _bans.resolve(addresses, "anycast_edge_ban_addresses")
    assert any(text.startswith(problem) for text in caught.value.problems), caught.value.problems


def test_every_problem_is_listed_at_once_and_the_total_is_capped():
    with pytest.raises(_bans.BanRequestError) as caught:
        _bans.resolve(["x", "192.0.2.1", "y/24"], "v")
    assert [text.split(":")[0] for text in caught.value.problems] == ["v[0]", "v[2]"]
    with pytest.raises(_bans.BanRequestError, match=r"v: 4100 addresses in all, more than the 4096"):
        _bans.resolve(["10.0.0.0/20", "10.1.0.0/30"], "v")


@pytest.mark.parametrize("duration", [0, -5, "ten", 7 * 86400 + 1, True, None, "1.5"])
def test_a_bad_duration_is_named(duration):
    with pytest.raises(_bans.BanRequestError, match=r"^anycast_edge_ban_duration: .*1 to 604800"):
        _bans.check_duration(duration, "anycast_edge_ban_duration")
    assert _bans.check_duration("600") == 600


def test_a_ban_changes_only_what_ends_earlier_and_a_lift_only_what_is_banned():
    current = {"a": 0, "b": 100 * NS, "c": 200 * NS - NS // 2, "d": 500 * NS}
    assert _bans.plan_ban(current, 200 * NS) == ["a", "b"]          # c is the same ban (the clocks' slack), d longer
    assert _bans.plan_lift(current, 150 * NS) == ["c", "d"]


def test_a_manual_ban_and_a_lift_survive_the_bus():
    ban = fleet_sync.Entry("ban", abi.ipv4("203.0.113.7"), 456 * NS, "pop1", manual=True)
    lift = fleet_sync.Entry("ban", abi.ipv4("203.0.113.7"), 789 * NS, "pop1", lifted=True)
    assert ban.subject() == lift.subject()      # the lift replaces the ban on the stream (one message per subject)
    for entry in (ban, lift):
        assert fleet_sync.decode(entry.subject(), entry.payload()) == entry
    assert json.loads(ban.payload()) == {"v": 1, "kind": "ban", "origin": "pop1", "expires_ns": 456 * NS,
                                         "address": "203.0.113.7", "manual": True}
    assert json.loads(lift.payload())["v"] == 2 and json.loads(lift.payload())["lifted"] is True
    assert (ban.label, lift.label) == ("ban", "unban")


@pytest.mark.parametrize("body", [
    {"v": 1, "kind": "ban", "origin": "pop1", "expires_ns": 1, "address": "203.0.113.7", "lifted": True},
    {"v": 2, "kind": "ban", "origin": "pop1", "expires_ns": 1, "address": "203.0.113.7"},
])
def test_a_lift_is_exactly_a_version_2_ban(body):
    subject = "anycast_edge.fleet.pop1.ban." + abi.ipv4("203.0.113.7").hex()
    with pytest.raises(fleet_sync.Malformed):
        fleet_sync.decode(subject, json.dumps(body).encode())
