"""edge_rules reading its rules from one file (issue 16 item 7), through real ansible-playbook runs.

The controller renders each POP's rules into one file (inventory_check's rules_dir, with
_rules.render_rules_file); the task names the file, the action plugin ships it to the POP's
temporary folder. The maps must end up exactly as when the same rules are task arguments, a
rerun and a check run must tell the truth, and nothing of the 100,000 prefixes may travel back in
the result.
"""

from __future__ import annotations

import json
import random

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _rules

from test_edge_rules import RULE_MAP_NAMES, RULES, changed_rules, cidrs, run_edge_rules
from test_edge_rules import bpffs, pop  # noqa: F401  pylint: disable=unused-import

POP_ONLY = ("tunnel_address",)


def rules_file(tmp_path, rules, name="pop1.json"):
    """The file the controller renders for a POP, and the task options that stay arguments."""
    path = tmp_path / name
    path.write_text(_rules.render_rules_file(rules))
    return path, dict((key, rules[key]) for key in POP_ONLY)


def test_a_rules_file_converges_the_maps_as_the_same_options_do(pop, tmp_path):
    by_options = run_edge_rules(pop, tmp_path, RULES).result
    as_options = pop.snapshot(RULE_MAP_NAMES)
    path, options = rules_file(tmp_path, RULES)
    again = run_edge_rules(pop, tmp_path, options, extra={"rules_file": str(path)}).result
    assert by_options["changed"] is True
    assert again["changed"] is False and again["writes"] == 0   # the same rules, read from the file
    assert pop.snapshot(RULE_MAP_NAMES) == as_options


def test_check_mode_and_diff_read_the_new_file_and_the_real_run_then_writes_it(pop, tmp_path):
    path, options = rules_file(tmp_path, RULES)
    run_edge_rules(pop, tmp_path, options, extra={"rules_file": str(path)})
    before = pop.snapshot(RULE_MAP_NAMES)
    new_path, options = rules_file(tmp_path, changed_rules(), "pop1-new.json")
    checked = run_edge_rules(pop, tmp_path, options, "--check", "--diff", extra={"rules_file": str(new_path)})
    assert checked.result["changed"] is True
    assert "+  203.0.113.0/24" in checked.stdout           # the new deny, from the new file
    assert pop.snapshot(RULE_MAP_NAMES) == before           # check mode wrote nothing
    made = run_edge_rules(pop, tmp_path, options, extra={"rules_file": str(new_path)}).result
    assert made["changed"] is True and made["maps"] == checked.result["maps"]
    assert "203.0.113.0/24" in cidrs(pop.entries("edge_deny_v4"))
    assert run_edge_rules(pop, tmp_path, options, extra={"rules_file": str(new_path)}).result["changed"] is False


def test_100k_prefixes_travel_as_a_file_and_not_back_in_the_result(pop, tmp_path):
    rnd = random.Random(5)
    deny = sorted(set("%d.%d.%d.0/24" % (rnd.randrange(1, 224), rnd.randrange(256), rnd.randrange(256))
                      for _index in range(110000)))[:100000]
    rules = dict(RULES, deny=deny, allow=[])
    path, options = rules_file(tmp_path, rules)
    run = run_edge_rules(pop, tmp_path, options, extra={"rules_file": str(path)})
    assert run.result["maps"]["edge_deny_v4"]["added"] == 100000
    assert cidrs(pop.entries("edge_deny_v4")) == set(deny)
    echoed = json.dumps(run.result)
    assert len(echoed) < 20000, "the result carries the rules back (%d bytes)" % len(echoed)


@pytest.mark.parametrize("content, message", [
    ("{\"rules\": {}}", "not a rules file of format 'anycast.edge rules 1'"),
    ("not json", "not a rules file ("),
    (None, "ban_sec"),
])
def test_a_bad_rules_file_fails_naming_it_before_any_write(pop, tmp_path, content, message):
    path = tmp_path / "bad.json"
    if content is None:   # a rules file of the right format, one of whose values is not of its type
        content = _rules.render_rules_file(dict(RULES, ban_sec="soon"))
    path.write_text(content)
    before = pop.snapshot(RULE_MAP_NAMES)
    failed = run_edge_rules(pop, tmp_path, {"tunnel_address": "10.0.0.1"}, extra={"rules_file": str(path)},
                            expect_failure=True).result
    assert failed["failed"] is True
    assert str(path) in failed["msg"] or "rules_file" in failed["msg"]
    assert message in failed["msg"], failed["msg"]
    assert pop.snapshot(RULE_MAP_NAMES) == before


def test_rules_as_options_and_a_file_at_once_are_refused(pop, tmp_path):
    path, options = rules_file(tmp_path, RULES)
    failed = run_edge_rules(pop, tmp_path, dict(options, deny=["10.0.0.0/8"]), extra={"rules_file": str(path)},
                            expect_failure=True).result
    assert failed["failed"] is True and "mutually exclusive: rules_file|deny" in failed["msg"], failed["msg"]
