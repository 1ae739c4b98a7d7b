# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Python side of the XDP edge program's map ABI (bpf/include/edge_abi.h).

The C header is the one definition of every layout. This module only says how to pack
and unpack those structs; tests/bpf/test_abi.py reads the compiled object's BTF and fails
if any size, member offset or enum value here disagrees with it.

Addresses and ports are packed as raw network-order bytes, exactly as the C side keeps
them; prefix lengths, ids, limits and times are native (little-endian) integers.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import socket
import struct

# enum edge_reason, in order. The exporter and the tests use these names.
REASONS = (
    "pass_non_ip",
    "pass_not_ours",
    "pass_too_big",
    "pass_no_neigh",
    "drop_malformed",
    "drop_deny",
    "drop_banned",
    "drop_no_service",
    "drop_fragment",
    "drop_ip_options",
    "drop_rate_limit",
    "drop_bad_cookie",
    "drop_bad_return",
    "drop_ttl",
    "drop_no_route",
    "drop_error",
    "tx_forward",
    "tx_punched",
    "tx_return",
    "tx_a2s_challenge",
    "tx_a2s_cached",
    "tx_icmp_too_big",
    "pass_local",
    "drop_bad_tunnel",
    "drop_own_source",
    "drop_icmp_type",
    "drop_unverified",
    "drop_rule",
    "tx_syn_auth",
    "drop_syn_auth_verified",
    "drop_tcp_unverified",
    "drop_handshake",
    "drop_handshake_unacked",
    "tx_forward_wireguard",
    "drop_forged_handoff",
)
REASON_INDEX = dict((name, index) for index, name in enumerate(REASONS))

# enum edge_proto_class
PROTO_CLASSES = ("tcp", "udp", "icmp", "other")
IPPROTO = {"tcp": 6, "udp": 17, "icmp": 1}

# enum edge_allow_origin: bits of an edge_allow_v4 value (why the source is exempt), in order.
ALLOW_ORIGINS = ("operator", "control_plane")
ALLOW_OPERATOR = 1 << 0
ALLOW_CONTROL_PLANE = 1 << 1

# enum edge_game_protocol: the inventory names of a service's game_protocol, in order.
GAME_PROTOCOLS = ("none", "source", "goldsrc", "minecraft")
# The transport each game protocol runs on: a service may name only a game protocol of its own
# protocol (source, goldsrc: UDP handshakes; minecraft: the TCP handshake validator, mc_proto.h).
GAME_PROTOCOL_TRANSPORT = {"source": "udp", "goldsrc": "udp", "minecraft": "tcp"}
# enum edge_attack_mode: the inventory names of a service's attack_mode, in order.
ATTACK_MODES = ("auto", "always", "never")
# enum edge_syn_auth_mode: the inventory names of a TCP service's syn_auth, in order.
SYN_AUTH_MODES = ("auto", "always", "never")
# enum edge_verify_proof: how a source proved it owns its address (edge_verify_stats), in order.
VERIFY_PROOFS = ("none", "cookie", "handshake", "punch", "syn_auth")

SERVICE_F_A2S_CACHE = 1 << 0
SERVICE_F_A2S_SNOOP = 1 << 1

A2S_CACHE_MAX_PAYLOAD = 1400
MAX_SERVICES = 1024                                    # EDGE_MAX_SERVICES
MAX_BACKENDS = 1024                                    # EDGE_MAX_BACKENDS
MAX_PREFIXES = 1100000                                 # EDGE_MAX_PREFIXES (edge_allow_v4, edge_deny_v4, each)
MAX_ANYCAST = 256                                      # EDGE_MAX_ANYCAST
MAX_PUNCHES = 262144                                   # EDGE_MAX_PUNCHES
MAX_TX_PORTS = 64                                      # EDGE_MAX_TX_PORTS

# enum a2s_kind: the queries answered from the cache, one edge_a2s_cache entry each per service.
A2S_KINDS = ("info", "player", "rules")
A2S_CACHE_KEY_KIND_SHIFT = 16                          # A2S_CACHE_KEY_KIND_SHIFT
A2S_CACHE_MAX_ENTRIES = MAX_SERVICES * len(A2S_KINDS)  # A2S_CACHE_MAX_ENTRIES

# struct layouts ('<' = the BPF target's little-endian byte order, no implicit padding)
EDGE_COUNTER = struct.Struct("<QQ")                   # struct edge_counter
RATE_LIMIT = struct.Struct("<QQ")                     # struct edge_rate_limit
EDGE_CONFIG = struct.Struct("<4sIQQ2Q" + "QQ" * len(PROTO_CLASSES) + "2QqQI4x")  # struct edge_config
SERVICE_KEY = struct.Struct("<4s2sBx")                # struct service_key
SERVICE_VALUE = struct.Struct("<I4sIIQQQQIII4x")      # struct service_value
LPM_V4_KEY = struct.Struct("<I4s")                    # struct lpm_v4_key
LPM_V6_KEY = struct.Struct("<I16s")                   # struct lpm_v6_key
U32 = struct.Struct("<I")                             # map values that are a plain __u32
BE32 = struct.Struct("<4s")                           # __be32 keys (edge_backends, edge_sources)
BACKEND_VALUE = struct.Struct("<I")                   # struct backend_value
IFACE_VALUE = struct.Struct("<I4x")                   # struct iface_value (edge_tunnel_ifaces)
IFACE_F_IPIP = 1 << 0                                 # EDGE_IFACE_F_IPIP
WIREGUARD_PAIR = struct.Struct("<II")                 # struct wireguard_pair (edge_wireguard_pairs, by backend)
# The uplink's TC program that redirects the handoffs to the pairs' devices, and the program it
# must sit behind (tc_program attaches it only there; xdp_program refuses to
# detach that one while it is attached).
WIREGUARD_REDIRECT_PROGRAM = "tc_wireguard_redirect"
EDGE_PROGRAM = "xdp_edge"
# struct edge_wireguard_handoff (the frame's Ethernet addresses): no map holds it, so it is not in the
# object's BTF; tests/bpf/test_wireguard_forward.py compares the program's frames with this packing.
WG_HANDOFF = struct.Struct("<6s2x4s")   # destination, (zero padding), the backend's tunnel address
WG_HANDOFF_DEST = bytes((0x02, 0xAE, 0x77, 0x67, 0x00, 0x00))  # EDGE_WG_HANDOFF_DEST
MAX_IFINDEX = 65536                                   # EDGE_MAX_IFINDEX
MAX_OWN_ADDRS = 64                                    # EDGE_MAX_OWN_ADDRS
OWN_ADDRS = struct.Struct("<I4x%ds" % (4 * MAX_OWN_ADDRS))  # struct own_addrs (edge_own_addrs[0])
PUNCH_KEY = struct.Struct("<4s4s2s2sB3x")             # struct punch_key
PUNCH_VALUE = struct.Struct("<Q")                     # struct punch_value
A2S_CACHE_ENTRY = struct.Struct("<QII%ds" % A2S_CACHE_MAX_PAYLOAD)  # struct a2s_cache_entry
SERVICE_COUNTER = struct.Struct("<QQQQ")              # struct service_counter
A2S_COUNTER = struct.Struct("<QQQ")                   # struct a2s_counter (edge_a2s_stats, by enum a2s_kind)
SRC_FILTER_ENTRY = struct.Struct("<QQQQ")             # struct src_filter_entry
SRC_HOSTS_KEY = struct.Struct("<II")                  # struct src_hosts_key
SRC_HOSTS_VALUE = struct.Struct("<QQQQ")              # struct src_hosts_value

MAX_SOURCES = 524288                                  # EDGE_MAX_SOURCES
VERIFIED_SLOTS = 2                                    # EDGE_VERIFIED_SLOTS
MAX_PAYLOAD_RULES = 256                               # EDGE_MAX_PAYLOAD_RULES
SOURCE_VERIFICATION = struct.Struct("<IIQ")           # struct source_verification
SOURCE_STATE = struct.Struct("<QQQQI4xQQ" + "IIQ" * VERIFIED_SLOTS + "IIQ")  # struct source_state
ADMISSION_BUCKET = struct.Struct("<QQQQQQQQ")           # struct admission_bucket
ATTACK_STATE = struct.Struct("<I4xQ")                 # struct attack_state
U64 = struct.Struct("<Q")                             # map values that are a plain __u64

# Payload rules (anycast_edge_filters.rules): struct payload_rule, two banks of MAX_PAYLOAD_RULES.
RULE_ACTIONS = ("end", "drop", "pass", "limit")       # enum edge_rule_action, in order
RULE_VERIFIED = ("any", "verified", "unverified")     # enum edge_rule_verified, in order
PAYLOAD_RULE_BANKS = 2                                # EDGE_PAYLOAD_RULE_BANKS
RULE_PAYLOAD_MAX = 16                                 # EDGE_RULE_PAYLOAD_MAX
MAX_RULE_LIMITS = 65536                               # EDGE_MAX_RULE_LIMITS
PAYLOAD_RULE = struct.Struct("<BBBBBBBBHHHHHHH2xQQ16s16s")      # struct payload_rule
PAYLOAD_RULE_BANK = struct.Struct("<I4x")             # struct payload_rule_bank
RULE_LIMIT_KEY = struct.Struct("<4sIH2x")             # struct rule_limit_key
RULE_LIMIT_VALUE = struct.Struct("<QQ")               # struct rule_limit_value
MAX_MC_FLOWS = 65536                                  # EDGE_MAX_MC_FLOWS
MC_FLOW_KEY = struct.Struct("<4s4s2s2s")              # struct mc_flow_key (edge_mc_flows)
MC_FLOW_VALUE = struct.Struct("<QQII")               # struct mc_flow_value
MC_FLOW_SYN_ACKED = 1 << 32                           # MC_FLOW_SYN_ACKED: mc_flow_value.syn_acked's flag

SRC_FILTER_ENTRIES = 1 << 18                          # EDGE_SRC_FILTER_ENTRIES
SRC_NETS_PER_ENTRY = 64                               # EDGE_SRC_NETS_PER_ENTRY: a bit per /24 in each word
NEXT_HOP_CACHE_ENTRY = struct.Struct("<Q4s4sII6s6sHBx")  # struct next_hop_cache_entry
NEXT_HOP_CACHE_NS = 100 * 1000 * 1000                 # EDGE_NEXT_HOP_CACHE_NS

# The capacity (max_entries, edge_maps.h) of every map Python sizes, fills or checks against;
# tests/bpf/test_abi.py compares each with the compiled object.
MAP_CAPACITY = {
    "edge_config": 1,
    "edge_services": MAX_SERVICES,
    "edge_anycast_v4": MAX_ANYCAST,
    "edge_backends": MAX_BACKENDS,
    "edge_wireguard_pairs": MAX_BACKENDS,
    "edge_tunnel_ifaces": MAX_IFINDEX,
    "edge_own_addrs": 1,
    "edge_allow_v4": MAX_PREFIXES,
    "edge_deny_v4": MAX_PREFIXES,
    "edge_src_filter": SRC_FILTER_ENTRIES,
    "edge_src_hosts": MAX_PREFIXES,
    "edge_dst_pass": SRC_FILTER_ENTRIES,
    "edge_punches": MAX_PUNCHES,
    "edge_a2s_cache": A2S_CACHE_MAX_ENTRIES,
    "edge_a2s_stats": len(A2S_KINDS),
    "edge_reason_stats": len(REASONS),
    "edge_service_stats": MAX_SERVICES,
    "edge_next_hops": MAX_SERVICES,
    "edge_tx_ports": MAX_TX_PORTS,
    "edge_sources": MAX_SOURCES,
    "edge_admission": MAX_SERVICES,
    "edge_attack_state": MAX_SERVICES,
    "edge_verify_stats": len(VERIFY_PROOFS),
    "edge_payload_rules": PAYLOAD_RULE_BANKS * MAX_PAYLOAD_RULES,
    "edge_payload_rule_bank": 1,
    "edge_payload_rule_stats": MAX_PAYLOAD_RULES,
    "edge_rule_limits": MAX_RULE_LIMITS,
    "edge_mc_flows": MAX_MC_FLOWS,
}

# name of the C struct -> (Struct, member names in order); what the BTF test checks
LAYOUTS = {
    "edge_counter": (EDGE_COUNTER, ("packets", "bytes")),
    "edge_rate_limit": (RATE_LIMIT, ("packets_per_sec", "bytes_per_sec")),
    "edge_config": (EDGE_CONFIG, ("tunnel_addr", "ban_sec", "punch_idle_ns", "cookie_epoch_ns",
                                  "cookie_key", "limits", "cookie_key_previous",
                                  "cookie_tai_offset_ns", "verified_idle_ns", "nr_cpus", "pad")),
    "service_key": (SERVICE_KEY, ("addr", "port", "proto", "pad")),
    "service_value": (SERVICE_VALUE, ("id", "backend_addr", "flags", "a2s_max_age_ms", "limit", "admission",
                                      "game_protocol", "attack_mode", "syn_auth", "pad")),
    "source_verification": (SOURCE_VERIFICATION, ("service_id", "proof", "active_ns")),
    "source_state": (SOURCE_STATE, ("ban_until_ns", "last_seen_ns", "packets", "bytes", "window", "pad",
                                    "window_packets", "window_bytes", "verified", "challenge_service_id",
                                    "server_challenge", "challenge_ns")),
    "admission_bucket": (ADMISSION_BUCKET, ("refilled_ns", "packet_tokens", "byte_tokens", "unverified_packets",
                                            "unverified_bytes", "admitted_packets", "dropped_packets",
                                            "verified_packets")),
    "attack_state": (ATTACK_STATE, ("under_attack", "pad", "since_ns")),
    "lpm_v4_key": (LPM_V4_KEY, ("prefixlen", "addr")),
    "lpm_v6_key": (LPM_V6_KEY, ("prefixlen", "addr")),
    "backend_value": (BACKEND_VALUE, ("flags",)),
    "iface_value": (IFACE_VALUE, ("flags", "pad")),
    "wireguard_pair": (WIREGUARD_PAIR, ("ifindex", "mtu")),
    "own_addrs": (OWN_ADDRS, ("count", "pad", "addrs")),
    "punch_key": (PUNCH_KEY, ("service_addr", "remote_addr", "service_port", "remote_port", "proto", "pad")),
    "punch_value": (PUNCH_VALUE, ("last_seen_ns",)),
    "a2s_cache_entry": (A2S_CACHE_ENTRY, ("updated_ns", "len", "payload_csum", "payload")),
    "service_counter": (SERVICE_COUNTER, ("in_packets", "in_bytes", "out_packets", "out_bytes")),
    "a2s_counter": (A2S_COUNTER, ("challenges", "cached", "bad_cookie")),
    "src_filter_entry": (SRC_FILTER_ENTRY, ("deny_all", "deny_some", "allow_all", "allow_some")),
    "src_hosts_key": (SRC_HOSTS_KEY, ("net24", "list")),
    "src_hosts_value": (SRC_HOSTS_VALUE, ("bits",)),
    "payload_rule": (PAYLOAD_RULE, ("action", "proto", "verified", "payload_len", "ttl_min", "ttl_max",
                                    "tcp_flags_mask", "tcp_flags_value", "dport_min", "dport_max", "sport_min",
                                    "sport_max", "len_min", "len_max", "payload_offset", "pad", "limit_pps",
                                    "limit_bps", "payload_value", "payload_mask")),
    "payload_rule_bank": (PAYLOAD_RULE_BANK, ("bank", "pad")),
    "rule_limit_key": (RULE_LIMIT_KEY, ("saddr", "window", "rule", "pad")),
    "rule_limit_value": (RULE_LIMIT_VALUE, ("packets", "bytes")),
    "mc_flow_key": (MC_FLOW_KEY, ("saddr", "daddr", "sport", "dport")),
    "mc_flow_value": (MC_FLOW_VALUE, ("syn_ns", "syn_acked", "isn", "isn_ambiguous")),
    "next_hop_cache_entry": (NEXT_HOP_CACHE_ENTRY, ("expires_ns", "saddr", "daddr", "ingress_ifindex", "ifindex",
                                                    "smac", "dmac", "fits_len", "tos", "pad")),
}


def ipv4(address):
    """Raw network-order bytes of a dotted-quad address."""
    return socket.inet_aton(address)


def port(number):
    """Raw network-order bytes of a port number."""
    return struct.pack("!H", number)


def pack_config(tunnel_addr, ban_sec=0, punch_idle_ns=0, cookie_epoch_ns=0, cookie_key=(0, 0), limits=None,
                cookie_key_previous=(0, 0), cookie_tai_offset_ns=0, verified_idle_ns=0, nr_cpus=0):
    """struct edge_config. limits: {"tcp": (pps, bps), ...}; missing classes are unlimited.
    cookie_key_previous: the previous key generation, still accepted; (0, 0) for none.
    cookie_tai_offset_ns: the POP's CLOCK_TAI - CLOCK_REALTIME, taken off the cookie clock.
    verified_idle_ns: how long a verified source stays verified without traffic (0: the default).
    nr_cpus: the CPUs the admission budgets are shared among (0 is read as 1)."""
    limits = limits or {}
    flat = []
    for name in PROTO_CLASSES:
        pps, bps = limits.get(name, (0, 0))
        flat.extend((pps, bps))
    return EDGE_CONFIG.pack(ipv4(tunnel_addr), ban_sec, punch_idle_ns, cookie_epoch_ns,
                            cookie_key[0], cookie_key[1],
                            *(flat + [cookie_key_previous[0], cookie_key_previous[1], cookie_tai_offset_ns,
                                      verified_idle_ns, nr_cpus]))


def pack_service_key(proto, address, port_number):
    return SERVICE_KEY.pack(ipv4(address), port(port_number), IPPROTO.get(proto, proto))


def pack_service_value(service_id, backend, flags=0, a2s_max_age_ms=0, limit=(0, 0), admission=(0, 0),
                       game_protocol="none", attack_mode="never", syn_auth="never"):
    """struct service_value. admission: the unverified budget (pps, bps) for the whole POP;
    game_protocol / attack_mode / syn_auth: names of GAME_PROTOCOLS / ATTACK_MODES / SYN_AUTH_MODES."""
    return SERVICE_VALUE.pack(service_id, ipv4(backend), flags, a2s_max_age_ms, limit[0], limit[1],
                              admission[0], admission[1], GAME_PROTOCOLS.index(game_protocol),
                              ATTACK_MODES.index(attack_mode), SYN_AUTH_MODES.index(syn_auth))


def pack_lpm_v4(cidr):
    """LPM key of 'a.b.c.d/len' (address in network order: the byte order Kilimanjaro got wrong)."""
    address, dummy, length = cidr.partition("/")
    return LPM_V4_KEY.pack(int(length) if length else 32, ipv4(address))


def pack_lpm_v6(cidr):
    address, dummy, length = cidr.partition("/")
    return LPM_V6_KEY.pack(int(length) if length else 128, socket.inet_pton(socket.AF_INET6, address))


def pack_punch_key(proto, service_addr, service_port, remote_addr, remote_port):
    return PUNCH_KEY.pack(ipv4(service_addr), ipv4(remote_addr), port(service_port), port(remote_port),
                          IPPROTO.get(proto, proto))


def pack_own_addrs(addresses):
    """struct own_addrs of dotted quads (at most MAX_OWN_ADDRS)."""
    if len(addresses) > MAX_OWN_ADDRS:
        raise ValueError("%d addresses; the program holds at most %d" % (len(addresses), MAX_OWN_ADDRS))
    return OWN_ADDRS.pack(len(addresses), b"".join(ipv4(address) for address in addresses))


def unpack_own_addrs(raw):
    """The dotted quads of a struct own_addrs."""
    count, packed = OWN_ADDRS.unpack(raw)
    return [socket.inet_ntoa(packed[4 * index:4 * index + 4]) for index in range(min(count, MAX_OWN_ADDRS))]


class SourceState(object):
    """struct source_state (an edge_sources value) as plain fields, named as in C except
    byte_count (C's bytes). verified: a list of VERIFIED_SLOTS (service_id, proof, active_ns)
    tuples (service_id 0: a free slot)."""

    __slots__ = ("ban_until_ns", "last_seen_ns", "packets", "byte_count", "window", "window_packets",
                 "window_bytes", "verified", "challenge_service_id", "server_challenge", "challenge_ns")

    def __init__(self, ban_until_ns=0, last_seen_ns=0, packets=0, byte_count=0, window=0, window_packets=0,
                 window_bytes=0, verified=None, challenge_service_id=0, server_challenge=0, challenge_ns=0):
        self.ban_until_ns = ban_until_ns
        self.last_seen_ns = last_seen_ns
        self.packets = packets
        self.byte_count = byte_count
        self.window = window
        self.window_packets = window_packets
        self.window_bytes = window_bytes
        slots = list(verified or [])
        self.verified = slots + [(0, 0, 0)] * (VERIFIED_SLOTS - len(slots))
        self.challenge_service_id = challenge_service_id
        self.server_challenge = server_challenge
        self.challenge_ns = challenge_ns

    def pack(self):
        flat = []
        for slot in self.verified:
            flat.extend(slot)
        return SOURCE_STATE.pack(self.ban_until_ns, self.last_seen_ns, self.packets, self.byte_count, self.window,
                                 self.window_packets, self.window_bytes,
                                 *(flat + [self.challenge_service_id, self.server_challenge, self.challenge_ns]))

    @classmethod
    def unpack(cls, raw):
        fields = SOURCE_STATE.unpack_from(raw)
        slots = [tuple(fields[7 + 3 * index:10 + 3 * index]) for index in range(VERIFIED_SLOTS)]
        tail = fields[7 + 3 * VERIFIED_SLOTS:]
        return cls(*fields[:7], verified=slots, challenge_service_id=tail[0], server_challenge=tail[1],
                   challenge_ns=tail[2])

    def __eq__(self, other):
        return isinstance(other, SourceState) and all(getattr(self, name) == getattr(other, name)
                                                      for name in self.__slots__)

    def __ne__(self, other):
        return not self == other

    def __repr__(self):
        return "SourceState(%s)" % ", ".join("%s=%r" % (name, getattr(self, name)) for name in self.__slots__)


# Byte offsets of the members that readers take from a raw value without unpacking all of it (a
# scan of half a million sources, a key rotation); tests/bpf/test_abi.py checks each against the
# object's BTF, so no reader counts the fields of a format by hand.
MEMBER_OFFSETS = {
    "edge_config": {"ban_sec": 4, "punch_idle_ns": 8, "cookie_key": 24, "cookie_key_previous": 104,
                    "verified_idle_ns": 128},
    "source_state": {"ban_until_ns": 0, "last_seen_ns": 8, "packets": 16, "bytes": 24, "verified": 56},
    "source_verification": {"service_id": 0, "proof": 4, "active_ns": 8},
}
COOKIE_KEY_SIZE = 16                         # edge_config.cookie_key, cookie_key_previous: two __u64
_SOURCE = MEMBER_OFFSETS["source_state"]
SOURCE_BAN_UNTIL = struct.Struct("<%dxQ" % _SOURCE["ban_until_ns"])
SOURCE_COUNTERS = struct.Struct("<%dxQQQ" % _SOURCE["last_seen_ns"])   # last_seen_ns, packets, bytes
# The same members as 64-bit word indexes of a value, for readers that stride over a batch of
# values cast to words: word SOURCE_WORDS * n + SOURCE_WORD["packets"] is the n-th value's packets.
SOURCE_WORDS = SOURCE_STATE.size // 8
SOURCE_WORD = dict((name, offset // 8) for name, offset in _SOURCE.items())
# Each verified slot's words: (service_id | proof << 32, active_ns), slot by slot.
_SLOT = MEMBER_OFFSETS["source_verification"]
SOURCE_SLOT_WORDS = tuple(((_SOURCE["verified"] + slot * SOURCE_VERIFICATION.size + _SLOT["service_id"]) // 8,
                           (_SOURCE["verified"] + slot * SOURCE_VERIFICATION.size + _SLOT["active_ns"]) // 8)
                          for slot in range(VERIFIED_SLOTS))


def config_member(config, name):
    """A member of a packed struct edge_config read in place: an integer, or the 16 raw bytes of
    a cookie key (cookie_key, cookie_key_previous)."""
    offset = MEMBER_OFFSETS["edge_config"][name]
    if name.startswith("cookie_key"):
        return bytes(config[offset:offset + COOKIE_KEY_SIZE])
    return struct.unpack_from("<I" if name == "ban_sec" else "<Q", config, offset)[0]


def payload_csum(payload):
    """Folded 16-bit ones'-complement sum of a payload zero-padded to a multiple of 4, summed
    as little-endian words (memory order on the BPF side), as struct a2s_cache_entry wants."""
    padded = payload + b"\0" * (-len(payload) % 4)
    total = sum(struct.unpack("<%dH" % (len(padded) // 2), padded))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def a2s_cache_key(service_id, kind="info"):
    """edge_abi.h's a2s_cache_key: the edge_a2s_cache key (an integer) of a service's cached reply
    of one kind (a name of A2S_KINDS). The A2S_INFO key is the service id itself."""
    return service_id | (A2S_KINDS.index(kind) << A2S_CACHE_KEY_KIND_SHIFT)


def pack_a2s_cache_key(service_id, kind="info"):
    """The edge_a2s_cache key as the map stores it (a native __u32)."""
    return U32.pack(a2s_cache_key(service_id, kind))


def unpack_a2s_cache_key(raw):
    """(service id, kind name) of an edge_a2s_cache key."""
    key = U32.unpack(raw)[0]
    kind = key >> A2S_CACHE_KEY_KIND_SHIFT
    if kind >= len(A2S_KINDS):
        raise ValueError("edge_a2s_cache key 0x%08x: kind %d is none of %s (written by another program?)"
                         % (key, kind, ", ".join("%d %s" % pair for pair in enumerate(A2S_KINDS))))
    return key & ((1 << A2S_CACHE_KEY_KIND_SHIFT) - 1), A2S_KINDS[kind]


def pack_a2s_cache_entry(payload, updated_ns):
    if not 5 <= len(payload) <= A2S_CACHE_MAX_PAYLOAD:
        raise ValueError("A2S reply payload of %d bytes cannot be cached (5..%d)" % (len(payload), A2S_CACHE_MAX_PAYLOAD))
    return A2S_CACHE_ENTRY.pack(updated_ns, len(payload), payload_csum(payload), payload)


def unpack_counters(per_cpu_values, layout=EDGE_COUNTER):
    """Sum a per-CPU map value (list of raw per-CPU values) into a tuple of totals."""
    totals = None
    for raw in per_cpu_values:
        fields = layout.unpack_from(raw)
        totals = fields if totals is None else tuple(a + b for a, b in zip(totals, fields))
    return totals or layout.unpack(bytes(layout.size))


ANY_PORT = (0, 0xFFFF)            # a payload rule's "any" range of ports and lengths
ANY_TTL = (0, 0xFF)


def pack_payload_rule(action, proto=0, verified="any", dport=ANY_PORT, sport=ANY_PORT, length=ANY_PORT, ttl=ANY_TTL,
                      tcp_flags=(0, 0), payload_offset=0, payload=b"", payload_mask=None, limit=(0, 0)):
    """struct payload_rule. action / verified: names of RULE_ACTIONS / RULE_VERIFIED; proto: an
    IPPROTO name or number (0: any); ranges (min, max) inclusive (the whole range: any); tcp_flags: (mask,
    value); payload: up to RULE_PAYLOAD_MAX bytes compared at payload_offset under payload_mask
    (None: every bit), the value stored masked; limit: (packets/s, bytes/s) of a limit rule."""
    if len(payload) > RULE_PAYLOAD_MAX:
        raise ValueError("%d payload bytes; a rule compares at most %d" % (len(payload), RULE_PAYLOAD_MAX))
    mask = bytes(b"\xff" * len(payload)) if payload_mask is None else bytes(payload_mask)
    if len(mask) != len(payload):
        raise ValueError("payload mask of %d bytes for %d payload bytes" % (len(mask), len(payload)))
    value = bytes(a & b for a, b in zip(payload, mask))
    pad = bytes(RULE_PAYLOAD_MAX - len(payload))
    return PAYLOAD_RULE.pack(RULE_ACTIONS.index(action), IPPROTO.get(proto, proto), RULE_VERIFIED.index(verified),
                             len(payload), ttl[0], ttl[1], tcp_flags[0], tcp_flags[1], dport[0], dport[1],
                             sport[0], sport[1], length[0], length[1], payload_offset, limit[0], limit[1],
                             value + pad, mask + pad)
