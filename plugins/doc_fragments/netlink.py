# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """What a module that changes links, addresses or routes through pyroute2 (module_utils/_netlink.py) needs."""

    DOCUMENTATION = r"""
requirements:
  - pyroute2 0.7 or later (Debian package C(python3-pyroute2))
  - root (CAP_NET_ADMIN)
attributes:
  platform:
    platforms: linux
"""
