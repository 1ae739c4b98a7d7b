# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """How a module reaches BIRD 2: its control socket, through birdc (module_utils/_birdc.py)."""

    DOCUMENTATION = r"""
options:
  socket:
    description: BIRD's control socket.
    type: path
    default: /run/bird/bird.ctl
  birdc_path:
    description: The C(birdc) binary.
    type: path
    default: birdc
"""
