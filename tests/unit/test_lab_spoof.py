"""The lab's spoofed floods (lab/spoof.py game-flood, tcp-flood): the frames they put on a POP's uplink.

The lab's spoofed-flood check asserts what the POP and the game server did with these frames, so
the frames must be what the check says: each from its own address of the range (at least 65,536
distinct, issue 13), correct IPv4 headers (a bad checksum would be dropped by the POP's kernel
path or XDP for another reason than the defence under test), every Nth payload handshake-shaped
for a Source service by the validators' reference model (tests/bpf/game_model.py), the others not,
and the same sources for the same seed. No packet is sent here.
"""

from __future__ import annotations

import ipaddress
import types

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from lab_modules import game_model as gm
from lab_modules import game_server, spoof


def flood_args(**overrides):
    fields = dict(sources="198.18.0.0/15", seed=13, count=70000, target="198.51.100.10", port=27015,
                  handshake_every=10, iface="unused", pop="unused")
    fields.update(overrides)
    return types.SimpleNamespace(**fields)


def frames_of(monkeypatch, **overrides):
    monkeypatch.setattr(spoof, "ether_to", lambda args: Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02"))
    return spoof.game_flood_frames(flood_args(**overrides))


def test_every_frame_has_its_own_source_of_the_range_and_valid_headers(monkeypatch):
    frames, distinct = frames_of(monkeypatch)
    assert len(frames) == 70000 and distinct == 70000
    network = ipaddress.ip_network("198.18.0.0/15")
    sources = set()
    for frame in frames[:2000] + frames[-2000:]:
        packet = Ether(frame)
        assert ipaddress.ip_address(packet[IP].src) in network
        assert packet[IP].dst == "198.51.100.10" and packet[UDP].dport == 27015
        sent_checksum = packet[IP].chksum
        del packet[IP].chksum
        assert Ether(bytes(packet))[IP].chksum == sent_checksum
        assert packet[UDP].chksum == 0  # "no checksum", valid in IPv4
        assert packet[IP].len == len(frame) - 14 and packet[UDP].len == len(frame) - 34
        sources.add(packet[IP].src)
    assert len(sources) == 4000


def test_every_nth_payload_is_a_source_getchallenge_the_rest_is_junk(monkeypatch):
    frames, dummy = frames_of(monkeypatch, count=1000)
    shaped = [gm.handshake_shaped(bytes(Ether(frame)[UDP].payload), gm.EDGE_GAME_SOURCE) for frame in frames]
    assert [number for number, yes in enumerate(shaped) if yes] == list(range(0, 1000, 10))
    # The stand-in game server answers the getchallenges (replies to spoofed sources: the check
    # blackholes them in the upstream) and counts the junk as udp_other (unanswered).
    first = bytes(Ether(frames[0])[UDP].payload)
    assert first.startswith(game_server.SOURCE_GETCHALLENGE) and first[9:] == b"0000000000\x00"
    assert not bytes(Ether(frames[1])[UDP].payload).startswith((b"\xff\xff\xff\xff", b"echo", b"punch-reply"))


def test_the_same_seed_sends_the_same_flood(monkeypatch):
    assert frames_of(monkeypatch, count=500)[0] == frames_of(monkeypatch, count=500)[0]
    assert frames_of(monkeypatch, count=500)[0] != frames_of(monkeypatch, count=500, seed=14)[0]


def test_the_flood_is_bounded():
    for argv in (["--count", "200001", "--rate", "100"], ["--count", "100", "--rate", "50001"]):
        try:
            spoof.main(["game-flood", "--iface", "x", "--pop", "192.0.2.1", "--target", "198.51.100.10",
                        "--port", "27015", "--sources", "198.18.0.0/15"] + argv)
        except SystemExit as exc:
            assert exc.code == 2
        else:
            raise AssertionError("%s was accepted" % argv)


def test_the_backlog_counts_frames_sent_less_frames_the_reader_took():
    """The flood waits while this many of its frames sit in the tap's queue: sent frames add,
    the reader's tx_packets take away (never below 0: other traffic is read from the link too)."""
    backlog = spoof.LinkBacklog(queue_len=1000, delivered=500, dropped=7)
    backlog.sent(100)
    assert backlog.update(delivered=530, dropped=7) == 70
    backlog.sent(5)
    assert backlog.update(delivered=530, dropped=7) == 75
    assert backlog.update(delivered=700, dropped=7) == 0
    assert backlog.drops == 0


def test_a_drop_on_the_link_means_its_queue_is_full():
    """The estimate can run low (the reader also took the players' datagrams); the tun driver
    drops only when its queue is full, so a drop sets the backlog to the queue's length and the
    flood waits until the reader has taken that many."""
    backlog = spoof.LinkBacklog(queue_len=1000, delivered=0, dropped=0)
    backlog.sent(300)
    assert backlog.update(delivered=100, dropped=3) == 1000
    assert backlog.drops == 3
    assert backlog.update(delivered=1000, dropped=3) == 100
    assert backlog.update(delivered=1100, dropped=3) == 0


def tcp_frames_of(monkeypatch, **overrides):
    monkeypatch.setattr(spoof, "ether_to", lambda args: Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02"))
    fields = dict(flags="syn")
    fields.update(overrides)
    return spoof.tcp_flood_frames(flood_args(**fields))


@pytest.mark.parametrize("flags", ["syn", "ack"])
def test_every_tcp_segment_has_its_own_source_and_valid_checksums(monkeypatch, flags):
    """The lab's TCP flood check counts at the game server what of it arrives: a bad TCP checksum
    would be dropped by that host's kernel, and the control (the same frames from the allow list)
    would not show that the path delivers them."""
    frames, distinct = tcp_frames_of(monkeypatch, flags=flags, count=5000)
    assert len(frames) == 5000 and distinct == 5000
    network = ipaddress.ip_network("198.18.0.0/15")
    sources, sequences = set(), set()
    for frame in frames[:200] + frames[-200:]:
        packet = Ether(frame)
        assert ipaddress.ip_address(packet[IP].src) in network
        assert packet[IP].dst == "198.51.100.10" and packet[TCP].dport == 27015
        sent_ip, sent_tcp = packet[IP].chksum, packet[TCP].chksum
        del packet[IP].chksum
        del packet[TCP].chksum
        rebuilt = Ether(bytes(packet))
        assert (rebuilt[IP].chksum, rebuilt[TCP].chksum) == (sent_ip, sent_tcp)
        assert packet[IP].len == len(frame) - 14
        assert not bytes(packet[TCP].payload)
        sources.add(packet[IP].src)
        sequences.add(packet[TCP].seq)
    assert len(sources) == 400 and len(sequences) > 395
    first = Ether(frames[0])[TCP]
    assert str(first.flags) == {"syn": "S", "ack": "A"}[flags]
    assert game_server.tcp_segment(bytes(Ether(frames[0])[IP]), 27015) == (Ether(frames[0])[IP].src, flags)


def test_a_flood_syn_is_a_linux_clients_and_larger_than_the_pops_syn_ack(monkeypatch):
    """60 IP bytes with MSS, SACK, timestamps and window scale: the POP's 40-byte SYN-ACK to each
    spoofed source is less than the SYN brought (docs/tcp-protection.md)."""
    frames, dummy = tcp_frames_of(monkeypatch, count=10)
    syn = Ether(frames[0])
    assert len(syn[IP]) == 60
    assert [name for name, dummy_value in syn[TCP].options] == ["MSS", "SAckOK", "Timestamp", "NOP", "WScale"]
    acks, dummy = tcp_frames_of(monkeypatch, count=10, flags="ack")
    assert len(Ether(acks[0])[IP]) == 40 and Ether(acks[0])[TCP].ack != 0


def test_the_same_seed_sends_the_same_tcp_flood(monkeypatch):
    assert tcp_frames_of(monkeypatch, count=300)[0] == tcp_frames_of(monkeypatch, count=300)[0]
    assert tcp_frames_of(monkeypatch, count=300)[0] != tcp_frames_of(monkeypatch, count=300, seed=14)[0]


def test_the_tcp_flood_is_bounded():
    for argv in (["--count", "200001", "--rate", "100"], ["--count", "100", "--rate", "50001"]):
        with pytest.raises(SystemExit) as exc:
            spoof.main(["tcp-flood", "--flags", "syn", "--iface", "x", "--pop", "192.0.2.1", "--target", "198.51.100.10",
                        "--port", "27015", "--sources", "198.18.0.0/15"] + argv)
        assert exc.value.code == 2
