"""A player of the VM lab: traffic from the client namespace to the anycast service.

Run inside the players' namespace (``ip netns exec ae-client``) with the project's venv (it
has python-a2s). Every command prints one JSON object, which molecule's verify asserts on and
``make lab`` shows. Sources are addresses of the client namespace (verify puts the allow- and
deny-list ones on its ``lo``); the target is the game service of lab/topology.yml.

  echo       N UDP datagrams ``echo <n>`` to the game port, the echoes counted
  tcp        TCP connections to the game port from the player's own kernel stack, one after the
             other (--connects), each connect's delay and a line echoed (the first connection of
             a source through SYN authentication pays the POP's round trip); --hold keeps the last
             one open as an echo session, a line every --interval, until SIGTERM or --hold seconds
  a2s        an A2S_INFO query with python-a2s (challenge and all)
  a2s-burst  one challenge, then N A2S_INFO requests carrying it, as fast as the POP takes them
  spoof      what a spoofer's victim receives: bare requests and forged challenges, bytes in/out
  flood      UDP the server does not answer, above the rate limit; then one echo (banned or not)
  stream     a steady numbered UDP stream for a while; loss and the longest gap (failover, drain)
  punch-wait wait on a UDP port for the game server's ``punch``; answer it with N datagrams at a
             rate above the limit (a punched flow is not rate limited)
  join       the Source engine's connect, no A2S first: ``q`` getchallenge, the server's ``A``
             challenge, ``k`` connect echoing it, ``B`` accepted (docs/game-protocols.md); then
             the numbered stream of ``stream`` from the same port, if --stream is given
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import struct
import sys
import time

INFO_REQUEST = b"\xff\xff\xff\xffTSource Engine Query\x00"
CHALLENGE = b"\xff\xff\xff\xffA"


def udp_socket(source: str, port: int = 0, timeout: float = 1.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((source, port))
    sock.settimeout(timeout)
    return sock


def drain(sock: socket.socket, until: float) -> list[bytes]:
    """Every datagram that arrives before ``until`` (monotonic)."""
    got = []
    while (left := until - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            got.append(sock.recv(4096))
        except socket.timeout:
            break
    return got


def cmd_echo(args) -> dict:
    sock = udp_socket(args.source)
    sent = set()
    for seq in range(args.count):
        payload = b"echo %d" % seq
        sock.sendto(payload, args.target)
        sent.add(payload)
        time.sleep(args.interval)
    replies = drain(sock, time.monotonic() + args.wait)
    return {"sent": len(sent), "received": len(sent & set(replies))}


def tcp_connect(args) -> tuple[socket.socket, float]:
    """A connection from the player's own kernel TCP stack, and how long connect() took (ms): the
    SYN, the SYN-ACK, and, when the POP authenticates the source first, its SYN-ACK, our stack's
    RST and the SYN it sends again (docs/tcp-protection.md)."""
    conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn.settimeout(args.connect_timeout)
    conn.bind((args.source, 0))
    started = time.monotonic()
    try:
        conn.connect(args.target)
    except OSError:
        conn.close()
        raise
    return conn, round((time.monotonic() - started) * 1000, 1)


def echo_line(conn: socket.socket, line: bytes) -> bool:
    conn.sendall(line)
    echoed = b""
    while len(echoed) < len(line):
        chunk = conn.recv(4096)
        if not chunk:
            break
        echoed += chunk
    return echoed == line


def hold_session(conn: socket.socket, args) -> dict:
    """Keep an echo session open: a numbered line every interval until --hold seconds have passed
    or SIGTERM comes, the echoes read as they come. The session survived when every line came
    back and the connection still echoes at the end (no reset, no close)."""
    stopping = []
    signal.signal(signal.SIGTERM, lambda *dummy: stopping.append(True))
    conn.setblocking(False)
    sent = echoed = 0
    pending = b""
    started = last_echo = time.monotonic()
    longest_silence = 0.0
    error = None
    while not stopping and time.monotonic() - started < args.hold and error is None:
        try:
            conn.sendall(b"session line %d\n" % sent)
            sent += 1
        except BlockingIOError:
            pass
        except OSError as exc:
            error = str(exc)
            break
        until = started + sent * args.interval
        while (left := until - time.monotonic()) > 0 and error is None:
            readable, dummy_w, dummy_x = select.select([conn], [], [], left)
            if not readable:
                continue
            try:
                chunk = conn.recv(65536)
            except OSError as exc:
                error = str(exc)
                break
            if not chunk:
                error = "closed by the peer"
                break
            pending += chunk
            lines = pending.count(b"\n")
            if lines:
                now = time.monotonic()
                longest_silence = max(longest_silence, now - last_echo)
                last_echo = now
                echoed += lines
                pending = pending[pending.rindex(b"\n") + 1:]
    alive = False
    if error is None:
        conn.setblocking(True)
        conn.settimeout(args.wait)
        try:  # what is still on the way comes back first, then this last line
            conn.sendall(b"session last\n")
            deadline = time.monotonic() + args.wait
            while b"session last\n" not in pending and time.monotonic() < deadline:
                chunk = conn.recv(65536)
                if not chunk:
                    error = "closed by the peer"
                    break
                pending += chunk
            echoed += pending.count(b"\n") - (1 if b"session last\n" in pending else 0)
            alive = b"session last\n" in pending
        except OSError as exc:
            error = str(exc)
    return {"sent": sent, "echoed": echoed, "alive": alive, "error": error,
            "seconds": round(time.monotonic() - started, 2), "interval_sec": args.interval,
            "longest_silence_sec": round(max(longest_silence, time.monotonic() - last_echo if not alive else 0), 2)}


def cmd_tcp(args) -> dict:
    """--connects connections one after the other, each connect's delay and a line echoed; with
    --hold, the last one stays open as an echo session (hold_session)."""
    connects = []
    session = None
    for number in range(args.connects):
        if number:
            time.sleep(args.pause)
        started_at = time.time()  # wall clock, to line the connection up with a flood's report
        try:
            conn, connect_ms = tcp_connect(args)
        except OSError as exc:
            connects.append({"connected": False, "error": str(exc), "started_at": round(started_at, 3)})
            continue
        with conn:
            line = b"hello over tcp %d %d\n" % (os.getpid(), number)
            try:
                echoed = echo_line(conn, line)
            except OSError:
                echoed = False
            connects.append({"connected": True, "connect_ms": connect_ms, "echoed": echoed,
                             "port": conn.getsockname()[1], "started_at": round(started_at, 3)})
            if args.hold and number == args.connects - 1 and echoed:
                session = hold_session(conn, args)
    result = {"connects": len(connects), "connected": sum(1 for one in connects if one["connected"]),
              "echoed": bool(connects) and all(one.get("echoed") for one in connects),
              "connect_ms": [one.get("connect_ms") for one in connects], "each": connects}
    if args.hold:
        result["session"] = session
    return result


def cmd_a2s(args) -> dict:
    import a2s  # python-a2s, from the venv  # pylint: disable=import-outside-toplevel
    started = time.monotonic()
    info = a2s.info(args.target, timeout=args.wait)
    return {"server_name": info.server_name, "map_name": info.map_name, "players": info.player_count,
            "max_players": info.max_players, "rtt_ms": round((time.monotonic() - started) * 1000, 1)}


def challenge_for(sock: socket.socket, target) -> bytes:
    for dummy in range(5):
        sock.sendto(INFO_REQUEST, target)
        try:
            reply = sock.recv(4096)
        except socket.timeout:
            continue
        if reply.startswith(CHALLENGE) and len(reply) == 9:
            return reply[5:]
    raise SystemExit("no A2S challenge from %s:%d" % target)


def cmd_a2s_burst(args) -> dict:
    sock = udp_socket(args.source)
    request = INFO_REQUEST + challenge_for(sock, args.target)
    started = time.monotonic()
    answered = 0
    sent = 0
    sock.setblocking(False)
    # In chunks, reading answers in between, so the socket's buffer never overflows.
    while sent < args.count:
        for dummy in range(min(args.chunk, args.count - sent)):
            sock.sendto(request, args.target)
            sent += 1
        time.sleep(args.chunk / args.rate)
        while True:
            try:
                if sock.recv(4096).startswith(b"\xff\xff\xff\xffI"):
                    answered += 1
            except BlockingIOError:
                break
    answered += sum(1 for reply in drain(sock, time.monotonic() + args.wait) if reply.startswith(b"\xff\xff\xff\xffI"))
    return {"sent": sent, "answered": answered, "seconds": round(time.monotonic() - started, 2)}


def cmd_spoof(args) -> dict:
    """The packets a spoofer sends in a victim's name, sent from the victim's address: whatever
    comes back is what the victim would receive."""
    sock = udp_socket(args.source)
    sent_bytes = 0
    for dummy in range(args.count):
        sock.sendto(INFO_REQUEST, args.target)                  # asks for a challenge
        sock.sendto(INFO_REQUEST + os.urandom(4), args.target)  # a guessed cookie
        sent_bytes += 2 * len(INFO_REQUEST) + 4
        time.sleep(0.01)
    replies = drain(sock, time.monotonic() + args.wait)
    return {"sent_bytes": sent_bytes, "received_bytes": sum(len(reply) for reply in replies),
            "received_info": sum(1 for reply in replies if reply.startswith(b"\xff\xff\xff\xffI"))}


def cmd_flood(args) -> dict:
    sock = udp_socket(args.source)
    started = time.monotonic()
    for seq in range(args.count):
        sock.sendto(b"flood %d" % seq, args.target)
        pause = started + (seq + 1) / args.rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    seconds = time.monotonic() - started
    time.sleep(0.5)
    sock.sendto(b"echo after the flood", args.target)
    after = drain(sock, time.monotonic() + args.wait)
    return {"sent": args.count, "seconds": round(seconds, 2), "answered_after": b"echo after the flood" in after}


def cmd_stream(args) -> dict:
    """Numbered datagrams every interval for duration seconds (or until SIGTERM), from one source
    port; the gap is the longest run of lost datagrams, in seconds."""
    stopping = []
    signal.signal(signal.SIGTERM, lambda *dummy: stopping.append(True))
    sock = udp_socket(args.source, args.port)
    sock.setblocking(False)
    count = int(args.duration / args.interval)
    received = set()
    started = time.monotonic()
    # Wall-clock time of datagram 0: datagram N left at started_at + N * interval, so a check can
    # line the lost numbers up with what else happened then (another process's clock, same host).
    started_at = time.time()
    for seq in range(count):
        if stopping:
            count = seq
            break
        sock.sendto(b"echo stream %d" % seq, args.target)
        while True:
            try:
                reply = sock.recv(4096)
            except BlockingIOError:
                break
            if reply.startswith(b"echo stream "):
                received.add(int(reply.split()[2]))
        pause = started + (seq + 1) * args.interval - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    sock.setblocking(True)
    for reply in drain(sock, time.monotonic() + args.wait):
        if reply.startswith(b"echo stream "):
            received.add(int(reply.split()[2]))
    longest = run = 0
    for seq in range(count):
        run = 0 if seq in received else run + 1
        longest = max(longest, run)
    return {"sent": count, "received": len(received), "lost": count - len(received),
            "longest_gap_sec": round(longest * args.interval, 2), "interval_sec": args.interval,
            "started_at": round(started_at, 3),
            "lost_seqs": [seq for seq in range(count) if seq not in received][:200]}


def cmd_punch_wait(args) -> dict:
    sock = udp_socket(args.source, args.port, timeout=args.wait)
    try:
        data, peer = sock.recvfrom(4096)
    except socket.timeout:
        return {"punched": False}
    started = time.monotonic()
    for seq in range(args.replies):
        sock.sendto(b"punch-reply %d" % seq, peer)
        pause = started + (seq + 1) / args.rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    return {"punched": data == b"punch", "from": "%s:%d" % peer, "replies": args.replies}


def source_getchallenge(nonce: int) -> bytes:
    """A2S_GETCHALLENGE 'q': the client's nonce and the engine's padding (20 bytes)."""
    return b"\xff\xff\xff\xffq" + struct.pack("<I", nonce) + b"0000000000\x00"


def source_connect(challenge: int, nonce: int, auth: int, name: bytes = b"lab-joiner") -> bytes:
    """C2S_CONNECT 'k': protocol 24, the server's auth protocol, its challenge, our nonce, name,
    password, product version, then a Steam ticket (length and bytes; the stand-in ignores it)."""
    ticket = os.urandom(64)
    return (b"\xff\xff\xff\xffk" + struct.pack("<IIII", 24, auth, challenge, nonce) + name + b"\x00"
            + b"\x00" + b"1.0.0.0\x00" + struct.pack("<H", len(ticket)) + ticket)


def cmd_join(args) -> dict:
    """Connect the way a Source client does when the player types ``connect ip:port``: retry the
    challenge until the server answers, then the connect, until it accepts or rejects."""
    sock = udp_socket(args.source, args.port, timeout=0.5)
    nonce = struct.unpack("<I", os.urandom(4))[0]
    started = time.monotonic()
    deadline = started + args.wait
    challenge = auth = None
    tries = 0
    while challenge is None and time.monotonic() < deadline:
        tries += 1
        sock.sendto(source_getchallenge(nonce), args.target)
        try:
            reply = sock.recv(4096)
        except socket.timeout:
            continue
        if len(reply) >= 21 and reply[:5] == b"\xff\xff\xff\xffA" and struct.unpack_from("<I", reply, 13)[0] == nonce:
            challenge, auth = struct.unpack_from("<I", reply, 9)[0], struct.unpack_from("<I", reply, 17)[0]
    if challenge is None:
        return {"connected": False, "stage": "challenge", "tries": tries}
    answer = None
    while answer is None and time.monotonic() < deadline:
        tries += 1
        sock.sendto(source_connect(challenge, nonce, auth), args.target)
        try:
            reply = sock.recv(4096)
        except socket.timeout:
            continue
        if reply[:5] in (b"\xff\xff\xff\xffB", b"\xff\xff\xff\xff9") and reply[5:9] == struct.pack("<I", nonce):
            answer = reply[4:5]
    result = {"connected": answer == b"B", "stage": "connect" if answer != b"B" else "connected",
              "rejected": answer == b"9", "tries": tries, "join_ms": round((time.monotonic() - started) * 1000, 1)}
    if answer == b"B" and args.stream:
        sock.close()
        args.duration, args.interval = args.stream, 0.05
        result["stream"] = cmd_stream(args)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="198.51.100.10:27015", help="ip:port of the game service")
    parser.add_argument("--source", default="192.0.2.10", help="the player's address (in the client namespace)")
    parser.add_argument("--wait", type=float, default=2.0, help="seconds to wait for answers at the end")
    commands = parser.add_subparsers(dest="command", required=True)
    echo = commands.add_parser("echo")
    echo.add_argument("--count", type=int, default=10)
    echo.add_argument("--interval", type=float, default=0.05)
    tcp = commands.add_parser("tcp")
    tcp.add_argument("--connects", type=int, default=1, help="connections one after the other")
    tcp.add_argument("--pause", type=float, default=0.2, help="seconds between two connections")
    tcp.add_argument("--connect-timeout", type=float, default=10.0)
    tcp.add_argument("--hold", type=float, default=0,
                     help="keep the last connection open as an echo session this many seconds (or until SIGTERM)")
    tcp.add_argument("--interval", type=float, default=0.1, help="seconds between the session's lines")
    commands.add_parser("a2s")
    burst = commands.add_parser("a2s-burst")
    burst.add_argument("--count", type=int, default=10000)
    burst.add_argument("--rate", type=float, default=2000, help="requests per second")
    burst.add_argument("--chunk", type=int, default=50)
    spoof = commands.add_parser("spoof")
    spoof.add_argument("--count", type=int, default=20)
    flood = commands.add_parser("flood")
    flood.add_argument("--count", type=int, default=600)
    flood.add_argument("--rate", type=float, default=600, help="datagrams per second")
    stream = commands.add_parser("stream")
    stream.add_argument("--duration", type=float, default=30)
    stream.add_argument("--interval", type=float, default=0.05)
    stream.add_argument("--port", type=int, default=41000)
    punch = commands.add_parser("punch-wait")
    punch.add_argument("--port", type=int, default=41100)
    punch.add_argument("--replies", type=int, default=300)
    punch.add_argument("--rate", type=float, default=600, help="datagrams per second")
    join = commands.add_parser("join")
    join.add_argument("--port", type=int, default=41200, help="the player's UDP port (kept for --stream)")
    join.add_argument("--stream", type=float, default=0, help="then stream this many seconds from that port")
    args = parser.parse_args()
    host, port = args.target.rsplit(":", 1)
    args.target = (host, int(port))
    handler = {"echo": cmd_echo, "tcp": cmd_tcp, "a2s": cmd_a2s, "a2s-burst": cmd_a2s_burst, "spoof": cmd_spoof,
               "flood": cmd_flood, "stream": cmd_stream, "punch-wait": cmd_punch_wait, "join": cmd_join}[args.command]
    print(json.dumps(handler(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
