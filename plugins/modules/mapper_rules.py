#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: mapper_rules
short_description: Converge the TC mapper's settings, known POPs and services on a game-server host
version_added: "0.1.0"
description:
  - Writes this host's settings into the maps of the C(tc_mapper) programs (C(bpf/tc_mapper.c))
    attached by M(anycast.edge.tc_program) at C(<pin_root>/<iface>/tc_ingress) and
    C(<pin_root>/<iface>/tc_egress) - C(mapper_config) (tunnel address, default POP, idle time,
    gateway MAC, FIB flag), C(mapper_pops) (the POPs whose IPIP is learned from) and
    C(mapper_services) (this host's services and their direct-server-return flag).
  - The maps are found through the pinned programs themselves (the kernel's list of the maps each
    program uses), so what is written is what the running programs read - never a stale pin.
    A map used by both programs is written once (the tc_mapper role attaches both halves with
    shared maps); should each program have its own copy, every copy gets the same entries and
    the result says so (RV(shared_flows)).
  - Reads the present entries and writes only the differences; entries the parameters no longer
    declare are deleted. New POPs and services are added before the config may point at them;
    removals come last.
  - Never touches C(mapper_flows) (what ingress learned) or C(mapper_stats).
  - Runs on the game-server host. Needs libbpf (Debian package C(libbpf1)) and root.
author:
  - anycast.edge maintainers (!UNKNOWN)
requirements:
  - libbpf 1.x (libbpf.so.1)
  - root (CAP_BPF) to open pinned programs and their maps
attributes:
  check_mode:
    support: full
    details: >-
      Reads the maps and computes every change; writes nothing. With no program pinned yet (a
      first run in check mode), compares with empty maps and warns.
  diff_mode:
    support: full
    details: Shows the config fields, the POP addresses and the services before and after.
  platform:
    platforms: linux
options:
  pin_root:
    description: Folder (on a bpffs) holding one folder of pins per interface.
    type: path
    default: /sys/fs/bpf/anycast_edge
  iface:
    description: Interface the mapper programs are attached to (the host's uplink).
    type: str
    required: true
  tunnel_address:
    description: This host's tunnel address (outer destination of the POPs' IPIP, outer source of replies).
    type: str
    required: true
  default_pop:
    description:
      - Tunnel address of the POP replies go to when their flow has no live mapping.
      - Omitted, such replies keep the destination the kernel's routing chose.
      - Must be one of O(pops).
    type: str
  idle_sec:
    description: A flow not seen on ingress for this long is steered to the default POP; 0 = the program's default (120).
    type: int
    default: 120
  gateway_mac:
    description: Next-hop MAC for direct server return (C(aa:bb:cc:dd:ee:ff)); omitted, the program asks the FIB.
    type: str
  fib_next_hop:
    description: Steered replies get their next hop from the FIB (for hosts whose POPs sit behind different gateways).
    type: bool
    default: false
  pops:
    description:
      - Tunnel addresses of every POP. IPIP to O(tunnel_address) from other sources is dropped.
      - Each POP's IPIP is accepted (and learned from) only on the device the host's routing sends
        that POP's traffic through (asked of the kernel, C(ip route get)), which must be one of
        O(devices); in any other device's ingress it is taken as spoofed and dropped. Rerun
        after changing the routes toward the POPs.
    type: list
    elements: str
    default: []
  devices:
    description:
      - The devices the mapper programs run on (the uplink and C(anycast_edge_mapper_devices)).
      - Omitted, O(iface) alone.
    type: list
    elements: str
  services:
    description: This host's services.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Service name (shown in the diff).
        type: str
        required: true
      address:
        description: Anycast IPv4 address of the service.
        type: str
        required: true
      protocol:
        description: Transport protocol.
        type: str
        required: true
        choices: [udp, tcp, icmp]
      port:
        description: Port, 1..65535; 0 (or omitted) for icmp.
        type: int
        default: 0
      dsr:
        description:
          - Direct server return - replies lose their IPIP header and go from the anycast address
            straight to the gateway. The provider must allow that source address, and the POP
            does not see the replies (no port punch learned there).
        type: bool
        default: false
seealso:
  - module: anycast.edge.tc_program
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
"""

EXAMPLES = r"""
- name: Converge the mapper's maps on a game-server host
  anycast.edge.mapper_rules:
    iface: eth0
    tunnel_address: 10.1.0.10
    default_pop: 10.0.0.1
    idle_sec: 120
    pops: [10.0.0.1, 10.0.0.2]
    devices: [eth0]
    services:
      - {name: cs2-main, address: 198.51.100.10, protocol: udp, port: 27015}
      - {name: race, address: 198.51.100.20, protocol: udp, port: 7777, dsr: true}
"""

RETURN = r"""
maps:
  description: Entries added, changed and removed per map (summed over the copies written).
  returned: always
  type: dict
  sample:
    mapper_config: {added: 0, changed: 1, removed: 0}
    mapper_pops: {added: 1, changed: 0, removed: 0}
    mapper_services: {added: 0, changed: 0, removed: 0}
programs:
  description: The pinned programs whose maps were read (pin path and kernel id).
  returned: always
  type: list
  elements: dict
  sample: [{pin: /sys/fs/bpf/anycast_edge/eth0/tc_ingress, prog_id: 41}]
copies:
  description: How many distinct copies of each config map were found (1 when the programs share them).
  returned: always
  type: int
  sample: 1
shared_flows:
  description:
    - Whether ingress and egress use the same C(mapper_flows) map. False means egress never sees
      what ingress learns (every reply goes to the default POP); null when only one program is pinned.
  returned: always
  type: bool
  sample: true
"""

import ipaddress
import os
import socket

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.anycast.edge.plugins.module_utils import _map_sync
from ansible_collections.anycast.edge.plugins.module_utils import _mapper_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _netlink
from ansible_collections.anycast.edge.plugins.module_utils import _pins
from ansible_collections.anycast.edge.plugins.module_utils._bpf import BpfError, BpfMap, BpfProgram

CONFIG_KEY = abi.U32.pack(0)
# The maps this module converges, with the key and value sizes it packs; a map of another layout
# (a program of another version) is refused before anything is written.
RULE_MAPS = dict((name, abi.MAP_SIZES[name]) for name in ("mapper_config", "mapper_pops", "mapper_services"))
FLOWS_MAP = "mapper_flows"
# Write order: what the config may point at exists before the config does; removals last.
ADD_ORDER = ("mapper_pops", "mapper_services", "mapper_config")
REMOVE_ORDER = ("mapper_services", "mapper_pops")


class RuleError(Exception):
    """A parameter that cannot be packed; the message names it."""


def ipv4(path, value):
    try:
        return str(ipaddress.IPv4Address(u"%s" % value))
    except (ipaddress.AddressValueError, ValueError):
        raise RuleError("%s: %r is not an IPv4 address" % (path, value))


def route_devices(pops, devices):
    """{POP address: ifindex of the device the kernel routes it through}, checked against the
    mapper's devices; a RuleError names the POPs routed elsewhere (or not at all)."""
    allowed = {}
    for name in devices:
        try:
            allowed[socket.if_nametoindex(name)] = name
        except OSError:
            raise RuleError("devices: no device %r on this host" % name)
    found, wrong = {}, []
    ipr = _netlink.open_iproute()
    try:
        for pop in pops:
            try:
                routes = ipr.route("get", dst=pop)
                oif = routes[0].get_attr("RTA_OIF") if routes else None
            except _netlink.NetlinkError as exc:
                oif, routes = None, exc
            if oif not in allowed:
                wrong.append("%s (%s)" % (pop, "routed via ifindex %s" % oif if oif else "no route: %s" % routes))
                continue
            found[pop] = oif
    finally:
        ipr.close()
    if wrong:
        raise RuleError("pops: the host does not route %s through one of the mapper's devices (%s): their "
                        "IPIP would be dropped as spoofed; route them over one of those devices or add "
                        "the device to anycast_edge_mapper_devices" % (", ".join(wrong), ", ".join(devices)))
    return found


def desired_entries(params, pop_devices=None):
    """{map name: {key: value}} wanted by the parameters, each POP with the device it is accepted
    on (pop_devices: {address: ifindex}; None: ask the kernel)."""
    tunnel = ipv4("tunnel_address", params["tunnel_address"])
    pops = sorted(set(ipv4("pops[%d]" % index, pop) for index, pop in enumerate(params["pops"])))
    if len(pops) > abi.MAX_POPS:
        raise RuleError("pops: %d POPs, at most %d fit" % (len(pops), abi.MAX_POPS))
    default_pop = None
    if params["default_pop"]:
        default_pop = ipv4("default_pop", params["default_pop"])
        if default_pop not in pops:
            raise RuleError("default_pop: %s is not one of pops (%s); the program ignores mappings to "
                            "unlisted POPs, a default outside them would be a POP nobody checks"
                            % (default_pop, ", ".join(pops) or "none"))
    if params["idle_sec"] < 0:
        raise RuleError("idle_sec: must be 0 or more, not %d" % params["idle_sec"])
    try:
        config = abi.pack_config(tunnel, default_pop, params["idle_sec"] * 10**9, params["gateway_mac"],
                                 params["fib_next_hop"])
    except ValueError as exc:
        raise RuleError("gateway_mac: %s" % exc)

    if pop_devices is None:
        pop_devices = route_devices(pops, params["devices"] or [params["iface"]])
    wanted = {"mapper_config": {CONFIG_KEY: config}, "mapper_pops": {}, "mapper_services": {}}
    for pop in pops:
        key = abi.pack_pop_key(pop)
        wanted["mapper_pops"][key] = abi.pack_pop_value(pop_devices[pop])
    seen = {}
    for index, service in enumerate(params["services"]):
        path = "services[%d]" % index
        address = ipv4(path + ".address", service["address"])
        port = service["port"] or 0
        if service["protocol"] == "icmp":
            port = 0
        elif not 1 <= port <= 65535:
            raise RuleError("%s.port: %d is not a port (1..65535)" % (path, port))
        endpoint = (service["protocol"], address, port)
        if endpoint in seen:
            raise RuleError("%s: %s %s port %d is also services[%d]" % ((path,) + endpoint + (seen[endpoint],)))
        seen[endpoint] = index
        key = abi.pack_service_key(service["protocol"], address, port)
        wanted["mapper_services"][key] = abi.pack_service_value(service["dsr"])
    if len(wanted["mapper_services"]) > abi.MAX_SERVICES:
        raise RuleError("services: %d services, at most %d fit" % (len(wanted["mapper_services"]), abi.MAX_SERVICES))
    return wanted


def show_config(raw):
    """mapper_config as a dict for the diff."""
    if raw is None:
        return None
    idle_ns, tunnel, default_pop, gateway, flags = abi.MAPPER_CONFIG.unpack(raw)
    return {"tunnel_address": str(ipaddress.IPv4Address(tunnel)),
            "default_pop": str(ipaddress.IPv4Address(default_pop)) if default_pop != bytes(4) else None,
            "idle_sec": idle_ns // 10**9,
            "gateway_mac": ":".join("%02x" % octet for octet in bytearray(gateway)) if gateway != bytes(6) else None,
            "fib_next_hop": bool(flags & abi.F_FIB_NEXT_HOP)}


def device_name(ifindex):
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return "ifindex %d" % ifindex


def show_service(key, value):
    address, port, proto = abi.SERVICE_KEY.unpack(key)
    names = dict((number, name) for name, number in abi.IPPROTO.items())
    text = "%s %s:%d" % (names.get(proto, proto), ipaddress.IPv4Address(address), int.from_bytes(port, "big"))
    if abi.SERVICE_VALUE.unpack(value)[0] & abi.SERVICE_F_DSR:
        text += " dsr"
    return text


def show(entries):
    """The diff's view of one copy of the maps."""
    return {"config": show_config(entries["mapper_config"].get(CONFIG_KEY)),
            "pops": sorted("%s on %s" % (ipaddress.IPv4Address(key), device_name(abi.unpack_pop_value(value)))
                           for key, value in entries["mapper_pops"].items()),
            "services": sorted(show_service(key, value) for key, value in entries["mapper_services"].items())}


class MapperMaps(object):
    """The config maps the pinned mapper programs use, each distinct map (by kernel id) once.

    A program's list holds only the maps its code references (ingress never reads
    mapper_services), so each map is taken from whichever program uses it."""

    def __init__(self):
        self.programs = []
        self.instances = []       # [(map name, BpfMap)], distinct by map id, in discovery order
        self.flows_ids = {}       # direction -> id of that program's mapper_flows
        self._opened = []

    def close(self):
        for bpf_map in self._opened:
            bpf_map.close()

    def load(self, pin_root, iface):
        seen_ids = set()
        for direction in _pins.TC_DIRECTIONS:
            path = _pins.tc_pin_path(pin_root, iface, direction)
            if not os.path.exists(path):
                continue
            program = BpfProgram.from_pin(path)
            try:
                info = program.info()
            finally:
                program.close()
            self.programs.append({"pin": path, "prog_id": info.id})
            names = set()
            for map_id in info.map_ids:
                bpf_map = BpfMap.from_id(map_id)
                self._opened.append(bpf_map)
                names.add(bpf_map.name)
                if bpf_map.name == FLOWS_MAP:
                    self.flows_ids[direction] = bpf_map.id
                if bpf_map.name not in RULE_MAPS or bpf_map.id in seen_ids:
                    continue
                _map_sync.check_layout(bpf_map, RULE_MAPS[bpf_map.name][0], RULE_MAPS[bpf_map.name][1],
                                       "%s of the program pinned at %s" % (bpf_map.name, path),
                                       "attach this collection's tc_mapper first")
                seen_ids.add(bpf_map.id)
                self.instances.append((bpf_map.name, bpf_map))
            if "mapper_config" not in names:
                raise RuleError("the program pinned at %s uses no map mapper_config: it is not the tc_mapper "
                                "program (attach build/tc_mapper.o with anycast.edge.tc_program)" % path)

    def shared_flows(self):
        if len(self.flows_ids) < 2:
            return None
        return self.flows_ids["ingress"] == self.flows_ids["egress"]

    def copies(self):
        """How many copies of mapper_config there are (1 when the programs share their maps)."""
        return len([name for name, _bpf_map in self.instances if name == "mapper_config"])


def read_present(name, bpf_map):
    """{key: value} of one map; an all-zero config reads as no config."""
    if name == "mapper_config":
        value = bpf_map.lookup(CONFIG_KEY)
        return {CONFIG_KEY: value} if value is not None and value != bytes(len(value)) else {}
    return dict(bpf_map.items())


def plan(instances, wanted):
    """The _map_sync steps turning every map instance into `wanted`, in write order (each step's
    target: the index of its instance in `instances`), and the counts per map name."""
    counts = dict((name, {"added": 0, "changed": 0, "removed": 0}) for name in RULE_MAPS)
    steps = []
    for name in ADD_ORDER:
        for index, (map_name, _bpf_map, present) in enumerate(instances):
            if map_name == name:
                added, changed = _map_sync.map_changes(present, wanted[name])[:2]
                counts[name]["added"] += len(added)
                counts[name]["changed"] += len(changed)
                steps.append(_map_sync.Step(name + "_add", name, "update",
                                            sorted(_map_sync.upserts(added, changed)), index))
    for name in REMOVE_ORDER:
        for index, (map_name, _bpf_map, present) in enumerate(instances):
            if map_name == name:
                removed = _map_sync.map_changes(present, wanted[name])[2]
                counts[name]["removed"] += len(removed)
                steps.append(_map_sync.Step(name + "_remove", name, "delete", sorted(_map_sync.deletes(removed)), index))
    return [step for step in steps if step.entries], counts


def run_module():
    module = AnsibleModule(
        argument_spec=dict(
            pin_root=dict(type="path", default=_pins.DEFAULT_PIN_ROOT),
            iface=dict(type="str", required=True),
            tunnel_address=dict(type="str", required=True),
            default_pop=dict(type="str"),
            idle_sec=dict(type="int", default=120),
            gateway_mac=dict(type="str"),
            fib_next_hop=dict(type="bool", default=False),
            pops=dict(type="list", elements="str", default=[]),
            devices=dict(type="list", elements="str"),
            services=dict(type="list", elements="dict", default=[], options=dict(
                name=dict(type="str", required=True),
                address=dict(type="str", required=True),
                protocol=dict(type="str", required=True, choices=["udp", "tcp", "icmp"]),
                port=dict(type="int", default=0),
                dsr=dict(type="bool", default=False),
            )),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        wanted = desired_entries(params)
        _pins.pin_dir(params["pin_root"], params["iface"])
    except (RuleError, ValueError, _netlink.TcError) as exc:
        module.fail_json(msg=str(exc))

    maps = MapperMaps()
    try:
        try:
            maps.load(params["pin_root"], params["iface"])
        except (RuleError, BpfError) as exc:
            module.fail_json(msg="iface: %s" % exc)
        if not maps.instances:
            if not module.check_mode:
                module.fail_json(msg="iface: no tc_mapper program is pinned for %s (%s, %s): attach it with "
                                     "anycast.edge.tc_program first"
                                 % (params["iface"], _pins.tc_pin_path(params["pin_root"], params["iface"], "ingress"),
                                    _pins.tc_pin_path(params["pin_root"], params["iface"], "egress")))
            module.warn("no tc_mapper program is pinned for %s yet: check mode compares with empty maps"
                        % params["iface"])
            instances = [(name, None, {}) for name in RULE_MAPS]
        else:
            try:
                instances = [(name, bpf_map, read_present(name, bpf_map)) for name, bpf_map in maps.instances]
            except BpfError as exc:
                module.fail_json(msg="reading the mapper's maps failed: %s" % exc)

        writes, counts = plan(instances, wanted)
        result = dict(changed=bool(writes), maps=counts, programs=maps.programs, copies=maps.copies(),
                      shared_flows=maps.shared_flows())
        if maps.shared_flows() is False:
            module.warn("the ingress and egress programs on %s use different mapper_flows maps: egress never "
                        "sees what ingress learns, so every reply goes to the default POP (each program was "
                        "loaded from its own instance of the object)" % params["iface"])
        if module._diff and writes:
            before = dict((name, {}) for name in RULE_MAPS)
            for name, _bpf_map, present in reversed(instances):
                before[name] = present  # the first instance of each map shows
            result["diff"] = _map_sync.diff_result(show(before), show(wanted), "tc_mapper maps on %s" % params["iface"])
        if writes and not module.check_mode:
            try:
                copies = dict((index, bpf_map) for index, (_name, bpf_map, _present) in enumerate(instances))
                _map_sync.apply_plan(writes, _map_sync.executor(copies))
            except _map_sync.PlanError as exc:
                result["changed"] = bool(exc.undo_errors)
                module.fail_json(msg=str(exc), **result)
        module.exit_json(**result)
    finally:
        maps.close()


def main():
    run_module()


if __name__ == "__main__":
    main()
