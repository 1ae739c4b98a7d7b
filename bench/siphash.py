"""SipHash-2-4 and the A2S challenge cookie, in Python, for the benchmark's A2S cache-hit packet.

The XDP program answers an A2S_INFO request from its cache only if the request carries this POP's
cookie: SipHash-2-4 (Aumasson & Bernstein, "SipHash: a fast short-input PRF", 2012) of the
client's 4-tuple and the epoch, keyed by edge_config.cookie_key (bpf/include/a2s.h, a2s_cookie()).
Written here from the paper because tests/bpf has no reference model yet; the bench checks it
against the paper's test vector and, before timing, that the program really answers the request
from the cache (a wrong cookie would be counted as drop_bad_cookie and the bench would stop).
"""

from __future__ import annotations

import socket
import struct

_MASK = (1 << 64) - 1


def _rotl(value: int, bits: int) -> int:
    return ((value << bits) | (value >> (64 - bits))) & _MASK


def _sip_round(v0: int, v1: int, v2: int, v3: int):
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


def siphash_2_4(key: bytes, message: bytes) -> int:
    """SipHash-2-4 of `message` under the 16-byte `key`, as a 64-bit integer."""
    if len(key) != 16:
        raise ValueError("SipHash key must be 16 bytes")
    k0, k1 = struct.unpack("<QQ", key)
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573
    # Whole 8-byte words, then a last word holding the tail bytes and the length in its top byte.
    whole = len(message) - len(message) % 8
    words = list(struct.unpack("<%dQ" % (whole // 8), message[:whole]))
    tail = message[whole:] + b"\0" * (7 - len(message) % 8)
    words.append(struct.unpack("<Q", tail + bytes([len(message) & 0xFF]))[0])
    for word in words:
        v3 ^= word
        for _compression_round in range(2):
            v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
        v0 ^= word
    v2 ^= 0xFF
    for _finalization_round in range(4):
        v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def check_against_paper() -> None:
    """The paper's test vector (appendix A): key 00..0f, message 00..0e."""
    got = siphash_2_4(bytes(range(16)), bytes(range(15)))
    if got != 0xA129CA6149BE45E5:
        raise AssertionError("SipHash-2-4 self-check failed: %#x" % got)


def _as_le_int(raw: bytes) -> int:
    """The integer the BPF program sees when it loads network-order bytes on a little-endian CPU."""
    return int.from_bytes(raw, "little")


def a2s_cookie(cookie_key: tuple, saddr: str, daddr: str, sport: int, dport: int, epoch: int) -> bytes:
    """The 4 challenge bytes a client echoes, as bpf/include/a2s.h computes them.

    m0 = saddr | daddr << 32 and m1 = sport | dport << 16 | (epoch mod 2^32) << 32, the addresses
    and ports taken as they sit in the packet (network order) read as little-endian integers; the
    low 32 bits of the hash go on the wire little-endian.
    """
    m0 = _as_le_int(socket.inet_aton(saddr)) | _as_le_int(socket.inet_aton(daddr)) << 32
    m1 = (_as_le_int(struct.pack("!H", sport)) | _as_le_int(struct.pack("!H", dport)) << 16
          | (epoch & 0xFFFFFFFF) << 32)
    key = struct.pack("<QQ", cookie_key[0], cookie_key[1])
    digest = siphash_2_4(key, struct.pack("<QQ", m0, m1))
    return struct.pack("<I", digest & 0xFFFFFFFF)
