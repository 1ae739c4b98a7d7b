#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: edge_rules
short_description: Converge the XDP edge program's rule maps (services, prefixes, filters, limits)
version_added: "0.1.0"
description:
  - Writes the rules of the inventory into the maps the C(xdp_edge) program reads, through
    their pins C(<pin_root>/<iface>/maps/<map name>) (made by M(anycast.edge.xdp_program)); the
    maps must belong to the program pinned at C(<pin_root>/<iface>/program).
  - Converges C(edge_config), C(edge_services), C(edge_anycast_v4), C(edge_backends),
    C(edge_allow_v4), C(edge_deny_v4), C(edge_wireguard_pairs) and the payload rules
    (C(edge_payload_rules)) - reads what is there (batch lookups), writes only the
    differences (batch updates and deletes) and deletes what the parameters no longer declare.
    The program keeps running; nothing is detached or reloaded.
  - C(edge_deny_v4) and C(edge_allow_v4) keep the exact prefixes as a record; the program reads
    the lists from C(edge_src_filter) (a bit per /24, 8 MiB) and C(edge_src_hosts) (a bitmap per
    /24 that prefixes longer than /24 cover in part), which this module derives from them and
    converges too, so that a lookup costs the same with one prefix as with a million.
  - Derives from the anycast prefixes and the services' addresses C(edge_dst_pass) (a bit per /24,
    2 MiB, set for each /24 no address of which is ours), which lets the program pass the POP's
    own traffic to the kernel after one array lookup, and converges it too.
  - Never touches the maps the program fills itself (C(edge_sources), C(edge_punches), the stats
    maps), so bans, port punches and counters survive a rule change. The one exception is
    C(edge_a2s_cache) - the cached A2S replies (info, players, rules) of a
    service id are deleted when that id stops being used or passes to another service or backend, so a
    cached reply is never served for a different game server.
  - "Writes are ordered so that the filter is never looser than the new rule set: new denies
    first, then old allows removed, new allows added, old denies removed last (the derived lists:
    first both rule sets' denies and only the allows they share, the new lists last). Services: old
    anycast prefixes are released before their services go, and new prefixes are claimed only
    after their services and backends exist; a service whose id or backend changes has its A2S
    flags cleared until its old cache entry is deleted. The result's C(steps) lists the order."
  - Writes this POP's possible CPUs (as libbpf counts them, from
    C(/sys/devices/system/cpu/possible)) into C(edge_config.nr_cpus) - the program shares each
    service's admission budget among them, one token bucket per CPU.
  - Writes this POP's TAI offset (CLOCK_TAI - CLOCK_REALTIME, whole seconds, set by its time
    daemon - chrony 37 s, systemd-timesyncd 0) into C(edge_config), which the program takes off
    CLOCK_TAI, so that every POP counts the same (UTC) edge cookie epochs. A rerun changes it
    only when the offset itself changed (a leap second, a daemon that set it).
  - If a write fails, the steps already made are undone (the host is left as it was) and the
    task fails naming the step and the map.
  - Writes C(edge_wireguard_pairs) from O(wireguard_pairs) - each pair's device resolved on the POP
    to the ifindex and MTU the kernel reports - so that the program hands those backends' players
    to the pair's WireGuard device (through the uplink's C(tc_wireguard_redirect)) instead of IPIP;
    a pair no longer listed is removed (its backend is IPIP again), and an entry that drifted from
    its device (recreated with another ifindex, another MTU) is rewritten. A device that does not
    exist fails the task, naming the pair and the device, before anything is written.
  - Runs on the POP. Needs libbpf (Debian package C(libbpf1)) and root; with O(wireguard_pairs),
    pyroute2 (Debian package C(python3-pyroute2)).
author:
  - anycast.edge maintainers (!UNKNOWN)
requirements:
  - libbpf 1.x (libbpf.so.1) on the POP
  - root (CAP_BPF and CAP_NET_ADMIN) to open and write pinned maps
attributes:
  check_mode:
    support: full
    details: >-
      Reads the maps and computes every change; writes nothing. When no program is pinned for
      O(iface) yet (a first run in check mode), compares with empty maps and warns. When the
      pinned program lacks a map this version uses (an upgrade that anycast.edge.xdp_program,
      in check mode, has not made), compares that map as empty and warns, naming it. A device of
      O(wireguard_pairs) that does not exist yet (a first run, whose WireGuard interfaces
      anycast.edge.wireguard_transport, in check mode, did not make) is warned about and its pair
      left out of the comparison; the real run fails on it.
  diff_mode:
    support: full
    details: >-
      Lists the entries that change, map by map (CIDRs, services by name, the config fields;
      the cookie key is never shown). At most O(diff_limit) lines per map and side, then a count.
  platform:
    platforms: linux
options:
  pin_root:
    description: Folder (on a bpffs) holding one folder of pins per interface.
    type: path
    default: /sys/fs/bpf/anycast_edge
  iface:
    description: Interface the program is attached to (its pins are in C(<pin_root>/<iface>/maps/)).
    type: str
    required: true
  tunnel_address:
    description:
      - This POP's own tunnel address (outer source of the IPIP packets to the backends, outer
        destination of their replies). Goes into C(edge_config).
    type: str
    required: true
  rules_file:
    description:
      - Path, on the controller, of a rules file - every rule option of this module (O(services),
        O(anycast_prefixes), O(backends), O(allow), O(control_plane), O(deny), O(rate_limits),
        O(ban_sec), O(punch_idle_sec), O(a2s_cookie_epoch_sec), O(verified_idle_sec),
        O(payload_rules)) in one compact JSON document, as M(anycast.edge.inventory_check)
        renders it per POP (its O(anycast.edge.inventory_check#module:rules_dir)). The module's
        action plugin copies it to the POP's temporary folder for the run; its content is checked
        as those options are. Given, none of those options may be.
      - The way to pass large lists - 100,000 prefixes travel as one file, not as task arguments
        that Ansible templates, ships and echoes back in the result.
    type: path
  services:
    description:
      - The services, already resolved (the M(anycast.edge.inventory_check) module returns them
        as C(rules.services)).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Service name (shown in the diff).
        type: str
        required: true
      id:
        description:
          - Service id, 1..1023 (index of the per-service stats and of the A2S cache).
          - Default is C(zlib.crc32(name) % 1023 + 1).
        type: int
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
      backend_address:
        description: Tunnel address of the backend the service's packets are sent to (IPIP).
        type: str
        required: true
      a2s_cache:
        description: Answer A2S_INFO, A2S_PLAYER and A2S_RULES at the POP from the cache (udp only).
        type: bool
        default: false
      a2s_snoop:
        description: Refresh the cache from the backend's own A2S_INFO, A2S_PLAYER and A2S_RULES replies. Default is O(services[].a2s_cache).
        type: bool
      a2s_max_age_sec:
        description: A cached reply older than this is not served.
        type: int
        default: 30
      rate_limit:
        description: Per-source limit for this service instead of the protocol-wide one.
        type: dict
        suboptions: &per_source_limit
          packets_per_sec:
            description: Packets per second per source; omitted = unlimited.
            type: int
          bytes_per_sec:
            description: Bytes per second per source; omitted = unlimited.
            type: int
      game_protocol:
        description:
          - The game protocol of the service - what is handshake-shaped for it while it is under
            attack (C(source), C(goldsrc) - udp only); C(none) knows no handshake.
          - C(minecraft) (tcp only) - the first data segment of each connection must be a well-formed
            Java Edition handshake, else it is dropped and the source's verification revoked.
        type: str
        choices: [none, source, goldsrc, minecraft]
        default: none
      attack_mode:
        description:
          - Who puts the service under attack - C(auto) the POP agent (from the unverified traffic it
            reads in C(edge_admission)), C(always) or C(never) the operator.
        type: str
        choices: [auto, always, never]
        default: auto
      syn_auth:
        description:
          - SYN authentication of a C(tcp) service (docs/tcp-protection.md) - C(auto) while the service
            is under attack, C(always) or C(never). While on, the POP answers an unverified source's SYN
            with a cookie SYN-ACK, verifies the source by the RST its stack sends back, and drops the
            source's other segments (C(drop_tcp_unverified)). Written as C(never) for other protocols.
        type: str
        choices: [auto, always, never]
        default: auto
      admission:
        description:
          - The POP's budget for the service's unverified traffic while it is under attack, for the
            whole POP (XDP shares it among the CPUs, C(edge_config.nr_cpus)). Both 0 - nothing
            unverified passes under attack; one 0 alone is refused.
        type: dict
        default: {packets_per_sec: 2000, bytes_per_sec: 2000000}
        suboptions:
          packets_per_sec:
            description: Unverified packets per second (>= 0).
            type: int
            default: 2000
          bytes_per_sec:
            description: Unverified bytes per second (>= 0).
            type: int
            default: 2000000
  anycast_prefixes:
    description: IPv4 prefixes the POP claims (traffic to other destinations goes to the kernel).
    type: list
    elements: str
    default: []
  backends:
    description:
      - Tunnel addresses of the backends; IPIP replies are accepted only from these.
      - The backend of every service is added even when not listed here.
    type: list
    elements: str
    default: []
  wireguard_pairs:
    description:
      - The backends whose pair with this POP is WireGuard, each with the POP's device of the pair
        (M(anycast.edge.inventory_check) renders them into the POP's rules file from
        C(anycast_edge_transport); the device is the one M(anycast.edge.wireguard_interface) made).
      - Every backend not listed is forwarded as IPIP. One device per backend and one backend per device.
    type: list
    elements: dict
    default: []
    suboptions:
      backend:
        description: The backend's tunnel address (a service's O(services[].backend_address)).
        type: str
        required: true
      device:
        description: The pair's WireGuard interface on this POP (C(aw-...)); it must exist.
        type: str
        required: true
  allow:
    description: Source CIDRs that skip bans and rate limits (a bare address is a /32).
    type: list
    elements: str
    default: []
  control_plane:
    description:
      - The POP's control-plane sources - its BGP neighbours, the other POPs' tunnel and
        management addresses, the monitoring hosts - which, like O(allow), skip bans and rate
        limits, so that packets spoofed in their name can never get them banned or limited.
      - Derived from inventory by M(anycast.edge.inventory_check) (C(rules.control_plane), by
        POP); not a list to keep by hand.
      - Kept apart from O(allow) - in C(edge_allow_v4) each entry's value says which of the two
        lists (or both) it comes from - so the diff and RV(control_plane) show why a source
        is exempt.
      - A source inside a O(deny) prefix is refused (deny beats every exemption).
    type: list
    elements: dict
    default: []
    suboptions:
      address:
        description: The source address (a /32) or CIDR.
        type: str
        required: true
      reason:
        description: Why it is a control-plane source (shown in the diff), e.g. C(BGP neighbour upstream of pop1).
        type: str
        default: ""
  deny:
    description: Source CIDRs that are dropped; deny beats allow.
    type: list
    elements: str
    default: []
  rate_limits:
    description: Per-source limits by protocol class; a class left out is unlimited.
    type: dict
    default: {}
    suboptions:
      tcp:
        description: Limit of TCP packets.
        type: dict
        suboptions: *per_source_limit
      udp:
        description: Limit of UDP packets.
        type: dict
        suboptions: *per_source_limit
      icmp:
        description: Limit of ICMP packets.
        type: dict
        suboptions: *per_source_limit
      other:
        description: Limit of every other IP protocol.
        type: dict
        suboptions: *per_source_limit
  ban_sec:
    description: How long a source over its limit is banned; 0 = drop over the limit, do not ban.
    type: int
    default: 60
  punch_idle_sec:
    description: A port punch (a flow the game server spoke on) expires after this idle time.
    type: int
    default: 120
  a2s_cookie_epoch_sec:
    description: Lifetime of an A2S challenge cookie (valid for this epoch and the previous one).
    type: int
    default: 30
  payload_rules:
    description:
      - The payload rules (C(anycast_edge_filters.rules), as M(anycast.edge.inventory_check)
        normalizes them), in order - the first rule a packet matches decides. At most 256.
      - Each rule has C(action) (C(drop), C(pass) or C(limit)) and what it matches, each left out for
        any - C(protocol) (C(udp), C(tcp), C(icmp)), C(dst_port), C(src_port), C(length) (IP total
        length), C(ttl) (a number, C("min-max") or C([min, max])), C(tcp_flags) (C({mask, value}),
        numbers or lists of flag names), C(payload) (C({offset, value, mask}), up to 16 bytes in
        hex at C(offset) bytes after the L4 header), C(verified) (true or false); and for
        C(limit), C(limit) (C({packets_per_sec, bytes_per_sec}), per source and rule).
      - Written into C(edge_payload_rules) - the bank the program does not read, then one write
        switches banks, so every packet meets the old list or the new one whole - and the old
        bank is brought up to date after. Only the rules that differ are written; the hit counters
        (C(edge_payload_rule_stats)) of a position whose rule changed are zeroed.
        See docs/payload-rules.md.
    type: list
    elements: dict
    default: []
  verified_idle_sec:
    description:
      - A verified source stays verified for a service while it sends within this idle time
        (seconds, > 0). Goes into C(edge_config.verified_idle_ns).
    type: int
    default: 600
  cookie_keys:
    description:
      - SipHash keys of the edge cookies (the A2S challenge), newest first, 32 hex digits
        each - the same on every POP of the fleet, so that a challenge issued by one POP is
        accepted by another.
      - The first key is the current generation - it issues cookies and accepts them; the
        second, if given, is the previous generation - still accepted, never issued - so that a
        rotation refuses no challenge in flight. Without a second key, the previous generation
        is cleared (retired). At most two keys.
      - When omitted, the keys already in the map are kept; if the map has no key (all zero),
        a random one is generated once (so a rerun is not a change); that key is this POP's
        alone. The C(anycast.edge.xdp_edge) role always passes the fleet's keys.
      - Never shown in any output - result, diff, argument echo or error message.
    type: list
    elements: str
    aliases: [a2s_cookie_key]
  diff_limit:
    description: At most this many entries per map and side in the diff output.
    type: int
    default: 100
notes:
  - The result reports C(elapsed_ms), the time spent inside the module (from parameter parsing
    to the result), so benchmarks can tell it from Ansible's own overhead.
  - The writes of one step are one batch syscall; a packet sees each element either before
    or after, never half-written (an edge_config update is one value copy).
seealso:
  - module: anycast.edge.inventory_check
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
"""

EXAMPLES = r"""
- name: Apply the rules of the inventory to this POP
  anycast.edge.edge_rules:
    iface: "{{ anycast_edge_uplink }}"
    tunnel_address: "{{ anycast_edge_tunnel_address }}"
    services: "{{ anycast_edge_rules.services }}"
    anycast_prefixes: "{{ anycast_edge_rules.anycast_prefixes }}"
    backends: "{{ anycast_edge_rules.backends }}"
    # validate_inventory keeps the lists out of anycast_edge_rules (the rules files hold them)
    allow: "{{ anycast_edge_inventory.rules.allow }}"
    control_plane: "{{ anycast_edge_inventory.rules.control_plane[inventory_hostname] | default([]) }}"
    deny: "{{ anycast_edge_inventory.rules.deny }}"
    rate_limits: "{{ anycast_edge_rules.rate_limits }}"
    ban_sec: "{{ anycast_edge_rules.ban_sec }}"
    punch_idle_sec: "{{ anycast_edge_rules.punch_idle_sec }}"
    a2s_cookie_epoch_sec: "{{ anycast_edge_rules.a2s_cookie_epoch_sec }}"
    verified_idle_sec: "{{ anycast_edge_rules.verified_idle_sec }}"
    # The fleet's keys, newest first (from a vaulted var or file): the same on every POP.
    cookie_keys: "{{ anycast_edge_cookie_keys }}"

- name: Apply this POP's rules file, rendered on the controller by anycast.edge.inventory_check
  anycast.edge.edge_rules:
    iface: "{{ anycast_edge_uplink }}"
    tunnel_address: "{{ anycast_edge_tunnel_address }}"
    rules_file: "{{ anycast_edge_inventory.rules_files[inventory_hostname] }}"
    cookie_keys: "{{ anycast_edge_cookie_keys }}"

- name: Deny one more network by hand (everything else as given)
  anycast.edge.edge_rules:
    iface: eth1
    tunnel_address: 10.0.0.1
    anycast_prefixes: [198.51.100.0/24]
    services:
      - name: cs2-main
        address: 198.51.100.10
        protocol: udp
        port: 27015
        backend_address: 10.1.0.10
        a2s_cache: true
        game_protocol: source
        admission: {packets_per_sec: 1000, bytes_per_sec: 1000000}
    deny: [192.0.2.0/24]
"""

RETURN = r"""
maps:
  description: Entries added, changed and removed, per map (C(edge_a2s_cache) only ever has removals).
  returned: always
  type: dict
  sample:
    edge_config: {added: 0, changed: 1, removed: 0}
    edge_services: {added: 1, changed: 0, removed: 0}
    edge_anycast_v4: {added: 1, changed: 0, removed: 0}
    edge_backends: {added: 1, changed: 0, removed: 0}
    edge_allow_v4: {added: 0, changed: 0, removed: 0}
    edge_deny_v4: {added: 100000, changed: 0, removed: 0}
    edge_wireguard_pairs: {added: 0, changed: 0, removed: 0}
    edge_a2s_cache: {added: 0, changed: 0, removed: 0}
    edge_src_filter: {added: 1, changed: 0, removed: 0}
    edge_src_hosts: {added: 0, changed: 0, removed: 0}
    edge_dst_pass: {added: 0, changed: 1, removed: 0}
control_plane:
  description:
    - The control-plane sources exempt from bans and rate limits on this POP (O(control_plane),
      each prefix once, with why), and how many gained or lost the exemption in this run. They
      are also entries of C(edge_allow_v4) in RV(maps).
  returned: always
  type: dict
  contains:
    sources:
      description: The exempt control-plane sources, each C(address) (a CIDR) and C(reason).
      type: list
      elements: dict
    added:
      description: Prefixes that became control-plane sources (would, in check mode).
      type: int
    removed:
      description: Prefixes that stopped being control-plane sources.
      type: int
  sample:
    sources:
      - {address: 172.16.1.1/32, reason: BGP neighbour upstream of pop1}
      - {address: 10.0.0.2/32, reason: tunnel address of POP pop2}
    added: 2
    removed: 0
writes:
  description: Map elements written or deleted (would be, in check mode).
  returned: always
  type: int
  sample: 100005
steps:
  description: The write steps in the order they were (would be) made, with their size.
  returned: always
  type: list
  elements: dict
  sample:
    - {name: src_filter_tighten, map: edge_src_filter, operation: update, count: 1}
    - {name: deny_add, map: edge_deny_v4, operation: update, count: 100000}
    - {name: config, map: edge_config, operation: update, count: 1}
elapsed_ms:
  description: Time spent inside the module, in milliseconds.
  returned: always
  type: float
  sample: 412.5
cpu_ms:
  description: CPU time the module used over the same span as RV(elapsed_ms), in milliseconds.
  returned: always
  type: float
  sample: 380.2
timing_ms:
  description:
    - Milliseconds per phase - C(params) (argument parsing), C(rules) (packing the wanted
      entries), C(read) (reading the maps - what is left of it once the rules are packed, as the maps
      are read on a second thread meanwhile), C(plan), C(diff), C(write).
  returned: always
  type: dict
  sample: {params: 180.2, rules: 95.1, read: 140.3, plan: 12.0, diff: 0.0, write: 0.0}
a2s_cookie_key_generated:
  description: Whether a random cookie key was (would be) generated because none was given and the map had none.
  returned: always
  type: bool
  sample: false
pin_dir:
  description: Folder of the map pins that were read.
  returned: always
  type: str
  sample: /sys/fs/bpf/anycast_edge/eth1/maps
"""

import os
import threading
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.anycast.edge.plugins.module_utils import _bpf
from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _map_sync
from ansible_collections.anycast.edge.plugins.module_utils import _netlink
from ansible_collections.anycast.edge.plugins.module_utils import _pins
from ansible_collections.anycast.edge.plugins.module_utils import _rules
from ansible_collections.anycast.edge.plugins.module_utils._a2s_cookie import tai_offset_ns
from ansible_collections.anycast.edge.plugins.module_utils._bpf import BpfError

# Key and value sizes each map must have; a pin of another layout (an older program) is
# refused before anything is written.
MAP_LAYOUTS = {
    "edge_config": (abi.U32.size, abi.EDGE_CONFIG.size),
    "edge_services": (abi.SERVICE_KEY.size, abi.SERVICE_VALUE.size),
    "edge_anycast_v4": (abi.LPM_V4_KEY.size, abi.U32.size),
    "edge_backends": (abi.BE32.size, abi.BACKEND_VALUE.size),
    "edge_wireguard_pairs": (abi.BE32.size, abi.WIREGUARD_PAIR.size),
    "edge_allow_v4": (abi.LPM_V4_KEY.size, abi.U32.size),
    "edge_deny_v4": (abi.LPM_V4_KEY.size, abi.U32.size),
    "edge_a2s_cache": (abi.U32.size, abi.A2S_CACHE_ENTRY.size),
    "edge_src_filter": (abi.U32.size, abi.SRC_FILTER_ENTRY.size),
    "edge_src_hosts": (abi.SRC_HOSTS_KEY.size, abi.SRC_HOSTS_VALUE.size),
    "edge_dst_pass": (abi.U32.size, abi.U64.size),
    "edge_payload_rules": (abi.U32.size, abi.PAYLOAD_RULE.size),
    "edge_payload_rule_bank": (abi.U32.size, abi.PAYLOAD_RULE_BANK.size),
    "edge_payload_rule_stats": (abi.U32.size, abi.EDGE_COUNTER.size),
}
# Entries per batch lookup: fewer syscalls for the 100,000-entry tries (buffers of ~0.8 MB).
LOOKUP_CHUNK = 65536

LIMIT_OPTIONS = dict(packets_per_sec=dict(type="int"), bytes_per_sec=dict(type="int"))

# The rules: task options, or the content of a rules file (_rules.RULES_FILE_OPTIONS), checked
# by the same spec either way.
RULE_OPTIONS = dict(
    services=dict(type="list", elements="dict", default=[], options=dict(
        name=dict(type="str", required=True),
        id=dict(type="int"),
        address=dict(type="str", required=True),
        protocol=dict(type="str", required=True, choices=["udp", "tcp", "icmp"]),
        port=dict(type="int", default=0),
        backend_address=dict(type="str", required=True),
        a2s_cache=dict(type="bool", default=False),
        a2s_snoop=dict(type="bool"),
        a2s_max_age_sec=dict(type="int", default=30),
        rate_limit=dict(type="dict", options=LIMIT_OPTIONS),
        game_protocol=dict(type="str", default=_rules.DEFAULT_GAME_PROTOCOL, choices=list(abi.GAME_PROTOCOLS)),
        attack_mode=dict(type="str", default=_rules.DEFAULT_ATTACK_MODE, choices=list(abi.ATTACK_MODES)),
        syn_auth=dict(type="str", default=_rules.DEFAULT_SYN_AUTH, choices=list(abi.SYN_AUTH_MODES)),
        admission=dict(type="dict", default=dict(_rules.DEFAULT_ADMISSION), options=dict(
            (field, dict(type="int", default=number)) for field, number in _rules.DEFAULT_ADMISSION.items())),
    )),
    anycast_prefixes=dict(type="list", elements="str", default=[]),
    backends=dict(type="list", elements="str", default=[]),
    wireguard_pairs=dict(type="list", elements="dict", default=[], options=dict(
        backend=dict(type="str", required=True),
        device=dict(type="str", required=True),
    )),
    allow=dict(type="list", elements="str", default=[]),
    control_plane=dict(type="list", elements="dict", default=[], options=dict(
        address=dict(type="str", required=True),
        reason=dict(type="str", default=""),
    )),
    deny=dict(type="list", elements="str", default=[]),
    rate_limits=dict(type="dict", default={}, options=dict(
        tcp=dict(type="dict", options=LIMIT_OPTIONS),
        udp=dict(type="dict", options=LIMIT_OPTIONS),
        icmp=dict(type="dict", options=LIMIT_OPTIONS),
        other=dict(type="dict", options=LIMIT_OPTIONS),
    )),
    ban_sec=dict(type="int", default=60),
    punch_idle_sec=dict(type="int", default=120),
    a2s_cookie_epoch_sec=dict(type="int", default=30),
    verified_idle_sec=dict(type="int", default=_rules.DEFAULT_VERIFIED_IDLE_SEC),
    payload_rules=dict(type="list", elements="dict", default=[]),
)

# The rule options that are lists of strings (type list, elements str): the long ones.
STRING_LISTS = tuple(sorted(name for name, spec in RULE_OPTIONS.items()
                            if spec["type"] == "list" and spec.get("elements") == "str"))

ARGUMENT_SPEC = dict(
    pin_root=dict(type="path", default="/sys/fs/bpf/anycast_edge"),
    iface=dict(type="str", required=True),
    tunnel_address=dict(type="str", required=True),
    rules_file=dict(type="path"),
    cookie_keys=dict(type="list", elements="str", no_log=True, aliases=["a2s_cookie_key"]),
    diff_limit=dict(type="int", default=100),
    **RULE_OPTIONS
)


class MapReadError(Exception):
    """A pinned map, opened and checked, that could not be read: the kernel refused, or it holds
    what this collection cannot make sense of (a key written by hand, or by another program)."""

    def __init__(self, map_name, cause):
        super(MapReadError, self).__init__("%s: %s" % (map_name, cause))
        self.map_name = map_name
        self.cause = cause


def read_present(maps):
    """{map name: {key: value}} of the rule maps, and the ids that have a cache entry. A map left
    out of `maps` (check mode: the pending upgrade creates it) is left out here too, which
    _rules.compare reads as empty - the state the real run will find it in. MapReadError names
    the map that could not be read."""
    reading = []
    try:
        return _read_present(maps, reading.append)
    except (BpfError, ValueError) as exc:
        raise MapReadError(reading[-1], exc)


def _read_present(maps, reading):
    """read_present's work; reading(name) is called before each map is read."""
    reading("edge_config")
    config = maps["edge_config"].lookup(_rules.CONFIG_KEY) if "edge_config" in maps else bytes(abi.EDGE_CONFIG.size)
    present = {"edge_config": {_rules.CONFIG_KEY: config}}
    for name in _rules.RULE_MAPS[1:] + (_rules.SOURCE_HOSTS_MAP, _rules.PAYLOAD_RULES_MAP):
        if name not in maps:
            continue
        reading(name)
        # The deny trie (a million prefixes) is kept packed, as the kernel returns it: compared with
        # the wanted list as a whole (_rules.LpmRecord), made into a dict only when they differ.
        chunks = maps[name].lookup_batch_chunks(LOOKUP_CHUNK) if name == "edge_deny_v4" else None
        if chunks is not None:
            present[name] = _rules.LpmRecord.from_chunks(chunks)
        else:
            present[name] = dict(maps[name].lookup_batch(chunk_size=LOOKUP_CHUNK))
    for name in (_rules.SOURCE_FILTER_MAP, _rules.DEST_PASS_MAP):
        if name in maps:
            reading(name)
            present[name] = maps[name].array_bytes()
    if _rules.PAYLOAD_RULE_BANK_MAP in maps:
        reading(_rules.PAYLOAD_RULE_BANK_MAP)
        present[_rules.PAYLOAD_RULE_BANK_MAP] = {
            _rules.CONFIG_KEY: maps[_rules.PAYLOAD_RULE_BANK_MAP].lookup(_rules.CONFIG_KEY)}
    reading(_rules.A2S_CACHE_MAP)
    cache_keys = maps[_rules.A2S_CACHE_MAP].keys() if _rules.A2S_CACHE_MAP in maps else ()
    return present, _rules.cache_service_ids(cache_keys)


class MapReader(threading.Thread):
    """Opens the maps of the program pinned for iface (_pins checks they belong to it, each checked
    for the key and value sizes, and the arrays' numbers of entries, this collection packs; with `unpinned` (check mode), a map the
    running program lacks is left out and named there: _map_sync.open_pinned) and reads them
    (read_present), on a thread of its own, started
    before the rules are parsed: the batch lookups are system calls made through ctypes, which
    lets go of the GIL, so reading a million-entry trie back costs the run next to nothing while
    the rules are parsed and derived. Nothing is written here; the failures are kept, and
    reported by result() in the order the module always reported them (after the rules')."""

    def __init__(self, pin_root, iface, unpinned):
        super(MapReader, self).__init__(name="edge_rules map reader")
        self.daemon = True
        self.pin_root = pin_root
        self.iface = iface
        self.unpinned = unpinned
        self.maps = None
        self.present = None
        self.error = None

    def run(self):
        try:
            self.maps = _map_sync.open_pinned(self.pin_root, self.iface, MAP_LAYOUTS,
                                              "attach this collection's program first (anycast.edge.xdp_program)",
                                              unpinned=self.unpinned, capacities=abi.MAP_CAPACITY)
            self.present = read_present(self.maps)
        except Exception as exc:  # pylint: disable=broad-except
            self.error = exc

    def result(self, module, pin_dir):
        """(maps, present, cache ids) once the reading is done; the task fails naming what went
        wrong (a map's layout, the pins, the reading)."""
        self.join()
        if isinstance(self.error, MapReadError):
            module.fail_json(msg="reading the map %s failed: %s" % (
                _pins.map_pin_path(self.pin_root, self.iface, self.error.map_name), self.error.cause))
        if isinstance(self.error, _map_sync.LayoutError):
            module.fail_json(msg=str(self.error))
        if isinstance(self.error, (_pins.PinError, ValueError)):
            module.fail_json(msg="iface: %s" % self.error)
        if isinstance(self.error, BpfError):
            module.fail_json(msg="reading the maps in %s failed: %s" % (pin_dir, self.error))
        if self.error is not None:
            raise self.error
        return (self.maps,) + self.present


def resolve_wireguard_devices(module, pairs):
    """wireguard_pairs with each device's "ifindex" and "mtu" as the kernel reports them. A device
    that does not exist fails the task naming the pair and the device (before anything is written);
    in check mode it is a warning, and the pair is left out (its device is made later in the run
    that check mode stands for)."""
    if not pairs:
        return []
    try:
        with _netlink.open_iproute() as ipr:
            found = [_netlink.link_index_and_mtu(ipr, pair["device"]) for pair in pairs]
    except _netlink.TcError as exc:
        module.fail_json(msg="wireguard_pairs: %s" % exc)
    resolved = []
    for index, (pair, link) in enumerate(zip(pairs, found)):
        if link is None:
            message = ("wireguard_pairs[%d]: the device %s of the WireGuard pair with backend %s does not exist on "
                       "this POP (anycast.edge.wireguard_transport makes it)" % (index, pair["device"], pair["backend"]))
            if not module.check_mode:
                module.fail_json(msg=message)
            module.warn(message + "; check mode leaves the pair out")
            continue
        resolved.append(dict(pair, ifindex=link[0], mtu=link[1]))
    return resolved


def cookie_keys_bytes(given, present_config):
    """(current, previous, generated?) - 16 bytes each: the given keys (parsed already), else the
    ones in the map, else a new current key."""
    if given is not None:
        return given[0], given[1], False
    current = _rules.config_cookie_key(present_config)
    previous = _rules.config_cookie_key_previous(present_config)
    if current != bytes(16):
        return current, previous, False
    # No key yet: make one. Never all zero (that would read as "no key" on the next run).
    key = bytes(16)
    while key == bytes(16):
        key = os.urandom(16)
    return key, previous, True


def apply_plan(maps, plan, on_step=None):
    """Execute the plan in order (_map_sync.apply_plan): if a step fails, every step made is
    undone and PlanError raised. on_step(step) is called before each step (tests record the order)."""
    _map_sync.apply_plan(plan, _map_sync.executor(maps, _rules.IN_PLACE_MAPS), invert=_rules.inverse,
                         on_step=on_step)


def rules_from_file(module, path):
    """The rule options a rules file holds, checked by the same spec as the task's own options
    (defaults filled in); the task fails naming the file and what is wrong."""
    try:
        with open(path) as handle:
            rules = _rules.read_rules_file(handle.read(), "rules_file %s" % path)
    except (IOError, OSError) as exc:
        module.fail_json(msg="rules_file: cannot read %s: %s" % (path, exc))
    except _rules.RuleError as exc:
        module.fail_json(msg=str(exc))
    # A list of strings is what the spec would make of it unchanged: such lists (a million deny
    # prefixes) are set aside rather than copied and checked string by string (seconds), and
    # parsed by _rules like any other; anything else goes through the spec.
    string_lists = dict((name, rules.pop(name)) for name in STRING_LISTS
                        if isinstance(rules.get(name), list) and set(map(type, rules[name])) <= set([str]))
    validated = ArgumentSpecValidator(RULE_OPTIONS).validate(rules)
    if validated.error_messages:
        module.fail_json(msg="rules_file %s: %s" % (path, "; ".join(validated.error_messages)))
    validated.validated_parameters.update(string_lists)
    return validated.validated_parameters


class Stopwatch(object):
    """Milliseconds spent in each phase of the module, from the start of run_module(); also the
    CPU time of the whole (which, unlike wall time, hardly moves on a busy machine)."""

    def __init__(self, started, cpu_started):
        self.started = started
        self.cpu_started = cpu_started
        self.last = started
        self.phases = {}

    def lap(self, phase):
        now = time.monotonic()
        self.phases[phase] = round((now - self.last) * 1000.0, 1)
        self.last = now

    def report(self):
        return dict(elapsed_ms=round((time.monotonic() - self.started) * 1000.0, 1), timing_ms=dict(self.phases),
                    cpu_ms=round((time.process_time() - self.cpu_started) * 1000.0, 1))


def run_module():
    started = time.monotonic()
    cpu_started = time.process_time()
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                           mutually_exclusive=[("rules_file", name) for name in sorted(RULE_OPTIONS)])
    params = module.params
    # The maps are read while the rules are parsed (MapReader), unless there is nothing to read:
    # a bad iface (reported below, as before) or a --check run on a POP with no program yet.
    # In check mode, a map that the pending program upgrade brings (xdp_program, in check
    # mode, replaced nothing) compares as empty, as the real run will find it, instead of
    # failing the whole --check. A real run still refuses: its rules need every map.
    reader = None
    unpinned = [] if module.check_mode else None
    try:
        no_program = module.check_mode and not os.path.exists(_pins.program_pin_path(params["pin_root"], params["iface"]))
    except ValueError:
        no_program = True
    if not no_program:
        reader = MapReader(params["pin_root"], params["iface"], unpinned)
        reader.start()
    if params["rules_file"] is not None:
        # A copy: module.params is what the result echoes (the path, not the file's rules).
        params = dict(params, **rules_from_file(module, params["rules_file"]))
    timing = Stopwatch(started, cpu_started)
    timing.lap("params")
    try:
        pin_dir = _pins.maps_dir(params["pin_root"], params["iface"])
    except ValueError as exc:
        module.fail_json(msg="iface: %s" % exc)

    # Everything that can be wrong with the parameters is reported before anything about the maps.
    # The cookie keys are filled in once the present ones are known.
    try:
        given_keys = None if params["cookie_keys"] is None else _rules.parse_cookie_keys(params["cookie_keys"])
        params = dict(params, wireguard_pairs=resolve_wireguard_devices(module, params["wireguard_pairs"]))
        # The cookie epoch is UTC on every POP: the program takes this POP's TAI offset (set by its
        # time daemon: chrony 37 s, timesyncd 0) off CLOCK_TAI, the one wall clock it can read.
        # The admission budgets are shared among the CPUs the per-CPU maps have (libbpf's count).
        desired, names = _rules.desired_entries(params, bytes(16), cookie_tai_offset_ns=tai_offset_ns(),
                                                nr_cpus=_bpf.num_possible_cpus(), packed_deny=True)
        reasons = _rules.control_plane_entries(params["control_plane"])
    except _rules.RuleError as exc:
        module.fail_json(msg=str(exc))
    timing.lap("rules")

    if reader is None:
        # A --check run on a POP that has no program yet (xdp_program, in check mode, attached
        # nothing): report what the first real run will write - everything - instead of failing.
        module.warn("no XDP program is pinned for interface %s yet: check mode compares with empty maps"
                    % params["iface"])
        maps = None
        present = {"edge_config": {_rules.CONFIG_KEY: bytes(abi.EDGE_CONFIG.size)}}
        cache_ids = []
    else:
        maps, present, cache_ids = reader.result(module, pin_dir)
        if unpinned:
            module.warn("the XDP program pinned for interface %s has no map %s yet: check mode compares with "
                        "empty maps, as the program upgrade will create them" % (params["iface"], ", ".join(unpinned)))
    timing.lap("read")
    # The deny record: compared whole, kept packed when nothing differs, else planned from dicts.
    _rules.settle_records(present, desired)

    cookie_key, cookie_key_previous, generated = cookie_keys_bytes(given_keys, present["edge_config"][_rules.CONFIG_KEY])
    desired["edge_config"][_rules.CONFIG_KEY] = _rules.with_cookie_keys(desired["edge_config"][_rules.CONFIG_KEY],
                                                                        cookie_key, cookie_key_previous)
    changes = _rules.compare(present, desired)
    plan = _rules.plan_writes(present, desired, cache_ids, changes=changes)
    counts, writes = _rules.summarize(plan, changes)
    exempt_added, exempt_removed = _rules.control_plane_changes(present.get("edge_allow_v4"), desired["edge_allow_v4"])
    timing.lap("plan")

    result = dict(
        changed=bool(plan),
        maps=counts,
        writes=writes,
        steps=[dict(name=step.name, map=step.map_name, operation=step.operation, count=len(step.entries))
               for step in plan],
        a2s_cookie_key_generated=generated,
        pin_dir=pin_dir,
        control_plane=dict(sources=[dict(address=_rules.render_lpm(key), reason=reason) for key, reason in reasons.items()],
                           added=exempt_added, removed=exempt_removed),
    )
    if module._diff and plan:
        deleted_ids = _rules.cache_service_ids(entry[0] for step in plan if step.map_name == _rules.A2S_CACHE_MAP
                                               for entry in step.entries)
        result["diff"] = _rules.render_diff(present, desired, names, deleted_ids, limit=params["diff_limit"],
                                            changes=changes, reasons=reasons)
        result["diff"]["before_header"] = pin_dir + " (before)"
        result["diff"]["after_header"] = pin_dir + " (after)"

    timing.lap("diff")
    if plan and not module.check_mode:
        try:
            apply_plan(maps, plan)
        except _map_sync.PlanError as exc:
            result.update(timing.report())
            result.pop("diff", None)
            module.fail_json(msg=str(exc), **result)
    timing.lap("write")
    result.update(timing.report())
    module.exit_json(**result)


def main():
    run_module()


if __name__ == "__main__":
    main()
