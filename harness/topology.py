"""The little world the XDP program runs in during tests/bpf, defined once.

BPF_PROG_TEST_RUN looks up routes (bpf_fib_lookup) in the network namespace of the caller, so
the tests run inside a namespace built from these facts, and the reference model
(tests/bpf/model.py) answers its "where does this go next" questions from the same facts.

    players (default route)  --\
    backends 10.1.0.0/16     ---  up0 10.0.0.1/24  (the POP's uplink; router 10.0.0.254)
    blackhole 10.9.0.0/16
    backends 10.2.0.0/24     ---  bk0 10.2.0.1/24  (a second device: redirect via the devmap)
"""

from __future__ import annotations

import ipaddress

UPLINK = "up0"
SIDE = "bk0"

MAC = {
    UPLINK: "02:00:00:00:00:01",
    SIDE: "02:00:00:00:02:01",
}
ROUTER_IP = "10.0.0.254"
ROUTER_MAC = "02:00:00:00:00:fe"
UPLINK_ADDR = "10.0.0.1/24"
SIDE_ADDR = "10.2.0.1/24"
MTU = {UPLINK: 1500, SIDE: 1500}

# Neighbours with a known MAC (static entries); 10.2.0.20 on bk0 has none (NO_NEIGH).
SIDE_NEIGHBOURS = {"10.2.0.10": "02:00:00:00:02:0a"}

BACKENDS_VIA_ROUTER = "10.1.0.0/16"
BLACKHOLE = "10.9.0.0/16"

POP_TUNNEL_ADDR = "10.0.0.1"


def next_hop(destination: str):
    """What bpf_fib_lookup answers for a destination in the test namespace.

    Returns (kind, device, dst_mac) with kind one of "ok", "no_neigh", "no_route", "local".
    """
    address = ipaddress.ip_address(destination)
    if address in ipaddress.ip_network(BLACKHOLE):
        return "no_route", None, None
    # 127.0.0.0/8 is a local route (harness/namespace.py brings lo up in every test namespace),
    # as are the POP's own addresses and the subnet broadcasts: the kernel does not forward them
    # (BPF_FIB_LKUP_RET_NOT_FWDED). (Forwarding to a backend drops either as no_route; only the
    # return path tells "local" from "no_route": pass_local.)
    if address.is_loopback:
        return "local", None, None
    for own in (UPLINK_ADDR, SIDE_ADDR):
        interface = ipaddress.ip_interface(own)
        if address in (interface.ip, interface.network.broadcast_address):
            return "local", None, None
    if address in ipaddress.ip_network(SIDE_ADDR, strict=False):
        mac = SIDE_NEIGHBOURS.get(destination)
        return ("ok", SIDE, mac) if mac else ("no_neigh", SIDE, None)
    if address in ipaddress.ip_network(UPLINK_ADDR, strict=False):
        # On-link on the uplink: only the router has a static neighbour entry.
        return ("ok", UPLINK, ROUTER_MAC) if destination == ROUTER_IP else ("no_neigh", UPLINK, None)
    # Everything else (multicast and 0.0.0.0/8 included) matches the default route.
    return "ok", UPLINK, ROUTER_MAC
