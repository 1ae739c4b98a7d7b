"""The edge cookie as the XDP program computes it (bpf/include/a2s.h, syn_auth.h), to play a real
client: the tests, the reference model and the bench use it; no host needs it.

SipHash-2-4 keyed by edge_config.cookie_key over the client's 4-tuple and the epoch; the low
32 bits go on the wire little endian. The epoch is UTC / cookie_epoch_ns, wall-clock time the
whole fleet agrees on: the program reads CLOCK_TAI (bpf_ktime_get_tai_ns(), the only wall clock
it has) and takes off edge_config.cookie_tai_offset_ns, the POP's TAI offset that edge_rules
writes (module_utils/_a2s_cookie.py's tai_offset_ns()), which differs with the time daemon
(chrony: 37 s, timesyncd: 0).
"""

from __future__ import annotations

import struct
import time

from ansible_collections.anycast.edge.plugins.module_utils._a2s_cookie import tai_offset_ns

_MASK = 0xFFFFFFFFFFFFFFFF


def _rotl(value, bits):
    return ((value << bits) | (value >> (64 - bits))) & _MASK


def _sip_round(v0, v1, v2, v3):
    v0 = (v0 + v1) & _MASK
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & _MASK
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & _MASK
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & _MASK
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash24(key, message):
    """SipHash-2-4 of bytes `message` with a 16-byte key; returns a 64-bit integer."""
    k0, k1 = struct.unpack("<QQ", key)
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573
    tail_len = len(message) % 8
    words = [struct.unpack_from("<Q", message, offset)[0] for offset in range(0, len(message) - tail_len, 8)]
    last = (len(message) & 0xFF) << 56
    for index, byte in enumerate(bytearray(message[len(message) - tail_len:])):
        last |= byte << (8 * index)
    for word in words + [last]:
        v3 ^= word
        v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
        v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
        v0 ^= word
    v2 ^= 0xFF
    for dummy in range(4):
        v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def cookie_clock_ns(tai_offset=None):
    """Now on the clock the program counts cookie epochs with: CLOCK_TAI minus the TAI offset its
    config carries (bpf_ktime_get_tai_ns() - cookie_tai_offset_ns), i.e. UTC when the config holds
    this host's offset (tai_offset=None, what edge_rules writes)."""
    if tai_offset is None:
        tai_offset = tai_offset_ns()
    return time.clock_gettime_ns(time.CLOCK_TAI) - tai_offset


def cookie_epoch(clock_ns, epoch_ns):
    """The epoch a cookie issued at clock_ns (cookie_clock_ns(): UTC nanoseconds) belongs to."""
    if epoch_ns <= 0:
        raise ValueError("cookie epoch_ns must be > 0, got %r" % (epoch_ns,))
    return clock_ns // epoch_ns


def a2s_cookie(cookie_key, saddr, daddr, sport, dport, epoch):
    """The 4 cookie bytes the POP sends (and expects back) for a client in an epoch.

    cookie_key: (k0, k1) integers as in edge_config; saddr/daddr: 4 raw network-order bytes;
    sport/dport: port numbers.
    """
    key = struct.pack("<QQ", cookie_key[0], cookie_key[1])
    message = saddr + daddr + struct.pack("!HH", sport, dport) + struct.pack("<I", epoch & 0xFFFFFFFF)
    return struct.pack("<I", siphash24(key, message) & 0xFFFFFFFF)


# bpf/include/syn_auth.h SYN_AUTH_KEY_TWEAK: xored into the first word of each key generation.
SYN_AUTH_KEY_TWEAK = 0x7463702D73796E61


def syn_cookie(cookie_key, saddr, daddr, sport, dport, epoch):
    """The SYN authentication cookie (syn_auth.h) as an integer: the acknowledgement number of the
    POP's SYN-ACK to a client, and the sequence number of the RST that proves the client's address.
    The edge cookie of the 4-tuple and epoch under the TCP key of the generation cookie_key."""
    tcp_key = (cookie_key[0] ^ SYN_AUTH_KEY_TWEAK, cookie_key[1])
    return struct.unpack("<I", a2s_cookie(tcp_key, saddr, daddr, sport, dport, epoch))[0]
