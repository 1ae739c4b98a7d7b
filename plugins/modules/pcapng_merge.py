#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: pcapng_merge
short_description: Merge pcapng captures (the POPs' xdp_capture files) into one, by time, keeping every interface and verdict
version_added: "0.1.0"
description:
  - Writes O(dest) from the files in O(src), in that order - the first one's section header, every
    file's interfaces in turn, the packets of all ordered by time, then the interface statistics.
    Blocks are copied byte for byte but for the interface ids, which are shifted past the earlier
    files' interfaces, so each packet keeps its interface (C(playbooks/capture.yml) names them after
    the POP) and its options, the XDP verdict included.
  - Instead of mergecap, because Debian 12's (Wireshark 4.0) writes the packets' verdict option under
    the queue option's code, and the merged file is then refused as damaged.
  - Each file must hold one section, in one byte order for all (what xdpdump writes).
author:
  - anycast.edge maintainers (!UNKNOWN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  src:
    description: The pcapng files to merge, in the order their interfaces are to be numbered.
    type: list
    elements: path
    required: true
  dest:
    description: The merged file (replaced when its content would differ).
    type: path
    required: true
  mode:
    description: The merged file's permissions.
    type: str
    default: "0600"
"""

EXAMPLES = r"""
- name: Merge the POPs' captures on the controller
  anycast.edge.pcapng_merge:
    src: [captures/run/pop1-run.pcapng, captures/run/pop2-run.pcapng]
    dest: captures/run/fleet-run.pcapng
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
packets:
  description: Packet records in the merged file.
  returned: success
  type: int
  sample: 1086
interfaces:
  description: Interfaces described in the merged file (those of every file, in order).
  returned: success
  type: int
  sample: 4
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.anycast.edge.plugins.module_utils._pcapng import (
    ENHANCED_PACKET, INTERFACE_DESCRIPTION, BlockReader, PcapngError, merge)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type="list", elements="path", required=True),
            dest=dict(type="path", required=True),
            mode=dict(type="str", default="0600"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if not params["src"]:
        module.fail_json(msg="src: an empty list: nothing to merge")
    streams = []
    for path in params["src"]:
        try:
            with open(path, "rb") as capture:
                streams.append(capture.read())
        except (IOError, OSError) as error:
            module.fail_json(msg="src: %s: %s" % (path, error))
    try:
        merged = merge(streams)
    except PcapngError as error:
        module.fail_json(msg="src: %s: %s" % (params["src"], error))
    counts = {}
    for block_type, dummy in BlockReader().feed(merged):
        counts[block_type] = counts.get(block_type, 0) + 1
    result = dict(packets=counts.get(ENHANCED_PACKET, 0), interfaces=counts.get(INTERFACE_DESCRIPTION, 0))
    current = None
    if os.path.exists(params["dest"]):
        with open(params["dest"], "rb") as existing:
            current = existing.read()
    changed = current != merged
    if changed and not module.check_mode:
        folder = os.path.dirname(os.path.abspath(params["dest"]))
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".pcapng_merge-")
        with os.fdopen(handle, "wb") as out:
            out.write(merged)
        module.atomic_move(temporary, params["dest"])
    file_args = module.load_file_common_arguments(dict(path=params["dest"], mode=params["mode"]))
    if not module.check_mode or not changed:
        changed = module.set_fs_attributes_if_different(file_args, changed)
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
