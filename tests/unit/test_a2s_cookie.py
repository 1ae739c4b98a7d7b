"""The A2S cookie in Python is SipHash-2-4 as published, over the message layout of a2s.h."""

from __future__ import annotations

import socket

from ansible_collections.anycast.edge.plugins.module_utils._a2s_cookie import a2s_cookie, siphash24


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
