#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: xdp_program
short_description: Attach a BPF object's XDP program to an interface, upgrade it atomically, keep its maps
version_added: "0.1.0"
description:
  - Loads an XDP program from a compiled object (see M(anycast.edge.bpf_object)), attaches it to
    O(iface) and pins it and its maps - C(<pin_root>/<iface>/program) and
    C(<pin_root>/<iface>/maps/<map name>), where M(anycast.edge.edge_rules) and
    M(anycast.edge.edge_stats_info) find them.
  - Idempotent by program tag and mode - when the program attached to O(iface) is the pinned one,
    has the tag the object's program gets when loaded, runs in the wanted mode and uses the
    pinned maps, and every map still has the layout the object declares, nothing changes. The
    object's tag is learned by loading it (the verifier runs), except when the running program was
    loaded from the very same object (same sha256), which the module records in
    C(/run/anycast-edge/programs) - see RV(loaded).
  - A different object replaces the running program B(atomically) (C(XDP_FLAGS_REPLACE) naming
    the old program) - there is no moment without a program on the interface. The new program
    reuses every pinned map whose layout is unchanged (type, key size, value size, max entries,
    flags and the BTF key/value types), so bans, port punches, the A2S cache, rules and counters
    survive the upgrade; maps whose layout changed are created empty and their pins replaced
    once the new program runs.
  - When anything fails - loading, verifier, pinning, attaching - the old program stays attached
    and its pins are untouched.
  - O(state=absent) detaches the program (only the one this module pinned, or, when its pins are
    gone, an attached program with the O(program) name) and removes its pins. It refuses, changing
    nothing, while C(tc_wireguard_redirect) (M(anycast.edge.tc_program)) runs on the TC ingress of
    O(iface) or of one of O(also_on) - that program must not run without this one in front of it.
  - If O(pin_root) is under C(/sys/fs/bpf) and no bpf filesystem is mounted there, one is mounted
    at C(/sys/fs/bpf).
  - Runs on the POP, as root.
author:
  - anycast.edge maintainers (!UNKNOWN)
requirements:
  - libbpf 1.x (C(libbpf.so.1), Debian package C(libbpf1))
  - root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN to mount bpffs)
  - pyroute2 (Debian package C(python3-pyroute2)), to read the host's addresses
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - anycast.edge.pin_root
attributes:
  check_mode:
    support: full
    details: >-
      Loads the object to learn its tag (the kernel frees it again; not when the running program was
      loaded from the same object, see RV(loaded)) and compares; attaches, pins, mounts and writes nothing.
  diff_mode:
    support: full
    details: Shows the attached program's tag and mode, the pinned maps and the TX devices before and after.
  platform:
    platforms: linux
options:
  iface:
    description: The interface to attach to (in the network namespace the module runs in).
    type: str
    required: true
  object:
    description: Path of the compiled BPF object on the managed host. Required with O(state=present).
    type: path
  program:
    description: Name (C function) of the XDP program in O(object).
    type: str
    default: xdp_edge
  mode:
    description:
      - V(native) - the driver runs the program (fails if the driver has no native XDP).
      - V(generic) - the kernel runs it after the driver (slower, works on every device).
      - V(auto) - V(native), falling back to V(generic) when the driver refuses native XDP; the
        result's RV(mode) says which, and RV(mode_fallback) why. When a program of ours is
        already attached, V(auto) keeps its mode, because a mode switch cannot be atomic.
      - Switching between V(native) and V(generic) detaches and reattaches - the one case with a
        short moment without a program; the module warns when it does so.
    type: str
    choices: [auto, native, generic]
    default: auto
  state:
    description: V(present) attaches (or upgrades); V(absent) detaches and removes the pins.
    type: str
    choices: [present, absent]
    default: present
  tx_devices:
    description:
      - Interfaces other than O(iface) that the program may forward out of (C(bpf_redirect_map)),
        put into the program's C(edge_tx_ports) device map by ifindex. The map's content is
        converged - devices no longer listed are removed.
    type: list
    elements: str
    default: []
  also_on:
    description:
      - More interfaces that run the very same program (same program id, same maps) - a POP whose
        IPIP to and from its backends crosses another NIC than its uplink (a private network), so
        the return path is handled there too. Put them in O(tx_devices) as well, and O(iface) too,
        so that the program can forward between them.
      - Attached in the same O(mode) logic as O(iface), replacing atomically the program this
        module put there before; with O(state=absent) the program is detached from them.
      - Nothing is pinned for them; taking one off the list does not detach it (O(state=absent)
        with it as O(iface) does).
    type: list
    elements: str
    default: []
  tunnel_devices:
    description:
      - The interfaces that carry the IPIP to and from the backends - the only ones the program
        accepts a backend's reply on (its return path). Flagged in the program's
        C(edge_tunnel_ifaces) map by ifindex; every other interface is cleared there.
      - Omitted, the O(also_on) interfaces when there are any (the underlay), else O(iface)
        (the uplink).
      - Each must also run the program (O(iface) or one of O(also_on)) - a device without it
        never sees the return path.
    type: list
    elements: str
notes:
  - The IPv4 addresses on the host's interfaces (in the module's network namespace) are written
    into the program's C(edge_own_addrs) map at every run (RV(own_addresses)); the program drops a
    packet that arrives with one of them as its source. Run the module again after changing the
    host's addresses.
  - A program's tag is a hash of its instructions computed by the kernel at load; two loads of
    the same object have the same tag, a rebuilt object with different code has another.
  - The program's maps must not use C(LIBBPF_PIN_BY_NAME) - this module decides per map whether
    to reuse the pinned one.
seealso:
  - module: anycast.edge.bpf_object
  - module: anycast.edge.edge_rules
  - module: anycast.edge.edge_stats_info
"""

EXAMPLES = r"""
- name: Attach the edge program to the uplink (native XDP, generic if the driver lacks it)
  anycast.edge.xdp_program:
    iface: eth1
    object: /usr/local/lib/anycast-edge/xdp_edge.o
    tx_devices: [eth2]
  register: edge_xdp

- name: Say which mode it got
  ansible.builtin.debug:
    msg: "{{ edge_xdp.mode }} (tag {{ edge_xdp.tag }}) {{ edge_xdp.mode_fallback or '' }}"

- name: Remove it
  anycast.edge.xdp_program:
    iface: eth1
    state: absent
"""

RETURN = r"""
prog_id:
  description: Kernel id of the attached program (null after O(state=absent) or in check mode before a first attach).
  returned: always
  type: int
  sample: 1234
tag:
  description: The kernel's tag of the program that is (or, in check mode, would be) attached.
  returned: always
  type: str
  sample: e20509034dd0af99
mode:
  description:
    - V(native) or V(generic) - how the program is attached; null when nothing is.
    - In check mode, the mode it would be attached in (for V(auto) with nothing attached yet, V(native),
      the mode tried first - whether the driver accepts it shows only when attaching).
  returned: always
  type: str
  sample: native
mode_fallback:
  description: Why V(auto) attached in V(generic) mode (the driver's refusal), else null.
  returned: always
  type: str
  sample: "native XDP refused by the driver of lo: Operation not supported"
previous_prog_id:
  description: Id of the program that was attached before this run (null if none).
  returned: always
  type: int
  sample: 1200
previous_tag:
  description: Tag of the program that was attached before this run (null if none).
  returned: always
  type: str
  sample: 3b5a1bd6c255a371
maps_reused:
  description: Maps whose pinned instance (and content) the program uses (kept from the previous program).
  returned: always
  type: list
  elements: str
  sample: [edge_sources, edge_punches]
maps_created:
  description: Maps created empty (no pin yet, or the pinned one had another layout).
  returned: always
  type: list
  elements: str
  sample: [edge_services]
maps_removed:
  description: Pins removed - maps the new object no longer has, or all of them with O(state=absent).
  returned: always
  type: list
  elements: str
  sample: []
tx_devices:
  description: Device names in the C(edge_tx_ports) map after the run.
  returned: always
  type: list
  elements: str
  sample: [eth2]
tunnel_devices:
  description: The interfaces flagged as carrying IPIP in C(edge_tunnel_ifaces) after the run.
  returned: always
  type: list
  elements: str
  sample: [eth2]
own_addresses:
  description: The addresses in C(edge_own_addrs) after the run (the host's own IPv4 addresses).
  returned: always
  type: list
  elements: str
  sample: [10.0.0.1, 192.0.2.10]
also_on:
  description: The O(also_on) interfaces and the id of the program each runs after the run (null if none).
  returned: always
  type: dict
  sample: {eth2: 1234}
pin_dir:
  description: C(<pin_root>/<iface>), the folder of this interface's pins.
  returned: always
  type: str
  sample: /sys/fs/bpf/anycast_edge/eth1
loaded:
  description:
    - Whether this run loaded the object into the kernel (the verifier ran) to learn its tag.
    - A rerun with the object the running program was loaded from does not - the module recorded,
      when it attached or last compared that program, the object's sha256 beside the program's id in
      C(/run/anycast-edge/programs) - and on a slow host that is most of the run's time.
  returned: when O(state=present)
  type: bool
  sample: false
bpffs_mounted:
  description: True if this run mounted a bpf filesystem at C(/sys/fs/bpf) (or would, in check mode).
  returned: always
  type: bool
  sample: false
"""

import errno
import os
import socket
import struct

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.anycast.edge.plugins.module_utils._bpf import (
    BPF_PROG_TYPE_XDP,
    XDP_ATTACHED_DRV,
    XDP_ATTACHED_HW,
    XDP_ATTACHED_SKB,
    XDP_FLAGS_DRV_MODE,
    XDP_FLAGS_SKB_MODE,
    XDP_FLAGS_UPDATE_IF_NOEXIST,
    BpfError,
    BpfProgram,
    prog_info_by_id,
    xdp_attach,
    xdp_detach,
    xdp_query,
)
from ansible_collections.anycast.edge.plugins.module_utils._edge_abi import (
    WIREGUARD_REDIRECT_PROGRAM,
    IFACE_F_IPIP,
    IFACE_VALUE,
    MAX_IFINDEX,
    MAX_OWN_ADDRS,
    pack_own_addrs,
    unpack_own_addrs,
)
from ansible_collections.anycast.edge.plugins.module_utils._loader import (
    LoadRecords,
    ModuleFailure,
    PinningModule,
    attached_is_ours,
    file_sha256,
    load_program,
    open_object,
    plan_map_reuse,
    used_map_names,
)
from ansible_collections.anycast.edge.plugins.module_utils._netlink import (
    PYROUTE2_IMPORT_ERROR,
    TC_FILTER_NAME_PREFIX,
    list_filters,
    open_iproute,
)
from ansible_collections.anycast.edge.plugins.module_utils._pins import (
    DEFAULT_PIN_ROOT,
    StagedPins,
    map_pin_path,
    maps_dir,
    open_map_folder,
    pin_dir,
    program_pin_path,
    remove_empty_dirs,
    unpin,
)

TX_PORTS_MAP = "edge_tx_ports"
TUNNEL_IFACES_MAP = "edge_tunnel_ifaces"
OWN_ADDRS_MAP = "edge_own_addrs"
MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
ATTACHED_MODE_NAMES = {XDP_ATTACHED_DRV: "native", XDP_ATTACHED_SKB: "generic", XDP_ATTACHED_HW: "offload"}
# What a driver without native XDP answers to XDP_FLAGS_DRV_MODE.
NATIVE_REFUSED_ERRNOS = (errno.EOPNOTSUPP, errno.EINVAL)
U32 = struct.Struct("<I")


def attached_program(ifindex):
    """(id, mode) of the XDP program attached to ``ifindex``: (0, None) when there is none."""
    query = xdp_query(ifindex)
    return query.attached_id, ATTACHED_MODE_NAMES.get(query.attach_mode)


def wanted_mode(mode, ours, attached_mode):
    """The mode to attach in: V(auto) keeps the mode of a program of ours already attached,
    because a mode switch cannot be atomic."""
    if mode == "auto" and ours and attached_mode in MODE_FLAGS:
        return attached_mode
    return mode


class PresentState(object):
    """What is on the host now: the attached program, our pins."""

    def __init__(self, ifindex, pin_root, iface, pins_readable):
        self.attached_id, self.attached_mode = attached_program(ifindex)
        self.attached_info = prog_info_by_id(self.attached_id) if self.attached_id else None
        self.pinned_program = None
        self.pinned_maps = {}
        if not pins_readable:
            return
        program_path = program_pin_path(pin_root, iface)
        if os.path.exists(program_path):
            self.pinned_program = BpfProgram.from_pin(program_path)
        self.pinned_maps = open_map_folder(maps_dir(pin_root, iface))

    @property
    def pinned_id(self):
        return self.pinned_program.id if self.pinned_program is not None else None

    def ours_attached(self, program_name):
        """True if the attached program is the one we pinned, or (pins lost) has our name."""
        return attached_is_ours(self.attached_info, program_name, self.pinned_id)

    def close(self):
        if self.pinned_program is not None:
            self.pinned_program.close()
        if self.pinned_maps:
            self.pinned_maps.close()


class XdpProgramModule(PinningModule):

    def __init__(self, module):
        self.module = module
        params = module.params
        self.iface = params["iface"]
        self.pin_root = params["pin_root"]
        self.program_name = params["program"]
        self.result = dict(changed=False, prog_id=None, tag=None, mode=None, mode_fallback=None,
                           previous_prog_id=None, previous_tag=None, maps_reused=[], maps_created=[],
                           maps_removed=[], tx_devices=[], tunnel_devices=[], own_addresses=[], also_on={},
                           bpffs_mounted=False)
        # Set once the host was really modified: a failure reports changed only then.
        self.modified = False
        try:
            self.pin_dir = pin_dir(self.pin_root, self.iface)
        except ValueError as exc:
            module.fail_json(msg="iface: %s" % exc)
        self.result["pin_dir"] = self.pin_dir
        try:
            self.ifindex = socket.if_nametoindex(self.iface)
        except OSError:
            module.fail_json(msg="iface: no interface named %r in this network namespace" % self.iface)

    # -- present -----------------------------------------------------------------------------

    def run_present(self):
        tx_ifindexes = self.tx_ifindexes()
        self.tunnel_ifindexes = self.wanted_tunnel_ifindexes()
        self.own_addresses = host_ipv4_addresses()
        readable = self.prepare_pins(may_mount=True)
        present = PresentState(self.ifindex, self.pin_root, self.iface, readable)
        try:
            self.record_previous(present)
            obj = open_object(self.module.params["object"], self.program_name)
            try:
                self.present_with_object(present, obj, tx_ifindexes)
            finally:
                obj.close()
        finally:
            present.close()
        self.converge_also_on()

    # -- the same program on more interfaces (also_on) ---------------------------------------

    def also_on_ifindexes(self):
        wanted = {}
        for name in self.module.params["also_on"]:
            if name == self.iface:
                raise ModuleFailure("also_on: %s is iface itself" % name)
            try:
                wanted[name] = socket.if_nametoindex(name)
            except OSError:
                raise ModuleFailure("also_on: no interface named %r in this network namespace" % name)
        return wanted

    def converge_also_on(self):
        """Attach the program that runs on iface to every also_on interface that runs another."""
        prog_id = self.result["prog_id"]
        for name, ifindex in self.also_on_ifindexes().items():
            attached_id, attached_mode = attached_program(ifindex)
            self.result["also_on"][name] = attached_id or None
            if prog_id is not None and attached_id == prog_id:
                continue
            self.result["changed"] = True
            if self.module.check_mode or prog_id is None:
                continue
            # Nothing is pinned for these interfaces: ours is what has our program's name.
            ours = attached_is_ours(prog_info_by_id(attached_id) if attached_id else None, self.program_name)
            with BpfProgram.from_id(prog_id) as program:
                self.attach(name, ifindex, program, wanted_mode(self.module.params["mode"], ours, attached_mode),
                            attached_id, attached_mode, ours, option="also_on: ")
            self.result["also_on"][name] = prog_id

    def detach_also_on(self):
        for name, ifindex in self.also_on_ifindexes().items():
            attached_id, attached_mode = attached_program(ifindex)
            if not attached_id:
                continue
            attached_info = prog_info_by_id(attached_id)
            if not attached_is_ours(attached_info, self.program_name):
                self.module.warn("leaving XDP program %s (id %d) on %s attached: this module did not attach it"
                                 % (attached_info.name, attached_id, name))
                continue
            self.result["changed"] = True
            self.result["also_on"][name] = None
            if not self.module.check_mode:
                self.detach(name, ifindex, attached_id, attached_mode, option="also_on: ")

    def record_previous(self, present):
        if present.attached_id:
            self.result["previous_prog_id"] = present.attached_id
            self.result["previous_tag"] = present.attached_info.tag

    def wanted_tunnel_ifindexes(self):
        """{ifindex: name} of the devices that carry IPIP: tunnel_devices, else also_on, else iface."""
        names = self.module.params["tunnel_devices"]
        if names is None:
            names = self.module.params["also_on"] or [self.iface]
        running = set([self.iface] + list(self.module.params["also_on"]))
        wanted = {}
        for name in names:
            try:
                ifindex = socket.if_nametoindex(name)
            except OSError:
                raise ModuleFailure("tunnel_devices: no interface named %r in this network namespace" % name)
            if name not in running:
                raise ModuleFailure("tunnel_devices: %s does not run the program (it is neither iface nor in also_on)"
                                    % name)
            if ifindex >= MAX_IFINDEX:
                raise ModuleFailure("tunnel_devices: %s has ifindex %d; the program's %s holds ifindexes below %d"
                                    % (name, ifindex, TUNNEL_IFACES_MAP, MAX_IFINDEX))
            wanted[ifindex] = name
        return wanted

    def converge_trust_maps(self, maps):
        """edge_tunnel_ifaces flags exactly the tunnel devices; edge_own_addrs holds exactly the
        host's addresses. maps: {name: BpfMap} (the pinned ones, or the new object's)."""
        tunnel_map, own_map = maps.get(TUNNEL_IFACES_MAP), maps.get(OWN_ADDRS_MAP)
        if tunnel_map is None and own_map is None and self.module.params["tunnel_devices"] is None:
            return  # not the edge program (another XDP program): nothing to tell it
        if tunnel_map is None or own_map is None:
            raise ModuleFailure("object: %s has no %s/%s map to put the tunnel devices and own addresses in"
                                % (self.module.params["object"], TUNNEL_IFACES_MAP, OWN_ADDRS_MAP))
        values = tunnel_map.array_bytes()
        stride = tunnel_map.value_size
        flagged = set(index for index in range(len(values) // stride)
                      if IFACE_VALUE.unpack_from(values, index * stride)[0] & IFACE_F_IPIP)
        wanted_flags = set(self.tunnel_ifindexes)
        present_addrs = set(unpack_own_addrs(own_map.lookup(U32.pack(0))))
        wanted_addrs = set(self.own_addresses)
        if len(wanted_addrs) > MAX_OWN_ADDRS:
            raise ModuleFailure("the host has %d IPv4 addresses; the program's %s holds at most %d"
                                % (len(wanted_addrs), OWN_ADDRS_MAP, MAX_OWN_ADDRS))
        self.result["tunnel_devices"] = sorted(self.tunnel_ifindexes.values())
        self.result["own_addresses"] = sorted(wanted_addrs, key=socket.inet_aton)
        if flagged == wanted_flags and present_addrs == wanted_addrs:
            return
        self.result["changed"] = True
        self.result["tunnel_devices_before"] = sorted(self.ifname(ifindex) for ifindex in flagged)
        self.result["own_addresses_before"] = sorted(present_addrs, key=socket.inet_aton)
        if self.module.check_mode:
            return
        self.modified = True
        try:
            # New flags first, then the old ones go: no moment without the wanted devices.
            tunnel_map.array_write((ifindex, IFACE_VALUE.pack(IFACE_F_IPIP)) for ifindex in sorted(wanted_flags - flagged))
            tunnel_map.array_write((ifindex, IFACE_VALUE.pack(0)) for ifindex in sorted(flagged - wanted_flags))
            if present_addrs != wanted_addrs:
                # One entry, written whole: only a packet judged during the copy may see a mix of the lists.
                own_map.update(U32.pack(0), pack_own_addrs(self.result["own_addresses"]))
        except (BpfError, ValueError) as exc:
            raise ModuleFailure("cannot update %s/%s: %s" % (TUNNEL_IFACES_MAP, OWN_ADDRS_MAP, exc))

    def tx_ifindexes(self):
        wanted = {}
        for name in self.module.params["tx_devices"]:
            try:
                wanted[socket.if_nametoindex(name)] = name
            except OSError:
                raise ModuleFailure("tx_devices: no interface named %r in this network namespace" % name)
        return wanted

    def present_with_object(self, present, obj, tx_ifindexes):
        plan = plan_map_reuse(obj, present.pinned_maps, maps_dir(self.pin_root, self.iface))
        reused, created, stale = plan.reused, plan.created, plan.stale
        ours = present.ours_attached(self.program_name)
        mode = wanted_mode(self.module.params["mode"], ours, present.attached_mode)
        records = LoadRecords()
        object_sha256 = file_sha256(self.module.params["object"])
        # The running program loaded from this very object: its tag and maps are known, the
        # verifier need not run again (LoadRecords).
        known = records.known(present.attached_info, object_sha256) if ours else None
        program = None
        if known is not None:
            new_tag, used_maps = known["tag"], known["used_maps"]
        else:
            program = load_program(obj, self.program_name, BPF_PROG_TYPE_XDP)
            info = program.info()
            new_tag, used_maps = info.tag, used_map_names(obj, info)
        self.result["loaded"] = program is not None

        program_unchanged = (
            ours
            and present.pinned_program is not None
            and present.attached_info.tag == new_tag
            and (mode == "auto" or present.attached_mode == mode)
            and not created and not stale
            and plan.uses_the_pinned_maps(present.attached_info, used_maps, present.pinned_maps)
        )
        tx_map_name = TX_PORTS_MAP if TX_PORTS_MAP in reused + created else None
        for name, why in plan.changed.items():
            self.module.warn("map %s changed layout (%s): it starts empty in the new program" % (name, why))

        if program_unchanged:
            self.result.update(prog_id=present.attached_id, tag=new_tag, mode=present.attached_mode,
                               maps_reused=reused)
            tx_map = present.pinned_maps.get(TX_PORTS_MAP) if tx_map_name else None
            self.converge_tx_ports(tx_map, tx_ifindexes, tx_map_name)
            self.converge_trust_maps(present.pinned_maps)
            self.set_diff(present, new_tag, present.attached_mode, sorted(reused))
            if known is None and not self.module.check_mode:
                records.write(present.attached_id, object_sha256, new_tag, used_maps)
            return

        if program is None:
            # The same object, but a mode or a pinned map to change: a new program after all.
            program = load_program(obj, self.program_name, BPF_PROG_TYPE_XDP)
            self.result["loaded"] = True
        self.result.update(changed=True, tag=new_tag, maps_reused=reused, maps_created=created,
                           maps_removed=stale)
        # The new program's device map (the pinned one if reused) is filled before the
        # program runs, so its first packets already find the devices.
        self.converge_tx_ports(obj.map(TX_PORTS_MAP) if tx_map_name else None, tx_ifindexes, tx_map_name)
        # The return path's devices and the POP's own addresses too: the first packets of the new
        # program already find them (an empty edge_tunnel_ifaces would drop every reply).
        self.converge_trust_maps(dict((bpf_map.name, bpf_map) for bpf_map in obj.maps()))
        if self.module.check_mode:
            self.result["mode"] = mode if mode != "auto" else (present.attached_mode or "native")
            self.set_diff(present, new_tag, self.result["mode"], sorted(reused + created))
            return
        self.replace_program(present, obj, program, created, stale, mode)
        records.write(self.result["prog_id"], object_sha256, new_tag, used_map_names(obj, program.info()))
        self.set_diff(present, new_tag, self.result["mode"], sorted(reused + created))

    def converge_tx_ports(self, tx_map, tx_ifindexes, tx_map_name):
        """Make the device map hold exactly the wanted ifindexes (key and value: the ifindex)."""
        if tx_map is None:
            if tx_ifindexes:
                raise ModuleFailure("tx_devices: the object has no %s map to put them in" % TX_PORTS_MAP)
            return
        present = set(U32.unpack(key)[0] for key in tx_map.keys())
        wanted = set(tx_ifindexes)
        self.result["tx_devices"] = sorted(tx_ifindexes.values())
        if present == wanted:
            return
        self.result["changed"] = True
        self.result["tx_devices_before"] = sorted(present)
        if self.module.check_mode:
            return
        self.modified = True
        try:
            for ifindex in sorted(wanted - present):
                tx_map.update(U32.pack(ifindex), U32.pack(ifindex))
            for ifindex in sorted(present - wanted):
                tx_map.delete(U32.pack(ifindex))
        except BpfError as exc:
            raise ModuleFailure("tx_devices: cannot update map %s: %s" % (tx_map_name, exc))

    def replace_program(self, present, obj, program, created, stale, mode):
        """Stage pins, attach atomically, then move the staged pins into place.

        Everything that can fail for a foreseeable reason (pinning, the verifier, the
        attach) happens while the old program still runs and its pins are untouched;
        after the attach only renames remain.
        """
        staged = StagedPins()
        try:
            os.makedirs(maps_dir(self.pin_root, self.iface), mode=0o700)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
        try:
            for name in created:
                staged.stage(obj.map(name), map_pin_path(self.pin_root, self.iface, name))
            staged.stage(program, program_pin_path(self.pin_root, self.iface))
            ours = present.ours_attached(self.program_name)
            self.attach(self.iface, self.ifindex, program, mode, present.attached_id, present.attached_mode, ours)
        except BaseException:
            staged.abort()
            remove_empty_dirs(self.pin_root, self.iface)
            raise
        staged.commit()
        for name in stale:
            unpin(map_pin_path(self.pin_root, self.iface, name))
        self.result["prog_id"] = program.id

    # -- attaching and detaching (iface and also_on alike) -----------------------------------

    def attach(self, name, ifindex, program, mode, attached_id, attached_mode, ours, option=""):
        """Attach ``program`` to interface ``name`` in ``mode``, replacing the program attached
        there (``attached_id``, in ``attached_mode``; ``ours``: whether we put it there).

        ``auto`` is native, falling back to generic when the driver refuses native XDP (for
        iface, the reason goes to the result's mode_fallback).  On failure the previous program
        stays attached; ``option`` starts the message (the option that named ``name``).
        """
        old = None
        if attached_id:
            old = BpfProgram.from_id(attached_id)
            if not ours:
                self.module.warn("replacing XDP program %s (id %d) on %s, which this module did not attach"
                                 % (old.info().name, attached_id, name))
        try:
            if mode == "auto":
                try:
                    mode = self.attach_in_mode(name, ifindex, program, "native", old, attached_mode)
                except BpfError as exc:
                    if exc.errno not in NATIVE_REFUSED_ERRNOS:
                        raise
                    if name == self.iface:
                        self.result["mode_fallback"] = ("native XDP refused by the driver of %s: %s"
                                                        % (name, os.strerror(exc.errno)))
                    mode = self.attach_in_mode(name, ifindex, program, "generic", old, attached_mode)
            else:
                self.attach_in_mode(name, ifindex, program, mode, old, attached_mode)
        except BpfError as exc:
            raise ModuleFailure("%sattaching %s to %s failed (the previous program stays attached): %s"
                                % (option, self.program_name, name, exc))
        finally:
            if old is not None:
                old.close()
        self.modified = True
        if name == self.iface:
            self.result["mode"] = mode

    def attach_in_mode(self, name, ifindex, program, mode, old, old_mode):
        """One attempt of ``attach``, in ``mode`` (returned)."""
        flags = MODE_FLAGS[mode]
        if old is None:
            # Fails with EBUSY instead of replacing a program attached meanwhile.
            xdp_attach(ifindex, program.fd, flags | XDP_FLAGS_UPDATE_IF_NOEXIST)
        elif old_mode == mode:
            # Atomic: fails with EEXIST if the attached program is not `old` any more.
            xdp_attach(ifindex, program.fd, flags, old_prog_fd=old.fd)
        else:
            # native <-> generic cannot be swapped in one step: the kernel refuses a second
            # mode while one is attached. Detach, attach, and put the old one back on failure.
            self.module.warn("switching %s from %s to %s XDP: the interface runs without a "
                             "program for a moment" % (name, old_mode, mode))
            old_flags = MODE_FLAGS.get(old_mode, 0)
            xdp_detach(ifindex, old_flags, old_prog_fd=old.fd)
            try:
                xdp_attach(ifindex, program.fd, flags | XDP_FLAGS_UPDATE_IF_NOEXIST)
            except BpfError as exc:
                try:
                    xdp_attach(ifindex, old.fd, old_flags | XDP_FLAGS_UPDATE_IF_NOEXIST)
                except BpfError as again:
                    self.modified = True
                    raise ModuleFailure("attaching %s to %s in %s mode failed (%s), and putting the "
                                        "previous program back failed too (%s): %s has no XDP program"
                                        % (self.program_name, name, mode, exc, again, name))
                raise
        return mode

    def detach(self, name, ifindex, attached_id, attached_mode, option=""):
        """Detach the program ``attached_id`` (that one only: EEXIST if another runs now) from ``name``."""
        with BpfProgram.from_id(attached_id) as attached:
            try:
                xdp_detach(ifindex, MODE_FLAGS.get(attached_mode, 0), old_prog_fd=attached.fd)
            except BpfError as exc:
                raise ModuleFailure("%sdetaching the XDP program from %s failed: %s" % (option, name, exc))
        self.modified = True

    def set_diff(self, present, new_tag, new_mode, new_maps):
        if not self.module._diff:
            return
        before_tx = self.result.get("tx_devices_before")
        before_tunnel = self.result.get("tunnel_devices_before", self.result["tunnel_devices"])
        before_own = self.result.get("own_addresses_before", self.result["own_addresses"])
        self.result["diff"] = dict(
            before={
                "tag": present.attached_info.tag if present.attached_info else None,
                "mode": present.attached_mode,
                "pinned_maps": sorted(present.pinned_maps),
                "tx_devices": self.result["tx_devices"] if before_tx is None else
                [self.ifname(ifindex) for ifindex in before_tx],
                "tunnel_devices": before_tunnel,
                "own_addresses": before_own,
            },
            after={
                "tag": new_tag,
                "mode": new_mode,
                "pinned_maps": new_maps,
                "tx_devices": self.result["tx_devices"],
                "tunnel_devices": self.result["tunnel_devices"],
                "own_addresses": self.result["own_addresses"],
            },
            before_header="%s (xdp)" % self.iface, after_header="%s (xdp)" % self.iface,
        )

    @staticmethod
    def ifname(ifindex):
        try:
            return socket.if_indextoname(ifindex)
        except OSError:
            return "ifindex %d" % ifindex

    # -- absent ------------------------------------------------------------------------------

    def wireguard_redirects(self):
        """The interfaces of this program (iface, also_on) whose TC ingress runs tc_wireguard_redirect."""
        if PYROUTE2_IMPORT_ERROR is not None:   # then tc_program could not have attached one either
            return []
        name = TC_FILTER_NAME_PREFIX + WIREGUARD_REDIRECT_PROGRAM
        found = []
        with open_iproute() as ipr:
            for iface, ifindex in [(self.iface, self.ifindex)] + sorted(self.also_on_ifindexes().items()):
                if any(tc_filter.kind == "bpf" and tc_filter.name == name
                       for tc_filter in list_filters(ipr, ifindex, "ingress")):
                    found.append(iface)
        return found

    def refuse_while_redirected(self):
        """The uplink's tc_wireguard_redirect goes before the XDP program in front of it: without
        it, a frame from the wire could pose as a handoff (docs/transport.md)."""
        redirected = self.wireguard_redirects()
        if not redirected:
            return
        message = ("%s is attached to the TC ingress of %s, behind this XDP program: remove it first "
                   "(anycast.edge.tc_program, direction: ingress, state: absent) - without the XDP program "
                   "in front, a frame from the wire can pose as its handoff"
                   % (WIREGUARD_REDIRECT_PROGRAM, ", ".join(redirected)))
        if not self.module.check_mode:
            raise ModuleFailure(message)
        self.module.warn(message + " (check mode: the real run refuses unless it is gone)")

    def run_absent(self):
        self.refuse_while_redirected()
        self.detach_also_on()
        readable = self.prepare_pins(may_mount=False)
        present = PresentState(self.ifindex, self.pin_root, self.iface, readable)
        try:
            self.record_previous(present)
            ours = present.ours_attached(self.program_name)
            if present.attached_id and not ours:
                self.module.warn("leaving XDP program %s (id %d) on %s attached: this module did not attach it"
                                 % (present.attached_info.name, present.attached_id, self.iface))
            pins = []
            if present.pinned_program is not None:
                pins.append(program_pin_path(self.pin_root, self.iface))
            pins.extend(map_pin_path(self.pin_root, self.iface, name) for name in present.pinned_maps)
            self.result["maps_removed"] = sorted(present.pinned_maps)
            self.result["changed"] = self.result["changed"] or bool(ours or pins)
            if self.module._diff:
                self.result["diff"] = dict(
                    before={"tag": present.attached_info.tag if ours else None,
                            "mode": present.attached_mode if ours else None,
                            "pinned_maps": sorted(present.pinned_maps)},
                    after={"tag": None, "mode": None, "pinned_maps": []},
                    before_header="%s (xdp)" % self.iface, after_header="%s (xdp)" % self.iface)
            if self.module.check_mode or not self.result["changed"]:
                return
            if ours:
                self.detach(self.iface, self.ifindex, present.attached_id, present.attached_mode)
            self.modified = True
            for path in pins:
                unpin(path)
            remove_empty_dirs(self.pin_root, self.iface)
        finally:
            present.close()


def host_ipv4_addresses():
    """Every IPv4 address on the interfaces of this network namespace (dotted quads), but those of
    ipip links: a tunnel's inner address is reachable only through its tunnel, and the tunnels are
    made after the program (ipip_tunnels runs after xdp_edge), so counting them would change the
    map on every second run."""
    addresses = set()
    with open_iproute() as ipr:
        tunnels = set()
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            if info is not None and info.get_attr("IFLA_INFO_KIND") == "ipip":
                tunnels.add(link["index"])
        for message in ipr.get_addr(family=socket.AF_INET):
            if message["index"] in tunnels:
                continue
            address = message.get_attr("IFA_LOCAL") or message.get_attr("IFA_ADDRESS")
            if address:
                addresses.add(address)
    return sorted(addresses, key=socket.inet_aton)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            iface=dict(type="str", required=True),
            object=dict(type="path"),
            program=dict(type="str", default="xdp_edge"),
            mode=dict(type="str", default="auto", choices=["auto", "native", "generic"]),
            pin_root=dict(type="path", default=DEFAULT_PIN_ROOT),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            tx_devices=dict(type="list", elements="str", default=[]),
            also_on=dict(type="list", elements="str", default=[]),
            tunnel_devices=dict(type="list", elements="str"),
        ),
        required_if=[("state", "present", ["object"])],
        supports_check_mode=True,
    )
    if PYROUTE2_IMPORT_ERROR is not None and module.params["state"] == "present":
        module.fail_json(msg=missing_required_lib("pyroute2"), exception=PYROUTE2_IMPORT_ERROR)
    runner = XdpProgramModule(module)
    try:
        if module.params["state"] == "present":
            runner.run_present()
        else:
            runner.run_absent()
    except (ModuleFailure, BpfError) as exc:
        runner.result["changed"] = runner.modified
        message = str(exc) if isinstance(exc, ModuleFailure) else "%s (interface %s)" % (exc, runner.iface)
        module.fail_json(msg=message, **runner.result)
    module.exit_json(**runner.result)


if __name__ == "__main__":
    main()
