"""A reference model of bpf/include/game_proto.h: the game-protocol validators in plain Python.

Each function is a pure function of a UDP payload (the bytes after the UDP header, exactly
payload_len of them) and a game protocol (enum edge_game_protocol), and answers what the C
function of the same name answers for an unfragmented UDP packet carrying that payload:

    handshake_shaped(payload, protocol) -> bool   game_handshake_shaped()
    server_challenge(payload, protocol) -> int | None   game_server_challenge(): the challenge, or None
    client_echo(payload, protocol) -> int | None        game_client_echo(): the echoed challenge, or None

The C functions answer 0 for anything that is not unfragmented UDP; the caller of this model
(tests/bpf/model.py) asks only for such packets. It is written from the byte layouts in
docs/game-protocols.md, not from the C, with plain slicing and int(): the differential test in
tests/bpf/test_game_proto.py then holds the C's bounded, unrolled reading to the same answers.
"""

from __future__ import annotations

import struct
from typing import Optional

from ansible_collections.anycast.edge.plugins.module_utils._edge_abi import GAME_PROTOCOLS

# enum edge_game_protocol (bpf/include/edge_abi.h), by the names the project already keeps in order
EDGE_GAME_NONE = GAME_PROTOCOLS.index("none")
EDGE_GAME_SOURCE = GAME_PROTOCOLS.index("source")
EDGE_GAME_GOLDSRC = GAME_PROTOCOLS.index("goldsrc")
EDGE_GAME_COUNT = len(GAME_PROTOCOLS)

# A payload outside these lengths is never any of the packets below (GAME_MIN_LEN/GAME_MAX_LEN).
GAME_MIN_LEN = 9
GAME_MAX_LEN = 1400

CONNECTIONLESS = b"\xff\xff\xff\xff"

A2S_INFO_REQUEST = CONNECTIONLESS + b"TSource Engine Query\x00"   # 25 bytes, + 4 with a challenge
A2S_PLAYER = 0x55
A2S_RULES = 0x56

SOURCE_GETCHALLENGE = CONNECTIONLESS + b"q"
SOURCE_GETCHALLENGE_PAD = b"0000000000\x00"
SOURCE_CHALLENGE_MAGIC = 0x5A4F4933
SOURCE_AUTH_PROTOCOLS = (1, 2, 3)   # certificate, hashed CD key, Steam

GOLDSRC_GETCHALLENGE = CONNECTIONLESS + b"getchallenge steam\n"
GOLDSRC_CHALLENGE = CONNECTIONLESS + b"A00000000 "
GOLDSRC_CONNECT = CONNECTIONLESS + b"connect 48 "

# The C reads a window of the first 32 payload bytes; every field below lies in it. A GoldSrc
# number must end inside it too (it does for every canonical number: at most 11 characters).
WINDOW_LEN = 32

_LE32 = struct.Struct("<I")


def _candidate(payload: bytes, protocol: int) -> bool:
    return (protocol in (EDGE_GAME_SOURCE, EDGE_GAME_GOLDSRC)
            and GAME_MIN_LEN <= len(payload) <= GAME_MAX_LEN
            and payload.startswith(CONNECTIONLESS))


def _le32(payload: bytes, offset: int) -> int:
    return _LE32.unpack_from(payload, offset)[0]


def a2s_query(payload: bytes) -> bool:
    """A2S_INFO (25 bytes, 29 with its challenge), A2S_PLAYER or A2S_RULES (9 bytes)."""
    if len(payload) == 9:
        return payload[4] in (A2S_PLAYER, A2S_RULES)
    if len(payload) in (25, 29):
        return payload[:25] == A2S_INFO_REQUEST
    return False


# ---- Source engine ---------------------------------------------------------------------------

def source_getchallenge(payload: bytes) -> bool:
    """'q' <client challenge:4> "0000000000\\0": 20 bytes exactly."""
    return len(payload) == 20 and payload[:5] == SOURCE_GETCHALLENGE and payload[9:] == SOURCE_GETCHALLENGE_PAD


def source_connect(payload: bytes) -> Optional[int]:
    """'k' <protocol:4> <auth:4> <server challenge:4> <client challenge:4> three strings...: >= 24 bytes."""
    if len(payload) < 24 or payload[4] != ord("k") or _le32(payload, 9) not in SOURCE_AUTH_PROTOCOLS:
        return None
    return _le32(payload, 13)


def source_server_challenge(payload: bytes) -> Optional[int]:
    """'A' <magic:4> <server challenge:4> <client challenge:4> <auth:4> ...: >= 21 bytes."""
    if (len(payload) < 21 or payload[4] != ord("A") or _le32(payload, 5) != SOURCE_CHALLENGE_MAGIC
            or _le32(payload, 17) not in SOURCE_AUTH_PROTOCOLS):
        return None
    return _le32(payload, 9)


# ---- GoldSrc ---------------------------------------------------------------------------------

def _decimal(payload: bytes, start: int, allow_sign: bool) -> Optional[tuple]:
    """The canonical decimal at start: (value modulo 2^32, index of the character after it) or None.

    1..10 digits, no leading zero, at most 2^32-1; with allow_sign a leading '-' and a magnitude
    of 1..2^31 (a client echoes a challenge above 2^31-1 negative). The character after the number
    must be inside the window (the first WINDOW_LEN bytes) and the payload.
    """
    text = payload[:WINDOW_LEN]
    end = start
    negative = allow_sign and text[start:start + 1] == b"-"
    if negative:
        end += 1
    digits_start = end
    while end < len(text) and text[end:end + 1].isdigit():
        end += 1
    digits = text[digits_start:end]
    if end >= len(text) or not 1 <= len(digits) <= 10 or (len(digits) > 1 and digits[:1] == b"0"):
        return None
    magnitude = int(digits)
    if negative:
        if not 1 <= magnitude <= 2 ** 31:
            return None
        return (-magnitude) % 2 ** 32, end
    if magnitude > 2 ** 32 - 1:
        return None
    return magnitude, end


def goldsrc_getchallenge(payload: bytes) -> bool:
    """"getchallenge steam\\n", with or without one trailing NUL."""
    return payload in (GOLDSRC_GETCHALLENGE, GOLDSRC_GETCHALLENGE + b"\x00")


def _decimal_after(payload: bytes, prefix: bytes, allow_sign: bool):
    """(value, the window's bytes after it) of the canonical decimal right after ``prefix`` (see
    _decimal), or None."""
    if not payload.startswith(prefix):
        return None
    number = _decimal(payload, len(prefix), allow_sign=allow_sign)
    if number is None:
        return None
    value, end = number
    return value, payload[:WINDOW_LEN][end:]


def goldsrc_connect(payload: bytes) -> Optional[int]:
    """"connect 48 <challenge> \\"..." : the challenge may be negative (echoed with %i)."""
    found = _decimal_after(payload, GOLDSRC_CONNECT, allow_sign=True)
    if found is None or found[1][:2] != b' "':
        return None
    return found[0]


def goldsrc_server_challenge(payload: bytes) -> Optional[int]:
    """"A00000000 <challenge> <auth 1..3>" then ' ' or '\\n'."""
    found = _decimal_after(payload, GOLDSRC_CHALLENGE, allow_sign=False)
    if found is None:
        return None
    value, after = found
    follow = after[:3]
    if len(follow) != 3 or follow[0:1] != b" " or follow[1:2] not in (b"1", b"2", b"3") or follow[2:3] not in (b" ", b"\n"):
        return None
    return value


# ---- the interface (game_proto.h) --------------------------------------------------------------

def handshake_shaped(payload: bytes, protocol: int) -> bool:
    """May an unverified source send this payload to a service speaking protocol, under attack?"""
    if not _candidate(payload, protocol):
        return False
    if a2s_query(payload):
        return True
    if protocol == EDGE_GAME_SOURCE:
        return source_getchallenge(payload) or source_connect(payload) is not None
    return goldsrc_getchallenge(payload) or goldsrc_connect(payload) is not None


def _read_by_protocol(payload: bytes, protocol: int, source_reader, goldsrc_reader) -> Optional[int]:
    """What the protocol's reader finds in a candidate payload, or None."""
    if not _candidate(payload, protocol):
        return None
    return (source_reader if protocol == EDGE_GAME_SOURCE else goldsrc_reader)(payload)


def server_challenge(payload: bytes, protocol: int) -> Optional[int]:
    """The challenge a game server's reply hands its client, or None."""
    return _read_by_protocol(payload, protocol, source_server_challenge, goldsrc_server_challenge)


def client_echo(payload: bytes, protocol: int) -> Optional[int]:
    """The server challenge a client's connect echoes, or None."""
    return _read_by_protocol(payload, protocol, source_connect, goldsrc_connect)


# ---- well-formed packets, for tests and the lab ------------------------------------------------

def source_getchallenge_packet(client_challenge: int) -> bytes:
    return SOURCE_GETCHALLENGE + _LE32.pack(client_challenge) + SOURCE_GETCHALLENGE_PAD


def source_challenge_packet(server_challenge_value: int, client_challenge: int, auth: int = 3,
                            steam_id: int = 90071996842377216, secure: int = 1) -> bytes:
    """S2C_CHALLENGE as a Steam server sends it (auth 3: steam2 key length, SteamID, secure, pad)."""
    body = struct.pack("<IIII", SOURCE_CHALLENGE_MAGIC, server_challenge_value, client_challenge, auth)
    if auth == 3:
        body += struct.pack("<HQB", 0, steam_id, secure)
    return CONNECTIONLESS + b"A" + body + b"000000\x00"


def source_connect_packet(server_challenge_value: int, client_challenge: int, name: bytes = b"player",
                          password: bytes = b"", auth: int = 3, protocol_version: int = 24,
                          ticket: bytes = bytes(range(64))) -> bytes:
    """C2S_CONNECT: four integers, name, password, product version, then the Steam ticket."""
    return (CONNECTIONLESS + b"k" + struct.pack("<IIII", protocol_version, auth, server_challenge_value, client_challenge)
            + name + b"\x00" + password + b"\x00" + b"1.0.0.0\x00" + struct.pack("<H", len(ticket)) + ticket)


def goldsrc_getchallenge_packet(nul: bool = False) -> bytes:
    return GOLDSRC_GETCHALLENGE + (b"\x00" if nul else b"")


def goldsrc_challenge_packet(challenge: int, auth: int = 3) -> bytes:
    """The server's reply: "A00000000 <challenge> 3 <SteamID> <secure>\\n\\0" (auth 2: no SteamID)."""
    tail = b" %d 90071996842377216 1\n\x00" % auth if auth == 3 else b" %d\n\x00" % auth
    return GOLDSRC_CHALLENGE + b"%d" % challenge + tail


def goldsrc_connect_packet(challenge: int, signed: bool = False, name: bytes = b"player",
                           ticket: bytes = bytes(range(64))) -> bytes:
    """"connect 48 <challenge> "<protinfo>" "<userinfo>"\\n" and the Steam ticket; signed: as %i."""
    if signed and challenge >= 2 ** 31:
        challenge -= 2 ** 32
    return (GOLDSRC_CONNECT + b"%d" % challenge + b' "\\prot\\3\\unique\\-1\\raw\\steam" "\\name\\' + name
            + b'\\rate\\25000"\n' + ticket)
