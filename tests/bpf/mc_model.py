"""A reference model of bpf/include/mc_proto.h: Minecraft: Java Edition's handshake in plain Python.

    handshake(payload) -> Handshake | None   mc_handshake_valid(): what a well-formed handshake at
                                             the start of a TCP segment's payload says, or None

It answers for an unfragmented TCP segment carrying exactly these payload bytes (the C answers
None for anything else). It is written from the public description of the protocol
(docs/game-protocols.md, "Minecraft: Java Edition"): a straightforward reader of VarInts, a
String and an Unsigned Short, not a copy of the C's unrolled single pass; the differential test
in tests/bpf/test_mc_proto.py holds the C to the same answers.

It also builds well-formed handshakes (and the legacy server list ping) for tests and the lab.
"""

from __future__ import annotations

import struct
from typing import NamedTuple, Optional, Tuple

VARINT_MAX_BYTES = 5
ADDRESS_MAX_CHARS = 255              # String (255)
ADDRESS_MAX_BYTES = ADDRESS_MAX_CHARS * 3   # each UTF-16 code unit is at most 3 UTF-8 bytes
HANDSHAKE_ID = 0x00
NEXT_STATUS, NEXT_LOGIN, NEXT_TRANSFER = 1, 2, 3
NEXT_STATES = (NEXT_STATUS, NEXT_LOGIN, NEXT_TRANSFER)
DEFAULT_PORT = 25565


class Handshake(NamedTuple):
    protocol_version: int   # the VarInt's 32 bits, unsigned (-1 is 0xffffffff)
    address_len: int        # bytes of the server address
    port: int
    next_state: int
    end: int                # payload bytes the handshake takes, its length prefix included


def read_varint(data: bytes, pos: int, max_bytes: int = VARINT_MAX_BYTES) -> Optional[Tuple[int, int]]:
    """The canonical VarInt at pos: (its value as 32 unsigned bits, the position after it) or None.

    At most max_bytes bytes; the shortest encoding only (a last byte of 0 after others is a
    longer spelling of a smaller number), and no more than 32 bits.
    """
    value = 0
    for index in range(max_bytes):
        if pos + index >= len(data):
            return None
        byte = data[pos + index]
        value |= (byte & 0x7F) << (7 * index)
        if byte & 0x80:
            continue
        if index > 0 and byte == 0:
            return None
        if value >= 2 ** 32:
            return None
        return value, pos + index + 1
    return None


def handshake(payload: bytes) -> Optional[Handshake]:
    """The handshake the payload starts with, or None when it does not start with a well-formed one."""
    field = read_varint(payload, 0, max_bytes=2)   # length: never more than 776, two bytes
    if field is None:
        return None
    length, start = field
    end = start + length
    if end > len(payload):
        return None                                 # the handshake does not end in this payload
    packet = payload[start:end]
    field = read_varint(packet, 0, max_bytes=1)
    if field is None or field[0] != HANDSHAKE_ID:
        return None
    field = read_varint(packet, field[1])
    if field is None:
        return None
    protocol_version, pos = field
    field = read_varint(packet, pos, max_bytes=2)
    if field is None:
        return None
    address_len, pos = field
    if address_len > ADDRESS_MAX_BYTES or pos + address_len + 3 != len(packet):
        return None                                 # no bytes may be missing or left over
    pos += address_len
    port = struct.unpack_from(">H", packet, pos)[0]
    field = read_varint(packet, pos + 2, max_bytes=1)
    if field is None or field[0] not in NEXT_STATES:
        return None
    return Handshake(protocol_version, address_len, port, field[0], end)


# ---- well-formed packets, for tests and the lab --------------------------------------------------

def varint(value: int) -> bytes:
    """The canonical VarInt of a 32-bit value (negative: its two's complement, five bytes)."""
    value &= 0xFFFFFFFF
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def frame(packet_id: int, data: bytes) -> bytes:
    """A packet as sent before compression is set: VarInt length, VarInt id, data."""
    body = varint(packet_id) + data
    return varint(len(body)) + body


def string(text: bytes) -> bytes:
    return varint(len(text)) + text


def handshake_packet(address: bytes = b"mc.example.net", port: int = DEFAULT_PORT, next_state: int = NEXT_LOGIN,
                     protocol_version: int = 767) -> bytes:
    """The handshake a client sends first (767: 1.21 / 1.21.1)."""
    return frame(HANDSHAKE_ID, varint(protocol_version) + string(address) + struct.pack(">H", port)
                 + varint(next_state))


def status_request() -> bytes:
    return frame(0x00, b"")


def login_start(name: bytes = b"player", uuid: bytes = bytes(range(16))) -> bytes:
    """Login Start as 1.20.2+ clients send it (name, UUID)."""
    return frame(0x00, string(name) + uuid)


def legacy_ping(host: str = "mc.example.net", port: int = DEFAULT_PORT, protocol: int = 74) -> bytes:
    """The 1.6 server list ping: FE 01, then a plugin message 'MC|PingHost' (UTF-16BE strings)."""
    channel = "MC|PingHost".encode("utf-16-be")
    host_bytes = host.encode("utf-16-be")
    data = bytes([protocol]) + struct.pack(">H", len(host)) + host_bytes + struct.pack(">I", port)
    return b"\xfe\x01\xfa" + struct.pack(">H", len(channel) // 2) + channel + struct.pack(">H", len(data)) + data
