"""The transport of each (POP, backend) pair (plugins/module_utils/_transport.py) and its checks in
_inventory: which pairs are WireGuard, the interfaces both ends derive for them without talking to
each other, and every bad value reported with its variable path before any host is touched."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from ansible_collections.anycast.edge.plugins.module_utils import _inventory, _rules, _transport

from test_inventory import (EXAMPLE, EXAMPLE_POPS, VALID_BACKENDS, VALID_POPS, VALID_VARS, apply, backend, change,
                            pop, rules_files, run_validation_play)

ROOT = Path(__file__).resolve().parents[2]


def check(mutations=()):
    inventory = apply(copy.deepcopy((VALID_VARS, VALID_POPS, VALID_BACKENDS)), mutations)
    return _inventory.check_all(*inventory)


def normalized(mutations=()):
    problems, _warnings, result = check(mutations)
    assert problems == []
    return result


def test_every_pair_is_ipip_by_default_and_no_host_gets_a_wireguard_interface():
    result = normalized()
    assert result["transports"] == {"pop-ams1": {"game1": "ipip", "game2": "ipip"},
                                    "pop-fra1": {"game1": "ipip", "game2": "ipip"}}
    assert result["wireguard_interfaces"] == {"game1": [], "game2": [], "pop-ams1": [], "pop-fra1": []}


def test_a_wireguard_pop_and_its_backends_derive_matching_ends():
    """pop-fra1 says wireguard for its backends: it gets one interface per backend, each backend
    one toward pop-fra1, and each end's endpoint is the other's address and listen port."""
    result = normalized([pop("anycast_edge_transport", "wireguard")])
    assert result["transports"]["pop-fra1"] == {"game1": "wireguard", "game2": "wireguard"}
    assert result["transports"]["pop-ams1"] == {"game1": "ipip", "game2": "ipip"}
    interfaces = result["wireguard_interfaces"]
    assert interfaces["pop-ams1"] == []
    assert interfaces["pop-fra1"] == [
        {"name": _transport.interface_name("game1"), "peer": "game1", "listen_port": 51820,
         "endpoint": "10.1.0.10:51820", "mtu": 1440, "persistent_keepalive": 25},
        {"name": _transport.interface_name("game2"), "peer": "game2", "listen_port": 51821,
         "endpoint": "10.1.0.11:51820", "mtu": 1440, "persistent_keepalive": 25},
    ]
    assert interfaces["game2"] == [
        {"name": _transport.interface_name("pop-fra1"), "peer": "pop-fra1", "listen_port": 51820,
         "endpoint": "10.0.0.2:51821", "mtu": 1440, "persistent_keepalive": 25}]


def test_ends_agree_in_a_mixed_fleet_with_per_backend_settings():
    """Every interface's endpoint port is the listen port of the peer's interface toward it, and
    its endpoint address the peer's (its anycast_edge_wireguard_endpoint when set)."""
    result = normalized([pop("anycast_edge_transport", "wireguard", "pop-ams1"),
                         pop("anycast_edge_transport_backends", {"game1": "ipip"}, "pop-ams1"),
                         pop("anycast_edge_transport_backends", {"game2": "wireguard"}, "pop-fra1"),
                         backend("anycast_edge_wireguard_port", 40000, "game2"),
                         backend("anycast_edge_wireguard_endpoint", "192.0.2.200", "game2"),
                         backend("anycast_edge_wireguard_mtu", 1400, "game2"),
                         pop("anycast_edge_wireguard_keepalive", 0, "pop-fra1")])
    assert result["transports"] == {"pop-ams1": {"game1": "ipip", "game2": "wireguard"},
                                    "pop-fra1": {"game1": "ipip", "game2": "wireguard"}}
    interfaces = result["wireguard_interfaces"]
    assert [entry["peer"] for entry in interfaces["game2"]] == ["pop-ams1", "pop-fra1"]
    assert [entry["listen_port"] for entry in interfaces["game2"]] == [40000, 40001]
    assert [entry["mtu"] for entry in interfaces["game2"]] == [1400, 1400]
    assert interfaces["game1"] == []
    addresses = {"pop-ams1": "10.0.0.1", "pop-fra1": "10.0.0.2", "game2": "192.0.2.200"}
    pairs = 0
    for host, entries in interfaces.items():
        for entry in entries:
            peer_side = [other for other in interfaces[entry["peer"]] if other["peer"] == host]
            assert len(peer_side) == 1
            assert entry["endpoint"] == "%s:%d" % (addresses[entry["peer"]], peer_side[0]["listen_port"])
            assert entry["name"] == _transport.interface_name(entry["peer"])
            pairs += 1
    assert pairs == 4
    assert interfaces["pop-fra1"][0]["persistent_keepalive"] == 0
    assert interfaces["pop-ams1"][0]["persistent_keepalive"] == 25


def data_plane(value):
    """A mutation: anycast_edge_wireguard_data_plane set to value (the opt-in of the WireGuard forward)."""
    return change("vars", ("anycast_edge_wireguard_data_plane",), value)


def test_each_pops_wireguard_pairs_name_the_backend_and_the_interface_wireguard_transport_makes():
    """edge_rules' wireguard_pairs of each POP (the rules file's): the backend's tunnel address and
    the name of the POP's interface toward it, the very name of its wireguard_interfaces entry."""
    result = normalized([pop("anycast_edge_transport", "wireguard", "pop-ams1"),
                         pop("anycast_edge_transport_backends", {"game1": "ipip"}, "pop-ams1"), data_plane(True)])
    pairs = _inventory.resolve_rules(result)["wireguard_pairs"]
    assert pairs == {"pop-ams1": [{"backend": "10.1.0.11", "device": _transport.interface_name("game2")}]}
    assert [pair["device"] for pair in pairs["pop-ams1"]] == \
        [interface["name"] for interface in result["wireguard_interfaces"]["pop-ams1"]]
    assert _inventory.pop_rules(_inventory.resolve_rules(result), "pop-fra1")["wireguard_pairs"] == []
    assert _inventory.resolve_rules(normalized())["wireguard_pairs"] == {}


WIREGUARD_EVERYWHERE = [pop("anycast_edge_transport", "wireguard", "pop-ams1"),
                        pop("anycast_edge_transport", "wireguard", "pop-fra1")]


@pytest.mark.parametrize("flag", [[], [data_plane(False)], [data_plane(None)]], ids=["unset", "false", "null"])
def test_without_the_data_plane_no_rules_file_has_a_pair_though_every_pair_is_wireguard(flag):
    """anycast_edge_wireguard_data_plane off (the default): every pair's players go over IPIP as before
    the POP's WireGuard forward was built - no POP's rules file lists a pair - while the pairs'
    WireGuard interfaces are still made."""
    problems, warnings, result = check(WIREGUARD_EVERYWHERE + flag)
    assert problems == []
    assert result["transports"] == {"pop-ams1": {"game1": "wireguard", "game2": "wireguard"},
                                    "pop-fra1": {"game1": "wireguard", "game2": "wireguard"}}
    assert [len(result["wireguard_interfaces"][pop_name]) for pop_name in ("pop-ams1", "pop-fra1")] == [2, 2]
    resolved = _inventory.resolve_rules(result)
    assert resolved["wireguard_pairs"] == {}
    for pop_name in ("pop-ams1", "pop-fra1"):
        text = _rules.render_rules_file(_inventory.pop_rules(resolved, pop_name))
        assert _rules.read_rules_file(text, pop_name + ".json")["wireguard_pairs"] == []
    assert not [line for line in warnings if "anycast_edge_wireguard_data_plane" in line]


def test_with_the_data_plane_every_rules_file_has_its_pops_pairs():
    result = normalized(WIREGUARD_EVERYWHERE + [data_plane(True)])
    resolved = _inventory.resolve_rules(result)
    for pop_name in ("pop-ams1", "pop-fra1"):
        text = _rules.render_rules_file(_inventory.pop_rules(resolved, pop_name))
        assert _rules.read_rules_file(text, pop_name + ".json")["wireguard_pairs"] == [
            {"backend": "10.1.0.10", "device": _transport.interface_name("game1")},
            {"backend": "10.1.0.11", "device": _transport.interface_name("game2")}]


@pytest.mark.parametrize("value", ["yes", 1, "true", ["true"]])
def test_a_data_plane_flag_that_is_not_a_boolean_is_named_with_its_value(value):
    problems, _warnings, _result = check(WIREGUARD_EVERYWHERE + [data_plane(value)])
    assert problems == ["anycast_edge_wireguard_data_plane: %s is not a boolean (true or false)"
                        % (value if isinstance(value, str) else repr(value))]


def test_the_data_plane_on_warns_once_per_pop_with_wireguard_pairs():
    """Each POP with WireGuard pairs is warned about once (not once per pair) that the WireGuard data
    plane is incomplete; a POP whose pairs are all IPIP is not."""
    _problems, warnings, _result = check([pop("anycast_edge_transport", "wireguard", "pop-fra1"),
                                          pop("anycast_edge_underlay_devices", ["eth3"], "pop-ams1"),
                                          pop("anycast_edge_underlay_devices", ["eth3"], "pop-fra1"),
                                          data_plane(True)])
    assert len(warnings) == 1
    assert warnings[0].startswith("pop-fra1: anycast_edge_wireguard_data_plane is true: the players of pop-fra1's "
                                  "WireGuard pairs (to game1, game2) go into their WireGuard interfaces, but the "
                                  "WireGuard data plane is incomplete - the backend side and the return path are "
                                  "not built")
    _problems, warnings, _result = check([pop("anycast_edge_transport", "wireguard", "pop-fra1"),
                                          pop("anycast_edge_transport_backends", {"game2": "wireguard"}, "pop-ams1"),
                                          pop("anycast_edge_underlay_devices", ["eth3"], "pop-ams1"),
                                          data_plane(True)])
    assert [line.split(":")[0] for line in warnings] == ["pop-ams1", "pop-fra1"]
    _problems, warnings, _result = check([pop("anycast_edge_underlay_devices", ["eth3"], "pop-ams1"),
                                          pop("anycast_edge_underlay_devices", ["eth3"], "pop-fra1"),
                                          data_plane(True)])
    assert warnings == []


def test_a_wireguard_pair_is_not_warned_about_its_path():
    """Plain IPIP over the uplink is warned about (nothing authenticates it); the same pair over
    WireGuard is not."""
    _problems, warnings, _result = check([pop("anycast_edge_underlay_devices", ["eth3"], "pop-fra1")])
    assert [line.split(":")[0] for line in warnings] == ["pop-ams1 <-> game1", "pop-ams1 <-> game2"]
    _problems, warnings, _result = check([pop("anycast_edge_underlay_devices", ["eth3"], "pop-fra1"),
                                          pop("anycast_edge_transport_backends", {"game2": "wireguard"}, "pop-ams1")])
    assert [line.split(":")[0] for line in warnings] == ["pop-ams1 <-> game1"]


T = "hostvars['pop-fra1']."
CASES = [
    ("transport not known", [pop("anycast_edge_transport", "gre")],
     [T + "anycast_edge_transport: gre is not one of ipip, wireguard"]),
    ("transport backends not a mapping", [pop("anycast_edge_transport_backends", ["game1"])],
     [T + "anycast_edge_transport_backends: ['game1'] is not a mapping"]),
    ("transport for a host that is no backend", [pop("anycast_edge_transport_backends", {"game9": "wireguard",
                                                                                         "pop-ams1": "ipip"})],
     [T + "anycast_edge_transport_backends.game9: wireguard is set for game9, which is not a host of group backends",
      T + "anycast_edge_transport_backends.pop-ams1: ipip is set for pop-ams1, which is not a host of group backends"]),
    ("transport of a pair not known", [pop("anycast_edge_transport_backends", {"game1": "WireGuard"})],
     [T + "anycast_edge_transport_backends.game1: WireGuard is not one of ipip, wireguard"]),
    ("port not a number", [pop("anycast_edge_wireguard_port", "51820/udp")],
     [T + "anycast_edge_wireguard_port: 51820/udp is not an integer"]),
    ("port out of range", [backend("anycast_edge_wireguard_port", 0)],
     ["hostvars['game1'].anycast_edge_wireguard_port: 0 is out of range (1..65535)"]),
    ("ports run past 65535", [pop("anycast_edge_transport", "wireguard"), pop("anycast_edge_wireguard_port", 65535)],
     [T + "anycast_edge_wireguard_port: 65535 leaves no room for pop-fra1's 2 WireGuard peers (ports 65535..65536; "
      "each peer has its own interface and port)"]),
    ("endpoint not an address", [backend("anycast_edge_wireguard_endpoint", "game1.example.net")],
     ["hostvars['game1'].anycast_edge_wireguard_endpoint: game1.example.net is not an IPv4 address"]),
    ("endpoint inside the anycast prefixes", [pop("anycast_edge_wireguard_endpoint", "198.51.100.7")],
     [T + "anycast_edge_wireguard_endpoint: 198.51.100.7 is inside an anycast prefix; it must be the host's own "
      "unicast address its peers send WireGuard to"]),
    ("mtu too small", [pop("anycast_edge_wireguard_mtu", 500)],
     [T + "anycast_edge_wireguard_mtu: 500 is out of range (576..65475)"]),
    ("mtu over what IPv4 carries", [backend("anycast_edge_wireguard_mtu", 65476)],
     ["hostvars['game1'].anycast_edge_wireguard_mtu: 65476 is out of range (576..65475)"]),
    ("keepalive negative", [pop("anycast_edge_wireguard_keepalive", -1)],
     [T + "anycast_edge_wireguard_keepalive: -1 is out of range (0..65535)"]),
    ("keepalive not a number", [pop("anycast_edge_wireguard_keepalive", True)],
     [T + "anycast_edge_wireguard_keepalive: True is not an integer"]),
    # game1 and game2 behind one NAT address: game1 listens on 51820 (toward pop-fra1), game2 on
    # 51820 as well.
    ("two backends behind one address on the same port",
     [pop("anycast_edge_transport", "wireguard"),
      backend("anycast_edge_wireguard_endpoint", "192.0.2.200", "game1"),
      backend("anycast_edge_wireguard_endpoint", "192.0.2.200", "game2")],
     ["hostvars['game2'].anycast_edge_wireguard_port: 51820 gives game2 the port 51820 at the endpoint 192.0.2.200, "
      "where game1 listens too: two hosts behind one address need ports apart"]),
]


@pytest.mark.parametrize("mutations, expected", [pytest.param(m, e, id=name) for name, m, e in CASES])
def test_each_bad_transport_setting_is_reported_with_its_path(mutations, expected):
    problems, _warnings, _result = check(mutations)
    assert problems == expected


def test_two_backends_behind_one_address_on_ports_apart_pass():
    result = normalized([pop("anycast_edge_transport", "wireguard"),
                         backend("anycast_edge_wireguard_endpoint", "192.0.2.200", "game1"),
                         backend("anycast_edge_wireguard_endpoint", "192.0.2.200", "game2"),
                         backend("anycast_edge_wireguard_port", 51900, "game2")])
    assert [entry["endpoint"] for entry in result["wireguard_interfaces"]["pop-fra1"]] == \
        ["192.0.2.200:51820", "192.0.2.200:51900"]


def test_the_defaults_are_the_shared_roles():
    """roles/anycast_edge_defaults holds the transport variables' defaults (what the roles see);
    _transport.DEFAULTS (what the checks assume for an absent value) must say the same."""
    defaults = yaml.safe_load((ROOT / "roles" / "anycast_edge_defaults" / "defaults" / "main.yml").read_text())
    assert dict((name, defaults[name]) for name in _transport.DEFAULTS) == _transport.DEFAULTS
    assert set(_transport.POP_VARS) == set(_transport.DEFAULTS)
    assert set(_transport.BACKEND_VARS) < set(_transport.POP_VARS)
    assert set(_transport.POP_VARS) <= set(_inventory.POP_VARS)
    assert set(_transport.BACKEND_VARS) <= set(_inventory.BACKEND_VARS)


def test_the_default_mtu_is_an_ordinary_uplink_minus_wireguards_overhead():
    assert _transport.WIREGUARD_OVERHEAD == 20 + 8 + 16 + 16
    assert _transport.DEFAULTS["anycast_edge_wireguard_mtu"] + _transport.WIREGUARD_OVERHEAD == 1500


def test_interface_names_are_stable_and_fit_linux():
    name = _transport.interface_name("game1")
    assert name == "aw-a31a83312b"
    assert len(name) <= 15 and _inventory.INTERFACE_NAME.fullmatch(name)


def test_validate_inventory_passes_the_data_plane_flag_to_the_check(tmp_path):
    """The role's wiring (anycast_edge_wireguard_data_plane -> inventory_check's wireguard_data_plane):
    the example inventory with every pair wireguard renders no pair into any POP's rules file by
    default, every POP's pairs with the flag on (and the warning shown), and a string is refused."""
    wireguard = ("-e", json.dumps({"anycast_edge_transport": "wireguard"}))
    for run in ("default", "on", "string"):
        (tmp_path / run).mkdir()
    proc = run_validation_play(EXAMPLE, tmp_path / "default", *wireguard)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert dict((pop_name, rules["wireguard_pairs"]) for pop_name, rules in rules_files(tmp_path / "default").items()) \
        == dict((pop_name, []) for pop_name in EXAMPLE_POPS)
    assert "anycast_edge_wireguard_data_plane" not in proc.stdout + proc.stderr

    proc = run_validation_play(EXAMPLE, tmp_path / "on", *wireguard,
                               "-e", json.dumps({"anycast_edge_wireguard_data_plane": True}))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    by_pop = rules_files(tmp_path / "on")
    assert sorted(by_pop) == EXAMPLE_POPS
    assert all([pair["backend"] for pair in rules["wireguard_pairs"]] == ["10.1.0.10", "10.1.0.20", "10.1.0.30"]
               for rules in by_pop.values())
    output = " ".join((proc.stdout + proc.stderr).split())
    for pop_name in EXAMPLE_POPS:
        assert output.count("%s: anycast_edge_wireguard_data_plane is true" % pop_name) == 1, output

    proc = run_validation_play(EXAMPLE, tmp_path / "string", *wireguard,
                               "-e", json.dumps({"anycast_edge_wireguard_data_plane": "yes"}))
    assert proc.returncode != 0
    assert "anycast_edge_wireguard_data_plane: yes is not a boolean (true or false)" in proc.stdout + proc.stderr
