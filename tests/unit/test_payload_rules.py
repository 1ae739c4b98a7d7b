"""Payload rules: the one parser (every problem with its path and value), the packing, and the
steps that load a list (plugins/module_utils/_payload_rules.py, through _rules' plan).

The steps are replayed on a model of the two maps, checking after every single step that the list
the program reads is the old one or the new one, whole (never a mix), and that the inverse of the
steps, newest first, puts everything back.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _payload_rules as pr
from ansible_collections.anycast.edge.plugins.module_utils import _rules

A2S_PLAYER = {"action": "limit", "protocol": "udp", "dst_port": 27015, "payload": {"value": "ffffffff55"},
              "limit": {"packets_per_sec": 5}}
JUNK = {"action": "drop", "protocol": "udp", "dst_port": "27000-27100", "length": [0, 40]}
SYN = {"action": "drop", "protocol": "tcp", "tcp_flags": {"mask": ["syn", "ack"], "value": ["syn"]}, "ttl": "0-2"}
KEEP = {"action": "pass", "protocol": "udp", "payload": {"offset": 4, "value": "54", "mask": "ff"}, "verified": True}


def parsed(rule):
    normalized, problems = pr.parse_rule(rule, "r")
    assert problems == []
    return normalized


# ---- the parser ------------------------------------------------------------------------------------

def test_normalized_rules_say_exactly_what_they_match():
    assert parsed(A2S_PLAYER) == {"action": "limit", "protocol": "udp", "dst_port": [27015, 27015],
                                  "payload": {"offset": 0, "value": "ffffffff55", "mask": "ffffffffff"},
                                  "limit": {"packets_per_sec": 5}}
    assert parsed(JUNK)["dst_port"] == [27000, 27100] and parsed(JUNK)["length"] == [0, 40]
    assert parsed(SYN)["tcp_flags"] == {"mask": 0x12, "value": 0x02} and parsed(SYN)["ttl"] == [0, 2]


@pytest.mark.parametrize("rule", [A2S_PLAYER, JUNK, SYN, KEEP])
def test_parsing_a_normalized_rule_gives_it_back(rule):
    assert parsed(parsed(rule)) == parsed(rule)


@pytest.mark.parametrize("rule,path,reason", [
    ({"action": "reject"}, "r.action", "is not one of drop, pass, limit"),
    ({"action": "drop", "protocol": "sctp"}, "r.protocol", "is not one of udp, tcp, icmp"),
    ({"action": "drop", "protocol": "udp", "dst_port": 70000}, "r.dst_port", "out of range (0..65535)"),
    ({"action": "drop", "protocol": "udp", "dst_port": "200-100"}, "r.dst_port", "empty range"),
    ({"action": "drop", "protocol": "udp", "src_port": "x"}, "r.src_port", "is not a number"),
    ({"action": "drop", "protocol": "icmp", "dst_port": 1}, "r.dst_port", "needs protocol udp or tcp"),
    ({"action": "drop", "ttl": 256}, "r.ttl", "out of range (0..255)"),
    ({"action": "drop", "protocol": "udp", "tcp_flags": {"mask": 2}}, "r.tcp_flags", "needs protocol tcp"),
    ({"action": "drop", "protocol": "tcp", "tcp_flags": {"mask": ["syn"], "value": ["ack"]}}, "r.tcp_flags.value",
     "outside the mask"),
    ({"action": "drop", "protocol": "tcp", "tcp_flags": {"mask": ["sin"]}}, "r.tcp_flags.mask", "unknown flags sin"),
    ({"action": "drop", "payload": {"value": "ff" * 17}}, "r.payload.value", "17 bytes; a rule compares at most 16"),
    ({"action": "drop", "payload": {"value": "fff"}}, "r.payload.value", "even number of hex digits"),
    ({"action": "drop", "payload": {"value": "ffff", "mask": "ff"}}, "r.payload.mask", "one mask byte per value byte"),
    ({"action": "drop", "payload": {"value": "f1", "mask": "f0"}}, "r.payload.value", "bits the mask clears"),
    ({"action": "drop", "payload": {"value": "ff", "offset": -1}}, "r.payload.offset", "is not a byte offset"),
    ({"action": "drop", "verified": "yes"}, "r.verified", "is not a boolean"),
    ({"action": "limit"}, "r.limit", "is required by action limit"),
    ({"action": "limit", "limit": {"packets_per_sec": 0}}, "r.limit.packets_per_sec", "must be an integer > 0"),
    ({"action": "drop", "limit": {"packets_per_sec": 1}}, "r.limit", "only for action limit"),
    ({"action": "drop", "dport": 27015}, "r.dport", "is not a rule setting"),
])
def test_each_problem_names_its_path_and_value(rule, path, reason):
    normalized, problems = pr.parse_rule(rule, "r")
    assert normalized is None
    assert any(p == path and reason in why for p, dummy, why in problems), problems


def test_every_problem_of_every_rule_at_once():
    rules = [JUNK, {"action": "reject", "ttl": 300}, SYN, {"action": "limit", "protocol": "tcp", "dst_port": 0}]
    dummy, problems = pr.parse_rules(rules, "anycast_edge_filters.rules")
    assert sorted(path for path, value, why in problems) == [
        "anycast_edge_filters.rules[1].action", "anycast_edge_filters.rules[1].ttl",
        "anycast_edge_filters.rules[3].limit"]
    dummy, problems = pr.parse_rules([{"action": "drop"}] * 257, "rules")
    assert problems == [("rules", "257 rules", "is more than the 256 the program holds")]


# ---- packing -------------------------------------------------------------------------------------------

def test_packing_fills_any_with_the_whole_range_and_masks_the_value():
    rule = abi.PAYLOAD_RULE.unpack(pr.pack(parsed({"action": "drop", "payload": {"value": "f0ff", "mask": "f0ff"}})))
    assert rule[0] == abi.RULE_ACTIONS.index("drop") and rule[1] == 0                      # any protocol
    assert rule[4:6] == (0, 255) and rule[8:14] == (0, 0xFFFF, 0, 0xFFFF, 0, 0xFFFF)      # ttl, ports, length
    assert rule[3] == 2 and rule[-2][:2] == b"\xf0\xff" and rule[-1] == b"\xf0\xff" + bytes(14)
    zero = abi.PAYLOAD_RULE.unpack(pr.pack(parsed({"action": "drop", "protocol": "udp", "src_port": 0})))
    assert zero[10:12] == (0, 0)                                                            # port 0, not any


def test_render_says_only_what_the_rule_matches():
    assert pr.render(pr.pack(parsed(A2S_PLAYER))) == "limit udp dport 27015 payload@0 ffffffff55 limit 5 pps / - Bps"
    assert pr.render(pr.pack(parsed(SYN))) == "drop tcp ttl 0-2 flags 0x02/0x12"
    assert pr.render(pr.pack(parsed(KEEP))) == "pass udp payload@4 54 verified"


# ---- the steps ---------------------------------------------------------------------------------------

def packed(*rules):
    return [pr.pack(parsed(rule)) for rule in rules]


def loaded_state(rules, bank=0):
    return pr.present_entries(rules, bank)


def apply_step(state, step):
    if step.map_name == pr.HITS_MAP:
        state.setdefault(pr.HITS_MAP, {}).update((key, new) for key, new, old in step.entries)
        return
    target = state.setdefault(step.map_name, {})
    for key, new, dummy in step.entries:
        assert step.operation == "update", "arrays are only ever written"
        target[key] = new


def plan(present, rules):
    return _rules.plan_writes(present, {pr.RULES_MAP: list(rules)})


def test_the_same_list_is_no_change():
    present = loaded_state(packed(A2S_PLAYER, JUNK))
    assert plan(present, packed(A2S_PLAYER, JUNK)) == []
    assert _rules.compare(present, {pr.RULES_MAP: packed(A2S_PLAYER, JUNK)})[pr.RULES_MAP] == ([], [], [])


def test_a_new_list_is_staged_switched_then_synced_and_changed_positions_reset():
    present = loaded_state(packed(A2S_PLAYER, JUNK), bank=1)
    steps = plan(present, packed(SYN, JUNK, KEEP))
    assert [(step.name, step.map_name) for step in steps] == [
        ("rules_stage", pr.RULES_MAP), ("rules_switch", pr.BANK_MAP), ("rules_sync", pr.RULES_MAP),
        ("rules_hits_reset", pr.HITS_MAP)]
    stage, switch, sync, reset = steps
    # Only what differs: position 0 (changed) and 2 (added), into bank 0 (the one not read) first.
    assert [key for key, dummy, dummy in stage.entries] == [pr.rule_key(0, 0), pr.rule_key(0, 2)]
    assert switch.entries == [(pr.BANK_KEY, abi.PAYLOAD_RULE_BANK.pack(0), abi.PAYLOAD_RULE_BANK.pack(1))]
    assert [key for key, dummy, dummy in sync.entries] == [pr.rule_key(1, 0), pr.rule_key(1, 2)]
    assert [key for key, dummy, dummy in reset.entries] == [abi.U32.pack(0), abi.U32.pack(2)]
    assert _rules.compare(present, {pr.RULES_MAP: packed(SYN, JUNK, KEEP)})[pr.RULES_MAP] == ([2], [0], [])


@pytest.mark.parametrize("old,new", [
    ((), (A2S_PLAYER,)),
    ((A2S_PLAYER, JUNK, SYN), ()),
    ((A2S_PLAYER, JUNK, SYN), (SYN, JUNK, A2S_PLAYER)),
    ((JUNK,), (KEEP, JUNK)),
])
def test_the_program_reads_the_old_list_or_the_new_one_after_every_step(old, new):
    for bank in (0, 1):
        present = loaded_state(packed(*old), bank)
        state = copy.deepcopy(present)
        seen = [pr.loaded(state)]
        steps = plan(present, packed(*new))
        for step in steps:
            apply_step(state, step)
            seen.append(pr.loaded(state))
            assert pr.loaded(state) in (packed(*old), packed(*new)), step.name
        assert pr.loaded(state) == packed(*new)
        # Both banks hold the new list: the next change writes only what differs again.
        assert pr.bank_values(state, 0) == pr.bank_values(state, 1)
        assert plan(state, packed(*new)) == []
        # And the inverse of every step, newest first, puts both maps back.
        for step in reversed(steps):
            for undo in _rules.inverse(step):
                apply_step(state, undo)
        state.pop(pr.HITS_MAP, None)
        assert state == present


def test_the_first_run_on_a_fresh_program_writes_both_banks():
    steps = plan({}, packed(A2S_PLAYER))
    assert [(step.name, len(step.entries)) for step in steps] == [
        ("rules_stage", 1), ("rules_switch", 1), ("rules_sync", 1), ("rules_hits_reset", 1)]


def test_the_rules_come_after_the_services_and_before_new_prefixes():
    order = _rules.STEP_ORDER
    assert order.index("services_add") < order.index("rules_stage") < order.index("rules_switch") \
        < order.index("rules_sync") < order.index("rules_hits_reset") < order.index("anycast_add")


def test_hit_counters_have_no_undo():
    reset = [step for step in plan({}, packed(JUNK)) if step.name == "rules_hits_reset"][0]
    assert _rules.inverse(reset) == []


def test_diff_shows_the_positions_that_differ():
    present = loaded_state(packed(A2S_PLAYER, JUNK))
    before, after = pr.render_changes(present, packed(A2S_PLAYER, SYN))
    assert before == ["  [1] drop udp dport 27000-27100 length 0-40"]
    assert after == ["  [1] drop tcp ttl 0-2 flags 0x02/0x12"]


def test_edge_rules_parameters_carry_the_rules_and_a_bad_one_is_refused():
    base = dict(tunnel_address="10.0.0.1", services=[], anycast_prefixes=[], backends=[], allow=[], deny=[],
                rate_limits={}, ban_sec=60, punch_idle_sec=120, a2s_cookie_epoch_sec=30)
    desired, dummy = _rules.desired_entries(dict(base, payload_rules=[parsed(JUNK)]), bytes(16))
    assert desired[pr.RULES_MAP] == packed(JUNK)
    desired, dummy = _rules.desired_entries(base, bytes(16))
    assert pr.RULES_MAP not in desired        # not given: left alone
    with pytest.raises(_rules.RuleError, match=r"payload_rules\[0\]\.action: 'reject'"):
        _rules.desired_entries(dict(base, payload_rules=[{"action": "reject"}]), bytes(16))


def test_the_documented_example_is_a_valid_list():
    text = (Path(__file__).resolve().parents[2] / "docs" / "payload-rules.md").read_text()
    example = yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, re.S).group(1))
    rules, problems = pr.parse_rules(example["anycast_edge_filters"]["rules"], "anycast_edge_filters.rules")
    assert problems == [] and len(rules) == 6
