"""A reference model of bpf/xdp_edge.c in plain Python: what the program should decide for a frame.

The model reads the frame with `struct` only (no scapy: scapy is lenient where the program must not
be), takes the map contents as plain Python data (ModelState) and a time, and answers what the XDP
program answers: the action, the edge_reason it counts, the frame it emits, and the changes it
makes to its own maps (a ban, a learned or deleted port punch, a snooped A2S reply, a rate count).

    model = EdgeModel(state)
    outcome = model.run(frame, ingress="up0", now_ns=...)   # decides, then applies outcome.effects
    outcome.action, outcome.reason, outcome.output(frame)

`EdgeModel.decide` decides without touching the state; `EdgeModel.apply` applies the effects.

Where the kernel answers a question (bpf_fib_lookup), the model asks harness/topology.py, which
describes the namespace the tests run the program in.

The model follows the order documented at the top of bpf/xdp_edge.c and the rules in
bpf/include/*.h. The subtle decisions are commented where they are modelled, and
tests/bpf/test_differential.py pins each of them with its own test as well.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass, field, replace
from typing import Callable, NamedTuple, Optional

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from harness.cookies import a2s_cookie as project_a2s_cookie
from harness.cookies import SYN_AUTH_KEY_TWEAK

from . import game_model
from . import mc_model
from harness import topology as topo

# ---- constants of the C side (bpf/include/*.h) ------------------------------------------------

ETH_HLEN = 14
VLAN_HLEN = 4
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
IPV4_HLEN = 20
IPV6_HLEN = 40
EDGE_MAX_FRAME = 9216

IPPROTO_ICMP = 1
IPPROTO_IPIP = 4
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_IPV6 = 41
IPPROTO_GRE = 47
# What the kernel's tunnels could decapsulate if it reached them (xdp_edge.c is_tunnel_proto).
TUNNEL_PROTOS = (IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_GRE)
ICMP_ECHO = 8
# TCP flags (byte 13 of the header)
TCP_SYN, TCP_RST, TCP_ACK = 0x02, 0x04, 0x10

IP_MF = 0x2000
IP_DF = 0x4000
IP_OFFSET = 0x1FFF

NSEC_PER_SEC = 1_000_000_000
RULE_PAYLOAD_MAX = 16          # EDGE_RULE_PAYLOAD_MAX: bytes a payload rule compares
NSEC_PER_MSEC = 1_000_000
DEFAULT_COOKIE_EPOCH_NS = 30 * NSEC_PER_SEC
IPIP_OUTER_TTL = 64
REPLY_TTL = 64
U64 = (1 << 64) - 1

# enum edge_proto_class and the names edge_config.limits uses in _edge_abi.pack_config
CLASS_TCP, CLASS_UDP, CLASS_ICMP, CLASS_OTHER = range(4)
CLASS_NAMES = ("tcp", "udp", "icmp", "other")

SERVICE_F_A2S_CACHE = 1 << 0
SERVICE_F_A2S_SNOOP = 1 << 1
A2S_CACHE_MAX_PAYLOAD = 1400
A2S_REQUEST = b"\xff\xff\xff\xffTSource Engine Query\x00"   # 25 bytes
A2S_REQUEST_LEN = 25
A2S_REQUEST_COOKIE_LEN = 29
A2S_CHALLENGE_LEN = 9
A2S_INFO_HEADER = b"\xff\xff\xff\xff\x49"
A2S_FIELD_REQUEST_LEN = 9                                    # A2S_PLAYER / A2S_RULES with their challenge field
A2S_FIELD_ASKS = (0xFFFFFFFF, 0)                             # a field that asks for a challenge
# request type -> kind, reply type -> kind (enum a2s_kind; a2s.h)
A2S_FIELD_REQUEST_KINDS = {0x55: "player", 0x56: "rules"}
A2S_REPLY_KINDS = {0x49: "info", 0x44: "player", 0x45: "rules"}

# Issue 13: verification, admission, attack mode (edge_abi.h)
DEFAULT_VERIFIED_IDLE_NS = 600 * NSEC_PER_SEC
ADMISSION_MAX_RATE = 18_000_000_000
VERIFIED_SLOTS = 2
GAME_PROTOCOLS = ("none", "source", "goldsrc", "minecraft")   # enum edge_game_protocol
ATTACK_MODES = ("auto", "always", "never")              # enum edge_attack_mode
PROOFS = ("none", "cookie", "handshake", "punch", "syn_auth")   # enum edge_verify_proof
CONNECTIONLESS = b"\xff\xff\xff\xff"
SPLIT = b"\xfe\xff\xff\xff"                              # one part of a split A2S reply (header -2, LE)
TCP_SYN, TCP_RST = 0x02, 0x04

# Issue 14: SYN authentication (syn_auth.h)
SYN_AUTH_MODES = ("auto", "always", "never")            # enum edge_syn_auth_mode
TCP_FIN, TCP_ACK = 0x01, 0x10
TCP_FLAGS_HANDSHAKE = TCP_FIN | TCP_SYN | TCP_RST | TCP_ACK
SYN_AUTH_REPLY_IP_LEN = IPV4_HLEN + 20                   # a TCP header without options
SYN_AUTH_WINDOW = 65535

ICMP_DEST_UNREACH = 3
ICMP_FRAG_NEEDED = 4
ICMP_QUOTE_LEN = IPV4_HLEN + 8
ICMP_REPLY_IP_LEN = IPV4_HLEN + 8 + ICMP_QUOTE_LEN        # 56

# XDP actions as harness/edge_env.RunResult names them
DROP, PASS, TX, REDIRECT = "DROP", "PASS", "TX", "REDIRECT"


# ---- checksums (bpf/include/csum.h) -------------------------------------------------------------
# The C sums 16-bit words as they sit in memory on a little-endian machine and stores the result
# back the same way. The model does exactly that (little-endian words), so that even the choice
# between the two encodings of zero (0x0000 / 0xffff) comes out as the C's.

def csum_fold(total: int) -> int:
    total = (total & 0xFFFFFFFF) + (total >> 32)
    total = (total & 0xFFFFFFFF) + (total >> 32)
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return total & 0xFFFF


def csum_words(data: bytes) -> int:
    """Unfolded sum of the little-endian 16-bit words of data (even length)."""
    return sum(struct.unpack("<%dH" % (len(data) // 2), data))


def _not16(value: int) -> int:
    return ~value & 0xFFFF


def ipv4_header_csum(header: bytes) -> bytes:
    """The check field (2 bytes as stored) of a 20-byte header whose own check field is ignored."""
    zeroed = header[:10] + b"\0\0" + header[12:20]
    return struct.pack("<H", _not16(csum_fold(csum_words(zeroed))))


def csum_replace2(check: int, old: int, new: int) -> int:
    """RFC 1624 incremental update, on memory-order words, as csum.h's csum_replace2."""
    total = _not16(check) + _not16(old) + new
    return _not16(csum_fold(total))


def payload_csum(payload: bytes) -> int:
    """struct a2s_cache_entry.payload_csum: folded sum of the payload zero-padded to 4 bytes."""
    padded = payload + b"\0" * (-len(payload) % 4)
    return csum_fold(csum_words(padded))


# ---- the A2S cookie (bpf/include/a2s.h) ------------------------------------------------------------
# SipHash-2-4 is the project's one Python implementation (checked against the published vectors in
# tests/unit/test_a2s_cookie.py and test_differential.py); the C is what this model is compared with.

def a2s_cookie(cookie_key, saddr: bytes, daddr: bytes, sport: bytes, dport: bytes, epoch: int) -> int:
    """a2s.h's a2s_cookie for the 4-tuple as it sits in the packet, as an integer (the low 32 bits
    of the hash). cookie_key is edge_config.cookie_key (two u64)."""
    wire = project_a2s_cookie(cookie_key, saddr, daddr, struct.unpack("!H", sport)[0],
                              struct.unpack("!H", dport)[0], epoch)
    return struct.unpack("<I", wire)[0]


# ---- the maps, as plain data -------------------------------------------------------------------------

def _net4(cidr: str) -> ipaddress.IPv4Network:
    # An LPM trie compares prefixlen leading bits and ignores the rest of the key's address.
    return ipaddress.IPv4Network(cidr, strict=False)


@dataclass(frozen=True)
class PunchKey:
    """struct punch_key: the service side and the player side of one flow."""
    proto: int
    service_addr: str
    service_port: int
    remote_addr: str
    remote_port: int


@dataclass(frozen=True)
class McFlow:
    """struct mc_flow_key: a TCP flow to a minecraft service (edge_mc_flows)."""
    saddr: str
    daddr: str
    sport: int
    dport: int


class McFlowEntry(NamedTuple):
    """struct mc_flow_value: when the flow's SYN was forwarded; 0 until its backend's SYN-ACK went
    back to the player, then MC_FLOW_SYN_ACKED | the ACK the player's first data must carry; the
    player's initial sequence number (its first data byte is isn + 1): the SYN's that made the entry
    until the SYN-ACK, then the SYN-ACK's ACK - 1 (no later SYN writes it); isn_ambiguous 1 once a
    SYN with another sequence number than isn was forwarded (set by SYNs only, never cleared)."""
    syn_ns: int
    syn_acked: int = 0
    isn: int = 0
    isn_ambiguous: int = 0


@dataclass
class Source:
    """One edge_sources entry (struct source_state): ban, the one-second rate window, counters."""
    ban_until_ns: int = 0
    last_seen_ns: int = 0
    packets: int = 0
    bytes: int = 0
    window: int = 0          # seconds of monotonic time (u32) the window counts are for
    window_packets: int = 0
    window_bytes: int = 0
    # struct source_verification slots: [service id (0: free), proof (PROOFS index), active_ns]
    verified: list = field(default_factory=lambda: [[0, 0, 0] for dummy in range(VERIFIED_SLOTS)])
    challenge_service_id: int = 0
    server_challenge: int = 0
    challenge_ns: int = 0

    def copy(self) -> "Source":
        return replace(self, verified=[list(slot) for slot in self.verified])


@dataclass
class Bucket:
    """One CPU's struct admission_bucket of a service (the model runs on one CPU: the tests pin it)."""
    refilled_ns: int = 0
    packet_tokens: int = 0       # credit, in 1 / (nr_cpus * 1e9) of a packet
    byte_tokens: int = 0
    unverified_packets: int = 0
    unverified_bytes: int = 0
    admitted_packets: int = 0
    dropped_packets: int = 0
    verified_packets: int = 0


@dataclass
class Service:
    """One edge_services entry: key (proto, addr, port) and its service_value."""
    proto: int
    addr: str
    port: int
    id: int
    backend: str
    flags: int = 0
    a2s_max_age_ms: int = 0
    limit: tuple = (0, 0)          # (packets_per_sec, bytes_per_sec); (0, 0): the global limit
    admission: tuple = (0, 0)      # the unverified budget under attack (pps, bps) for the POP; (0, 0): none
    game_protocol: str = "none"    # GAME_PROTOCOLS
    attack_mode: str = "never"     # ATTACK_MODES
    syn_auth: str = "never"        # SYN_AUTH_MODES (TCP services)


@dataclass
class CacheEntry:
    """One edge_a2s_cache entry. payload_csum None means "what user space computes"."""
    updated_ns: int
    payload: bytes
    payload_csum: Optional[int] = None

    @property
    def csum(self) -> int:
        return payload_csum(self.payload) if self.payload_csum is None else self.payload_csum


@dataclass
class Config:
    """edge_config[0]. limits: {"tcp"|"udp"|"icmp"|"other": (packets_per_sec, bytes_per_sec)}."""
    tunnel_addr: str = topo.POP_TUNNEL_ADDR
    ban_sec: int = 0
    punch_idle_ns: int = 0
    cookie_epoch_ns: int = 0
    cookie_key: tuple = (0, 0)
    limits: dict = field(default_factory=dict)
    cookie_key_previous: tuple = (0, 0)     # the previous key generation: accepted, never issued; 0: none
    cookie_tai_offset_ns: int = 0           # the POP's CLOCK_TAI - CLOCK_REALTIME, off the cookie clock
    verified_idle_ns: int = 0               # 0: DEFAULT_VERIFIED_IDLE_NS
    nr_cpus: int = 0                        # the CPUs admission budgets are shared among (0 read as 1)

    def limit(self, proto_class: int) -> tuple:
        return tuple(self.limits.get(CLASS_NAMES[proto_class], (0, 0)))


@dataclass
class PayloadRule:
    """One struct payload_rule (anycast_edge_filters.rules). Ranges (min, max) inclusive, the whole
    range: any (0 is a value like any other); proto 0: any; tcp_flags (mask, value), mask 0: any;
    payload compared under payload_mask."""
    action: str                       # "drop" | "pass" | "limit"
    proto: int = 0
    verified: str = "any"             # "any" | "verified" | "unverified"
    dport: tuple = (0, 0xFFFF)
    sport: tuple = (0, 0xFFFF)
    length: tuple = (0, 0xFFFF)       # IP total length
    ttl: tuple = (0, 0xFF)
    tcp_flags: tuple = (0, 0)
    payload_offset: int = 0           # from the first byte after the L4 header
    payload: bytes = b""
    payload_mask: Optional[bytes] = None   # None: every bit of payload
    limit: tuple = (0, 0)             # limit rules: (packets/s, bytes/s) per source


@dataclass(frozen=True)
class RuleLimitKey:
    """struct rule_limit_key: one source's window for the limit rule at a position."""
    saddr: str
    window: int
    rule: int


@dataclass
class ModelState:
    """Everything the program reads from or writes to its maps (statistics maps left out)."""
    config: Config = field(default_factory=Config)
    services: list = field(default_factory=list)           # [Service]
    anycast_v4: list = field(default_factory=list)         # ["198.51.100.0/24", ...]
    anycast_v6: list = field(default_factory=list)         # ["2001:db8::/48", ...]
    backends: set = field(default_factory=set)             # {"10.1.0.5", ...}
    allow: list = field(default_factory=list)              # CIDRs
    deny: list = field(default_factory=list)               # CIDRs
    sources: dict = field(default_factory=dict)            # {address: Source}: edge_sources
    punches: dict = field(default_factory=dict)            # {PunchKey: last_seen_ns}
    a2s_cache: dict = field(default_factory=dict)          # {a2s_cache_key(service id, kind): CacheEntry}
    tx_ports: set = field(default_factory=set)             # {"bk0", ...}: edge_tx_ports devices
    tunnel_ifaces: set = field(default_factory=set)        # {"up0", ...}: edge_tunnel_ifaces (carry IPIP)
    own_addrs: set = field(default_factory=set)            # {"10.0.0.1", ...}: edge_own_addrs
    payload_rules: list = field(default_factory=list)      # [PayloadRule], in order (the bank XDP reads)
    rule_limits: dict = field(default_factory=dict)        # {RuleLimitKey: (packets, bytes)}
    under_attack: set = field(default_factory=set)         # {service id}: edge_attack_state under_attack
    buckets: dict = field(default_factory=dict)            # {service id: Bucket}: edge_admission (one CPU)
    verify_stats: dict = field(default_factory=dict)       # {proof name: count}: edge_verify_stats
    mc_flows: dict = field(default_factory=dict)           # {McFlow: McFlowEntry}: edge_mc_flows
    wireguard_pairs: dict = field(default_factory=dict)    # {backend: (ifindex, mtu)}: edge_wireguard_pairs

    def copy(self) -> "ModelState":
        return replace(self, services=list(self.services), anycast_v4=list(self.anycast_v4),
                       anycast_v6=list(self.anycast_v6), backends=set(self.backends),
                       allow=list(self.allow), deny=list(self.deny),
                       sources={address: source.copy() for address, source in self.sources.items()},
                       under_attack=set(self.under_attack),
                       buckets={key: replace(bucket) for key, bucket in self.buckets.items()},
                       verify_stats=dict(self.verify_stats),
                       punches=dict(self.punches), a2s_cache=dict(self.a2s_cache),
                       tx_ports=set(self.tx_ports),
                       tunnel_ifaces=set(self.tunnel_ifaces), own_addrs=set(self.own_addrs),
                       payload_rules=list(self.payload_rules), rule_limits=dict(self.rule_limits),
                       mc_flows=dict(self.mc_flows), wireguard_pairs=dict(self.wireguard_pairs))

    # lookups as the program makes them
    def service(self, proto: int, addr: str, port: int) -> Optional[Service]:
        for svc in self.services:
            if (svc.proto, svc.addr, svc.port) == (proto, addr, port):
                return svc
        return None

    @staticmethod
    def _lpm4(prefixes, addr: str) -> bool:
        address = ipaddress.IPv4Address(addr)
        return any(address in _net4(cidr) for cidr in prefixes)

    def denied(self, addr: str) -> bool:
        return self._lpm4(self.deny, addr)

    def allowed(self, addr: str) -> bool:
        return self._lpm4(self.allow, addr)

    def is_anycast_v4(self, addr: str) -> bool:
        return self._lpm4(self.anycast_v4, addr)

    def is_anycast_v6(self, addr: bytes) -> bool:
        address = ipaddress.IPv6Address(addr)
        return any(address in ipaddress.IPv6Network(cidr, strict=False) for cidr in self.anycast_v6)


# ---- what a packet does to the maps ----------------------------------------------------------------

@dataclass
class Effects:
    """Map writes implied by one packet (the per-CPU statistics maps are not modelled)."""
    source_counted: Optional[tuple] = None   # (address, frame bytes, create, now): counted in its entry
    ban: Optional[tuple] = None              # (address, until_ns)
    punch_seen: Optional[tuple] = None       # (PunchKey, last_seen_ns): learned or refreshed
    punch_deleted: Optional[PunchKey] = None  # an idle punch met by an inbound packet
    cache_stored: Optional[tuple] = None     # (cache key, CacheEntry): a snooped A2S reply
    rate_counted: Optional[tuple] = None     # (address, window, IP bytes): one packet in the source's window
    rule_limit_counted: Optional[tuple] = None  # (RuleLimitKey, bytes): counted by a limit rule
    rule_hit: Optional[int] = None           # position of the payload rule that matched (its hit counter)
    # Issue 13's writes, applied in order after the above: verification slots, the game server's
    # challenge, admission buckets, proof counts. Each is (what, function of the ModelState).
    ops: list = field(default_factory=list)

    def __bool__(self) -> bool:
        return any((self.source_counted, self.ban, self.punch_seen, self.punch_deleted, self.cache_stored,
                    self.rate_counted, self.rule_limit_counted, self.rule_hit is not None, self.ops))


@dataclass
class Outcome:
    action: str            # DROP, PASS, TX, REDIRECT
    reason: str            # an edge_reason name (_edge_abi.REASONS)
    frame: Optional[bytes]  # the emitted frame; None when the program leaves it as it came or drops it
    effects: Effects

    def output(self, frame_in: bytes) -> Optional[bytes]:
        """The bytes the program's data_out should hold (None for a drop: not looked at)."""
        if self.action == DROP:
            return None
        return frame_in if self.frame is None else self.frame


# ---- parsing (bpf/include/parsing.h) -----------------------------------------------------------------

class Malformed(Exception):
    """A frame parsing.h calls malformed."""


@dataclass
class Ipv4:
    """struct packet for an IPv4 packet: offsets from the start of the frame."""
    l3_off: int
    ip_hdr_len: int
    ip_tot_len: int
    l4_off: int
    payload_off: int
    payload_len: int
    saddr: str
    daddr: str
    saddr_raw: bytes
    daddr_raw: bytes
    sport: int
    dport: int
    sport_raw: bytes
    dport_raw: bytes
    proto: int
    tos: int
    ttl: int
    is_fragment: bool
    dont_fragment: bool
    icmp_type: int = 0       # ICMP (unfragmented) only


def _addr(raw: bytes) -> str:
    return socket.inet_ntoa(raw)


def parse_ipv4(frame: bytes, l3_off: int, end: int) -> Ipv4:
    """parse_ipv4_at + parse_l4: an IPv4 packet at l3_off of a buffer that ends at `end`."""
    if l3_off > EDGE_MAX_FRAME or l3_off + IPV4_HLEN > end:
        raise Malformed("no room for an IPv4 header")
    ver_ihl, tos, tot_len, _ident, frag_off, ttl, proto, _check = struct.unpack_from("!BBHHHBBH", frame, l3_off)
    version, ihl = ver_ihl >> 4, ver_ihl & 0x0F
    if version != 4 or ihl < 5:
        raise Malformed("version or IHL")
    available = end - l3_off
    hdr_len = ihl * 4
    if hdr_len > available or tot_len < hdr_len or tot_len > available:
        raise Malformed("header or total length")
    saddr_raw = frame[l3_off + 12:l3_off + 16]
    daddr_raw = frame[l3_off + 16:l3_off + 20]
    l4_off = l3_off + hdr_len
    pkt = Ipv4(l3_off=l3_off, ip_hdr_len=hdr_len, ip_tot_len=tot_len, l4_off=l4_off,
               payload_off=l4_off, payload_len=tot_len - hdr_len,
               saddr=_addr(saddr_raw), daddr=_addr(daddr_raw), saddr_raw=saddr_raw, daddr_raw=daddr_raw,
               sport=0, dport=0, sport_raw=b"\0\0", dport_raw=b"\0\0", proto=proto, tos=tos, ttl=ttl,
               is_fragment=bool(frag_off & (IP_MF | IP_OFFSET)), dont_fragment=bool(frag_off & IP_DF))
    if pkt.is_fragment:
        return pkt        # a fragment's L4 header is not looked at (a non-first one has none)
    ip_payload_len = tot_len - hdr_len
    if l4_off > EDGE_MAX_FRAME:
        raise Malformed("L4 offset")
    if proto == IPPROTO_TCP:
        if l4_off + 20 > end or ip_payload_len < 20:
            raise Malformed("TCP header truncated")
        doff = frame[l4_off + 12] >> 4
        if doff < 5 or doff * 4 > ip_payload_len:
            raise Malformed("TCP data offset")
        pkt.payload_off = l4_off + doff * 4
        pkt.payload_len = ip_payload_len - doff * 4
    elif proto == IPPROTO_UDP:
        if l4_off + 8 > end or ip_payload_len < 8:
            raise Malformed("UDP header truncated")
        (udp_len,) = struct.unpack_from("!H", frame, l4_off + 4)
        if udp_len != ip_payload_len:
            raise Malformed("UDP length")
        pkt.payload_off = l4_off + 8
        pkt.payload_len = ip_payload_len - 8
    elif proto == IPPROTO_ICMP:
        if l4_off + 8 > end or ip_payload_len < 8:
            raise Malformed("ICMP header truncated")
        pkt.payload_off = l4_off + 8
        pkt.payload_len = ip_payload_len - 8
        pkt.icmp_type = frame[l4_off]
    if proto in (IPPROTO_TCP, IPPROTO_UDP):
        pkt.sport_raw = frame[l4_off:l4_off + 2]
        pkt.dport_raw = frame[l4_off + 2:l4_off + 4]
        pkt.sport, pkt.dport = struct.unpack("!HH", pkt.sport_raw + pkt.dport_raw)
    return pkt


def parse_frame(frame: bytes):
    """parse_frame: ("ipv4", Ipv4) | ("ipv6", destination bytes, l3_off) | ("not_ip",); raises Malformed."""
    if len(frame) < ETH_HLEN:
        raise Malformed("no Ethernet header")
    (proto,) = struct.unpack_from("!H", frame, 12)
    l3_off = ETH_HLEN
    # Two tags (QinQ) are parsed, whatever their TPIDs; a third is malformed: a frame is either
    # filtered like any other or dropped, never passed to a kernel VLAN device unfiltered.
    for dummy in range(2):
        if proto not in (ETH_P_8021Q, ETH_P_8021AD):
            break
        if len(frame) < l3_off + VLAN_HLEN:
            raise Malformed("VLAN tag truncated")
        (proto,) = struct.unpack_from("!H", frame, l3_off + 2)
        l3_off += VLAN_HLEN
    if proto in (ETH_P_8021Q, ETH_P_8021AD):
        raise Malformed("a third VLAN tag")
    if proto == ETH_P_IPV6:
        if l3_off + IPV6_HLEN > len(frame) or frame[l3_off] >> 4 != 6:
            raise Malformed("IPv6 header")
        return ("ipv6", frame[l3_off + 24:l3_off + 40], l3_off)
    if proto != ETH_P_IP:
        return ("not_ip",)
    return ("ipv4", parse_ipv4(frame, l3_off, len(frame)))


def proto_class(proto: int) -> int:
    return {IPPROTO_TCP: CLASS_TCP, IPPROTO_UDP: CLASS_UDP, IPPROTO_ICMP: CLASS_ICMP}.get(proto, CLASS_OTHER)


# ---- the next hop (bpf_fib_lookup in the test namespace) -----------------------------------------------

@dataclass
class Hop:
    rc: str                   # "ok", "no_neigh", "no_route", "local", "frag_needed"
    device: Optional[str] = None
    smac: bytes = b"\0" * 6
    dmac: bytes = b"\0" * 6
    mtu: int = 0


def _mac(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


class Decision(Exception):
    """Raised inside the pipeline to end a packet's journey with an outcome."""

    def __init__(self, action, reason, frame=None):
        super().__init__(reason)
        self.action, self.reason, self.frame = action, reason, frame


def _verdict(action, reason, frame=None):
    return Decision(action, reason, frame)


# ---- the program -----------------------------------------------------------------------------------------

class EdgeModel:
    """The decision of xdp_edge for one frame, given the maps (state) and the time.

    next_hop, macs and mtus describe the routing world (default: harness/topology.py):
    next_hop(dst) -> (kind, device, dst_mac) as topology.next_hop.
    """

    def __init__(self, state: ModelState, next_hop: Callable = topo.next_hop, macs: dict = None,
                 mtus: dict = None):
        self.state = state
        self.next_hop = next_hop
        self.macs = dict(topo.MAC if macs is None else macs)
        self.mtus = dict(topo.MTU if mtus is None else mtus)

    # -- public API --

    def run(self, frame: bytes, ingress: str = topo.UPLINK, now_ns: int = 0, cookie_clock_ns: int = 0) -> Outcome:
        """Decide, then apply the effects to self.state (what the program does to its maps).
        now_ns: CLOCK_MONOTONIC (bans, punches, cache, rates); cookie_clock_ns: CLOCK_TAI (the
        cookie epoch counts it less config.cookie_tai_offset_ns: UTC, the same on every POP)."""
        outcome = self.decide(frame, ingress, now_ns, cookie_clock_ns)
        self.apply(outcome.effects)
        return outcome

    def decide(self, frame: bytes, ingress: str = topo.UPLINK, now_ns: int = 0, cookie_clock_ns: int = 0) -> Outcome:
        """The outcome of one frame; self.state is not changed."""
        self._frame = bytes(frame)
        self._ingress = ingress
        self._now = now_ns
        self._cookie_clock = cookie_clock_ns
        self._effects = Effects()
        try:
            self._xdp_edge()
        except Decision as decision:
            # finish(): only the forward to a WireGuard pair passes a frame with the handoff's
            # Ethernet destination; any other that would be passed with it came from the wire.
            if decision.action == PASS and decision.reason != "tx_forward_wireguard" and \
                    self._frame[:6] == abi.WG_HANDOFF_DEST:
                return Outcome(DROP, "drop_forged_handoff", None, self._effects)
            return Outcome(decision.action, decision.reason, decision.frame, self._effects)
        raise AssertionError("the pipeline ended without a verdict")  # pragma: no cover

    def apply(self, effects: Effects) -> None:
        state = self.state
        if effects.punch_deleted is not None:
            state.punches.pop(effects.punch_deleted, None)
        if effects.punch_seen is not None:
            key, seen = effects.punch_seen
            state.punches[key] = seen
        if effects.cache_stored is not None:
            key, entry = effects.cache_stored
            state.a2s_cache[key] = entry
        if effects.source_counted is not None:
            address, nbytes, create, seen = effects.source_counted
            source = state.sources.get(address)
            if source is None and create:
                source = state.sources[address] = Source()
            if source is not None:
                source.packets += 1
                source.bytes += nbytes
                source.last_seen_ns = seen
        if effects.rate_counted is not None:
            address, window, nbytes = effects.rate_counted
            source = state.sources[address]
            if source.window != window:        # the first packet of a new second opens it
                source.window, source.window_packets, source.window_bytes = window, 0, 0
            source.window_packets += 1
            source.window_bytes += nbytes
        if effects.ban is not None:
            address, until = effects.ban
            state.sources[address].ban_until_ns = until
        if effects.rule_limit_counted is not None:
            key, nbytes = effects.rule_limit_counted
            packets, total = state.rule_limits.get(key, (0, 0))
            state.rule_limits[key] = (packets + 1, total + nbytes)
        for dummy, op in effects.ops:
            op(state)

    # -- the pipeline (xdp_edge.c), in its order --

    def _xdp_edge(self):
        try:
            parsed = parse_frame(self._frame)
        except Malformed:
            raise _verdict(DROP, "drop_malformed")
        if parsed[0] == "not_ip":
            raise _verdict(PASS, "pass_non_ip")
        if parsed[0] == "ipv6":
            # No IPv6 service exists yet: IPv6 to our prefixes is dropped, the rest is the kernel's.
            if self.state.is_anycast_v6(parsed[1]):
                raise _verdict(DROP, "drop_no_service")
            raise _verdict(PASS, "pass_not_ours")
        self._inbound_ipv4(parsed[1])

    def _inbound_ipv4(self, pkt: Ipv4):
        state, cfg = self.state, self.state.config
        # "A denied source is dropped whatever its destination (the POP's own addresses
        # included)" (decisions in xdp_edge.c), so the deny list comes before the return path to
        # the tunnel address too (validate_inventory refuses a deny prefix covering a backend).
        if state.denied(pkt.saddr):
            raise _verdict(DROP, "drop_deny")
        # Nothing from outside may carry the POP's own address as its source (the kernel's
        # accept_local would take it).
        if pkt.saddr != "0.0.0.0" and (pkt.saddr == cfg.tunnel_addr or pkt.saddr in state.own_addrs):
            raise _verdict(DROP, "drop_own_source")
        # The tunnel address takes whole IPIP on the devices that carry it; other tunnel
        # protocols and every fragment there would be decapsulated/reassembled by the kernel.
        if pkt.daddr == cfg.tunnel_addr:
            if pkt.proto == IPPROTO_IPIP and not pkt.is_fragment and self._ingress in state.tunnel_ifaces:
                self._return_path(pkt)
            if pkt.is_fragment or pkt.proto in TUNNEL_PROTOS:
                raise _verdict(DROP, "drop_bad_tunnel")
        allowed = state.allowed(pkt.saddr)

        # One entry per source (edge_sources): its ban, its rate window, its counters.
        source = state.sources.get(pkt.saddr)

        def banned():
            return not allowed and source is not None and source.ban_until_ns > self._now

        # A service's own (protocol, address, port) is ours; the prefixes decide the rest. Bans
        # apply only to what is ours: never to the POP's own traffic (BGP of a banned neighbour).
        svc = None
        if not pkt.is_fragment and pkt.ip_hdr_len == IPV4_HLEN:
            svc = state.service(pkt.proto, pkt.daddr, pkt.dport)
        if svc is None:
            if not state.is_anycast_v4(pkt.daddr):
                raise _verdict(PASS, "pass_not_ours")
            if banned():
                raise _verdict(DROP, "drop_banned")
            # Counted in the entry of a source the POP knows; dropped, so it makes none.
            if source is not None:
                self._effects.source_counted = (pkt.saddr, len(self._frame), False, self._now)
            if pkt.is_fragment:
                raise _verdict(DROP, "drop_fragment")
            if pkt.ip_hdr_len != IPV4_HLEN:
                raise _verdict(DROP, "drop_ip_options")
            raise _verdict(DROP, "drop_no_service")
        if banned():
            raise _verdict(DROP, "drop_banned")
        if source is not None:
            self._effects.source_counted = (pkt.saddr, len(self._frame), False, self._now)
        # An ICMP service is for ping: echo requests only.
        if pkt.proto == IPPROTO_ICMP and pkt.icmp_type != ICMP_ECHO:
            raise _verdict(DROP, "drop_icmp_type")
        verified = self._admitted(pkt, svc, source, allowed)
        if verified == "syn_auth":
            # Unverified TCP while SYN authentication is on: a punched flow goes on, the rest is its.
            if not self._punch_is_live(pkt):
                self._syn_auth(pkt, svc, source)
            verified = False
        if verified is None:
            raise _verdict(DROP, "drop_unverified")
        # The payload rules (payload_rules.h), after everything above (which "pass" never skips).
        if self._payload_rules_drop(pkt, verified=verified, allowed=allowed):
            raise _verdict(DROP, "drop_rule")
        # Minecraft: a flow's first data segment must be the client's handshake (mc_proto.h).
        mc_syn = False
        if svc.game_protocol == "minecraft" and pkt.proto == IPPROTO_TCP:
            flags = self._frame[pkt.l4_off + 13]
            first_data = self._mc_first_data(pkt, flags)
            if first_data == "drop":
                raise _verdict(DROP, "drop_handshake_unacked")
            if first_data == "revoke":
                self._unverify(pkt.saddr, svc.id)
                raise _verdict(DROP, "drop_handshake")
            mc_syn = flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
        # Only an accepted packet makes its source's entry (a dropped spoofed flood makes none).
        if source is None:
            self._effects.source_counted = (pkt.saddr, len(self._frame), True, self._now)
        if self._punch_is_live(pkt):
            self._forward_segment(pkt, svc, "tx_punched", mc_syn)
        if not allowed and self._rate_limit_exceeded(pkt, svc):
            raise _verdict(DROP, "drop_rate_limit")
        if pkt.proto == IPPROTO_UDP and svc.flags & SERVICE_F_A2S_CACHE:
            self._a2s_handle(pkt, svc)
        self._forward_segment(pkt, svc, "tx_forward", mc_syn)

    # -- Minecraft's handshake (issue 14) --

    @staticmethod
    def _mc_flow(pkt: Ipv4) -> McFlow:
        return McFlow(pkt.saddr, pkt.daddr, pkt.sport, pkt.dport)

    def _mc_first_data(self, pkt: Ipv4, flags: int) -> str:
        """"pass", "drop" (not provably the player's own: nobody revoked) or "revoke". Only the
        flow's first segment is judged: the one whose data holds byte isn + 1 (the entry's isn);
        any other passes, whatever its ACK, the entry kept. The first segment on a flow whose SYN
        was forwarded (an entry) is the player's own only if it acknowledges the backend's SYN-ACK
        (the entry's syn_acked); then it must start with a well-formed handshake at that byte (the
        entry goes), else it revokes (the entry stays); with another ACK it is dropped. Before any
        SYN-ACK was seen here (it may have left through another POP): passed unchecked on a live
        punch (the four-tuple's established connection), else checked the same way but refused as
        "drop", never "revoke". An entry marked isn_ambiguous (SYNs with two ISNs) without a SYN-ACK
        seen: its first data segment is judged whatever its sequence number, at the data's start.
        Data on a SYN: dropped. No data, a RST, or a flow without an entry: not looked at."""
        if not pkt.payload_len or flags & TCP_RST:
            return "pass"
        if flags & TCP_SYN:
            return "drop"
        flow = self._mc_flow(pkt)
        entry = self.state.mc_flows.get(flow)
        if entry is None:
            return "pass"
        seq, ack = struct.unpack_from("!II", self._frame, pkt.l4_off + 4)
        first_byte = (entry.isn + 1 - seq) % 2 ** 32       # where the flow's first byte sits in the data
        if not entry.syn_acked & abi.MC_FLOW_SYN_ACKED and entry.isn_ambiguous:
            first_byte = 0                                  # two ISNs, none acknowledged here: any data
        elif first_byte >= pkt.payload_len:
            return "pass"
        if entry.syn_acked & abi.MC_FLOW_SYN_ACKED:
            if not flags & TCP_ACK or ack != entry.syn_acked & 0xFFFFFFFF:
                return "drop"
            refusal, checked = "revoke", "flow %s checked" % (flow,)
        elif self._punch_is_live(pkt):
            return "pass"
        else:
            refusal, checked = "drop", "flow %s checked before its SYN-ACK" % (flow,)
        if first_byte or mc_model.handshake(self._payload(pkt)) is None:
            return refusal
        self._op(checked, lambda state: state.mc_flows.pop(flow, None))
        return "pass"

    def _unverify(self, address: str, service_id: int):
        """source_unverify as an op: the source's slot of the service freed."""
        def op(state):
            source = state.sources.get(address)
            if source is None:
                return
            for slot in source.verified:
                if slot[0] == service_id:
                    slot[:] = [0, 0, 0]
        self._op("unverify %s for %d" % (address, service_id), op)

    def _forward_segment(self, pkt: Ipv4, svc: Service, tx_reason: str, mc_syn: bool):
        """_forward_to_backend; a SYN to a minecraft service that is not dropped on its way opens the
        flow's entry (its next data segment is checked)."""
        try:
            self._forward_to_backend(pkt, svc, tx_reason)
        except Decision as decision:
            if mc_syn and decision.action != DROP:
                flow, now = self._mc_flow(pkt), self._now
                isn = struct.unpack_from("!I", self._frame, pkt.l4_off + 4)[0]

                def opened(state):     # a later SYN renews the time, never writes isn: another one marks it
                    old = state.mc_flows.get(flow)
                    if old is None:
                        state.mc_flows[flow] = McFlowEntry(now, 0, isn)
                    else:
                        state.mc_flows[flow] = old._replace(syn_ns=now,
                                                            isn_ambiguous=old.isn_ambiguous or int(old.isn != isn))
                self._op("flow %s opened" % (flow,), opened)
            raise

    def _rule_matches(self, rule: PayloadRule, pkt: Ipv4, verified: bool) -> bool:
        def holds(bounds, value):
            return bounds[0] <= value <= bounds[1]

        if rule.proto and rule.proto != pkt.proto:
            return False
        if (rule.verified == "verified" and not verified) or (rule.verified == "unverified" and verified):
            return False
        if not (holds(rule.dport, pkt.dport) and holds(rule.sport, pkt.sport) and holds(rule.length, pkt.ip_tot_len)
                and holds(rule.ttl, pkt.ttl)):
            return False
        mask, value = rule.tcp_flags
        if mask:
            # UDP has no flags: a flags rule is a TCP rule, even one asking for flags "0".
            if pkt.proto != IPPROTO_TCP or self._frame[pkt.l4_off + 13] & mask != value:
                return False
        if not rule.payload:
            return True
        # Only bytes of the IP packet count: never the Ethernet padding or junk after it.
        if rule.payload_offset + len(rule.payload) > pkt.payload_len:
            return False
        start = pkt.payload_off + rule.payload_offset
        window = self._frame[start:start + len(rule.payload)]
        mask = rule.payload_mask if rule.payload_mask is not None else b"\xff" * len(rule.payload)
        return all(w & k == p & k for w, k, p in zip(window, mask, rule.payload))

    def _payload_rules_drop(self, pkt: Ipv4, verified: bool, allowed: bool) -> bool:
        """First match wins: drop -> dropped; pass -> on (later rules skipped); limit -> counted per
        (source, position) in one-second windows, dropped over the limit (never for the allow list)."""
        for position, rule in enumerate(self.state.payload_rules):
            if not self._rule_matches(rule, pkt, verified):
                continue
            self._effects.rule_hit = position
            if rule.action == "drop":
                return True
            if rule.action == "limit" and not allowed:
                key = RuleLimitKey(pkt.saddr, (self._now // NSEC_PER_SEC) & 0xFFFFFFFF, position)
                packets, total = self.state.rule_limits.get(key, (0, 0))
                packets, total = packets + 1, total + pkt.ip_tot_len
                self._effects.rule_limit_counted = (key, pkt.ip_tot_len)
                pps, bps = rule.limit
                return bool((pps and packets > pps) or (bps and total > bps))
            return False
        return False

    # -- verification and admission (issue 13) --

    def _idle_ns(self) -> int:
        return self.state.config.verified_idle_ns or DEFAULT_VERIFIED_IDLE_NS

    def _recent(self, then: int, idle_ns: int) -> bool:
        """A time another CPU stored after this packet's clock reading is recent (no u64 wrap)."""
        return then >= self._now or self._now - then < idle_ns

    def _payload(self, pkt: Ipv4) -> bytes:
        return self._frame[pkt.payload_off:pkt.payload_off + pkt.payload_len]

    def _op(self, what, function):
        self._effects.ops.append((what, function))

    def _verify(self, address: str, service_id: int, proof: str, create: bool = False):
        """source_verify as an op: the service's slot, else the first free or expired one, else the
        least recently active; counted in verify_stats when the source was not verified already."""
        now, idle_ns = self._now, self._idle_ns()

        def recent(then):
            return then >= now or now - then < idle_ns

        def op(state):
            source = state.sources.get(address)
            if source is None:
                if not create:
                    return
                source = state.sources[address] = Source()
            chosen, fresh, oldest = None, True, None
            for slot in source.verified:
                if slot[0] == service_id:
                    chosen, fresh = slot, not recent(slot[2])
                    break
                if not slot[0] or not recent(slot[2]):
                    if oldest != 0:
                        chosen, oldest = slot, 0
                elif oldest is None or slot[2] < oldest:
                    chosen, oldest = slot, slot[2]
            chosen[:] = [service_id, PROOFS.index(proof), now]
            if fresh:
                state.verify_stats[proof] = state.verify_stats.get(proof, 0) + 1
        self._op("verify %s for %d by %s" % (address, service_id, proof), op)

    def _under_attack(self, svc: Service) -> bool:
        if svc.attack_mode == "always":
            return True
        return svc.attack_mode == "auto" and svc.id in self.state.under_attack

    def _admitted(self, pkt: Ipv4, svc: Service, source: Optional[Source], allowed: bool) -> Optional[bool]:
        """admitted() of xdp_edge.c: verified (allow list, a live slot, or this packet echoing the
        game server's challenge or a valid edge cookie) passes uncharged; unverified passes unless the service is under
        attack, then only handshake-shaped and within this CPU's admission bucket. None: dropped;
        "syn_auth": unverified TCP while SYN authentication is on (syn_auth decides, uncharged);
        else whether the source is verified (what the payload rules' "verified" matches)."""
        now, idle_ns = self._now, self._idle_ns()
        verified = allowed
        if not verified and source is not None:
            for index, slot in enumerate(source.verified):
                if slot[0] == svc.id:
                    if self._recent(slot[2], idle_ns):
                        verified = True

                        def refresh(state, address=pkt.saddr, index=index):
                            state.sources[address].verified[index][2] = now
                        self._op("refresh %s's slot %d" % (pkt.saddr, index), refresh)
                    break
        protocol = GAME_PROTOCOLS.index(svc.game_protocol)
        if not verified and source is not None and source.challenge_service_id == svc.id \
                and pkt.proto == IPPROTO_UDP and self._recent(source.challenge_ns, idle_ns):
            echo = game_model.client_echo(self._payload(pkt), protocol)
            if echo is not None and echo == source.server_challenge:
                self._verify(pkt.saddr, svc.id, "handshake")
                verified = True
        # A valid edge cookie is a proof too, checked before the budget (a2s_handle records it).
        if not verified and pkt.proto == IPPROTO_UDP and svc.flags & SERVICE_F_A2S_CACHE:
            request = self._a2s_request(pkt)
            verified = request is not None and request[1] is not None and self._cookie_valid(pkt, request[1])
        bucket = replace(self.state.buckets.get(svc.id, Bucket()))
        outcome = verified
        if verified:
            bucket.verified_packets += 1
        else:
            bucket.unverified_packets += 1
            bucket.unverified_bytes += len(self._frame)
            if pkt.proto == IPPROTO_TCP and self._syn_auth_active(svc):
                outcome = "syn_auth"      # never charged to the budget: syn_auth decides
            elif self._under_attack(svc):
                shaped = pkt.proto == IPPROTO_UDP and game_model.handshake_shaped(self._payload(pkt), protocol)
                if shaped and self._admission_take(bucket, svc, pkt.ip_tot_len):
                    bucket.admitted_packets += 1
                else:
                    bucket.dropped_packets += 1
                    outcome = None

        def store(state, service_id=svc.id, bucket=bucket):
            state.buckets[service_id] = bucket
        self._op("bucket of %d" % svc.id, store)
        return outcome

    def _syn_auth_active(self, svc: Service) -> bool:
        return svc.syn_auth == "always" or (svc.syn_auth == "auto" and self._under_attack(svc))

    def _syn_auth(self, pkt: Ipv4, svc: Service, source: Optional[Source]):
        """syn_auth() of xdp_edge.c: a SYN gets the cookie SYN-ACK, a RST echoing the tuple's cookie
        verifies its source (and is dropped), everything else is drop_tcp_unverified."""
        l4 = pkt.l4_off
        (seq,) = struct.unpack_from("!I", self._frame, l4 + 4)
        flags = self._frame[l4 + 13] & TCP_FLAGS_HANDSHAKE
        if flags != TCP_SYN and flags & ~TCP_ACK != TCP_RST:
            raise _verdict(DROP, "drop_tcp_unverified")
        if self.state.is_anycast_v4(pkt.saddr):       # the fleet's own prefixes: spoofed
            raise _verdict(DROP, "drop_tcp_unverified")
        cfg = self.state.config
        utc = (self._cookie_clock - cfg.cookie_tai_offset_ns) & U64
        epoch = utc // (cfg.cookie_epoch_ns or DEFAULT_COOKIE_EPOCH_NS)

        def cookie_of(key, which_epoch):
            tcp_key = (key[0] ^ SYN_AUTH_KEY_TWEAK, key[1])
            return a2s_cookie(tcp_key, pkt.saddr_raw, pkt.daddr_raw, pkt.sport_raw, pkt.dport_raw, which_epoch & U64)

        if flags == TCP_SYN:
            cookie = cookie_of(cfg.cookie_key, epoch)
            if cookie == (seq + 1) & 0xFFFFFFFF or pkt.ip_tot_len < SYN_AUTH_REPLY_IP_LEN:
                raise _verdict(DROP, "drop_tcp_unverified")
            self._send_syn_ack(pkt, (~cookie) & 0xFFFFFFFF, cookie)
        keys = [cfg.cookie_key] + ([cfg.cookie_key_previous] if any(cfg.cookie_key_previous) else [])
        if not any(seq in (cookie_of(key, epoch), cookie_of(key, epoch - 1)) for key in keys):
            raise _verdict(DROP, "drop_tcp_unverified")
        if source is None:
            self._effects.source_counted = (pkt.saddr, len(self._frame), True, self._now)
        self._verify(pkt.saddr, svc.id, "syn_auth", create=True)
        raise _verdict(DROP, "drop_syn_auth_verified")

    def _send_syn_ack(self, pkt: Ipv4, seq: int, ack: int):
        """syn_ack_in_place: the SYN turned around, 40 IP bytes, no options, back the way it came."""
        request_ip = self._frame[pkt.l3_off:pkt.l3_off + IPV4_HLEN]
        ip = bytearray(request_ip)
        ip[12:16], ip[16:20] = request_ip[16:20], request_ip[12:16]
        struct.pack_into("!H", ip, 2, SYN_AUTH_REPLY_IP_LEN)
        struct.pack_into("!H", ip, 6, 0)       # frag_off
        ip[8] = REPLY_TTL
        ip[10:12] = ipv4_header_csum(bytes(ip))
        sport, dport = struct.unpack_from("!HH", self._frame, pkt.l4_off)
        tcp = bytearray(struct.pack("!HHIIBBHHH", dport, sport, seq, ack, 5 << 4, TCP_SYN | TCP_ACK,
                                    SYN_AUTH_WINDOW, 0, 0))
        total = csum_words(bytes(ip[12:20])) + (IPPROTO_TCP << 8) + struct.unpack("<H", struct.pack("!H", 20))[0]
        total += csum_words(bytes(tcp))
        tcp[16:18] = struct.pack("<H", _not16(csum_fold(total)))
        ethernet = self._frame[6:12] + self._frame[0:6] + self._frame[12:pkt.l3_off]
        raise _verdict(TX, "tx_syn_auth", ethernet + bytes(ip) + bytes(tcp))

    def _admission_take(self, bucket: Bucket, svc: Service, length: int) -> bool:
        """admission_take on a copy of the bucket: credit in 1 / (nr_cpus * 1e9) of a packet/byte."""
        pps, bps = svc.admission
        unit = (self.state.config.nr_cpus or 1) * NSEC_PER_SEC
        if not pps and not bps:
            return False
        elapsed = self._now - bucket.refilled_ns if self._now > bucket.refilled_ns else 0

        def refill(credit, rate):
            rate = min(rate, ADMISSION_MAX_RATE)
            capacity = rate * NSEC_PER_SEC
            if elapsed >= NSEC_PER_SEC:
                return capacity
            return min((credit + elapsed * rate) & U64, capacity)

        bucket.packet_tokens, bucket.byte_tokens = refill(bucket.packet_tokens, pps), refill(bucket.byte_tokens, bps)
        bucket.refilled_ns = max(self._now, bucket.refilled_ns)
        if (pps and bucket.packet_tokens < unit) or (bps and bucket.byte_tokens < unit * length):
            return False
        if pps:
            bucket.packet_tokens -= unit
        if bps:
            bucket.byte_tokens -= unit * length
        return True

    def _punch_is_live(self, pkt: Ipv4) -> bool:
        if pkt.proto not in (IPPROTO_TCP, IPPROTO_UDP):
            return False
        key = PunchKey(pkt.proto, pkt.daddr, pkt.dport, pkt.saddr, pkt.sport)
        last_seen = self.state.punches.get(key)
        if last_seen is None:
            return False
        # A punch refreshed at or after this packet's clock reading is live: bpf_ktime_get_ns
        # is read early in the inbound path, and another CPU's return path may store a later
        # time before the lookup (a plain u64 now - last_seen would wrap and call it idle).
        if last_seen >= self._now or self._now - last_seen < self.state.config.punch_idle_ns:
            return True
        self._effects.punch_deleted = key
        return False

    def _rate_limit_exceeded(self, pkt: Ipv4, svc: Service) -> bool:
        """The packet's own limit (its service's override, else its class's), counted in the
        source's one window (whatever service or protocol the source sends to)."""
        cfg = self.state.config
        pps, bps = tuple(svc.limit) if svc.limit[0] or svc.limit[1] else cfg.limit(proto_class(pkt.proto))
        if not pps and not bps:
            return False
        window = (self._now // NSEC_PER_SEC) & 0xFFFFFFFF
        source = self.state.sources.get(pkt.saddr)
        packets = total = 0
        if source is not None and source.window == window:
            packets, total = source.window_packets, source.window_bytes
        packets, total = packets + 1, total + pkt.ip_tot_len
        self._effects.rate_counted = (pkt.saddr, window, pkt.ip_tot_len)
        if (pps and packets > pps) or (bps and total > bps):
            if cfg.ban_sec:
                self._effects.ban = (pkt.saddr, self._now + cfg.ban_sec * NSEC_PER_SEC)
            return True
        return False

    # -- next hop and emit --

    def _fib(self, daddr: str, tot_len: int) -> Hop:
        kind, device, dmac = self.next_hop(daddr)
        if kind in ("no_route", "local"):
            return Hop(kind)
        # The kernel checks the MTU of the route before it looks for the neighbour.
        if tot_len > self.mtus[device]:
            return Hop("frag_needed", mtu=self.mtus[device])
        if kind == "no_neigh":
            return Hop("no_neigh", device)
        return Hop("ok", device, _mac(self.macs[device]), _mac(dmac))

    def _emit(self, frame: bytes, hop: Hop, tx_reason: str):
        if hop.rc == "no_neigh":
            raise _verdict(PASS, "pass_no_neigh", frame)
        if hop.rc != "ok":
            raise _verdict(DROP, "drop_no_route")
        action = TX
        if hop.device != self._ingress:
            if hop.device not in self.state.tx_ports:
                raise _verdict(PASS, "pass_no_neigh", frame)   # the kernel forwards it
            action = REDIRECT
        raise _verdict(action, tx_reason, hop.dmac + hop.smac + frame[12:])

    @staticmethod
    def _untagged(frame: bytes, l3_off: int, grow_front: int = 0) -> bytes:
        """reframe(): the original MAC addresses, type IPv4, grow_front free bytes, the IP packet on."""
        return frame[:12] + struct.pack("!H", ETH_P_IP) + b"\0" * grow_front + frame[l3_off:]

    # -- forwarding to a backend --

    def _forward_to_backend(self, pkt: Ipv4, svc: Service, tx_reason: str):
        cfg = self.state.config
        if pkt.ttl <= 1:
            raise _verdict(DROP, "drop_ttl")
        if svc.backend in self.state.wireguard_pairs:
            self._forward_to_wireguard(pkt, svc.backend, *self.state.wireguard_pairs[svc.backend])
        hop = self._fib(svc.backend, pkt.ip_tot_len + IPV4_HLEN)
        if hop.rc == "frag_needed":
            # Only an echo request is ever answered with an ICMP error (never an ICMP error).
            if not pkt.dont_fragment or (pkt.proto == IPPROTO_ICMP and pkt.icmp_type != ICMP_ECHO):
                raise _verdict(PASS, "pass_too_big")
            # The player's path MTU through us is the tunnel's: egress MTU minus our header.
            self._send_icmp_too_big(pkt, (hop.mtu - IPV4_HLEN) & 0xFFFF)
        if hop.rc not in ("ok", "no_neigh"):
            raise _verdict(DROP, "drop_no_route")
        inner = self._decrement_ttl(self._frame[pkt.l3_off:])
        outer = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, pkt.tos, pkt.ip_tot_len + IPV4_HLEN, 0,
                                      IP_DF if pkt.dont_fragment else 0, IPIP_OUTER_TTL, IPPROTO_IPIP, 0,
                                      socket.inet_aton(cfg.tunnel_addr), socket.inet_aton(svc.backend)))
        outer[10:12] = ipv4_header_csum(bytes(outer))
        frame = self._frame[:12] + struct.pack("!H", ETH_P_IP) + bytes(outer) + inner
        self._emit(frame, hop, tx_reason)

    def _forward_to_wireguard(self, pkt: Ipv4, backend: str, ifindex: int, mtu: int):
        """To a WireGuard pair: the player's packet (one hop less), untagged, passed to the kernel
        with the handoff (the pair's backend, whose device TC looks up) in its Ethernet addresses, for the uplink's TC. A DF
        packet over the device's MTU is answered with that MTU (an echo request only)."""
        if pkt.ip_tot_len > mtu and pkt.dont_fragment and not (pkt.proto == IPPROTO_ICMP and
                                                               pkt.icmp_type != ICMP_ECHO):
            self._send_icmp_too_big(pkt, mtu & 0xFFFF)
        inner = self._decrement_ttl(self._frame[pkt.l3_off:])
        raise _verdict(PASS, "tx_forward_wireguard",
                       abi.WG_HANDOFF.pack(abi.WG_HANDOFF_DEST, socket.inet_aton(backend))
                       + struct.pack("!H", ETH_P_IP) + inner)

    @staticmethod
    def _decrement_ttl(ip_packet: bytes) -> bytes:
        """ipv4_decrement_ttl on an IP packet (bytes from its header on)."""
        ip = bytearray(ip_packet)
        (old,) = struct.unpack_from("<H", ip, 8)      # TTL and protocol share a 16-bit word
        ip[8] = (ip[8] - 1) & 0xFF
        (new,) = struct.unpack_from("<H", ip, 8)
        (check,) = struct.unpack_from("<H", ip, 10)
        struct.pack_into("<H", ip, 10, csum_replace2(check, old, new))
        return bytes(ip)

    def _send_icmp_too_big(self, pkt: Ipv4, mtu: int):
        quote = self._frame[pkt.l3_off:pkt.l3_off + ICMP_QUOTE_LEN]
        icmp = bytearray(struct.pack("!BBHHH", ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0, mtu) + quote)
        icmp[2:4] = struct.pack("<H", _not16(csum_fold(csum_words(bytes(icmp)))))
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, ICMP_REPLY_IP_LEN, 0, 0, REPLY_TTL, IPPROTO_ICMP, 0,
                                   pkt.daddr_raw, pkt.saddr_raw))
        ip[10:12] = ipv4_header_csum(bytes(ip))
        frame = self._frame[:12] + struct.pack("!H", ETH_P_IP) + bytes(ip) + bytes(icmp)
        hop = self._fib(pkt.saddr, ICMP_REPLY_IP_LEN)
        self._emit(frame, hop, "tx_icmp_too_big")

    # -- A2S_INFO / A2S_PLAYER / A2S_RULES --

    def _a2s_request(self, pkt: Ipv4):
        """(kind, cookie or None when it asks for a challenge) of an A2S request the cache answers,
        or None (xdp_edge.c a2s_parse_request)."""
        payload = self._frame[pkt.payload_off:pkt.payload_off + pkt.payload_len]
        if pkt.payload_len in (A2S_REQUEST_LEN, A2S_REQUEST_COOKIE_LEN):
            if payload[:A2S_REQUEST_LEN] != A2S_REQUEST:
                return None
            cookie = struct.unpack("<I", payload[A2S_REQUEST_LEN:])[0] if pkt.payload_len == A2S_REQUEST_COOKIE_LEN \
                else None
            return "info", cookie
        if pkt.payload_len == A2S_FIELD_REQUEST_LEN and payload[:4] == b"\xff" * 4 \
                and payload[4] in A2S_FIELD_REQUEST_KINDS:
            (field_value,) = struct.unpack("<I", payload[5:9])
            # Asking is checked first: a field that asks never gets the cached reply.
            return A2S_FIELD_REQUEST_KINDS[payload[4]], None if field_value in A2S_FIELD_ASKS else field_value
        return None

    def _cookie_epoch(self) -> int:
        """u64 arithmetic, as in a2s.h edge_cookie_epoch: (TAI - offset) / epoch length."""
        cfg = self.state.config
        utc = (self._cookie_clock - cfg.cookie_tai_offset_ns) & U64
        return utc // (cfg.cookie_epoch_ns or DEFAULT_COOKIE_EPOCH_NS)

    @staticmethod
    def _cookie_of(pkt: Ipv4, key, epoch: int) -> int:
        return a2s_cookie(key, pkt.saddr_raw, pkt.daddr_raw, pkt.sport_raw, pkt.dport_raw, epoch & U64)

    def _cookie_valid(self, pkt: Ipv4, cookie: int) -> bool:
        """a2s_cookie_valid: the current and (when set) the previous key generation, this epoch or the last."""
        cfg, epoch = self.state.config, self._cookie_epoch()
        keys = [cfg.cookie_key] + ([cfg.cookie_key_previous] if any(cfg.cookie_key_previous) else [])
        return any(cookie in (self._cookie_of(pkt, key, epoch), self._cookie_of(pkt, key, epoch - 1)) for key in keys)

    def _a2s_handle(self, pkt: Ipv4, svc: Service):
        """Returns when the request goes on to the game server; raises a verdict otherwise."""
        request = self._a2s_request(pkt)
        if request is None:
            return
        kind, cookie = request
        entry = self.state.a2s_cache.get(abi.a2s_cache_key(svc.id, kind))
        max_age_ns = svc.a2s_max_age_ms * NSEC_PER_MSEC
        if entry is None or entry.updated_ns > self._now or self._now - entry.updated_ns >= max_age_ns:
            return    # nothing fresh to serve: the game server answers (and challenges) itself
        cfg = self.state.config
        if cookie is None:   # issued under the current key generation only; 9 bytes for 25 or 9
            issued = self._cookie_of(pkt, cfg.cookie_key, self._cookie_epoch())
            self._send_udp_reply(pkt, b"\xff\xff\xff\xff\x41" + struct.pack("<I", issued), "tx_a2s_challenge")
        if self._cookie_valid(pkt, cookie):
            # A valid fleet cookie proves the address (allow-listed sources need no proof).
            if not self.state.allowed(pkt.saddr):
                self._verify(pkt.saddr, svc.id, "cookie")
            if not 5 <= len(entry.payload) <= A2S_CACHE_MAX_PAYLOAD:
                raise _verdict(DROP, "drop_error")
            self._send_udp_reply(pkt, entry.payload, "tx_a2s_cached", entry.csum)
        raise _verdict(DROP, "drop_bad_cookie")

    def _send_udp_reply(self, pkt: Ipv4, payload: bytes, tx_reason: str, known_payload_sum: int = None):
        """udp_reply_in_place + udp_reply_set_csum: the request turned around."""
        request_ip = self._frame[pkt.l3_off:pkt.l3_off + IPV4_HLEN]
        request_udp = self._frame[pkt.l4_off:pkt.l4_off + 8]
        ip = bytearray(request_ip)
        ip[12:16], ip[16:20] = request_ip[16:20], request_ip[12:16]
        struct.pack_into("!H", ip, 2, IPV4_HLEN + 8 + len(payload))
        struct.pack_into("!H", ip, 6, 0)       # frag_off
        ip[8] = REPLY_TTL
        ip[10:12] = ipv4_header_csum(bytes(ip))
        udp = bytearray(request_udp[2:4] + request_udp[0:2] + struct.pack("!H", 8 + len(payload)) + b"\0\0")
        if known_payload_sum is None:
            known_payload_sum = csum_words(payload + b"\0" * (len(payload) % 2))
        total = csum_words(bytes(ip[12:20])) + (IPPROTO_UDP << 8) + struct.unpack("<H", udp[4:6])[0]
        total += csum_words(bytes(udp)) + known_payload_sum
        check = _not16(csum_fold(total)) or 0xFFFF
        udp[6:8] = struct.pack("<H", check)
        # Back the way the request came: Ethernet addresses swapped, the VLAN tags kept, XDP_TX.
        ethernet = self._frame[6:12] + self._frame[0:6] + self._frame[12:pkt.l3_off]
        raise _verdict(TX, tx_reason, ethernet + bytes(ip) + bytes(udp) + payload)

    # -- return path: IPIP from a backend to the tunnel address --

    def _return_path(self, outer: Ipv4):
        state = self.state
        if outer.saddr not in state.backends:
            raise _verdict(DROP, "drop_bad_return")
        # The inner packet must fit in the outer one ("inconsistent headers" are malformed,
        # parsing.h): bytes after the outer packet (Ethernet padding, trailing junk) must never
        # become part of the player's packet.
        try:
            inner = parse_ipv4(self._frame, outer.l4_off, outer.l3_off + outer.ip_tot_len)
        except Malformed:
            raise _verdict(DROP, "drop_malformed")
        if inner.is_fragment:
            raise _verdict(DROP, "drop_fragment")
        svc = state.service(inner.proto, inner.saddr, inner.sport)
        if svc is None or svc.backend != outer.saddr:
            raise _verdict(DROP, "drop_bad_return")
        hop = self._fib(inner.daddr, inner.ip_tot_len)
        if hop.rc == "local":
            # Addressed to the POP itself (the agent's probes): left encapsulated for the kernel.
            # Its own address is no player's: nothing to verify.
            self._learn_from_reply(inner, svc, to_the_pop=True)
            raise _verdict(PASS, "pass_local")
        if inner.ttl <= 1:
            raise _verdict(DROP, "drop_ttl")
        if hop.rc not in ("ok", "no_neigh", "frag_needed"):
            raise _verdict(DROP, "drop_no_route")
        frame = self._frame[:12] + struct.pack("!H", ETH_P_IP) + self._decrement_ttl(self._frame[inner.l3_off:])
        if hop.rc == "frag_needed":
            # The kernel fragments it (forwarded) or, with DF, answers and drops it (not learnt).
            if not inner.dont_fragment:
                self._learn_from_reply(inner, svc)
            raise _verdict(PASS, "pass_too_big", frame)
        # Punch and snoop only for a reply that leaves (sent, or handed to the kernel to forward):
        # a reply dropped late must not teach the POP anything in a spoofer's name.
        try:
            self._emit(frame, hop, "tx_return")
        except Decision as decision:
            if decision.action != DROP:
                self._learn_from_reply(inner, svc)
            raise

    def _learn_from_reply(self, inner: Ipv4, svc: Service, to_the_pop: bool = False):
        payload = self._payload(inner)
        # Only a reply that proves the flow punches it: one anyone can provoke (connectionless,
        # SYN-ACK, RST) would let the asker's flood skip the rate limit. The POP's own: no flow.
        proves_flow = not to_the_pop and self._reply_proves_flow(inner, payload)
        if proves_flow and inner.proto in (IPPROTO_TCP, IPPROTO_UDP):
            key = PunchKey(inner.proto, inner.saddr, inner.sport, inner.daddr, inner.dport)
            self._effects.punch_seen = (key, self._now)
        if inner.proto == IPPROTO_UDP and svc.flags & SERVICE_F_A2S_SNOOP:
            self._a2s_snoop(inner, svc)
        if to_the_pop:
            return
        challenge = None
        if inner.proto == IPPROTO_UDP:
            challenge = game_model.server_challenge(payload, GAME_PROTOCOLS.index(svc.game_protocol))
        if challenge is not None:
            def store(state, address=inner.daddr, service_id=svc.id, value=challenge, now=self._now):
                source = state.sources.setdefault(address, Source())
                source.challenge_service_id, source.server_challenge, source.challenge_ns = service_id, value, now
            self._op("challenge for %s" % inner.daddr, store)
        if proves_flow:
            self._verify(inner.daddr, svc.id, "punch", create=True)
        # A minecraft service's SYN-ACK: the flow's entry (if the POP opened one) learns the ACK
        # that proves the player's own first data (its sequence number + 1) and the player's ISN
        # the backend accepted (its ACK - 1).
        if svc.game_protocol == "minecraft" and inner.proto == IPPROTO_TCP and \
                self._frame[inner.l4_off + 13] & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN | TCP_ACK:
            flow = McFlow(inner.daddr, inner.saddr, inner.dport, inner.sport)
            seq, ack = struct.unpack_from("!II", self._frame, inner.l4_off + 4)
            client_ack, isn = (seq + 1) & 0xFFFFFFFF, (ack - 1) & 0xFFFFFFFF

            def syn_acked(state):
                if flow in state.mc_flows:
                    state.mc_flows[flow] = state.mc_flows[flow]._replace(
                        syn_acked=abi.MC_FLOW_SYN_ACKED | client_ack, isn=isn)
            self._op("flow %s SYN-ACKed" % (flow,), syn_acked)

    def _reply_proves_flow(self, inner: Ipv4, payload: bytes) -> bool:
        """A game server's reply on an established session proves its player's address; a
        connectionless reply (FF FF FF FF, or a split one's part: FE FF FF FF) or a SYN-ACK/RST
        answers spoofed sources as readily."""
        if inner.proto == IPPROTO_UDP:
            return len(payload) < 4 or payload[:4] not in (CONNECTIONLESS, SPLIT)
        if inner.proto == IPPROTO_TCP:
            return not self._frame[inner.l4_off + 13] & (TCP_SYN | TCP_RST)
        return False

    def _a2s_snoop(self, inner: Ipv4, svc: Service):
        """Single-packet info/players/rules replies (FF FF FF FF 49/44/45) are cached under their
        kind; a split reply (FE FF FF FF), a challenge or anything else is not."""
        payload = self._frame[inner.payload_off:inner.payload_off + inner.payload_len]
        if not 5 <= len(payload) <= A2S_CACHE_MAX_PAYLOAD or payload[:4] != b"\xff" * 4 \
                or payload[4] not in A2S_REPLY_KINDS:
            return
        key = abi.a2s_cache_key(svc.id, A2S_REPLY_KINDS[payload[4]])
        self._effects.cache_stored = (key, CacheEntry(self._now, payload, payload_csum(payload)))
