#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: edge_ban
short_description: Ban source addresses and prefixes at a POP for a while, or lift bans - fleet-wide through the agent
version_added: "0.1.0"
description:
  - "An operator's temporary ban, written where the C(xdp_edge) program keeps its own rate-limit
    bans (C(ban_until_ns) of the source's C(edge_sources) entry) - packets from a banned source to
    the anycast services and prefixes are dropped as C(drop_banned) until the ban ends. Traffic
    to the POP itself (BGP, management) is never banned, and allow-listed sources are exempt, as
    for every ban."
  - Prefixes are expanded into their addresses (the program looks bans up by address), at most
    O(max_addresses) per run.
  - With the agent's control socket present (O(via=auto)), the agent writes the bans and, when
    its fleet sync is on, publishes them to every other POP over NATS JetStream (applied there
    within a second; docs/fleet-actions.md). Without it the module writes this POP's map itself.
  - O(state=absent) lifts the bans of the addresses at this POP, whoever made them. The agent
    publishes the lift, which ends at the other POPs only the ban this POP published (not their
    own bans, nor another POP's); docs/fleet-actions.md.
  - A ban already ending at least as late as asked is left alone, so a second run with the same
    O(expires_at) changes nothing. O(resolve_only=true) only checks the request and returns the
    addresses and the end time (the playbooks run it once on the controller, before any POP is touched).
author:
  - anycast.edge maintainers (!UNKNOWN)
requirements:
  - libbpf 1.x (C(libbpf.so.1), Debian package C(libbpf1)) when writing the map itself
  - root (to open pinned maps, or to reach the agent's control socket)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - anycast.edge.pin_root
  - anycast.edge.state
options:
  addresses:
    description: IPv4 addresses and CIDR prefixes (host bits clear) to ban or unban.
    type: list
    elements: raw
    required: true
  state:
    description: C(present) bans until O(expires_at) (or for O(duration)); C(absent) lifts the bans.
    type: str
    choices: [present, absent]
    default: present
  duration:
    description:
      - Seconds the ban lasts from now, 1 to 604800 (a week). Used when O(expires_at) is not given.
      - Each run computes its own end; the playbooks pass O(expires_at) so that every POP and a
        second run agree.
    type: raw
  expires_at:
    description:
      - When the ban ends, Unix time in seconds (CLOCK_REALTIME; the POPs' clocks agree), within a
        week from now. Wins over O(duration).
      - An end that has passed bans nothing (a warning; with O(resolve_only) it is an error).
    type: raw
  iface:
    description: Interface the program is attached to (its pins are in C(<pin_root>/<iface>/maps/)).
    type: str
  via:
    description:
      - C(auto) - through the agent when its control socket exists, else the map directly.
      - C(agent) - through the agent only (fails without it). C(map) - this POP's map only, never published.
    type: str
    choices: [auto, agent, map]
    default: auto
  agent_socket:
    description: The agent's control socket.
    type: path
    default: /run/anycast-edge-agent/control.sock
  max_addresses:
    description: The most addresses one run may name, prefixes expanded.
    type: int
    default: 4096
  variable:
    description: The name to report O(addresses) problems under (the playbook's variable).
    type: str
    default: addresses
  duration_variable:
    description: The name to report O(duration) problems under.
    type: str
    default: duration
  expires_at_variable:
    description: The name to report O(expires_at) problems under.
    type: str
    default: expires_at
  resolve_only:
    description: Only check the request and return RV(addresses) and RV(expires_at); touch nothing.
    type: bool
    default: false
seealso:
  - module: anycast.edge.edge_stats_info
"""

EXAMPLES = r"""
- name: Ban an attacker's addresses at this POP and, through the agent, fleet-wide for ten minutes
  anycast.edge.edge_ban:
    iface: eth1
    addresses: [203.0.113.7, 198.18.4.0/24]
    duration: 600

- name: Lift them
  anycast.edge.edge_ban:
    iface: eth1
    addresses: [203.0.113.7, 198.18.4.0/24]
    state: absent
"""

RETURN = r"""
addresses:
  description: The addresses the request names, prefixes expanded, sorted.
  returned: always
  type: list
  elements: str
  sample: [203.0.113.7]
expires_at:
  description: When the bans end (Unix time, seconds); null for O(state=absent).
  returned: always
  type: float
  sample: 1765101600.0
changed_addresses:
  description: The addresses whose ban at this POP this run changed (or would change, in check mode).
  returned: always
  type: list
  elements: str
  sample: [203.0.113.7]
published:
  description: The addresses the agent published (or queued) for the other POPs; empty without the fleet sync.
  returned: always
  type: list
  elements: str
  sample: [203.0.113.7]
via:
  description: C(agent) or C(map) - who wrote this POP's bans; null with O(resolve_only).
  returned: always
  type: str
  sample: agent
fleet:
  description: Whether the agent shares the bans with the fleet (its fleet sync is on).
  returned: always
  type: bool
  sample: true
"""

import json
import os
import socket
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.anycast.edge.plugins.module_utils import _bans
from ansible_collections.anycast.edge.plugins.module_utils._bpf import BpfError
from ansible_collections.anycast.edge.plugins.module_utils._pins import (
    DEFAULT_PIN_ROOT,
    PinError,
    open_pinned_maps,
)

NS = 10 ** 9
AGENT_TIMEOUT_SEC = 10


class AgentError(Exception):
    """The agent refused the request or could not be reached."""


def ask_agent(path, request):
    """One request to the agent's control socket; its answer (a dict with ok true)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(AGENT_TIMEOUT_SEC)
        try:
            conn.connect(path)
            conn.sendall(json.dumps(request).encode() + b"\n")
            conn.shutdown(socket.SHUT_WR)
            raw = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                raw += chunk
        except OSError as exc:
            raise AgentError("cannot reach the agent at %s: %s" % (path, exc))
    try:
        answer = json.loads(raw)
    except ValueError:
        raise AgentError("the agent at %s answered %r" % (path, raw[:200]))
    if not answer.get("ok"):
        raise AgentError("the agent refused: %s" % answer.get("error"))
    return answer


def through_map(params, addresses, expires_ns, check):
    """(changed addresses) written into this POP's edge_sources directly."""
    with open_pinned_maps(params["pin_root"], params["iface"], ("edge_sources",)) as maps:
        current = _bans.current_bans(maps["edge_sources"], addresses)
        if params["state"] == "present":
            until_mono = expires_ns - _bans.realtime_offset_ns()
            changed = _bans.plan_ban(current, until_mono)
            if not check:
                _bans.write_bans(maps["edge_sources"], changed, until_mono)
        else:
            changed = _bans.plan_lift(current, time.monotonic_ns())
            if not check:
                _bans.lift_bans(maps["edge_sources"], changed)
    return changed


def main():
    module = AnsibleModule(
        argument_spec=dict(
            addresses=dict(type="list", elements="raw", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            duration=dict(type="raw"),
            expires_at=dict(type="raw"),
            iface=dict(type="str"),
            pin_root=dict(type="path", default=DEFAULT_PIN_ROOT),
            via=dict(type="str", choices=["auto", "agent", "map"], default="auto"),
            agent_socket=dict(type="path", default="/run/anycast-edge-agent/control.sock"),
            max_addresses=dict(type="int", default=_bans.DEFAULT_MAX_ADDRESSES),
            variable=dict(type="str", default="addresses"),
            duration_variable=dict(type="str", default="duration"),
            expires_at_variable=dict(type="str", default="expires_at"),
            resolve_only=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    params = module.params
    result = dict(changed=False, addresses=[], expires_at=None, changed_addresses=[], published=[], via=None,
                  fleet=False)
    try:
        addresses = _bans.resolve(params["addresses"], params["variable"], params["max_addresses"])
        expires_ns = None
        if params["state"] == "present":
            if params["expires_at"] is not None:
                expires_ns = _bans.check_expires_at(params["expires_at"], params["expires_at_variable"],
                                                    past_ok=not params["resolve_only"])
            elif params["duration"] is not None:
                expires_ns = time.time_ns() + _bans.check_duration(params["duration"], params["duration_variable"]) * NS
            else:
                raise _bans.BanRequestError(["%s: a ban needs a duration (seconds) or %s"
                                             % (params["duration_variable"], params["expires_at_variable"])])
    except _bans.BanRequestError as exc:
        module.fail_json(msg="; ".join(exc.problems), problems=exc.problems, **result)
    result.update(addresses=addresses, expires_at=None if expires_ns is None else expires_ns / NS)
    if params["resolve_only"]:
        module.exit_json(**result)
    if expires_ns is not None and expires_ns <= time.time_ns():
        module.warn("the ban's end (%s) has passed: nothing to ban" % params["expires_at"])
        module.exit_json(**result)
    if not params["iface"] and params["via"] != "agent":
        module.fail_json(msg="iface: required to write this POP's map (via %s)" % params["via"], **result)

    via = params["via"]
    if via == "auto":
        via = "agent" if os.path.exists(params["agent_socket"]) else "map"
    try:
        if via == "agent":
            request = dict(action="ban" if params["state"] == "present" else "unban", addresses=addresses,
                           check=module.check_mode)
            if expires_ns is not None:
                request["expires_ns"] = expires_ns
            answer = ask_agent(params["agent_socket"], request)
            changed, published, fleet = answer["changed"], answer["published"], answer["fleet"]
        else:
            changed, published, fleet = through_map(params, addresses, expires_ns, module.check_mode), [], False
    except (AgentError, PinError, BpfError, OSError) as exc:
        module.fail_json(msg="%s (via %s)" % (exc, via), **result)

    result.update(changed=bool(changed or published), changed_addresses=changed, published=published, via=via,
                  fleet=fleet)
    if module._diff:
        until = ""
        if expires_ns is not None:
            until = " until %s" % time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_ns // NS))
        touched = sorted(set(changed) | set(published))
        result["diff"] = dict(
            before="".join("%s %s\n" % (address, "banned" if params["state"] == "absent" else "not banned that long")
                           for address in touched),
            after="".join("%s %s\n" % (address, "not banned" if params["state"] == "absent" else "banned" + until)
                          for address in touched))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
