"""A POP configured like a small real one, for the rule-by-rule packet tests.

One anycast /24 with a UDP game service (A2S cache on), a TCP service and ICMP on the same
address, a second UDP service whose backend sits on another device, and frame builders for
players and backends.
"""

from __future__ import annotations

import random
import socket
import struct

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import raw

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils._a2s_cookie import tai_offset_ns
from harness.cookies import a2s_cookie, cookie_clock_ns, cookie_epoch

from harness import topology as topo

ANYCAST = "198.51.100.0/24"
ANYCAST_V6 = "2001:db8:100::/48"
GAME = "198.51.100.10"
GAME_PORT = 27015
SIDE_GAME = "198.51.100.20"
SIDE_PORT = 7777
BACKEND = "10.1.0.10"          # via the router on the uplink
SIDE_BACKEND = "10.2.0.10"     # on bk0
PLAYER = "203.0.113.5"
PLAYER_PORT = 50000

GAME_UDP_ID, GAME_TCP_ID, GAME_ICMP_ID, SIDE_UDP_ID = 1, 2, 3, 4
COOKIE_KEY = (0x0123456789ABCDEF, 0xFEDCBA9876543210)
COOKIE_EPOCH_NS = 3600 * 10**9   # one hour: the epoch does not change under a test
A2S_MAX_AGE_MS = 60_000

A2S_REQUEST = b"\xff\xff\xff\xffTSource Engine Query\x00"
A2S_INFO_REPLY = (b"\xff\xff\xff\xffI\x11" + b"Anycast Test Server\x00" + b"de_dust2\x00" + b"cstrike\x00"
                  + b"Counter-Strike\x00" + b"\x0a\x00" + b"\x05\x20\x00" + b"dl\x00\x01" + b"1.0.0.0\x00" + b"\x00")


def pop_config(**config) -> dict:
    """The standard POP's edge_config settings; config overrides fields (limits, ban_sec, ...). The
    TAI offset is this host's, as edge_rules writes it, so the cookie clock is UTC (cookie_clock_ns())."""
    settings = dict(ban_sec=60, punch_idle_ns=120 * 10**9, cookie_epoch_ns=COOKIE_EPOCH_NS, cookie_key=COOKIE_KEY,
                    cookie_tai_offset_ns=tai_offset_ns())
    settings.update(config)
    return settings


def setup_pop(edge, **config):
    """The standard POP; config overrides edge_config fields (pop_config)."""
    edge.configure(**pop_config(**config))
    # No underlay devices: the IPIP from the backends comes in on the uplink, which says so.
    edge.set_tunnel_devices(topo.UPLINK)
    edge.add_own_address(topo.UPLINK_ADDR.split("/", maxsplit=1)[0])
    edge.add_own_address(topo.SIDE_ADDR.split("/", maxsplit=1)[0])
    edge.add_anycast(ANYCAST)
    edge.add_anycast_v6(ANYCAST_V6)
    edge.add_backend(BACKEND)
    edge.add_backend(SIDE_BACKEND)
    edge.add_service("udp", GAME, GAME_PORT, GAME_UDP_ID, BACKEND,
                     flags=abi.SERVICE_F_A2S_CACHE | abi.SERVICE_F_A2S_SNOOP, a2s_max_age_ms=A2S_MAX_AGE_MS)
    edge.add_service("tcp", GAME, GAME_PORT, GAME_TCP_ID, BACKEND)
    edge.add_service("icmp", GAME, 0, GAME_ICMP_ID, BACKEND)
    edge.add_service("udp", SIDE_GAME, SIDE_PORT, SIDE_UDP_ID, SIDE_BACKEND)


def eth():
    """Ethernet header of a frame arriving from the upstream router on the uplink."""
    return Ether(src=topo.ROUTER_MAC, dst=topo.MAC[topo.UPLINK])


def player_udp(payload=b"join", src=PLAYER, sport=PLAYER_PORT, dst=GAME, dport=GAME_PORT, **ip):
    return raw(eth() / IP(src=src, dst=dst, **ip) / UDP(sport=sport, dport=dport) / payload)


def player_icmp(icmp_type=8, payload=b"ping", src=PLAYER, dst=GAME, code=0, **ip):
    return raw(eth() / IP(src=src, dst=dst, **ip) / ICMP(type=icmp_type, code=code) / payload)


def player_tcp(src=PLAYER, dst=GAME, dport=GAME_PORT, flags="S"):
    return raw(eth() / IP(src=src, dst=dst) / TCP(sport=PLAYER_PORT, dport=dport, flags=flags))


def cookie_for(src=PLAYER, sport=PLAYER_PORT, dst=GAME, dport=GAME_PORT, epoch=None, clock_ns=None, key=COOKIE_KEY,
               epoch_ns=COOKIE_EPOCH_NS):
    """The cookie the POP issues to a client: in `epoch`, else in the epoch of clock_ns (UTC, cookie_clock_ns(),
    default now), under `key` (default the current generation)."""
    if epoch is None:
        epoch = cookie_epoch(cookie_clock_ns() if clock_ns is None else clock_ns, epoch_ns)
    return a2s_cookie(key, abi.ipv4(src), abi.ipv4(dst), sport, dport, epoch)


def backend_reply(payload=b"welcome", outer_src=BACKEND, inner_src=GAME, sport=GAME_PORT, dst=PLAYER,
                  dport=PLAYER_PORT, proto="udp", inner_ttl=64, outer_flags=0, outer_frag=0, tcp_flags="SA"):
    """A game server's reply as the backend's tunnel sends it to the POP."""
    l4 = UDP(sport=sport, dport=dport) if proto == "udp" else TCP(sport=sport, dport=dport, flags=tcp_flags)
    inner = IP(src=inner_src, dst=dst, ttl=inner_ttl) / l4 / payload
    return raw(eth() / IP(src=outer_src, dst=topo.POP_TUNNEL_ADDR, proto=4, flags=outer_flags, frag=outer_frag)
               / inner)


def spoofed(count, seed):
    """``count`` distinct random source addresses in 100.0.0.0/8 (none in the test topology's own
    ranges), sorted; the same ones for the same ``seed``."""
    rng = random.Random(seed)
    addresses = set()
    while len(addresses) < count:
        addresses.add(socket.inet_ntoa(struct.pack("!I", (100 << 24) | rng.getrandbits(24))))
    return sorted(addresses)


def checksums_valid(frame: bytes) -> bool:
    """True when every checksum in the frame (outer and inner headers) is what scapy computes afresh.

    Headers quoted inside an ICMP error (scapy's IPerror, UDPerror, ...) are left as quoted: they
    are the original packet's, possibly truncated, and covered by the ICMP checksum.
    """
    original = Ether(frame)
    recomputed = Ether(frame)
    layer = recomputed
    while layer:
        if "chksum" in layer.fields and not type(layer).__name__.endswith("error"):
            layer.chksum = None
        layer = layer.payload
    recomputed = Ether(raw(recomputed))
    mine, theirs = original, recomputed
    while mine:
        if "chksum" in mine.fields and mine.chksum != theirs.chksum:
            return False
        mine, theirs = mine.payload, theirs.payload
    return True


__all__ = ["ICMP", "IP", "TCP", "UDP", "Ether", "raw"]
