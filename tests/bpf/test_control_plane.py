"""Issue 12 section 2: bans apply only to traffic to a service or an anycast prefix, and the
POP's control plane (its BGP neighbours, the other POPs, the monitoring hosts - derived from
inventory by validate_inventory) is never banned or rate limited, whatever is spoofed in its name.

The attack: with the example inventory's ICMP limit (10 pps, ban 60 s), 11 spoofed echoes to a
service address "from" the POP's BGP neighbour ban it; on the old program its BGP (TCP/179 to the
POP's own address) was then dropped as drop_banned, so ~11 spoofed packets a minute kept a POP off
the internet. (Checked against commit c781848: this test fails there on the BGP packet.)
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from ansible_collections.anycast.edge.plugins.module_utils import _inventory, _rules

from .scenario import BACKEND, GAME, GAME_PORT, PLAYER, backend_reply, eth, player_udp, setup_pop
from .scenario import ICMP, IP, TCP, raw
from harness import topology as topo
from harness.edge_env import monotonic_ns

EXAMPLE_FILTERS = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "inventories" / "example" / "group_vars" / "all.yml").read_text()
)["anycast_edge_filters"]
NEIGHBOUR = topo.ROUTER_IP         # the upstream router: the POP's BGP neighbour on the uplink
POP_ADDRESS = topo.POP_TUNNEL_ADDR  # the POP's own address on the uplink (BGP session endpoint)


def example_limits():
    return {name: (limit.get("packets_per_sec", 0), limit.get("bytes_per_sec", 0))
            for name, limit in EXAMPLE_FILTERS["rate_limits"].items()}


def echo(src, seq):
    return raw(eth() / IP(src=src, dst=GAME) / ICMP(type=8, id=7, seq=seq) / b"ping")


def bgp_syn(src=NEIGHBOUR):
    return raw(eth() / IP(src=src, dst=POP_ADDRESS, ttl=1) / TCP(sport=40000, dport=179, flags="S"))


def start_of_a_window():
    """Wait, if need be, until the program's one-second rate window (CLOCK_MONOTONIC seconds) has
    more than half a second left: a flood that straddled two windows would be counted in halves."""
    into = monotonic_ns() % 10**9
    if into > 5 * 10**8:
        time.sleep((10**9 - into) / 1e9)


def flood(pop, src):
    """One more echo than the example's ICMP limit, within one rate window."""
    icmp_pps = example_limits()["icmp"][0]
    start_of_a_window()
    return [pop.run(echo(src, seq)).reason for seq in range(icmp_pps + 1)]


def test_a_spoofed_flood_in_the_neighbours_name_does_not_cut_its_bgp(edge):
    setup_pop(edge, limits=example_limits(), ban_sec=EXAMPLE_FILTERS["ban_sec"])
    reasons = flood(edge, NEIGHBOUR)
    assert reasons[-1] == "drop_rate_limit" and set(reasons[:-1]) == {"tx_forward"}
    assert edge.ban_until(NEIGHBOUR) is not None        # the flood did ban it (the service's business)
    result = edge.run(bgp_syn())
    assert (result.action, result.reason) == ("PASS", "pass_not_ours"), (
        "BGP from the banned neighbour to the POP's own address: %s %s" % (result.action, result.reason))
    # ... while its traffic to the service stays banned, like anybody's.
    assert edge.run(echo(NEIGHBOUR, 99)).reason == "drop_banned"


def test_an_ordinary_player_is_still_banned_by_the_same_flood(edge):
    setup_pop(edge, limits=example_limits(), ban_sec=EXAMPLE_FILTERS["ban_sec"])
    assert flood(edge, PLAYER)[-1] == "drop_rate_limit"
    assert edge.ban_until(PLAYER) is not None
    assert edge.run(player_udp()).reason == "drop_banned"
    assert edge.run(player_udp(dst="198.51.100.99")).reason == "drop_banned"   # no service, but ours


def test_traffic_to_the_pop_itself_never_creates_a_ban(edge):
    setup_pop(edge, limits={"tcp": (1, 0)}, ban_sec=60)
    assert {edge.run(bgp_syn()).reason for dummy in range(5)} == {"pass_not_ours"}
    assert edge.ban_until(NEIGHBOUR) is None


# --- the control plane, derived from inventory, is exempt (the second half of section 2) ---------

EXAMPLE_VARS = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "inventories" / "example" / "group_vars" / "all.yml").read_text())
OTHER_POP = "10.0.0.2"        # the other POP's tunnel address
OTHER_POP_MGMT = "192.0.2.202"  # ... and its management address (ansible_host)
MONITORING = "192.0.2.250"    # the monitoring host (Prometheus)


def inventory():
    """This test POP and one more, shaped like the example inventory: the neighbour is the upstream
    router of the test topology."""
    variables = dict(EXAMPLE_VARS, anycast_edge_services=[], anycast_edge_prefixes=["198.51.100.0/24"])
    pops = {
        "pop1": {"anycast_edge_uplink": topo.UPLINK, "anycast_edge_tunnel_address": POP_ADDRESS,
                 "anycast_edge_bgp_neighbors": [{"name": "upstream", "address": NEIGHBOUR, "asn": 64510}]},
        "pop2": {"anycast_edge_uplink": "eth1", "anycast_edge_tunnel_address": OTHER_POP,
                 "ansible_host": OTHER_POP_MGMT,
                 "anycast_edge_bgp_neighbors": [{"name": "upstream", "address": "172.16.2.1", "asn": 64510}]},
    }
    backends = {"game-ams-01": {"anycast_edge_uplink": "eth0", "anycast_edge_tunnel_address": BACKEND}}
    return variables, pops, backends, {"mon-1": {"ansible_host": MONITORING}}


def pop1_allow_entries():
    """edge_allow_v4 as edge_rules writes it on pop1: validate_inventory's derivation, resolved
    into edge_rules' parameters, packed by _rules (the module's own path, minus the syscalls)."""
    problems, warnings, normalized = _inventory.check_all(*inventory())
    assert problems == []
    rules = _inventory.resolve_rules(normalized)
    params = dict(rules, tunnel_address=POP_ADDRESS, control_plane=rules["control_plane"]["pop1"])
    return _rules.desired_entries(params, bytes(16))[0]["edge_allow_v4"]


def test_the_derived_control_plane_of_the_test_pop():
    entries = pop1_allow_entries()
    exempt = sorted(_rules.render_allow(key, value) for key, value in entries.items())
    assert exempt == ["10.0.0.2/32 (control plane)", "10.0.0.254/32 (control plane)", "192.0.2.0/28",
                      "192.0.2.202/32 (control plane)", "192.0.2.250/32 (control plane)", "192.0.2.64/27"]


def udp_flood(pop, src, count):
    return [pop.run(player_udp(src=src, sport=40000 + seq % 7)).reason for seq in range(count)]


@pytest.mark.parametrize("source", [NEIGHBOUR, OTHER_POP, OTHER_POP_MGMT, MONITORING],
                         ids=["bgp neighbour", "other pop tunnel", "other pop management", "monitoring host"])
def test_a_spoofed_flood_in_a_control_plane_name_bans_it_only_without_the_exemption(edge, source):
    # Before (no exemption, the POP as it was): the spoofed flood bans the source ...
    setup_pop(edge, limits=example_limits(), ban_sec=EXAMPLE_FILTERS["ban_sec"])
    assert flood(edge, source)[-1] == "drop_rate_limit"
    assert edge.ban_until(source) is not None
    assert edge.run(player_udp(src=source)).reason == "drop_banned"   # its real traffic to the service too

    # ... with the control plane derived from inventory it never is, and no limit applies.
    edge.reset()
    setup_pop(edge, limits=example_limits(), ban_sec=EXAMPLE_FILTERS["ban_sec"])
    edge.allow_entries(pop1_allow_entries())
    assert set(reason for dummy in range(5) for reason in flood(edge, source)) == {"tx_forward"}   # 5x the limit
    assert edge.ban_until(source) is None
    udp_pps = example_limits()["udp"][0]
    assert set(udp_flood(edge, source, udp_pps + 50)) == {"tx_forward"}
    assert edge.ban_until(source) is None
    assert edge.reason_counts().get("drop_rate_limit", 0) == 0 and edge.reason_counts().get("drop_banned", 0) == 0
    assert edge.run(bgp_syn(source)).reason == "pass_not_ours"


def test_the_exemption_is_only_for_the_derived_sources(edge):
    """A player (and a backend, which is no control-plane source) is banned by the same flood
    while the control plane is exempt."""
    setup_pop(edge, limits=example_limits(), ban_sec=EXAMPLE_FILTERS["ban_sec"])
    edge.allow_entries(pop1_allow_entries())
    for source in (PLAYER, BACKEND, "10.0.0.253"):    # the neighbour's next address is nobody's
        assert flood(edge, source)[-1] == "drop_rate_limit", source
        assert edge.ban_until(source) is not None
        assert edge.run(player_udp(src=source, dport=GAME_PORT)).reason == "drop_banned"


def test_a_backend_banned_by_a_spoofed_flood_still_returns_its_players_traffic(edge):
    """Why the backends are not exempted: their replies come as IPIP to the POP's tunnel address,
    which no ban applies to."""
    setup_pop(edge, limits=example_limits(), ban_sec=EXAMPLE_FILTERS["ban_sec"])
    assert flood(edge, BACKEND)[-1] == "drop_rate_limit" and edge.ban_until(BACKEND) is not None
    assert edge.run(backend_reply()).reason == "tx_return"
