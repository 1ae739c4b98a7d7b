"""edge_rules finds and repairs what was changed by hand (bpftool) in the maps it converges.

The no-op rerun of a large deny list compares the deny trie read back from the kernel with the
wanted list as two packed records (_rules.LpmRecord), whatever their size; these tests make that
comparison meet every kind of drift - a prefix deleted, a stray prefix added, a value changed, a
word of the derived filter cleared - and check that a --check --diff run reports it without
writing, a real run repairs exactly it, and the run after is a no-op again.
"""

from __future__ import annotations

import subprocess

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _rules

from harness.prefixes import random_prefixes
from test_edge_rules import RULE_MAP_NAMES, RULES, cidrs, derived_lists, run_edge_rules
from test_edge_rules import bpffs, pop  # noqa: F401  pylint: disable=unused-import

DENY_COUNT = 20000


def random_deny(count, seed):
    """/16../32 prefixes clear of the test lab's own addresses (192, 198, 10)."""
    return random_prefixes(count, seed, shortest=16, avoid_first_octets=(192, 198, 10))


def bpftool(*args):
    """bpftool, as an operator would run it by hand on the POP."""
    subprocess.run(["bpftool", *args], check=True, capture_output=True, text=True)


def hex_words(raw):
    return [format(byte, "02x") for byte in raw]


def pin(pop, name):
    return str(pop.pin_root / pop.iface / "maps" / name)


def test_drift_made_by_hand_is_found_by_check_mode_and_repaired(pop, tmp_path):
    deny = random_deny(DENY_COUNT, seed=18)
    rules = dict(RULES, deny=deny)
    converged = run_edge_rules(pop, tmp_path, rules).result
    assert converged["maps"]["edge_deny_v4"]["added"] == DENY_COUNT
    wanted_maps = pop.snapshot(RULE_MAP_NAMES)
    wanted_lists = derived_lists(pop)

    deleted, changed = _rules.parse_cidr(deny[100], "x"), _rules.parse_cidr(deny[200], "x")
    stray = _rules.parse_cidr("233.252.0.128/25", "x")
    bpftool("map", "delete", "pinned", pin(pop, "edge_deny_v4"), "key", "hex", *hex_words(deleted))
    bpftool("map", "update", "pinned", pin(pop, "edge_deny_v4"), "key", "hex", *hex_words(stray),
            "value", "hex", *hex_words(_rules.LPM_PRESENT))
    bpftool("map", "update", "pinned", pin(pop, "edge_deny_v4"), "key", "hex", *hex_words(changed),
            "value", "hex", *hex_words(abi.U32.pack(2)))
    # a hole in the filter XDP reads: the first entry that denies anything, cleared
    filter_bytes = wanted_lists[_rules.SOURCE_FILTER_MAP]
    size = abi.SRC_FILTER_ENTRY.size
    hole = next(index for index in range(abi.SRC_FILTER_ENTRIES)
                if filter_bytes[index * size:(index + 1) * size] != bytes(size))
    bpftool("map", "update", "pinned", pin(pop, _rules.SOURCE_FILTER_MAP), "key", "hex", *hex_words(abi.U32.pack(hole)),
            "value", "hex", *hex_words(bytes(size)))
    drifted_maps = pop.snapshot(RULE_MAP_NAMES)
    drifted_lists = derived_lists(pop)
    assert drifted_maps != wanted_maps and drifted_lists != wanted_lists

    check = run_edge_rules(pop, tmp_path, rules, "--check", "--diff").result
    assert check["changed"] is True
    assert check["maps"]["edge_deny_v4"] == {"added": 1, "changed": 1, "removed": 1}
    assert check["maps"][_rules.SOURCE_FILTER_MAP]["added"] >= 1   # the cleared entry comes back
    assert "deny" in str(check["diff"]) and _rules.render_lpm(deleted) in check["diff"]["after"]
    assert _rules.render_lpm(stray) in check["diff"]["before"]
    assert pop.snapshot(RULE_MAP_NAMES) == drifted_maps and derived_lists(pop) == drifted_lists   # nothing written

    repaired = run_edge_rules(pop, tmp_path, rules).result
    assert repaired["changed"] is True
    assert repaired["maps"]["edge_deny_v4"] == {"added": 1, "changed": 1, "removed": 1}
    assert pop.snapshot(RULE_MAP_NAMES) == wanted_maps
    assert derived_lists(pop) == wanted_lists
    assert cidrs(pop.entries("edge_deny_v4")) == set(deny)

    again = run_edge_rules(pop, tmp_path, rules).result
    assert again["changed"] is False and again["writes"] == 0


@pytest.mark.parametrize("where", ["edge_deny_v4", _rules.SOURCE_HOSTS_MAP])
def test_one_entry_deleted_by_hand_is_put_back(pop, tmp_path, where):
    """A single entry gone from the trie (or from the bitmaps of partly listed /24s) among 20,000."""
    deny = random_deny(DENY_COUNT, seed=19)
    rules = dict(RULES, deny=deny)
    run_edge_rules(pop, tmp_path, rules)
    wanted = pop.entries(where)
    victim = sorted(wanted)[len(wanted) // 2]
    bpftool("map", "delete", "pinned", pin(pop, where), "key", "hex", *hex_words(victim))
    assert victim not in pop.entries(where)

    repaired = run_edge_rules(pop, tmp_path, rules).result
    assert repaired["changed"] is True and repaired["maps"][where]["added"] == 1
    assert pop.entries(where) == wanted


# A wanted prefix of each trie, and the same prefix with host bits set (a key edge_rules never writes).
ALIASES = {
    "edge_deny_v4": ("100.64.0.0/10", "100.64.0.1/10"),
    "edge_allow_v4": ("192.0.2.0/28", "192.0.2.1/28"),
    "edge_anycast_v4": ("198.51.100.0/24", "198.51.100.7/24"),
}


@pytest.mark.parametrize("where", sorted(ALIASES))
def test_a_wanted_prefix_rewritten_with_host_bits_by_hand_is_put_back(pop, tmp_path, where):
    """The kernel's LPM trie matches, replaces and deletes by the prefix bits only: a key with host
    bits written by hand replaces the node of the wanted prefix, and is read back as written. The
    repair must leave the wanted prefix in the trie (an add that replaces the node, then a removal
    of the stray that deletes it, would not), and the run after must be a no-op."""
    wanted, stray = ALIASES[where]
    converged = run_edge_rules(pop, tmp_path, RULES).result
    assert converged["changed"] is True
    wanted_maps = pop.snapshot(RULE_MAP_NAMES)
    wanted_lists = derived_lists(pop)
    stray_key = abi.LPM_V4_KEY.pack(int(stray.split("/")[1]), _rules.parse_ipv4(stray.split("/")[0], "x"))
    bpftool("map", "update", "pinned", pin(pop, where), "key", "hex", *hex_words(stray_key),
            "value", "hex", *hex_words(wanted_maps[where][_rules.parse_cidr(wanted, "x")]))
    # one node per prefix: the stray took the wanted prefix's place
    assert stray in cidrs(pop.entries(where)) and wanted not in cidrs(pop.entries(where))
    assert len(pop.entries(where)) == len(wanted_maps[where])

    check = run_edge_rules(pop, tmp_path, RULES, "--check", "--diff").result
    assert check["changed"] is True
    assert check["maps"][where] == {"added": 1, "changed": 0, "removed": 1}
    assert stray in check["diff"]["before"] and wanted in check["diff"]["after"]

    repaired = run_edge_rules(pop, tmp_path, RULES).result
    assert repaired["changed"] is True
    assert repaired["maps"][where] == {"added": 1, "changed": 0, "removed": 1}
    assert pop.snapshot(RULE_MAP_NAMES) == wanted_maps
    assert derived_lists(pop) == wanted_lists

    again = run_edge_rules(pop, tmp_path, RULES).result
    assert again["changed"] is False and again["writes"] == 0


def test_a_prefix_of_its_own_written_with_host_bits_by_hand_is_removed(pop, tmp_path):
    """A stray key with host bits that is no wanted prefix: the removal derives the lists in between
    from the prefix it stands for (100.128.5.0/22 is 100.128.4.0/22), and removes the key as written."""
    run_edge_rules(pop, tmp_path, RULES)
    wanted_maps = pop.snapshot(RULE_MAP_NAMES)
    wanted_lists = derived_lists(pop)
    stray_key = abi.LPM_V4_KEY.pack(22, _rules.parse_ipv4("100.128.5.0", "x"))
    bpftool("map", "update", "pinned", pin(pop, "edge_deny_v4"), "key", "hex", *hex_words(stray_key),
            "value", "hex", *hex_words(_rules.LPM_PRESENT))

    repaired = run_edge_rules(pop, tmp_path, RULES).result
    assert repaired["changed"] is True and repaired["maps"]["edge_deny_v4"] == {"added": 0, "changed": 0, "removed": 1}
    assert pop.snapshot(RULE_MAP_NAMES) == wanted_maps
    assert derived_lists(pop) == wanted_lists

    again = run_edge_rules(pop, tmp_path, RULES).result
    assert again["changed"] is False and again["writes"] == 0


def test_a_map_that_cannot_be_read_is_named_with_what_it_holds(pop, tmp_path):
    """A cache key of a kind this collection does not know, written by hand: the map opens (its
    layout is right) but its content cannot be read. The task fails naming the map's pin and the
    key, not the iface (which is fine), and writes nothing; once the key is gone it runs again."""
    run_edge_rules(pop, tmp_path, RULES)
    wanted_maps = pop.snapshot(RULE_MAP_NAMES)
    unknown_kind = abi.U32.pack(len(abi.A2S_KINDS) << abi.A2S_CACHE_KEY_KIND_SHIFT | 17)
    cache_pin = pin(pop, _rules.A2S_CACHE_MAP)
    bpftool("map", "update", "pinned", cache_pin, "key", "hex", *hex_words(unknown_kind),
            "value", "hex", *hex_words(bytes(abi.A2S_CACHE_ENTRY.size)))

    failed = run_edge_rules(pop, tmp_path, dict(RULES, ban_sec=45), expect_failure=True).result
    assert failed.get("failed") is True
    assert failed["msg"].startswith("reading the map %s failed: " % cache_pin), failed["msg"]
    assert "0x%08x" % abi.U32.unpack(unknown_kind)[0] in failed["msg"]
    assert pop.snapshot(RULE_MAP_NAMES) == wanted_maps

    bpftool("map", "delete", "pinned", cache_pin, "key", "hex", *hex_words(unknown_kind))
    again = run_edge_rules(pop, tmp_path, RULES).result
    assert again["changed"] is False and again["writes"] == 0
