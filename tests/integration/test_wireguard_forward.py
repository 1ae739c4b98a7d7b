"""The POP's inbound data plane over WireGuard, on real devices: xdp_edge on the uplink forwards a
WireGuard pair's players by XDP_PASS marked with the pair's device (struct edge_wireguard_handoff
in the Ethernet addresses), and tc_wireguard_redirect (TC ingress on the uplink, attached by
anycast.edge.tc_program) redirects them to that device.

The pair's device is a ``tun`` device (IFF_TUN) here: this host's kernel has no wireguard module.
It is a faithful stand-in for what this test checks: like a WireGuard device it is an L3 device
without an Ethernet header (ARPHRD_NONE, no header_ops), so bpf_redirect treats both alike (the
kernel drops the Ethernet header of a redirected skb for such a device), and what their transmit
receives is the plain IPv4 packet - WireGuard encrypts it there, the tun driver hands it to the
file descriptor, where the test reads it. The encryption itself is the kernel's, tested with
wireguard-go in test_wireguard_interface.py and test_wireguard_trust.py.

The POP and the world are helpers/edge_lab.py's namespaces: the IPIP service 198.51.100.10:27015
(backend 10.1.0.10) and, added here, 198.51.100.10:27016 to 10.1.0.20, whose pair is WireGuard.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import time

import pytest
from scapy.layers.inet import IP, UDP

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils._pins import open_pinned_maps

from helpers import edge_lab as topo
from helpers.playbook import run_tasks, task

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
WG_DEVICE = "aw-test"
WG_MTU = 1440
WG_BACKEND = "10.1.0.20"
WG_PORT = 27016
WG_SERVICE_ID = 18
PLAYER = topo.ALLOWED_PLAYER
STRANGER = topo.ROUTER_ADDRESS   # another source in the world, never verified
POP_PORT = 5555                  # a socket of the POP's own (its SSH, its BGP: its own traffic)


def open_tun(pop, name=WG_DEVICE) -> tuple:
    """A tun device in the POP's namespace, up, with the pair's MTU: (fd, ifindex)."""
    with pop.entered():
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        ifindex = socket.if_nametoindex(name)
    pop.ip("link", "set", name, "mtu", str(WG_MTU), "up")
    return fd, ifindex


def read_all(fd, wait=0.5) -> list:
    """The packets the tun device transmitted (each read is one IPv4 packet), waiting up to `wait`
    seconds for more after the last."""
    packets = []
    while select.select([fd], [], [], wait)[0]:
        try:
            packets.append(os.read(fd, 65535))
        except BlockingIOError:
            break
    return [packet for packet in packets if packet[0] >> 4 == 4]   # no IPv6 in these namespaces anyway


def send(world, source, port, payloads, destination=topo.SERVICE[1]):
    with world.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 40000))
    for payload in payloads:
        sock.sendto(payload, (destination, port))
    sock.close()


def reasons(pin_root) -> dict:
    with open_pinned_maps(pin_root, topo.POP_IFACE, ["edge_reason_stats"]) as maps:
        counts = {}
        for index, name in enumerate(abi.REASONS):
            packets = sum(abi.EDGE_COUNTER.unpack(value)[0]
                          for value in maps["edge_reason_stats"].lookup_percpu(abi.U32.pack(index)))
            if packets:
                counts[name] = packets
        return counts


def redirect_task(tc_object, pin_root, program="tc_wireguard_redirect", state="present"):
    """tc_program with tc_wireguard_redirect (or the control's program) on the uplink's ingress,
    with xdp_edge's pinned maps (share_maps: maps), as the role attaches it."""
    args = {"iface": topo.POP_IFACE, "direction": "ingress", "pin_root": pin_root, "state": state}
    if state == "present":
        args.update(object=tc_object, program=program, share_maps="maps")
    return task("anycast.edge.tc_program", args)


@pytest.fixture
def wireguard_pop(edge_lab, xdp_edge_object, tc_wireguard_redirect_object, pin_root, tmp_path):
    """The POP with xdp_edge and its rules, the WireGuard pair's service under attack (only
    verified players pass), the player verified for it, the pair's device, and the TC program."""
    edge_lab.attach_with_rules(xdp_edge_object, pin_root, tmp_path / "attach")
    fd, ifindex = open_tun(edge_lab.pop)
    now = time.monotonic_ns()
    with open_pinned_maps(pin_root, topo.POP_IFACE, ["edge_services", "edge_backends", "edge_wireguard_pairs",
                                                     "edge_sources"]) as maps:
        maps["edge_services"].update(abi.pack_service_key("udp", topo.SERVICE[1], WG_PORT),
                                     abi.pack_service_value(WG_SERVICE_ID, WG_BACKEND, attack_mode="always"))
        maps["edge_backends"].update(abi.ipv4(WG_BACKEND), abi.BACKEND_VALUE.pack(0))
        maps["edge_wireguard_pairs"].update(abi.ipv4(WG_BACKEND), abi.WIREGUARD_PAIR.pack(ifindex, WG_MTU))
        maps["edge_sources"].update(abi.ipv4(PLAYER), abi.SourceState(
            last_seen_ns=now, verified=[(WG_SERVICE_ID, abi.VERIFY_PROOFS.index("cookie"), now)]).pack())
    attach = run_tasks([redirect_task(tc_wireguard_redirect_object, pin_root)], tmp_path / "tc", netns=edge_lab.pop)
    assert attach[0]["changed"] and not attach[0].get("failed"), attach[0]
    read_all(fd, wait=0.1)   # whatever the kernel sent by itself on link-up
    yield edge_lab, fd, pin_root
    os.close(fd)


def test_a_verified_players_datagram_arrives_on_the_device_as_it_was_sent(wireguard_pop):
    lab, fd, pin_root = wireguard_pop
    payloads = [b"state update %d" % number for number in range(5)]
    send(lab.world, PLAYER, WG_PORT, payloads)

    packets = [IP(packet) for packet in read_all(fd)]
    assert [bytes(packet[UDP].payload) for packet in packets] == payloads
    for packet in packets:
        # The player's packet itself: no IPIP header, its addresses and ports, one hop (TTL) less.
        assert (packet.proto, packet.src, packet.dst) == (17, PLAYER, topo.SERVICE[1])
        assert (packet[UDP].sport, packet[UDP].dport) == (40000, WG_PORT)
        assert packet.ttl == 63
        assert IP(bytes(packet)).chksum == IP(bytes(IP(bytes(packet)))).chksum   # the header sums
    # Counted once, by XDP: TC counts nothing and the kernel did not forward it on its own.
    assert reasons(pin_root) == {"tx_forward_wireguard": len(payloads)}


def test_the_ipip_pairs_service_still_goes_out_as_ipip(wireguard_pop):
    lab, fd, pin_root = wireguard_pop
    with lab.world.entered():
        capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    capture.bind((topo.WORLD_IFACE, 0))
    capture.setblocking(False)
    send(lab.world, PLAYER, topo.SERVICE[2], [b"ipip please"] * 3)

    seen = []
    while select.select([capture], [], [], 0.5)[0]:
        seen.append(IP(capture.recv(65535)[14:]))
    capture.close()
    ipip = [packet for packet in seen if packet.proto == 4]
    assert len(ipip) == 3
    assert all((packet.src, packet.dst) == (topo.POP_ADDRESS, topo.BACKEND) for packet in ipip)
    assert all(bytes(packet.payload[UDP].payload) == b"ipip please" for packet in ipip)
    assert read_all(fd, wait=0.2) == []
    assert reasons(pin_root) == {"tx_forward": 3}


def test_the_pops_own_traffic_and_whatever_xdp_did_not_forward_is_not_redirected(wireguard_pop):
    """A packet XDP passes without forwarding it carries no handoff mark, so TC leaves it to the
    stack."""
    lab, fd, pin_root = wireguard_pop
    with lab.pop.entered():
        own = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    own.bind((topo.POP_ADDRESS, POP_PORT))
    own.settimeout(2)
    # The same bytes a forwarded datagram has, aimed at the POP: XDP passes it (pass_not_ours).
    send(lab.world, PLAYER, POP_PORT, [b"ssh-ish"] * 3, destination=topo.POP_ADDRESS)
    got = [own.recvfrom(100) for dummy in range(3)]
    own.close()
    assert [(data, source[0]) for data, source in got] == [(b"ssh-ish", PLAYER)] * 3
    assert read_all(fd, wait=0.2) == []
    assert reasons(pin_root) == {"pass_not_ours": 3}


def test_an_unverified_source_under_attack_is_dropped_before_the_device(wireguard_pop):
    lab, fd, pin_root = wireguard_pop
    send(lab.world, STRANGER, WG_PORT, [b"flood"] * 20)
    send(lab.world, topo.DENIED_PLAYER, WG_PORT, [b"denied"] * 5)
    assert read_all(fd, wait=0.3) == []
    assert reasons(pin_root) == {"drop_unverified": 20, "drop_deny": 5}
    # ... while the verified player still gets through.
    send(lab.world, PLAYER, WG_PORT, [b"still here"])
    assert [bytes(IP(packet)[UDP].payload) for packet in read_all(fd)] == [b"still here"]


def test_a_frame_that_arrives_with_the_handoffs_mark_is_dropped_not_redirected(wireguard_pop):
    """The mark is the Ethernet destination EDGE_WG_HANDOFF_DEST with an ifindex as source: anyone
    on the uplink's segment can send such a frame (and a NIC in promiscuous mode takes it). XDP
    drops each that it would pass - to the POP itself, or not IP at all - so TC never sees one;
    to a service it goes through the pipeline like any other and is forwarded only if it passes."""
    lab, fd, pin_root = wireguard_pop
    mark = abi.WG_HANDOFF.pack(abi.WG_HANDOFF_DEST, abi.ipv4(WG_BACKEND))
    to_the_pop = bytes(IP(src=PLAYER, dst=topo.POP_ADDRESS, ttl=64) / UDP(sport=40000, dport=POP_PORT) / b"forged")
    to_the_service_unverified = bytes(IP(src=STRANGER, dst=topo.SERVICE[1], ttl=64)
                                      / UDP(sport=40000, dport=WG_PORT) / b"forged")
    with lab.world.entered():
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    raw.bind((topo.WORLD_IFACE, 0))
    for dummy in range(3):
        raw.send(mark + b"\x08\x00" + to_the_pop)
        raw.send(mark + b"\x88\xb5" + b"\0" * 46)   # not IP: what XDP passes as pass_non_ip
        raw.send(mark + b"\x08\x00" + to_the_service_unverified)
    raw.close()
    assert read_all(fd, wait=0.3) == []
    assert reasons(pin_root) == {"drop_forged_handoff": 6, "drop_unverified": 3}


# -- the redirect where xdp_edge is not in front of it (review finding: it trusted the mark) -------

def forge(named: bytes, pad=b"\0\0", payload=b"forged") -> bytes:
    """A frame posing as xdp_edge's handoff: its Ethernet destination, `pad` and the four bytes
    `named` (the pair's backend; the first version read an ifindex there) as the source, then an
    IPv4 datagram of the attacker's to the POP itself."""
    packet = bytes(IP(src=STRANGER, dst=topo.POP_ADDRESS, ttl=64) / UDP(sport=40000, dport=POP_PORT) / payload)
    return abi.WG_HANDOFF_DEST + pad + named + b"\x08\x00" + packet


def send_frames(world, frames, copies=3):
    with world.entered():
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    raw.bind((topo.WORLD_IFACE, 0))
    for dummy in range(copies):
        for frame in frames:
            raw.send(frame)
    raw.close()


def payloads(fd, wait=0.3) -> list:
    return sorted(bytes(IP(packet)[UDP].payload) for packet in read_all(fd, wait=wait))


def test_without_xdp_in_front_a_forged_handoff_reaches_no_device_but_a_pairs(
        wireguard_pop, fixture_object, tmp_path):
    """xdp_edge taken off the uplink behind the modules' back (ip link): frames posing as handoffs
    reach TC. One naming another device (a tun standing for the POP's underlay, a tunnel, its
    loopback: no pair's), and one naming the pair with a padding xdp_edge never writes, are
    dropped. Controls: the program as first built (the mark trusted alone) redirects the first
    into that device; the second with its padding zero is redirected into the pair's device - the
    one thing left to a forger without xdp_edge in front, which is why tc_program attaches the
    redirect only behind xdp_edge and xdp_program does not detach it first (the next test)."""
    lab, fd, pin_root = wireguard_pop
    other_fd, other_ifindex = open_tun(lab.pop, "other0")
    try:
        read_all(other_fd, wait=0.1)
        lab.pop.ip("link", "set", "dev", topo.POP_IFACE, "xdp", "off")
        to_another_device = forge(abi.U32.pack(other_ifindex), payload=b"to another device")
        pad_set = forge(abi.ipv4(WG_BACKEND), pad=b"\x00\x01", payload=b"pad set")
        send_frames(lab.world, [to_another_device, pad_set])
        assert payloads(other_fd) == [] and payloads(fd) == []

        send_frames(lab.world, [forge(abi.ipv4(WG_BACKEND), payload=b"pad clear")])
        assert payloads(fd) == [b"pad clear"] * 3

        control = fixture_object("tc_trusting_redirect")
        swap = run_tasks([redirect_task(None, pin_root, state="absent"),
                          redirect_task(control, pin_root, program="tc_trusting_redirect")],
                         tmp_path / "control", netns=lab.pop)
        assert all(result["changed"] and not result.get("failed") for result in swap), swap
        send_frames(lab.world, [to_another_device])
        assert payloads(other_fd) == [b"to another device"] * 3
    finally:
        os.close(other_fd)


def test_the_redirect_is_attached_only_behind_xdp_edge_and_removed_before_it(
        wireguard_pop, tc_wireguard_redirect_object, tmp_path):
    lab, fd, pin_root = wireguard_pop
    xdp_absent = task("anycast.edge.xdp_program", {"iface": topo.POP_IFACE, "pin_root": pin_root,
                                                   "state": "absent"})
    # xdp_edge cannot go while the redirect is behind it: refused, nothing changed.
    refused = run_tasks([xdp_absent], tmp_path / "refused", netns=lab.pop)[0]
    assert refused.get("failed") and not refused["changed"], refused
    assert "tc_wireguard_redirect is attached to the TC ingress of %s" % topo.POP_IFACE in refused["msg"]
    assert "remove it first" in refused["msg"]
    send(lab.world, PLAYER, WG_PORT, [b"still forwarded"])
    assert payloads(fd) == [b"still forwarded"]

    # In that order, both go; the maps xdp_edge pinned stay its own until it goes (share_maps).
    gone = run_tasks([redirect_task(None, pin_root, state="absent"), xdp_absent], tmp_path / "order", netns=lab.pop)
    assert all(result["changed"] and not result.get("failed") for result in gone), gone
    assert "edge_wireguard_pairs" in gone[1]["maps_removed"]

    # Without xdp_edge the redirect is refused, and nothing is attached.
    alone = run_tasks([redirect_task(tc_wireguard_redirect_object, pin_root)], tmp_path / "alone", netns=lab.pop)[0]
    assert alone.get("failed") and not alone["changed"], alone
    assert "attach xdp_edge first" in alone["msg"] and "no XDP program" in alone["msg"]
    assert lab.pop.exec("tc", "filter", "show", "dev", topo.POP_IFACE, "ingress").stdout.strip() == ""
