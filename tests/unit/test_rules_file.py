"""The rules file: what inventory_check renders per POP and edge_rules reads (_rules, _inventory)."""

from __future__ import annotations

import json

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _inventory, _rules

RESOLVED = {
    "services": [{"name": "cs2", "id": 7, "address": "198.51.100.10", "protocol": "udp", "port": 27015,
                  "backend_address": "10.1.0.10"}],
    "anycast_prefixes": ["198.51.100.0/24"], "backends": ["10.1.0.10"], "allow": ["192.0.2.0/28"],
    "deny": ["203.0.113.0/24", "100.64.0.0/10"], "rate_limits": {"udp": {"packets_per_sec": 400}},
    "ban_sec": 60, "punch_idle_sec": 120, "a2s_cookie_epoch_sec": 30, "verified_idle_sec": 600,
    "payload_rules": [{"action": "drop", "protocol": "udp", "dst_port": 27015, "length": [0, 40]}],
    "control_plane": {"pop1": [{"address": "10.0.0.2/32", "reason": "tunnel address of POP pop2"}],
                      "pop2": [{"address": "10.0.0.1/32", "reason": "tunnel address of POP pop1"}]},
    "attack_detection": {"cs2": {"unverified_packets_per_sec": 5000}},
}


def test_a_pops_file_holds_every_rule_with_its_own_control_plane_and_reads_back():
    rules = _inventory.pop_rules(RESOLVED, "pop1")
    assert sorted(rules) == sorted(_rules.RULES_FILE_OPTIONS)
    assert rules["control_plane"] == RESOLVED["control_plane"]["pop1"]
    text = _rules.render_rules_file(rules)
    assert "\n" not in text.rstrip("\n") and ": " not in text      # compact: one line, no padding
    assert _rules.read_rules_file(text, "pop1.json") == rules
    assert _rules.render_rules_file(_inventory.pop_rules(RESOLVED, "pop1")) == text   # same rules, same bytes
    assert _inventory.pop_rules(RESOLVED, "pop3")["control_plane"] == []


def test_a_pops_file_holds_its_own_wireguard_pairs_only():
    resolved = dict(RESOLVED, wireguard_pairs={"pop2": [{"backend": "10.1.0.10", "device": "aw-a31a83312b"}]})
    wanted = [{"backend": "10.1.0.10", "device": "aw-a31a83312b"}]
    assert _inventory.pop_rules(resolved, "pop2")["wireguard_pairs"] == wanted
    assert _inventory.pop_rules(resolved, "pop1")["wireguard_pairs"] == []
    text = _rules.render_rules_file(_inventory.pop_rules(resolved, "pop2"))
    assert _rules.read_rules_file(text, "pop2.json")["wireguard_pairs"] == resolved["wireguard_pairs"]["pop2"]


def test_the_agents_settings_and_other_pops_stay_out_of_the_file():
    document = json.loads(_rules.render_rules_file(_inventory.pop_rules(RESOLVED, "pop2")))
    assert "attack_detection" not in document["rules"]
    assert document["rules"]["control_plane"] == [{"address": "10.0.0.1/32", "reason": "tunnel address of POP pop1"}]


@pytest.mark.parametrize("text, message", [
    ("", "pop1.json: not a rules file ("),
    ("[]", "pop1.json: not a rules file of format 'anycast.edge rules 1'"),
    (json.dumps({"format": "anycast.edge rules 2", "rules": {}}), "of format 'anycast.edge rules 1'"),
    (json.dumps({"format": "anycast.edge rules 1", "rules": []}), "of format 'anycast.edge rules 1'"),
    (json.dumps({"format": "anycast.edge rules 1", "rules": {"deny": [], "cookie_keys": ["00"]}}),
     "pop1.json: cookie_keys is not an option a rules file carries"),
])
def test_a_file_this_collection_did_not_write_is_refused_naming_it(text, message):
    with pytest.raises(_rules.RuleError) as caught:
        _rules.read_rules_file(text, "pop1.json")
    assert message in str(caught.value)
