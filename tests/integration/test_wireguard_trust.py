"""A WireGuard pair as wireguard_interface configures it, attacked from the "internet" between its ends.

What the transport is for (issue 17, docs/transport.md): IPIP between a POP and a backend is
authenticated by nothing but its path, so anyone who can put a packet on that path with the POP's
address gets it decapsulated and delivered. Over WireGuard only what the configured peer sealed
comes out of the interface. The attacker here knows everything that is not secret - both ends'
addresses and ports, both public keys (the play passes them around as facts), and every
ciphertext that crossed the path (the capture) - and sends from any source address (raw sockets on
the path, a's side of the veth). Each attack is checked where it would count: a UDP socket on b's
inner address that a genuine datagram reaches (the control, before and after each attack), and
b's peer (its endpoint, which WireGuard moves only for authenticated packets).

- a genuine data message the path kept from b (the attacker's copy), sent from the POP's address
  and port: delivered once - the control: the attacker's sender is real and the path cannot tell
  the copy from the original - and never again (the replay counter);
- the same replay from the attacker's own address: not delivered, and b's endpoint for its peer
  stays the POP's (a replay does not steer b's packets to the attacker);
- forged data messages with the session's real receiver index and counters ahead: not delivered,
  and the withheld genuine one, with an older counter, still is afterwards (a forged counter does
  not move the replay window);
- a stranger with its own key, who knows b's public key and claims a's inner address: its
  handshake never completes and nothing of it is delivered; the same datagrams from a arrive.

Both ends are wireguard-go (this host's kernel has no wireguard; test_wireguard_interface.py).
"""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest
from scapy.layers.inet import UDP
from scapy.packet import Raw

from bpf.packets import ipv4
from helpers.netns import veth
from helpers.playbook import task
from test_wireguard_interface import (A_INNER, A_PORT, A_UNDERLAY, B_INNER, B_PORT, B_UNDERLAY, WireguardGo,
                                      interface_args, make_keys, run)
# The namespaces, the veth and both wireguard-go ends: the fixture of the modules' own test.
from test_wireguard_interface import world  # noqa: F401  pylint: disable=unused-import

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, TUN)")

GAME_PORT = 27015
ETH_P_IP = 0x0800
MESSAGE_DATA = 4           # WireGuard's transport data message: type, receiver index, counter, sealed packet
DATA_HEADER = struct.Struct("<I I Q")
KEEPALIVE_LEN = 32         # a data message with an empty packet: header 16 + Poly1305 tag 16
PAYLOAD = b"P" * 100       # inner IPv4 20 + UDP 8 + 100 = 128 bytes, a multiple of 16: no padding
SEALED_LEN = DATA_HEADER.size + 128 + 16
ATTACKER = "10.99.0.66"
STRANGER_UNDERLAY, B_STRANGER_SIDE = "10.98.0.3", "10.98.0.2"


class Ends:
    """b's game socket, a's sender, the raw sockets of an attacker on the path, a capture on b's side."""

    def __init__(self, world):
        with world["ns"]["b"].entered():
            self.game = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
        self.game.bind((B_INNER, GAME_PORT))
        self.capture.bind(("ulb", ETH_P_IP))
        with world["ns"]["a"].entered():
            self.player = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.spoofer = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def close(self):
        for sock in (self.game, self.capture, self.player, self.spoofer):
            sock.close()

    def received(self, wait: float) -> list:
        """Every datagram b's game socket got within `wait` seconds (from then on)."""
        got, deadline = [], time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return got
            self.game.settimeout(left)
            try:
                got.append(self.game.recvfrom(2048))
            except socket.timeout:
                return got

    def first(self, timeout: float):
        """The next datagram b's game socket gets, or None after `timeout` seconds."""
        self.game.settimeout(timeout)
        try:
            return self.game.recvfrom(2048)
        except socket.timeout:
            return None

    def drain_capture(self) -> list:
        """The WireGuard data messages carrying a player's datagram that reached b's underlay so far."""
        self.capture.settimeout(0.2)
        sealed = []
        while True:
            try:
                frame = self.capture.recv(65536)
            except socket.timeout:
                return sealed
            header_len = (frame[14] & 0x0F) * 4
            udp = frame[14 + header_len:]
            if frame[14 + 9] != socket.IPPROTO_UDP or struct.unpack_from("!H", udp, 2)[0] != B_PORT:
                continue
            message = udp[8:struct.unpack_from("!H", udp, 4)[0]]
            if len(message) == SEALED_LEN and message[0] == MESSAGE_DATA:
                sealed.append(message)

    def genuine(self, tag: bytes, timeout: float = 10.0) -> None:
        """A player's datagram from a through the tunnel; assert that b's game socket gets it, once."""
        payload = tag.ljust(len(PAYLOAD), b"P")
        self.player.sendto(payload, (B_INNER, GAME_PORT))
        got = [self.first(timeout)] + self.received(0.3)
        assert [data for data, dummy in filter(None, got)] == [payload], got
        assert got[0][1][0] == A_INNER

    def handshake(self, timeout: float = 10.0) -> None:
        """Datagrams from a until one arrives (WireGuard holds the first ones until its handshake),
        then nothing left in flight: the capture and the game socket start empty."""
        deadline = time.monotonic() + timeout
        self.player.sendto(b"handshake", (B_INNER, GAME_PORT))
        while not self.first(0.5):
            assert time.monotonic() < deadline, "no datagram came through the tunnel in %.0f s" % timeout
            self.player.sendto(b"handshake", (B_INNER, GAME_PORT))
        self.received(0.5)
        self.drain_capture()

    def spoof(self, source: str, sport: int, message: bytes) -> None:
        """A UDP datagram to b's WireGuard port from any source, sent on the path."""
        packet = bytes(ipv4(source, B_UNDERLAY, UDP(sport=sport, dport=B_PORT) / Raw(message)))
        self.spoofer.sendto(packet, (B_UNDERLAY, 0))


def peer_of(end: WireguardGo) -> dict:
    fields = end.dump().splitlines()[1].split("\t")
    return {"public_key": fields[0], "endpoint": fields[2], "latest_handshake": int(fields[4])}


@pytest.fixture
def pair(world):
    """Both ends configured by wireguard_interface from each other's public keys, as the role does."""
    public = make_keys(world)
    for side in ("a", "b"):
        result = run(world, side, [task("anycast.edge.wireguard_interface", interface_args(world, side, public))],
                     "pair")[0]
        assert not result.get("failed"), result
    ends = Ends(world)
    try:
        yield world, public, ends
    finally:
        ends.close()


def withheld(world, ends) -> bytes:
    """A genuine data message from a that the path kept from b (a filter in b's namespace, before
    IP: the capture still sees it) - the attacker's copy of a packet b never got."""
    ends.handshake()
    ns = world["ns"]["b"]
    ns.exec("nft", "add table ip withhold")
    ns.exec("nft", "add chain ip withhold in { type filter hook prerouting priority -300; }")
    ns.exec("nft", "add rule ip withhold in udp dport %d ip length %d drop" % (B_PORT, 20 + 8 + SEALED_LEN))
    try:
        ends.player.sendto(b"withheld".ljust(len(PAYLOAD), b"P"), (B_INNER, GAME_PORT))
        assert ends.received(1.0) == []
        sealed = ends.drain_capture()
    finally:
        ns.exec("nft", "delete table ip withhold")
    assert len(sealed) == 1, sealed
    return sealed[0]


def assert_delivered_once(ends, tag: bytes) -> None:
    got = ends.received(1.0)
    assert [data for data, dummy in got] == [tag.ljust(len(PAYLOAD), b"P")], got
    assert got[0][1][0] == A_INNER


def test_a_replayed_data_message_is_delivered_once(pair):
    world, dummy, ends = pair
    message = withheld(world, ends)
    # Sent on the path from the POP's address and port, the copy is delivered - the sender is real
    # and the path cannot tell it from the original - once: the same bytes again are not.
    ends.spoof(A_UNDERLAY, A_PORT, message)
    assert_delivered_once(ends, b"withheld")
    for dummy_round in range(3):
        ends.spoof(A_UNDERLAY, A_PORT, message)
    assert ends.received(1.5) == []
    # From the attacker's own address: not delivered, and b keeps sending to the POP.
    ends.spoof(ATTACKER, 40000, message)
    assert ends.received(1.5) == []
    assert peer_of(world["ends"]["b"])["endpoint"] == "%s:%d" % (A_UNDERLAY, A_PORT)
    ends.genuine(b"after the replays")


def test_a_forged_data_message_is_dropped_and_moves_no_replay_window(pair):
    world, dummy, ends = pair
    message = withheld(world, ends)
    kind, receiver, counter = DATA_HEADER.unpack_from(message)
    assert kind == MESSAGE_DATA
    # The session's real receiver index, counters ahead, anything for the sealed part.
    for ahead in (1, 1000, 1 << 40):
        forged = DATA_HEADER.pack(MESSAGE_DATA, receiver, counter + ahead) + os.urandom(SEALED_LEN - DATA_HEADER.size)
        ends.spoof(A_UNDERLAY, A_PORT, forged)
    # The genuine sealed part under a later counter: the counter is a nonce, the tag no longer matches.
    ends.spoof(A_UNDERLAY, A_PORT, DATA_HEADER.pack(MESSAGE_DATA, receiver, counter + 5) + message[DATA_HEADER.size:])
    assert ends.received(1.5) == []
    assert peer_of(world["ends"]["b"])["endpoint"] == "%s:%d" % (A_UNDERLAY, A_PORT)
    # Had a forged counter been taken, the withheld message's counter would now be too old to accept.
    ends.spoof(A_UNDERLAY, A_PORT, message)
    assert_delivered_once(ends, b"withheld")
    ends.genuine(b"after the forgeries")


def test_a_stranger_who_knows_the_public_keys_gets_nothing_through(pair, netns):
    world, public, ends = pair
    stranger = netns("wgstr")
    veth(stranger, "uls", world["ns"]["b"], "ulbs")
    stranger.ip("addr", "add", STRANGER_UNDERLAY + "/24", "dev", "uls")
    world["ns"]["b"].ip("addr", "add", B_STRANGER_SIDE + "/24", "dev", "ulbs")
    own = stranger.exec("wg", "genkey").stdout.strip()
    key_file = world["work"] / "stranger.key"
    key_file.write_text(own + "\n")
    key_file.chmod(0o600)
    end = WireguardGo(stranger, world["ends"]["a"].name.replace("wga", "wgs"))
    try:
        # The stranger's interface claims a's inner address and names b, with b's public key, as its peer.
        stranger.exec("wg", "set", end.name, "private-key", str(key_file), "peer", public["b"],
                      "endpoint", "%s:%d" % (B_STRANGER_SIDE, B_PORT), "allowed-ips", "0.0.0.0/0")
        stranger.ip("addr", "add", A_INNER + "/31", "dev", end.name)
        stranger.ip("link", "set", end.name, "up")
        with stranger.entered():
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            deadline = time.monotonic() + 6   # wireguard-go retries its handshake every 5 s
            while time.monotonic() < deadline:
                sender.sendto(PAYLOAD, (B_INNER, GAME_PORT))
                assert ends.received(0.3) == []
        finally:
            sender.close()
        assert peer_of(end)["latest_handshake"] == 0
        # b still has exactly its configured peer, at the POP's address.
        peers = world["ends"]["b"].dump().splitlines()[1:]
        assert len(peers) == 1 and peer_of(world["ends"]["b"])["public_key"] == public["a"]
        assert peer_of(world["ends"]["b"])["endpoint"] == "%s:%d" % (A_UNDERLAY, A_PORT)
        # The control: the same datagrams from the configured peer arrive.
        ends.genuine(b"from the real POP")
    finally:
        end.stop()
