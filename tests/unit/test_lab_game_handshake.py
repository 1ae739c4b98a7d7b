"""The lab's Source-engine handshake (lab/game_server.py, lab/player.py join) on the loopback.

The lab's spoofed-flood check has a new player join through the game's own handshake while the
flood runs; the POP lets it through and verifies it with the validators of bpf/include/game_proto.h.
So the stand-ins must speak exactly the layouts those validators read: every packet of a join is
checked here with the validators' reference model (tests/bpf/game_model.py), and the server
accepts only the challenge it handed to that address.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import threading

import pytest

from lab_modules import game_model as gm
from lab_modules import game_server, player


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_in_background(serve) -> None:
    """Run one of the stand-in's serving loops in a thread until the test closes its socket."""
    def until_closed():
        try:
            serve()
        except OSError:
            pass  # the socket closed under its recvfrom: the test is over (not an error to report)

    threading.Thread(target=until_closed, daemon=True).start()


@pytest.fixture
def server():
    """The stand-in on 127.0.0.1, its control socket on a free port (not the lab's 27099)."""
    instance = game_server.GameServer("127.0.0.1", free_udp_port(), control_port=free_udp_port())
    serve_in_background(instance.serve_udp)
    yield instance
    for sock in (instance.udp, instance.tcp, instance.control):
        sock.close()


def exchange(server, payload: bytes, source_port: int = 0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", source_port))
        sock.settimeout(2)
        sock.sendto(payload, ("127.0.0.1", server.port))
        return sock.recv(4096)


def test_every_packet_of_a_join_is_what_the_validators_read(server):
    nonce = 0x0BADCAFE
    getchallenge = player.source_getchallenge(nonce)
    assert gm.handshake_shaped(getchallenge, gm.EDGE_GAME_SOURCE)

    challenge_reply = exchange(server, getchallenge)
    expected = server.challenge_of("127.0.0.1")
    assert gm.server_challenge(challenge_reply, gm.EDGE_GAME_SOURCE) == expected
    assert struct.unpack_from("<I", challenge_reply, 13)[0] == nonce  # the client's nonce comes back

    connect = player.source_connect(expected, nonce, auth=3)
    assert gm.handshake_shaped(connect, gm.EDGE_GAME_SOURCE)
    assert gm.client_echo(connect, gm.EDGE_GAME_SOURCE) == expected
    accepted = exchange(server, connect)
    assert accepted[:5] == b"\xff\xff\xff\xffB" and accepted[5:9] == struct.pack("<I", nonce)
    assert server.connected_by_source == {"127.0.0.1": 1}


def test_a_connect_with_any_other_challenge_is_rejected(server):
    """What a spoofer can send: a guessed challenge. The server refuses it (and the POP never
    verifies its source: the echo does not match what the server told that address)."""
    right = server.challenge_of("127.0.0.1")
    for guess in (0, right ^ 1, 0xFFFFFFFF):
        reply = exchange(server, player.source_connect(guess, 7, auth=3))
        assert reply[:5] == b"\xff\xff\xff\xff9"
    assert server.counters["handshake_rejects"] == 3
    assert not server.connected_by_source


def test_join_connects_without_any_a2s_query(server):
    args = argparse.Namespace(source="127.0.0.1", target=("127.0.0.1", server.port), port=0, wait=3.0, stream=0)
    result = player.cmd_join(args)
    assert result["connected"] and result["stage"] == "connected" and not result["rejected"]
    assert server.counters["handshake_challenges"] >= 1 and server.counters["handshake_connects"] == 1
    assert "a2s_challenges" not in server.counters and "a2s_info" not in server.counters


def test_stats_say_who_connected(server):
    """The lab's spoofed-flood check reads ``connected_by_source`` from ``ask stats`` to see that
    the player who joined during the flood got in."""
    serve_in_background(server.serve_control)
    args = argparse.Namespace(source="127.0.0.1", target=("127.0.0.1", server.port), port=0, wait=3.0, stream=0)
    assert player.cmd_join(args)["connected"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(b"stats", ("127.0.0.1", server.control.getsockname()[1]))
        stats = json.loads(sock.recv(65536))
    assert stats["connected_by_source"] == {"127.0.0.1": 1}
    assert stats["counters"]["handshake_connects"] == 1


def test_the_challenge_is_per_address_and_stable(server):
    assert server.challenge_of("192.0.2.10") == server.challenge_of("192.0.2.10")
    assert server.challenge_of("192.0.2.10") != server.challenge_of("192.0.2.11")
    other = game_server.GameServer("127.0.0.1", free_udp_port(), control_port=free_udp_port())
    try:  # a secret per server run: nobody can compute it offline
        assert other.challenge_of("192.0.2.10") != server.challenge_of("192.0.2.10")
    finally:
        for sock in (other.udp, other.tcp, other.control):
            sock.close()
