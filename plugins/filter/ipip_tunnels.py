# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# MIT License (see https://opensource.org/licenses/MIT)
"""Filter ``anycast.edge.ipip_tunnel_peers``: the IPIP tunnels one host needs, from inventory.

One tunnel per (POP, backend) pair, on both ends. For a host it returns one dict per peer:

    name          "ae-" + the first 10 hex digits of sha256(peer inventory name): short enough
                  for Linux (15 bytes), the same on every run and independent of which other
                  hosts exist, so adding a host never renames (hence never re-creates) a tunnel
    peer          the peer's inventory name; peer_group: "backends" or "pops"
    local/remote  this host's and the peer's anycast_edge_tunnel_address
    address       this end's inner address as CIDR, from a /31 per pair carved out of the
                  pool in the order of the sorted (pop, backend) pairs: the POP gets the even
                  address, the backend the odd one
    peer_address  the other end's inner address
    description   "peer <name>" (goes into the interface alias after the anycast.edge mark)

The /31s are numbered by sorted pair, so both ends agree without talking to each other; adding
or removing a host renumbers the pairs sorted after it (an in-place address change on those
tunnels, no re-create). Runs on the controller; needs netaddr.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib

from ansible.errors import AnsibleFilterError

try:
    import netaddr
except ImportError:
    netaddr = None

NAME_PREFIX = "ae-"
NAME_HASH_DIGITS = 10
ADDRESS_VARIABLE = "anycast_edge_tunnel_address"


def tunnel_name(peer):
    """Link name of the tunnel to ``peer`` (13 characters)."""
    return NAME_PREFIX + hashlib.sha256(peer.encode("utf-8")).hexdigest()[:NAME_HASH_DIGITS]


def _pool(pool):
    try:
        network = netaddr.IPNetwork(pool)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise AnsibleFilterError("anycast_edge_tunnel_pool: %r is not an IPv4 network" % (pool,))
    if network.version != 4:
        raise AnsibleFilterError("anycast_edge_tunnel_pool: %s is not IPv4" % pool)
    if network.ip != network.network:
        raise AnsibleFilterError("anycast_edge_tunnel_pool: %s has host bits set (did you mean %s?)"
                                 % (pool, network.cidr))
    return network


def _tunnel_address(host, addresses):
    value = addresses.get(host)
    if value is None:
        raise AnsibleFilterError("%s: %s is not set (the outer address of its IPIP tunnels)"
                                 % (host, ADDRESS_VARIABLE))
    try:
        return str(netaddr.IPAddress(value, version=4))
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise AnsibleFilterError("%s: %s %r is not an IPv4 address" % (host, ADDRESS_VARIABLE, value))


def tunnel_plan(host, pops, backends, addresses, pool):
    """The tunnels of ``host`` (see the module docstring); [] if it is neither POP nor backend.

    ``addresses`` maps inventory name -> anycast_edge_tunnel_address (a hostvars-like mapping
    works). Every inventory problem found raises AnsibleFilterError naming host and variable.
    """
    if netaddr is None:
        raise AnsibleFilterError("anycast.edge.ipip_tunnel_peers needs the netaddr Python library "
                                 "on the controller (pip install netaddr)")
    pops = sorted(set(pops or []))
    backends = sorted(set(backends or []))
    both = sorted(set(pops) & set(backends))
    if both:
        raise AnsibleFilterError("%s: in both groups pops and backends; a host is one or the other"
                                 % ", ".join(both))
    network = _pool(pool)
    pairs = [(pop, backend) for pop in pops for backend in backends]
    if 2 * len(pairs) > network.size:
        raise AnsibleFilterError("anycast_edge_tunnel_pool: %s has %d addresses, %d POPs x %d "
                                 "backends need %d (a /31 per pair)"
                                 % (pool, network.size, len(pops), len(backends), 2 * len(pairs)))
    if host not in pops and host not in backends:
        return []

    outer = dict((name, _tunnel_address(name, addresses)) for name in pops + backends)
    peers = backends if host in pops else pops
    # The kernel keeps one ipip tunnel per (local, remote): two peers behind one address
    # cannot each get a tunnel from this host.
    seen = {}
    for peer in peers:
        if outer[peer] == outer[host]:
            raise AnsibleFilterError("%s and %s: the same %s %s"
                                     % (host, peer, ADDRESS_VARIABLE, outer[host]))
        if outer[peer] in seen:
            raise AnsibleFilterError("%s and %s: the same %s %s (one tunnel per address pair)"
                                     % (seen[outer[peer]], peer, ADDRESS_VARIABLE, outer[peer]))
        seen[outer[peer]] = peer
    names = {}
    for peer in peers:
        name = tunnel_name(peer)
        if name in names:  # 40-bit hash: practically never, but never silently
            raise AnsibleFilterError("%s and %s hash to the same tunnel name %s; rename one host"
                                     % (names[name], peer, name))
        names[name] = peer

    tunnels = []
    for index, (pop, backend) in enumerate(pairs):
        if host not in (pop, backend):
            continue
        first = network.network + 2 * index
        pop_address, backend_address = first, first + 1
        if host == pop:
            peer, mine, theirs = backend, pop_address, backend_address
        else:
            peer, mine, theirs = pop, backend_address, pop_address
        tunnels.append({
            "name": tunnel_name(peer),
            "peer": peer,
            "peer_group": "backends" if host == pop else "pops",
            "local": outer[host],
            "remote": outer[peer],
            "address": "%s/31" % mine,
            "peer_address": str(theirs),
            "description": "peer %s" % peer,
        })
    return sorted(tunnels, key=lambda tunnel: tunnel["peer"])


def ipip_tunnel_peers(host, pops, backends, hostvars, pool):
    """Jinja entry point: ``inventory_hostname | anycast.edge.ipip_tunnel_peers(groups['pops'],
    groups['backends'], hostvars, anycast_edge_tunnel_pool)``."""
    addresses = {}
    for name in list(pops or []) + list(backends or []):
        variables = hostvars[name] if name in hostvars else {}
        value = variables.get(ADDRESS_VARIABLE) if hasattr(variables, "get") else None
        if value is not None:
            addresses[name] = value
    return tunnel_plan(host, pops, backends, addresses, pool)


class FilterModule(object):
    """anycast.edge IPIP tunnel filters."""

    def filters(self):
        return {"ipip_tunnel_peers": ipip_tunnel_peers}
