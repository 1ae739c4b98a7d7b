#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: ip_routing
short_description: Converge the IPv4 addresses, routes and policy rules the collection owns
version_added: "0.1.0"
description:
  - Makes the host's IPv4 addresses, routes and policy rules of ours exactly the ones listed,
    through netlink (pyroute2), in the network namespace the module runs in.
  - "Ours are found by a mark: an address by its label (O(address_label)), a route by its
    routing protocol number (O(route_protocol)), a rule by its priority (O(rule_priority)). A
    marked entry that is not listed is removed; an entry without the mark is never touched.
    A kind whose mark is not given is not read, and its list must be empty."
  - The task is C(changed) only on a difference, and only the differences are applied - new
    entries first, then the stale ones go. A route whose destination and table stay is replaced
    in one step (C(ip route replace)).
  - On failure the changes already made are undone, and the message says so if that failed too.
author:
  - anycast.edge maintainers (!UNKNOWN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - anycast.edge.state
  - anycast.edge.netlink
attributes:
  check_mode:
    details: Reads our entries and reports what would be added and removed.
  diff_mode:
    details: Our entries before and after, one line each, as C(ip) writes them.
options:
  addresses:
    description: The addresses of ours, each with its device.
    type: list
    elements: dict
    default: []
    suboptions:
      address:
        description: C(a.b.c.d/len) (a bare address is C(/32)).
        type: str
        required: true
      dev:
        description: The device.
        type: str
        required: true
  address_label:
    description:
      - The label our addresses carry (C(ip addr add ... label LABEL)); Linux wants it to be the
        device's name or start with the device's name and a colon.
      - Required when O(addresses) is not empty; every address with it not in O(addresses) is removed.
    type: str
  routes:
    description: The routes of ours.
    type: list
    elements: dict
    default: []
    suboptions:
      dst:
        description: The destination, C(a.b.c.d/len) or V(default).
        type: str
        required: true
      dev:
        description: The device the route goes out of.
        type: str
        required: true
      src:
        description: The preferred source address (C(src)).
        type: str
      table:
        description: The routing table (254 is C(main)).
        type: int
        default: 254
  route_protocol:
    description:
      - The routing protocol number our routes carry (C(ip route ... proto N), 5..255; see
        C(/etc/iproute2/rt_protos)). Required when O(routes) is not empty; every route with it,
        in any table, not in O(routes) is removed.
    type: int
  rules:
    description: The policy rules of ours (C(ip rule add from SRC lookup TABLE priority PRIORITY)).
    type: list
    elements: dict
    default: []
    suboptions:
      src:
        description: The source the rule matches, C(a.b.c.d/len) (a bare address is C(/32)).
        type: str
        required: true
      table:
        description: The table it looks up.
        type: int
        required: true
  rule_priority:
    description:
      - The priority of our rules (1..32765, before the kernel's C(main) rule at 32766). Every
        rule at it not in O(rules) is removed - so one priority must belong to this collection
        alone. Required when O(rules) is not empty.
    type: int
notes:
  - One task may manage any of the three kinds; a kind whose mark is left out is neither read
    nor changed.
seealso:
  - module: anycast.edge.ipip_tunnel
"""

EXAMPLES = r"""
- name: The services' anycast addresses on lo, and replies from them through the default POP's tunnel
  anycast.edge.ip_routing:
    addresses:
      - {address: 198.51.100.10/32, dev: lo}
    address_label: "lo:anycast"
    routes:
      - {dst: default, dev: ae-pop1, table: 4242}
    route_protocol: 242
    rules:
      - {src: 198.51.100.10, table: 4242}
    rule_priority: 4242
"""

RETURN = r"""
added:
  description: The entries added (or replaced), as C(ip) writes them; in check mode, those that would be.
  returned: always
  type: list
  elements: str
  sample: ["198.51.100.10/32 dev lo", "default dev ae-pop1 table 4242"]
removed:
  description: The entries of ours removed (or, in check mode, that would be).
  returned: always
  type: list
  elements: str
  sample: ["from 198.51.100.9/32 lookup 4242 priority 4242"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.anycast.edge.plugins.module_utils import _netlink, _routing


def main():
    module = AnsibleModule(
        argument_spec=dict(
            addresses=dict(type="list", elements="dict", default=[], options=dict(
                address=dict(type="str", required=True),
                dev=dict(type="str", required=True),
            )),
            address_label=dict(type="str"),
            routes=dict(type="list", elements="dict", default=[], options=dict(
                dst=dict(type="str", required=True),
                dev=dict(type="str", required=True),
                src=dict(type="str"),
                table=dict(type="int", default=_routing.RT_TABLE_MAIN),
            )),
            route_protocol=dict(type="int"),
            rules=dict(type="list", elements="dict", default=[], options=dict(
                src=dict(type="str", required=True),
                table=dict(type="int", required=True),
            )),
            rule_priority=dict(type="int"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    for items, mark in (("addresses", "address_label"), ("routes", "route_protocol"), ("rules", "rule_priority")):
        if params[items] and params[mark] is None:
            module.fail_json(msg="%s: needs %s (the mark that makes an entry ours)" % (items, mark))
    if params["route_protocol"] is not None and not 5 <= params["route_protocol"] <= 255:
        module.fail_json(msg="route_protocol: %d is not 5..255 (0..4 are the kernel's own)" % params["route_protocol"])
    if params["rule_priority"] is not None and not 1 <= params["rule_priority"] <= 32765:
        module.fail_json(msg="rule_priority: %d is not 1..32765" % params["rule_priority"])
    _netlink.fail_without_pyroute2(module)
    rules = [dict(rule, priority=params["rule_priority"]) for rule in params["rules"]]
    try:
        wanted = _routing.wanted_entries(params["addresses"], params["routes"], rules)
    except _routing.RoutingError as exc:
        module.fail_json(msg=str(exc))

    marks = dict(address_label=params["address_label"], route_protocol=params["route_protocol"])
    with _netlink.open_iproute() as ipr:
        try:
            present = _routing.read_present(ipr, rule_priority=params["rule_priority"], **marks)
        except _netlink.NetlinkError as exc:
            module.fail_json(msg="reading the addresses, routes and rules failed: %s" % exc)
        add, remove = _routing.plan(wanted, present)
        result = dict(changed=bool(add or remove), added=[_routing.show(entry) for entry in add],
                      removed=[_routing.show(entry) for entry in remove])
        if module._diff:
            before = sorted(_routing.show(entry) for kind in _routing.KINDS for entry in present[kind])
            after = sorted(_routing.show(entry) for kind in _routing.KINDS for entry in wanted[kind])
            result["diff"] = dict(before="\n".join(before) + "\n" if before else "",
                                  after="\n".join(after) + "\n" if after else "")
        if result["changed"] and not module.check_mode:
            try:
                _routing.apply(ipr, add, remove, **marks)
            except _routing.RoutingError as exc:
                module.fail_json(msg=str(exc), changed=exc.host_changed, **dict(
                    (key, value) for key, value in result.items() if key != "changed"))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
