"""Inventory validation (plugins/module_utils/_inventory.py): one case per rule.

Each case starts from a valid, production-shaped inventory, breaks it in one or more places and
states the exact problem lines the operator must see: the variable path, the bad value, why.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _inventory, _rules

VALID_VARS = {
    "anycast_edge_asn": 64500,
    "anycast_edge_prefixes": ["198.51.100.0/24", "203.0.113.0/25"],
    "anycast_edge_services": [
        {"name": "cs2-main", "address": "198.51.100.10", "protocol": "udp", "port": 27015, "backend": "game1",
         "a2s_cache": True, "a2s_refresh_sec": 5, "a2s_max_age_sec": 30},
        {"name": "cs2-rcon", "address": "198.51.100.10", "protocol": "tcp", "port": 27015, "backend": "game1"},
        {"name": "ping", "address": "198.51.100.10", "protocol": "icmp", "backend": "game1"},
        {"name": "rust", "id": 42, "address": "203.0.113.20", "protocol": "udp", "port": 28015, "backend": "game2",
         "rate_limit": {"packets_per_sec": 300}},
    ],
    "anycast_edge_filters": {
        "allow": ["192.0.2.0/28"],
        "deny": ["100.64.0.0/10", "233.252.0.5"],
        "rate_limits": {"udp": {"packets_per_sec": 500, "bytes_per_sec": 1000000}, "icmp": {"packets_per_sec": 10}},
        "ban_sec": 60,
        "punch_idle_sec": 120,
        "a2s_cookie_epoch_sec": 30,
    },
}
VALID_POPS = {
    "pop-ams1": {"anycast_edge_uplink": "eth1", "anycast_edge_tunnel_address": "10.0.0.1",
                 "anycast_edge_bgp_neighbors": [{"name": "upstream", "address": "172.16.1.1", "asn": 64510,
                                                 "password": "s3cret-md5", "communities": ["64500:1001"]}]},
    "pop-fra1": {"anycast_edge_uplink": "enp3s0f0", "anycast_edge_tunnel_address": "10.0.0.2",
                 "anycast_edge_egress_devices": ["eth2"]},
}
VALID_BACKENDS = {
    "game1": {"anycast_edge_tunnel_address": "10.1.0.10", "anycast_edge_uplink": "eth0"},
    "game2": {"anycast_edge_tunnel_address": "10.1.0.11", "anycast_edge_uplink": "eth0"},
}
SERVICES = "anycast_edge_services"
FILTERS = "anycast_edge_filters"


def change(section, path, value):
    """A mutation: set (or with value DELETE, remove) `path` (a tuple of keys/indexes) in
    section 'vars', 'pops' or 'backends'."""
    return (section, path, value)


DELETE = object()


def apply(inventory, mutations):
    sections = dict(zip(("vars", "pops", "backends"), inventory))
    for section, path, value in mutations:
        target = sections[section]
        for key in path[:-1]:
            target = target[key]
        if value is DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return inventory


def run(mutations=()):
    inventory = copy.deepcopy((VALID_VARS, VALID_POPS, VALID_BACKENDS))
    return _inventory.validate(*apply(inventory, mutations))


KEY_A, KEY_B, KEY_C = "00112233445566778899aabbccddeeff", "ffeeddccbbaa99887766554433221100", "0f" * 16


def nbr(key, value):
    return change("pops", ("pop-ams1", "anycast_edge_bgp_neighbors", 0, key), value)


def pop(key, value, host="pop-fra1"):
    return change("pops", (host, key), value)


def backend(key, value, host="game1"):
    return change("backends", (host, key), value)


def svc(index, key, value):
    return change("vars", (SERVICES, index, key), value)


def flt(key, value):
    return change("vars", (FILTERS, key), value)


CASES = [
    # --- CIDRs ---------------------------------------------------------------------------
    ("prefix malformed", [change("vars", ("anycast_edge_prefixes", 1), "203.0.113/25")],
     ["anycast_edge_prefixes[1]: 203.0.113/25 is not a valid IPv4 CIDR",
      # the rust service now sits outside every remaining prefix
      "anycast_edge_services[3].address: 203.0.113.20 is not inside any of anycast_edge_prefixes"]),
    ("prefix host bits", [change("vars", ("anycast_edge_prefixes", 0), "198.51.100.1/24")],
     ["anycast_edge_prefixes[0]: 198.51.100.1/24 has host bits set (did you mean 198.51.100.0/24?)",
      "anycast_edge_services[0].address: 198.51.100.10 is not inside any of anycast_edge_prefixes",
      "anycast_edge_services[1].address: 198.51.100.10 is not inside any of anycast_edge_prefixes",
      "anycast_edge_services[2].address: 198.51.100.10 is not inside any of anycast_edge_prefixes"]),
    ("prefix length out of range", [change("vars", ("anycast_edge_prefixes",), ["198.51.100.0/24", "203.0.113.0/33"])],
     ["anycast_edge_prefixes[1]: 203.0.113.0/33 is not a valid IPv4 CIDR",
      "anycast_edge_services[3].address: 203.0.113.20 is not inside any of anycast_edge_prefixes"]),
    ("prefix IPv6", [change("vars", ("anycast_edge_prefixes",), ["198.51.100.0/24", "203.0.113.0/25", "2001:db8::/32"])],
     ["anycast_edge_prefixes[2]: 2001:db8::/32 is an IPv6 prefix (only IPv4 is supported yet)"]),
    ("prefix not a string", [change("vars", ("anycast_edge_prefixes",), ["198.51.100.0/24", "203.0.113.0/25", 42])],
     ["anycast_edge_prefixes[2]: 42 is not a CIDR (a string such as 198.51.100.0/24)"]),
    ("prefix listed twice", [change("vars", ("anycast_edge_prefixes",), ["198.51.100.0/24", "203.0.113.0/25", "198.51.100.0/24"])],
     ["anycast_edge_prefixes[2]: 198.51.100.0/24 is listed twice"]),
    ("no prefixes", [change("vars", ("anycast_edge_prefixes",), [])],
     ["anycast_edge_prefixes: is required and must list at least one IPv4 prefix"]),
    ("deny host bits and malformed", [flt("deny", ["100.64.0.0/10", "10.1.2.3/8", "10.0.0.0/8/2", "bogus"])],
     ["anycast_edge_filters.deny[1]: 10.1.2.3/8 has host bits set (did you mean 10.0.0.0/8?)",
      "anycast_edge_filters.deny[2]: 10.0.0.0/8/2 is not a valid IPv4 CIDR",
      "anycast_edge_filters.deny[3]: bogus is not a valid IPv4 CIDR"]),
    ("allow host bits", [flt("allow", ["192.0.2.1/28"])],
     ["anycast_edge_filters.allow[0]: 192.0.2.1/28 has host bits set (did you mean 192.0.2.0/28?)"]),
    ("allow and deny the same prefix", [flt("allow", ["100.64.0.0/10"])],
     ["anycast_edge_filters.allow[0]: 100.64.0.0/10 is also in anycast_edge_filters.deny (deny wins; keep it in one list)"]),
    ("deny covering backends", [flt("deny", ["100.64.0.0/10", "10.1.0.0/24"])],
     ["anycast_edge_filters.deny[1]: 10.1.0.0/24 covers the tunnel address 10.1.0.10 of backend game1: its replies would be dropped",
      "anycast_edge_filters.deny[1]: 10.1.0.0/24 covers the tunnel address 10.1.0.11 of backend game2: its replies would be dropped"]),
    ("deny not a list", [flt("deny", "10.0.0.0/8")],
     ["anycast_edge_filters.deny: 10.0.0.0/8 is not a list"]),
    # --- service addresses and ports -------------------------------------------------------
    ("service address outside the prefixes", [svc(2, "address", "203.0.113.200")],
     ["anycast_edge_services[2].address: 203.0.113.200 is not inside any of anycast_edge_prefixes"]),
    ("service address in the second prefix is fine", [svc(2, "address", "203.0.113.9")], []),
    ("service address malformed", [svc(0, "address", "198.51.100.300")],
     ["anycast_edge_services[0].address: 198.51.100.300 is not an IPv4 address"]),
    ("service address IPv6", [svc(0, "address", "2001:db8::1")],
     ["anycast_edge_services[0].address: 2001:db8::1 is not an IPv4 address (IPv6 is not supported yet)"]),
    ("port zero", [svc(0, "port", 0)],
     ["anycast_edge_services[0].port: 0 is out of range (1..65535)"]),
    ("port too large", [svc(1, "port", 65536)],
     ["anycast_edge_services[1].port: 65536 is out of range (1..65535)"]),
    ("port negative", [svc(1, "port", -1)],
     ["anycast_edge_services[1].port: -1 is out of range (1..65535)"]),
    ("port not a number", [svc(0, "port", "http")],
     ["anycast_edge_services[0].port: http is not an integer"]),
    ("port missing for udp", [svc(0, "port", DELETE)],
     ["anycast_edge_services[0].port: is required for a udp service"]),
    ("port given for icmp", [svc(2, "port", 7)],
     ["anycast_edge_services[2].port: 7 is given for an icmp service (icmp has no port; omit it)"]),
    ("port 0 for icmp is fine", [svc(2, "port", 0)], []),
    ("port as digit string is fine", [svc(0, "port", "27015")], []),
    ("protocol unknown", [svc(1, "protocol", "sctp")],
     ["anycast_edge_services[1].protocol: sctp is not one of udp, tcp, icmp"]),
    ("same protocol, address and port twice", [svc(1, "protocol", "udp")],
     ["anycast_edge_services[1]: udp 198.51.100.10 port 27015 is also served by anycast_edge_services[0] "
      "(one service per protocol, address, port)"]),
    ("two icmp services on one address", [svc(1, "protocol", "icmp"), svc(1, "port", DELETE)],
     ["anycast_edge_services[2]: icmp 198.51.100.10 port 0 is also served by anycast_edge_services[1] "
      "(one service per protocol, address, port)"]),
    ("same port on another protocol is fine", [svc(3, "address", "198.51.100.10"), svc(3, "port", 27016)], []),
    # --- names and ids ---------------------------------------------------------------------
    ("duplicate name", [svc(1, "name", "cs2-main")],
     ["anycast_edge_services[1].name: cs2-main is also the name of anycast_edge_services[0]",
      "anycast_edge_services[1].id: 237 (derived from the name) is also the id of anycast_edge_services[0] "
      "(cs2-main, id derived from the name); set a distinct id on one of them"]),
    ("bad name", [svc(1, "name", "CS2 Main")],
     ["anycast_edge_services[1].name: CS2 Main is not a service name (lower-case letters, digits, '_' and '-')"]),
    ("name missing", [svc(1, "name", DELETE)],
     ["anycast_edge_services[1].name: is required"]),
    ("explicit ids collide", [svc(0, "id", 42)],
     ["anycast_edge_services[3].id: 42 (set) is also the id of anycast_edge_services[0] (cs2-main, id set); "
      "set a distinct id on one of them"]),
    ("derived ids collide", [svc(0, "name", "game-2"), svc(1, "name", "game-34")],
     ["anycast_edge_services[1].id: 1 (derived from the name) is also the id of anycast_edge_services[0] "
      "(game-2, id derived from the name); set a distinct id on one of them"]),
    ("explicit id collides with a derived one", [svc(3, "id", 237)],
     ["anycast_edge_services[3].id: 237 (set) is also the id of anycast_edge_services[0] "
      "(cs2-main, id derived from the name); set a distinct id on one of them"]),
    ("id out of range", [svc(3, "id", 1024)],
     ["anycast_edge_services[3].id: 1024 is out of range (1..1023)"]),
    ("id zero", [svc(3, "id", 0)],
     ["anycast_edge_services[3].id: 0 is out of range (1..1023)"]),
    # --- backends --------------------------------------------------------------------------
    ("backend not in group backends", [svc(3, "backend", "pop-ams1")],
     ["anycast_edge_services[3].backend: pop-ams1 is not a host of group backends"]),
    ("backend missing", [svc(3, "backend", DELETE)],
     ["anycast_edge_services[3].backend: is required (an inventory host of group backends)"]),
    ("backend without tunnel address", [change("backends", ("game2", "anycast_edge_tunnel_address"), DELETE)],
     ["hostvars['game2'].anycast_edge_tunnel_address: is required (the address IPIP tunnels use on this host)"]),
    # --- POPs ------------------------------------------------------------------------------
    ("pop without uplink", [change("pops", ("pop-fra1", "anycast_edge_uplink"), DELETE)],
     ["hostvars['pop-fra1'].anycast_edge_uplink: is required (the interface XDP attaches to)"]),
    ("pop uplink not an interface name", [change("pops", ("pop-fra1", "anycast_edge_uplink"), "eth1/2")],
     ["hostvars['pop-fra1'].anycast_edge_uplink: eth1/2 is not an interface name"]),
    ("pop without tunnel address", [change("pops", ("pop-ams1", "anycast_edge_tunnel_address"), DELETE)],
     ["hostvars['pop-ams1'].anycast_edge_tunnel_address: is required (the address IPIP tunnels use on this host)"]),
    ("pop tunnel address not IPv4", [change("pops", ("pop-ams1", "anycast_edge_tunnel_address"), "fe80::1")],
     ["hostvars['pop-ams1'].anycast_edge_tunnel_address: fe80::1 is not an IPv4 address (IPv6 is not supported yet)"]),
    ("pop tunnel address garbage", [change("pops", ("pop-ams1", "anycast_edge_tunnel_address"), "10.0.0.1/24")],
     ["hostvars['pop-ams1'].anycast_edge_tunnel_address: 10.0.0.1/24 is not an IPv4 address"]),
    ("tunnel address inside an anycast prefix", [change("pops", ("pop-ams1", "anycast_edge_tunnel_address"), "198.51.100.1")],
     ["hostvars['pop-ams1'].anycast_edge_tunnel_address: 198.51.100.1 is inside an anycast prefix; "
      "it must be the host's own unicast address"]),
    ("two hosts with one tunnel address", [change("backends", ("game2", "anycast_edge_tunnel_address"), "10.0.0.2")],
     ["hostvars['game2'].anycast_edge_tunnel_address: 10.0.0.2 is also the tunnel address of pop-fra1"]),
    ("egress device not an interface name", [change("pops", ("pop-fra1", "anycast_edge_egress_devices"), ["eth2", "a b"])],
     ["hostvars['pop-fra1'].anycast_edge_egress_devices[1]: a b is not an interface name"]),
    # --- limits ----------------------------------------------------------------------------
    ("zero packets per second", [flt("rate_limits", {"udp": {"packets_per_sec": 0}})],
     ["anycast_edge_filters.rate_limits.udp.packets_per_sec: 0 must be > 0"]),
    ("negative bytes per second", [flt("rate_limits", {"tcp": {"bytes_per_sec": -5}})],
     ["anycast_edge_filters.rate_limits.tcp.bytes_per_sec: -5 must be > 0"]),
    ("unknown protocol class", [flt("rate_limits", {"sctp": {"packets_per_sec": 5}})],
     ["anycast_edge_filters.rate_limits.sctp: unknown setting (known: tcp, udp, icmp, other)"]),
    ("service limit zero", [svc(3, "rate_limit", {"packets_per_sec": 0, "bytes_per_sec": 100})],
     ["anycast_edge_services[3].rate_limit.packets_per_sec: 0 must be > 0"]),
    ("service limit typo", [svc(3, "rate_limit", {"pps": 10})],
     ["anycast_edge_services[3].rate_limit.pps: unknown setting (known: packets_per_sec, bytes_per_sec)"]),
    ("negative ban time", [flt("ban_sec", -1)],
     ["anycast_edge_filters.ban_sec: -1 must be >= 0"]),
    ("zero ban time is fine", [flt("ban_sec", 0)], []),
    ("zero punch idle time", [flt("punch_idle_sec", 0)],
     ["anycast_edge_filters.punch_idle_sec: 0 must be > 0"]),
    ("zero cookie epoch", [flt("a2s_cookie_epoch_sec", 0)],
     ["anycast_edge_filters.a2s_cookie_epoch_sec: 0 must be > 0"]),
    ("unknown filter setting", [flt("denny", [])],
     ["anycast_edge_filters.denny: unknown setting (known: allow, deny, rate_limits, ban_sec, punch_idle_sec, "
      "a2s_cookie_epoch_sec, rules)"]),
    ("payload rules: every problem with its path", [flt("rules", [
        {"action": "drop", "protocol": "udp", "dst_port": "27015-27000"},
        {"action": "limit", "protocol": "tcp", "tcp_flags": {"mask": ["syn"], "value": ["fin"]},
         "limit": {"packets_per_sec": 0}}])],
     ["anycast_edge_filters.rules[0].dst_port: 27015-27000 is an empty range (min > max)",
      "anycast_edge_filters.rules[1].tcp_flags.value: ['fin'] has flags outside the mask",
      "anycast_edge_filters.rules[1].limit.packets_per_sec: 0 must be an integer > 0 (leave it out for none)",
      "anycast_edge_filters.rules[1].limit: {'packets_per_sec': 0} sets neither packets_per_sec nor bytes_per_sec"]),
    ("payload rules not a list", [flt("rules", {"action": "drop"})],
     ["anycast_edge_filters.rules: {'action': 'drop'} is not a list"]),
    ("asn out of range", [change("vars", ("anycast_edge_asn",), 4294967296)],
     ["anycast_edge_asn: 4294967296 is out of range (1..4294967295)"]),
    ("asn missing", [change("vars", ("anycast_edge_asn",), DELETE)],
     ["anycast_edge_asn: is required (the ASN the POPs announce from)"]),
    # --- A2S -------------------------------------------------------------------------------
    ("a2s_cache on tcp", [svc(1, "a2s_cache", True)],
     ["anycast_edge_services[1].a2s_cache: True on a tcp service (A2S is udp only)"]),
    ("a2s_snoop on icmp", [svc(2, "a2s_snoop", True)],
     ["anycast_edge_services[2].a2s_snoop: True on a icmp service (A2S is udp only)"]),
    ("a2s_cache not a boolean", [svc(0, "a2s_cache", "maybe")],
     ["anycast_edge_services[0].a2s_cache: maybe is not a boolean (true or false)"]),
    ("max age shorter than refresh", [svc(0, "a2s_max_age_sec", 4)],
     ["anycast_edge_services[0].a2s_max_age_sec: 4 is shorter than a2s_refresh_sec (5): "
      "the cache would expire between refreshes"]),
    ("max age zero", [svc(0, "a2s_max_age_sec", 0)],
     ["anycast_edge_services[0].a2s_max_age_sec: 0 must be > 0"]),
    ("refresh zero", [svc(0, "a2s_refresh_sec", 0)],
     ["anycast_edge_services[0].a2s_refresh_sec: 0 must be > 0"]),
    ("unknown service setting", [svc(0, "a2s_chache", True)],
     ["anycast_edge_services[0].a2s_chache: unknown setting (known: name, id, address, protocol, port, backend, "
      "a2s_cache, a2s_snoop, a2s_refresh_sec, a2s_max_age_sec, rate_limit, game_protocol, attack_mode, admission, "
      "attack_detection, syn_auth)"]),
    # --- players under a spoofed flood: game protocol, attack mode, admission, detection -----
    ("game protocol unknown", [svc(0, "game_protocol", "quake")],
     ["anycast_edge_services[0].game_protocol: quake is not one of none, source, goldsrc, minecraft"]),
    ("game protocol on a tcp service", [svc(1, "game_protocol", "source")],
     ["anycast_edge_services[1].game_protocol: source is a udp game protocol; the service is tcp"]),
    ("minecraft on a udp service", [svc(0, "game_protocol", "minecraft")],
     ["anycast_edge_services[0].game_protocol: minecraft is a tcp game protocol; the service is udp"]),
    ("minecraft on an icmp service", [svc(2, "game_protocol", "minecraft")],
     ["anycast_edge_services[2].game_protocol: minecraft is a tcp game protocol; the service is icmp"]),
    ("attack mode unknown", [svc(0, "attack_mode", "on")],
     ["anycast_edge_services[0].attack_mode: on is not one of auto, always, never"]),
    ("attack mode not a string", [svc(3, "attack_mode", True)],
     ["anycast_edge_services[3].attack_mode: True is not one of auto, always, never"]),
    ("syn auth unknown", [svc(1, "syn_auth", "on")],
     ["anycast_edge_services[1].syn_auth: on is not one of auto, always, never"]),
    ("syn auth on a udp service", [svc(0, "syn_auth", "always")],
     ["anycast_edge_services[0].syn_auth: always is for tcp services only; the service is udp"]),
    ("admission not a mapping", [svc(0, "admission", 500)],
     ["anycast_edge_services[0].admission: 500 is not a mapping"]),
    ("admission negative, unknown key", [svc(0, "admission", {"packets_per_sec": -1, "pps": 5})],
     ["anycast_edge_services[0].admission.pps: unknown setting (known: packets_per_sec, bytes_per_sec)",
      "anycast_edge_services[0].admission.packets_per_sec: -1 must be >= 0"]),
    ("admission one budget zero", [svc(0, "admission", {"packets_per_sec": 0})],
     ["anycast_edge_services[0].admission: {'packets_per_sec': 0} has one budget 0 and the other not: give both > 0, "
      "or both 0 (under attack, nothing unverified passes)"]),
    ("attack detection of a service", [svc(0, "attack_detection", {"enter_after_sec": -1, "leave_after_sec": "x",
                                                                   "unverified_pps": 1})],
     ["anycast_edge_services[0].attack_detection.unverified_pps: unknown setting (known: unverified_packets_per_sec, "
      "enter_after_sec, leave_after_sec)",
      "anycast_edge_services[0].attack_detection.enter_after_sec: -1 must be >= 0",
      "anycast_edge_services[0].attack_detection.leave_after_sec: x is not an integer"]),
    ("fleet attack detection", [change("vars", ("anycast_edge_attack_detection",),
                                       {"unverified_packets_per_sec": 0, "leave_after_sec": 0})],
     ["anycast_edge_attack_detection.unverified_packets_per_sec: 0 must be >= 1",
      "anycast_edge_attack_detection.leave_after_sec: 0 must be >= 1"]),
    ("fleet attack detection not a mapping", [change("vars", ("anycast_edge_attack_detection",), [5000])],
     ["anycast_edge_attack_detection: [5000] is not a mapping"]),
    ("verified idle zero", [change("vars", ("anycast_edge_verified_idle_sec",), 0)],
     ["anycast_edge_verified_idle_sec: 0 is out of range (1..31536000)"]),
    ("verified idle not a number", [change("vars", ("anycast_edge_verified_idle_sec",), "10m")],
     ["anycast_edge_verified_idle_sec: 10m is not an integer"]),
    ("service not a mapping", [change("vars", (SERVICES, 1), "cs2-rcon")],
     ["anycast_edge_services[1]: cs2-rcon is not a mapping"]),
    # --- BGP (moved from bird_anycast's asserts, which ran after xdp_edge had attached) ---------
    ("neighbor address not IPv4", [nbr("address", "172.16.1.300")],
     ["hostvars['pop-ams1'].anycast_edge_bgp_neighbors[0].address: 172.16.1.300 is not an IPv4 address"]),
    ("neighbor address missing", [nbr("address", DELETE)],
     ["hostvars['pop-ams1'].anycast_edge_bgp_neighbors[0].address: is required"]),
    ("neighbor name not a BIRD symbol", [nbr("name", "Up-Stream")],
     ["hostvars['pop-ams1'].anycast_edge_bgp_neighbors[0].name: Up-Stream is not a neighbor name ([a-z][a-z0-9_]*; BIRD's protocol is bgp_<name>)"]),
    ("neighbor names twice", [pop("anycast_edge_bgp_neighbors", [
        {"name": "upstream", "address": "172.16.1.1", "asn": 64510},
        {"name": "upstream", "address": "172.16.1.2", "asn": 64511}], "pop-ams1")],
     ["hostvars['pop-ams1'].anycast_edge_bgp_neighbors[1].name: upstream is also the name of "
      "hostvars['pop-ams1'].anycast_edge_bgp_neighbors[0]"]),
    ("neighbor asn zero", [nbr("asn", 0)],
     ["hostvars['pop-ams1'].anycast_edge_bgp_neighbors[0].asn: 0 is out of range (1..4294967295)"]),
    ("neighbor asn not a number", [nbr("asn", "AS64510")],
     ["hostvars['pop-ams1'].anycast_edge_bgp_neighbors[0].asn: AS64510 is not an integer"]),
    ("neighbor multihop too large", [nbr("multihop", 256)],
     ["hostvars['pop-ams1'].anycast_edge_bgp_neighbors[0].multihop: 256 is out of range (0..255)"]),
    ("neighbor bfd not a boolean", [nbr("bfd", "yes please")],
     ["hostvars['pop-ams1'].anycast_edge_bgp_neighbors[0].bfd: yes please is not a boolean (true or false)"]),
    ("neighbor community out of range", [nbr("communities", ["64500:1001", "65536:1"])],
     ["hostvars['pop-ams1'].anycast_edge_bgp_neighbors[0].communities[1]: 65536:1 is not a community \"asn:value\" (each 0..65535)"]),
    ("neighbor communities a string", [nbr("communities", "64500:1001")],
     ["hostvars['pop-ams1'].anycast_edge_bgp_neighbors[0].communities: 64500:1001 is not a list"]),
    ("neighbor unknown setting", [nbr("pasword", "x")],
     ["hostvars['pop-ams1'].anycast_edge_bgp_neighbors[0].pasword: unknown setting (known: name, address, asn, password, multihop, bfd, communities)"]),
    ("neighbor password with a quote is refused but never shown", [nbr("password", 'abc"; } protocol x {')],
     ["hostvars['pop-ams1'].anycast_edge_bgp_neighbors[0].password: (not shown) must be a string without double quotes, backslashes or control "
      "characters (BIRD reads it between quotes)"]),
    ("neighbors not a list", [pop("anycast_edge_bgp_neighbors", {"name": "upstream"}, "pop-ams1")],
     ["hostvars['pop-ams1'].anycast_edge_bgp_neighbors: {'name': 'upstream'} is not a list"]),
    ("router id not IPv4", [pop("anycast_edge_router_id", "10.0.0.256")],
     ["hostvars['pop-fra1'].anycast_edge_router_id: 10.0.0.256 is not an IPv4 address"]),
    ("global community malformed", [pop("anycast_edge_bgp_communities", ["64500-100"])],
     ['hostvars[\'pop-fra1\'].anycast_edge_bgp_communities[0]: 64500-100 is not a community "asn:value" (each 0..65535)']),
    ("rtbh not a host", [pop("anycast_edge_rtbh", ["198.51.100.7/32", "198.51.100.0/24"])],
     ["hostvars['pop-fra1'].anycast_edge_rtbh[1]: 198.51.100.0/24 is not an IPv4 host address (optionally /32)"]),
    ("hold time too short", [pop("anycast_edge_bgp_timers", {"hold": 2, "keepalive": 1})],
     ["hostvars['pop-fra1'].anycast_edge_bgp_timers.hold: 2 must be >= 3"]),
    ("keepalive not shorter than hold", [pop("anycast_edge_bgp_timers", {"hold": 9})],
     ["hostvars['pop-fra1'].anycast_edge_bgp_timers.keepalive: 30 must be shorter than hold (9)"]),
    ("bfd interval zero", [pop("anycast_edge_bfd_timers", {"interval_ms": 0, "multiplier": 3})],
     ["hostvars['pop-fra1'].anycast_edge_bfd_timers.interval_ms: 0 must be >= 1"]),
    ("drain state unknown", [pop("anycast_edge_drain_state", "drained")],
     ["hostvars['pop-fra1'].anycast_edge_drain_state: drained is not one of announced, gshut, withdrawn"]),
    # --- the backends' mapper (moved from tc_mapper's assert) ---------------------------------
    ("backend without uplink", [backend("anycast_edge_uplink", DELETE)],
     ["hostvars['game1'].anycast_edge_uplink: is required (the NIC the IPIP from the POPs crosses; "
      "the mapper attaches there)"]),
    ("mapper devices without fib next hop", [backend("anycast_edge_mapper_devices", ["eth1"])],
     ["hostvars['game1'].anycast_edge_mapper_devices: ['eth1'] besides the uplink needs "
      "anycast_edge_mapper_fib_next_hop: true (a steered reply must leave by the device toward its POP)"]),
    ("mapper devices with fib next hop are fine", [backend("anycast_edge_mapper_devices", ["eth1"]),
                                                   backend("anycast_edge_mapper_fib_next_hop", True)], []),
    ("mapper device not an interface name", [backend("anycast_edge_mapper_devices", ["eth:1"])],
     ["hostvars['game1'].anycast_edge_mapper_devices[0]: eth:1 is not an interface name"]),
    ("strict rp_filter", [backend("anycast_edge_mapper_rp_filter", 1)],
     ["hostvars['game1'].anycast_edge_mapper_rp_filter: 1 must be 0 (off) or 2 (loose); strict (1) drops "
      "players of every POP but the default one"]),
    ("default pop not a pop", [backend("anycast_edge_default_pop", "game2")],
     ["hostvars['game1'].anycast_edge_default_pop: game2 is not a host of group pops"]),
    ("dsr service of another backend", [backend("anycast_edge_dsr_services", ["cs2-main", "rust"])],
     ["hostvars['game1'].anycast_edge_dsr_services[1]: rust is not a service whose backend is game1 "
      "(anycast_edge_services[].name)"]),
    ("dsr minecraft service", [svc(1, "game_protocol", "minecraft"), backend("anycast_edge_dsr_services", ["cs2-rcon"])],
     ["hostvars['game1'].anycast_edge_dsr_services[0]: cs2-rcon is a game_protocol minecraft service: its replies must "
      "come back through the POP (the handshake validator reads the backend's SYN-ACK there)"]),
    ("dsr tcp service without the validator is fine", [backend("anycast_edge_dsr_services", ["cs2-rcon"])], []),
    ("host in both groups", [change("backends", ("pop-fra1",), {"anycast_edge_tunnel_address": "10.1.0.99",
                                                                "anycast_edge_uplink": "eth0"})],
     ["hostvars['pop-fra1']: is in both groups pops and backends; a host is one or the other"]),
    ("underlay networks without underlay devices", [pop("anycast_edge_underlay_networks", ["10.1.0.0/24"])],
     ["hostvars['pop-fra1'].anycast_edge_underlay_networks: ['10.1.0.0/24'] is set without "
      "anycast_edge_underlay_devices (the networks say which backends the underlay devices reach)"]),
    ("underlay network host bits", [pop("anycast_edge_underlay_devices", ["eth3"]),
                                    pop("anycast_edge_underlay_networks", ["10.1.0.1/24"])],
     ["hostvars['pop-fra1'].anycast_edge_underlay_networks[0]: 10.1.0.1/24 has host bits set (did you mean 10.1.0.0/24?)"]),
    # --- whole values: a trailing newline used to pass `^...$` (Python's $ matches before it) ----
    ("uplink with a trailing newline", [pop("anycast_edge_uplink", "eth1\n")],
     ["hostvars['pop-fra1'].anycast_edge_uplink: 'eth1\\n' is not an interface name"]),
    ("egress device with a trailing newline", [pop("anycast_edge_egress_devices", ["eth2\n"])],
     ["hostvars['pop-fra1'].anycast_edge_egress_devices[0]: 'eth2\\n' is not an interface name"]),
    ("service name with a trailing newline", [svc(1, "name", "cs2-rcon\n")],
     ["anycast_edge_services[1].name: 'cs2-rcon\\n' is not a service name (lower-case letters, digits, '_' and '-')"]),
    ("neighbor name with a trailing newline", [nbr("name", "upstream\n")],
     ["hostvars['pop-ams1'].anycast_edge_bgp_neighbors[0].name: 'upstream\\n' is not a neighbor name ([a-z][a-z0-9_]*; BIRD's protocol is bgp_<name>)"]),
    ("community with a trailing newline", [nbr("communities", ["64500:1001\n"])],
     ["hostvars['pop-ams1'].anycast_edge_bgp_neighbors[0].communities[0]: '64500:1001\\n' is not a community \"asn:value\" (each 0..65535)"]),
    ("neighbor address with a trailing newline", [nbr("address", "172.16.1.1\n")],
     ["hostvars['pop-ams1'].anycast_edge_bgp_neighbors[0].address: '172.16.1.1\\n' is not an IPv4 address"]),
    ("password with a newline", [nbr("password", "s3cret\n")],
     ["hostvars['pop-ams1'].anycast_edge_bgp_neighbors[0].password: (not shown) must be a string without double quotes, backslashes or control "
      "characters (BIRD reads it between quotes)"]),
    # --- the fleet's edge cookie keys: well formed and the same on every POP, never shown --------
    ("cookie key too short", [pop("anycast_edge_cookie_keys", [KEY_A[:-1]], "pop-ams1"),
                              pop("anycast_edge_cookie_keys", [KEY_A[:-1]])],
     ["hostvars['pop-ams1'].anycast_edge_cookie_keys[0]: must be 32 hex digits (16 bytes); got 31 characters (not shown)",
      "hostvars['pop-fra1'].anycast_edge_cookie_keys[0]: must be 32 hex digits (16 bytes); got 31 characters (not shown)"]),
    ("three cookie key generations", [pop("anycast_edge_cookie_keys", [KEY_A, KEY_B, KEY_C], host)
                                      for host in ("pop-ams1", "pop-fra1")],
     ["hostvars['pop-ams1'].anycast_edge_cookie_keys: 3 keys given; the data plane holds 2 generations (the current "
      "key, then the previous one): retire the oldest (not shown)",
      "hostvars['pop-fra1'].anycast_edge_cookie_keys: 3 keys given; the data plane holds 2 generations (the current "
      "key, then the previous one): retire the oldest (not shown)"]),
    ("cookie keys on one POP only", [pop("anycast_edge_cookie_keys", [KEY_A], "pop-ams1")],
     ["hostvars['pop-fra1'].anycast_edge_cookie_keys: unset while pop-ams1 sets it: every POP needs the same keys "
      "(set it for group pops)"]),
    ("cookie keys differ between POPs", [pop("anycast_edge_cookie_keys", [KEY_A], "pop-ams1"),
                                         pop("anycast_edge_cookie_keys", [KEY_B, KEY_A])],
     ["hostvars['pop-fra1'].anycast_edge_cookie_keys: (not shown) differs from pop-ams1's: every POP needs the same "
      "keys, or a player's challenge from one POP is refused by the next (set it for group pops)"]),
]


def test_the_valid_inventory_has_no_problem():
    assert run() == []


def test_the_same_cookie_keys_on_every_pop_pass_and_are_secrets():
    keys = [KEY_B, KEY_A]
    mutations = [pop("anycast_edge_cookie_keys", list(keys), host) for host in ("pop-ams1", "pop-fra1")]
    assert run(mutations) == []
    pops = apply(copy.deepcopy((VALID_VARS, VALID_POPS, VALID_BACKENDS)), mutations)[1]
    assert set(keys) <= set(_inventory.secrets(pops))


@pytest.mark.parametrize("mutations, expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_each_rule(mutations, expected):
    assert run(mutations) == expected


def test_every_problem_is_reported_at_once():
    problems = run([
        change("vars", ("anycast_edge_prefixes", 0), "198.51.100.0/33"),
        svc(1, "port", 70000),
        svc(3, "backend", "nowhere"),
        flt("deny", ["10.0.0.1/8"]),
        flt("ban_sec", -3),
        change("pops", ("pop-ams1", "anycast_edge_uplink"), DELETE),
    ])
    assert problems == [
        "anycast_edge_prefixes[0]: 198.51.100.0/33 is not a valid IPv4 CIDR",
        "hostvars['pop-ams1'].anycast_edge_uplink: is required (the interface XDP attaches to)",
        "anycast_edge_services[0].address: 198.51.100.10 is not inside any of anycast_edge_prefixes",
        "anycast_edge_services[1].address: 198.51.100.10 is not inside any of anycast_edge_prefixes",
        "anycast_edge_services[1].port: 70000 is out of range (1..65535)",
        "anycast_edge_services[2].address: 198.51.100.10 is not inside any of anycast_edge_prefixes",
        "anycast_edge_services[3].backend: nowhere is not a host of group backends",
        "anycast_edge_filters.deny[0]: 10.0.0.1/8 has host bits set (did you mean 10.0.0.0/8?)",
        "anycast_edge_filters.ban_sec: -3 must be >= 0",
    ]


def test_no_services_no_filters_is_valid():
    inventory = copy.deepcopy((VALID_VARS, VALID_POPS, VALID_BACKENDS))
    del inventory[0][SERVICES]
    del inventory[0][FILTERS]
    assert _inventory.validate(*inventory) == []


# What a service gets when it sets none of game_protocol, attack_mode, admission (_rules' defaults).
DEFENCE_DEFAULTS = {"game_protocol": "none", "attack_mode": "auto",
                    "admission": {"packets_per_sec": 2000, "bytes_per_sec": 2000000}, "syn_auth": "auto"}


def test_normalized_inventory_resolves_into_edge_rules_parameters():
    problems, normalized = _inventory.check(*copy.deepcopy((VALID_VARS, VALID_POPS, VALID_BACKENDS)))
    assert problems == []
    rules = _inventory.resolve_rules(normalized)
    assert rules["anycast_prefixes"] == ["198.51.100.0/24", "203.0.113.0/25"]
    assert rules["backends"] == ["10.1.0.10", "10.1.0.11"]
    # a bare address becomes a /32; order kept
    assert rules["deny"] == ["100.64.0.0/10", "233.252.0.5/32"]
    assert rules["allow"] == ["192.0.2.0/28"]
    assert rules["rate_limits"] == {"udp": {"packets_per_sec": 500, "bytes_per_sec": 1000000},
                                    "icmp": {"packets_per_sec": 10}}
    assert (rules["ban_sec"], rules["punch_idle_sec"], rules["a2s_cookie_epoch_sec"]) == (60, 120, 30)
    assert rules["services"] == [
        {"name": "cs2-main", "id": 237, "address": "198.51.100.10", "protocol": "udp", "port": 27015,
         "backend_address": "10.1.0.10", "a2s_cache": True, "a2s_snoop": True, "a2s_max_age_sec": 30, **DEFENCE_DEFAULTS},
        {"name": "cs2-rcon", "id": 676, "address": "198.51.100.10", "protocol": "tcp", "port": 27015,
         "backend_address": "10.1.0.10", "a2s_cache": False, "a2s_snoop": False, "a2s_max_age_sec": 30, **DEFENCE_DEFAULTS},
        {"name": "ping", "id": 427, "address": "198.51.100.10", "protocol": "icmp", "port": 0,
         "backend_address": "10.1.0.10", "a2s_cache": False, "a2s_snoop": False, "a2s_max_age_sec": 30, **DEFENCE_DEFAULTS},
        {"name": "rust", "id": 42, "address": "203.0.113.20", "protocol": "udp", "port": 28015,
         "backend_address": "10.1.0.11", "a2s_cache": False, "a2s_snoop": False, "a2s_max_age_sec": 30,
         "rate_limit": {"packets_per_sec": 300}, **DEFENCE_DEFAULTS},
    ]
    # the fleet's defaults of the flood defence: verified idle time, and each service's detection
    assert rules["verified_idle_sec"] == 600
    assert rules["attack_detection"] == dict((name, {"unverified_packets_per_sec": 5000, "enter_after_sec": 3,
                                                     "leave_after_sec": 60})
                                             for name in ("cs2-main", "cs2-rcon", "ping", "rust"))
    # each POP's control plane: its own BGP neighbour and the other POP (never itself)
    assert rules["control_plane"] == {
        "pop-ams1": [{"address": "10.0.0.2/32", "reason": "tunnel address of POP pop-fra1"},
                     {"address": "172.16.1.1/32", "reason": "BGP neighbour upstream of pop-ams1"}],
        "pop-fra1": [{"address": "10.0.0.1/32", "reason": "tunnel address of POP pop-ams1"}],
    }
    # and the resolved parameters pack without complaint (the role gives a POP its own part)
    params = dict(rules, tunnel_address="10.0.0.1", control_plane=rules["control_plane"]["pop-ams1"])
    desired, names = _rules.desired_entries(params, bytes(16))
    assert len(desired["edge_services"]) == 4 and sorted(names.values()) == ["cs2-main", "cs2-rcon", "ping", "rust"]
    assert sorted(_rules.render_allow(key, value) for key, value in desired["edge_allow_v4"].items()) == [
        "10.0.0.2/32 (control plane)", "172.16.1.1/32 (control plane)", "192.0.2.0/28"]


def test_flood_defence_settings_resolve_with_the_fleet_defaults_under_each_service():
    """A service's own fields win over the fleet's attack detection field by field; the admission
    budget is filled field by field from the default; both go where their reader wants them
    (the budget to edge_rules' services, the detection to the agent, by service name)."""
    problems, warnings, normalized = _inventory.check_all(*apply(copy.deepcopy((VALID_VARS, VALID_POPS, VALID_BACKENDS)), [
        change("vars", ("anycast_edge_verified_idle_sec",), "900"),
        change("vars", ("anycast_edge_attack_detection",), {"unverified_packets_per_sec": 20000, "leave_after_sec": 30}),
        svc(0, "game_protocol", "source"),
        svc(0, "admission", {"packets_per_sec": 500}),
        svc(0, "attack_detection", {"enter_after_sec": 1}),
        svc(3, "game_protocol", "goldsrc"),
        svc(3, "attack_mode", "always"),
        svc(3, "admission", {"packets_per_sec": 0, "bytes_per_sec": 0}),
        svc(2, "attack_mode", "never"),
        svc(1, "syn_auth", "always"),
    ]))
    assert problems == [] and [line for line in warnings if "attack" in line] == []
    rules = _inventory.resolve_rules(normalized)
    assert rules["verified_idle_sec"] == 900
    by_name = dict((service["name"], service) for service in rules["services"])
    assert {name: (service["game_protocol"], service["attack_mode"], service["admission"])
            for name, service in by_name.items()} == {
        "cs2-main": ("source", "auto", {"packets_per_sec": 500, "bytes_per_sec": 2000000}),
        "cs2-rcon": ("none", "auto", {"packets_per_sec": 2000, "bytes_per_sec": 2000000}),
        "ping": ("none", "never", {"packets_per_sec": 2000, "bytes_per_sec": 2000000}),
        "rust": ("goldsrc", "always", {"packets_per_sec": 0, "bytes_per_sec": 0}),
    }
    assert rules["attack_detection"]["cs2-main"] == {"unverified_packets_per_sec": 20000, "enter_after_sec": 1,
                                                     "leave_after_sec": 30}
    assert rules["attack_detection"]["rust"] == {"unverified_packets_per_sec": 20000, "enter_after_sec": 3,
                                                 "leave_after_sec": 30}
    # and edge_rules packs them
    desired, dummy = _rules.desired_entries(dict(rules, tunnel_address="10.0.0.1", control_plane=[]), bytes(16))
    values = [abi.SERVICE_VALUE.unpack(value) for value in desired["edge_services"].values()]
    assert by_name["cs2-rcon"]["syn_auth"] == "always" and by_name["cs2-main"]["syn_auth"] == "auto"
    never, always = abi.SYN_AUTH_MODES.index("never"), abi.SYN_AUTH_MODES.index("always")
    # syn_auth is a TCP service's (cs2-rcon); the others are packed with never whatever they say.
    assert sorted(fields[6:11] for fields in values) == [
        (0, 0, abi.GAME_PROTOCOLS.index("goldsrc"), abi.ATTACK_MODES.index("always"), never),
        (500, 2000000, abi.GAME_PROTOCOLS.index("source"), abi.ATTACK_MODES.index("auto"), never),
        (2000, 2000000, 0, abi.ATTACK_MODES.index("auto"), always),
        (2000, 2000000, 0, abi.ATTACK_MODES.index("never"), never),
    ]


def test_attack_detection_of_a_service_the_agent_does_not_watch_is_a_warning():
    problems, warnings, dummy = _inventory.check_all(*apply(copy.deepcopy((VALID_VARS, VALID_POPS, VALID_BACKENDS)), [
        svc(0, "attack_mode", "always"), svc(0, "attack_detection", {"enter_after_sec": 1})]))
    assert problems == []
    assert [line for line in warnings if "attack" in line] == [
        "anycast_edge_services[0].attack_detection: {'enter_after_sec': 1} is not used: attack_mode "
        "is always (only auto services are put under attack by the agent)"]


def test_default_filters_when_omitted():
    inventory = copy.deepcopy((VALID_VARS, VALID_POPS, VALID_BACKENDS))
    del inventory[0][FILTERS]
    problems, normalized = _inventory.check(*inventory)
    assert problems == []
    assert normalized[FILTERS] == {"allow": [], "deny": [], "rate_limits": {}, "ban_sec": 60, "punch_idle_sec": 120,
                                   "a2s_cookie_epoch_sec": 30, "rules": []}


# --- the role, through ansible-playbook, on inventories/example -------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "inventories" / "example"
VENV_BIN = Path(sys.executable).parent


def run_validation_play(inventory, tmp_path, *args):
    """A play over every host with validate_inventory first, then a task that writes each host's
    anycast_edge_rules to <tmp>/<host>.json (only if the role let the play go on); the POPs' rules
    files go to <tmp>/rules."""
    playbook = tmp_path / "validate.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Validate, then act",
        "hosts": "all",
        "gather_facts": False,
        "roles": ["anycast.edge.validate_inventory"],
        "tasks": [{"name": "Record the rules this host got", "ansible.builtin.copy": {
            "content": "{{ anycast_edge_rules | to_json }}", "dest": str(tmp_path) + "/{{ inventory_hostname }}.json",
            "mode": "0600"}, "delegate_to": "localhost", "tags": ["record"]}],
    }]))
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"), ANSIBLE_HOME=str(tmp_path / "ansible-home"))
    return subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(playbook),
         "-e", "ansible_connection=local", "-e", "ansible_python_interpreter=%s" % sys.executable,
         "-e", "anycast_edge_rules_dir=%s" % (tmp_path / "rules"), *args],
        capture_output=True, text=True, env=env, timeout=300, check=False)


EXAMPLE_POPS = ["pop-ams1", "pop-fra1", "pop-lon1", "pop-nyc1"]


def rules_files(tmp_path):
    """{POP: its rules} of the rules files a run_validation_play rendered."""
    return dict((path.stem, _rules.read_rules_file(path.read_text(), path.name))
                for path in (tmp_path / "rules").glob("*.json"))


def test_the_example_inventory_passes_and_every_host_gets_the_rules(tmp_path):
    proc = run_validation_play(EXAMPLE, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    hosts = EXAMPLE_POPS + ["game-ams-01", "game-fra-01", "game-nyc-01", "mon-1"]
    rules = [json.loads((tmp_path / (host + ".json")).read_text()) for host in hosts]
    assert all(item == rules[0] for item in rules)
    assert rules[0]["anycast_prefixes"] == ["198.51.100.0/24", "203.0.113.0/25"]
    assert rules[0]["backends"] == ["10.1.0.10", "10.1.0.20", "10.1.0.30"]
    by_name = dict((service["name"], service) for service in rules[0]["services"])
    assert by_name["rust-eu-1"]["id"] == 100 and by_name["rust-eu-1"]["backend_address"] == "10.1.0.20"
    assert by_name["cs2-eu-1"]["id"] == _rules.default_service_id("cs2-eu-1")
    assert by_name["ping-us"] == {"name": "ping-us", "id": _rules.default_service_id("ping-us"),
                                  "address": "203.0.113.10", "protocol": "icmp", "port": 0,
                                  "backend_address": "10.1.0.30", "a2s_cache": False, "a2s_snoop": False,
                                  "a2s_max_age_sec": 30, **DEFENCE_DEFAULTS}
    assert by_name["tf2-us-1"]["game_protocol"] == "source" and by_name["rust-eu-1"]["attack_mode"] == "never"
    assert by_name["tf2-us-1"]["admission"] == {"packets_per_sec": 500, "bytes_per_sec": 500000}
    assert rules[0]["verified_idle_sec"] == 600
    assert rules[0]["attack_detection"]["tf2-us-1"] == {"unverified_packets_per_sec": 2000, "enter_after_sec": 3,
                                                        "leave_after_sec": 60}
    assert rules[0]["rate_limits"]["udp"] == {"packets_per_sec": 400, "bytes_per_sec": 600000}


def test_the_source_lists_and_control_planes_are_in_the_pops_rules_files_only(tmp_path):
    """anycast_edge_rules, which every host gets, leaves out what only edge_rules reads from the
    POP's rules file: the allow and deny lists (up to a million prefixes each, copied to every host
    by set_fact) and the control planes; each POP's file has the lists and its own control plane."""
    proc = run_validation_play(EXAMPLE, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for host_file in tmp_path.glob("*.json"):
        published = json.loads(host_file.read_text())
        assert not {"allow", "deny", "control_plane"} & set(published), host_file.name
        assert published["services"] and published["rate_limits"]["udp"]["packets_per_sec"] == 400
    by_pop = rules_files(tmp_path)
    assert sorted(by_pop) == EXAMPLE_POPS
    for pop, in_file in by_pop.items():
        assert "0.0.0.0/8" in in_file["deny"] and "192.0.2.64/27" in in_file["allow"]
        reasons = [entry["reason"] for entry in in_file["control_plane"]]
        assert sorted(reason for reason in reasons if reason.startswith("tunnel address of POP ")) \
            == ["tunnel address of POP " + other for other in EXAMPLE_POPS if other != pop]


def test_validation_runs_whatever_tags_are_asked_for(tmp_path):
    """`--tags anycast_edge_rules` (playbooks/rules.yml's shortcut) must still validate and
    set anycast_edge_rules: the role's tasks are tagged always."""
    proc = run_validation_play(EXAMPLE, tmp_path, "--tags", "record")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Check the inventory (every problem at once)" in proc.stdout
    assert len(list(tmp_path.glob("*.json"))) == 8


def test_a_broken_inventory_stops_the_play_with_every_problem(tmp_path):
    inventory = tmp_path / "inventory"
    shutil.copytree(EXAMPLE, inventory)
    all_vars = yaml.safe_load((inventory / "group_vars" / "all.yml").read_text())
    all_vars["anycast_edge_services"][3]["address"] = "203.0.113.200"
    all_vars["anycast_edge_services"][5]["backend"] = "game-nyc-99"
    all_vars["anycast_edge_filters"]["deny"].append("10.1.2.3/8")
    (inventory / "group_vars" / "all.yml").write_text(yaml.safe_dump(all_vars))
    (inventory / "host_vars" / "pop-lon1.yml").write_text("anycast_edge_tunnel_address: 10.0.0.300\n")
    (inventory / "host_vars" / "game-fra-01.yml").write_text("{}\n")

    proc = run_validation_play(inventory, tmp_path)
    assert proc.returncode != 0
    assert "the anycast.edge inventory has 5 problems:" in proc.stdout, proc.stdout + proc.stderr
    for line in [
        "hostvars['pop-lon1'].anycast_edge_tunnel_address: 10.0.0.300 is not an IPv4 address",
        "hostvars['game-fra-01'].anycast_edge_tunnel_address: is required (the address IPIP tunnels use on this host)",
        "anycast_edge_services[3].address: 203.0.113.200 is not inside any of anycast_edge_prefixes",
        "anycast_edge_services[5].backend: game-nyc-99 is not a host of group backends",
        "anycast_edge_filters.deny[6]: 10.1.2.3/8 has host bits set (did you mean 10.0.0.0/8?)",
    ]:
        assert "\n" + line + "\n" in proc.stdout, line
    # nothing after the role ran, for any host
    assert not list(tmp_path.glob("*.json"))


# --- one front door: the role collects what the checks read; the defaults they assume ---------

def test_the_role_collects_exactly_the_host_variables_the_checks_read():
    role_vars = yaml.safe_load((EXAMPLE.parents[1] / "roles" / "validate_inventory" / "vars" / "main.yml").read_text())
    assert tuple(role_vars["validate_inventory_pop_vars"]) == _inventory.POP_VARS
    assert tuple(role_vars["validate_inventory_backend_vars"]) == _inventory.BACKEND_VARS
    assert tuple(role_vars["validate_inventory_monitoring_vars"]) == _inventory.MONITORING_VARS


def test_the_timer_defaults_are_bird_anycasts():
    defaults = yaml.safe_load((EXAMPLE.parents[1] / "roles" / "bird_anycast" / "defaults" / "main.yml").read_text())
    assert defaults["anycast_edge_bgp_timers"] == _inventory.BGP_TIMER_DEFAULTS
    assert defaults["anycast_edge_bfd_timers"] == _inventory.BFD_TIMER_DEFAULTS


@pytest.mark.parametrize("role", ["bird_anycast", "tc_mapper", "xdp_edge", "ipip_tunnels", "edge_agent"])
def test_the_roles_defaults_pass_the_checks(role):
    """A host variable left out reaches the checks as None (hostvars holds no role defaults):
    the roles' own defaults, given explicitly, must pass too."""
    defaults = yaml.safe_load((EXAMPLE.parents[1] / "roles" / role / "defaults" / "main.yml").read_text()) or {}
    inventory = copy.deepcopy((VALID_VARS, VALID_POPS, VALID_BACKENDS))
    for hostvars in inventory[1].values():
        hostvars.update((name, defaults[name]) for name in _inventory.POP_VARS if name in defaults and name not in hostvars)
    for hostvars in inventory[2].values():
        hostvars.update((name, defaults[name]) for name in _inventory.BACKEND_VARS
                        if name in defaults and name not in hostvars)
    assert _inventory.validate(*inventory) == []


def test_the_flood_defence_defaults_documented_are_rules_own():
    """The defaults of game_protocol, attack_mode, admission, attack detection and the verified
    idle time live in _rules (DEFAULT_*); the role's argument specs state them, and must say
    the same."""
    specs = yaml.safe_load((EXAMPLE.parents[1] / "roles" / "validate_inventory" / "meta" / "argument_specs.yml")
                           .read_text())["argument_specs"]["main"]["options"]
    service = specs["anycast_edge_services"]["options"]
    assert service["game_protocol"]["default"] == _rules.DEFAULT_GAME_PROTOCOL
    assert service["game_protocol"]["choices"] == list(abi.GAME_PROTOCOLS)
    assert service["attack_mode"]["default"] == _rules.DEFAULT_ATTACK_MODE
    assert service["attack_mode"]["choices"] == list(abi.ATTACK_MODES)
    assert service["syn_auth"]["default"] == _rules.DEFAULT_SYN_AUTH
    assert service["syn_auth"]["choices"] == list(abi.SYN_AUTH_MODES)
    assert service["admission"]["default"] == _rules.DEFAULT_ADMISSION
    assert dict((key, option["default"]) for key, option in service["admission"]["options"].items()) == \
        _rules.DEFAULT_ADMISSION
    assert specs["anycast_edge_attack_detection"]["default"] == _rules.DEFAULT_ATTACK_DETECTION
    assert dict((key, option["default"]) for key, option in specs["anycast_edge_attack_detection"]["options"].items()) \
        == _rules.DEFAULT_ATTACK_DETECTION
    assert list(service["attack_detection"]["options"]) == list(_rules.DEFAULT_ATTACK_DETECTION)
    assert specs["anycast_edge_verified_idle_sec"]["default"] == _rules.DEFAULT_VERIFIED_IDLE_SEC


def test_no_role_re_checks_the_inventory():
    """The roles' own assert/fail tasks that re-checked inventory are gone (bird_anycast's
    validate.yml, tc_mapper's "Check the mapper's own settings"); what is left checks state
    found on the host or in the run (bird_anycast: the drain state file; wireguard_transport: the
    other end's key, registered by the keys play of the same run, which a --limit can leave out)."""
    roles = EXAMPLE.parents[1] / "roles"
    found = []
    for path in sorted(roles.glob("*/tasks/*.yml")):
        for task in yaml.safe_load(path.read_text()) or []:
            if "ansible.builtin.assert" in task or "ansible.builtin.fail" in task:
                found.append("%s: %s" % (path.relative_to(roles), task["name"]))
    assert found == ["bird_anycast/tasks/main.yml: Check the drain state",
                     "wireguard_transport/tasks/main.yml: Check that the keys play ran on the other end of each "
                     "WireGuard pair"]


# --- the IPIP path warning (plain IPIP is authenticated by nothing but its path) -------------

def warnings(mutations=()):
    inventory = apply(copy.deepcopy((VALID_VARS, VALID_POPS, VALID_BACKENDS)), mutations)
    problems, found, _normalized = _inventory.check_all(*inventory)
    assert problems == []
    return found


def test_a_pop_without_underlay_devices_warns_once_per_backend():
    found = warnings([pop("anycast_edge_underlay_devices", ["eth3"])])
    # pop-fra1 has an underlay (no networks: every backend is reached over it); pop-ams1 has none
    assert found == [
        "pop-ams1 <-> game1: the IPIP to game1's tunnel address 10.1.0.10 does not cross a declared underlay "
        "device (pop-ams1 has no anycast_edge_underlay_devices: it is sent and accepted on the uplink eth1). "
        "Plain IPIP is authenticated by nothing but its path: where it crosses the internet, anyone can spoof it "
        "(see docs/data-plane.md, trust model)",
        "pop-ams1 <-> game2: the IPIP to game2's tunnel address 10.1.0.11 does not cross a declared underlay "
        "device (pop-ams1 has no anycast_edge_underlay_devices: it is sent and accepted on the uplink eth1). "
        "Plain IPIP is authenticated by nothing but its path: where it crosses the internet, anyone can spoof it "
        "(see docs/data-plane.md, trust model)",
    ]


def test_underlay_networks_name_the_backends_the_underlay_reaches():
    found = warnings([pop("anycast_edge_underlay_devices", ["eth3"], host)
                      for host in ("pop-ams1", "pop-fra1")]
                     + [pop("anycast_edge_underlay_networks", ["10.1.0.10/32"], "pop-fra1")])
    assert len(found) == 1
    assert found[0].startswith("pop-fra1 <-> game2: the IPIP to game2's tunnel address 10.1.0.11 does not cross")
    assert "(10.1.0.11 is not inside pop-fra1's anycast_edge_underlay_networks)" in found[0]


def test_every_pair_over_a_declared_underlay_warns_nothing():
    assert warnings([pop("anycast_edge_underlay_devices", ["eth3"], host) for host in ("pop-ams1", "pop-fra1")]) == []


def test_the_lab_inventory_passes_without_warnings(tmp_path):
    """The lab's POPs reach the backend over eth2 (anycast_edge_underlay_devices): no warning."""
    proc = run_validation_play(EXAMPLE.parent / "lab", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout + proc.stderr
    assert len(list(tmp_path.glob("*.json"))) == 3


def test_the_warning_is_shown_once_per_pair_in_the_play_output(tmp_path):
    """The example's POPs have no underlay devices: 4 POPs x 3 backends, each pair listed once,
    and the play goes on (a warning, not an error)."""
    proc = run_validation_play(EXAMPLE, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    output = proc.stdout + proc.stderr
    for pop_name in ("pop-ams1", "pop-fra1", "pop-lon1", "pop-nyc1"):
        for backend_name in ("game-ams-01", "game-fra-01", "game-nyc-01"):
            assert output.count("%s <-> %s: the IPIP" % (pop_name, backend_name)) == 1, output
    assert len(list(tmp_path.glob("*.json"))) == 8


def test_a_bad_password_is_refused_without_showing_it(tmp_path):
    inventory = tmp_path / "inventory"
    shutil.copytree(EXAMPLE, inventory)
    (inventory / "host_vars" / "pop-lon1.yml").write_text(yaml.safe_dump({
        "anycast_edge_tunnel_address": "10.0.0.3",
        "anycast_edge_bgp_neighbors": [{"name": "transit", "address": "192.0.2.1", "asn": 64510,
                                        "password": 'Hunter2"; } protocol x {'},
                                       {"name": "ix", "address": "192.0.2.2", "asn": 64511,
                                        "password": "GoodSecretValue"}]}))
    proc = run_validation_play(inventory, tmp_path, "-vvv")
    assert proc.returncode != 0
    assert ("hostvars['pop-lon1'].anycast_edge_bgp_neighbors[0].password: (not shown) must be a string"
            in proc.stdout), proc.stdout
    assert "Hunter2" not in proc.stdout + proc.stderr
    assert "GoodSecretValue" not in proc.stdout + proc.stderr


# --- the control plane: sources each POP exempts from bans and limits (issue 12, section 2) -----

def control_plane(mutations=(), monitoring=None):
    """(problems, warnings, {POP: [(address, reason)]}) of the valid inventory changed by `mutations`."""
    inventory = apply(copy.deepcopy((VALID_VARS, VALID_POPS, VALID_BACKENDS)), mutations)
    problems, found, normalized = _inventory.check_all(*inventory, monitoring=monitoring)
    derived = dict((host, [(item["address"], item["reason"]) for item in items])
                   for host, items in normalized.get("control_plane", {}).items())
    return problems, found, derived


CONTROL_PLANE_CASES = [
    ("each POP: its own neighbours and the other POPs' tunnel addresses, never itself", [], None,
     {"pop-ams1": [("10.0.0.2/32", "tunnel address of POP pop-fra1"),
                   ("172.16.1.1/32", "BGP neighbour upstream of pop-ams1")],
      "pop-fra1": [("10.0.0.1/32", "tunnel address of POP pop-ams1")]}),
    ("management and exporter addresses of the other POPs",
     [pop("ansible_host", "192.0.2.201"), pop("anycast_edge_agent_listen_address", "192.0.2.202")], None,
     {"pop-ams1": [("10.0.0.2/32", "tunnel address of POP pop-fra1"),
                   ("172.16.1.1/32", "BGP neighbour upstream of pop-ams1"),
                   ("192.0.2.201/32", "management address of POP pop-fra1 (ansible_host)"),
                   ("192.0.2.202/32", "exporter address of POP pop-fra1 (anycast_edge_agent_listen_address)")],
      "pop-fra1": [("10.0.0.1/32", "tunnel address of POP pop-ams1")]}),
    ("an ansible_host that is a name, IPv6, loopback (the lab), anycast or padded is no address to exempt",
     [pop("ansible_host", "pop-fra1.example.net"), pop("anycast_edge_agent_listen_address", "127.0.0.1"),
      pop("ansible_host", "2001:db8::1", "pop-ams1"), pop("anycast_edge_agent_listen_address", "198.51.100.7", "pop-ams1")],
     {"mon-1": {"ansible_host": "127.0.0.1"}, "mon-2": {"ansible_host": "192.0.2.99\n"}},
     {"pop-ams1": [("10.0.0.2/32", "tunnel address of POP pop-fra1"),
                   ("172.16.1.1/32", "BGP neighbour upstream of pop-ams1")],
      "pop-fra1": [("10.0.0.1/32", "tunnel address of POP pop-ams1")]}),
    ("the monitoring hosts go to every POP", [], {"mon-1": {"ansible_host": "192.0.2.250"}},
     {"pop-ams1": [("10.0.0.2/32", "tunnel address of POP pop-fra1"),
                   ("172.16.1.1/32", "BGP neighbour upstream of pop-ams1"),
                   ("192.0.2.250/32", "monitoring host mon-1 (ansible_host)")],
      "pop-fra1": [("10.0.0.1/32", "tunnel address of POP pop-ams1"),
                   ("192.0.2.250/32", "monitoring host mon-1 (ansible_host)")]}),
    ("one address with two roles is one entry with both reasons",
     [nbr("address", "192.0.2.250")], {"mon-1": {"ansible_host": "192.0.2.250"}},
     {"pop-ams1": [("10.0.0.2/32", "tunnel address of POP pop-fra1"),
                   ("192.0.2.250/32", "BGP neighbour upstream of pop-ams1; monitoring host mon-1 (ansible_host)")],
      "pop-fra1": [("10.0.0.1/32", "tunnel address of POP pop-ams1"),
                   ("192.0.2.250/32", "monitoring host mon-1 (ansible_host)")]}),
    ("a POP's own management address is not its own control plane",
     [pop("ansible_host", "192.0.2.201", "pop-ams1"), pop("ansible_host", "192.0.2.202")], None,
     {"pop-ams1": [("10.0.0.2/32", "tunnel address of POP pop-fra1"),
                   ("172.16.1.1/32", "BGP neighbour upstream of pop-ams1"),
                   ("192.0.2.202/32", "management address of POP pop-fra1 (ansible_host)")],
      "pop-fra1": [("10.0.0.1/32", "tunnel address of POP pop-ams1"),
                   ("192.0.2.201/32", "management address of POP pop-ams1 (ansible_host)")]}),
    ("an invalid neighbour address is a problem of its own, not a source",
     [nbr("address", "172.16.1.300")], None, None),
]


@pytest.mark.parametrize("mutations, monitoring, expected", [case[1:] for case in CONTROL_PLANE_CASES],
                         ids=[case[0] for case in CONTROL_PLANE_CASES])
def test_the_control_plane_is_derived_per_pop(mutations, monitoring, expected):
    problems, found, derived = control_plane(mutations, monitoring)
    if expected is None:
        assert problems and all("anycast_edge_bgp_neighbors[0].address" in line for line in problems)
        assert ("172.16.1.300/32", "BGP neighbour upstream of pop-ams1") not in derived["pop-ams1"]
        return
    assert problems == []
    assert derived == expected


def test_the_backends_are_no_control_plane_source():
    """Their traffic to a POP is IPIP to its tunnel address, which no ban or limit applies to;
    exempting them would only give a spoofer more unlimited source addresses."""
    problems, found, derived = control_plane()
    backends = set("%s/32" % hostvars["anycast_edge_tunnel_address"] for hostvars in VALID_BACKENDS.values())
    assert problems == [] and not backends & set(address for items in derived.values() for address, dummy in items)


@pytest.mark.parametrize("value, shown", [(None, "is not set"),
                                          ("prometheus.example.net", "prometheus.example.net is not an IPv4 address")])
def test_a_monitoring_host_without_an_address_is_a_warning(value, shown):
    problems, found, derived = control_plane(monitoring={"mon-1": {"ansible_host": value}})
    assert problems == []
    assert [line for line in found if "mon-1" in line] == [
        "hostvars['mon-1'].ansible_host: %s: the address of monitoring host mon-1 is not known, so the POPs cannot "
        "exempt it from bans and rate limits (set ansible_host to its address, or list the address in "
        "anycast_edge_filters.allow)" % shown]


DENIED_CONTROL_PLANE = [
    ("a denied BGP neighbour", [flt("deny", ["100.64.0.0/10", "172.16.0.0/12"])], None,
     ["anycast_edge_filters.deny[1]: 172.16.0.0/12 covers 172.16.1.1, the BGP neighbour upstream of pop-ams1 "
      "(hostvars['pop-ams1'].anycast_edge_bgp_neighbors[0].address): deny beats the control plane's exemption, "
      "every packet from it would be dropped"]),
    ("a denied POP, said once", [flt("deny", ["10.0.0.2"])], None,
     ["anycast_edge_filters.deny[0]: 10.0.0.2/32 covers 10.0.0.2, the tunnel address of POP pop-fra1 "
      "(hostvars['pop-fra1'].anycast_edge_tunnel_address): deny beats the control plane's exemption, "
      "every packet from it would be dropped"]),
    ("a denied monitoring host", [flt("deny", ["192.0.2.0/24"])], {"mon-1": {"ansible_host": "192.0.2.250"}},
     ["anycast_edge_filters.deny[0]: 192.0.2.0/24 covers 192.0.2.250, the monitoring host mon-1 (ansible_host) "
      "(hostvars['mon-1'].ansible_host): deny beats the control plane's exemption, every packet from it would be dropped"]),
    ("a loopback management address under a loopback deny is no problem (the lab and the example)",
     [flt("deny", ["127.0.0.0/8"]), pop("ansible_host", "127.0.0.1")], {"mon-1": {"ansible_host": "127.0.0.1"}}, []),
]


@pytest.mark.parametrize("mutations, monitoring, expected", [case[1:] for case in DENIED_CONTROL_PLANE],
                         ids=[case[0] for case in DENIED_CONTROL_PLANE])
def test_a_deny_prefix_over_the_control_plane_is_a_problem(mutations, monitoring, expected):
    problems, found, derived = control_plane(mutations, monitoring)
    assert problems == expected


def test_the_example_inventory_derives_each_pops_control_plane(tmp_path):
    proc = run_validation_play(EXAMPLE, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    derived = dict((pop, rules["control_plane"]) for pop, rules in rules_files(tmp_path).items())
    assert sorted(derived) == ["pop-ams1", "pop-fra1", "pop-lon1", "pop-nyc1"]
    assert derived["pop-ams1"] == [
        {"address": "10.0.0.2/32", "reason": "tunnel address of POP pop-fra1"},
        {"address": "10.0.0.3/32", "reason": "tunnel address of POP pop-lon1"},
        {"address": "10.0.0.4/32", "reason": "tunnel address of POP pop-nyc1"},
        {"address": "172.16.0.2/32", "reason": "exporter address of POP pop-fra1 (anycast_edge_agent_listen_address)"},
        {"address": "172.16.0.3/32", "reason": "exporter address of POP pop-lon1 (anycast_edge_agent_listen_address)"},
        {"address": "172.16.0.4/32", "reason": "exporter address of POP pop-nyc1 (anycast_edge_agent_listen_address)"},
        {"address": "203.0.113.129/32", "reason": "BGP neighbour transit of pop-ams1"},
        {"address": "203.0.113.202/32", "reason": "management address of POP pop-fra1 (ansible_host)"},
        {"address": "203.0.113.203/32", "reason": "management address of POP pop-lon1 (ansible_host)"},
        {"address": "203.0.113.204/32", "reason": "management address of POP pop-nyc1 (ansible_host)"},
        {"address": "203.0.113.250/32", "reason": "monitoring host mon-1 (ansible_host)"},
    ]
    # another POP's neighbour is not pop-ams1's business, and no POP lists itself
    for host, items in derived.items():
        addresses = [item["address"] for item in items]
        assert len(addresses) == 11 and len(set(addresses)) == 11
        assert sum(item["reason"].startswith("BGP neighbour transit of %s" % host) for item in items) == 1
        assert not [item for item in items if host + " " in item["reason"] + " " and "BGP" not in item["reason"]]


def test_the_lab_inventory_derives_the_upstream_and_the_other_pop(tmp_path):
    """The lab's ansible_host is 127.0.0.1 for every VM (forwarded SSH): no management address. Its
    fleet sync routes NATS over the uplinks: each POP exempts the other's NATS address."""
    proc = run_validation_play(EXAMPLE.parent / "lab", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    derived = dict((pop, rules["control_plane"]) for pop, rules in rules_files(tmp_path).items())
    assert derived == {
        "pop1": [{"address": "10.0.0.2/32", "reason": "tunnel address of POP pop2"},
                 {"address": "172.16.1.1/32", "reason": "BGP neighbour upstream of pop1"},
                 {"address": "172.16.2.2/32", "reason": "NATS address of POP pop2 (anycast_edge_nats_address)"}],
        "pop2": [{"address": "10.0.0.1/32", "reason": "tunnel address of POP pop1"},
                 {"address": "172.16.1.2/32", "reason": "NATS address of POP pop1 (anycast_edge_nats_address)"},
                 {"address": "172.16.2.1/32", "reason": "BGP neighbour upstream of pop2"}],
    }


def test_a_deny_over_the_example_neighbour_stops_the_play(tmp_path):
    inventory = tmp_path / "inventory"
    shutil.copytree(EXAMPLE, inventory)
    all_vars = yaml.safe_load((inventory / "group_vars" / "all.yml").read_text())
    all_vars["anycast_edge_filters"]["deny"].append("203.0.113.128/30")
    (inventory / "group_vars" / "all.yml").write_text(yaml.safe_dump(all_vars))
    proc = run_validation_play(inventory, tmp_path)
    assert proc.returncode != 0
    assert ("\nanycast_edge_filters.deny[6]: 203.0.113.128/30 covers 203.0.113.129, the BGP neighbour transit of "
            "pop-ams1 (hostvars['pop-ams1'].anycast_edge_bgp_neighbors[0].address): deny beats the control plane's "
            "exemption, every packet from it would be dropped\n") in proc.stdout, proc.stdout + proc.stderr
    assert not list(tmp_path.glob("*.json"))


def test_payload_rules_are_normalized_and_reach_edge_rules():
    inventory = copy.deepcopy((VALID_VARS, VALID_POPS, VALID_BACKENDS))
    inventory[0][FILTERS]["rules"] = [{"action": "drop", "protocol": "udp", "dst_port": 27015,
                                       "payload": {"value": "FF FF FF FF 71"}}]
    problems, normalized = _inventory.check(*inventory)
    assert problems == []
    rule = {"action": "drop", "protocol": "udp", "dst_port": [27015, 27015],
            "payload": {"offset": 0, "value": "ffffffff71", "mask": "ffffffffff"}}
    assert normalized[FILTERS]["rules"] == [rule]
    assert _inventory.resolve_rules(normalized)["payload_rules"] == [rule]
