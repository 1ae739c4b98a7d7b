"""Valve's A2S_INFO query, as far as the POP needs it (little-endian, UDP).

* request: ``FF FF FF FF 54 "Source Engine Query\\0"`` (25 bytes), optionally followed by the 4 bytes
  of a challenge (29 bytes);
* challenge (S2C_CHALLENGE): ``FF FF FF FF 41 <4 bytes>``: resend the request with those 4 bytes;
* info reply: ``FF FF FF FF 49`` then the fields parsed by ``parse_info``;
* a reply split over several packets starts ``FF FF FF FF FE`` (header -2). The POP never caches
  those: the XDP program answers with one packet, and a split reply does not fit in one
  (``A2S_CACHE_MAX_PAYLOAD`` is 1400 bytes). ``query_info`` reports them as ``SPLIT`` and the
  refresher leaves the cache alone, so the entry ages out and players reach the server itself.

Only the standard library: this runs on the POPs.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from dataclasses import dataclass, field

SIMPLE_HEADER = b"\xff\xff\xff\xff"
SPLIT_HEADER = b"\xff\xff\xff\xfe"
INFO_REQUEST = SIMPLE_HEADER + b"TSource Engine Query\x00"
CHALLENGE_TYPE = 0x41
INFO_TYPE = 0x49

# Extra data flag bits of an info reply.
EDF_PORT = 0x80
EDF_STEAM_ID = 0x10
EDF_SOURCETV = 0x40
EDF_KEYWORDS = 0x20
EDF_GAME_ID = 0x01

# What a reply datagram is.
INFO = "info"
CHALLENGE = "challenge"
SPLIT = "split"
OTHER = "other"


class A2SError(Exception):
    """A reply that is not a well-formed A2S answer."""


def info_request(challenge: bytes | None = None) -> bytes:
    """The A2S_INFO request, with the server's 4 challenge bytes appended when given."""
    if challenge is None:
        return INFO_REQUEST
    if len(challenge) != 4:
        raise ValueError("an A2S challenge is 4 bytes, not %d" % len(challenge))
    return INFO_REQUEST + challenge


def classify(datagram: bytes) -> str:
    """INFO, CHALLENGE, SPLIT or OTHER (too short, unknown type, another query's answer)."""
    if datagram.startswith(SPLIT_HEADER):
        return SPLIT
    if len(datagram) < 5 or not datagram.startswith(SIMPLE_HEADER):
        return OTHER
    if datagram[4] == CHALLENGE_TYPE and len(datagram) >= 9:
        return CHALLENGE
    if datagram[4] == INFO_TYPE:
        return INFO
    return OTHER


def challenge_of(datagram: bytes) -> bytes:
    """The 4 challenge bytes of an S2C_CHALLENGE datagram."""
    if classify(datagram) != CHALLENGE:
        raise A2SError("not an A2S challenge: %r" % datagram[:16])
    return datagram[5:9]


class _Reader:
    def __init__(self, data: bytes, offset: int):
        self.data = data
        self.offset = offset

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.offset + size > len(self.data):
            raise A2SError("A2S_INFO reply cut short at byte %d" % self.offset)
        values = struct.unpack_from(fmt, self.data, self.offset)
        self.offset += size
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        end = self.data.find(b"\x00", self.offset)
        if end < 0:
            raise A2SError("A2S_INFO reply: string at byte %d has no terminator" % self.offset)
        text = self.data[self.offset:end].decode("utf-8", "replace")
        self.offset = end + 1
        return text

    def exhausted(self) -> bool:
        return self.offset >= len(self.data)


def parse_info(datagram: bytes) -> dict:
    """The fields of an ``FF FF FF FF 49`` reply as a dict (names follow Valve's wiki, snake_case).

    Raises A2SError when the datagram is not a complete info reply: the refresher must never cache
    something players' clients cannot parse.
    """
    if classify(datagram) != INFO:
        raise A2SError("not an A2S_INFO reply: %r" % datagram[:16])
    reader = _Reader(datagram, 5)
    info = {"protocol": reader.take("<B")}
    for name in ("name", "map", "folder", "game"):
        info[name] = reader.string()
    info["app_id"] = reader.take("<H")
    info["players"], info["max_players"], info["bots"] = reader.take("<BBB")
    server_type, environment, visibility, vac = reader.take("<BBBB")
    info.update(server_type=chr(server_type), environment=chr(environment),
                password=bool(visibility), vac=bool(vac))
    info["version"] = reader.string()
    info["edf"] = 0 if reader.exhausted() else reader.take("<B")
    if info["edf"] & EDF_PORT:
        info["port"] = reader.take("<H")
    if info["edf"] & EDF_STEAM_ID:
        info["steam_id"] = reader.take("<Q")
    if info["edf"] & EDF_SOURCETV:
        info["sourcetv_port"] = reader.take("<H")
        info["sourcetv_name"] = reader.string()
    if info["edf"] & EDF_KEYWORDS:
        info["keywords"] = reader.string()
    if info["edf"] & EDF_GAME_ID:
        info["game_id"] = reader.take("<Q")
    return info


@dataclass
class QueryResult:
    """What one A2S_INFO exchange produced.

    kind: INFO (``payload`` is the whole reply datagram, ``info`` its fields), SPLIT (the server
    answered with a multi-packet reply: alive, but nothing to cache) or None when no usable
    answer came in time (``error`` says why).
    """

    kind: str | None
    payload: bytes = b""
    info: dict = field(default_factory=dict)
    challenges: int = 0
    rtt_sec: float = 0.0
    error: str = ""

    @property
    def answered(self) -> bool:
        """The server spoke A2S to us (evidence that it is alive)."""
        return self.kind in (INFO, SPLIT)


def query_info(target: tuple[str, int], timeout: float = 1.0, source: tuple[str, int] | None = None,
               max_challenges: int = 2) -> QueryResult:
    """Send A2S_INFO to ``target``, answer up to ``max_challenges`` challenges, return the reply.

    ``source`` binds the socket (the POP's own tunnel address, so the reply comes back to it).
    ``timeout`` bounds the whole exchange. Datagrams from other addresses, and answers that are
    neither a challenge nor an info reply, are ignored (not taken as the server's answer).
    """
    started = time.monotonic()
    deadline = started + timeout
    challenges = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        if source is not None:
            sock.bind(source)
        sock.setblocking(False)
        sock.sendto(info_request(), target)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return QueryResult(None, challenges=challenges,
                                   error="no A2S_INFO reply from %s:%d within %.1f s" % (target + (timeout,)))
            readable = select.select([sock], [], [], remaining)[0]
            if not readable:
                continue
            try:
                datagram, sender = sock.recvfrom(65535)
            except ConnectionRefusedError:
                # ICMP port unreachable from the host: nothing listens on the port.
                return QueryResult(None, challenges=challenges,
                                   error="%s:%d refused (ICMP port unreachable)" % target)
            if sender != target:
                continue
            kind = classify(datagram)
            if kind == CHALLENGE:
                challenges += 1
                if challenges > max_challenges:
                    return QueryResult(None, challenges=challenges,
                                       error="%s:%d keeps answering with challenges" % target)
                sock.sendto(info_request(challenge_of(datagram)), target)
                continue
            rtt = time.monotonic() - started
            if kind == SPLIT:
                return QueryResult(SPLIT, challenges=challenges, rtt_sec=rtt)
            if kind == INFO:
                try:
                    info = parse_info(datagram)
                except A2SError as exc:
                    return QueryResult(None, challenges=challenges, rtt_sec=rtt, error=str(exc))
                return QueryResult(INFO, payload=datagram, info=info, challenges=challenges, rtt_sec=rtt)
