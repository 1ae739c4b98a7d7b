# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# MIT License (see https://opensource.org/licenses/MIT)
"""The collection's one program loader: what xdp_program and tc_program share.

- ``open_object`` / ``load_program``: open a compiled object, check the program is in it, load
  it (the verifier runs) and check the program's type;
- the map-reuse policy (``plan_map_reuse``): a pinned map is handed to the new program when its
  layout - type, sizes, flags, BTF key and value types - is the one the object declares, so its
  entries survive an upgrade; any other map is created empty;
- ``attached_is_ours``: is a program attached to a hook the one this collection put there;
- ``LoadRecords``: which object each program a module attached was loaded from, so that a rerun
  with the same object knows the tag without loading it again (the verifier of a large program
  takes tens of seconds on a slow host);
- ``ModuleFailure``: the error such a module fails its task with, and ``PinningModule``: the
  bpffs check before pins are read or made.

Where the pins are, and how a new pin replaces an old one, is ``_pins``; libbpf is ``_bpf``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os

from ansible_collections.anycast.edge.plugins.module_utils._bpf import (
    BPF_MAP_TYPE_DEVMAP,
    BPF_MAP_TYPE_DEVMAP_HASH,
    BPF_PROG_TYPE_SCHED_CLS,
    BPF_PROG_TYPE_XDP,
    BpfError,
    BpfObject,
    prog_info_by_id,
)
from ansible_collections.anycast.edge.plugins.module_utils._pins import PinError, prepare_pin_root

# What the message of a wrong program type says the program should have been.
PROGRAM_KINDS = {
    BPF_PROG_TYPE_XDP: 'an XDP program (SEC("xdp"))',
    BPF_PROG_TYPE_SCHED_CLS: 'a TC classifier (SEC("tc"))',
}
# The kernel keeps at most 15 characters of a program's name.
KERNEL_NAME_LEN = 15
# The kernel adds BPF_F_RDONLY_PROG to every device map it creates.
BPF_F_RDONLY_PROG = 1 << 7
DEVMAP_TYPES = (BPF_MAP_TYPE_DEVMAP, BPF_MAP_TYPE_DEVMAP_HASH)
LAYOUT_FIELDS = ("type", "key_size", "value_size", "max_entries", "flags")


class ModuleFailure(Exception):
    """Fail the task with this message (the module has cleaned up what it had begun)."""


class PinningModule(object):
    """What a module that pins programs has: ``module`` (the AnsibleModule), ``pin_root``, its
    ``result`` and ``modified`` (True once the host was really changed: a failure reports
    changed only then)."""

    module = pin_root = result = None
    modified = False

    def prepare_pins(self, may_mount):
        """True if pins can be read under pin_root (a bpffs under /sys/fs/bpf is mounted first
        when ``may_mount`` and none is there): ``_pins.prepare_pin_root``, with the result's
        bpffs_mounted."""
        try:
            usable, mounted = prepare_pin_root(self.pin_root, may_mount, self.module.check_mode)
        except PinError as exc:
            raise ModuleFailure(str(exc))
        self.result["bpffs_mounted"] = mounted
        self.modified = self.modified or (mounted and not self.module.check_mode)
        return usable


def open_object(path, program_name):
    """Open (not load) the object at ``path``, which must hold a program ``program_name``.

    Returns the BpfObject (the caller closes it); ModuleFailure names the option at fault.
    """
    if not os.path.isfile(path):
        raise ModuleFailure("object: %s is not a file" % path)
    try:
        obj = BpfObject.open(path)
    except BpfError as exc:
        raise ModuleFailure("object: cannot open %s: %s" % (path, exc))
    try:
        names = [prog.name for prog in obj.programs()]
        if program_name not in names:
            raise ModuleFailure("program: %s has no program %r (it has: %s)"
                                % (path, program_name, ", ".join(names) or "none"))
    except BaseException:
        obj.close()
        raise
    return obj


def load_program(obj, program_name, prog_type):
    """Load ``obj`` (maps created or reused, programs verified) and return its program
    ``program_name``, which must be of ``prog_type`` (a BPF_PROG_TYPE_*).

    Nothing is attached or pinned yet, so a failure here changes nothing on the host.
    """
    try:
        obj.load()
    except BpfError as exc:
        raise ModuleFailure("loading %s failed (nothing was changed): %s" % (obj.path, exc))
    program = obj.program(program_name)
    if program.info().type != prog_type:
        raise ModuleFailure("program: %s in %s is not %s" % (program_name, obj.path, PROGRAM_KINDS[prog_type]))
    return program


def map_layout(bpf_map):
    """What must be equal for a pinned map to be handed to a new program.

    The kernel's attributes (what libbpf itself would check) plus the BTF key and value
    types: two structs of the same size with reordered members must not share a map.
    """
    try:
        btf = bpf_map.btf_layout()
    except BpfError:
        btf = None
    layout = dict((field, getattr(bpf_map, field)) for field in LAYOUT_FIELDS)
    if bpf_map.type in DEVMAP_TYPES:
        # A definition without the flag and a live map with it are the same layout.
        layout["flags"] |= BPF_F_RDONLY_PROG
    layout["btf"] = btf
    return layout


def layout_differences(old, new):
    """What differs between two map_layout()s, as short phrases (empty: the same layout)."""
    diffs = ["%s %s -> %s" % (field, old[field], new[field]) for field in LAYOUT_FIELDS if old[field] != new[field]]
    # Compare BTF only when both sides have it (a map created without BTF says nothing).
    if old["btf"] is not None and new["btf"] is not None and old["btf"] != new["btf"]:
        diffs.append("key/value types changed")
    return diffs


class MapReusePlan(object):
    """What loading an object next to a folder of pinned maps does with each map.

    ``reused``: names of the object's maps that take over the pinned map (entries kept);
    ``created``: names that get a new, empty map (none pinned, or ``changed[name]`` says how
    its layout changed); ``stale``: pinned names the object no longer has.
    """

    def __init__(self):
        self.reused, self.created, self.stale, self.changed = [], [], [], {}

    def uses_the_pinned_maps(self, running_info, used_maps, pinned):
        """True if the running program (its ProgInfo) already uses every pinned map the object's
        program uses (``used_maps``: their names, from a load or its record): same tag and same
        maps make the same program.  (A map the code declares but never uses is in no program's
        map_ids; .rodata is made anew by each load and pinned by nobody.)"""
        return all(pinned[name].id in running_info.map_ids for name in self.reused if name in used_maps)


def plan_map_reuse(obj, pinned, folder):
    """Hand every map pinned in ``folder`` (``pinned``: {name: BpfMap} opened from there) whose
    layout matches the (opened, not yet loaded) object's definition to ``obj``.

    Returns a MapReusePlan.  Call before ``load_program``.
    """
    plan = MapReusePlan()
    for bpf_map in obj.maps():
        name = bpf_map.name
        old = pinned.get(name)
        diffs = layout_differences(map_layout(old), map_layout(bpf_map)) if old is not None else None
        if old is None or diffs:
            plan.created.append(name)
            if diffs:
                plan.changed[name] = ", ".join(diffs)
            continue
        try:
            # The layouts were compared above, more closely than reuse_fd's own check
            # (which does not know about the devmap flag the kernel adds).
            bpf_map.reuse_fd(old.fd, check_compatible=False)
        except BpfError as exc:
            raise ModuleFailure("cannot reuse the map pinned at %s: %s" % (os.path.join(folder, name), exc))
        plan.reused.append(name)
    plan.stale = sorted(set(pinned) - set(bpf_map.name for bpf_map in obj.maps()))
    return plan


def attached_is_ours(attached_info, program_name, pinned_id=None):
    """Is the attached program (its ProgInfo, None when the hook is empty) the one we put there?

    With our pin (``pinned_id``) only the pinned program is; without one (pins lost, or a hook
    nothing is pinned for) a program with our name is.
    """
    if attached_info is None:
        return False
    if pinned_id is not None:
        return attached_info.id == pinned_id
    return attached_info.name == program_name[:KERNEL_NAME_LEN]


def file_sha256(path):
    """The sha256 (hex) of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class LoadRecords(object):
    """Which object each program a module attached was loaded from: one JSON file per program id
    in ``folder`` - the object's sha256, the tag the kernel gave the program and the names of the
    maps the program uses.

    A program's tag is a function of the object's bytes (the kernel hashes the instructions
    libbpf hands it), so for the running program's id, a record with the object's sha256 gives
    the tag a load would give, without a load: the verifier of xdp_edge takes 25-30 s on an
    emulated CPU.  Program ids are not reused within a boot and the folder, under /run, goes
    with the boot as the programs do.  A record whose tag is not the running program's is
    ignored (and a missing or unreadable one only costs the load it saves).
    """

    FOLDER = "/run/anycast-edge/programs"

    def __init__(self, folder=None):
        self.folder = folder or self.FOLDER

    def path(self, prog_id):
        return os.path.join(self.folder, "%d.json" % prog_id)

    def known(self, running_info, sha256):
        """The record of the running program (its ProgInfo) if it was loaded from the object with
        ``sha256`` and has the tag recorded then: a dict with ``tag`` and ``used_maps``; else None."""
        try:
            with open(self.path(running_info.id)) as handle:
                record = json.load(handle)
        except (OSError, IOError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("object_sha256") != sha256 \
                or record.get("tag") != running_info.tag or not isinstance(record.get("used_maps"), list):
            return None
        return record

    def write(self, prog_id, sha256, tag, used_maps):
        """Record that program ``prog_id`` (tag ``tag``, using the maps named ``used_maps``) was
        loaded from the object with ``sha256``; forget the programs that are gone.  A failure to
        write only loses the shortcut."""
        try:
            if not os.path.isdir(self.folder):
                os.makedirs(self.folder, mode=0o700)
            temporary = self.path(prog_id) + ".new"
            with open(temporary, "w") as handle:
                json.dump({"object_sha256": sha256, "tag": tag, "used_maps": sorted(used_maps)}, handle)
            os.rename(temporary, self.path(prog_id))
            for name in os.listdir(self.folder):
                stem = name[:-len(".json")] if name.endswith(".json") else None
                if stem and stem.isdigit() and int(stem) != prog_id and not program_exists(int(stem)):
                    os.unlink(os.path.join(self.folder, name))
        except (OSError, IOError):
            pass


def program_exists(prog_id):
    try:
        prog_info_by_id(prog_id)
    except BpfError:
        return False
    return True


def used_map_names(obj, loaded_info):
    """Names of the (loaded) object's maps that its loaded program (ProgInfo) uses."""
    return [bpf_map.name for bpf_map in obj.maps() if bpf_map.id in loaded_info.map_ids]
