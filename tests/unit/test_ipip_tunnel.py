"""ipip_tunnel's decisions, tested on recorded netlink state (tests/unit/fixtures/ipip_*.json).

The host kernel has no ipip, so the link dumps are pyroute2 ``message.dump()`` dicts:
ipip_p2p/external/foreign.json were made by fixtures/ipip_record.py (pyroute2 decoding the
attributes the kernel's ipip_fill_info sends; identical under pyroute2 0.7 and 0.9),
ipip_other_kind.json was recorded from this kernel. The logic under test is pure: dumps ->
link state -> plan. The pyroute2 calls themselves run in tests/integration/test_ipip_tunnel.py
(error path, both pyroute2 versions) and in the VM lab (real tunnels).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from ansible_collections.anycast.edge.plugins.filter import ipip_tunnels
from ansible_collections.anycast.edge.plugins.module_utils import _ipip

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def links(fixture):
    """name -> link state of every link in a fixture file."""
    data = json.loads((FIXTURES / fixture).read_text())
    states = [_ipip.link_from_dumps(entry["link"], entry["addresses"]) for entry in data["links"]]
    return dict((state["name"], state) for state in states)


def present(fixture, name):
    return links(fixture)[name]


def wanted(name="ae-3f2a9c1d07", **overrides):
    """The wanted state matching ipip_p2p.json's ae-3f2a9c1d07, with overrides."""
    arguments = dict(local="192.0.2.1", remote="198.51.100.20", ttl=64, mtu=None,
                     addresses=["100.64.0.0/31"], admin_state="up", external=False,
                     description="peer game1")
    arguments.update(overrides)
    return _ipip.wanted_state(name, **arguments)


# -- reading dumps ------------------------------------------------------------------------------

def test_point_to_point_tunnel_is_read_attribute_by_attribute():
    state = present("ipip_p2p.json", "ae-3f2a9c1d07")
    assert _ipip.public_state(state) == {
        "name": "ae-3f2a9c1d07", "kind": "ipip", "ours": True, "description": "peer game1",
        "local": "192.0.2.1", "remote": "198.51.100.20", "ttl": 64, "mtu": 1480,
        "admin_state": "up", "external": False, "addresses": ["100.64.0.0/31"]}
    assert state["index"] == 5
    assert state["pmtudisc"] is True


def test_down_tunnel_without_description_or_pmtudisc():
    state = present("ipip_p2p.json", "ae-91c0d2e4aa")
    assert (state["admin_state"], state["description"], state["ours"]) == ("down", None, True)
    assert (state["ttl"], state["mtu"], state["pmtudisc"], state["addresses"]) == (0, 1400, False, [])


def test_fallback_tunl0_is_ipip_but_not_ours():
    state = present("ipip_p2p.json", "tunl0")
    assert state["kind"] == "ipip" and not state["ours"]
    assert state["local"] is None and state["remote"] is None


def test_external_tunnel_reads_collect_metadata_and_any_endpoints():
    state = present("ipip_external.json", "ae-ext")
    assert state["external"] is True
    assert (state["local"], state["remote"]) == (None, None)


def test_addresses_sorted_numerically_and_ipv6_ignored():
    state = present("ipip_foreign.json", "ae-any")
    assert state["addresses"] == ["100.64.9.0/31", "100.64.9.8/32"]
    assert state["remote"] is None
    ipv6 = {"family": 10, "prefixlen": 64, "index": 9,
            "attrs": [["IFA_ADDRESS", "fe80::1"]]}
    assert _ipip.addresses_from_dumps([ipv6]) == []


def test_recorded_veth_is_another_kind_even_with_our_alias():
    state = present("ipip_other_kind.json", "ae-veth")
    assert state["kind"] == "veth" and state["ours"] is True
    assert state["local"] is None and state["external"] is False
    assert state["addresses"] == ["100.64.1.0/31"] and state["admin_state"] == "up"


@pytest.mark.parametrize("alias, ours, description", [
    ("anycast.edge", True, None),
    ("anycast.edge: peer game1", True, "peer game1"),
    ("anycast.edge-ish", False, None),
    ("ops anycast.edge", False, None),
    (None, False, None),
])
def test_alias_marks_our_tunnels(alias, ours, description):
    assert _ipip.alias_is_ours(alias) is ours
    assert _ipip._description_from_alias(alias) == description
    if ours:
        assert _ipip.alias_for(description) == alias


# -- wanted state -------------------------------------------------------------------------------

def test_wanted_state_normalises_addresses():
    state = wanted(addresses=["100.64.0.8", "100.64.0.0/31", "100.64.0.0/31"])
    assert state["addresses"] == ["100.64.0.0/31", "100.64.0.8/32"]


@pytest.mark.parametrize("overrides, message", [
    ({"name": "ae-this-is-too-long"}, "name: 'ae-this-is-too-long' is not a Linux interface name"),
    ({"name": "ae/1"}, "name: 'ae/1'"),
    ({"local": "192.0.2.300"}, "local: '192.0.2.300' is not an IPv4 address"),
    ({"remote": "2001:db8::1"}, "remote: '2001:db8::1' is not an IPv4 address"),
    ({"ttl": 256}, "ttl: 256 is not 0"),
    ({"mtu": 67}, "mtu: 67 is not 68..65515"),
    ({"addresses": ["100.64.0.1/33"]}, "addresses: '100.64.0.1/33'"),
    ({"external": True}, "external: a collect-metadata tunnel takes no local or remote"),
    ({"description": "two\nlines"}, "description: must be one line"),
])
def test_wanted_state_rejects_bad_values_naming_the_parameter(overrides, message):
    name = overrides.pop("name", "ae-3f2a9c1d07")
    with pytest.raises(_ipip.IpipError) as caught:
        wanted(name, **overrides)
    assert message in str(caught.value)


# -- plans --------------------------------------------------------------------------------------

def test_matching_tunnel_is_unchanged():
    the_plan = _ipip.plan(wanted(), present("ipip_p2p.json", "ae-3f2a9c1d07"))
    assert (the_plan.action, the_plan.changed, the_plan.summary()) == ("none", False, [])


def test_unmanaged_attributes_are_left_as_they_are():
    """ttl/mtu/addresses/description None: whatever the link has is fine."""
    the_plan = _ipip.plan(wanted(ttl=None, addresses=None, description=None),
                          present("ipip_p2p.json", "ae-3f2a9c1d07"))
    assert the_plan.action == "none"


def test_attribute_changes_are_in_place_and_listed():
    the_plan = _ipip.plan(wanted(local="192.0.2.2", remote="198.51.100.99", ttl=32, mtu=1400,
                                 addresses=["100.64.0.2/31"], description="peer game9"),
                          present("ipip_p2p.json", "ae-3f2a9c1d07"))
    assert the_plan.action == "update"
    assert the_plan.changes == {"local": ("192.0.2.1", "192.0.2.2"),
                                "remote": ("198.51.100.20", "198.51.100.99"),
                                "ttl": (64, 32), "mtu": (1480, 1400),
                                "description": ("peer game1", "peer game9")}
    assert (the_plan.add_addresses, the_plan.del_addresses) == (["100.64.0.2/31"], ["100.64.0.0/31"])
    assert the_plan.summary() == [
        "set ae-3f2a9c1d07 description: peer game1 -> peer game9",
        "set ae-3f2a9c1d07 local: 192.0.2.1 -> 192.0.2.2",
        "set ae-3f2a9c1d07 mtu: 1480 -> 1400",
        "set ae-3f2a9c1d07 remote: 198.51.100.20 -> 198.51.100.99",
        "set ae-3f2a9c1d07 ttl: 64 -> 32",
        "remove address 100.64.0.0/31 from ae-3f2a9c1d07",
        "add address 100.64.0.2/31 to ae-3f2a9c1d07"]
    assert the_plan.before["ttl"] == 64 and the_plan.after["ttl"] == 32


def test_admin_state_and_empty_address_list():
    the_plan = _ipip.plan(wanted(admin_state="down", addresses=[]),
                          present("ipip_p2p.json", "ae-3f2a9c1d07"))
    assert the_plan.changes == {"admin_state": ("up", "down")}
    assert the_plan.del_addresses == ["100.64.0.0/31"] and the_plan.add_addresses == []


def test_down_tunnel_is_brought_up_keeping_its_unmanaged_pmtudisc_and_mtu():
    present_state = present("ipip_p2p.json", "ae-91c0d2e4aa")
    the_plan = _ipip.plan(wanted("ae-91c0d2e4aa", remote="198.51.100.21", ttl=0, addresses=[],
                                 description=None), present_state)
    assert the_plan.changes == {"admin_state": ("down", "up")}
    assert the_plan.after["mtu"] == 1400
    # An in-place ipip change sends every ipip attribute; pmtudisc goes back as it was.
    arguments = _ipip._ipip_attributes(dict(the_plan.after, pmtudisc=present_state["pmtudisc"]))
    assert arguments == {"kind": "ipip", "ipip_local": "192.0.2.1",
                         "ipip_remote": "198.51.100.21", "ipip_ttl": 0, "ipip_pmtudisc": 0}


def test_request_keywords_are_ipip_attributes_pyroute2_knows():
    """IPRoute.link maps ipip_<x> to IFLA_IPIP_<X> through this table (0.7 and 0.9 alike)."""
    known = set(name for name, dummy in ifinfmsg.ifinfo.ipip_data.nla_map)
    arguments = _ipip._ipip_attributes(dict(wanted(), pmtudisc=True))
    arguments.pop("kind")
    for keyword in list(arguments) + ["ipip_collect_metadata"]:
        assert "IFLA_" + keyword.upper() in known


def test_switching_external_mode_needs_a_recreate():
    the_plan = _ipip.plan(_ipip.wanted_state("ae-ext", external=False, addresses=[]),
                          present("ipip_external.json", "ae-ext"))
    assert the_plan.action == "recreate"
    assert the_plan.reasons == ["external true -> false cannot change on an existing link"]
    assert the_plan.summary()[0] == ("re-create ae-ext: external true -> false cannot change "
                                     "on an existing link")

    to_external = _ipip.plan(wanted(local=None, remote=None, external=True),
                             present("ipip_p2p.json", "ae-3f2a9c1d07"))
    assert to_external.action == "recreate"
    assert "external false -> true" in to_external.reasons[0]
    # The re-created link gets its addresses back.
    assert to_external.add_addresses == ["100.64.0.0/31"]


def test_external_tunnel_unchanged_and_its_ttl_needs_a_recreate():
    present_state = present("ipip_external.json", "ae-ext")
    assert _ipip.plan(_ipip.wanted_state("ae-ext", external=True), present_state).action == "none"
    the_plan = _ipip.plan(_ipip.wanted_state("ae-ext", external=True, ttl=64), present_state)
    assert the_plan.action == "recreate" and "ttl 0 -> 64" in the_plan.reasons[0]
    # Its MTU and admin state change in place like any link's.
    assert _ipip.plan(_ipip.wanted_state("ae-ext", external=True, mtu=1400),
                      present_state).action == "update"


@pytest.mark.parametrize("fixture, name, remote, reason", [
    ("ipip_foreign.json", "ae-any", "198.51.100.5", "remote none -> 198.51.100.5"),
    ("ipip_p2p.json", "ae-3f2a9c1d07", None, "remote 198.51.100.20 -> none"),
])
def test_point_to_point_versus_remote_any_needs_a_recreate(fixture, name, remote, reason):
    the_plan = _ipip.plan(wanted(name, remote=remote, ttl=None, addresses=None, description=None),
                          present(fixture, name))
    assert the_plan.action == "recreate"
    assert the_plan.reasons[0].startswith(reason)


def test_new_tunnel_is_created_with_kernel_defaults_for_unmanaged_attributes():
    the_plan = _ipip.plan(wanted(ttl=None), None)
    assert the_plan.action == "create" and the_plan.before is None
    assert the_plan.after["ttl"] == 0 and the_plan.after["mtu"] is None
    assert the_plan.add_addresses == ["100.64.0.0/31"]
    assert the_plan.summary() == ["create ae-3f2a9c1d07", "add address 100.64.0.0/31 to ae-3f2a9c1d07"]


def test_absent():
    nothing = _ipip.plan(None, None)
    assert (nothing.action, nothing.summary(), nothing.before, nothing.after) == ("none", [], None, None)
    the_plan = _ipip.plan(None, present("ipip_p2p.json", "ae-91c0d2e4aa"))
    assert (the_plan.action, the_plan.after, the_plan.summary()) == \
        ("delete", None, ["delete ae-91c0d2e4aa"])


@pytest.mark.parametrize("fixture, name, message", [
    ("ipip_foreign.json", "tun-ops", "without the 'anycast.edge' alias"),
    ("ipip_p2p.json", "tunl0", "without the 'anycast.edge' alias"),
    ("ipip_other_kind.json", "ae-veth", "is a veth link"),
])
def test_links_that_are_not_ours_are_never_changed_or_deleted(fixture, name, message):
    for want in (wanted(name), None):
        with pytest.raises(_ipip.IpipError) as caught:
            _ipip.plan(want, present(fixture, name))
        assert message in str(caught.value) and "left alone" in str(caught.value)


def test_pruning_removes_only_our_ipip_links_not_kept():
    everything = list(links("ipip_p2p.json").values()) + list(links("ipip_foreign.json").values()) \
        + list(links("ipip_other_kind.json").values())
    assert _ipip.stale_tunnels(everything, keep=["ae-3f2a9c1d07"]) == ["ae-91c0d2e4aa", "ae-any"]
    assert _ipip.stale_tunnels(everything, keep=["ae-3f2a9c1d07", "ae-91c0d2e4aa", "ae-any"]) == []


# -- kernel support -----------------------------------------------------------------------------

def test_ipip_module_detection(tmp_path):
    sys_module = tmp_path / "module"
    sys_module.mkdir()
    proc_modules = tmp_path / "modules"
    # No module support (like the development host) and no /sys/module/ipip: no ipip.
    assert _ipip.ipip_module_present(str(sys_module), str(proc_modules)) is False
    assert _ipip.modules_loadable(str(proc_modules)) is False
    proc_modules.write_text("tunnel4 16384 1 ipip, Live 0x0\nveth 40960 0 - Live 0x0\n")
    assert _ipip.ipip_module_present(str(sys_module), str(proc_modules)) is False
    assert _ipip.modules_loadable(str(proc_modules)) is True
    proc_modules.write_text("ipip 20480 0 - Live 0x0\n")
    assert _ipip.ipip_module_present(str(sys_module), str(proc_modules)) is True
    proc_modules.unlink()
    (sys_module / "ipip").mkdir()  # built in, or loaded
    assert _ipip.ipip_module_present(str(sys_module), str(proc_modules)) is True


# -- tunnel derivation (the ipip_tunnels role) -----------------------------------------------------

POPS = ["pop-b", "pop-a"]
BACKENDS = ["game2", "game1"]
ADDRESSES = {"pop-a": "192.0.2.1", "pop-b": "192.0.2.2", "game1": "198.51.100.10",
             "game2": "198.51.100.11"}


def derive(host, pool="100.64.0.0/16", pops=None, backends=None, addresses=None):
    return ipip_tunnels.tunnel_plan(host, POPS if pops is None else pops,
                                    BACKENDS if backends is None else backends,
                                    ADDRESSES if addresses is None else addresses, pool)


def test_each_pair_gets_a_31_in_sorted_pair_order_pop_even_backend_odd():
    # pairs sorted: (pop-a, game1)=0, (pop-a, game2)=1, (pop-b, game1)=2, (pop-b, game2)=3
    assert derive("pop-b") == [
        {"name": ipip_tunnels.tunnel_name("game1"), "peer": "game1", "peer_group": "backends",
         "local": "192.0.2.2", "remote": "198.51.100.10", "address": "100.64.0.4/31",
         "peer_address": "100.64.0.5", "description": "peer game1"},
        {"name": ipip_tunnels.tunnel_name("game2"), "peer": "game2", "peer_group": "backends",
         "local": "192.0.2.2", "remote": "198.51.100.11", "address": "100.64.0.6/31",
         "peer_address": "100.64.0.7", "description": "peer game2"},
    ]
    game2 = derive("game2")
    assert [(t["peer"], t["address"], t["peer_address"], t["local"], t["remote"]) for t in game2] == [
        ("pop-a", "100.64.0.3/31", "100.64.0.2", "198.51.100.11", "192.0.2.1"),
        ("pop-b", "100.64.0.7/31", "100.64.0.6", "198.51.100.11", "192.0.2.2")]


def test_both_ends_agree():
    for pop in POPS:
        for backend in BACKENDS:
            from_pop = [t for t in derive(pop) if t["peer"] == backend][0]
            from_backend = [t for t in derive(backend) if t["peer"] == pop][0]
            assert from_pop["address"].split("/")[0] == from_backend["peer_address"]
            assert from_backend["address"].split("/")[0] == from_pop["peer_address"]
            assert (from_pop["local"], from_pop["remote"]) == \
                (from_backend["remote"], from_backend["local"])


def test_names_are_short_stable_and_depend_on_the_peer_only():
    name = ipip_tunnels.tunnel_name("game1")
    assert name.startswith("ae-") and len(name) == 13 <= 15
    assert _ipip.INTERFACE_NAME.match(name)
    more = derive("pop-a", backends=BACKENDS + ["game0"],
                  addresses=dict(ADDRESSES, game0="198.51.100.9"))
    assert [t["name"] for t in more if t["peer"] == "game1"] == [name]
    assert len(set(ipip_tunnels.tunnel_name("game%d" % i) for i in range(2000))) == 2000


def test_host_outside_both_groups_has_no_tunnels():
    assert derive("monitoring1") == []


@pytest.mark.parametrize("kwargs, message", [
    ({"pool": "100.64.0.0/30"}, "100.64.0.0/30 has 4 addresses, 2 POPs x 2 backends need 8"),
    ({"pool": "100.64.0.1/16"}, "has host bits set (did you mean 100.64.0.0/16?)"),
    ({"pool": "2001:db8::/64"}, "2001:db8::/64 is not IPv4"),
    ({"pool": "nonsense"}, "'nonsense' is not an IPv4 network"),
    ({"backends": ["game1", "pop-a"]}, "pop-a: in both groups pops and backends"),
    ({"addresses": {"pop-a": "192.0.2.1", "pop-b": "192.0.2.2", "game1": "198.51.100.10"}},
     "game2: anycast_edge_tunnel_address is not set"),
    ({"addresses": dict(ADDRESSES, game2="198.51.100.300")},
     "game2: anycast_edge_tunnel_address '198.51.100.300' is not an IPv4 address"),
    ({"addresses": dict(ADDRESSES, game2="198.51.100.10")},
     "game1 and game2: the same anycast_edge_tunnel_address 198.51.100.10"),
])
def test_bad_inventory_is_refused_naming_host_and_variable(kwargs, message):
    with pytest.raises(AnsibleFilterError) as caught:
        derive("pop-a", **kwargs)
    assert message in str(caught.value)


def test_filter_reads_addresses_from_hostvars():
    hostvars = dict((host, {"anycast_edge_tunnel_address": address})
                    for host, address in ADDRESSES.items())
    assert ipip_tunnels.ipip_tunnel_peers("game1", POPS, BACKENDS, hostvars, "100.64.0.0/16") == \
        derive("game1")
    assert "ipip_tunnel_peers" in ipip_tunnels.FilterModule().filters()
