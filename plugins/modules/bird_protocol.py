#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: bird_protocol
short_description: Enable or disable a BIRD 2 protocol at run time (drain, health-driven withdrawal)
version_added: 0.1.0
description:
  - Reads C(show protocols) through C(birdc) and enables or disables the named protocol only when
    its state differs (C(changed=false) otherwise).
  - Disabling the static protocol C(anycast_edge_announce) rendered by the C(bird_anycast) role
    withdraws the POP's anycast prefixes from every BGP neighbor; enabling it announces them again.
  - This is a run-time change. A later reconfiguration that changes the protocol's configuration
    restarts (and so enables) it, which is why the C(bird_anycast) role also renders the drain
    state into the configuration.
author:
  - anycast.edge maintainers (!UNKNOWN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - anycast.edge.state
  - anycast.edge.birdc
options:
  name:
    description: The protocol name as in C(show protocols).
    type: str
    required: true
  state:
    description: C(enabled) or C(disabled).
    type: str
    choices: [enabled, disabled]
    default: enabled
attributes:
  check_mode:
    details: Reads the protocol's state and reports whether it would change it.
  diff_mode:
    details: The protocol's state before and after.
seealso:
  - module: anycast.edge.bird_config
  - module: anycast.edge.bird_info
"""

EXAMPLES = r"""
- name: Withdraw this POP's anycast prefixes
  anycast.edge.bird_protocol:
    name: anycast_edge_announce
    state: disabled

- name: Announce them again
  anycast.edge.bird_protocol:
    name: anycast_edge_announce
    state: enabled
"""

RETURN = r"""
protocol:
  description: The protocol as C(show protocols) reports it after the task.
  returned: success
  type: dict
  sample: {name: anycast_edge_announce, proto: Static, table: master4, state: down, since: "10:12:33.751", info: ""}
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.anycast.edge.plugins.module_utils._birdc import Birdc, BirdcError


def state_of(proto):
    # BIRD shows a protocol disabled by the CLI (or by "disabled yes") as state "down".
    return "disabled" if proto["state"] == "down" else "enabled"


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["enabled", "disabled"], default="enabled"),
            socket=dict(type="path", default="/run/bird/bird.ctl"),
            birdc_path=dict(type="path", default="birdc"),
        ),
        supports_check_mode=True,
    )
    name = module.params["name"]
    wanted = module.params["state"]
    birdc_path = module.params["birdc_path"]
    if os.sep not in birdc_path:
        birdc_path = module.get_bin_path(birdc_path, required=True, opt_dirs=["/usr/sbin", "/sbin"])
    birdc = Birdc(module.params["socket"], birdc_path, run_command=module.run_command)
    try:
        proto = birdc.protocol(name)
        if proto is None:
            module.fail_json(msg="name: BIRD has no protocol named %s" % name)
        before = state_of(proto)
        result = dict(changed=before != wanted, protocol=proto)
        if module._diff:
            result["diff"] = dict(before={"state": before}, after={"state": wanted})
        if not result["changed"] or module.check_mode:
            module.exit_json(**result)
        birdc.set_protocol(name, wanted == "enabled")
        result["protocol"] = birdc.protocol(name)
    except BirdcError as err:
        module.fail_json(msg="%s %s through %s: %s" % (wanted, name, module.params["socket"], err))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
