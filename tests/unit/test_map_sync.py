"""The map-sync engine (_map_sync): compare, apply in order, undo on a failure, diff cutting.

The engine is pure but for the map it writes through `execute`; here a step is made on a dict
per map (what a map holds), and a write fails the way a full map refuses one (ValueError from
the executor, as BpfError would be). tests/integration/test_edge_rules.py runs the same engine on
pinned maps, test_tc_mapper_role.py on the mapper's.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.anycast.edge.plugins.module_utils import _map_sync

entries = st.dictionaries(st.binary(min_size=1, max_size=2), st.binary(min_size=1, max_size=2), max_size=12)


def make(state, step):
    """A step's writes on the dict standing for its map."""
    target = state.setdefault(step.map_name, {})
    if step.operation == "update":
        target.update((key, new) for key, new, _old in step.entries)
        return
    for key in [entry[0] for entry in step.entries]:
        target.pop(key, None)


def sync_plan(present, desired):
    """The plainest plan: adds and changes first, then removals, one step each per map."""
    plan = []
    for name in sorted(desired):
        added, changed, removed = _map_sync.map_changes(present.get(name, {}), desired[name])
        plan.append(_map_sync.Step(name + "_add", name, "update", _map_sync.upserts(added, changed)))
        plan.append(_map_sync.Step(name + "_remove", name, "delete", _map_sync.deletes(removed)))
    return [step for step in plan if step.entries]


@given(st.dictionaries(st.sampled_from("ab"), entries), st.dictionaries(st.sampled_from("ab"), entries))
def test_a_plan_makes_desired_and_its_inverse_puts_present_back(present, desired):
    desired = dict((name, desired.get(name, {})) for name in "ab")
    state = dict((name, dict(present.get(name, {}))) for name in "ab")
    plan = sync_plan(state, desired)
    _map_sync.apply_plan(plan, lambda step: make(state, step))
    assert state == desired
    for step in reversed(plan):
        for undo in _map_sync.inverse(step):
            make(state, undo)
    assert state == dict((name, present.get(name, {})) for name in "ab")


@given(entries, entries, st.integers(min_value=0, max_value=3))
def test_a_failed_step_leaves_every_map_as_it_was(present, desired, failing):
    """Whichever step fails, the steps made before it (and the failed one, which may have
    written part of its batch) are undone, newest first, and PlanError names the step."""
    state = {"a": dict(present), "b": dict(present)}
    before = {"a": dict(present), "b": dict(present)}
    plan = sync_plan(state, {"a": desired, "b": desired})
    if failing >= len(plan):
        return
    made = []

    def execute(step):
        if step is plan[failing]:
            make(state, step._replace(entries=step.entries[:1]))   # half a batch, then refused
            raise ValueError("no space left in %s" % step.map_name)
        made.append(step.name)
        make(state, step)

    with pytest.raises(_map_sync.PlanError) as caught:
        _map_sync.apply_plan(plan, execute)
    assert state == before
    assert caught.value.step is plan[failing] and caught.value.undo_errors == []
    assert str(caught.value).startswith("step %s (%s of %d entries in %s) failed: no space left in %s" % (
        plan[failing].name, plan[failing].operation, len(plan[failing].entries), plan[failing].map_name,
        plan[failing].map_name))
    assert str(caught.value).endswith("; every earlier write was undone")


def test_an_undo_that_fails_too_is_said():
    plan = [_map_sync.Step("first", "a", "update", [(b"k", b"v", None)]),
            _map_sync.Step("second", "a", "update", [(b"l", b"w", None)])]

    def execute(step):
        if step.name in ("second", "undo_second"):
            raise ValueError("refused")

    with pytest.raises(_map_sync.PlanError) as caught:
        _map_sync.apply_plan(plan, execute)
    assert caught.value.undo_errors == ["undo_second on a: refused"]
    assert "the rollback failed too, the maps are partly updated: undo_second on a: refused" in str(caught.value)


def test_what_cannot_be_restored_has_no_inverse_delete():
    """A deleted cache entry or a zeroed counter keeps no old value: its undo deletes nothing
    (the counters' new value stays), an ordinary map's undo deletes what was added."""
    step = _map_sync.Step("reset", "counters", "update", [(b"k", b"\0", None)], "copy1")
    assert _map_sync.inverse(step, unrestorable=("counters",)) == []
    assert _map_sync.inverse(step) == [_map_sync.Step("undo_reset", "counters", "delete", [(b"k", None, b"\0")],
                                                      "copy1")]


def test_on_step_sees_every_step_in_order():
    plan = [_map_sync.Step(name, "a", "update", [(name.encode(), b"v", None)]) for name in ("one", "two", "three")]
    seen = []
    _map_sync.apply_plan(plan, lambda step: None, on_step=lambda step: seen.append(step.name))
    assert seen == ["one", "two", "three"]


def test_the_diff_is_cut_with_a_count():
    lines = ("  line %d" % number for number in range(250))
    assert _map_sync.limited(lines, 250, 100) == ["  line %d" % number for number in range(100)] + ["  ... and 150 more"]
    assert _map_sync.limited(["  a", "  b"], 2, 100) == ["  a", "  b"]
    assert _map_sync.diff_result("x", "y", "maps on eth0") == {
        "before": "x", "after": "y", "before_header": "maps on eth0 (before)", "after_header": "maps on eth0 (after)"}


class Sized:
    def __init__(self, key_size, value_size, max_entries=1):
        self.key_size, self.value_size, self.max_entries = key_size, value_size, max_entries


def test_a_map_of_another_layout_is_refused_naming_it():
    _map_sync.check_layout(Sized(4, 8), 4, 8, "pinned at /x", "do this")
    with pytest.raises(_map_sync.LayoutError) as caught:
        _map_sync.check_layout(Sized(4, 16), 4, 8, "pinned at /sys/fs/bpf/e/eth0/maps/m", "attach it first")
    assert str(caught.value) == ("the map pinned at /sys/fs/bpf/e/eth0/maps/m has keys of 4 and values of 16 bytes, "
                                 "this collection packs 4 and 8: attach it first")


def test_a_map_of_another_capacity_is_refused_naming_it():
    # An array map is read and written as one block of max_entries values: a program built with
    # another capacity raised an OverflowError traceback half-way through edge_rules' write.
    _map_sync.check_layout(Sized(4, 32, 1 << 18), 4, 32, "pinned at /x", "do this", max_entries=1 << 18)
    _map_sync.check_layout(Sized(4, 32, 1 << 16), 4, 32, "pinned at /x", "do this")  # not asked: not checked
    with pytest.raises(_map_sync.LayoutError) as caught:
        _map_sync.check_layout(Sized(4, 32, 1 << 16), 4, 32, "pinned at /sys/fs/bpf/e/eth0/maps/edge_src_filter",
                               "attach it first", max_entries=1 << 18)
    assert str(caught.value) == ("the map pinned at /sys/fs/bpf/e/eth0/maps/edge_src_filter holds 65536 entries, "
                                 "this collection sizes it for 262144: attach it first")


def reference_changes(present, desired):
    """map_changes as the plain loop it stands for (the one it replaced)."""
    added = dict((key, value) for key, value in desired.items() if key not in present)
    changed = dict((key, (value, present[key])) for key, value in desired.items()
                   if key in present and present[key] != value)
    removed = dict((key, value) for key, value in present.items() if key not in desired)
    return added, changed, removed


@given(entries, entries)
def test_map_changes_finds_what_the_plain_loop_finds_in_the_same_order(present, desired):
    found = _map_sync.map_changes(present, desired)
    expected = reference_changes(present, desired)
    assert found == expected
    assert [list(part) for part in found] == [list(part) for part in expected]   # desired's, present's order
