# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""The one map-sync engine: every module (and test or bench helper) that converges BPF maps to
wanted entries goes through it.

It follows the shape of a resource module: *want* (the wanted entries, {map: {key: value}}, made
by the caller from its parameters: _rules for the POP, mapper_rules for a game-server host) and
*have* (the entries read from the pinned maps) are compared (`map_changes`); the caller orders the
differences into a plan of `Step`s (the order is what keeps a filter safe while it changes, so it
stays the caller's pure, tested function: _rules.plan_writes); `apply_plan` makes the steps in
order and, when one fails, undoes every step made (`inverse`, newest first), so a failed run
leaves the maps as they were. `limited` cuts the diff's lines the same way for every module.

`open_pinned` / `check_layout` refuse a map whose key or value size (or, where given, number of
entries) is not what this collection packs (a program of another version) before anything is read
or written.

Pure Python but for `write_step` and `open_pinned`, which take libbpf map objects (_bpf.BpfMap).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import itertools
import sys

from ansible_collections.anycast.edge.plugins.module_utils import _pins
from ansible_collections.anycast.edge.plugins.module_utils._bpf import BpfError, num_possible_cpus

# One step of a plan: `operation` ("update" or "delete") on `map_name` for `entries`, each
# (key, new value or None for a delete, old value or None when absent before): the old values are
# what lets a step be undone. `target` names which copy of the map, when the caller writes several
# (the mapper's programs may each have their own); None: the one map of that name.
Step = collections.namedtuple("Step", ["name", "map_name", "operation", "entries", "target"])
Step.__new__.__defaults__ = (None,)


class LayoutError(ValueError):
    """A pinned map whose key or value size is not what this collection packs."""


class PlanError(Exception):
    """A step failed; every step made before it was undone, unless `undo_errors` says otherwise."""

    def __init__(self, step, cause, undo_errors):
        self.step = step
        self.cause = cause
        self.undo_errors = undo_errors
        text = "step %s (%s of %d entries in %s) failed: %s" % (
            step.name, step.operation, len(step.entries), step.map_name, cause)
        if undo_errors:
            text += "; the rollback failed too, the maps are partly updated: " + "; ".join(undo_errors)
        else:
            text += "; every earlier write was undone"
        super(PlanError, self).__init__(text)


# --- want / have / compare ---------------------------------------------------------------------

def map_changes(present, desired):
    """(added, changed, removed) of one map: {key: new}, {key: (new, old)}, {key: old}; added and
    changed in desired's order, removed in present's. The entries that differ are found by set
    operations on the dicts' views (C loops: a million entries compared in a fraction of a
    second); only those are then visited one by one."""
    if present == desired:  # the no-op rerun: one C-level comparison of every entry
        return {}, {}, {}
    if not present:
        return dict(desired), {}, {}
    differing = set(key for key, dummy in desired.items() - present.items())
    added = {}
    changed = {}
    for key in filter(differing.__contains__, desired):
        value = desired[key]
        old = present.get(key)
        if old is None:
            added[key] = value
        else:
            changed[key] = (value, old)
    gone = present.keys() - desired.keys()
    removed = dict((key, present[key]) for key in filter(gone.__contains__, present)) if gone else {}
    return added, changed, removed


def upserts(added, changed):
    """A step's update entries (key, new, old or None) for what map_changes() found added or changed."""
    entries = [(key, value, None) for key, value in added.items()]
    entries.extend((key, new, old) for key, (new, old) in changed.items())
    return entries


def deletes(removed):
    """A step's delete entries (key, None, old) for what map_changes() found removed."""
    return [(key, None, old) for key, old in removed.items()]


# --- apply / undo ------------------------------------------------------------------------------

def inverse(step, unrestorable=()):
    """The steps that undo `step`: put back the old values, delete what was absent before.
    Deleting a key a failed batch never wrote is harmless (deletes skip absent keys). A map in
    `unrestorable` keeps nothing to put back (a deleted cache entry, zeroed counters): its step
    has no inverse delete."""
    restore = [(key, old, new) for key, new, old in step.entries if old is not None]
    drop = [(key, None, new) for key, new, old in step.entries if old is None]
    undo = []
    if restore:
        undo.append(Step("undo_" + step.name, step.map_name, "update", restore, step.target))
    if drop and step.map_name not in unrestorable:
        undo.append(Step("undo_" + step.name, step.map_name, "delete", drop, step.target))
    return undo


def write_step(bpf_map, step, in_place=False):
    """Make one step's writes on one map; returns how many elements were written or deleted.
    Batches are one syscall (a packet sees each element before or after, never half written); a
    per-CPU map gets the value on every CPU. in_place: an update of an array created with
    BPF_F_MMAPABLE written through its mmap, with plain memory copies: only for a layout where a
    value seen half written is safe (edge_src_filter: every bit of it stands alone)."""
    if in_place and step.operation == "update":
        return bpf_map.array_write((int.from_bytes(key, sys.byteorder), value) for key, value, _old in step.entries)
    if bpf_map.is_percpu and step.operation == "update":
        cpus = num_possible_cpus()
        for key, value, _old in step.entries:
            bpf_map.update_percpu(key, [value] * cpus)
        return len(step.entries)
    keys = [entry[0] for entry in step.entries]
    if step.operation == "update":
        bpf_map.update_batch(keys, [entry[1] for entry in step.entries])
    else:
        bpf_map.delete_batch(keys)
    return len(keys)


def executor(maps, in_place=()):
    """execute(step) for apply_plan: writes each step into maps[step.target], or maps[step.map_name]
    when it has no target; the maps named in `in_place` are written in place (see write_step)."""
    def execute(step):
        target = maps[step.map_name if step.target is None else step.target]
        return write_step(target, step, in_place=step.map_name in in_place)
    return execute


def apply_plan(plan, execute, invert=inverse, on_step=None):
    """Make the steps of `plan` in order with execute(step). If one fails (BpfError or
    ValueError), undo it and every step before it, newest first (invert(step): the undo steps),
    and raise PlanError: the maps are left as they were. on_step(step) is called before each
    step (tests record the order)."""
    done = []
    for step in plan:
        if on_step is not None:
            on_step(step)
        done.append(step)
        try:
            execute(step)
        except (BpfError, ValueError) as exc:
            undo_errors = []
            for made in reversed(done):
                for undo in invert(made):
                    try:
                        execute(undo)
                    except (BpfError, ValueError) as undo_exc:
                        undo_errors.append("%s on %s: %s" % (undo.name, undo.map_name, undo_exc))
            raise PlanError(step, exc, undo_errors)


# --- diff rendering ----------------------------------------------------------------------------

def limited(lines, total, limit, indent="  "):
    """At most `limit` of `lines` (an iterable: only those are rendered), then a line saying how
    many of `total` more there are, so a 100,000-entry change reads like a small one."""
    shown = list(itertools.islice(lines, limit))
    if total > limit:
        shown.append("%s... and %d more" % (indent, total - limit))
    return shown


def diff_result(before, after, where):
    """Ansible's diff of a map set: before/after (text or data) with headers naming `where`."""
    return {"before": before, "after": after,
            "before_header": "%s (before)" % where, "after_header": "%s (after)" % where}


# --- open the pinned maps, checked against the layouts this collection packs ------------------

def check_layout(bpf_map, key_size, value_size, where, fix, max_entries=None):
    """LayoutError naming `where` (a pin or a program) when the map's sizes are not those given,
    or, with `max_entries`, when it holds another number of entries: an array map's contents are
    read and written as one block of max_entries values, so a program built with another
    capacity must be refused here, not fail half-way through a write."""
    if (bpf_map.key_size, bpf_map.value_size) != (key_size, value_size):
        raise LayoutError("the map %s has keys of %d and values of %d bytes, this collection packs %d and "
                          "%d: %s" % (where, bpf_map.key_size, bpf_map.value_size, key_size, value_size, fix))
    if max_entries is not None and bpf_map.max_entries != max_entries:
        raise LayoutError("the map %s holds %d entries, this collection sizes it for %d: %s"
                          % (where, bpf_map.max_entries, max_entries, fix))


def open_pinned(pin_root, iface, layouts, fix, unpinned=None, capacities=None):
    """{name: BpfMap} of the maps pinned for `iface` (_pins checks they belong to its pinned
    program), each checked against layouts {name: (key size, value size)}. Raises _pins.PinError,
    ValueError (a bad iface) or LayoutError; `fix` says what to do about a wrong layout.
    `unpinned` (a list; check mode ahead of an upgrade): a map with no pin is left out and named
    there instead of raising (_pins.open_pinned_maps). `capacities` {name: max_entries}: the maps
    whose number of entries must match too."""
    maps = _pins.open_pinned_maps(pin_root, iface, sorted(layouts), unpinned=unpinned)
    try:
        for name in sorted(maps):
            key_size, value_size = layouts[name]
            check_layout(maps[name], key_size, value_size, "pinned at %s" % _pins.map_pin_path(pin_root, iface, name),
                         fix, max_entries=(capacities or {}).get(name))
    except LayoutError:
        maps.close()
        raise
    return maps
