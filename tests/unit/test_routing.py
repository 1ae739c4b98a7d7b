"""ip_routing's decisions (plugins/module_utils/_routing.py): the wanted entries, every problem
named with its option path, and the plan - what is added and removed, in which order.

The pyroute2 side (reading by marks, applying, undoing) runs against a real kernel in
tests/integration/test_ip_routing.py.
"""

from __future__ import annotations

import pytest

from ansible_collections.anycast.edge.plugins.module_utils._routing import (
    Address,
    Route,
    RoutingError,
    Rule,
    plan,
    same_route,
    show,
    wanted_entries,
)

NOTHING = {"addresses": set(), "routes": set(), "rules": set()}


def test_wanted_entries_are_normalised():
    wanted = wanted_entries(
        [{"address": "198.51.100.10", "dev": "lo"}, {"address": "10.0.0.1/24", "dev": "eth0"}],
        [{"dst": "default", "dev": "ae-pop1", "table": 4242, "src": None},
         {"dst": "198.51.100.10", "dev": "ae-be1", "src": "100.64.0.1"}],
        [{"src": "198.51.100.10", "table": 4242, "priority": 4242}])
    assert wanted["addresses"] == {Address("198.51.100.10/32", "lo"), Address("10.0.0.1/24", "eth0")}
    assert wanted["routes"] == {Route("0.0.0.0/0", 4242, "ae-pop1", None),
                                Route("198.51.100.10/32", 254, "ae-be1", "100.64.0.1")}
    assert wanted["rules"] == {Rule("198.51.100.10/32", 4242, 4242)}


@pytest.mark.parametrize("addresses, routes, rules, message", [
    ([{"address": "198.51.100.300", "dev": "lo"}], [], [], "addresses[0].address: '198.51.100.300'"),
    ([], [{"dst": "10.0.0.1/24", "dev": "x"}], [], "routes[0].dst: '10.0.0.1/24'"),  # host bits set
    ([], [{"dst": "10.0.0.0/24", "dev": "x", "table": 255}], [], "routes[0].table: 255"),
    ([], [{"dst": "10.0.0.0/24", "dev": "x", "src": "nope"}], [], "routes[0].src: 'nope'"),
    ([], [{"dst": "default", "dev": "a", "table": 7}, {"dst": "0.0.0.0/0", "dev": "b", "table": 7}], [],
     "routes[1]: a second route to 0.0.0.0/0 in table 7"),
    ([], [], [{"src": "2001:db8::1", "table": 7, "priority": 7}], "rules[0].src: '2001:db8::1'"),
])
def test_bad_wanted_entries_name_their_path_and_value(addresses, routes, rules, message):
    with pytest.raises(RoutingError, match=r"^%s" % message.replace("[", r"\[").replace("]", r"\]")
                       .replace(".", r"\.")):
        wanted_entries(addresses, routes, rules)


def test_plan_adds_in_dependency_order_and_removes_in_reverse():
    wanted = {"addresses": {Address("198.51.100.10/32", "lo")},
              "routes": {Route("0.0.0.0/0", 4242, "ae-pop1", None)},
              "rules": {Rule("198.51.100.10/32", 4242, 4242)}}
    present = {"addresses": {Address("198.51.100.9/32", "lo")},
               "routes": set(),
               "rules": {Rule("198.51.100.9/32", 4242, 4242)}}
    add, remove = plan(wanted, present)
    assert add == [Address("198.51.100.10/32", "lo"), Route("0.0.0.0/0", 4242, "ae-pop1", None),
                   Rule("198.51.100.10/32", 4242, 4242)]
    # The rule that looks a table up goes before the address it matched.
    assert remove == [Rule("198.51.100.9/32", 4242, 4242), Address("198.51.100.9/32", "lo")]


def test_plan_of_the_present_state_is_empty():
    present = wanted_entries([{"address": "198.51.100.10/32", "dev": "lo"}],
                             [{"dst": "default", "dev": "ae-pop1", "table": 4242}],
                             [{"src": "198.51.100.10", "table": 4242, "priority": 4242}])
    assert plan(present, present) == ([], [])
    # Everything of ours goes when nothing is wanted any more (a removed service, a removed POP).
    add, remove = plan(NOTHING, present)
    assert add == [] and len(remove) == 3


def test_a_route_that_changes_device_is_replaced_not_removed():
    old = Route("198.51.100.10/32", 254, "ae-be1", "100.64.0.1")
    new = old._replace(dev="ae-be2", src="100.64.0.3")
    add, remove = plan(dict(NOTHING, routes={new}), dict(NOTHING, routes={old}))
    assert add == [new] and remove == [old]
    assert same_route(old, add) == new and same_route(new, remove) == old
    assert same_route(Rule("198.51.100.10/32", 254, 7), add) is None


def test_entries_shown_as_ip_writes_them():
    assert show(Address("198.51.100.10/32", "lo")) == "198.51.100.10/32 dev lo"
    assert show(Route("0.0.0.0/0", 4242, "ae-pop1", None)) == "default dev ae-pop1 table 4242"
    assert show(Route("198.51.100.10/32", 254, "ae-be1", "100.64.0.1")) == \
        "198.51.100.10/32 dev ae-be1 table 254 src 100.64.0.1"
    assert show(Rule("198.51.100.10/32", 4242, 4242)) == "from 198.51.100.10/32 lookup 4242 priority 4242"
