# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""The POP's TAI offset, which edge_rules writes into edge_config.cookie_tai_offset_ns.

The program counts edge cookie epochs (bpf/include/a2s.h) on UTC: it reads CLOCK_TAI
(bpf_ktime_get_tai_ns(), the only wall clock it has) and takes off this offset, which differs
with the time daemon (chrony: 37 s, timesyncd: 0). The cookie itself, as a client computes it,
is harness/cookies.py's (tests and bench only: nothing on a host computes one).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time


def tai_offset_ns():
    """This host's CLOCK_TAI - CLOCK_REALTIME in ns: what edge_rules writes as cookie_tai_offset_ns.

    The kernel keeps the offset in whole seconds (0 until a time daemon sets it, 37 s since
    2017); the two clocks cannot be read at once, so the difference is rounded to the second,
    which makes it the same on every read until the offset itself changes."""
    tai = time.clock_gettime_ns(time.CLOCK_TAI)
    realtime = time.clock_gettime_ns(time.CLOCK_REALTIME)
    return (tai - realtime + 500_000_000) // 10**9 * 10**9
