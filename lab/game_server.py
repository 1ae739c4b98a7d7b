"""The lab's stand-in game server (runs on the backend VM; Python standard library only).

It binds the service's anycast address (the tc_mapper role puts it on ``lo``), as a real game
server behind anycast.edge does, and speaks just enough to test the whole path:

* UDP ``A2S_INFO``: a bare request gets a challenge ``FF FF FF FF 41 <4 bytes>``; a request that
  carries a challenge gets the info reply (like a Source server with ``demand_challenge``).
  Any 4-byte challenge is accepted: the POPs answer bare requests with their own cookies, and a
  request the POP forwards (cache empty or stale) carries the POP's cookie, not ours.
* UDP ``A2S_PLAYER`` / ``A2S_RULES`` (``FF FF FF FF 55|56`` + a 4-byte field): a field of
  ``FF FF FF FF`` gets a challenge, any other gets the lab's player list / rules (the POPs'
  agents refresh all three kinds of their caches; counted apart from ``udp_other``, which stays
  what a flood looks like).
* The Source engine's connectionless connect (docs/game-protocols.md): ``q`` getchallenge gets an
  ``A`` S2C_CHALLENGE carrying this address's challenge (a keyed hash of the client's address, as
  a Source server derives it), a ``k`` connect echoing it gets ``B`` S2C_CONNECTION and any other
  challenge ``9`` S2C_CONNREJECT. The POP reads that challenge on the way back and verifies the
  player whose connect echoes it; a spoofer never sees it. Connected players are counted by
  address (``connected_by_source``).
* UDP datagrams starting with ``echo``: sent back unchanged (players' traffic).
* TCP: every byte received is echoed back. Every TCP segment that reaches this host for the game
  port is also counted by what it is (``tcp_segment``: syn, syn_ack, ack, data, fin, rst) and by
  its source's /24 (``tcp_by_network``), from a raw socket that sees it before the kernel's TCP
  does (``watch_tcp``): what a SYN or ACK flood put on the game server, the accepted connections
  being only what completed a handshake.
* A command on ``127.0.0.1:27099`` (from the VM itself): ``punch <ip> <port>`` sends ``punch`` to
  that address from the game socket - a flow the server opens, as a Source server's master-server
  heartbeat does from its game port; the POP records a port punch when it passes, and the peer's
  answers (``punch-reply ...``, counted by peer) come back in without rate limits - and ``stats``
  answers with the counters as JSON (A2S info requests by source address, challenges, echoes,
  TCP connections, the punched peers' answers).

``lab/labctl.py up`` copies this file to the backend and runs it (``serve``) as a transient
systemd unit before the rollout: the socket is bound with ``IP_FREEBIND``, so it serves as soon
as the rollout puts the address on ``lo``. ``ask stats`` / ``ask punch <ip> <port>`` send a
command and print the answer (molecule's verify runs them on the backend).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import ipaddress
import json
import os
import socket
import struct
import threading

INFO_REQUEST = b"\xff\xff\xff\xffTSource Engine Query\x00"
CHALLENGE_REPLY = b"\xff\xff\xff\xffA"
FIELD_QUERIES = {0x55: "a2s_player", 0x56: "a2s_rules"}
PLAYERS_REPLY = (b"\xff\xff\xff\xffD\x02" + b"\x00lab-player-1\x00" + struct.pack("<if", 5, 60.0)
                 + b"\x01lab-player-2\x00" + struct.pack("<if", 3, 30.0))
RULES_REPLY = b"\xff\xff\xff\xffE\x02\x00" + b"mp_friendlyfire\x000\x00" + b"sv_tags\x00anycast,edge,lab\x00"
CONTROL_PORT = 27099
# The Source engine's connectionless connect (docs/game-protocols.md has the layouts).
SOURCE_GETCHALLENGE = b"\xff\xff\xff\xffq"
SOURCE_CONNECT = b"\xff\xff\xff\xffk"
SOURCE_CHALLENGE_MAGIC = 0x5A4F4933
PROTOCOL_STEAM = 3
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)


def info_reply(port: int) -> bytes:
    """A2S_INFO reply: protocol 17, the lab's names, 3/32 players, a dedicated Linux server."""
    def cstr(text: str) -> bytes:
        return text.encode() + b"\x00"
    return (b"\xff\xff\xff\xffI" + bytes([17]) + cstr("anycast.edge lab server") + cstr("de_anycast")
            + cstr("csgo") + cstr("Counter-Strike 2") + struct.pack("<H", 730) + bytes([3, 32, 0])
            + b"dl" + bytes([0, 1]) + cstr("1.40.0.0") + bytes([0x80]) + struct.pack("<H", port))


def tcp_segment(packet: bytes, port: int) -> tuple[str, str] | None:
    """(source address, kind) of an IPv4 packet that carries a TCP segment to ``port``, else None.
    The kinds: syn (no ACK), syn_ack, rst, fin, data (payload), ack (a bare ACK)."""
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_TCP:
        return None
    header = (packet[0] & 0x0F) * 4
    total = struct.unpack_from("!H", packet, 2)[0]
    if len(packet) < header + 20 or struct.unpack_from("!H", packet, header + 2)[0] != port:
        return None
    flags = packet[header + 13]
    payload = min(total, len(packet)) - header - (packet[header + 12] >> 4) * 4
    if flags & 0x04:
        kind = "rst"
    elif flags & 0x02:
        kind = "syn_ack" if flags & 0x10 else "syn"
    elif flags & 0x01:
        kind = "fin"
    else:
        kind = "data" if payload > 0 else "ack"
    return socket.inet_ntoa(packet[12:16]), kind


class GameServer:
    def __init__(self, address: str, port: int, control_port: int = CONTROL_PORT):
        self.port = port
        self.lock = threading.Lock()
        self.counters = collections.Counter()
        self.info_by_source = collections.Counter()
        self.punch_replies = collections.Counter()
        self.connected_by_source = collections.Counter()
        self.tcp_by_network = collections.defaultdict(collections.Counter)
        self.challenge_key = os.urandom(16)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.udp.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        self.udp.bind((address, port))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        self.tcp.bind((address, port))
        self.tcp.listen(64)
        self.control = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.control.bind(("127.0.0.1", control_port))

    def count(self, name: str, by: collections.Counter | None = None, key: str = "") -> None:
        with self.lock:
            self.counters[name] += 1
            if by is not None:
                by[key] += 1

    def serve_udp(self) -> None:
        while True:
            data, peer = self.udp.recvfrom(2048)
            if data == INFO_REQUEST:
                self.count("a2s_challenges")
                self.udp.sendto(CHALLENGE_REPLY + os.urandom(4), peer)
            elif len(data) == len(INFO_REQUEST) + 4 and data.startswith(INFO_REQUEST):
                self.count("a2s_info", self.info_by_source, peer[0])
                self.udp.sendto(info_reply(self.port), peer)
            elif len(data) == 9 and data[:4] == b"\xff\xff\xff\xff" and data[4] in FIELD_QUERIES:
                if data[5:9] == b"\xff\xff\xff\xff":
                    self.count("a2s_challenges")
                    self.udp.sendto(CHALLENGE_REPLY + os.urandom(4), peer)
                else:
                    self.count(FIELD_QUERIES[data[4]])
                    self.udp.sendto(PLAYERS_REPLY if data[4] == 0x55 else RULES_REPLY, peer)
            elif len(data) == 20 and data.startswith(SOURCE_GETCHALLENGE) and data[9:] == b"0000000000\x00":
                self.count("handshake_challenges")
                self.udp.sendto(self.source_challenge(peer, data[5:9]), peer)
            elif len(data) >= 24 and data.startswith(SOURCE_CONNECT):
                self.udp.sendto(self.source_connect(peer, data), peer)
            elif data.startswith(b"echo"):
                self.count("udp_echo")
                self.udp.sendto(data, peer)
            elif data.startswith(b"punch-reply"):
                self.count("punch_reply", self.punch_replies, "%s:%d" % peer)
            else:
                self.count("udp_other")  # unanswered: what a flood looks like to the server

    def challenge_of(self, address: str) -> int:
        """The challenge of a client address: the same for every request from it, unknowable to
        anyone who does not receive it (a keyed hash, as a Source server derives it)."""
        digest = hashlib.blake2s(address.encode(), key=self.challenge_key, digest_size=4).digest()
        return struct.unpack("<I", digest)[0]

    def source_challenge(self, peer, client_nonce: bytes) -> bytes:
        """S2C_CHALLENGE: magic, our challenge, the client's nonce back, PROTOCOL_STEAM, the Steam
        fields (key length 0, an anonymous game server's SteamID, not VAC secured) and the padding."""
        return (b"\xff\xff\xff\xffA" + struct.pack("<II", SOURCE_CHALLENGE_MAGIC, self.challenge_of(peer[0]))
                + client_nonce + struct.pack("<IHQB", PROTOCOL_STEAM, 0, 90071996842377216, 0) + b"000000\x00")

    def source_connect(self, peer, data: bytes) -> bytes:
        """C2S_CONNECT: S2C_CONNECTION ('B', the client's nonce, padding) when it echoes the
        address's challenge, S2C_CONNREJECT ('9', the nonce, a reason) otherwise."""
        dummy_protocol, dummy_auth, challenge, client_nonce = struct.unpack_from("<IIII", data, 5)
        nonce = struct.pack("<I", client_nonce)
        if challenge != self.challenge_of(peer[0]):
            self.count("handshake_rejects")
            return b"\xff\xff\xff\xff9" + nonce + b"#GameUI_ServerRejectBadChallenge\x00"
        self.count("handshake_connects", self.connected_by_source, peer[0])
        return b"\xff\xff\xff\xffB" + nonce + b"0000000000\x00"

    def serve_tcp(self) -> None:
        while True:
            connection, dummy_peer = self.tcp.accept()
            self.count("tcp_connections")
            threading.Thread(target=self.echo_tcp, args=(connection,), daemon=True).start()

    def echo_tcp(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(30)
            try:
                while data := connection.recv(4096):
                    connection.sendall(data)
            except OSError:
                pass

    def count_tcp(self, packet: bytes) -> None:
        segment = tcp_segment(packet, self.port)
        if segment is None:
            return
        source, kind = segment
        network = str(ipaddress.ip_network(source + "/24", strict=False))
        with self.lock:
            self.counters["tcp_" + kind] += 1
            self.tcp_by_network[network][kind] += 1

    def watch_tcp(self, watcher: socket.socket) -> None:
        """Count every TCP segment this host receives for the game port: ``watcher`` is a raw TCP
        socket (root; opened before the threads start, so that a failure stops the server), which
        gets a copy of each before the kernel's TCP handles it, a SYN its listen queue would refuse too."""
        while True:
            self.count_tcp(watcher.recv(65535))

    def serve_control(self) -> None:
        while True:
            data, peer = self.control.recvfrom(512)
            words = data.decode(errors="replace").split()
            if words[:1] == ["punch"] and len(words) == 3:
                target = (words[1], int(words[2]))
                try:
                    self.udp.sendto(b"punch", target)
                    answer = {"sent": True}
                except OSError as exc:
                    answer = {"sent": False, "error": str(exc)}
            elif words == ["stats"]:
                with self.lock:
                    answer = {"counters": dict(self.counters), "a2s_info_by_source": dict(self.info_by_source),
                              "punch_replies": dict(self.punch_replies),
                              "connected_by_source": dict(self.connected_by_source),
                              "tcp_by_network": {network: dict(kinds) for network, kinds in self.tcp_by_network.items()}}
            else:
                answer = {"error": "commands: stats | punch <ip> <port>"}
            self.control.sendto(json.dumps(answer).encode(), peer)


def ask(command: list[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(" ".join(command).encode(), ("127.0.0.1", CONTROL_PORT))
        print(sock.recv(65536).decode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the game server")
    serve.add_argument("--address", required=True, help="the service's anycast address (on lo)")
    serve.add_argument("--port", type=int, default=27015)
    asking = commands.add_parser("ask", help="send a command to the running server, print its answer")
    asking.add_argument("words", nargs="+", help="stats | punch <ip> <port>")
    args = parser.parse_args()
    if args.command == "ask":
        ask(args.words)
        return
    server = GameServer(args.address, args.port)
    watcher = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    watcher.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    threading.Thread(target=server.watch_tcp, args=(watcher,), daemon=True).start()
    for target in (server.serve_udp, server.serve_tcp):
        threading.Thread(target=target, daemon=True).start()
    server.serve_control()


if __name__ == "__main__":
    main()
