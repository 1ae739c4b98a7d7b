# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The xdp_edge program's counters read from its maps, summed over the CPUs: per verdict reason
(edge_reason_stats) and per service (edge_service_stats, named from edge_services). One home for
the modules that report them (edge_stats_info, edge_status_info)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import socket
import struct

from ansible_collections.anycast.edge.plugins.module_utils._edge_abi import (
    EDGE_COUNTER,
    IPPROTO,
    REASONS,
    SERVICE_COUNTER,
    SERVICE_KEY,
    SERVICE_VALUE,
    U32,
)

PROTOCOL_NAMES = dict((number, name) for name, number in IPPROTO.items())
TOTAL_GROUPS = (("pass_", "passed"), ("drop_", "dropped"), ("tx_", "transmitted"))
SERVICE_FIELDS = ("in_packets", "in_bytes", "out_packets", "out_bytes")   # struct service_counter


def read_reasons(bpf_map):
    reasons = dict((name, {"packets": 0, "bytes": 0}) for name in REASONS)
    entries = bpf_map.lookup_batch()
    packets, byte_counts = bpf_map.sum_percpu([value for dummy, value in entries], EDGE_COUNTER.size // 8)
    for (key, dummy), packet_count, byte_count in zip(entries, packets, byte_counts):
        index = U32.unpack(key)[0]
        if index < len(REASONS):
            reasons[REASONS[index]] = {"packets": packet_count, "bytes": byte_count}
    return reasons


def totals_of(reasons):
    totals = dict((group, {"packets": 0, "bytes": 0}) for dummy, group in TOTAL_GROUPS)
    totals["all"] = {"packets": 0, "bytes": 0}
    for name, counter in reasons.items():
        for prefix, group in TOTAL_GROUPS:
            if name.startswith(prefix):
                totals[group]["packets"] += counter["packets"]
                totals[group]["bytes"] += counter["bytes"]
        totals["all"]["packets"] += counter["packets"]
        totals["all"]["bytes"] += counter["bytes"]
    return totals


def read_services(services_map, stats_map):
    by_id = {}
    for key, value in services_map.lookup_batch():
        address, port, proto = SERVICE_KEY.unpack(key)
        service_id, backend = SERVICE_VALUE.unpack(value)[:2]
        by_id[service_id] = {
            "id": service_id,
            "protocol": PROTOCOL_NAMES.get(proto, str(proto)),
            "address": socket.inet_ntoa(address),
            "port": struct.unpack("!H", port)[0],
            "backend": socket.inet_ntoa(backend),
        }
    entries = stats_map.lookup_batch()
    columns = stats_map.sum_percpu([value for dummy, value in entries], SERVICE_COUNTER.size // 8)
    for (key, dummy), counters in zip(entries, zip(*columns)):
        service_id = U32.unpack(key)[0]
        if service_id not in by_id:
            if not any(counters):
                continue
            by_id[service_id] = {"id": service_id, "protocol": None, "address": None,
                                 "port": None, "backend": None}
        by_id[service_id].update(zip(SERVICE_FIELDS, counters))
    for entry in by_id.values():
        for field in SERVICE_FIELDS:
            entry.setdefault(field, 0)
    return [by_id[service_id] for service_id in sorted(by_id)]
