# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""The transport of each (POP, backend) pair: plain IPIP or WireGuard (docs/transport.md).

One home for what the inventory check (_inventory) and the roles both need: the transports, the
defaults of the transport variables (the same as roles/anycast_edge_defaults; a unit test keeps
them equal), which transport a pair uses, and - for the WireGuard pairs of one host - the
interface toward each peer, its listen port and the peer's endpoint.

A pair's transport is the POP's to say (its host vars): ``anycast_edge_transport`` for all its
backends, ``anycast_edge_transport_backends`` ({backend: transport}) for the pairs that differ.
Both ends read it from the POP, so they always agree.

WireGuard: one interface per pair, each with one peer (why: docs/transport.md). The interface
toward the i-th WireGuard peer of a host (its peers sorted by inventory name) listens on that
host's ``anycast_edge_wireguard_port`` + i; the peer is reached at its
``anycast_edge_wireguard_endpoint`` (default: its ``anycast_edge_tunnel_address``) on the port of
its own interface toward this host. Adding a WireGuard peer that sorts before others moves their
ports by one (an in-place change on both ends in the same run; the tunnel re-handshakes).

Pure functions on plain data: the hosts' variables as {host: {variable: value}}, an absent or
None value meaning the default. Values are taken as validated (_inventory checks them first).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib

TRANSPORTS = ("ipip", "wireguard")
# What a pair uses when inventory says nothing: the lab and every existing inventory stay IPIP.
DEFAULT_TRANSPORT = "ipip"
# Bytes WireGuard adds to a packet sent over IPv4: the outer IPv4 header (20), UDP (8), the
# data message header (type, receiver index, counter: 16) and the Poly1305 tag (16). The
# interface's MTU is the largest player packet it carries; the uplink must carry MTU + 60.
WIREGUARD_OVERHEAD = 60
# The largest outer IPv4 packet is 65535 bytes; the smallest IPv4 datagram every host accepts is 576.
MIN_MTU = 576
MAX_MTU = 65535 - WIREGUARD_OVERHEAD
# wg's persistent-keepalive: 0 (off) to 65535 seconds.
MAX_KEEPALIVE = 65535

# The transport variables and their defaults (roles/anycast_edge_defaults/defaults/main.yml says
# the same; tests/unit/test_transport.py checks). The endpoint's None means "the host's
# anycast_edge_tunnel_address".
DEFAULTS = {
    "anycast_edge_transport": DEFAULT_TRANSPORT,
    "anycast_edge_transport_backends": {},
    "anycast_edge_wireguard_port": 51820,
    "anycast_edge_wireguard_endpoint": None,
    # 1500 (an ordinary uplink) - WIREGUARD_OVERHEAD
    "anycast_edge_wireguard_mtu": 1440,
    # Below the 30 s a typical NAT or stateful firewall keeps an idle UDP flow.
    "anycast_edge_wireguard_keepalive": 25,
}
# The variables of a POP, and of a backend, that say or shape its pairs' transport.
POP_VARS = ("anycast_edge_transport", "anycast_edge_transport_backends", "anycast_edge_wireguard_port",
            "anycast_edge_wireguard_endpoint", "anycast_edge_wireguard_mtu", "anycast_edge_wireguard_keepalive")
BACKEND_VARS = ("anycast_edge_wireguard_port", "anycast_edge_wireguard_endpoint", "anycast_edge_wireguard_mtu",
                "anycast_edge_wireguard_keepalive")

# Interface names: "aw-" and 10 hex digits of the SHA-256 of the peer's inventory name (13
# characters, the scheme of the IPIP tunnels' "ae-" names): stable whatever other hosts exist.
INTERFACE_PREFIX = "aw-"
NAME_HASH_DIGITS = 10


def setting(hostvars, name):
    """A host's transport variable, its default when absent or None."""
    value = (hostvars or {}).get(name)
    return DEFAULTS[name] if value is None else value


def pair_transport(pop_vars, backend):
    """The transport between the POP whose variables are `pop_vars` and `backend`."""
    per_backend = setting(pop_vars, "anycast_edge_transport_backends")
    if isinstance(per_backend, dict) and per_backend.get(backend) is not None:
        return per_backend[backend]
    return setting(pop_vars, "anycast_edge_transport")


def transports(pops, backends):
    """{POP: {backend: transport}} of every pair."""
    return dict((pop, dict((backend, pair_transport(pops[pop], backend)) for backend in sorted(backends)))
                for pop in sorted(pops))


def interface_name(peer):
    """The name of the WireGuard interface toward `peer` (13 characters)."""
    return INTERFACE_PREFIX + hashlib.sha256(peer.encode("utf-8")).hexdigest()[:NAME_HASH_DIGITS]


def wireguard_peers_of(host, pops, backends):
    """The WireGuard peers of `host`, sorted by name ([] for a host with none)."""
    if host in pops:
        return [backend for backend in sorted(backends) if pair_transport(pops[host], backend) == "wireguard"]
    if host in backends:
        return [pop for pop in sorted(pops) if pair_transport(pops[pop], host) == "wireguard"]
    return []


def listen_port(listener, toward, pops, backends):
    """The UDP port `listener`'s interface toward `toward` listens on."""
    variables = pops.get(listener) if listener in pops else backends.get(listener)
    return int(setting(variables, "anycast_edge_wireguard_port")) + \
        wireguard_peers_of(listener, pops, backends).index(toward)


def endpoint_address(hostvars):
    """The address a host's WireGuard peers send to."""
    return setting(hostvars, "anycast_edge_wireguard_endpoint") or hostvars.get("anycast_edge_tunnel_address")


def wireguard_interfaces(host, pops, backends):
    """One dict per WireGuard pair of `host` (sorted by peer):

        name           the interface (interface_name(peer))
        peer           the peer's inventory name
        listen_port    this end's UDP port
        endpoint       "address:port" of the peer's interface toward this host
        mtu, persistent_keepalive   this host's settings
    """
    own = pops.get(host) if host in pops else backends.get(host)
    interfaces = []
    for peer in wireguard_peers_of(host, pops, backends):
        peer_vars = pops.get(peer) if peer in pops else backends.get(peer)
        interfaces.append({
            "name": interface_name(peer),
            "peer": peer,
            "listen_port": listen_port(host, peer, pops, backends),
            "endpoint": "%s:%d" % (endpoint_address(peer_vars or {}), listen_port(peer, host, pops, backends)),
            "mtu": int(setting(own, "anycast_edge_wireguard_mtu")),
            "persistent_keepalive": int(setting(own, "anycast_edge_wireguard_keepalive")),
        })
    return interfaces
