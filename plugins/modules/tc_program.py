#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: tc_program
short_description: Attach a BPF program to a tc clsact hook without disturbing other filters
version_added: "0.1.0"
description:
  - Loads a TC classifier (C(SEC("tc"))) from a compiled object and attaches it as a
    direct-action C(bpf) filter to the ingress or egress hook of O(iface)'s C(clsact) qdisc.
  - Never deletes or replaces a qdisc and never touches another filter - a C(clsact) qdisc is
    added only when the interface has none, and our filter is the one C(bpf) filter at
    (O(priority), handle C(0xae)) whose name starts with C(anycast_edge:). (Loaders that recreate
    the qdisc wipe everybody else's filters; this one does not.)
  - Idempotent by program tag - the same program already in our filter is C(changed=false); a
    different one replaces it atomically (C(tc filter replace) - packets meet the old program or
    the new one, never no filter).
  - The program is pinned at C(<pin_root>/<iface>/tc_<direction>) so that it can be found and
    identified later; the filter holds its own reference, so it keeps running after the
    module's process exits either way.
  - O(state=absent) removes only our filter and its pin; the qdisc and all other filters stay.
  - On failure the host is left as it was - the previous filter and pin stay, and a C(clsact)
    qdisc added by this run is removed again if nothing else uses it.
author:
  - anycast.edge maintainers (!UNKNOWN)
requirements:
  - pyroute2 0.7 or later (Debian package C(python3-pyroute2))
  - libbpf 1.x (C(libbpf.so.1), Debian package C(libbpf1))
  - root (CAP_BPF and CAP_NET_ADMIN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Loads the object to learn its tag (the kernel frees it again) and compares; changes nothing.
  diff_mode:
    support: full
    details: Shows our filter (priority, handle, name, tag) and whether a clsact qdisc exists, before and after.
  platform:
    platforms: linux
options:
  iface:
    description: The interface (in the network namespace the module runs in).
    type: str
    required: true
  direction:
    description: The clsact hook - V(ingress) (packets received) or V(egress) (packets sent).
    type: str
    choices: [ingress, egress]
    required: true
  object:
    description: Path of the compiled BPF object on the managed host. Required with O(state=present).
    type: path
  program:
    description: Name (C function) of the TC program in O(object). Required with O(state=present).
    type: str
  priority:
    description:
      - The filter's priority (tc C(pref)) on the hook - filters run in increasing order. With
        the handle C(0xae) it identifies our filter; another filter's priority is never taken over.
    type: int
    default: 174
  pin_root:
    description:
      - Folder on a bpffs holding one folder of pins per interface. Under C(/sys/fs/bpf) a bpffs
        is mounted there if none is.
    type: path
    default: /sys/fs/bpf/anycast_edge
  share_maps:
    description:
      - Pin the program's maps in C(<pin_root>/<iface>/<share_maps>/) and load it with the maps
        already pinned there whose layout is unchanged (type, key size, value size, max entries,
        flags and the BTF key/value types, as M(anycast.edge.xdp_program) decides), so that
        several programs of one object (an ingress and an egress half) use the same maps, and a
        replacement program keeps their contents. A map whose layout changed is created anew
        (with a warning) and its pin replaced once the new program runs.
      - Unset, the program gets private maps (a replacement starts with fresh ones).
    type: str
  share_maps_of:
    description:
      - With O(share_maps), the interface whose shared maps to use, C(<pin_root>/<share_maps_of>/<share_maps>/),
        instead of those of O(iface) - one program on several devices (a backend with an underlay link
        per POP) then learns and reads one set of maps.
      - The maps' pins belong to that interface; removing the program from O(iface) leaves them.
    type: str
  state:
    description: V(present) attaches (or replaces); V(absent) removes our filter and pin.
    type: str
    choices: [present, absent]
    default: present
notes:
  - An interface with a plain C(ingress) qdisc (not C(clsact)) can take an V(ingress) program but
    not an V(egress) one; the module fails rather than replace that qdisc.
  - Without O(share_maps) the maps of the program are not pinned; a replacement program starts
    with fresh maps.
  - C(tc_wireguard_redirect) (the POP's forward to its WireGuard pairs) is attached only to the
    V(ingress) of an interface that runs C(xdp_edge) (in check mode a warning says so instead), with
    O(share_maps=maps) - C(xdp_edge)'s pinned maps, where M(anycast.edge.edge_rules) writes the
    devices it may redirect to. M(anycast.edge.xdp_program) refuses to detach C(xdp_edge) while it
    is attached, so remove it first. With O(share_maps=maps), O(state=absent) leaves those maps to
    M(anycast.edge.xdp_program).
seealso:
  - module: anycast.edge.bpf_object
  - module: anycast.edge.xdp_program
"""

EXAMPLES = r"""
- name: Run the return-path mapper on the backend's egress, next to whatever filters are there
  anycast.edge.tc_program:
    iface: eth0
    direction: egress
    object: /usr/local/lib/anycast-edge/tc_mapper.o
    program: tc_mapper_egress

- name: Remove only our filter
  anycast.edge.tc_program:
    iface: eth0
    direction: egress
    state: absent
"""

RETURN = r"""
prog_id:
  description: Kernel id of the program in our filter after the run (null when absent or in check mode before a first attach).
  returned: always
  type: int
  sample: 812
tag:
  description: Tag of the program that is (or, in check mode, would be) in our filter; null when absent.
  returned: always
  type: str
  sample: 3b5a1bd6c255a371
previous_prog_id:
  description: Id of the program our filter ran before this run (null if there was no filter).
  returned: always
  type: int
  sample: 790
previous_tag:
  description: Tag of that program.
  returned: always
  type: str
  sample: 9f0a5d3c8e2b7a16
filter_name:
  description: The name our filter carries (C(anycast_edge:<program>)).
  returned: always
  type: str
  sample: anycast_edge:tc_mapper_egress
handle:
  description: Handle of our filter (fixed, C(0xae)).
  returned: always
  type: int
  sample: 174
clsact_created:
  description: True if this run added the clsact qdisc (or would, in check mode).
  returned: always
  type: bool
  sample: false
maps_reused:
  description: With O(share_maps), the maps taken over from their pins (the others were created and pinned).
  returned: when O(share_maps) is set and the object was loaded
  type: list
  elements: str
  sample: [mapper_flows, mapper_config]
pin:
  description: Where the program is pinned.
  returned: always
  type: str
  sample: /sys/fs/bpf/anycast_edge/eth0/tc_egress
other_filters:
  description: The other filters on the hook after the run (left untouched).
  returned: always
  type: list
  elements: dict
  sample: [{kind: bpf, priority: 49152, handle: 1, name: "other.o:[tc]"}]
bpffs_mounted:
  description: True if this run mounted a bpf filesystem at C(/sys/fs/bpf) (or would, in check mode).
  returned: always
  type: bool
  sample: false
"""

import errno
import os
import socket

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.anycast.edge.plugins.module_utils._bpf import (
    BPF_PROG_TYPE_SCHED_CLS,
    BpfError,
    BpfProgram,
    prog_info_by_id,
    xdp_query,
)
from ansible_collections.anycast.edge.plugins.module_utils._edge_abi import (
    EDGE_PROGRAM,
    WIREGUARD_REDIRECT_PROGRAM,
)
from ansible_collections.anycast.edge.plugins.module_utils._loader import (
    ModuleFailure,
    PinningModule,
    load_program,
    open_object,
    plan_map_reuse,
    used_map_names,
)
from ansible_collections.anycast.edge.plugins.module_utils._netlink import (
    TC_FILTER_NAME_PREFIX,
    NetlinkError,
    add_clsact,
    delete_filter,
    fail_without_pyroute2,
    list_filters,
    open_iproute,
    put_bpf_filter,
    qdisc_kind_at_clsact_handle,
)
from ansible_collections.anycast.edge.plugins.module_utils._pins import (
    DEFAULT_PIN_ROOT,
    PinnedMaps,
    StagedPins,
    open_map_folder,
    pin_dir,
    program_pin_path,
    remove_empty_dirs,
    tc_pin_path,
    unpin,
)

FILTER_HANDLE = 0xAE
DEFAULT_PRIORITY = 0xAE
NAME_PREFIX = TC_FILTER_NAME_PREFIX


def describe(tc_filter):
    return {"kind": tc_filter.kind, "priority": tc_filter.priority,
            "handle": tc_filter.handle, "name": tc_filter.name}


class TcProgramModule(PinningModule):

    def __init__(self, module, ipr):
        self.module = module
        self.ipr = ipr
        params = module.params
        self.iface = params["iface"]
        self.direction = params["direction"]
        self.priority = params["priority"]
        self.pin_root = params["pin_root"]
        if not 1 <= self.priority <= 0xFFFF:
            module.fail_json(msg="priority: must be 1..65535, not %d" % self.priority)
        try:
            self.pin_path = tc_pin_path(self.pin_root, self.iface, self.direction)
        except ValueError as exc:
            module.fail_json(msg="iface: %s" % exc)
        try:
            self.ifindex = socket.if_nametoindex(self.iface)
        except OSError:
            module.fail_json(msg="iface: no interface named %r in this network namespace" % self.iface)
        self.shared_dir = None
        if params.get("share_maps"):
            if "/" in params["share_maps"] or params["share_maps"] in (".", ".."):
                module.fail_json(msg="share_maps: %r is not a folder name" % params["share_maps"])
            self.maps_owner = params.get("share_maps_of") or self.iface
            try:
                owner_dir = pin_dir(self.pin_root, self.maps_owner)
            except ValueError as exc:
                module.fail_json(msg="share_maps_of: %s" % exc)
            self.shared_dir = os.path.join(owner_dir, params["share_maps"])
        elif params.get("share_maps_of"):
            module.fail_json(msg="share_maps_of: %r needs share_maps (the folder of the shared maps)"
                             % params["share_maps_of"])
        self.modified = False
        self.result = dict(changed=False, prog_id=None, tag=None, previous_prog_id=None,
                           previous_tag=None, filter_name=None, handle=FILTER_HANDLE,
                           clsact_created=False, pin=self.pin_path, other_filters=[],
                           bpffs_mounted=False)

    # -- present state -----------------------------------------------------------------------

    def where(self):
        return "%s %s" % (self.iface, self.direction)

    def read_hook(self):
        """(qdisc kind at ffff:, our filter or None, the other filters)."""
        qdisc = qdisc_kind_at_clsact_handle(self.ipr, self.ifindex)
        if qdisc is None:
            return None, None, []
        if qdisc == "ingress" and self.direction == "egress":
            raise ModuleFailure("iface: %s has an 'ingress' qdisc, which has no egress hook; replace it "
                                "with clsact (tc qdisc del dev %s ingress; tc qdisc add dev %s clsact) "
                                "- this module never deletes a qdisc" % (self.iface, self.iface, self.iface))
        if qdisc not in ("clsact", "ingress"):
            raise ModuleFailure("iface: %s has a %r qdisc at handle ffff:, not clsact" % (self.iface, qdisc))
        ours, others = None, []
        for tc_filter in list_filters(self.ipr, self.ifindex, self.direction):
            if tc_filter.priority == self.priority and tc_filter.handle == FILTER_HANDLE:
                if tc_filter.kind == "bpf" and (tc_filter.name or "").startswith(NAME_PREFIX):
                    ours = tc_filter
                    continue
                raise ModuleFailure("priority: %s already has a %s filter %r at priority %d handle 0x%x "
                                    "that this module did not make; choose another priority"
                                    % (self.where(), tc_filter.kind, tc_filter.name, self.priority,
                                       FILTER_HANDLE))
            if tc_filter.priority == self.priority and tc_filter.kind != "bpf":
                raise ModuleFailure("priority: %s uses priority %d for %s filters; a bpf filter cannot "
                                    "join them - choose another priority"
                                    % (self.where(), self.priority, tc_filter.kind))
            others.append(tc_filter)
        return qdisc, ours, others

    def pinned_prog_id(self, readable):
        if not readable or not os.path.exists(self.pin_path):
            return None
        with BpfProgram.from_pin(self.pin_path) as pinned:
            return pinned.id

    def set_diff(self, qdisc_before, ours_before, after_filter):
        if not self.module._diff:
            return

        def show(tc_filter):
            if tc_filter is None:
                return None
            return {"priority": tc_filter["priority"], "handle": tc_filter["handle"],
                    "name": tc_filter["name"], "tag": tc_filter["tag"]}

        before = None if ours_before is None else dict(describe(ours_before), tag=ours_before.tag)
        self.result["diff"] = dict(
            before={"clsact": qdisc_before is not None, "filter": show(before)},
            after={"clsact": qdisc_before is not None or self.result["clsact_created"],
                   "filter": show(after_filter)},
            before_header="%s (tc)" % self.where(), after_header="%s (tc)" % self.where())

    # -- state=present -----------------------------------------------------------------------

    def check_behind_xdp_edge(self):
        """tc_wireguard_redirect redirects what xdp_edge hands over to a WireGuard pair's device:
        only xdp_edge in front of it, on the same device, drops the frames from the wire that pose
        as a handoff (its own check, the devices edge_rules lists, bounds where one could go, not
        whether it goes). So it is attached only behind xdp_edge, and xdp_program refuses to
        detach xdp_edge while it is there (docs/transport.md)."""
        program = WIREGUARD_REDIRECT_PROGRAM
        if self.direction != "ingress":
            raise ModuleFailure("direction: %s takes what xdp_edge passes on %s's ingress, not egress"
                                % (program, self.iface))
        if self.shared_dir is None:
            raise ModuleFailure("share_maps: %s reads edge_wireguard_pairs, which edge_rules writes among "
                                "xdp_edge's pinned maps: set share_maps: maps (the folder anycast.edge.xdp_program "
                                "pins them in)" % program)
        prog_id = xdp_query(self.ifindex).attached_id
        in_front = prog_info_by_id(prog_id).name if prog_id else None
        if in_front == EDGE_PROGRAM:
            return
        message = ("program: %s is attached only behind %s on %s, which runs %s: attach %s first "
                   "(anycast.edge.xdp_program) - without it in front, a frame from the wire can pose as its "
                   "handoff" % (program, EDGE_PROGRAM, self.iface,
                                "XDP program %s" % in_front if in_front else "no XDP program", EDGE_PROGRAM))
        if not self.module.check_mode:
            raise ModuleFailure(message)
        # A first --check run: xdp_program, in check mode, attached nothing yet.
        self.module.warn(message + " (check mode: the real run refuses unless it is)")

    def run_present(self):
        params = self.module.params
        if params["program"] == WIREGUARD_REDIRECT_PROGRAM:
            self.check_behind_xdp_edge()
        readable = self.prepare_pins(may_mount=True)
        qdisc, ours, others = self.read_hook()
        self.result["other_filters"] = [describe(f) for f in others]
        if ours is not None:
            self.result.update(previous_prog_id=ours.prog_id, previous_tag=ours.tag)
        pinned_id = self.pinned_prog_id(readable)
        name = NAME_PREFIX + params["program"]
        self.result["filter_name"] = name

        obj = open_object(params["object"], params["program"])
        # With share_maps, the maps pinned there are handed to the new program (one policy with
        # xdp_program's: the same layout keeps its map and entries).
        pinned = open_map_folder(self.shared_dir) if self.shared_dir is not None else PinnedMaps()
        try:
            plan = None
            if self.shared_dir is not None:
                plan = plan_map_reuse(obj, pinned, self.shared_dir)
                self.result["maps_reused"] = sorted(plan.reused)
                for map_name, why in plan.changed.items():
                    self.module.warn("map %s changed layout (%s): it starts empty in the new program" % (map_name, why))
            program = load_program(obj, params["program"], BPF_PROG_TYPE_SCHED_CLS)
            new_tag = program.tag
            self.result["tag"] = new_tag
            # A tag does not cover which maps a program uses: with shared maps, the running
            # program must also use the maps pinned for sharing.
            filter_unchanged = (ours is not None and ours.tag == new_tag and ours.direct_action
                                and ours.name == name
                                and (plan is None or (not plan.created and plan.uses_the_pinned_maps(
                                    prog_info_by_id(ours.prog_id), used_map_names(obj, program.info()), pinned))))
            after = {"priority": self.priority, "handle": FILTER_HANDLE, "name": name, "tag": new_tag}
            if filter_unchanged:
                self.result["prog_id"] = ours.prog_id
                self.set_diff(qdisc, ours, after)
                if pinned_id != ours.prog_id:
                    # The right program runs but its pin is missing or stale: pin the one
                    # that runs (not the one just loaded) so the pin names what runs.
                    self.result["changed"] = True
                    if not self.module.check_mode:
                        with BpfProgram.from_id(ours.prog_id) as running:
                            staged = StagedPins()
                            staged.stage(running, self.pin_path)
                            staged.commit()
                return
            self.result["changed"] = True
            self.result["clsact_created"] = qdisc is None
            self.set_diff(qdisc, ours, after)
            if self.module.check_mode:
                return
            self.attach(obj, program, name, plan, qdisc is None, replace=ours is not None)
        finally:
            pinned.close()
            obj.close()

    def attach(self, obj, program, name, plan, add_clsact_first, replace):
        """Put ``program`` in our filter; its pin and those of the maps created for sharing
        (``plan``) are staged first and moved into place once the filter runs it."""
        staged = StagedPins()
        try:
            # Pinning can fail (bpffs full, permissions): before any change.
            staged.stage(program, self.pin_path)
            for map_name in plan.created if plan is not None else []:
                staged.stage(obj.map(map_name), os.path.join(self.shared_dir, map_name))
            if add_clsact_first:
                add_clsact(self.ipr, self.ifindex)
                self.modified = True
            put_bpf_filter(self.ipr, self.ifindex, self.direction, self.priority, FILTER_HANDLE,
                           program.fd, name, replace=replace)
            self.modified = True
        except NetlinkError as exc:
            staged.abort()
            remove_empty_dirs(self.pin_root, self.iface)
            if add_clsact_first and self.modified:
                self.remove_our_clsact()
            raise ModuleFailure("attaching %s to %s failed (the previous filter is untouched): %s"
                                % (name, self.where(), exc))
        except BaseException:
            staged.abort()
            raise
        staged.commit()
        self.result["prog_id"] = program.id

    def remove_our_clsact(self):
        """Undo the clsact qdisc this run added, unless something uses it meanwhile."""
        try:
            if not list_filters(self.ipr, self.ifindex, "ingress") and \
                    not list_filters(self.ipr, self.ifindex, "egress"):
                self.ipr.tc("del", "clsact", self.ifindex)
                self.modified = False
        except NetlinkError as exc:
            self.module.warn("could not remove the clsact qdisc added to %s: %s" % (self.iface, exc))

    # -- state=absent ------------------------------------------------------------------------

    def run_absent(self):
        readable = self.prepare_pins(may_mount=False)
        qdisc, ours, others = self.read_hook()
        self.result["other_filters"] = [describe(f) for f in others]
        pinned = readable and os.path.exists(self.pin_path)
        if ours is not None:
            self.result.update(previous_prog_id=ours.prog_id, previous_tag=ours.tag,
                               filter_name=ours.name)
        self.result["changed"] = ours is not None or pinned
        self.set_diff(qdisc, ours, None)
        if self.module.check_mode or not self.result["changed"]:
            return
        if ours is not None:
            try:
                delete_filter(self.ipr, self.ifindex, self.direction, self.priority, FILTER_HANDLE)
            except NetlinkError as exc:
                if exc.code != errno.ENOENT:  # gone meanwhile: that is what we wanted
                    raise ModuleFailure("removing our filter from %s failed: %s" % (self.where(), exc))
            self.modified = True
        if pinned:
            unpin(self.pin_path)
            self.modified = True
        self.unpin_shared_maps_when_unused()
        remove_empty_dirs(self.pin_root, self.iface)

    def unpin_shared_maps_when_unused(self):
        """The last TC program of the interface gone: its shared maps' pins go too."""
        if self.shared_dir is None or not os.path.isdir(self.shared_dir):
            return
        if self.maps_owner != self.iface:  # another interface's maps: its programs may still use them
            return
        if os.path.exists(program_pin_path(self.pin_root, self.iface)):
            # xdp_program's maps (share_maps: maps), shared with its program: they go with it.
            return
        if any(os.path.exists(tc_pin_path(self.pin_root, self.iface, direction))
               for direction in ("ingress", "egress")):
            return
        for name in os.listdir(self.shared_dir):
            unpin(os.path.join(self.shared_dir, name))
        os.rmdir(self.shared_dir)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            iface=dict(type="str", required=True),
            direction=dict(type="str", required=True, choices=["ingress", "egress"]),
            object=dict(type="path"),
            program=dict(type="str"),
            priority=dict(type="int", default=DEFAULT_PRIORITY),
            pin_root=dict(type="path", default=DEFAULT_PIN_ROOT),
            share_maps=dict(type="str"),
            share_maps_of=dict(type="str"),
            state=dict(type="str", default="present", choices=["present", "absent"]),
        ),
        required_if=[("state", "present", ["object", "program"])],
        supports_check_mode=True,
    )
    fail_without_pyroute2(module)
    with open_iproute() as ipr:
        runner = TcProgramModule(module, ipr)
        try:
            if module.params["state"] == "present":
                runner.run_present()
            else:
                runner.run_absent()
        except (ModuleFailure, BpfError, NetlinkError) as exc:
            runner.result["changed"] = runner.modified
            module.fail_json(msg="%s" % exc, **runner.result)
        if not module.check_mode:
            others = runner.read_hook()[2]
            runner.result["other_filters"] = [describe(f) for f in others]
    module.exit_json(**runner.result)


if __name__ == "__main__":
    main()
