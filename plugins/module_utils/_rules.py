# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Inventory rules -> the entries of the POP's rule maps, and the ordered plan that writes them.

Pure Python (standard library + _edge_abi), no kernel access: the edge_rules module reads the
pinned maps, hands their content here, and executes the plan this file returns. Keeping the
plan a pure function lets the unit tests check the write ORDER, which is what keeps the filter
safe while a rule set changes.

The maps converged here (bpf/include/edge_maps.h says who owns which):

    edge_config      one entry: tunnel address, per-protocol limits, ban/punch/cookie settings
    edge_services    (protocol, anycast address, port) -> service id, backend, A2S flags, limit
    edge_anycast_v4  the anycast prefixes this POP claims
    edge_backends    tunnel addresses of the backends (return traffic is accepted only from them)
    edge_wireguard_pairs  the backends whose pair with this POP is WireGuard -> the ifindex and MTU
                     of the pair's device on the POP (edge_rules resolves the device it is given)
    edge_allow_v4    sources that skip bans and rate limits      } the exact prefixes, as a record:
    edge_deny_v4     sources that are dropped (deny beats allow) } XDP reads what is derived from them
                     (an allow entry's value says why it is there: the operator's allow list, the
                     control plane derived from inventory, or both - enum edge_allow_origin)
    edge_src_filter  the deny and allow lists as XDP reads them: a bit per /24, and
    edge_src_hosts   a bitmap per partly listed /24 (derived, see _source_lists)
    edge_dst_pass    the /24s nothing of which is ours: a bit per /24 (derived from the anycast
                     prefixes and the services' addresses, see _source_lists.not_ours_plane)
    edge_payload_rules, edge_payload_rule_bank   the payload rules, two banks and the switch
                     between them (see _payload_rules: the list is swapped whole)

The maps the program fills itself (bans, punches, rate counters, stats) are never written. The
one exception is edge_a2s_cache: a service id's entries (every kind) are deleted when the service owning its id changes (see
plan_writes), so that a cached reply of one game server is never served for another.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import array
import binascii
import collections
import functools
import itertools
import json
import operator
import socket
import struct
import sys
import zlib
from collections.abc import Mapping

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _map_sync
from ansible_collections.anycast.edge.plugins.module_utils import _payload_rules
from ansible_collections.anycast.edge.plugins.module_utils import _source_lists

# Maps edge_rules converges, in the order they are read and reported.
RULE_MAPS = ("edge_config", "edge_services", "edge_anycast_v4", "edge_backends",
             "edge_allow_v4", "edge_deny_v4", "edge_wireguard_pairs")
A2S_CACHE_MAP = "edge_a2s_cache"
# Maps derived from edge_deny_v4 and edge_allow_v4 (what XDP reads of the source lists).
SOURCE_FILTER_MAP = "edge_src_filter"
SOURCE_HOSTS_MAP = "edge_src_hosts"
DERIVED_MAPS = (SOURCE_FILTER_MAP, SOURCE_HOSTS_MAP)
# Derived from edge_anycast_v4 and edge_services: the destinations XDP passes at once (not ours).
DEST_PASS_MAP = "edge_dst_pass"
DEST_PASS_ZERO = bytes(abi.U64.size)
# The payload rules (anycast_edge_filters.rules): a list in two banks, the switch, the hit counters.
PAYLOAD_RULES_MAP = _payload_rules.RULES_MAP
PAYLOAD_RULE_BANK_MAP = _payload_rules.BANK_MAP
PAYLOAD_RULE_HITS_MAP = _payload_rules.HITS_MAP
SOURCE_FILTER_ZERO = bytes(abi.SRC_FILTER_ENTRY.size)
# Written in place through its mmap (_map_sync.write_step): the first run writes up to 262,144
# entries, and every bit of one stands alone (bpf/include/edge_abi.h), so a word seen half
# written reads each /24 as it was or as it will be.
IN_PLACE_MAPS = (SOURCE_FILTER_MAP, DEST_PASS_MAP)

# Service ids index edge_service_stats and edge_a2s_cache: 1..MAX_SERVICES-1 (0 = "none").
MAX_SERVICE_ID = abi.MAX_SERVICES - 1

# Capacity of each map (max_entries in bpf/include/edge_abi.h); checked before any write so a
# too-large rule set fails cleanly instead of half-way through with E2BIG/ENOSPC.
CAPACITY = {
    "edge_services": abi.MAX_SERVICES,
    "edge_anycast_v4": 256,
    "edge_backends": 1024,
    "edge_wireguard_pairs": abi.MAX_BACKENDS,
    "edge_allow_v4": 1100000,
    "edge_deny_v4": 1100000,
}

CONFIG_KEY = abi.U32.pack(0)
LPM_PRESENT = abi.U32.pack(1)          # value of allow/deny/anycast entries (never read by XDP)
# An allow entry's value is a set of enum edge_allow_origin bits; the operator's list is bit 0,
# so an entry of the allow list alone is LPM_PRESENT, as before control-plane sources existed.
ALLOW_OPERATOR = abi.U32.pack(abi.ALLOW_OPERATOR)
BACKEND_VALUE = abi.BACKEND_VALUE.pack(0)
A2S_FLAGS = abi.SERVICE_F_A2S_CACHE | abi.SERVICE_F_A2S_SNOOP

DEFAULT_A2S_MAX_AGE_SEC = 30
_ALL_ONES = 0xFFFFFFFF

# --- players under a spoofed flood: the defaults, in one place ------------------------------
# validate_inventory (_inventory), resolve_rules, the edge_rules module's argument spec and the
# agent's attack-mode controller all read these; the role docs state them and
# tests/unit/test_inventory.py checks that they agree. Why these values: docs/data-plane.md
# ("Attack mode and admission").
#
# A service's game protocol (what is handshake-shaped while it is under attack): none knows no
# handshake, so under attack only verified sources reach it.
DEFAULT_GAME_PROTOCOL = "none"
# auto: the agent decides from the unverified traffic (attack detection below).
DEFAULT_ATTACK_MODE = "auto"
# The POP's budget for a service's unverified traffic while it is under attack. A join costs a
# handful of packets (getchallenge, connect - the A2S queries are answered by the POP itself),
# a connect with a Steam ticket up to ~1,200 bytes: 2,000 packets/s lets a few hundred players
# join per second through one POP - more than a full server reconnecting after a map change -
# while a flood of any size reaches the game server as at most 2,000 packets and 2 MB per
# second per POP. Verified players are never charged.
DEFAULT_ADMISSION = {"packets_per_sec": 2000, "bytes_per_sec": 2000000}
# When the agent puts an `auto` service under attack: unverified packets per second above the
# threshold for enter_after_sec seconds in a row; it leaves after leave_after_sec seconds at or
# below it. Server browsers and joining players make tens to hundreds of unverified packets per
# second for a busy server; the floods this defends against are millions. The long quiet
# period keeps a pulsing flood from toggling the mode, and costs a player nothing (under
# attack, handshakes still pass within the budget).
DEFAULT_ATTACK_DETECTION = {"unverified_packets_per_sec": 5000, "enter_after_sec": 3, "leave_after_sec": 60}
# A verified source stays verified for a service while it sends within this idle time.
DEFAULT_VERIFIED_IDLE_SEC = 600
# SYN authentication of a TCP service (docs/tcp-protection.md): auto - while the service is under
# attack (its attack_mode decides). Off while calm, a new player's first connection costs nothing;
# under a SYN or ACK flood, the first connection of a source costs a round trip and the client's
# SYN retransmission (Linux: a few ms; other stacks: their 1 s timer), and no spoofed segment reaches
# the game server.
DEFAULT_SYN_AUTH = "auto"


class RuleError(ValueError):
    """A parameter that cannot become a map entry; the text names the parameter and the value."""


def default_service_id(name):
    """The id a service gets when the inventory gives none: stable across runs and hosts
    (a CRC of the name, not Python's salted hash()), 1..1023."""
    return zlib.crc32(name.encode("utf-8")) % MAX_SERVICE_ID + 1


# --- parsing (fast: 100,000 prefixes are parsed on every run) ------------------------------

def parse_ipv4(text, where):
    """Raw network-order bytes of a dotted quad; RuleError naming `where` otherwise."""
    try:
        return socket.inet_pton(socket.AF_INET, text)
    except (OSError, TypeError, ValueError, UnicodeError):
        # ValueError: an embedded NUL; UnicodeError: a lone surrogate. Either is no address.
        raise RuleError("%s: %r is not an IPv4 address" % (where, text))


def parse_cidr(text, where):
    """LPM key bytes of 'a.b.c.d/len' (a bare address is a /32). Host bits must be zero: a
    prefix with host bits is almost always a typo for a different prefix."""
    if not isinstance(text, str):
        raise RuleError("%s: %r is not an IPv4 CIDR" % (where, text))
    address, slash, length_text = text.partition("/")
    raw = parse_ipv4(address, where)
    if slash:
        # ASCII digits only: str.isdigit() also takes '²' (int() then fails) and full-width
        # digits (which int() reads).
        if not (length_text.isascii() and length_text.isdigit()) or int(length_text) > 32:
            raise RuleError("%s: %r has no valid prefix length (0..32)" % (where, text))
        length = int(length_text)
    else:
        length = 32
    host_mask = _ALL_ONES >> length
    if int.from_bytes(raw, "big") & host_mask:
        network = socket.inet_ntoa((int.from_bytes(raw, "big") & ~host_mask & _ALL_ONES).to_bytes(4, "big"))
        raise RuleError("%s: %s has host bits set (did you mean %s/%d?)" % (where, text, network, length))
    return abi.LPM_V4_KEY.pack(length, raw)


_HOST_MASKS = [_ALL_ONES >> length for length in range(33)]
# The prefix lengths as the bulk parse reads them: "0".."32" (anything else: the per-item parse).
_PREFIX_LENGTHS = dict((str(length), length) for length in range(33))


# Octet k (0: the first) of the host mask of each prefix length: _HOST_MASK_OCTETS[k][length],
# translation tables for bytes.translate (lengths above 32 map to 0; they are refused before).
_HOST_MASK_OCTETS = [bytes((_HOST_MASKS[length] >> (24 - 8 * octet)) & 0xFF if length <= 32 else 0
                           for length in range(256)) for octet in range(4)]


def _cidr_keys_bulk(cidrs):
    """The LPM keys (packed, concatenated: LPM_V4_KEY.size bytes each, in the order given) of a
    list where every item is a canonical 'a.b.c.d/len' (the role always passes that form), with
    the per-item work done by a few C-level passes: a million prefixes are parsed on every run,
    a no-op run included. Raises (ValueError, ...) on anything unusual; the caller then parses
    item by item to say exactly what is wrong."""
    # Joined with ',' (which no item may hold): the separators must then read ".../," item after
    # item - every ',' is one the join put there, so each item's own separators are exactly
    # ".../" and two wrong items cannot realign into two right ones - and only digits between.
    text = ",".join(cidrs)
    if text.encode("ascii").translate(None, b"0123456789") != b".../," * (len(cidrs) - 1) + b".../":
        raise ValueError("not all items are a.b.c.d/len")
    fields = text.replace(",", "/").split("/")
    addresses = b"".join(map(functools.partial(socket.inet_pton, socket.AF_INET), fields[0::2]))
    # KeyError: an empty length, one above 32 or not in its shortest form (the per-item parse
    # then decides).
    lengths = bytes(map(_PREFIX_LENGTHS.__getitem__, fields[1::2]))
    # Host bits: each address octet against its octet of the host mask, all items at once.
    for octet in range(4):
        if int.from_bytes(addresses[octet::4], "big") & int.from_bytes(lengths.translate(_HOST_MASK_OCTETS[octet]), "big"):
            raise ValueError("host bits set")
    keys = bytearray(abi.LPM_V4_KEY.size * len(cidrs))
    keys[0::8] = lengths   # the length: a little-endian u32 < 256, then the address as given
    for octet in range(4):
        keys[4 + octet::8] = addresses[octet::4]
    return bytes(keys)


def lpm_network(key):
    """The LPM key of the prefix `key` stands for: its address with the bits past the prefix
    length cleared. The kernel's trie compares only the prefix bits: a key with host bits set
    (parse_cidr refuses them, bpftool writes them) takes the node of its prefix - an update
    replaces it, a delete deletes it - and is read back as it was written."""
    length, raw = abi.LPM_V4_KEY.unpack(key)
    network = int.from_bytes(raw, "big") & ~_HOST_MASKS[min(length, 32)] & _ALL_ONES
    return abi.LPM_V4_KEY.pack(length, network.to_bytes(4, "big"))


def keys_with_host_bits(keys):
    """The LPM keys (packed, a list or a dict's keys) whose address has host bits set, in the
    order given: all checked at once with a few C-level passes (the keys edge_rules reads back
    from a million-entry trie), one by one only when some key has them."""
    packed = b"".join(keys)
    lengths = packed[0::8]   # the length: a little-endian u32 < 256 (the kernel refuses > 32)
    if not any(int.from_bytes(packed[4 + octet::8], "big") & int.from_bytes(lengths.translate(_HOST_MASK_OCTETS[octet]), "big")
               for octet in range(4)):
        return []
    return [key for key in keys if lpm_network(key) != key]


def _cidr_entries_bulk(cidrs):
    """cidr_entries for canonical items (see _cidr_keys_bulk)."""
    keys = _cidr_keys_bulk(cidrs)
    size = abi.LPM_V4_KEY.size
    return dict.fromkeys([keys[offset:offset + size] for offset in range(0, len(keys), size)], LPM_PRESENT)


def cidr_entries(cidrs, where):
    """{LPM key: LPM_PRESENT} of a list of CIDRs (duplicates collapse)."""
    if not cidrs:
        return {}
    try:
        return _cidr_entries_bulk(cidrs)
    except (ValueError, OSError, IndexError, KeyError, TypeError):
        pass
    pack = abi.LPM_V4_KEY.pack
    inet_pton = socket.inet_pton
    entries = {}
    for index, text in enumerate(cidrs):
        # Fast path for the common, valid 'a.b.c.d/len' form; anything unusual goes through
        # parse_cidr, which explains what is wrong.
        try:
            address, length_text = text.split("/")
            length = int(length_text)
            raw = inet_pton(socket.AF_INET, address)
            if 0 <= length <= 32 and length_text.isascii() and length_text.isdigit() and not int.from_bytes(raw, "big") & (_ALL_ONES >> length):
                entries[pack(length, raw)] = LPM_PRESENT
                continue
        except (ValueError, OSError, AttributeError, TypeError):
            pass
        entries[parse_cidr(text, "%s[%d]" % (where, index))] = LPM_PRESENT
    return entries


class LpmRecord(Mapping):
    """A large LPM map's entries kept packed - the keys concatenated (LPM_V4_KEY.size bytes each), the
    values too, or one value for all - read-only, as a {key: value} mapping.

    What edge_rules compares a million deny prefixes with: the wanted list parsed in bulk
    (cidr_record) and the trie read back in batches (from_chunks) are compared as two sets of
    64-bit integers (one per key) - no bytes object per entry, no dict - and only when they differ
    does each side become the dict (as_dict) the plan is made from. Duplicates collapse, as in a
    dict; the order of iteration is the order given (the first of duplicates)."""

    def __init__(self, packed_keys, value=None, packed_values=None, distinct=False):
        if len(packed_keys) % abi.LPM_V4_KEY.size:
            raise ValueError("LpmRecord: %d bytes of keys is no whole number of keys" % len(packed_keys))
        count = len(packed_keys) // abi.LPM_V4_KEY.size
        if packed_values is not None and not count:
            packed_values = None
        elif packed_values is not None and packed_values == packed_values[:len(packed_values) // count] * count:
            value, packed_values = packed_values[:len(packed_values) // count], None   # one value for all
        self.packed_keys = bytes(packed_keys)
        self.distinct = distinct   # no key twice (a map's keys): compared without a set of its own
        self.value = value
        self.packed_values = packed_values
        self._key_set = None
        self._dict = None

    @classmethod
    def from_chunks(cls, chunks):
        """The entries of BpfMap.lookup_batch_chunks() ([(count, keys, values)]): a map's, so no key twice."""
        return cls(b"".join(chunk[1] for chunk in chunks), packed_values=b"".join(chunk[2] for chunk in chunks),
                   distinct=True)

    @classmethod
    def from_entries(cls, entries):
        """The entries of a {key: value} dict."""
        return cls(b"".join(entries), packed_values=b"".join(entries.values()))

    def key_set(self):
        """The keys as a set of integers (each key's 8 bytes read as a native u64)."""
        if self._key_set is None:
            self._key_set = set(memoryview(self.packed_keys).cast("Q"))
        return self._key_set

    def as_dict(self):
        """{key: value} (made once)."""
        if self._dict is None:
            size = abi.LPM_V4_KEY.size
            keys = [self.packed_keys[offset:offset + size] for offset in range(0, len(self.packed_keys), size)]
            if self.packed_values is None:
                self._dict = dict.fromkeys(keys, self.value)
            else:
                value_size = len(self.packed_values) // len(keys)
                self._dict = dict(zip(keys, [self.packed_values[offset:offset + value_size]
                                             for offset in range(0, len(self.packed_values), value_size)]))
        return self._dict

    def __len__(self):
        if self.distinct:
            return len(self.packed_keys) // abi.LPM_V4_KEY.size
        return len(self.key_set())

    def _same_keys(self, other):
        """Whether two records hold the same set of keys. A record of distinct keys (the map's) is
        checked key by key against the other's set - as many keys, each of them in it - rather than
        made into a set too."""
        listed, other_set = (other, self) if other.distinct and not self.distinct else (self, other)
        if not listed.distinct:
            return listed.key_set() == other_set.key_set()
        return len(listed) == len(other_set) and all(map(other_set.key_set().__contains__,
                                                         memoryview(listed.packed_keys).cast("Q")))

    def __iter__(self):
        return iter(self.as_dict())

    def __contains__(self, key):
        if not isinstance(key, bytes) or len(key) != abi.LPM_V4_KEY.size:
            return False
        return int.from_bytes(key, sys.byteorder) in self.key_set()

    def __getitem__(self, key):
        if self.packed_values is None:
            if key not in self:
                raise KeyError(key)
            return self.value
        return self.as_dict()[key]

    def keys(self):
        return self.as_dict().keys()

    def items(self):
        return self.as_dict().items()

    def values(self):
        return self.as_dict().values()

    def __eq__(self, other):
        if isinstance(other, LpmRecord):
            if self.packed_keys == other.packed_keys and (self.value, self.packed_values) == (other.value, other.packed_values):
                return True
            if self.packed_values is None and other.packed_values is None:
                # One value each: the same value and the same set of keys (or both empty).
                return self._same_keys(other) and (self.value == other.value or not len(self))
            return self.as_dict() == other.as_dict()
        if isinstance(other, Mapping):
            return self.as_dict() == dict(other.items())
        return NotImplemented

    def __ne__(self, other):
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None


def cidr_record(cidrs, where):
    """cidr_entries as an LpmRecord (the keys parsed in bulk, never one bytes object per entry)."""
    try:
        return LpmRecord(_cidr_keys_bulk(cidrs) if cidrs else b"", value=LPM_PRESENT)
    except (ValueError, OSError, IndexError, KeyError, TypeError):
        return LpmRecord.from_entries(cidr_entries(cidrs, where))


def settle_records(present, desired):
    """Turn the LpmRecords of `present` and `desired` ({map name: entries}, changed in place) into
    dicts, but for a map whose two sides are equal records: compare() and plan_writes() then find
    no change in it at the cost of the set comparison alone, and a map that differs is planned
    entry by entry, from dicts, exactly as before."""
    for name in set(present).union(desired):
        have, want = present.get(name), desired.get(name)
        if not isinstance(have, LpmRecord) and not isinstance(want, LpmRecord):
            continue
        if isinstance(have, LpmRecord) and isinstance(want, LpmRecord) and have == want:
            continue
        if isinstance(have, LpmRecord):
            present[name] = have.as_dict()
        if isinstance(want, LpmRecord):
            desired[name] = want.as_dict()


# --- rendering (diff output, reports) -------------------------------------------------------

def render_lpm(key):
    length, raw = abi.LPM_V4_KEY.unpack(key)
    return "%s/%d" % (socket.inet_ntoa(raw), length)


def render_service_key(key):
    raw, port_raw, proto = abi.SERVICE_KEY.unpack(key)
    proto_name = dict((number, name) for name, number in abi.IPPROTO.items()).get(proto, str(proto))
    if proto_name == "icmp":
        return "icmp %s" % socket.inet_ntoa(raw)
    return "%s %s:%d" % (proto_name, socket.inet_ntoa(raw), struct.unpack("!H", port_raw)[0])


def render_service_value(value):
    service_id, backend, flags, max_age_ms, pps, bps = abi.SERVICE_VALUE.unpack(value)[:6]
    text = "id %d -> backend %s" % (service_id, socket.inet_ntoa(backend))
    flag_names = [name for bit, name in ((abi.SERVICE_F_A2S_CACHE, "a2s_cache"), (abi.SERVICE_F_A2S_SNOOP, "a2s_snoop"))
                  if flags & bit]
    if flag_names:
        text += " " + ",".join(flag_names)
    if flags & abi.SERVICE_F_A2S_CACHE:
        text += " max_age %gs" % (max_age_ms / 1000.0)
    if pps or bps:
        text += " limit %s pps / %s Bps" % (pps or "-", bps or "-")
    return text + render_attack_fields(value)


def render_config(value):
    fields = abi.EDGE_CONFIG.unpack(value)
    tunnel, ban_sec, punch_idle_ns, cookie_epoch_ns, key0, key1 = fields[:6]
    limits = fields[6:6 + 2 * len(abi.PROTO_CLASSES)]
    previous0, previous1, tai_offset_ns, verified_idle_ns, nr_cpus = \
        fields[6 + 2 * len(abi.PROTO_CLASSES):11 + 2 * len(abi.PROTO_CLASSES)]
    lines = [
        "tunnel_address %s" % socket.inet_ntoa(tunnel),
        "ban_sec %d" % ban_sec,
        "punch_idle_sec %g" % (punch_idle_ns / 1e9),
        "a2s_cookie_epoch_sec %g" % (cookie_epoch_ns / 1e9),
        # The keys are secrets: say only whether they are set.
        "cookie_key current %s" % ("(set)" if key0 or key1 else "(unset)"),
        "cookie_key previous %s" % ("(set)" if previous0 or previous1 else "(unset)"),
        "cookie_tai_offset_sec %g" % (tai_offset_ns / 1e9),
        "verified_idle_sec %g" % (verified_idle_ns / 1e9),
        "nr_cpus %d" % nr_cpus,
    ]
    for index, name in enumerate(abi.PROTO_CLASSES):
        pps, bps = limits[2 * index], limits[2 * index + 1]
        lines.append("rate_limit %s %s pps / %s Bps" % (name, pps or "-", bps or "-"))
    return lines


def render_allow(key, value, reasons=None):
    """An edge_allow_v4 entry, saying when it is exempt as a control-plane source (and why, when
    `reasons` {key: reason} knows: the record in the map keeps only the label)."""
    text = render_lpm(key)
    origins = abi.U32.unpack(value)[0]
    if origins & abi.ALLOW_CONTROL_PLANE:
        reason = (reasons or {}).get(key)
        text += " (%scontrol plane%s)" % ("allow list; " if origins & abi.ALLOW_OPERATOR else "",
                                          ": " + reason if reason else "")
    return text


def render_entry(map_name, key, value, service_names=None, reasons=None):
    """One map entry as a line a human reads in --diff output (reasons: {allow key: why it is a
    control-plane source})."""
    if map_name == "edge_allow_v4":
        return render_allow(key, value, reasons)
    if map_name in ("edge_anycast_v4", "edge_deny_v4"):
        return render_lpm(key)
    if map_name == "edge_backends":
        return socket.inet_ntoa(key)
    if map_name == "edge_wireguard_pairs":
        return "%s over WireGuard: device ifindex %d, mtu %d" % ((socket.inet_ntoa(key),) + abi.WIREGUARD_PAIR.unpack(value))
    if map_name == "edge_services":
        name = (service_names or {}).get(key)
        prefix = (name + ": ") if name else ""
        return prefix + render_service_key(key) + " " + render_service_value(value)
    if map_name == A2S_CACHE_MAP:
        return "cached %s reply of service id %d" % tuple(reversed(abi.unpack_a2s_cache_key(key)))
    return "%s %s" % (key.hex(), value.hex())


# --- desired entries --------------------------------------------------------------------------

def service_entry(service, index):
    """(service_key, service_value) of one resolved service (edge_rules' services item)."""
    where = "services[%d]" % index
    name = service.get("name") or ""
    protocol = service.get("protocol")
    if protocol not in abi.IPPROTO:
        raise RuleError("%s.protocol: %r is not one of udp, tcp, icmp" % (where, protocol))
    port_number = service.get("port") or 0
    if protocol == "icmp":
        if port_number:
            raise RuleError("%s.port: %r given for an icmp service (icmp has no port)" % (where, port_number))
    elif not 1 <= port_number <= 65535:
        raise RuleError("%s.port: %r is not a port (1..65535)" % (where, port_number))
    service_id = service.get("id")
    if service_id is None:
        service_id = default_service_id(name)
    if not 1 <= service_id <= MAX_SERVICE_ID:
        raise RuleError("%s.id: %r is not in 1..%d" % (where, service_id, MAX_SERVICE_ID))
    address = parse_ipv4(service.get("address"), where + ".address")
    backend = parse_ipv4(service.get("backend_address"), where + ".backend_address")
    a2s_cache = bool(service.get("a2s_cache"))
    a2s_snoop = service.get("a2s_snoop")
    a2s_snoop = a2s_cache if a2s_snoop is None else bool(a2s_snoop)
    if (a2s_cache or a2s_snoop) and protocol != "udp":
        raise RuleError("%s: a2s_cache/a2s_snoop need protocol udp, not %s" % (where, protocol))
    flags = (abi.SERVICE_F_A2S_CACHE if a2s_cache else 0) | (abi.SERVICE_F_A2S_SNOOP if a2s_snoop else 0)
    max_age_ms = 0
    if a2s_cache:
        max_age_sec = service.get("a2s_max_age_sec")
        if max_age_sec is None:
            max_age_sec = DEFAULT_A2S_MAX_AGE_SEC
        if max_age_sec <= 0:
            raise RuleError("%s.a2s_max_age_sec: %r must be > 0" % (where, max_age_sec))
        max_age_ms = int(max_age_sec * 1000)
    limit = rate_limit_pair(service.get("rate_limit"), where + ".rate_limit")
    admission, game_protocol, attack_mode, syn_auth = attack_fields(service, where)
    key = abi.SERVICE_KEY.pack(address, abi.port(port_number), abi.IPPROTO[protocol])
    value = abi.pack_service_value(service_id, socket.inet_ntoa(backend), flags, max_age_ms, limit,
                                   admission, game_protocol, attack_mode, syn_auth)
    return key, value


# --- players under a spoofed flood: what a service and edge_config carry for it ---------------

def admission_pair(admission, where):
    """(packets_per_sec, bytes_per_sec) of a service's admission budget; a field left out (or the
    whole budget) gets DEFAULT_ADMISSION's. Both 0 is allowed (under attack nothing unverified
    passes); one 0 is refused, it would read either as "no budget" or as "no limit"."""
    admission = admission or {}
    pair = []
    for field in ("packets_per_sec", "bytes_per_sec"):
        number = admission.get(field)
        if number is None:
            number = DEFAULT_ADMISSION[field]
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise RuleError("%s.%s: %r must be an integer >= 0" % (where, field, number))
        pair.append(number)
    if (pair[0] == 0) != (pair[1] == 0):
        raise RuleError("%s: %d packets/s and %d bytes/s: give both > 0, or both 0 (nothing unverified passes "
                        "under attack)" % (where, pair[0], pair[1]))
    return tuple(pair)


def attack_fields(service, where):
    """(admission pair, game_protocol, attack_mode, syn_auth) of one resolved service, defaults
    filled in. syn_auth is a TCP service's; any other service is packed with never (XDP reads it
    for TCP only), so its entry never changes with a setting that means nothing for it."""
    game_protocol = service.get("game_protocol") or DEFAULT_GAME_PROTOCOL
    if game_protocol not in abi.GAME_PROTOCOLS:
        raise RuleError("%s.game_protocol: %r is not one of %s" % (where, game_protocol, ", ".join(abi.GAME_PROTOCOLS)))
    if game_protocol != "none" and service.get("protocol") != abi.GAME_PROTOCOL_TRANSPORT[game_protocol]:
        raise RuleError("%s.game_protocol: %s is a %s game protocol, the service is %s"
                        % (where, game_protocol, abi.GAME_PROTOCOL_TRANSPORT[game_protocol], service.get("protocol")))
    attack_mode = service.get("attack_mode") or DEFAULT_ATTACK_MODE
    if attack_mode not in abi.ATTACK_MODES:
        raise RuleError("%s.attack_mode: %r is not one of %s" % (where, attack_mode, ", ".join(abi.ATTACK_MODES)))
    syn_auth = service.get("syn_auth") or DEFAULT_SYN_AUTH
    if syn_auth not in abi.SYN_AUTH_MODES:
        raise RuleError("%s.syn_auth: %r is not one of %s" % (where, syn_auth, ", ".join(abi.SYN_AUTH_MODES)))
    if service.get("protocol") != "tcp":
        syn_auth = "never"
    return admission_pair(service.get("admission"), where + ".admission"), game_protocol, attack_mode, syn_auth


def render_attack_fields(value):
    """The attack settings of a packed service_value, for the diff."""
    admission_pps, admission_bps, game_protocol, attack_mode, syn_auth = abi.SERVICE_VALUE.unpack(value)[6:11]
    text = " game %s attack_mode %s admission %d pps / %d Bps" % (
        abi.GAME_PROTOCOLS[game_protocol] if game_protocol < len(abi.GAME_PROTOCOLS) else game_protocol,
        abi.ATTACK_MODES[attack_mode] if attack_mode < len(abi.ATTACK_MODES) else attack_mode,
        admission_pps, admission_bps)
    if syn_auth != abi.SYN_AUTH_MODES.index("never"):   # never: every non-TCP service, said by its absence
        text += " syn_auth %s" % (abi.SYN_AUTH_MODES[syn_auth] if syn_auth < len(abi.SYN_AUTH_MODES) else syn_auth)
    return text


def verified_idle_ns(verified_idle_sec):
    """edge_config.verified_idle_ns of anycast_edge_verified_idle_sec (> 0; the program reads 0 as
    its own default, so 0 is never written)."""
    if isinstance(verified_idle_sec, bool) or not isinstance(verified_idle_sec, int) or verified_idle_sec <= 0:
        raise RuleError("verified_idle_sec: %r must be an integer > 0" % (verified_idle_sec,))
    return verified_idle_sec * 10**9


def rate_limit_pair(limit, where):
    """(packets_per_sec, bytes_per_sec) of a {packets_per_sec:, bytes_per_sec:} dict; 0 = none."""
    if not limit:
        return (0, 0)
    pair = []
    for field in ("packets_per_sec", "bytes_per_sec"):
        number = limit.get(field)
        if number is None:
            pair.append(0)
            continue
        if number <= 0:
            raise RuleError("%s.%s: %r must be > 0 (omit it for no limit)" % (where, field, number))
        pair.append(int(number))
    return tuple(pair)


def config_value(tunnel_address, rate_limits, ban_sec, punch_idle_sec, cookie_epoch_sec, cookie_key,
                 cookie_key_previous=bytes(16), cookie_tai_offset_ns=0, verified_idle_sec=DEFAULT_VERIFIED_IDLE_SEC,
                 nr_cpus=1):
    """struct edge_config. cookie_key (the generation that issues) and cookie_key_previous (still
    accepted; all zero: none): 16 raw bytes each. cookie_tai_offset_ns: the POP's CLOCK_TAI -
    CLOCK_REALTIME (_a2s_cookie.tai_offset_ns()), which the program takes off its cookie clock.
    nr_cpus: libbpf's possible CPUs on the POP (_bpf.num_possible_cpus()), which the admission
    budgets are shared among."""
    if isinstance(nr_cpus, bool) or not isinstance(nr_cpus, int) or nr_cpus <= 0:
        raise RuleError("nr_cpus: %r must be an integer > 0" % (nr_cpus,))
    if ban_sec < 0:
        raise RuleError("ban_sec: %r must be >= 0" % ban_sec)
    if punch_idle_sec <= 0:
        raise RuleError("punch_idle_sec: %r must be > 0" % punch_idle_sec)
    if cookie_epoch_sec <= 0:
        raise RuleError("a2s_cookie_epoch_sec: %r must be > 0" % cookie_epoch_sec)
    limits = {}
    for name, limit in (rate_limits or {}).items():
        if name not in abi.PROTO_CLASSES:
            raise RuleError("rate_limits.%s: unknown protocol class (tcp, udp, icmp, other)" % name)
        limits[name] = rate_limit_pair(limit, "rate_limits." + name)
    key0, key1 = struct.unpack("<QQ", cookie_key)
    previous0, previous1 = struct.unpack("<QQ", cookie_key_previous)
    parse_ipv4(tunnel_address, "tunnel_address")
    return abi.pack_config(tunnel_address, ban_sec=ban_sec, punch_idle_ns=int(punch_idle_sec * 10**9),
                           cookie_epoch_ns=int(cookie_epoch_sec * 10**9), cookie_key=(key0, key1),
                           limits=limits, cookie_key_previous=(previous0, previous1),
                           cookie_tai_offset_ns=cookie_tai_offset_ns,
                           verified_idle_ns=verified_idle_ns(verified_idle_sec), nr_cpus=nr_cpus)


# Offset of cookie_key in struct edge_config (after tunnel_addr, ban_sec, punch_idle_ns, cookie_epoch_ns),
# and of cookie_key_previous (before cookie_tai_offset_ns, the last member). test_rules checks both
# against pack_config.
_COOKIE_KEY_OFFSET = 24
_COOKIE_KEY_PREVIOUS_OFFSET = 24 + 16 + 16 * len(abi.PROTO_CLASSES)


def config_cookie_key(config):
    """The current generation's 16 key bytes inside a packed struct edge_config."""
    return config[_COOKIE_KEY_OFFSET:_COOKIE_KEY_OFFSET + 16]


def config_cookie_key_previous(config):
    """The previous generation's 16 key bytes (all zero: none) inside a packed struct edge_config."""
    return config[_COOKIE_KEY_PREVIOUS_OFFSET:_COOKIE_KEY_PREVIOUS_OFFSET + 16]


# Key generations the data plane holds: the current one (issues and accepts) and the previous one
# (accepts only), struct edge_config's cookie_key and cookie_key_previous.
COOKIE_KEY_GENERATIONS = 2


def parse_cookie_keys(values, name="cookie_keys"):
    """(current, previous) 16-byte keys from a list of 32-hex-digit strings, newest first; previous
    is all zero when only one is given. RuleError names the item at fault but never shows a key
    (it is a secret: errors end up in logs)."""
    if not isinstance(values, (list, tuple)):
        raise RuleError("%s: must be a list of keys (newest first), got a %s" % (name, type(values).__name__))
    if not values:
        raise RuleError("%s: empty; give at least the current key, or leave it unset" % name)
    if len(values) > COOKIE_KEY_GENERATIONS:
        raise RuleError("%s: %d keys given; the data plane holds %d generations (the current key, then the "
                        "previous one): retire the oldest" % (name, len(values), COOKIE_KEY_GENERATIONS))
    keys = []
    for index, value in enumerate(values):
        text = value.strip() if isinstance(value, str) else None
        if text is None or len(text) != 32 or any(c not in "0123456789abcdefABCDEF" for c in text):
            raise RuleError("%s[%d]: must be 32 hex digits (16 bytes); got %s" % (
                name, index, "%d characters" % len(text) if text is not None and len(text) != 32
                else "a %s" % type(value).__name__ if text is None else "a character that is not a hex digit"))
        key = binascii.unhexlify(text)
        if key == bytes(16):
            raise RuleError("%s[%d]: all zero, which the program reads as no key" % (name, index))
        if key in keys:
            raise RuleError("%s[%d]: the same key as %s[%d]" % (name, index, name, keys.index(key)))
        keys.append(key)
    return keys[0], keys[1] if len(keys) > 1 else bytes(16)


def with_cookie_keys(config, cookie_key, cookie_key_previous):
    """A packed struct edge_config with both key generations replaced (16 raw bytes each)."""
    config = config[:_COOKIE_KEY_OFFSET] + bytes(cookie_key) + config[_COOKIE_KEY_OFFSET + 16:]
    return config[:_COOKIE_KEY_PREVIOUS_OFFSET] + bytes(cookie_key_previous) + config[_COOKIE_KEY_PREVIOUS_OFFSET + 16:]


def with_cookie_key(config, cookie_key):
    """A packed struct edge_config with its current cookie key replaced by 16 raw bytes."""
    return with_cookie_keys(config, cookie_key, config_cookie_key_previous(config))


def control_plane_entries(items):
    """{allow LPM key: reason} of edge_rules' control_plane items ({address, reason}; a bare
    address is a /32), in the order given; a prefix listed twice gets both reasons."""
    reasons = collections.OrderedDict()
    for index, item in enumerate(items or []):
        key = parse_cidr(item.get("address"), "control_plane[%d].address" % index)
        reason = item.get("reason") or ""
        if key in reasons and reason and reason not in reasons[key].split("; "):
            reasons[key] = "%s; %s" % (reasons[key], reason) if reasons[key] else reason
        else:
            reasons.setdefault(key, reason)
    return reasons


def covering_prefix(entries, key):
    """The shortest prefix of the LPM entries that covers the LPM `key` (None: none does)."""
    length, raw = abi.LPM_V4_KEY.unpack(key)
    for prefix_length in range(length + 1):
        candidate = lpm_network(abi.LPM_V4_KEY.pack(prefix_length, raw))
        if candidate in entries:
            return candidate
    return None


def with_control_plane(allow, deny, reasons):
    """The allow entries with the control-plane sources added (their value gains the
    control-plane bit). RuleError if a deny prefix covers one: deny beats every exemption, so a
    denied BGP neighbour would lose its session (validate_inventory says so first, by variable)."""
    allow = dict(allow)
    for index, (key, reason) in enumerate(reasons.items()):
        denied = covering_prefix(deny, key)
        if denied is not None:
            raise RuleError("control_plane[%d].address: %s (%s) is inside the deny prefix %s: deny beats the "
                            "exemption, every packet from it would be dropped"
                            % (index, render_lpm(key), reason or "control plane", render_lpm(denied)))
        origins = abi.U32.unpack(allow.get(key, bytes(4)))[0] | abi.ALLOW_CONTROL_PLANE
        allow[key] = abi.U32.pack(origins)
    return allow


def control_plane_changes(present_allow, desired_allow):
    """(added, removed): how many prefixes gain and lose the control-plane exemption."""
    def exempt(entries):
        # Most entries are the operator's alone (LPM_PRESENT): skip them at C speed.
        return set(key for key, value in entries.items()
                   if value != ALLOW_OPERATOR and abi.U32.unpack(value)[0] & abi.ALLOW_CONTROL_PLANE)
    before, after = exempt(present_allow or {}), exempt(desired_allow or {})
    return len(after - before), len(before - after)


def desired_entries(params, cookie_key, cookie_key_previous=bytes(16), cookie_tai_offset_ns=0, nr_cpus=1,
                    packed_deny=False):
    """{map name: {key bytes: value bytes}} for the six rule maps, from edge_rules' params (and
    what is read on the POP: its TAI offset, _a2s_cookie.tai_offset_ns(), and its possible CPUs,
    _bpf.num_possible_cpus()).

    packed_deny: edge_deny_v4 as an LpmRecord (edge_rules, which settle_records() once it has read
    the map), not a dict.

    Also returns {service key: service name} for readable diffs. RuleError names the first
    parameter that cannot be packed (the inventory role reports every problem up front; this
    is the module's own guard).
    """
    services = {}
    names = {}
    ids = {}
    for index, service in enumerate(params.get("services") or []):
        key, value = service_entry(service, index)
        name = service.get("name")
        if key in services:
            raise RuleError("services[%d]: %s is also %s (one service per protocol, address, port)"
                            % (index, render_service_key(key), names[key]))
        service_id = abi.SERVICE_VALUE.unpack(value)[0]
        if service_id in ids:
            raise RuleError("services[%d].id: %d is also the id of %s" % (index, service_id, ids[service_id]))
        services[key] = value
        names[key] = name
        ids[service_id] = name
    backends = {}
    for index, address in enumerate(params.get("backends") or []):
        backends[parse_ipv4(address, "backends[%d]" % index)] = BACKEND_VALUE
    # Every backend a service forwards to must also be accepted on the return path.
    for value in services.values():
        backends[abi.SERVICE_VALUE.unpack(value)[1]] = BACKEND_VALUE
    config = config_value(params["tunnel_address"], params.get("rate_limits"), params.get("ban_sec", 0),
                          params.get("punch_idle_sec", 120), params.get("a2s_cookie_epoch_sec", 30), cookie_key,
                          cookie_key_previous, cookie_tai_offset_ns,
                          DEFAULT_VERIFIED_IDLE_SEC if params.get("verified_idle_sec") is None
                          else params["verified_idle_sec"], nr_cpus)
    desired = {
        "edge_config": {CONFIG_KEY: config},
        "edge_services": services,
        "edge_anycast_v4": cidr_entries(params.get("anycast_prefixes") or [], "anycast_prefixes"),
        "edge_backends": backends,
        "edge_allow_v4": cidr_entries(params.get("allow") or [], "allow"),
        "edge_deny_v4": (cidr_record if packed_deny else cidr_entries)(params.get("deny") or [], "deny"),
        "edge_wireguard_pairs": wireguard_pair_entries(params.get("wireguard_pairs") or []),
    }
    reasons = control_plane_entries(params.get("control_plane"))
    if reasons:
        desired["edge_allow_v4"] = with_control_plane(desired["edge_allow_v4"], desired["edge_deny_v4"], reasons)
    for map_name, limit in CAPACITY.items():
        if len(desired[map_name]) > limit:
            raise RuleError("%s: %d entries do not fit in %s (max %d)"
                            % (map_name.replace("edge_", "").replace("_v4", ""), len(desired[map_name]), map_name, limit))
    desired.update(source_list_entries(desired["edge_deny_v4"], desired["edge_allow_v4"]))
    desired[DEST_PASS_MAP] = dest_pass_entries(desired["edge_anycast_v4"], desired["edge_services"])
    if params.get("payload_rules") is not None:
        # A list, not a map: the position is the rule's order (see _payload_rules.steps).
        try:
            desired[PAYLOAD_RULES_MAP] = _payload_rules.desired_values(params["payload_rules"])
        except ValueError as exc:
            raise RuleError(str(exc))
    return desired, names


def wireguard_pair_entries(pairs):
    """edge_wireguard_pairs' entries: {backend address: struct wireguard_pair} of edge_rules'
    wireguard_pairs, each item's device already resolved on the POP to its "ifindex" and "mtu"
    (edge_rules does that, failing on a device that does not exist before anything is written)."""
    entries = {}
    devices = {}
    for index, pair in enumerate(pairs):
        where = "wireguard_pairs[%d]" % index
        backend = parse_ipv4(pair.get("backend"), where + ".backend")
        if backend in entries:
            raise RuleError("%s.backend: %s has a WireGuard pair already (one device per backend)"
                            % (where, pair["backend"]))
        if pair["device"] in devices:
            raise RuleError("%s.device: %s is also the device of the pair with %s (one device per pair)"
                            % (where, pair["device"], devices[pair["device"]]))
        devices[pair["device"]] = pair["backend"]
        entries[backend] = abi.WIREGUARD_PAIR.pack(pair["ifindex"], pair["mtu"])
    return entries


# --- the source lists as XDP reads them (derived from the deny/allow records) ----------------

def _prefixes(lpm_keys):
    """[(address as a host-order int, length)] of packed LPM keys (struct lpm_v4_key: the length
    a little-endian u32, then the address in network order), unpacked column by column from their
    concatenation: no struct call per key."""
    return list(_prefix_pairs(lpm_keys))


def _prefix_pairs(lpm_keys):
    """_prefixes as an iterable (a million pairs are walked once, never kept in a list); lpm_keys:
    an iterable of packed keys, or an LpmRecord."""
    packed = lpm_keys.packed_keys if isinstance(lpm_keys, LpmRecord) else b"".join(lpm_keys)
    count = len(packed) // abi.LPM_V4_KEY.size
    if len(packed) != count * abi.LPM_V4_KEY.size or packed[1::8].strip(b"\0") or packed[2::8].strip(b"\0") \
            or packed[3::8].strip(b"\0"):
        return [(int.from_bytes(raw, "big"), length) for length, raw in map(abi.LPM_V4_KEY.unpack, lpm_keys)]
    addresses = bytearray(4 * count)   # host-order u32s: the address bytes reversed
    for octet in range(4):
        addresses[3 - octet::4] = packed[4 + octet::8]
    host_order = array.array("I", bytes(addresses))
    if sys.byteorder == "big":
        host_order.byteswap()
    return zip(host_order.tolist(), packed[0::8])


def source_list_entries(deny_entries, allow_entries):
    """{edge_src_filter: all its values (bytes), edge_src_hosts: {key: bitmap}} for the deny and
    allow LPM entries. The filter is kept whole (8 MiB), as BpfMap.array_bytes() reads it: one
    comparison finds what differs, where a dict of 262,144 entries would cost seconds."""
    filter_bytes, hosts = _source_lists.derive(_prefix_pairs(deny_entries), _prefix_pairs(allow_entries))
    # struct src_hosts_value is the bitmap's four 64-bit words, low word first, little-endian:
    # the 256-bit integer's 32 little-endian bytes (test_rules checks it against the struct).
    return {
        SOURCE_FILTER_MAP: filter_bytes,
        SOURCE_HOSTS_MAP: dict(zip(map(abi.SRC_HOSTS_KEY.pack, *zip(*hosts)) if hosts else (),
                                   map(_hosts_value, hosts.values()))),
    }


def _hosts_value(bits):
    """A 256-bit hosts bitmap as struct src_hosts_value (abi.SRC_HOSTS_VALUE of host_words)."""
    return bits.to_bytes(abi.SRC_HOSTS_VALUE.size, "little")


def dest_pass_entries(anycast_entries, service_keys):
    """edge_dst_pass whole (bytes): a bit per /24 no address of which is ours, from the anycast
    prefixes (packed LPM keys) and the services (packed service keys: their addresses, which
    validate_inventory keeps inside the prefixes, are counted too, so that XDP never passes a
    service's packet however the two are given)."""
    services = [(int.from_bytes(abi.SERVICE_KEY.unpack(key)[0], "big"), 32) for key in service_keys]
    return _source_lists.not_ours_plane(_prefixes(anycast_entries) + services)


def dest_pass_tightened(before, after):
    """edge_dst_pass while a change is written: a bit is set only where both the present and the
    desired rules say that nothing of the /24 is ours (before: bytes, or None for all zero, as a
    program that edge_rules never wrote has it). Written first, so that no packet to a prefix or a
    service being added is passed before it is claimed; the desired bits last, once the removed
    ones are gone."""
    if before is None:
        return bytes(len(after))
    # Bit by bit, both at once: the two planes ANDed as integers (2 MiB in milliseconds).
    return (int.from_bytes(before, "little") & int.from_bytes(after, "little")).to_bytes(len(after), "little")


# The arrays are compared a block at a time first (bytes ==, a memcmp): a rule change touches a few
# /24s, so most blocks are equal and only the others go through the whole-array operations below.
_DIFF_BLOCK = 1 << 16


def _differing_entries(before, after, entry_size):
    """Indexes of the entries (entry_size bytes each, a multiple of 8 dividing _DIFF_BLOCK) that
    differ between two arrays kept whole (bytes of the same length), in ascending order: the
    blocks that differ are found first; within them (or in the whole arrays, when more than a
    quarter of the blocks differ) the two are XORed as integers, each entry's words ORed together,
    the non-zero ones picked by compress."""
    starts = [start for start in range(0, len(before), _DIFF_BLOCK)
              if before[start:start + _DIFF_BLOCK] != after[start:start + _DIFF_BLOCK]]
    if len(starts) * 4 > len(before) // _DIFF_BLOCK:
        return _differing_entries_at_once(before, after, entry_size)
    return itertools.chain.from_iterable(
        map((start // entry_size).__add__, _differing_entries_at_once(
            before[start:start + _DIFF_BLOCK], after[start:start + _DIFF_BLOCK], entry_size))
        for start in starts)


def _differing_entries_at_once(before, after, entry_size):
    """_differing_entries by whole-array operations alone."""
    words = entry_size // 8
    xor = (int.from_bytes(before, "little") ^ int.from_bytes(after, "little")).to_bytes(len(before), "little")
    per_word = array.array("Q", xor)
    if words > 1:
        merged = int.from_bytes(per_word[0::words].tobytes(), "little")
        for word in range(1, words):
            merged |= int.from_bytes(per_word[word::words].tobytes(), "little")
        per_word = array.array("Q", merged.to_bytes(len(before) // words, "little"))
    return itertools.compress(range(len(per_word)), per_word)


def source_filter_changes(before, after, entry_size=abi.SRC_FILTER_ENTRY.size):
    """map_changes() for edge_src_filter (or another array kept whole: edge_dst_pass, whose
    entries are entry_size bytes) given whole (bytes, or None for all zero): (added, changed,
    removed) keyed by packed index, only for the entries that differ (found at C speed by
    _differing_entries; only those are then visited one by one). An all-zero entry counts as
    absent."""
    size = entry_size
    zero = bytes(entry_size)
    whole = abi.SRC_FILTER_ENTRIES * entry_size
    before = before or bytes(whole)
    after = after or bytes(whole)
    added, changed, removed = {}, {}, {}
    if before == after:
        return added, changed, removed
    pack = abi.U32.pack
    for index in _differing_entries(before, after, size):
        offset = index * size
        old, new = before[offset:offset + size], after[offset:offset + size]
        if old == zero:
            added[pack(index)] = new
        elif new == zero:
            removed[pack(index)] = old
        else:
            changed[pack(index)] = (new, old)
    return added, changed, removed


# --- the plan ---------------------------------------------------------------------------------

# One step of the plan (_map_sync.Step): each entry (key, new value or None for a delete, old
# value or None when absent before); the old values let edge_rules undo a step if a later one fails.
Step = _map_sync.Step

# Why the steps come in this order (the unit tests pin it):
#
#   The filter must never be looser than the new rule set: a source the new rules deny is never
#   let through mid-update, and one that both rule sets deny never slips through a gap.
#     deny_unalias    a stray key of the trie that is a new deny's prefix with host bits set
#                     (written by hand: lpm_network) goes before that deny is added, since both
#                     are one node: added first, the deny would be deleted with the stray.
#                     Nothing is let through meanwhile: XDP reads the derived lists, not the trie
#     deny_add        new denies first (deny beats allow)
#     allow_remove    old allows go before anything is relaxed
#     ...             (tightening of services, see below)
#     allow_add       new allows only once the new denies are in place
#     deny_remove     old denies last
#
#   A claimed anycast prefix must always have its services (else players are dropped as
#   "no service" mid-update), and a service must never serve another service's A2S cache:
#     anycast_remove    stop claiming old prefixes first
#     services_remove   then remove the services that go
#     backends_add      the return path accepts a new backend before any service points at it
#                       (harmless early: a reply is also checked against its service's backend)
#     wireguard_pairs_remove, wireguard_pairs_set   a backend's pair taken off or (re)pointed at
#                       its device before the services that change: a service added or moved to a
#                       backend finds the backend's transport already in place from its first
#                       packet. (Which transport a backend's existing services take changes at the
#                       one write of its entry: a packet goes one way or the other.)
#     services_disarm   services whose id or backend changes are rewritten with their new
#                       id/backend but with the A2S cache/snoop flags cleared: they keep
#                       forwarding, but neither serve nor fill the cache
#     a2s_cache_delete  delete the cache entries whose owner changed (or that nothing owns):
#                       nobody serves or snoops those ids at this point
#     config            edge_config (tunnel address, limits, cookie key) before any new
#                       service can forward or answer A2S with it
#     services_change   final values (re-arming the disarmed ones)
#     services_add
#     rules_stage ... rules_hits_reset   the payload rules: swapped whole (one write switches
#                       banks, see _payload_rules), so a packet meets the old list or the new one;
#                       after the services, before new prefixes are claimed, so traffic to a new
#                       prefix meets the new rules from its first packet
#     anycast_add       claim new prefixes only once their services exist
#     backends_remove   after no service points at them any more
#
#   XDP reads the source lists from the derived maps, not from the deny/allow records, so those
#   go through the same tightening in two phases of their own (the records' steps above only
#   keep the record in order):
#     src_hosts_tighten, src_filter_tighten   first, the lists derived from the old denies plus
#                       the new ones, and only the allows both rule sets have (bitmaps of /24s
#                       first, then the bits that point at them)
#     src_filter_final, src_hosts_final, src_hosts_remove   last, the new lists (the bits that
#                       stop pointing at a bitmap before it goes)
#   Every bit of a word is a /24 of its own, so a reader that sees a word half written sees each
#   /24 either as it was or as it will be.
#
#   XDP passes a packet to a /24 edge_dst_pass marks as nothing of ours before it asks the
#   services or the anycast prefixes, so that map is tightened the same way:
#     dst_pass_tighten  first, a bit only where the old and the new rules both say "not ours"
#                       (a /24 being claimed, or holding a service being added, is never passed)
#     dst_pass_final    last, the new bits (a /24 given up is passed only once its prefix and
#                       services are gone)
STEP_ORDER = (
    "dst_pass_tighten", "src_hosts_tighten", "src_filter_tighten",
    "deny_unalias", "deny_add", "allow_remove", "anycast_remove", "services_remove", "backends_add",
    "wireguard_pairs_remove", "wireguard_pairs_set",
    "services_disarm", "a2s_cache_delete", "config", "services_change", "services_add",
    "rules_stage", "rules_switch", "rules_sync", "rules_hits_reset",
    "anycast_add", "allow_add", "deny_remove",
    "src_filter_final", "src_hosts_final", "src_hosts_remove",
    "backends_remove", "dst_pass_final",
)


map_changes = _map_sync.map_changes


def _service_owner(value):
    """What a service id's cache entry belongs to: (id, backend). A cached reply is the reply
    of one game server; a different server (or a different service under the id) needs its own."""
    service_id, backend = abi.SERVICE_VALUE.unpack(value)[:2]
    return service_id, backend


def _owners_by_id(services):
    owners = collections.defaultdict(set)
    for key, value in services.items():
        service_id, backend = _service_owner(value)
        owners[service_id].add((key, backend))
    return owners


def _disarmed(value):
    fields = list(abi.SERVICE_VALUE.unpack(value))
    fields[2] &= ~A2S_FLAGS
    return abi.SERVICE_VALUE.pack(*fields)


def stale_cache_ids(present_services, desired_services, present_cache_ids):
    """Service ids whose edge_a2s_cache entry must go: ids that no desired service uses, and
    ids whose owner (service key, backend) changes. Only ids that may hold an entry are
    returned: present in the cache now, or used by a present service that can fill it."""
    present_owners = _owners_by_id(present_services)
    desired_owners = _owners_by_id(desired_services)
    may_hold = set(present_cache_ids)
    for value in present_services.values():
        if abi.SERVICE_VALUE.unpack(value)[2] & A2S_FLAGS:
            may_hold.add(_service_owner(value)[0])
    stale = set()
    for service_id in may_hold:
        if service_id not in desired_owners or present_owners.get(service_id) != desired_owners[service_id]:
            stale.add(service_id)
    return sorted(stale)


def compare(present, desired):
    """{map name: (added, changed, removed)} for every map of RULE_MAPS (see map_changes);
    a map absent from `desired` is left alone (no changes)."""
    changes = {}
    for map_name in RULE_MAPS + DERIVED_MAPS:
        if map_name == SOURCE_FILTER_MAP and map_name in desired:
            changes[map_name] = source_filter_changes(present.get(map_name), desired[map_name])
        elif map_name in desired:
            changes[map_name] = map_changes(present.get(map_name, {}), desired[map_name])
        else:
            changes[map_name] = ({}, {}, {})
    if DEST_PASS_MAP in desired:
        changes[DEST_PASS_MAP] = source_filter_changes(present.get(DEST_PASS_MAP), desired[DEST_PASS_MAP],
                                                       abi.U64.size)
    if PAYLOAD_RULES_MAP in desired:
        # Positions (added, changed, removed) of the list the program reads against the new one.
        changes[PAYLOAD_RULES_MAP] = _payload_rules.changes(present, desired[PAYLOAD_RULES_MAP])
    return changes


def plan_writes(present, desired, present_cache_ids=(), changes=None):
    """The ordered list of non-empty Steps that turns `present` into `desired`.

    present, desired: {map name: {key: value}} for the maps of RULE_MAPS (a map absent from
    `desired` is left alone). present_cache_ids: the service ids that have an edge_a2s_cache entry
    (of any kind: cache_service_ids).
    changes: compare(present, desired), when the caller has it already.
    """
    if changes is None:
        changes = compare(present, desired)

    def upserts(map_name):
        return _map_sync.upserts(*changes[map_name][:2])

    def deletes(map_name, keep=None):
        return [(key, None, old) for key, old in changes[map_name][2].items() if keep is None or keep(key)]

    # The removed denies that share an added deny's node (see STEP_ORDER: deny_unalias); the new
    # keys are canonical (parse_cidr), so only a removed key with host bits can be one.
    deny_added, dummy, deny_removed = changes["edge_deny_v4"]
    aliases = set(key for key in keys_with_host_bits(deny_removed) if lpm_network(key) in deny_added)
    steps = {
        "deny_unalias": ("edge_deny_v4", "delete", deletes("edge_deny_v4", aliases.__contains__) if aliases else []),
        "deny_add": ("edge_deny_v4", "update", upserts("edge_deny_v4")),
        "allow_remove": ("edge_allow_v4", "delete", deletes("edge_allow_v4")),
        "anycast_remove": ("edge_anycast_v4", "delete", deletes("edge_anycast_v4")),
        "services_remove": ("edge_services", "delete", deletes("edge_services")),
        "config": ("edge_config", "update", upserts("edge_config")),
        "backends_add": ("edge_backends", "update", upserts("edge_backends")),
        "services_add": ("edge_services", "update",
                         [(key, value, None) for key, value in changes["edge_services"][0].items()]),
        "anycast_add": ("edge_anycast_v4", "update", upserts("edge_anycast_v4")),
        "allow_add": ("edge_allow_v4", "update", upserts("edge_allow_v4")),
        "deny_remove": ("edge_deny_v4", "delete",
                        deletes("edge_deny_v4", (lambda key: key not in aliases) if aliases else None)),
        "backends_remove": ("edge_backends", "delete", deletes("edge_backends")),
        "wireguard_pairs_remove": ("edge_wireguard_pairs", "delete", deletes("edge_wireguard_pairs")),
        "wireguard_pairs_set": ("edge_wireguard_pairs", "update", upserts("edge_wireguard_pairs")),
    }

    # Services that change: those whose owner (id, backend) changes while the old or the new
    # value has A2S flags are disarmed before the cache is cleaned (so the old value cannot
    # snoop into a cleaned id again); the rest are written once, in services_change.
    disarm = []
    final = []
    for key, (new, old) in changes["edge_services"][1].items():
        flags = (abi.SERVICE_VALUE.unpack(new)[2] | abi.SERVICE_VALUE.unpack(old)[2]) & A2S_FLAGS
        if flags and _service_owner(new) != _service_owner(old):
            interim = _disarmed(new)
            disarm.append((key, interim, old))
            if interim != new:
                final.append((key, new, interim))
        else:
            final.append((key, new, old))
    steps["services_disarm"] = ("edge_services", "update", disarm)
    steps["services_change"] = ("edge_services", "update", final)

    steps.update(_source_list_steps(present, desired, changes))
    steps.update(_dest_pass_steps(present, desired, changes))
    if PAYLOAD_RULES_MAP in desired:
        steps.update(_payload_rules.steps(present, desired[PAYLOAD_RULES_MAP]))
    else:
        steps.update((name, (PAYLOAD_RULES_MAP, "update", [])) for name in _payload_rules.STEPS)

    if "edge_services" in desired:
        stale = stale_cache_ids(present.get("edge_services", {}), desired["edge_services"], present_cache_ids)
    else:
        stale = []
    # Old values of cache entries are not kept: a deleted entry is refilled by the agent or by
    # snooping, so there is nothing to restore if a later step fails.
    # Every kind's entry of a stale id goes (INFO, PLAYER, RULES): one owner for them all.
    steps["a2s_cache_delete"] = (A2S_CACHE_MAP, "delete", [(abi.pack_a2s_cache_key(i, kind), None, None)
                                                           for i in stale for kind in abi.A2S_KINDS])

    plan = []
    for name in STEP_ORDER:
        map_name, operation, entries = steps[name]
        if entries:
            plan.append(Step(name, map_name, operation, entries))
    return plan


def _filter_writes(before, after, changes=None, entry_size=abi.SRC_FILTER_ENTRY.size):
    """Writes turning edge_src_filter (or edge_dst_pass: entry_size) from `before` to `after`
    (each whole, bytes): an array has no deletes, an entry that goes is written with zeros (and
    "old" is never None, so undoing a step only ever writes). changes:
    source_filter_changes(before, after, entry_size), when known."""
    zero = bytes(entry_size)
    added, changed, removed = changes or source_filter_changes(before, after, entry_size)
    entries = [(key, value, zero) for key, value in added.items()]
    entries.extend((key, new, old) for key, (new, old) in changed.items())
    entries.extend((key, zero, old) for key, old in removed.items())
    return entries


def _dest_pass_steps(present, desired, changes):
    """edge_dst_pass's two steps (see STEP_ORDER): {step name: (map, operation, entries)}."""
    if DEST_PASS_MAP not in desired:
        return {"dst_pass_tighten": (DEST_PASS_MAP, "update", []), "dst_pass_final": (DEST_PASS_MAP, "update", [])}
    before, after = present.get(DEST_PASS_MAP), desired[DEST_PASS_MAP]
    size = abi.U64.size
    if before == after:
        return {"dst_pass_tighten": (DEST_PASS_MAP, "update", []), "dst_pass_final": (DEST_PASS_MAP, "update", [])}
    interim = dest_pass_tightened(before, after)
    if interim == (before or bytes(len(after))):
        # Nothing to take back first (the first run, or only claims given up): one step of 2 MiB.
        return {"dst_pass_tighten": (DEST_PASS_MAP, "update", []),
                "dst_pass_final": (DEST_PASS_MAP, "update",
                                   _filter_writes(before, after, changes[DEST_PASS_MAP], size))}
    return {
        "dst_pass_tighten": (DEST_PASS_MAP, "update",
                             _filter_writes(before, interim, changes[DEST_PASS_MAP] if interim == after else None,
                                            size)),
        "dst_pass_final": (DEST_PASS_MAP, "update", _filter_writes(interim, after, None, size)),
    }


def _strictest_hosts(present_hosts, interim_hosts, final_hosts):
    """The edge_src_hosts bitmaps written before any filter bit changes: every bitmap the
    interim or the final filter points at, each the strictest of its present, interim and final
    values (the union of the deny bitmaps, the intersection of the allow bitmaps). Whichever
    filter word points at one of them while the update runs, it reads no looser than either
    rule set would."""
    strictest = {}
    for key in set(interim_hosts).union(final_hosts):
        final = final_hosts.get(key)
        values = set((present_hosts.get(key), interim_hosts.get(key), final))
        values.discard(None)
        if len(values) == 1:
            strictest[key] = final if final is not None else interim_hosts[key]
            continue
        words = [abi.SRC_HOSTS_VALUE.unpack(value) for value in values]
        merge = operator.or_ if abi.SRC_HOSTS_KEY.unpack(key)[1] == _source_lists.DENY else operator.and_
        strictest[key] = abi.SRC_HOSTS_VALUE.pack(*[functools.reduce(merge, column) for column in zip(*words)])
    return strictest


def _source_list_steps(present, desired, changes):
    """The derived maps' steps (see STEP_ORDER): {step name: (map, operation, entries)}.
    changes: compare(present, desired)."""
    names = ("src_hosts_tighten", "src_filter_tighten", "src_filter_final", "src_hosts_final", "src_hosts_remove")
    if SOURCE_FILTER_MAP not in desired:
        return dict((name, (SOURCE_HOSTS_MAP, "update", [])) for name in names)
    old_deny, new_deny = present.get("edge_deny_v4", {}), desired["edge_deny_v4"]
    old_allow, new_allow = present.get("edge_allow_v4", {}), desired["edge_allow_v4"]
    # Old denies all kept and no allow added (changes say so without comparing the lists again).
    if not changes["edge_deny_v4"][2] and not changes["edge_allow_v4"][0]:
        interim = desired   # the new rules are the stricter ones already (the first run, a no-op)
    else:
        # Stricter than both rule sets: every deny of either, only the allows of both.
        # (derived from the prefixes the old keys stand for: a key written by hand may have host bits)
        old_only = list(old_deny.keys() - new_deny.keys())
        strays = set(keys_with_host_bits(old_only))
        if strays:
            old_only = [lpm_network(key) if key in strays else key for key in old_only]
        interim = source_list_entries(list(new_deny) + old_only, new_allow.keys() & old_allow.keys())
    hosts_now = present.get(SOURCE_HOSTS_MAP, {})
    hosts_tight = _strictest_hosts(hosts_now, interim[SOURCE_HOSTS_MAP], desired[SOURCE_HOSTS_MAP])
    added, changed = map_changes(hosts_now, hosts_tight)[:2]
    hosts_after_tighten = dict(hosts_now)
    hosts_after_tighten.update(hosts_tight)
    final_added, final_changed, final_removed = map_changes(hosts_after_tighten, desired[SOURCE_HOSTS_MAP])
    return {
        "src_hosts_tighten": (SOURCE_HOSTS_MAP, "update", _map_sync.upserts(added, changed)),
        "src_filter_tighten": (SOURCE_FILTER_MAP, "update",
                               _filter_writes(present.get(SOURCE_FILTER_MAP), interim[SOURCE_FILTER_MAP],
                                              changes[SOURCE_FILTER_MAP] if interim is desired else None)),
        "src_filter_final": (SOURCE_FILTER_MAP, "update",
                             _filter_writes(interim[SOURCE_FILTER_MAP], desired[SOURCE_FILTER_MAP])),
        "src_hosts_final": (SOURCE_HOSTS_MAP, "update", _map_sync.upserts(final_added, final_changed)),
        "src_hosts_remove": (SOURCE_HOSTS_MAP, "delete", [(key, None, old) for key, old in final_removed.items()]),
    }


def summarize(plan, changes):
    """Counts per map: {map: {added, changed, removed}} (a disarmed-then-rearmed service
    counts once, as changed) and the number of element writes the plan makes.
    changes: compare(present, desired)."""
    counts = {}
    for map_name in RULE_MAPS + DERIVED_MAPS + (DEST_PASS_MAP,):
        if map_name not in changes:
            continue
        added, changed, removed = changes[map_name]
        counts[map_name] = {"added": len(added), "changed": len(changed), "removed": len(removed)}
    counts[A2S_CACHE_MAP] = {"added": 0, "changed": 0, "removed": 0}
    if PAYLOAD_RULES_MAP in changes:
        added, changed, removed = changes[PAYLOAD_RULES_MAP]
        counts[PAYLOAD_RULES_MAP] = {"added": len(added), "changed": len(changed), "removed": len(removed)}
    writes = 0
    for step in plan:
        writes += len(step.entries)
        if step.map_name == A2S_CACHE_MAP:   # counted by service: its cached replies of every kind
            counts[A2S_CACHE_MAP]["removed"] += len(cache_service_ids(key for key, dummy, dummy in step.entries))
    return counts, writes


def cache_service_ids(keys):
    """The service ids (sorted, once each) of edge_a2s_cache keys (packed a2s_cache_key)."""
    return sorted(set(abi.unpack_a2s_cache_key(key)[0] for key in keys))


def inverse(step):
    """The steps that undo `step` (for edge_rules' rollback when a later write fails): neither
    deleted cache entries nor zeroed hit counters are kept, so those have nothing to put back."""
    return _map_sync.inverse(step, unrestorable=(A2S_CACHE_MAP, PAYLOAD_RULE_HITS_MAP))


def render_diff(present, desired, service_names, cache_deleted_ids=(), limit=100, changes=None, reasons=None):
    """{'before': text, 'after': text} listing only what differs, map by map: removed and
    old values before, added and new values after. At most `limit` lines per map and side,
    then a line saying how many more (a 100,000-prefix change stays readable). reasons: {allow
    key: why it is a control-plane source} (control_plane_entries), shown on the after side."""
    if changes is None:
        changes = compare(present, desired)
    before = []
    after = []
    for map_name in RULE_MAPS:
        added, changed, removed = changes[map_name]
        if not (added or changed or removed):
            continue
        if map_name == "edge_config":
            old_lines = render_config(present.get(map_name, {}).get(CONFIG_KEY, bytes(abi.EDGE_CONFIG.size)))
            new_lines = render_config(desired[map_name][CONFIG_KEY])
            old_config = present.get(map_name, {}).get(CONFIG_KEY, bytes(abi.EDGE_CONFIG.size))
            # A key replaced by another reads "(set)" on both sides: say it changed, never what it is.
            for line, key_of in ((4, config_cookie_key), (5, config_cookie_key_previous)):
                if key_of(old_config) != key_of(desired[map_name][CONFIG_KEY]) and key_of(old_config) != bytes(16) \
                        and new_lines[line].endswith("(set)"):
                    new_lines[line] = new_lines[line][:-len("(set)")] + "(set, changed)"
            before.append("%s:" % map_name)
            before.extend("  " + line for line in old_lines)
            after.append("%s:" % map_name)
            after.extend("  " + line for line in new_lines)
            continue
        # Entries in the order they were given (removed ones: in map order); only the first
        # `limit` are rendered, so a 100,000-entry change costs no more than a small one.
        old_side = itertools.chain(removed.items(), ((key, old) for key, (dummy, old) in changed.items()))
        new_side = itertools.chain(added.items(), ((key, new) for key, (new, dummy) in changed.items()))
        for side, entries, total, side_reasons in ((before, old_side, len(removed) + len(changed), None),
                                                   (after, new_side, len(added) + len(changed), reasons)):
            side.append("%s:" % map_name)
            side.extend(_map_sync.limited(("  " + render_entry(map_name, key, value, service_names, side_reasons)
                                           for key, value in entries), total, limit))
    if PAYLOAD_RULES_MAP in desired:
        old_rules, new_rules = _payload_rules.render_changes(present, desired[PAYLOAD_RULES_MAP], limit)
        for side, lines in ((before, old_rules), (after, new_rules)):
            if lines:
                side.append("%s:" % PAYLOAD_RULES_MAP)
                side.extend(lines)
    if cache_deleted_ids:
        before.append("%s:" % A2S_CACHE_MAP)
        before.extend(_map_sync.limited(("  cached replies of service id %d" % i for i in sorted(cache_deleted_ids)),
                                        len(cache_deleted_ids), limit))
    return {"before": "\n".join(before) + ("\n" if before else ""),
            "after": "\n".join(after) + ("\n" if after else "")}


# --- the rules file: what the controller renders per POP and edge_rules reads ------------------

# edge_rules' options a rules file carries: every rule of the inventory, resolved for one POP (its
# own control plane). The POP's own options (pin_root, iface, tunnel_address) and the cookie keys
# (a secret, never written to a file by this collection) stay task arguments.
RULES_FILE_OPTIONS = ("services", "anycast_prefixes", "backends", "allow", "control_plane", "deny", "rate_limits",
                      "ban_sec", "punch_idle_sec", "a2s_cookie_epoch_sec", "verified_idle_sec", "payload_rules",
                      "wireguard_pairs")
# Written into the file and checked when it is read: a file of another layout is refused, not guessed at.
RULES_FILE_FORMAT = "anycast.edge rules 1"


def render_rules_file(rules):
    """The text of a rules file: one compact JSON document (keys sorted, so the same rules make
    the same bytes and an unchanged file is not rewritten) holding RULES_FILE_OPTIONS of `rules`."""
    content = dict((name, rules[name]) for name in RULES_FILE_OPTIONS if name in rules)
    return json.dumps({"format": RULES_FILE_FORMAT, "rules": content}, sort_keys=True, separators=(",", ":")) + "\n"


def read_rules_file(text, where):
    """The rules ({option: value}) of a rules file's text; RuleError naming `where` when it is
    not one this collection wrote."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise RuleError("%s: not a rules file (%s)" % (where, exc))
    if not isinstance(document, dict) or document.get("format") != RULES_FILE_FORMAT \
            or not isinstance(document.get("rules"), dict):
        raise RuleError("%s: not a rules file of format %r (anycast.edge.inventory_check renders them)"
                        % (where, RULES_FILE_FORMAT))
    unknown = sorted(set(document["rules"]) - set(RULES_FILE_OPTIONS))
    if unknown:
        raise RuleError("%s: %s not an option a rules file carries (%s)"
                        % (where, ", ".join(unknown) + (" is" if len(unknown) == 1 else " are"),
                           ", ".join(RULES_FILE_OPTIONS)))
    return document["rules"]
