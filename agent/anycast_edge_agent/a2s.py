"""Valve's A2S queries, as far as the POP needs them (little-endian, UDP): INFO, PLAYER, RULES.

* A2S_INFO request: ``FF FF FF FF 54 "Source Engine Query\\0"`` (25 bytes), optionally followed by the
  4 bytes of a challenge (29 bytes);
* A2S_PLAYER / A2S_RULES request: ``FF FF FF FF 55`` / ``56`` and a 4-byte challenge field, which is
  ``FF FF FF FF`` (-1) to ask for a challenge (9 bytes);
* challenge (S2C_CHALLENGE): ``FF FF FF FF 41 <4 bytes>``: resend the request with those 4 bytes;
* replies: ``FF FF FF FF 49`` (info, the fields parsed by ``parse_info``), ``44`` (players:
  ``parse_players``), ``45`` (rules: ``parse_rules``);
* a reply split over several packets starts ``FE FF FF FF`` (header -2, little-endian). The POP never caches
  those: the XDP program answers with one packet, and a split reply does not fit in one
  (``A2S_CACHE_MAX_PAYLOAD`` is 1400 bytes). The queries report them as ``SPLIT`` and the
  refresher leaves the cache alone, so the entry ages out and players reach the server itself.
  (A long player or rules list is the usual case.)

Reference: Valve Developer Community, "Server queries". Only the standard library: this runs on
the POPs.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from dataclasses import dataclass, field

SIMPLE_HEADER = b"\xff\xff\xff\xff"
SPLIT_HEADER = b"\xfe\xff\xff\xff"  # -2 as a little-endian int32, as SIMPLE_HEADER is -1
INFO_REQUEST = SIMPLE_HEADER + b"TSource Engine Query\x00"
PLAYER_REQUEST_TYPE = 0x55
RULES_REQUEST_TYPE = 0x56
ASK_FOR_CHALLENGE = b"\xff\xff\xff\xff"
CHALLENGE_TYPE = 0x41
INFO_TYPE = 0x49
PLAYER_TYPE = 0x44
RULES_TYPE = 0x45

# Extra data flag bits of an info reply.
EDF_PORT = 0x80
EDF_STEAM_ID = 0x10
EDF_SOURCETV = 0x40
EDF_KEYWORDS = 0x20
EDF_GAME_ID = 0x01

# What a reply datagram is. The three queries' names are also the cache's kinds
# (_edge_abi.A2S_KINDS, enum a2s_kind).
INFO = "info"
PLAYER = "player"
RULES = "rules"
QUERIES = (INFO, PLAYER, RULES)
CHALLENGE = "challenge"
SPLIT = "split"
OTHER = "other"
_REPLY_KINDS = {INFO_TYPE: INFO, PLAYER_TYPE: PLAYER, RULES_TYPE: RULES}
_FIELD_REQUEST_TYPES = {PLAYER: PLAYER_REQUEST_TYPE, RULES: RULES_REQUEST_TYPE}


class A2SError(Exception):
    """A reply that is not a well-formed A2S answer."""


def info_request(challenge: bytes | None = None) -> bytes:
    """The A2S_INFO request, with the server's 4 challenge bytes appended when given."""
    if challenge is None:
        return INFO_REQUEST
    if len(challenge) != 4:
        raise ValueError("an A2S challenge is 4 bytes, not %d" % len(challenge))
    return INFO_REQUEST + challenge


def request(query: str, challenge: bytes | None = None) -> bytes:
    """The request of ``query`` (INFO, PLAYER, RULES), carrying the server's challenge when given
    (a PLAYER or RULES request without one asks for one: its field is FF FF FF FF)."""
    if query == INFO:
        return info_request(challenge)
    if challenge is not None and len(challenge) != 4:
        raise ValueError("an A2S challenge is 4 bytes, not %d" % len(challenge))
    field_value = ASK_FOR_CHALLENGE if challenge is None else challenge
    return SIMPLE_HEADER + bytes([_FIELD_REQUEST_TYPES[query]]) + field_value


def classify(datagram: bytes) -> str:
    """INFO, PLAYER, RULES, CHALLENGE, SPLIT or OTHER (too short, unknown type)."""
    if datagram.startswith(SPLIT_HEADER):
        return SPLIT
    if len(datagram) < 5 or not datagram.startswith(SIMPLE_HEADER):
        return OTHER
    if datagram[4] == CHALLENGE_TYPE and len(datagram) >= 9:
        return CHALLENGE
    return _REPLY_KINDS.get(datagram[4], OTHER)


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
            raise A2SError("A2S reply cut short at byte %d" % self.offset)
        values = struct.unpack_from(fmt, self.data, self.offset)
        self.offset += size
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        end = self.data.find(b"\x00", self.offset)
        if end < 0:
            raise A2SError("A2S reply: string at byte %d has no terminator" % self.offset)
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


def parse_players(datagram: bytes) -> list:
    """The players of an ``FF FF FF FF 44`` reply: [{"index", "name", "score", "duration"}].
    Raises A2SError when it is not a complete one (the count's entries must all be there)."""
    if classify(datagram) != PLAYER:
        raise A2SError("not an A2S_PLAYER reply: %r" % datagram[:16])
    reader = _Reader(datagram, 5)
    players = []
    for dummy in range(reader.take("<B")):
        index = reader.take("<B")
        name = reader.string()
        score, duration = reader.take("<if")
        players.append({"index": index, "name": name, "score": score, "duration": duration})
    return players


def parse_rules(datagram: bytes) -> dict:
    """The rules of an ``FF FF FF FF 45`` reply as {name: value}. Raises A2SError when incomplete."""
    if classify(datagram) != RULES:
        raise A2SError("not an A2S_RULES reply: %r" % datagram[:16])
    reader = _Reader(datagram, 5)
    rules = {}
    for dummy in range(reader.take("<H")):
        name = reader.string()
        rules[name] = reader.string()
    return rules


_PARSERS = {INFO: parse_info, PLAYER: parse_players, RULES: parse_rules}


@dataclass
class QueryResult:
    """What one A2S exchange produced.

    kind: the query's own reply kind (INFO, PLAYER or RULES: ``payload`` is the whole reply
    datagram, ``info`` its parsed fields - a dict for INFO and RULES, a list for PLAYER), SPLIT
    (the server answered with a multi-packet reply: alive, but nothing to cache) or None when no
    usable answer came in time (``error`` says why).
    """

    kind: str | None
    payload: bytes = b""
    info: object = field(default_factory=dict)
    challenges: int = 0
    rtt_sec: float = 0.0
    error: str = ""

    @property
    def answered(self) -> bool:
        """The server spoke A2S to us (evidence that it is alive)."""
        return self.kind in QUERIES or self.kind == SPLIT


class _Exchange:
    """One query on its own socket (so its replies are its own, whatever else is in flight)."""

    def __init__(self, query: str, target, source, max_challenges: int):
        self.query = query
        self.target = target
        self.max_challenges = max_challenges
        self.challenges = 0
        self.result = None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if source is not None:
                self.sock.bind(source)
            self.sock.setblocking(False)
            self.sock.sendto(request(query), target)
        except BaseException:
            self.sock.close()
            raise

    def receive(self, started: float) -> None:
        """Read one datagram; set self.result when the exchange is over."""
        try:
            datagram, sender = self.sock.recvfrom(65535)
        except BlockingIOError:
            return
        except ConnectionRefusedError:
            # ICMP port unreachable from the host: nothing listens on the port.
            self.result = QueryResult(None, challenges=self.challenges,
                                      error="%s:%d refused (ICMP port unreachable)" % self.target)
            return
        if sender != self.target:
            return
        kind = classify(datagram)
        if kind == CHALLENGE:
            self.challenges += 1
            if self.challenges > self.max_challenges:
                self.result = QueryResult(None, challenges=self.challenges,
                                          error="%s:%d keeps answering with challenges" % self.target)
                return
            self.sock.sendto(request(self.query, challenge_of(datagram)), self.target)
            return
        rtt = time.monotonic() - started
        if kind == SPLIT:
            self.result = QueryResult(SPLIT, challenges=self.challenges, rtt_sec=rtt)
        elif kind == self.query:
            try:
                parsed = _PARSERS[kind](datagram)
            except A2SError as exc:
                self.result = QueryResult(None, challenges=self.challenges, rtt_sec=rtt, error=str(exc))
                return
            self.result = QueryResult(kind, payload=datagram, info=parsed, challenges=self.challenges, rtt_sec=rtt)
        # anything else (another query's answer, junk) is not this exchange's answer: ignored


def query(target: tuple[str, int], queries=(INFO,), timeout: float = 1.0, source: tuple[str, int] | None = None,
          max_challenges: int = 2) -> dict:
    """Send each of ``queries`` (INFO, PLAYER, RULES) to ``target`` at once, each on its own socket,
    answer up to ``max_challenges`` challenges per query, and return {query: QueryResult}.

    ``source`` binds the sockets (the POP's own tunnel address, so the replies come back to it).
    ``timeout`` bounds the whole exchange, all queries together: a server that ignores one kind
    costs one timeout per refresh, not one per kind. Datagrams from other addresses, and answers
    that are neither a challenge nor the query's own reply, are ignored.
    """
    started = time.monotonic()
    deadline = started + timeout
    exchanges = []
    try:
        for name in queries:
            exchanges.append(_Exchange(name, target, source, max_challenges))
        while True:
            pending = [exchange for exchange in exchanges if exchange.result is None]
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0:
                break
            for sock in select.select([exchange.sock for exchange in pending], [], [], remaining)[0]:
                next(exchange for exchange in pending if exchange.sock is sock).receive(started)
    finally:
        for exchange in exchanges:
            exchange.sock.close()
    results = {}
    for exchange in exchanges:
        results[exchange.query] = exchange.result or QueryResult(
            None, challenges=exchange.challenges,
            error="no A2S_%s reply from %s:%d within %.1f s" % ((exchange.query.upper(),) + target + (timeout,)))
    return results


def query_info(target: tuple[str, int], timeout: float = 1.0, source: tuple[str, int] | None = None,
               max_challenges: int = 2) -> QueryResult:
    """A2S_INFO alone (see ``query``)."""
    return query(target, (INFO,), timeout, source, max_challenges)[INFO]
