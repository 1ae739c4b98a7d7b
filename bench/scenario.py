"""The POP the benchmark runs: its map contents and one packet per measured path.

Every address here is chosen so that each packet takes exactly one path through xdp_edge, and
run.py checks that it does (verdict, reason counter, output frame) before and during timing.
The namespace around the program (routes, neighbours) is harness/topology.py's.
"""

from __future__ import annotations

import functools
import socket
import struct

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from harness import topology as topo
from harness.edge_env import monotonic_ns

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils._a2s_cookie import tai_offset_ns
from harness.cookies import a2s_cookie, cookie_clock_ns, cookie_epoch


ANYCAST_PREFIX = "198.51.100.0/24"
SERVICE_ADDR = "198.51.100.10"
BACKEND = "10.1.0.10"            # routed via the uplink's router: bpf_fib_lookup succeeds, XDP_TX
IPIP_HEADER_LEN = 20             # what the forward pushes in front of the player's packet

FORWARD_PORT, FORWARD_ID = 27015, 1      # a plain game service
A2S_PORT, A2S_ID = 27016, 2              # a service with the A2S cache on (INFO and PLAYER entries)
LIMITED_PORT, LIMITED_ID = 27017, 3      # a service with a tiny per-source limit of its own
ATTACKED_PORT, ATTACKED_ID = 27018, 4    # a Source-engine service under attack (attack_mode always), no budget
SYN_AUTH_PORT, SYN_AUTH_ID = 27019, 5    # a TCP service with SYN authentication always on (syn_auth always)

DENIED_PREFIX = "192.0.2.0/24"
DENIED_SOURCE = "192.0.2.66"
# Denied by a /32 in a /24 the list covers only in part: the program's second lookup (the /24's
# bitmap in edge_src_hosts) on top of the first.
DENIED_HOST_PREFIX = "198.18.7.66/32"
DENIED_HOST = "198.18.7.66"
FORWARD_CLIENT = "203.0.113.10"
A2S_CLIENT = "203.0.113.20"
LIMITED_CLIENT = "203.0.113.30"
# Banned by hand (ban_until_ns far ahead in its edge_sources entry): the banned drop.
BANNED_CLIENT = "203.0.113.40"
# A player verified for the attacked service (a live slot in its edge_sources entry), and a random
# spoofed source that sends it a game packet (dropped unverified; it never gets an entry, so every
# repetition is the first packet of a new source).
VERIFIED_CLIENT = "203.0.113.50"
SPOOFED_CLIENT = "100.64.7.9"
# Pass-through: BGP from the upstream router to the POP's own address, not an anycast address.
PASS_SOURCE, PASS_DESTINATION = topo.ROUTER_IP, topo.POP_TUNNEL_ADDR

# Every source a measured packet comes from: random deny prefixes must not cover any of them.
TEST_SOURCES = (DENIED_SOURCE, DENIED_HOST, FORWARD_CLIENT, A2S_CLIENT, LIMITED_CLIENT, BANNED_CLIENT,
                VERIFIED_CLIENT, SPOOFED_CLIENT, PASS_SOURCE)

COOKIE_KEY = (0x0123456789ABCDEF, 0xFEDCBA9876543210)
# One-hour cookie epochs and cache age: neither the epoch nor the cache's freshness changes
# while the bench runs (the program also accepts the previous epoch's cookie).
COOKIE_EPOCH_NS = 3600 * 1_000_000_000
A2S_MAX_AGE_MS = 3600 * 1000
# The verified player stays verified for the whole bench.
VERIFIED_IDLE_NS = 24 * 3600 * 1_000_000_000

# The limited service allows 1 packet and 1 byte per second per source: every packet is over the
# byte limit, even the first of a new one-second window, so every repetition takes the counting
# path and is dropped. ban_sec=0: the source is never banned (a ban would end in the cheaper
# "banned" check and measure that instead).
LIMITED_SERVICE_LIMIT = (1, 1)
BAN_SEC = 0

GAME_PAYLOAD = bytes(range(48))  # a small game packet: 48 bytes of UDP payload

A2S_REQUEST = b"\xff\xff\xff\xffTSource Engine Query\x00"


def a2s_info_reply() -> bytes:
    """A plausible A2S_INFO reply (FF FF FF FF 49 ...), as a CS-style server would send it."""
    extra_data_flags = 0x80 | 0x10 | 0x20 | 0x01  # port, SteamID, keywords, GameID
    return (b"\xff\xff\xff\xffI" + bytes([17])
            + b"anycast.edge bench | 24/7 de_dust2\x00" + b"de_dust2\x00" + b"csgo\x00"
            + b"Counter-Strike: Global Offensive\x00" + struct.pack("<H", 730)
            + bytes([12, 32, 0]) + b"dl" + bytes([0, 1]) + b"1.38.7.9\x00"
            + bytes([extra_data_flags]) + struct.pack("<H", 27015)
            + struct.pack("<Q", 90000000000000001) + b"secure,casual,empty,valve_ds\x00"
            + struct.pack("<Q", 730))


def a2s_player_reply() -> bytes:
    """A plausible A2S_PLAYER reply (FF FF FF FF 44 ...): the 12 players a2s_info_reply() counts."""
    return (b"\xff\xff\xff\xffD" + bytes([12])
            + b"".join(bytes([index]) + b"player-%02d\x00" % index + struct.pack("<if", 3 * index, 61.5 * index)
                       for index in range(12)))


def _to_pop(src: str, dst: str, l4) -> bytes:
    """An Ethernet frame from the upstream router to the POP's uplink."""
    return bytes(Ether(src=topo.ROUTER_MAC, dst=topo.MAC[topo.UPLINK]) / IP(src=src, dst=dst, ttl=57) / l4)


def _game_datagram(src: str, sport: int, dport: int) -> bytes:
    """The game's datagram from ``src`` to the service, as it reaches the POP."""
    return _to_pop(src, SERVICE_ADDR, UDP(sport=sport, dport=dport) / Raw(GAME_PAYLOAD))


# The frames of the bench's cases, each a function of no arguments.
denied_frame = functools.partial(_game_datagram, DENIED_SOURCE, 40001, FORWARD_PORT)
denied_host_frame = functools.partial(_game_datagram, DENIED_HOST, 40001, FORWARD_PORT)
forward_frame = functools.partial(_game_datagram, FORWARD_CLIENT, 40002, FORWARD_PORT)
banned_frame = functools.partial(_game_datagram, BANNED_CLIENT, 40004, FORWARD_PORT)
verified_forward_frame = functools.partial(_game_datagram, VERIFIED_CLIENT, 40006, ATTACKED_PORT)
unverified_frame = functools.partial(_game_datagram, SPOOFED_CLIENT, 40007, ATTACKED_PORT)


# A SYN as Linux sends it (MSS, SACK, timestamps, window scale: 60 IP bytes); the POP's SYN-ACK is 40.
SYN_OPTIONS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (12345, 0)), ("NOP", None), ("WScale", 7)]


def syn_frame() -> bytes:
    """A spoofed source's SYN to the SYN-authenticated service: answered with the cookie SYN-ACK."""
    return _to_pop(SPOOFED_CLIENT, SERVICE_ADDR, TCP(sport=40008, dport=SYN_AUTH_PORT, flags="S", seq=1000,
                                                     options=SYN_OPTIONS))


def spoofed_rst_frame() -> bytes:
    """A RST whose sequence number is not the tuple's cookie: every accepted cookie is computed and refused."""
    return _to_pop(SPOOFED_CLIENT, SERVICE_ADDR, TCP(sport=40008, dport=SYN_AUTH_PORT, flags="R", seq=0xDEADBEEF))


def out_of_state_frame() -> bytes:
    """An ACK from a spoofed source that follows no SYN (an ACK flood's packet)."""
    return _to_pop(SPOOFED_CLIENT, SERVICE_ADDR, TCP(sport=40008, dport=SYN_AUTH_PORT, flags="A", seq=1001, ack=1))


def verified_tcp_frame() -> bytes:
    """Data from the verified player to the SYN-authenticated service: forwarded."""
    return _to_pop(VERIFIED_CLIENT, SERVICE_ADDR, TCP(sport=40009, dport=SYN_AUTH_PORT, flags="PA", seq=1, ack=1)
                   / Raw(GAME_PAYLOAD))


def limited_frame() -> bytes:
    return _to_pop(LIMITED_CLIENT, SERVICE_ADDR, UDP(sport=40003, dport=LIMITED_PORT) / Raw(GAME_PAYLOAD))


def pass_frame() -> bytes:
    return _to_pop(PASS_SOURCE, PASS_DESTINATION, TCP(sport=40004, dport=179, flags="A") / Raw(GAME_PAYLOAD[:19]))


A2S_CLIENT_PORT = 40005


def a2s_request_frame(now_ns: int | None = None) -> bytes:
    """The 29-byte A2S_INFO request with this POP's cookie for the current epoch (now_ns: UTC, cookie_clock_ns())."""
    epoch = cookie_epoch(cookie_clock_ns() if now_ns is None else now_ns, COOKIE_EPOCH_NS)
    cookie = a2s_cookie(COOKIE_KEY, socket.inet_aton(A2S_CLIENT), socket.inet_aton(SERVICE_ADDR), A2S_CLIENT_PORT,
                        A2S_PORT, epoch)
    return _to_pop(A2S_CLIENT, SERVICE_ADDR, UDP(sport=A2S_CLIENT_PORT, dport=A2S_PORT) / Raw(A2S_REQUEST + cookie))


def a2s_challenge_frame() -> bytes:
    """The 25-byte A2S_INFO request with no cookie yet: answered with this POP's challenge (S2C_CHALLENGE)."""
    return _to_pop(A2S_CLIENT, SERVICE_ADDR, UDP(sport=A2S_CLIENT_PORT, dport=A2S_PORT) / Raw(A2S_REQUEST))


def bad_cookie_frame(now_ns: int | None = None) -> bytes:
    """The A2S_INFO request with a cookie this POP did not issue (the valid one, its first byte changed)."""
    frame = bytearray(a2s_request_frame(now_ns))
    frame[-4] ^= 0xFF
    return bytes(frame)


def a2s_player_request_frame(now_ns: int | None = None) -> bytes:
    """The 9-byte A2S_PLAYER request with this POP's cookie in its challenge field (same client as A2S_INFO's)."""
    epoch = cookie_epoch(cookie_clock_ns() if now_ns is None else now_ns, COOKIE_EPOCH_NS)
    cookie = a2s_cookie(COOKIE_KEY, socket.inet_aton(A2S_CLIENT), socket.inet_aton(SERVICE_ADDR), A2S_CLIENT_PORT,
                        A2S_PORT, epoch)
    return _to_pop(A2S_CLIENT, SERVICE_ADDR, UDP(sport=A2S_CLIENT_PORT, dport=A2S_PORT) / Raw(b"\xff\xff\xff\xffU" + cookie))


def services() -> list:
    """The bench POP's services: ((proto, address, port, id), settings of pack_service_value), as
    build_pop writes them into xdp_edge and bench/programs.py into the path floors."""
    return [
        (("udp", SERVICE_ADDR, FORWARD_PORT, FORWARD_ID), {}),
        (("udp", SERVICE_ADDR, A2S_PORT, A2S_ID), {"flags": abi.SERVICE_F_A2S_CACHE, "a2s_max_age_ms": A2S_MAX_AGE_MS}),
        (("udp", SERVICE_ADDR, LIMITED_PORT, LIMITED_ID), {"limit": LIMITED_SERVICE_LIMIT}),
        (("udp", SERVICE_ADDR, ATTACKED_PORT, ATTACKED_ID), {"game_protocol": "source", "attack_mode": "always"}),
        (("tcp", SERVICE_ADDR, SYN_AUTH_PORT, SYN_AUTH_ID), {"syn_auth": "always"}),
    ]


def build_pop(env) -> None:
    """Fill a freshly loaded xdp_edge (an EdgeEnv) with the bench POP's rules."""
    env.reset()
    env.configure(ban_sec=BAN_SEC, cookie_epoch_ns=COOKIE_EPOCH_NS, cookie_key=COOKIE_KEY,
                  cookie_tai_offset_ns=tai_offset_ns(),     # as edge_rules writes it: the cookie clock is UTC
                  verified_idle_ns=VERIFIED_IDLE_NS)
    env.add_anycast(ANYCAST_PREFIX)
    env.add_backend(BACKEND)
    for (proto, address, port, service_id), settings in services():
        env.add_service(proto, address, port, service_id, BACKEND, **settings)
    env.set_source(VERIFIED_CLIENT, abi.SourceState(verified=[
        (ATTACKED_ID, abi.VERIFY_PROOFS.index("cookie"), monotonic_ns()),
        (SYN_AUTH_ID, abi.VERIFY_PROOFS.index("syn_auth"), monotonic_ns())]))
    env.set_a2s_cache(A2S_ID, a2s_info_reply(), monotonic_ns())
    env.set_a2s_cache(A2S_ID, a2s_player_reply(), monotonic_ns(), kind="player")
    env.deny(DENIED_PREFIX)
    env.deny(DENIED_HOST_PREFIX)
    env.ban(BANNED_CLIENT, monotonic_ns() + 24 * 3600 * 1_000_000_000)
