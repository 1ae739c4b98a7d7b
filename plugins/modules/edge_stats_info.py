#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: edge_stats_info
short_description: Read the XDP edge program's counters - per verdict reason, per service, top clients
version_added: "0.1.0"
description:
  - Reads the statistics maps of the C(xdp_edge) program through their pins
    C(<pin_root>/<iface>/maps/) (made by M(anycast.edge.xdp_program)) and returns the counters
    summed over all CPUs.
  - C(edge_reason_stats) - packets and bytes per verdict reason (every packet is counted under
    exactly one reason), and totals of passed (to the kernel), dropped and transmitted packets.
  - C(edge_service_stats) - packets and bytes in (from players) and out (replies) per service,
    with the service's protocol, address, port and backend read from C(edge_services).
  - C(edge_sources) - the O(top_clients) sources that sent the most packets (to the anycast
    services and prefixes), and how many sources are banned now.
  - Changes nothing.
author:
  - anycast.edge maintainers (!UNKNOWN)
requirements:
  - libbpf 1.x (C(libbpf.so.1), Debian package C(libbpf1))
  - root (CAP_BPF) to open pinned maps
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - anycast.edge.info
  - anycast.edge.pin_root
options:
  iface:
    description: Interface the program is attached to (its pins are in C(<pin_root>/<iface>/maps/)).
    type: str
    required: true
  top_clients:
    description: How many of the busiest client addresses to return (0 - none).
    type: int
    default: 10
seealso:
  - module: anycast.edge.xdp_program
"""

EXAMPLES = r"""
- name: Read the POP's counters
  anycast.edge.edge_stats_info:
    iface: eth1
    top_clients: 5
  register: edge_stats

- name: Show what was dropped and why
  ansible.builtin.debug:
    msg: "{{ edge_stats.reasons | dict2items | selectattr('key', 'match', 'drop_') | selectattr('value.packets') }}"
"""

RETURN = r"""
reasons:
  description: C({packets, bytes}) per verdict reason, every reason of the program's C(enum edge_reason) present.
  returned: always
  type: dict
  sample: {pass_non_ip: {packets: 12, bytes: 720}, drop_deny: {packets: 3, bytes: 180}, tx_forward: {packets: 1000, bytes: 64000}}
totals:
  description:
    - Sums over the reasons - C(passed) (C(pass_*), left to the kernel), C(dropped) (C(drop_*)),
      C(transmitted) (C(tx_*), forwarded or answered) and C(all).
  returned: always
  type: dict
  sample:
    passed: {packets: 12, bytes: 720}
    dropped: {packets: 3, bytes: 180}
    transmitted: {packets: 1000, bytes: 64000}
    all: {packets: 1015, bytes: 64900}
services:
  description:
    - One entry per service configured in C(edge_services) and per service id with non-zero
      counters (a removed service's counters stay until its id is reused). Sorted by id.
    - C(protocol), C(address), C(port) and C(backend) are null for an id no longer configured.
  returned: always
  type: list
  elements: dict
  sample:
    - {id: 17, protocol: udp, address: 198.51.100.10, port: 27015, backend: 10.1.0.10,
       in_packets: 1000, in_bytes: 64000, out_packets: 990, out_bytes: 250000}
top_clients:
  description: The busiest sources, most packets first - C(address), C(packets), C(bytes), C(last_seen_ns) (CLOCK_MONOTONIC).
  returned: always
  type: list
  elements: dict
  sample: [{address: 203.0.113.7, packets: 900, bytes: 57600, last_seen_ns: 81234567890}]
clients_tracked:
  description: How many source addresses the program keeps an entry for (the map is an LRU - the least recent fall out).
  returned: always
  type: int
  sample: 3
bans_active:
  description: How many of those sources are banned now (over their rate limit, for the configured ban time).
  returned: always
  type: int
  sample: 0
"""

import heapq
import socket
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.anycast.edge.plugins.module_utils._bpf import BpfError
from ansible_collections.anycast.edge.plugins.module_utils._edge_abi import (
    SOURCE_BAN_UNTIL,
    SOURCE_COUNTERS,
)
from ansible_collections.anycast.edge.plugins.module_utils._edge_stats import (
    read_reasons,
    read_services,
    totals_of,
)
from ansible_collections.anycast.edge.plugins.module_utils._pins import (
    DEFAULT_PIN_ROOT,
    PinError,
    open_pinned_maps,
)

STATS_MAPS = ("edge_reason_stats", "edge_service_stats", "edge_sources", "edge_services")


def read_sources(bpf_map, top, now_ns):
    """(sources tracked, the top sources by packets, sources banned at now_ns) from edge_sources."""
    clients = []
    banned = 0
    for key, value in bpf_map.lookup_batch():
        last_seen, packets, byte_count = SOURCE_COUNTERS.unpack_from(value)
        if SOURCE_BAN_UNTIL.unpack_from(value)[0] > now_ns:
            banned += 1
        clients.append((packets, byte_count, last_seen, key))
    busiest = heapq.nlargest(top, clients) if top > 0 else []
    return len(clients), [{"address": socket.inet_ntoa(key), "packets": packets, "bytes": byte_count,
                           "last_seen_ns": last_seen} for packets, byte_count, last_seen, key in busiest], banned


def monotonic_ns():
    """CLOCK_MONOTONIC (Linux's time.monotonic) in ns: the clock of the program's times."""
    return int(time.monotonic() * 1e9)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            iface=dict(type="str", required=True),
            pin_root=dict(type="path", default=DEFAULT_PIN_ROOT),
            top_clients=dict(type="int", default=10),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if params["top_clients"] < 0:
        module.fail_json(msg="top_clients: must be 0 or more, not %d" % params["top_clients"])
    try:
        with open_pinned_maps(params["pin_root"], params["iface"], STATS_MAPS) as maps:
            reasons = read_reasons(maps["edge_reason_stats"])
            services = read_services(maps["edge_services"], maps["edge_service_stats"])
            clients_tracked, top_clients, bans_active = read_sources(maps["edge_sources"], params["top_clients"],
                                                                     monotonic_ns())
    except (PinError, ValueError) as exc:
        module.fail_json(msg="%s" % exc)
    except BpfError as exc:
        module.fail_json(msg="reading the counters of %s failed: %s" % (params["iface"], exc))
    module.exit_json(changed=False, reasons=reasons, totals=totals_of(reasons), services=services,
                     top_clients=top_clients, clients_tracked=clients_tracked, bans_active=bans_active)


if __name__ == "__main__":
    main()
