# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Python side of the TC mapper's map ABI (bpf/include/mapper_abi.h).

The C header is the one definition of every layout. This module only says how to pack and
unpack those structs; tests/bpf/test_mapper_abi.py reads the compiled object's BTF and fails
if any size, member offset or enum value here disagrees with it.

Addresses and ports are packed as raw network-order bytes, exactly as the C side keeps them;
flags, times and counters are native (little-endian) integers.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import socket
import struct

from ansible_collections.anycast.edge.plugins.module_utils._edge_abi import unpack_counters as sum_per_cpu

# enum mapper_reason, in order. The exporter and the tests use these names.
REASONS = (
    "ingress_pass",
    "ingress_learned",
    "ingress_unknown_pop",
    "ingress_fragment",
    "ingress_malformed",
    "egress_pass",
    "egress_mapped",
    "egress_defaulted",
    "egress_unmapped",
    "egress_dsr",
    "egress_malformed",
    "egress_error",
    "ingress_wrong_device",
)
REASON_INDEX = dict((name, index) for index, name in enumerate(REASONS))

IPPROTO = {"tcp": 6, "udp": 17, "icmp": 1}

SERVICE_F_DSR = 1 << 0
F_FIB_NEXT_HOP = 1 << 0          # mapper_config.flags

MAX_POPS = 256
MAX_SERVICES = 1024
MAX_FLOWS = 262144
DEFAULT_IDLE_NS = 120 * 10**9

# Program and map names in build/tc_mapper.o.
INGRESS_PROGRAM = "tc_mapper_ingress"
EGRESS_PROGRAM = "tc_mapper_egress"
MAPS = ("mapper_config", "mapper_pops", "mapper_services", "mapper_flows", "mapper_stats")

# struct layouts ('<' = the BPF target's little-endian byte order, no implicit padding)
MAPPER_COUNTER = struct.Struct("<QQ")            # struct mapper_counter
MAPPER_CONFIG = struct.Struct("<Q4s4s6sH")       # struct mapper_config
POP_KEY = struct.Struct("<4s")                   # mapper_pops key: __be32
POP_VALUE = struct.Struct("<I")                  # struct mapper_pop_value
SERVICE_KEY = struct.Struct("<4s2sBx")           # struct mapper_service_key
SERVICE_VALUE = struct.Struct("<I")              # struct mapper_service_value
FLOW_KEY = struct.Struct("<4s4s2s2sB3x")         # struct mapper_flow_key
FLOW_VALUE = struct.Struct("<4s4xQ")             # struct mapper_flow_value
U32 = struct.Struct("<I")                        # array indexes

# Each map's (key size, value size) as Python packs them; tests/bpf/test_mapper_abi.py checks
# them against the compiled object.
MAP_SIZES = {
    "mapper_config": (U32.size, MAPPER_CONFIG.size),
    "mapper_pops": (POP_KEY.size, POP_VALUE.size),
    "mapper_services": (SERVICE_KEY.size, SERVICE_VALUE.size),
    "mapper_flows": (FLOW_KEY.size, FLOW_VALUE.size),
    "mapper_stats": (U32.size, MAPPER_COUNTER.size),
}

# name of the C struct -> (Struct, member names in order); what the BTF test checks
LAYOUTS = {
    "mapper_counter": (MAPPER_COUNTER, ("packets", "bytes")),
    "mapper_config": (MAPPER_CONFIG, ("idle_ns", "tunnel_addr", "default_pop", "gateway_mac", "flags")),
    "mapper_pop_value": (POP_VALUE, ("ifindex",)),
    "mapper_service_key": (SERVICE_KEY, ("addr", "port", "proto", "pad")),
    "mapper_service_value": (SERVICE_VALUE, ("flags",)),
    "mapper_flow_key": (FLOW_KEY, ("player_addr", "service_addr", "player_port", "service_port", "proto", "pad")),
    "mapper_flow_value": (FLOW_VALUE, ("pop_addr", "pad", "last_seen_ns")),
}


def ipv4(address):
    """Raw network-order bytes of a dotted-quad address ("" or None: 0.0.0.0, i.e. unset)."""
    return socket.inet_aton(address) if address else bytes(4)


def port(number):
    """Raw network-order bytes of a port number."""
    return struct.pack("!H", number)


def mac(address):
    """Six raw bytes of "aa:bb:cc:dd:ee:ff" ("" or None: all zero, i.e. unset)."""
    if not address:
        return bytes(6)
    octets = address.split(":")
    if len(octets) != 6:
        raise ValueError("not a MAC address: %r" % address)
    return bytes(int(octet, 16) for octet in octets)


def pack_config(tunnel_addr, default_pop=None, idle_ns=0, gateway_mac=None, fib_next_hop=False):
    """struct mapper_config: this host's tunnel address, the default POP (None: keep the
    kernel's choice), the idle time (0: the program's default), the DSR gateway MAC (None: ask
    the FIB) and whether steered replies get their next hop from the FIB."""
    flags = F_FIB_NEXT_HOP if fib_next_hop else 0
    return MAPPER_CONFIG.pack(idle_ns, ipv4(tunnel_addr), ipv4(default_pop), mac(gateway_mac), flags)


def pack_pop_key(address):
    return POP_KEY.pack(ipv4(address))


def pack_pop_value(ifindex):
    """struct mapper_pop_value: the device (ifindex) this POP's IPIP must arrive on."""
    return POP_VALUE.pack(ifindex)


def unpack_pop_value(raw):
    """The POP's device (ifindex)."""
    return POP_VALUE.unpack(raw)[0]


def pack_service_key(proto, address, port_number):
    return SERVICE_KEY.pack(ipv4(address), port(port_number), IPPROTO.get(proto, proto))


def pack_service_value(dsr=False):
    return SERVICE_VALUE.pack(SERVICE_F_DSR if dsr else 0)


def pack_flow_key(proto, player_addr, player_port, service_addr, service_port):
    return FLOW_KEY.pack(ipv4(player_addr), ipv4(service_addr), port(player_port), port(service_port),
                         IPPROTO.get(proto, proto))


def unpack_flow_key(raw):
    """(proto number, player address, player port, service address, service port)."""
    player, service, player_port, service_port, proto = FLOW_KEY.unpack(raw)
    return (proto, socket.inet_ntoa(player), struct.unpack("!H", player_port)[0],
            socket.inet_ntoa(service), struct.unpack("!H", service_port)[0])


def pack_flow_value(pop_addr, last_seen_ns):
    return FLOW_VALUE.pack(ipv4(pop_addr), last_seen_ns)


def unpack_flow_value(raw):
    """(POP tunnel address, last seen in monotonic ns)."""
    pop_addr, last_seen_ns = FLOW_VALUE.unpack(raw)
    return socket.inet_ntoa(pop_addr), last_seen_ns


def unpack_counters(per_cpu_values):
    """Sum a per-CPU mapper_stats value (list of raw per-CPU values) into (packets, bytes): the
    POP's summing (_edge_abi.unpack_counters) with the mapper's layout."""
    return sum_per_cpu(per_cpu_values, MAPPER_COUNTER)
