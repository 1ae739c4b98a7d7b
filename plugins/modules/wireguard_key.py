#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: wireguard_key
short_description: A WireGuard private key made on the host, kept there; its public key returned
version_added: "0.1.0"
description:
  - Makes a WireGuard private key with C(wg genkey) on the managed host when O(path) does not
    exist yet, and writes it there readable by its owner only (mode C(0600), in a folder of mode
    C(0700) when the module makes the folder). An existing key is kept - a second run changes nothing.
  - Returns the public key (RV(public_key)), so that a play can gather it as a fact for the peers'
    side. The private key never leaves the host - not in the result, the diff or the log.
  - A key file with another mode is set back to C(0600) (a change). A file at O(path) that does not
    hold a WireGuard key makes the task fail (its content is not shown).
author:
  - anycast.edge maintainers (!UNKNOWN)
requirements:
  - wireguard-tools (C(wg))
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Reports the key it would make (without a public key, which does not exist yet) or the mode it would set.
  diff_mode:
    support: full
    details: The key file's presence, mode and public key, before and after.
  platform:
    platforms: linux
options:
  path:
    description: The private key's file on the host.
    type: path
    default: /etc/anycast-edge/wireguard/private.key
notes:
  - One key per host serves all its WireGuard interfaces (one per POP/backend pair, see docs/transport.md).
seealso:
  - module: anycast.edge.wireguard_interface
"""

EXAMPLES = r"""
- name: This host's WireGuard key (made once; the public key for its peers)
  anycast.edge.wireguard_key:
    path: /etc/anycast-edge/wireguard/private.key
  register: wireguard_key

- name: Show the public key
  ansible.builtin.debug:
    msg: "{{ wireguard_key.public_key }}"
"""

RETURN = r"""
public_key:
  description: The public key of the private key in O(path) (null in check mode when the key is not made yet).
  returned: always
  type: str
  sample: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
path:
  description: The key file.
  returned: always
  type: str
  sample: /etc/anycast-edge/wireguard/private.key
created:
  description: True if the key was (or, in check mode, would be) made by this run.
  returned: always
  type: bool
"""

import errno
import os
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.anycast.edge.plugins.module_utils import _wireguard

KEY_MODE = 0o600
FOLDER_MODE = 0o700


def read_key(module, path):
    """(private key, mode) of the file at `path`, or (None, None) when there is none."""
    try:
        with open(path) as handle:
            mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            private_key = handle.read().strip()
    except (IOError, OSError) as exc:
        if exc.errno == errno.ENOENT:
            return None, None
        module.fail_json(msg="path: cannot read %s: %s" % (path, exc.strerror))
    if private_key:
        module.no_log_values.add(private_key)
    if not _wireguard.is_key(private_key):
        module.fail_json(msg="path: %s does not hold a WireGuard private key (not shown); move it away or name "
                         "another path" % path)
    return private_key, mode


def wg(module, arguments, data=None):
    rc, out, err = module.run_command([module.get_bin_path("wg", required=True)] + arguments, data=data)
    if rc != 0:
        module.fail_json(msg="wg %s: %s" % (arguments[0], err.strip() or "rc %d" % rc))
    return out.strip()


def make_key(module, path):
    """A new private key in `path`: written to a file of mode 0600 beside it, then renamed over it,
    so that no reader ever sees a partial key or a wider mode."""
    private_key = wg(module, ["genkey"])
    module.no_log_values.add(private_key)
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        os.makedirs(folder, FOLDER_MODE)
    handle, staged = tempfile.mkstemp(dir=folder, prefix=".wireguard-key.")   # mode 0600
    try:
        with os.fdopen(handle, "w") as staged_file:
            staged_file.write(private_key + "\n")
        os.chmod(staged, KEY_MODE)
        os.rename(staged, path)
    except BaseException:
        if os.path.exists(staged):
            os.unlink(staged)
        raise
    return private_key


def main():
    module = AnsibleModule(
        argument_spec=dict(path=dict(type="path", default="/etc/anycast-edge/wireguard/private.key")),
        supports_check_mode=True,
    )
    path = module.params["path"]
    private_key, mode = read_key(module, path)
    before = {"path": path, "exists": private_key is not None,
              "mode": None if mode is None else "%04o" % mode,
              "public_key": wg(module, ["pubkey"], data=private_key) if private_key else None}
    after = dict(before, exists=True, mode="%04o" % KEY_MODE)
    result = {"changed": private_key is None or mode != KEY_MODE, "path": path, "created": private_key is None,
              "public_key": before["public_key"]}
    if not module.check_mode:
        if private_key is None:
            private_key = make_key(module, path)
            after["public_key"] = result["public_key"] = wg(module, ["pubkey"], data=private_key)
        elif mode != KEY_MODE:
            os.chmod(path, KEY_MODE)
    if module._diff:
        result["diff"] = {"before": before, "after": after}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
