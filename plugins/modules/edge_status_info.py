#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: edge_status_info
short_description: One POP's state at a glance - announced, program attached, attack mode, packet rates, drops, NATS peers
version_added: "0.1.0"
description:
  - What C(playbooks/status.yml) shows for every POP in one table
    (C(anycast.edge.fleet_status_table) renders it).
  - C(announced) - from BIRD's control socket - the announcing protocol (C(anycast_edge_announce))
    is up and at least one BGP session is Established.
  - C(attached) - the XDP program pinned for the interface is the one attached to it.
  - C(attack) - each service's attack mode from C(edge_attack_state).
  - "Packet rates - the program's counters read twice, O(interval) seconds apart - players' packets
    in and replies out per second (C(edge_service_stats)), and the drop reasons with the most
    packets per second (C(edge_reason_stats))."
  - C(nats) - the routes of the POP's nats-server (its monitoring endpoint's C(/routez)), when
    O(nats_monitor_url) is given.
  - A part that cannot be read is null, with the reason in RV(errors); the others are still
    returned. Changes nothing.
author:
  - anycast.edge maintainers (!UNKNOWN)
requirements:
  - libbpf 1.x (C(libbpf.so.1), Debian package C(libbpf1))
  - root (to open pinned maps), birdc
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - anycast.edge.info
  - anycast.edge.pin_root
options:
  iface:
    description: Interface the program is attached to (its pins are in C(<pin_root>/<iface>/)).
    type: str
    required: true
  interval:
    description: Seconds between the two readings of the counters (0.1 to 10).
    type: float
    default: 1.0
  top_drops:
    description: How many drop reasons to return, most packets per second first.
    type: int
    default: 3
  service_names:
    description: Service id to name (the inventory's services); an id without a name is shown by its number.
    type: dict
    default: {}
  bird_socket:
    description: BIRD's control socket; empty - do not ask BIRD (RV(announced) null).
    type: path
    default: /run/bird/bird.ctl
  bird_protocol:
    description: The BIRD protocol that carries the anycast prefixes.
    type: str
    default: anycast_edge_announce
  nats_monitor_url:
    description: The POP's nats-server monitoring endpoint (for example C(http://127.0.0.1:8222)); empty - RV(nats) null.
    type: str
    default: ""
seealso:
  - module: anycast.edge.edge_stats_info
  - module: anycast.edge.bird_info
"""

EXAMPLES = r"""
- name: Read the POP's state
  anycast.edge.edge_status_info:
    iface: eth1
    interval: 1
    nats_monitor_url: http://127.0.0.1:8222
  register: pop_status
"""

RETURN = r"""
announced:
  description: True when the announcing protocol is up and a BGP session is Established; null when BIRD could not be asked.
  returned: always
  type: bool
  sample: true
announce_protocol:
  description: The announcing protocol's state as BIRD shows it (up, down, start), null without BIRD or protocol.
  returned: always
  type: str
  sample: up
bgp_established:
  description: The BGP sessions in state Established (names); null without BIRD.
  returned: always
  type: list
  elements: str
  sample: [bgp_transit1]
attached:
  description: True when the pinned program is the one attached to O(iface); null when that cannot be told.
  returned: always
  type: bool
  sample: true
attack:
  description: Each configured service - C(id), C(name), C(under_attack) (bool) - sorted by id; null if the maps cannot be read.
  returned: always
  type: list
  elements: dict
  sample: [{id: 17, name: cs2, under_attack: false}]
pps_in:
  description: Players' packets to the services per second over O(interval); null if the maps cannot be read.
  returned: always
  type: float
  sample: 1520.0
pps_out:
  description: Replies from the services per second over O(interval).
  returned: always
  type: float
  sample: 1490.0
top_drops:
  description: The drop reasons with packets in the interval - C(reason), C(pps) - most first (at most O(top_drops)).
  returned: always
  type: list
  elements: dict
  sample: [{reason: drop_banned, pps: 10200.0}, {reason: drop_rate_limit, pps: 42.0}]
nats:
  description:
    - C(routes) (how many) and C(peers) of the POP's nats-server - each route's remote server name, or its
      address where the server does not say (nats-server 2.9, Debian 12's); null without O(nats_monitor_url).
  returned: always
  type: dict
  sample: {routes: 2, peers: [pop2, pop3]}
interval:
  description: The seconds between the two readings, as measured.
  returned: always
  type: float
  sample: 1.0003
errors:
  description: Why a part is null, by part (C(bird), C(attached), C(maps), C(nats)).
  returned: always
  type: dict
  sample: {bird: "birdc show protocols failed (rc=1): Unable to connect to server control socket"}
"""

import json
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url

from ansible_collections.anycast.edge.plugins.module_utils._birdc import Birdc, BirdcError, is_established
from ansible_collections.anycast.edge.plugins.module_utils._bpf import BpfError
from ansible_collections.anycast.edge.plugins.module_utils._edge_abi import ATTACK_STATE, SERVICE_VALUE, U32
from ansible_collections.anycast.edge.plugins.module_utils._edge_stats import read_reasons, read_services
from ansible_collections.anycast.edge.plugins.module_utils._options import check_ranges
from ansible_collections.anycast.edge.plugins.module_utils._pins import (
    DEFAULT_PIN_ROOT,
    PinError,
    open_pinned_maps,
    pinned_program_attached,
)

STATUS_MAPS = ("edge_reason_stats", "edge_service_stats", "edge_services", "edge_attack_state")


def read_counters(maps):
    """({reason: packets}, players' packets in, replies out) now."""
    reasons = dict((name, counter["packets"]) for name, counter in read_reasons(maps["edge_reason_stats"]).items())
    services = read_services(maps["edge_services"], maps["edge_service_stats"])
    return reasons, sum(entry["in_packets"] for entry in services), sum(entry["out_packets"] for entry in services)


def read_attack(maps, names):
    """Each configured service's attack mode."""
    ids = sorted(set(SERVICE_VALUE.unpack(value)[0] for dummy, value in maps["edge_services"].lookup_batch()))
    attack = []
    for service_id in ids:
        raw = maps["edge_attack_state"].lookup(U32.pack(service_id))
        under_attack = bool(raw is not None and ATTACK_STATE.unpack(raw)[0])
        attack.append({"id": service_id, "name": names.get(service_id, str(service_id)), "under_attack": under_attack})
    return attack


def rates(first, second, seconds, top):
    """(pps in, pps out, top drop reasons) between two read_counters readings ``seconds`` apart."""
    reasons_before, in_before, out_before = first
    reasons_after, in_after, out_after = second
    drops = [(reasons_after[name] - reasons_before.get(name, 0), name) for name in reasons_after
             if name.startswith("drop_")]
    busiest = sorted((item for item in drops if item[0] > 0), key=lambda item: (-item[0], item[1]))[:top]
    return ((in_after - in_before) / seconds, (out_after - out_before) / seconds,
            [{"reason": name, "pps": count / seconds} for count, name in busiest])


def read_bird(module, socket_path, protocol):
    birdc = Birdc(socket_path, run_command=module.run_command)
    protocols = birdc.protocols()
    established = sorted(proto["name"] for proto in protocols if is_established(proto))
    announce = [proto for proto in protocols if proto["name"] == protocol]
    state = announce[0]["state"] if announce else None
    return state == "up" and bool(established), state, established


def read_nats(url):
    answer = json.loads(open_url(url.rstrip("/") + "/routez", timeout=5).read())
    # Debian 12's nats-server (2.9) does not name a route's server (remote_name came later): its
    # address then says which POP it is (a route's port is the connecting side's, ephemeral).
    peers = sorted(route.get("remote_name") or str(route.get("ip")) for route in answer.get("routes") or [])
    return {"routes": int(answer.get("num_routes", len(peers))), "peers": peers}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            iface=dict(type="str", required=True),
            pin_root=dict(type="path", default=DEFAULT_PIN_ROOT),
            interval=dict(type="float", default=1.0),
            top_drops=dict(type="int", default=3),
            service_names=dict(type="dict", default={}),
            bird_socket=dict(type="path", default="/run/bird/bird.ctl"),
            bird_protocol=dict(type="str", default="anycast_edge_announce"),
            nats_monitor_url=dict(type="str", default=""),
        ),
        supports_check_mode=True,
    )
    params = module.params
    check_ranges(module, [("interval", 0.1, 10, " seconds"), ("top_drops", 0, None, "")])
    try:
        names = dict((int(key), str(value)) for key, value in params["service_names"].items())
    except ValueError:
        module.fail_json(msg="service_names: %s: the keys are service ids" % params["service_names"])
    result = dict(changed=False, announced=None, announce_protocol=None, bgp_established=None, attached=None,
                  attack=None, pps_in=None, pps_out=None, top_drops=None, nats=None, interval=None, errors={})
    errors = result["errors"]

    try:
        with open_pinned_maps(params["pin_root"], params["iface"], STATUS_MAPS) as maps:
            first, started = read_counters(maps), time.monotonic()
            result["attack"] = read_attack(maps, names)
            time.sleep(max(0.0, params["interval"] - (time.monotonic() - started)))
            second, seconds = read_counters(maps), time.monotonic() - started
        result["pps_in"], result["pps_out"], result["top_drops"] = rates(first, second, seconds, params["top_drops"])
        result["interval"] = seconds
    except (PinError, BpfError, ValueError) as exc:
        errors["maps"] = str(exc)
    try:
        result["attached"] = pinned_program_attached(params["pin_root"], params["iface"])
    except (PinError, BpfError, OSError) as exc:
        errors["attached"] = str(exc)
    if params["bird_socket"]:
        try:
            result["announced"], result["announce_protocol"], result["bgp_established"] = read_bird(
                module, params["bird_socket"], params["bird_protocol"])
        except BirdcError as exc:
            errors["bird"] = str(exc)
    if params["nats_monitor_url"]:
        try:
            result["nats"] = read_nats(params["nats_monitor_url"])
        except Exception as exc:  # pylint: disable=broad-except
            errors["nats"] = "%s/routez: %s" % (params["nats_monitor_url"].rstrip("/"), exc)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
