"""The lab's TCP client and the game server's TCP counters (lab/player.py tcp, lab/game_server.py)
on the loopback.

The lab's TCP flood check reads from ``player.py tcp`` each connection's delay and whether an echo
session held through the floods, and from the game server's ``tcp_by_network`` how many flood
segments reached its host, by kind: both must say what happened. No raw socket here (no root):
the game server's classification is checked on the segments scapy builds.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
import time

import pytest
from scapy.layers.inet import IP, TCP

from lab_modules import game_server, player


@pytest.fixture
def server():
    """The stand-in's TCP echo on 127.0.0.1, on a free port."""
    instance = game_server.GameServer("127.0.0.1", 0, control_port=0)
    instance.port = instance.tcp.getsockname()[1]

    def until_closed():
        try:
            instance.serve_tcp()
        except OSError:
            pass  # the socket closed under accept(): the test is over

    threading.Thread(target=until_closed, daemon=True).start()
    yield instance
    for sock in (instance.udp, instance.tcp, instance.control):
        sock.close()


def tcp_args(server, **overrides):
    fields = dict(source="127.0.0.1", target=("127.0.0.1", server.port), wait=2.0, connects=1, pause=0.0,
                  connect_timeout=5.0, hold=0.0, interval=0.05)
    fields.update(overrides)
    return argparse.Namespace(**fields)


def test_each_connection_is_timed_and_echoed(server):
    result = player.cmd_tcp(tcp_args(server, connects=3))
    assert result["connects"] == result["connected"] == 3 and result["echoed"]
    assert len(result["connect_ms"]) == 3 and all(0 <= delay < 5000 for delay in result["connect_ms"])
    assert len({one["port"] for one in result["each"]}) == 3  # three connections, not one
    assert all(abs(one["started_at"] - time.time()) < 60 for one in result["each"])
    assert server.counters["tcp_connections"] == 3


def test_a_refused_connection_is_reported_not_raised(server):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening: connect() is refused
        result = player.cmd_tcp(tcp_args(server, target=("127.0.0.1", port), connects=2))
    assert result["connected"] == 0 and not result["echoed"]
    assert all("refused" in one["error"].lower() for one in result["each"])


def test_a_held_session_echoes_every_line_until_stopped(server):
    result = player.cmd_tcp(tcp_args(server, hold=0.6, interval=0.05))
    session = result["session"]
    assert session["alive"] and session["error"] is None
    assert session["sent"] >= 10 and session["echoed"] == session["sent"]
    assert session["longest_silence_sec"] < 0.5


def test_sigterm_ends_a_held_session_with_its_report(server):
    threading.Timer(0.4, os.kill, (os.getpid(), signal.SIGTERM)).start()
    previous = signal.getsignal(signal.SIGTERM)
    try:
        started = time.monotonic()
        session = player.cmd_tcp(tcp_args(server, hold=30, interval=0.05))["session"]
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert time.monotonic() - started < 5
    assert session["alive"] and session["echoed"] == session["sent"] > 0


def test_a_session_the_server_closes_did_not_survive(server):
    """What a reset or a close of the session looks like in the report (the echo's connections
    are cut by closing them server side)."""
    accepted = []
    original = server.echo_tcp

    def echo_then_cut(connection):
        accepted.append(connection)
        threading.Timer(0.3, connection.shutdown, (socket.SHUT_RDWR,)).start()
        original(connection)

    server.echo_tcp = echo_then_cut
    session = player.cmd_tcp(tcp_args(server, hold=2.0, interval=0.05))["session"]
    assert accepted and not session["alive"] and session["error"]


@pytest.mark.parametrize("flags, payload, kind", [
    ("S", b"", "syn"), ("SA", b"", "syn_ack"), ("A", b"", "ack"), ("PA", b"data", "data"),
    ("FA", b"", "fin"), ("R", b"", "rst"), ("RA", b"", "rst"), ("SR", b"", "rst"),
])
def test_the_game_server_tells_segments_apart(flags, payload, kind):
    segment = bytes(IP(src="198.18.3.4", dst="198.51.100.10") / TCP(sport=1234, dport=27015, flags=flags) / payload)
    assert game_server.tcp_segment(segment, 27015) == ("198.18.3.4", kind)


def test_the_game_server_counts_only_its_port_by_kind_and_network():
    instance = game_server.GameServer("127.0.0.1", 0, control_port=0)
    try:
        instance.port = 27015
        for source, dport, flags in (("198.18.3.4", 27015, "S"), ("198.18.3.9", 27015, "S"),
                                     ("198.19.0.1", 27015, "A"), ("192.0.2.10", 22, "S")):
            instance.count_tcp(bytes(IP(src=source, dst="198.51.100.10") / TCP(sport=999, dport=dport, flags=flags)))
        instance.count_tcp(bytes(IP(src="198.18.3.4", dst="198.51.100.10", proto=17) / (b"\x00" * 8)))  # not TCP
        assert dict(instance.tcp_by_network) == {"198.18.3.0/24": {"syn": 2}, "198.19.0.0/24": {"ack": 1}}
        assert instance.counters["tcp_syn"] == 2 and instance.counters["tcp_ack"] == 1
    finally:
        for sock in (instance.udp, instance.tcp, instance.control):
            sock.close()
