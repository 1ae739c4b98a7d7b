"""The A2S cookie in Python is SipHash-2-4 as published, over the message layout of a2s.h."""

from __future__ import annotations

import socket
import time

import pytest

from ansible_collections.anycast.edge.plugins.module_utils._a2s_cookie import tai_offset_ns
from harness.cookies import a2s_cookie, cookie_clock_ns, cookie_epoch, siphash24


def test_siphash_matches_the_papers_test_vector():
    # Aumasson & Bernstein, "SipHash: a fast short-input PRF", appendix A.
    assert siphash24(bytes(range(16)), bytes(range(15))) == 0xA129CA6149BE45E5


def test_siphash_of_every_length_up_to_a_block_and_a_half_differs():
    key = bytes(range(16))
    digests = {siphash24(key, bytes(range(length))) for length in range(24)}
    assert len(digests) == 24


def test_the_cookie_depends_on_every_part_of_the_four_tuple_and_the_epoch():
    key = (1, 2)
    base = dict(saddr=socket.inet_aton("203.0.113.5"), daddr=socket.inet_aton("198.51.100.10"),
                sport=50000, dport=27015, epoch=7)
    cookie = a2s_cookie(key, **base)
    assert len(cookie) == 4
    for field, other in (("saddr", socket.inet_aton("203.0.113.6")), ("daddr", socket.inet_aton("198.51.100.11")),
                         ("sport", 50001), ("dport", 27016), ("epoch", 8)):
        assert a2s_cookie(key, **dict(base, **{field: other})) != cookie
    assert a2s_cookie((1, 3), **base) != cookie


def test_the_cookie_clock_is_utc_not_the_hosts_uptime_nor_its_tai():
    """Two POPs booted at different times agree on the epoch only if it is wall-clock time, and
    two POPs whose time daemons set different TAI offsets only if it is UTC."""
    before = time.clock_gettime_ns(time.CLOCK_REALTIME)
    now = cookie_clock_ns()
    after = time.clock_gettime_ns(time.CLOCK_REALTIME)
    assert before <= now <= after
    # Not the monotonic clock (seconds since boot): UTC is decades since 1970.
    assert now - time.monotonic_ns() > 50 * 365 * 86400 * 10**9


def test_the_cookie_clock_takes_the_given_tai_offset_off_clock_tai():
    """What a program whose config carries that offset reads: CLOCK_TAI - offset."""
    before = time.clock_gettime_ns(time.CLOCK_TAI)
    now = cookie_clock_ns(tai_offset=37 * 10**9)
    after = time.clock_gettime_ns(time.CLOCK_TAI)
    assert before - 37 * 10**9 <= now <= after - 37 * 10**9
    assert cookie_clock_ns(tai_offset=0) >= after


def test_the_tai_offset_is_whole_seconds_and_the_same_on_every_read():
    """The kernel keeps it in seconds; reading two clocks apart must not make it jitter, or every
    edge_rules run would rewrite the config."""
    offsets = {tai_offset_ns() for dummy in range(1000)}
    assert len(offsets) == 1
    (offset,) = offsets
    assert offset % 10**9 == 0 and 0 <= offset <= 100 * 10**9
    assert abs(time.clock_gettime_ns(time.CLOCK_TAI) - time.clock_gettime_ns(time.CLOCK_REALTIME) - offset) < 10**8


@pytest.mark.parametrize("clock_ns, epoch_ns, epoch", [
    (0, 30 * 10**9, 0),
    (30 * 10**9 - 1, 30 * 10**9, 0),
    (30 * 10**9, 30 * 10**9, 1),
    (1_764_000_000 * 10**9 + 15 * 10**9, 30 * 10**9, 58_800_000),
])
def test_cookie_epoch_is_the_clock_divided_by_the_epoch_length(clock_ns, epoch_ns, epoch):
    assert cookie_epoch(clock_ns, epoch_ns) == epoch


@pytest.mark.parametrize("epoch_ns", [0, -1])
def test_cookie_epoch_refuses_an_epoch_length_that_is_not_positive(epoch_ns):
    with pytest.raises(ValueError, match="epoch_ns must be > 0"):
        cookie_epoch(10**9, epoch_ns)


def test_only_the_low_32_bits_of_the_epoch_take_part():
    key = (5, 6)
    tuple_ = (socket.inet_aton("203.0.113.5"), socket.inet_aton("198.51.100.10"), 50000, 27015)
    assert a2s_cookie(key, *tuple_, epoch=9) == a2s_cookie(key, *tuple_, epoch=9 + (1 << 32))
    assert a2s_cookie(key, *tuple_, epoch=(-1) & 0xFFFFFFFFFFFFFFFF) == a2s_cookie(key, *tuple_, epoch=0xFFFFFFFF)
