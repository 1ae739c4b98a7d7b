#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: xdp_capture
short_description: Capture packets at the entry and exit of the XDP program on a POP (xdpdump), with each one's verdict
version_added: "0.1.0"
description:
  - Runs xdp-tools' C(xdpdump --rx-capture entry,exit) on the program attached to O(iface) - the
    packets as they enter the program and as they leave it, the exit carrying the program's
    verdict (XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT), dropped packets included - into a pcapng
    file on the POP, for O(duration) seconds or until O(packets) packets entered, whichever comes first.
  - The capture attaches fentry/fexit tracing programs to the XDP program (no change to it, a
    cost per packet while it runs); it needs a kernel with BPF trampolines (Debian 12's has them).
  - xdpdump has no packet filter; filter when reading (C(playbooks/capture.yml) does it on the controller).
  - Always C(changed) (a capture file is written); in check mode nothing is captured.
author:
  - anycast.edge maintainers (!UNKNOWN)
requirements:
  - xdp-tools (C(xdpdump)) on the POP
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: partial
    details: Checks the request and that xdpdump is there; captures nothing.
  diff_mode:
    support: none
  platform:
    platforms: linux
options:
  iface:
    description: The interface the XDP program is attached to.
    type: str
    required: true
  dest:
    description: The pcapng file to write (replaced).
    type: path
    required: true
  duration:
    description: The longest the capture runs, seconds (1 to 3600).
    type: int
    default: 10
  packets:
    description: Stop once this many packets entered the program (0 - no count; the duration only).
    type: int
    default: 0
  snaplen:
    description: Bytes kept of each packet (0 - xdpdump's default, the whole packet).
    type: int
    default: 0
  program_name:
    description: The XDP program's name (xdpdump's C(-p)), when more than one is attached.
    type: str
    default: ""
  interface_prefix:
    description:
      - Put before each interface's name in the file, with a colon (C(pop1:eth1:xdp_edge()@fentry)).
      - Every POP's xdpdump names its interfaces alike; once the POPs' files are merged, the prefix says
        which POP a packet passed (C(playbooks/capture.yml) gives the inventory name). Empty - names as xdpdump wrote them.
    type: str
    default: ""
"""

EXAMPLES = r"""
- name: Capture ten seconds at the XDP program's entry and exit
  anycast.edge.xdp_capture:
    iface: eth1
    dest: /var/tmp/capture.pcapng
    duration: 10
    packets: 10000
    interface_prefix: "{{ inventory_hostname }}"
"""

RETURN = r"""
packets:
  description: Packets that entered the program during the capture (each is in the file twice - at entry and at exit).
  returned: success
  type: int
  sample: 10000
records:
  description: Packet records in the file (entry and exit).
  returned: success
  type: int
  sample: 20000
seconds:
  description: How long the capture ran.
  returned: success
  type: float
  sample: 3.2
stopped_by:
  description: C(packets) (the count was reached) or C(duration).
  returned: success
  type: str
  sample: packets
"""

import os
import signal
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.anycast.edge.plugins.module_utils._options import check_ranges
from ansible_collections.anycast.edge.plugins.module_utils._pcapng import ENHANCED_PACKET, BlockReader, PcapngError, name_interfaces

POLL_SEC = 0.05
STOP_TIMEOUT_SEC = 10


def main():
    module = AnsibleModule(
        argument_spec=dict(
            iface=dict(type="str", required=True),
            dest=dict(type="path", required=True),
            duration=dict(type="int", default=10),
            packets=dict(type="int", default=0),
            snaplen=dict(type="int", default=0),
            program_name=dict(type="str", default=""),
            interface_prefix=dict(type="str", default=""),
        ),
        supports_check_mode=True,
    )
    params = module.params
    check_ranges(module, [("duration", 1, 3600, " seconds"), ("packets", 0, 10000000, "")])
    xdpdump = module.get_bin_path("xdpdump", required=True)
    if module.check_mode:
        module.exit_json(changed=True)
    argv = [xdpdump, "-i", params["iface"], "--rx-capture", "entry,exit", "-w", params["dest"]]
    if params["snaplen"]:
        argv += ["-s", str(params["snaplen"])]
    if params["program_name"]:
        argv += ["-p", params["program_name"]]
    if os.path.exists(params["dest"]):
        os.unlink(params["dest"])
    started = time.monotonic()
    state = dict(reader=BlockReader(), records=0, offset=0, stopped_by="duration")

    def watch(process):
        """run_command's before_communicate_callback: the capture runs until the duration is up or
        the packet count entered, then xdpdump is stopped (SIGINT: it flushes its file and detaches
        its tracing programs); run_command then reads its output and waits for it."""
        wanted_records = 2 * params["packets"]
        try:
            while time.monotonic() - started < params["duration"] and process.poll() is None:
                time.sleep(POLL_SEC)
                if not os.path.exists(params["dest"]):
                    continue
                with open(params["dest"], "rb") as capture:
                    capture.seek(state["offset"])
                    data = capture.read()
                try:
                    blocks = state["reader"].feed(data)
                except PcapngError:
                    break    # stopped; the same bytes are read again after the run, which fails with the reason
                state["offset"] += len(data)
                state["records"] += sum(1 for block_type, dummy in blocks if block_type == ENHANCED_PACKET)
                if wanted_records and state["records"] >= wanted_records:
                    state["stopped_by"] = "packets"
                    break
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            deadline = time.monotonic() + STOP_TIMEOUT_SEC
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(POLL_SEC)
            if process.poll() is None:
                process.kill()

    rc, out, err = module.run_command(argv, before_communicate_callback=watch)
    seconds = time.monotonic() - started
    reader, records, offset, stopped_by = state["reader"], state["records"], state["offset"], state["stopped_by"]
    if rc not in (0, -signal.SIGINT) or not os.path.exists(params["dest"]):
        module.fail_json(msg="xdpdump on %s failed (rc %s): %s" % (params["iface"], rc, (out + err).strip()[-2000:]))
    try:
        with open(params["dest"], "rb") as capture:
            capture.seek(offset)
            records += sum(1 for block_type, dummy in reader.feed(capture.read()) if block_type == ENHANCED_PACKET)
        if params["interface_prefix"]:
            with open(params["dest"], "rb") as capture:
                named = name_interfaces(capture.read(), params["interface_prefix"])
            # Players' traffic: readable by root only, as xdpdump writes it (0600), and never
            # through a file or link someone else put there.
            renamed = params["dest"] + ".named"
            if os.path.lexists(renamed):
                os.unlink(renamed)
            with os.fdopen(os.open(renamed, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb") as capture:
                capture.write(named)
            os.rename(renamed, params["dest"])
    except PcapngError as error:
        module.fail_json(msg="xdpdump on %s wrote %s, which is no readable pcapng: %s" % (params["iface"], params["dest"], error))
    module.exit_json(changed=True, packets=records // 2, records=records, seconds=seconds, stopped_by=stopped_by)


if __name__ == "__main__":
    main()
