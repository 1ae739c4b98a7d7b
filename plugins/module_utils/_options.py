# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Checks of a module's options that its argument spec cannot express (a number's range), failing
the task with a message that names the option and its value."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


def check_ranges(module, ranges):
    """Fail the task on the first option outside its range. ranges: (option, lowest, highest or
    None for no upper bound, unit: "" or " seconds"), checked in the order given."""
    for name, lowest, highest, unit in ranges:
        value = module.params[name]
        if highest is None and value < lowest:
            module.fail_json(msg="%s: %s: must be %s or more%s" % (name, value, lowest, unit))
        if highest is not None and not lowest <= value <= highest:
            module.fail_json(msg="%s: %s: must be %s to %s%s" % (name, value, lowest, highest, unit))
