# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """The options of a module that manages links of one kind marked as ours by their alias
    (_ipip.alias_for, _ipip.remove_links): ipip_tunnel, wireguard_interface. Each module says
    what its O(state) values do (its own C(description) of the option, merged over this one)."""

    DOCUMENTATION = r"""
options:
  state:
    type: str
    choices: [present, absent, pruned]
    default: present
  name:
    description:
      - The link's name (1..15 characters, no C(/), C(:) or whitespace). Required unless
        O(state=pruned).
    type: str
  keep:
    description: With O(state=pruned), the names of our links of the module's kind to keep.
    type: list
    elements: str
    default: []
  admin_state:
    description: V(up) or V(down) (C(ip link set NAME up/down)).
    type: str
    choices: [up, down]
    default: up
  description:
    description:
      - "Free text stored after the mark in the interface alias (C(anycast.edge: <description>)),
        shown by C(ip link). Omitted leaves an existing description as it is."
    type: str
"""
