"""Issue 12 section 2: bans apply only to traffic to a service or an anycast prefix.

The attack: with the example inventory's ICMP limit (10 pps, ban 60 s), 11 spoofed echoes to a
service address "from" the POP's BGP neighbour ban it; on the old program its BGP (TCP/179 to the
POP's own address) was then dropped as drop_banned, so ~11 spoofed packets a minute kept a POP off
the internet. (Checked against commit c781848: this test fails there on the BGP packet.)
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .scenario import GAME, PLAYER, eth, player_udp, setup_pop
from .scenario import ICMP, IP, TCP, raw
from . import topology as topo

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


def flood(pop, src):
    icmp_pps = example_limits()["icmp"][0]
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
