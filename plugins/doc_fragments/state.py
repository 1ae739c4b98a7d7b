# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """The attributes of a module that changes state on a Linux host the way every module here does.

    It reads the present state, compares it with the wanted one and acts only on a difference; in
    check mode it reports the difference without acting, and it shows it as a diff. A module adds
    how it does that (``details``) under its own ``attributes``.
    """

    DOCUMENTATION = r"""
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: linux
"""
