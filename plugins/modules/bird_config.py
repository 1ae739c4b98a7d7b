#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: bird_config
short_description: Apply a BIRD 2 configuration safely (parse, swap, reload with timeout, confirm)
version_added: 0.1.0
description:
  - Stages I(content) next to I(path) and has C(bird -p -c) parse it. A parse error fails the task
    with BIRD's message and changes nothing.
  - When the staged file equals the live one nothing happens (C(changed=false), no reload).
  - Otherwise the staged file replaces the live one atomically (rename) and BIRD is told
    C(configure "path" timeout N). The module then waits until every BGP session that was
    Established before the reload is Established again, and sends C(configure confirm).
  - If BIRD rejects the new configuration, or the sessions do not come back within
    I(session_wait) seconds, the module sends C(configure undo), puts the previous file back and
    fails. The running configuration and the sessions are then as they were before the task.
  - C(birdc) exits 0 even when a reconfiguration fails, so the module reads BIRD's reply codes
    (C(birdc -v)) rather than exit codes.
  - In diff mode the unified diff of the file is returned, with BGP passwords masked.
  - I(content) carries the BGP passwords, so it is a C(no_log) option. The argument echo
    (C(invocation)), the journal entry AnsibleModule writes and every message and result of the
    module show neither the content nor any password found in it.
author:
  - anycast.edge maintainers (!UNKNOWN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - anycast.edge.birdc
  - anycast.edge.state
options:
  content:
    description:
      - The complete configuration to apply (usually a rendered template).
      - Never echoed or logged (it holds the BGP passwords); each C(password "...") in it is also
        masked wherever it could appear in the result.
    type: str
    required: true
  path:
    description: The live configuration file BIRD reads.
    type: path
    default: /etc/bird/bird.conf
  reload:
    description:
      - Reload the running BIRD after replacing the file. With C(false) only the file is written
        (after C(bird -p) accepted it), for a BIRD that is not running yet.
    type: bool
    default: true
  confirm_timeout:
    description:
      - Seconds given to C(configure ... timeout); BIRD reverts to the previous configuration by
        itself if no C(configure confirm) arrives in that time (for example because this task
        died). Must be larger than I(session_wait).
    type: int
    default: 60
  session_wait:
    description: Seconds to wait for the previously Established BGP sessions to be Established again.
    type: int
    default: 30
  mode:
    description:
      - Permissions of the file (and of the staged copy, from its creation on). The file holds
        the BGP passwords; readable by root and BIRD's group only.
    type: str
    default: '0640'
  owner:
    description: Owner of the file and of the staged copy.
    type: str
    default: root
  group:
    description: Group of the file and of the staged copy (BIRD's, so that the daemon reads it).
    type: str
    default: bird
  bird_path:
    description: The C(bird) binary (used as C(bird -p -c) to parse).
    type: path
    default: bird
attributes:
  check_mode:
    details: Parses the configuration and reports what would change; never writes or reloads.
  diff_mode:
    details: Unified diff of the configuration file, passwords masked.
notes:
  - The file is replaced by a rename within its directory, so BIRD never reads a half-written file.
  - A file whose content is right but whose owner, group or mode is not is fixed without a reload
    (C(changed=true), C(reloaded=false)).
  - Sessions that are not Established before the reload (or that the new configuration removes)
    are not waited for.
seealso:
  - module: anycast.edge.bird_protocol
  - module: anycast.edge.bird_info
"""

EXAMPLES = r"""
- name: Apply the rendered BIRD configuration
  anycast.edge.bird_config:
    content: "{{ lookup('ansible.builtin.template', 'bird.conf.j2') }}"
    path: /etc/bird/bird.conf
    socket: /run/bird/bird.ctl
    confirm_timeout: 60
    session_wait: 30
"""

RETURN = r"""
reloaded:
  description: Whether BIRD was reconfigured (and the reconfiguration confirmed).
  returned: always
  type: bool
  sample: true
waited_for:
  description: BGP sessions that were Established before the reload and were waited for.
  returned: always
  type: list
  elements: str
  sample: [bgp_transit1]
bird_messages:
  description: BIRD's replies to configure and configure confirm, code and text.
  returned: when BIRD was reconfigured
  type: list
  elements: str
  sample: ["0002 Reading configuration from /etc/bird/bird.conf", "0003 Reconfigured"]
"""

import grp
import os
import pwd
import re
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.anycast.edge.plugins.module_utils._birdc import Birdc, BirdcError

_PASSWORD = re.compile(r'(\bpassword\s+)"([^"]*)"')


def masked(text):
    """The configuration as shown in diffs: BGP passwords replaced by asterisks."""
    return _PASSWORD.sub(r'\1"********"', text)


def passwords(text):
    """The passwords a configuration holds (each ``password "..."``)."""
    return [match.group(2) for match in _PASSWORD.finditer(text) if match.group(2)]


def read_text(path):
    try:
        with open(path, "r") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


class ConfigApplier:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.path = self.params["path"]
        self.birdc = Birdc(self.params["socket"], self.params["birdc_path"],
                           run_command=module.run_command)
        self.staged = None
        try:
            self.mode = int(self.params["mode"], 8)
        except ValueError:
            module.fail_json(msg="mode: %r is not an octal mode" % self.params["mode"])
        try:
            self.uid = pwd.getpwnam(self.params["owner"]).pw_uid
        except KeyError:
            module.fail_json(msg="owner: no user %r on this host" % self.params["owner"])
        try:
            self.gid = grp.getgrnam(self.params["group"]).gr_gid
        except KeyError:
            module.fail_json(msg="group: no group %r on this host (is the bird2 package installed?)"
                             % self.params["group"])

    def fail(self, msg, **extra):
        self._remove_staged()
        self.module.fail_json(msg=msg, **extra)

    def _remove_staged(self):
        if self.staged and os.path.exists(self.staged):
            os.unlink(self.staged)
        self.staged = None

    def stage(self, content):
        """Write content into a temp file in the live file's directory (same filesystem)."""
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            self.module.fail_json(msg="path: directory %s does not exist" % folder)
        fd, self.staged = tempfile.mkstemp(prefix=".%s." % os.path.basename(self.path), suffix=".staged", dir=folder)
        # Owner and mode before the first byte: the staged copy holds the passwords too.
        os.fchown(fd, self.uid, self.gid)
        os.fchmod(fd, self.mode)
        with os.fdopen(fd, "w") as handle:
            handle.write(content)

    def parse_check(self):
        rc, out, err = self.module.run_command([self.params["bird_path"], "-p", "-c", self.staged])
        if rc != 0:
            message = (err or out).strip().replace(self.staged, self.path + " (staged)")
            self.fail("BIRD rejected the configuration for %s: %s" % (self.path, message), bird_message=message)

    def attributes_differ(self):
        """Whether the live file's owner, group or mode is not the wanted one."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (stat.st_uid, stat.st_gid, stat.st_mode & 0o7777) != (self.uid, self.gid, self.mode)

    def fix_attributes(self):
        os.chown(self.path, self.uid, self.gid)
        os.chmod(self.path, self.mode)

    def wait_for_sessions(self, names):
        """Wait until every named BGP session is Established; return the ones that are not."""
        deadline = time.monotonic() + self.params["session_wait"]
        while True:
            protocols = dict((p["name"], p) for p in self.birdc.protocols())
            missing = sorted(name for name in names
                             if name in protocols and not _established(protocols[name]))
            if not missing or time.monotonic() >= deadline:
                return missing, protocols
            time.sleep(0.5)

    def restore(self, before):
        """Put the previous file back (BIRD itself was told to undo)."""
        if before is None:
            os.unlink(self.path)
            return
        fd, backup = tempfile.mkstemp(prefix=".%s." % os.path.basename(self.path), suffix=".restore",
                                      dir=os.path.dirname(os.path.abspath(self.path)))
        with os.fdopen(fd, "w") as handle:
            handle.write(before)
        os.chown(backup, self.uid, self.gid)
        os.chmod(backup, self.mode)
        os.rename(backup, self.path)

    def run(self):
        content = self.params["content"]
        if not content.endswith("\n"):
            content += "\n"
        if self.params["reload"] and self.params["confirm_timeout"] <= self.params["session_wait"]:
            self.module.fail_json(msg="confirm_timeout (%d) must be larger than session_wait (%d)"
                                  % (self.params["confirm_timeout"], self.params["session_wait"]))
        before = read_text(self.path)
        result = dict(changed=False, reloaded=False, waited_for=[])
        if self.module._diff:
            result["diff"] = dict(
                before_header=self.path, after_header=self.path,
                before=masked(before or ""), after=masked(content),
            )
        self.stage(content)
        self.parse_check()
        if before == content:
            self._remove_staged()
            if self.attributes_differ():
                result["changed"] = True
                if not self.module.check_mode:
                    self.fix_attributes()
            self.module.exit_json(**result)
        result["changed"] = True
        if self.module.check_mode:
            self._remove_staged()
            self.module.exit_json(**result)

        established = []
        if self.params["reload"]:
            try:
                established = self.birdc.established_bgp_sessions()
            except BirdcError as err:
                self.fail("cannot read BIRD's protocols through %s: %s" % (self.params["socket"], err))
        os.rename(self.staged, self.path)
        self.staged = None
        if not self.params["reload"]:
            self.module.exit_json(**result)

        result["waited_for"] = established
        try:
            reply = self.birdc.configure(self.path, timeout=self.params["confirm_timeout"])
        except BirdcError as err:
            # BIRD kept running its old configuration; put the old file back to match it.
            self.restore(before)
            self.module.fail_json(msg="BIRD rejected %s, previous configuration kept: %s" % (self.path, err),
                                  **result)
        result["bird_messages"] = ["%s %s" % line for line in reply.lines]

        missing, protocols = self.wait_for_sessions(established)
        if missing:
            undo_error = None
            try:
                self.birdc.undo()
            except BirdcError as err:
                undo_error = str(err)
            self.restore(before)
            states = dict((name, "%s %s" % (protocols[name]["state"], protocols[name]["info"])) for name in missing)
            msg = ("BGP sessions not Established again within %ds after the reload: %s; configure undo sent "
                   "and the previous file restored" % (self.params["session_wait"], ", ".join(
                       "%s (%s)" % (name, states[name]) for name in missing)))
            if undo_error:
                msg += "; configure undo failed (%s), BIRD reverts by itself after %ds" % (
                    undo_error, self.params["confirm_timeout"])
            self.module.fail_json(msg=msg, session_states=states, **result)
        try:
            self.birdc.confirm()
        except BirdcError as err:
            self.module.fail_json(msg="configure confirm failed (BIRD reverts after %ds): %s"
                                  % (self.params["confirm_timeout"], err), **result)
        result["bird_messages"].append("confirmed")
        result["reloaded"] = True
        self.module.exit_json(**result)


def _established(proto):
    return proto["state"] == "up" and proto["info"].startswith("Established")


def main():
    module = AnsibleModule(
        argument_spec=dict(
            # The rendered configuration holds the BGP passwords.
            content=dict(type="str", required=True, no_log=True),
            path=dict(type="path", default="/etc/bird/bird.conf"),
            socket=dict(type="path", default="/run/bird/bird.ctl"),
            reload=dict(type="bool", default=True),
            confirm_timeout=dict(type="int", default=60),
            session_wait=dict(type="int", default=30),
            mode=dict(type="str", default="0640"),
            owner=dict(type="str", default="root"),
            group=dict(type="str", default="bird"),
            bird_path=dict(type="path", default="bird"),
            birdc_path=dict(type="path", default="birdc"),
        ),
        supports_check_mode=True,
    )
    # no_log keeps the content out of the journal entry AnsibleModule wrote above. In the result
    # AnsibleModule masks every no_log value wherever it appears; masking the passwords rather
    # than the whole text keeps the diff and the argument echo readable (passwords as ********)
    # and catches a password that surfaces alone (BIRD quoting a line).
    module.no_log_values.discard(module.params["content"])
    module.no_log_values.update(passwords(module.params["content"]))
    for name in ("bird_path", "birdc_path"):
        if os.sep not in module.params[name]:
            found = module.get_bin_path(module.params[name], opt_dirs=["/usr/sbin", "/sbin"])
            if not found:
                module.fail_json(msg="%s: %s not found (is the bird2 package installed?)" % (name, module.params[name]))
            module.params[name] = found
    ConfigApplier(module).run()


if __name__ == "__main__":
    main()
