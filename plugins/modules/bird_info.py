#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: bird_info
short_description: Read BIRD 2's protocols, their states and the routes each BGP session exports
version_added: 0.1.0
description:
  - Runs C(show protocols) and, for every BGP protocol (or the ones named in I(exported_by)),
    C(show route export <protocol> all) through C(birdc), and returns them as data.
  - For verification after a rollout and for the operator; it changes nothing.
author:
  - anycast.edge maintainers (!UNKNOWN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - anycast.edge.info
  - anycast.edge.birdc
options:
  exported_by:
    description:
      - Protocols whose exported routes to return. Default is every BGP protocol.
    type: list
    elements: str
seealso:
  - module: anycast.edge.bird_config
  - module: anycast.edge.bird_protocol
"""

EXAMPLES = r"""
- name: What does this POP announce?
  anycast.edge.bird_info:
  register: bird

- name: Every session is Established
  ansible.builtin.assert:
    that: bird.protocols | selectattr('proto', 'equalto', 'BGP') | rejectattr('established') | list | length == 0
"""

RETURN = r"""
protocols:
  description: Every protocol of C(show protocols).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Protocol name.
      type: str
      returned: always
    proto:
      description: Kind of protocol as BIRD names it (BGP, Static, Kernel, Device, BFD).
      type: str
      returned: always
    table:
      description: Table of its first channel.
      type: str
      returned: always
    state:
      description: State as BIRD shows it (up, down, start).
      type: str
      returned: always
    since:
      description: When the state last changed.
      type: str
      returned: always
    info:
      description: Extra state; for BGP Established, Active, Connect and so on.
      type: str
      returned: always
    established:
      description: True for a BGP session in state Established.
      type: bool
      returned: always
  sample: [{name: bgp_transit1, proto: BGP, table: "---", state: up, since: "10:12:17.579", info: Established,
            established: true}]
exported:
  description: Routes exported by each protocol, by protocol name.
  returned: always
  type: dict
  sample:
    bgp_transit1:
      - network: 198.51.100.0/24
        protocol: anycast_edge_announce
        type: blackhole
        communities: ["64500:100"]
        as_path: []
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.anycast.edge.plugins.module_utils._birdc import Birdc, BirdcError, is_established


def main():
    module = AnsibleModule(
        argument_spec=dict(
            socket=dict(type="path", default="/run/bird/bird.ctl"),
            exported_by=dict(type="list", elements="str"),
            birdc_path=dict(type="path", default="birdc"),
        ),
        supports_check_mode=True,
    )
    birdc_path = module.params["birdc_path"]
    if os.sep not in birdc_path:
        birdc_path = module.get_bin_path(birdc_path, required=True, opt_dirs=["/usr/sbin", "/sbin"])
    birdc = Birdc(module.params["socket"], birdc_path, run_command=module.run_command)
    try:
        protocols = birdc.protocols()
        for proto in protocols:
            proto["established"] = is_established(proto)
        names = module.params["exported_by"]
        if names is None:
            names = [p["name"] for p in protocols if p["proto"] == "BGP"]
        known = set(p["name"] for p in protocols)
        unknown = sorted(set(names) - known)
        if unknown:
            module.fail_json(msg="exported_by: BIRD has no protocol named %s" % ", ".join(unknown))
        exported = {}
        for name in names:
            try:
                exported[name] = birdc.routes("export %s" % name)
            except BirdcError as err:
                # A session that is not up has no table to export into: it exports nothing.
                if "No valid tables" not in str(err):
                    raise
                exported[name] = []
    except BirdcError as err:
        module.fail_json(msg="reading BIRD through %s: %s" % (module.params["socket"], err))
    module.exit_json(changed=False, protocols=protocols, exported=exported)


if __name__ == "__main__":
    main()
