"""A tiny A2S_INFO game-server stand-in for the agent's tests (unit and integration).

``A2SResponder(address, port)`` answers A2S_INFO on a UDP socket in a thread, the way a Source
server does since Valve's December 2020 change when ``demand_challenge`` is on: a bare request
gets ``FF FF FF FF 41 <challenge>``, and only a request carrying that challenge gets the info
reply. ``split=True`` answers with a multi-packet reply instead. It counts what it saw, so tests
can assert how many queries reached the "game server" (the cache must bound that).

Also importable as a module path by the agent's tests: tests/ is on sys.path because
tests/conftest.py is a rootless conftest (pytest's prepend import mode puts its folder first).
"""

from __future__ import annotations

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


class A2SResponder:
    """Answer A2S_INFO on ``(address, port)`` until ``stop()``. Port 0 picks a free port."""

    def __init__(self, address: str = "127.0.0.1", port: int = 0, demand_challenge: bool = True,
                 info: dict | None = None, split: bool = False):
        self.demand_challenge = demand_challenge
        self.info = dict(DEFAULT_INFO if info is None else info)
        self.split = split
        self.challenge = os.urandom(4)
        self.requests = 0            # every A2S_INFO request received
        self.challenged = 0          # bare requests answered with a challenge
        self.answered = 0            # info replies sent
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((address, port))
        self.address = self._sock.getsockname()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def reply(self) -> bytes:
        return build_info_reply(self.info)

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
            if not datagram.startswith(INFO_REQUEST):
                continue
            self.requests += 1
            echoed = datagram[len(INFO_REQUEST):len(INFO_REQUEST) + 4]
            if self.demand_challenge and echoed != self.challenge:
                self.challenged += 1
                self._sock.sendto(b"\xff\xff\xff\xffA" + self.challenge, client)
                continue
            self.answered += 1
            if self.split:
                self._send_split(client)
            else:
                self._sock.sendto(self.reply, client)

    def _send_split(self, client) -> None:
        """Two packets of Source's multi-packet format: FE header, id, total, number, size."""
        body = self.reply
        half = len(body) // 2
        for number, chunk in enumerate((body[:half], body[half:])):
            self._sock.sendto(b"\xff\xff\xff\xfe" + struct.pack("<IBBH", 77, 2, number, 1248) + chunk, client)


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
    parser.add_argument("--split", action="store_true")
    args = parser.parse_args(argv)
    responder = A2SResponder(args.address, args.port, demand_challenge=not args.no_challenge, split=args.split)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *dummy: stopped.set())
    responder.start()
    print("ready", flush=True)
    stopped.wait()
    responder.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
