# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of anycast.edge.edge_rules: ships the task's rules file to the POP.

The rules (up to a million prefixes) travel as one file the controller rendered
(anycast.edge.inventory_check's rules_dir), copied into the task's temporary folder on the POP,
not as task arguments that Ansible would template, pack into the module's payload and echo back
in the result. Without rules_file, the module runs as any other.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):

    TRANSFERS_FILES = True

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp  # the connection's tmpdir is used
        module_args = dict(self._task.args)
        source = module_args.get("rules_file")
        try:
            if source is not None:
                try:
                    local = self._loader.get_real_file(self._find_needle("files", source), decrypt=True)
                except AnsibleError as exc:
                    raise AnsibleActionFail("rules_file: %s" % to_native(exc))
                remote = self._connection._shell.join_path(self._connection._shell.tmpdir, "edge_rules.json")
                self._transfer_file(local, remote)
                self._fixup_perms2((self._connection._shell.tmpdir, remote))
                module_args["rules_file"] = remote
            result.update(self._execute_module(module_name="anycast.edge.edge_rules", module_args=module_args,
                                               task_vars=task_vars))
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result
