"""edge_rules converging the payload rules (anycast_edge_filters.rules) into the real maps of
build/xdp_edge.o, through ansible-playbook (the harness of test_edge_rules.py): idempotent, a
change writes only what differs, check mode touches nothing, and the program applies what was
written (run on a packet with BPF_PROG_TEST_RUN)."""

from __future__ import annotations

import json
import os

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import raw

from ansible_collections.anycast.edge.plugins.module_utils import _bpf
from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _payload_rules as pr

# The harness and fixtures of test_edge_rules.py (this folder is on sys.path: pytest prepends it).
from test_edge_rules import RULES, run_edge_rules
from test_edge_rules import bpffs, pop  # noqa: F401  pylint: disable=unused-import

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (BPF maps, bpffs)")

QUERY_FLOOD = {"action": "drop", "protocol": "udp", "dst_port": 27015, "payload": {"value": "ffffffff71"}}
TINY = {"action": "drop", "protocol": "udp", "length": "0-29"}
PLAYERS = {"action": "limit", "protocol": "udp", "dst_port": "27015-27020", "payload": {"value": "ffffffff55"},
           "limit": {"packets_per_sec": 5}}


def with_rules(*rules):
    params = json.loads(json.dumps(RULES))
    params["payload_rules"] = list(rules)
    return params


def loaded(pop):
    """The list the program reads, decoded from the pinned maps."""
    bank = abi.PAYLOAD_RULE_BANK.unpack(pop.map(pr.BANK_MAP).lookup(pr.BANK_KEY))[0]
    rules = []
    for position in range(pr.MAX_RULES):
        value = pop.map(pr.RULES_MAP).lookup(pr.rule_key(bank, position))
        if value == pr.EMPTY:
            break
        rules.append(pr.render(value))
    return bank, rules


def rule_steps(result):
    return [(step["name"], step["count"]) for step in result["steps"] if step["name"].startswith("rules_")]


def drops_by_rule(pop, payload):
    """Did the program drop this query to cs2-main as drop_rule?"""
    frame = raw(Ether() / IP(src="203.0.113.9", dst="198.51.100.10") / UDP(sport=40000, dport=27015) / payload)
    stats = pop.map("edge_reason_stats")
    key = abi.U32.pack(abi.REASON_INDEX["drop_rule"])
    before = abi.unpack_counters(stats.lookup_percpu(key))[0]
    pop.verdict(frame)
    return abi.unpack_counters(stats.lookup_percpu(key))[0] == before + 1


def test_rules_converge_and_a_rerun_changes_nothing(pop, tmp_path):
    assert not drops_by_rule(pop, b"\xff\xff\xff\xffq")
    first = run_edge_rules(pop, tmp_path, with_rules(QUERY_FLOOD, TINY))
    assert first.result["changed"] is True
    assert first.result["maps"]["edge_payload_rules"] == {"added": 2, "changed": 0, "removed": 0}
    # A fresh program reads bank 0: the list goes to bank 1, the switch, then bank 0 follows.
    assert rule_steps(first.result) == [("rules_stage", 2), ("rules_switch", 1), ("rules_sync", 2),
                                        ("rules_hits_reset", 2)]
    assert loaded(pop) == (1, ["drop udp dport 27015 payload@0 ffffffff71", "drop udp length 0-29"])
    assert drops_by_rule(pop, b"\xff\xff\xff\xffq")
    again = run_edge_rules(pop, tmp_path, with_rules(QUERY_FLOOD, TINY))
    assert again.result["changed"] is False and again.recap["changed"] == 0
    assert rule_steps(again.result) == []


def test_a_change_writes_only_what_differs_and_resets_only_its_counters(pop, tmp_path):
    run_edge_rules(pop, tmp_path, with_rules(QUERY_FLOOD, TINY, PLAYERS))
    hits = pop.map(pr.HITS_MAP)
    cpus = _bpf.num_possible_cpus()
    for position in range(3):
        hits.update_percpu(abi.U32.pack(position), [abi.EDGE_COUNTER.pack(7, 700)] * cpus)
    edited = dict(TINY, length="0-35")
    changed = run_edge_rules(pop, tmp_path, with_rules(QUERY_FLOOD, edited, PLAYERS), "--diff")
    assert changed.result["maps"]["edge_payload_rules"] == {"added": 0, "changed": 1, "removed": 0}
    assert rule_steps(changed.result) == [("rules_stage", 1), ("rules_switch", 1), ("rules_sync", 1),
                                          ("rules_hits_reset", 1)]
    assert "-  [1] drop udp length 0-29" in changed.stdout and "+  [1] drop udp length 0-35" in changed.stdout
    assert loaded(pop) == (0, ["drop udp dport 27015 payload@0 ffffffff71", "drop udp length 0-35",
                               "limit udp dport 27015-27020 payload@0 ffffffff55 limit 5 pps / - Bps"])
    counts = [abi.unpack_counters(hits.lookup_percpu(abi.U32.pack(position))) for position in range(3)]
    assert counts == [(7 * cpus, 700 * cpus), (0, 0), (7 * cpus, 700 * cpus)]
    # Removing the first rule moves the others up: every position changes, the list shrinks.
    shorter = run_edge_rules(pop, tmp_path, with_rules(edited, PLAYERS))
    assert shorter.result["maps"]["edge_payload_rules"] == {"added": 0, "changed": 2, "removed": 1}
    assert loaded(pop)[1] == ["drop udp length 0-35",
                              "limit udp dport 27015-27020 payload@0 ffffffff55 limit 5 pps / - Bps"]
    assert not drops_by_rule(pop, b"\xff\xff\xff\xffq" + bytes(20))     # longer than the length rule
    assert drops_by_rule(pop, b"\xff\xff\xff\xffq")
    emptied = run_edge_rules(pop, tmp_path, with_rules())
    assert emptied.result["maps"]["edge_payload_rules"] == {"added": 0, "changed": 0, "removed": 2}
    assert loaded(pop)[1] == []


def test_check_mode_touches_nothing(pop, tmp_path):
    run_edge_rules(pop, tmp_path, with_rules(QUERY_FLOOD))
    before = {name: pop.entries(name) for name in (pr.RULES_MAP, pr.BANK_MAP)}
    checked = run_edge_rules(pop, tmp_path, with_rules(TINY, QUERY_FLOOD), "--check", "--diff")
    assert checked.result["changed"] is True
    assert checked.result["maps"]["edge_payload_rules"] == {"added": 1, "changed": 1, "removed": 0}
    assert {name: pop.entries(name) for name in (pr.RULES_MAP, pr.BANK_MAP)} == before
    real = run_edge_rules(pop, tmp_path, with_rules(TINY, QUERY_FLOOD))
    assert (real.result["maps"], real.result["steps"]) == (checked.result["maps"], checked.result["steps"])


def test_a_bad_rule_fails_before_any_write(pop, tmp_path):
    run_edge_rules(pop, tmp_path, with_rules(QUERY_FLOOD))
    before = {name: pop.entries(name) for name in (pr.RULES_MAP, pr.BANK_MAP, "edge_config", "edge_services")}
    failed = run_edge_rules(pop, tmp_path, with_rules(QUERY_FLOOD, {"action": "drop", "ttl": "9-3"}),
                            expect_failure=True)
    assert failed.result["failed"] is True
    assert "payload_rules[1].ttl: '9-3' is an empty range (min > max)" in failed.result["msg"]
    assert {name: pop.entries(name) for name in (pr.RULES_MAP, pr.BANK_MAP, "edge_config", "edge_services")} == before
