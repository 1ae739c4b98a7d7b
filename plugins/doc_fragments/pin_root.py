# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """The O(pin_root) option of the modules that open the programs' pins (_pins.DEFAULT_PIN_ROOT)."""

    DOCUMENTATION = r"""
options:
  pin_root:
    description: Folder on a bpffs holding one folder of pins per interface.
    type: path
    default: /sys/fs/bpf/anycast_edge
"""
