"""A tiny A2S game-server stand-in for the agent's tests (unit and integration).

``A2SResponder(address, port)`` answers A2S_INFO, A2S_PLAYER and A2S_RULES on a UDP socket in a
thread, the way a Source server does since Valve's December 2020 change when
``demand_challenge`` is on: a bare INFO request (or a PLAYER/RULES request whose field is
FF FF FF FF) gets ``FF FF FF FF 41 <challenge>``, and only a request carrying that challenge gets
the reply (PLAYER and RULES always demand it, as Source servers do). ``split`` names the queries
answered with a multi-packet reply instead (``True``: INFO); ``answer`` the ones answered at all
(an old server that knows only INFO). It counts what it saw, so tests can assert how many
queries reached the "game server" (the cache must bound that).

Also importable as a module path by the agent's tests: tests/ is on sys.path because
tests/conftest.py is a rootless conftest (pytest's prepend import mode puts its folder first).
"""

from __future__ import annotations

import collections
import os
import socket
import struct
import sys
import threading
from pathlib import Path

# The agent is a plain package under agent/; its tests import it from the checkout.
AGENT_DIR = Path(__file__).resolve().parent.parent / "agent"
if str(AGENT_DIR) not in sys.path:
    sys.path.insert(0, str(AGENT_DIR))

INFO_REQUEST = b"\xff\xff\xff\xffTSource Engine Query\x00"
FIELD_REQUESTS = {0x55: "player", 0x56: "rules"}
DEFAULT_PLAYERS = [("alice", 12, 301.5), ("bob", 7, 120.0), ("carol", 0, 3.25)]
DEFAULT_RULES = {"mp_friendlyfire": "0", "sv_cheats": "0", "mp_timelimit": "30", "sv_tags": "anycast,edge"}

DEFAULT_INFO = {
    "protocol": 17, "name": "anycast.edge test server", "map": "de_dust2", "folder": "csgo",
    "game": "Counter-Strike 2", "app_id": 730, "players": 7, "max_players": 32, "bots": 1,
    "server_type": "d", "environment": "l", "password": False, "vac": True, "version": "1.40.1.2",
    "port": 27015, "steam_id": 90071996842377216, "keywords": "anycast,edge", "game_id": 730,
}


def build_info_reply(info: dict) -> bytes:
    """An ``FF FF FF FF 49`` datagram from the fields of ``info`` (see DEFAULT_INFO)."""

    def cstr(text: str) -> bytes:
        return text.encode() + b"\x00"

    edf = 0
    tail = b""
    if "port" in info:
        edf |= 0x80
        tail += struct.pack("<H", info["port"])
    if "steam_id" in info:
        edf |= 0x10
        tail += struct.pack("<Q", info["steam_id"])
    if "sourcetv_port" in info:
        edf |= 0x40
        tail += struct.pack("<H", info["sourcetv_port"]) + cstr(info["sourcetv_name"])
    if "keywords" in info:
        edf |= 0x20
        tail += cstr(info["keywords"])
    if "game_id" in info:
        edf |= 0x01
        tail += struct.pack("<Q", info["game_id"])
    return (b"\xff\xff\xff\xffI" + struct.pack("<B", info["protocol"])
            + b"".join(cstr(info[name]) for name in ("name", "map", "folder", "game"))
            + struct.pack("<HBBB", info["app_id"], info["players"], info["max_players"], info["bots"])
            + info["server_type"].encode() + info["environment"].encode()
            + struct.pack("<BB", int(info["password"]), int(info["vac"]))
            + cstr(info["version"]) + struct.pack("<B", edf) + tail)


def build_players_reply(players) -> bytes:
    """An ``FF FF FF FF 44`` datagram: count, then index, name, score (long), duration (float)."""
    return (b"\xff\xff\xff\xffD" + struct.pack("<B", len(players))
            + b"".join(struct.pack("<B", index) + name.encode() + b"\x00" + struct.pack("<if", score, duration)
                       for index, (name, score, duration) in enumerate(players)))


def build_rules_reply(rules: dict) -> bytes:
    """An ``FF FF FF FF 45`` datagram: count (short), then name and value strings."""
    return (b"\xff\xff\xff\xffE" + struct.pack("<H", len(rules))
            + b"".join(name.encode() + b"\x00" + value.encode() + b"\x00" for name, value in rules.items()))


class A2SResponder:
    """Answer A2S queries on ``(address, port)`` until ``stop()``. Port 0 picks a free port."""

    def __init__(self, address: str = "127.0.0.1", port: int = 0, demand_challenge: bool = True,
                 info: dict | None = None, split=False, answer=("info", "player", "rules")):
        self.demand_challenge = demand_challenge
        self.info = dict(DEFAULT_INFO if info is None else info)
        self.players = list(DEFAULT_PLAYERS)
        self.rules = dict(DEFAULT_RULES)
        self.split = ("info",) if split is True else tuple(split or ())
        self.answer = tuple(answer)
        self.challenge = os.urandom(4)
        self.requests = 0            # every A2S_INFO request received
        self.challenged = 0          # bare INFO requests answered with a challenge
        self.answered = 0            # info replies sent
        self.queries = collections.Counter()   # (query, "request" | "challenged" | "answered") -> count, all kinds
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((address, port))
        self.address = self._sock.getsockname()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def reply(self) -> bytes:
        return build_info_reply(self.info)

    def reply_of(self, query: str) -> bytes:
        """The reply datagram of "info", "player" or "rules"."""
        if query == "player":
            return build_players_reply(self.players)
        if query == "rules":
            return build_rules_reply(self.rules)
        return self.reply

    def start(self) -> "A2SResponder":
        self._sock.settimeout(0.05)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=2)
        self._sock.close()

    def __enter__(self) -> "A2SResponder":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                datagram, client = self._sock.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:
                return
            if datagram.startswith(INFO_REQUEST):
                query, echoed, demand = "info", datagram[len(INFO_REQUEST):len(INFO_REQUEST) + 4], self.demand_challenge
            elif len(datagram) == 9 and datagram[:4] == b"\xff" * 4 and datagram[4] in FIELD_REQUESTS:
                query, echoed, demand = FIELD_REQUESTS[datagram[4]], datagram[5:9], True
            else:
                continue
            if query not in self.answer:
                continue
            self.queries[query, "request"] += 1
            if query == "info":
                self.requests += 1
            if demand and echoed != self.challenge:
                self.queries[query, "challenged"] += 1
                if query == "info":
                    self.challenged += 1
                self._sock.sendto(b"\xff\xff\xff\xffA" + self.challenge, client)
                continue
            self.queries[query, "answered"] += 1
            if query == "info":
                self.answered += 1
            if query in self.split:
                self._send_split(client, self.reply_of(query))
            else:
                self._sock.sendto(self.reply_of(query), client)

    def _send_split(self, client, body: bytes) -> None:
        """Two packets of Source's multi-packet format: header -2 (FE FF FF FF), id, total, number, size."""
        half = len(body) // 2
        for number, chunk in enumerate((body[:half], body[half:])):
            self._sock.sendto(b"\xfe\xff\xff\xff" + struct.pack("<IBBH", 77, 2, number, 1248) + chunk, client)


def main(argv=None) -> int:
    """``python tests/a2s_responder.py ADDRESS PORT [--no-challenge] [--split]``: serve until killed.

    For tests that need the game server in another network namespace (``ip netns exec NS ...``).
    Prints ``ready`` once the socket is bound.
    """
    import argparse  # pylint: disable=import-outside-toplevel
    import signal  # pylint: disable=import-outside-toplevel

    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("port", type=int)
    parser.add_argument("--no-challenge", action="store_true")
    parser.add_argument("--split", action="append", default=[], choices=("info", "player", "rules"),
                        help="answer this query with a split reply (repeatable)")
    parser.add_argument("--only", action="append", choices=("info", "player", "rules"),
                        help="answer only this query (repeatable; default: all three)")
    args = parser.parse_args(argv)
    responder = A2SResponder(args.address, args.port, demand_challenge=not args.no_challenge, split=args.split,
                             answer=args.only or ("info", "player", "rules"))
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *dummy: stopped.set())
    responder.start()
    print("ready", flush=True)
    stopped.wait()
    responder.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
