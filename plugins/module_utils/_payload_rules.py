# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Payload rules (anycast_edge_filters.rules): their one parser, their packing into struct
payload_rule, and the steps that load a list into the program (docs/payload-rules.md).

One parser for both callers: validate_inventory reports every problem of every rule with its
path and value (parse_rule returns them all), and edge_rules packs the rules the inventory
normalized (and, as its own guard, fails on the first problem). Parsing a normalized rule gives
it back unchanged.

A normalized rule: {action: drop|pass|limit, protocol: udp|tcp|icmp (absent: any), dst_port,
src_port, length: [min, max] (absent: any), ttl: [min, max], tcp_flags: {mask, value} (integers),
payload: {offset, value, mask} (hex, lower case; mask as long as value), verified: true|false
(absent: any), limit: {packets_per_sec, bytes_per_sec} (limit rules only)}.

The list lives in two banks (bpf/include/edge_abi.h): the steps write the bank the program does
not read, switch banks with one 4-byte write, then bring the other bank up to date, so a packet
meets the old list or the new one, whole, and the next change again writes only what differs.
Pure Python (standard library + _edge_abi): the plan is unit-tested like _rules' plan.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import binascii
import re

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _map_sync

RULES_MAP = "edge_payload_rules"
BANK_MAP = "edge_payload_rule_bank"
HITS_MAP = "edge_payload_rule_stats"
MAX_RULES = abi.MAX_PAYLOAD_RULES
EMPTY = bytes(abi.PAYLOAD_RULE.size)
BANK_KEY = abi.U32.pack(0)
ZERO_HITS = bytes(abi.EDGE_COUNTER.size)

ACTIONS = ("drop", "pass", "limit")
PROTOCOLS = ("udp", "tcp", "icmp")
KEYS = ("action", "protocol", "dst_port", "src_port", "length", "ttl", "tcp_flags", "payload", "verified", "limit")
RANGES = {"dst_port": 0xFFFF, "src_port": 0xFFFF, "length": 0xFFFF, "ttl": 0xFF}
# The TCP header's flags byte, bit by bit (RFC 9293; CWR and ECE from RFC 3168).
TCP_FLAGS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10, "urg": 0x20, "ece": 0x40, "cwr": 0x80}
LIMIT_FIELDS = ("packets_per_sec", "bytes_per_sec")
_RANGE_TEXT = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")
_HEX = re.compile(r"[0-9a-fA-F]*")


# --- parsing ----------------------------------------------------------------------------------------

def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _range(value, path, top, problems):
    """[min, max] of a number, "a-b" or [a, b], within 0..top."""
    low = high = None
    if _is_int(value):
        low = high = value
    elif isinstance(value, str) and _RANGE_TEXT.fullmatch(value):
        match = _RANGE_TEXT.fullmatch(value)
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(item) for item in value):
        low, high = value
    else:
        problems.append((path, value, "is not a number, a range \"min-max\" or a list [min, max]"))
        return None
    if not 0 <= low <= top or not 0 <= high <= top:
        problems.append((path, value, "is out of range (0..%d)" % top))
        return None
    if low > high:
        problems.append((path, value, "is an empty range (min > max)"))
        return None
    return [low, high]


def _flags(value, path, problems):
    """The flags byte of an integer (0..255) or a list of flag names."""
    if _is_int(value):
        if 0 <= value <= 0xFF:
            return value
        problems.append((path, value, "is out of range (0..255)"))
        return None
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        unknown = [item for item in value if item.lower() not in TCP_FLAGS]
        if unknown:
            problems.append((path, value, "names unknown flags %s (known: %s)" % (", ".join(unknown), ", ".join(TCP_FLAGS))))
            return None
        bits = 0
        for item in value:
            bits |= TCP_FLAGS[item.lower()]
        return bits
    problems.append((path, value, "is not a flags byte (0..255) or a list of flag names (%s)" % ", ".join(TCP_FLAGS)))
    return None


def _hex(value, path, problems):
    """Bytes of a hex string (spaces and colons allowed between bytes), or None."""
    if not isinstance(value, str):
        problems.append((path, value, "is not a hex string"))
        return None
    text = value.replace(" ", "").replace(":", "")
    if not text or len(text) % 2 or not _HEX.fullmatch(text):
        problems.append((path, value, "is not an even number of hex digits"))
        return None
    return binascii.unhexlify(text)


def _payload(value, path, problems):
    if not isinstance(value, dict):
        problems.append((path, value, "is not a mapping ({offset, value, mask})"))
        return None
    unknown = sorted((key for key in value if key not in ("offset", "value", "mask")), key=str)
    for key in unknown:
        problems.append(("%s.%s" % (path, key), value[key], "is not a payload setting (offset, value, mask)"))
    offset = value.get("offset", 0)
    if not _is_int(offset) or not 0 <= offset <= 0xFFFF - abi.RULE_PAYLOAD_MAX:
        problems.append((path + ".offset", offset, "is not a byte offset (0..%d)" % (0xFFFF - abi.RULE_PAYLOAD_MAX)))
        offset = None
    content = _hex(value.get("value"), path + ".value", problems)
    if content is not None and len(content) > abi.RULE_PAYLOAD_MAX:
        problems.append((path + ".value", value.get("value"), "is %d bytes; a rule compares at most %d"
                         % (len(content), abi.RULE_PAYLOAD_MAX)))
        content = None
    mask = None
    if value.get("mask") is not None:
        mask = _hex(value["mask"], path + ".mask", problems)
        if mask is not None and content is not None and len(mask) != len(content):
            problems.append((path + ".mask", value["mask"], "is %d bytes, value is %d: give one mask byte per value byte"
                             % (len(mask), len(content))))
            mask = None
        elif mask is not None and content is not None and any(v & ~m & 0xFF for v, m in zip(content, mask)):
            problems.append((path + ".value", value.get("value"), "has bits the mask clears (%s): they would never "
                             "be compared" % binascii.hexlify(mask).decode()))
            mask = None
    if offset is None or content is None or (value.get("mask") is not None and mask is None):
        return None
    mask = mask if mask is not None else b"\xff" * len(content)
    return {"offset": offset, "value": binascii.hexlify(content).decode(), "mask": binascii.hexlify(mask).decode()}


def _limit(value, path, problems):
    if not isinstance(value, dict):
        problems.append((path, value, "is not a mapping ({packets_per_sec, bytes_per_sec})"))
        return None
    limit = {}
    for key in sorted(value, key=str):
        if key not in LIMIT_FIELDS:
            problems.append(("%s.%s" % (path, key), value[key], "is not a limit (packets_per_sec, bytes_per_sec)"))
        elif value[key] is not None:
            if not _is_int(value[key]) or value[key] <= 0:
                problems.append(("%s.%s" % (path, key), value[key], "must be an integer > 0 (leave it out for none)"))
            else:
                limit[key] = value[key]
    if not limit and not any(key not in LIMIT_FIELDS for key in value):
        problems.append((path, value, "sets neither packets_per_sec nor bytes_per_sec"))
        return None
    return limit


def parse_rule(rule, path):
    """(normalized rule or None, [(path, value, reason)]): every problem of one rule."""
    problems = []
    if not isinstance(rule, dict):
        return None, [(path, rule, "is not a mapping (a rule: action, and what it matches)")]
    for key in sorted(rule, key=str):
        if key not in KEYS:
            problems.append(("%s.%s" % (path, key), rule[key], "is not a rule setting (known: %s)" % ", ".join(KEYS)))
    normalized = {}
    action = rule.get("action")
    if action not in ACTIONS:
        problems.append((path + ".action", action, "is not one of %s" % ", ".join(ACTIONS)))
    normalized["action"] = action
    if rule.get("protocol") is not None:
        if rule["protocol"] not in PROTOCOLS:
            problems.append((path + ".protocol", rule["protocol"], "is not one of %s (leave it out for any)"
                             % ", ".join(PROTOCOLS)))
        normalized["protocol"] = rule["protocol"]
    for key, top in sorted(RANGES.items()):
        if rule.get(key) is not None:
            normalized[key] = _range(rule[key], "%s.%s" % (path, key), top, problems)
    for key in ("dst_port", "src_port"):
        if key in normalized and normalized.get("protocol") not in ("udp", "tcp"):
            problems.append(("%s.%s" % (path, key), rule[key], "needs protocol udp or tcp (other packets have no ports)"))
    if rule.get("tcp_flags") is not None:
        flags = rule["tcp_flags"]
        if not isinstance(flags, dict) or set(flags) - {"mask", "value"} or "mask" not in flags:
            problems.append((path + ".tcp_flags", flags, "is not a mapping {mask, value}"))
        else:
            mask = _flags(flags["mask"], path + ".tcp_flags.mask", problems)
            value = _flags(flags.get("value", 0), path + ".tcp_flags.value", problems)
            if mask is not None and value is not None:
                if not mask:
                    problems.append((path + ".tcp_flags.mask", flags["mask"], "is empty: it would compare nothing"))
                elif value & ~mask:
                    problems.append((path + ".tcp_flags.value", flags.get("value"), "has flags outside the mask"))
                normalized["tcp_flags"] = {"mask": mask, "value": value}
        if normalized.get("protocol") != "tcp":
            problems.append((path + ".tcp_flags", flags, "needs protocol tcp (only TCP has flags)"))
    if rule.get("payload") is not None:
        normalized["payload"] = _payload(rule["payload"], path + ".payload", problems)
    if rule.get("verified") is not None:
        if not isinstance(rule["verified"], bool):
            problems.append((path + ".verified", rule["verified"], "is not a boolean (leave it out for any source)"))
        normalized["verified"] = rule["verified"]
    if action == "limit":
        if rule.get("limit") is None:
            problems.append((path + ".limit", None, "is required by action limit ({packets_per_sec, bytes_per_sec})"))
        else:
            normalized["limit"] = _limit(rule["limit"], path + ".limit", problems)
    elif rule.get("limit") is not None:
        problems.append((path + ".limit", rule["limit"], "is only for action limit (the action is %s)" % action))
    return (None if problems else normalized), problems


def parse_rules(rules, path):
    """(normalized list, problems) of a whole list."""
    if rules is None:
        return [], []
    if not isinstance(rules, (list, tuple)):
        return [], [(path, rules, "is not a list")]
    normalized, problems = [], []
    if len(rules) > MAX_RULES:
        problems.append((path, "%d rules" % len(rules), "is more than the %d the program holds" % MAX_RULES))
    for index, rule in enumerate(rules):
        parsed, found = parse_rule(rule, "%s[%d]" % (path, index))
        normalized.append(parsed)
        problems.extend(found)
    return normalized, problems


# --- packing and rendering -----------------------------------------------------------------------------

def pack(rule):
    """struct payload_rule of a normalized rule."""
    payload = rule.get("payload") or {}
    limit = rule.get("limit") or {}
    flags = rule.get("tcp_flags") or {}
    verified = {None: "any", True: "verified", False: "unverified"}[rule.get("verified")]
    return abi.pack_payload_rule(
        rule["action"], rule.get("protocol") or 0, verified,
        dport=tuple(rule.get("dst_port") or abi.ANY_PORT), sport=tuple(rule.get("src_port") or abi.ANY_PORT),
        length=tuple(rule.get("length") or abi.ANY_PORT), ttl=tuple(rule.get("ttl") or abi.ANY_TTL),
        tcp_flags=(flags.get("mask", 0), flags.get("value", 0)), payload_offset=payload.get("offset", 0),
        payload=binascii.unhexlify(payload.get("value", "")),
        payload_mask=binascii.unhexlify(payload["mask"]) if payload else None,
        limit=(limit.get("packets_per_sec", 0), limit.get("bytes_per_sec", 0)))


def desired_values(rules, where="payload_rules"):
    """The packed rules of a list of (normalized) rules; ValueError naming the first problem."""
    normalized, problems = parse_rules(rules, where)
    if problems:
        path, value, reason = problems[0]
        raise ValueError("%s: %r %s" % (path, value, reason))
    return [pack(rule) for rule in normalized]


def render(value):
    """One packed rule as a line of a diff or a metric label: only what it matches."""
    (action, proto, verified, payload_len, ttl_min, ttl_max, flags_mask, flags_value, dport_min, dport_max,
     sport_min, sport_max, len_min, len_max, offset, limit_pps, limit_bps, content, mask) = abi.PAYLOAD_RULE.unpack(value)
    words = [abi.RULE_ACTIONS[action] if action < len(abi.RULE_ACTIONS) else "action %d" % action]
    names = dict((number, name) for name, number in abi.IPPROTO.items())
    if proto:
        words.append(names.get(proto, "proto %d" % proto))
    for label, low, high, top in (("dport", dport_min, dport_max, 0xFFFF), ("sport", sport_min, sport_max, 0xFFFF),
                                  ("length", len_min, len_max, 0xFFFF), ("ttl", ttl_min, ttl_max, 0xFF)):
        if (low, high) != (0, top):
            words.append("%s %s" % (label, low if low == high else "%d-%d" % (low, high)))
    if flags_mask:
        words.append("flags %#04x/%#04x" % (flags_value, flags_mask))
    if payload_len:
        text = binascii.hexlify(content[:payload_len]).decode()
        if mask[:payload_len] != b"\xff" * payload_len:
            text += "/" + binascii.hexlify(mask[:payload_len]).decode()
        words.append("payload@%d %s" % (offset, text))
    if verified:
        words.append(abi.RULE_VERIFIED[verified])
    if abi.RULE_ACTIONS[action:action + 1] == ("limit",):
        words.append("limit %s pps / %s Bps" % (limit_pps or "-", limit_bps or "-"))
    return " ".join(words)


# --- what is loaded, and the steps that load a list -----------------------------------------------------

def rule_key(bank, position):
    return abi.U32.pack(bank * MAX_RULES + position)


def active_bank(present):
    """The bank the program reads, from the present edge_payload_rule_bank entry (absent: 0)."""
    value = (present.get(BANK_MAP) or {}).get(BANK_KEY)
    return abi.PAYLOAD_RULE_BANK.unpack(value)[0] & 1 if value else 0


def bank_values(present, bank):
    """The MAX_RULES entries of one bank (absent ones empty)."""
    entries = present.get(RULES_MAP) or {}
    return [entries.get(rule_key(bank, position), EMPTY) for position in range(MAX_RULES)]


def present_entries(rules, bank=0):
    """The two maps' entries (as edge_rules reads them) of a list loaded by steps(): in `bank`,
    the other bank the same."""
    wanted = list(rules) + [EMPTY] * (MAX_RULES - len(rules))
    entries = dict((rule_key(which, position), wanted[position]) for which in (0, 1) for position in range(MAX_RULES))
    return {RULES_MAP: entries, BANK_MAP: {BANK_KEY: abi.PAYLOAD_RULE_BANK.pack(bank)}}


def loaded(present):
    """The list the program reads now: the active bank up to its first empty entry."""
    values = bank_values(present, active_bank(present))
    return values[:values.index(EMPTY)] if EMPTY in values else values


def changes(present, desired):
    """(added, changed, removed) positions: the list the program reads against `desired` (packed)."""
    before, after = loaded(present), list(desired)
    added = list(range(len(before), len(after)))
    removed = list(range(len(after), len(before)))
    changed = [p for p in range(min(len(before), len(after))) if before[p] != after[p]]
    return added, changed, removed


# Why these steps, in this order (the unit tests pin it):
#   rules_stage       the new list into the bank the program does not read (only the entries that
#                     differ from what that bank holds; the rest of the bank emptied)
#   rules_switch      one 4-byte write: the program reads the new list from its next packet on
#   rules_sync        the old bank brought up to the same list, so that the next change again
#                     writes only what differs, and a failed later step can switch back to it
#   rules_hits_reset  the hit counters of the positions whose rule changed are zeroed, so a count
#                     always belongs to the rule at its position (no undo: counts are not kept)
STEPS = ("rules_stage", "rules_switch", "rules_sync", "rules_hits_reset")


def steps(present, desired):
    """{step name: (map name, operation, entries)} of STEPS; each entry (key, new, old). Nothing
    when the program reads `desired` (packed rules, in order) already."""
    empty = dict((name, (RULES_MAP, "update", [])) for name in STEPS)
    wanted = list(desired) + [EMPTY] * (MAX_RULES - len(desired))
    active = active_bank(present)
    reading = bank_values(present, active)
    if reading == wanted:
        return empty
    other = 1 - active
    staged = bank_values(present, other)
    old_bank = (present.get(BANK_MAP) or {}).get(BANK_KEY) or abi.PAYLOAD_RULE_BANK.pack(active)
    return {
        "rules_stage": (RULES_MAP, "update", [(rule_key(other, p), new, old)
                                              for p, (new, old) in enumerate(zip(wanted, staged)) if new != old]),
        "rules_switch": (BANK_MAP, "update", [(BANK_KEY, abi.PAYLOAD_RULE_BANK.pack(other), old_bank)]),
        "rules_sync": (RULES_MAP, "update", [(rule_key(active, p), new, old)
                                             for p, (new, old) in enumerate(zip(wanted, reading)) if new != old]),
        "rules_hits_reset": (HITS_MAP, "update", [(abi.U32.pack(p), ZERO_HITS, None)
                                                  for p, (new, old) in enumerate(zip(wanted, reading))
                                                  if new != old and new != EMPTY]),
    }


def render_changes(present, desired, limit=100):
    """(before lines, after lines) of the positions that differ."""
    before_values, after_values = loaded(present), list(desired)
    added, changed, removed = changes(present, desired)
    before = sorted(changed + removed)
    after = sorted(added + changed)
    return (_map_sync.limited(("  [%d] %s" % (p, render(before_values[p])) for p in before), len(before), limit),
            _map_sync.limited(("  [%d] %s" % (p, render(after_values[p])) for p in after), len(after), limit))
