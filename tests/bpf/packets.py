"""Frames for the BPF tests: scapy builds valid packets, byte-level mutators break them on purpose.

Builders return the frame as bytes (what BPF_PROG_TEST_RUN takes). Mutators take a frame and
return a new one with exactly one thing changed, so a test says what is wrong with a packet
instead of hand-writing its bytes. They work on raw offsets because scapy would "fix" the very
inconsistencies (lengths, checksums, data offsets) the tests want to send.

    frame = udp_frame("203.0.113.7", "198.51.100.10", 5000, 27015, a2s_request())
    bad = set_udp_len(frame, 3)
"""

from __future__ import annotations

import struct

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from harness import topology as topo

ETH_HLEN = 14
VLAN_HLEN = 4
ETH_P_IP = 0x0800
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8

# Frames reach the POP's uplink from the upstream router.
DEFAULT_SRC_MAC = topo.ROUTER_MAC
DEFAULT_DST_MAC = topo.MAC[topo.UPLINK]

# ---- A2S (Valve server queries; see notes/anchor-facts.md) ------------------------------------------

A2S_INFO_REQUEST = b"\xff\xff\xff\xffTSource Engine Query\x00"


def a2s_request(cookie: int | None = None) -> bytes:
    """A2S_INFO request (25 bytes), or with a 4-byte challenge appended (29 bytes, little endian)."""
    return A2S_INFO_REQUEST + (b"" if cookie is None else struct.pack("<I", cookie & 0xFFFFFFFF))


A2S_FIELD_REQUEST_TYPES = {"player": b"\x55", "rules": b"\x56"}     # 'U', 'V'


def a2s_field_request(kind: str, cookie: int | None = None) -> bytes:
    """A2S_PLAYER ("player") or A2S_RULES ("rules") request: 9 bytes, the challenge field last
    (little endian); None asks for a challenge (FF FF FF FF, Valve's -1)."""
    return b"\xff\xff\xff\xff" + A2S_FIELD_REQUEST_TYPES[kind] + struct.pack(
        "<I", 0xFFFFFFFF if cookie is None else cookie & 0xFFFFFFFF)


def a2s_player_reply(names=("alice", "bob")) -> bytes:
    """A2S_PLAYER reply (FF FF FF FF 44): count, then index, name, score, duration per player."""
    body = b"".join(bytes([index]) + name.encode() + b"\0" + struct.pack("<if", 10 * index, 60.5 * index)
                    for index, name in enumerate(names))
    return b"\xff\xff\xff\xff\x44" + bytes([len(names)]) + body


def a2s_rules_reply(rules=(("mp_friendlyfire", "0"), ("sv_cheats", "0"))) -> bytes:
    """A2S_RULES reply (FF FF FF FF 45): count (16 bits), then name and value strings."""
    body = b"".join(name.encode() + b"\0" + value.encode() + b"\0" for name, value in rules)
    return b"\xff\xff\xff\xff\x45" + struct.pack("<H", len(rules)) + body


def a2s_challenge(cookie: int) -> bytes:
    """S2C_CHALLENGE: FF FF FF FF 41 and the challenge, little endian."""
    return b"\xff\xff\xff\xff\x41" + struct.pack("<I", cookie & 0xFFFFFFFF)


def a2s_info_reply(name: str = "edge test server", map_name: str = "de_dust2", folder: str = "csgo",
                   game: str = "Counter-Strike", app_id: int = 730, players: int = 3, max_players: int = 24,
                   version: str = "1.0.0.0", extra: bytes = b"") -> bytes:
    """A2S_INFO reply (FF FF FF FF 49 ...), the fields in the order Valve documents them."""
    def cstr(text):
        return text.encode() + b"\0"
    return (b"\xff\xff\xff\xff\x49" + bytes([17]) + cstr(name) + cstr(map_name) + cstr(folder) + cstr(game)
            + struct.pack("<H", app_id) + bytes([players, max_players, 0]) + b"dl\x00\x01" + cstr(version)
            + (bytes([0]) if not extra else extra))


# ---- builders -------------------------------------------------------------------------------------------

def frame(ip_layer, vlan: int | None = None, src_mac: str = DEFAULT_SRC_MAC, dst_mac: str = DEFAULT_DST_MAC,
          vlan_type: int = ETH_P_8021Q) -> bytes:
    """Wrap an L3 packet (scapy layer or raw bytes) in Ethernet, with one VLAN tag if vlan is given."""
    l3 = ip_layer if not isinstance(ip_layer, (bytes, bytearray)) else Raw(bytes(ip_layer))
    if isinstance(ip_layer, (bytes, bytearray)):
        ethertype = 0x86DD if ip_layer[:1] and ip_layer[0] >> 4 == 6 else ETH_P_IP
    else:
        ethertype = None
    if vlan is None:
        eth = Ether(src=src_mac, dst=dst_mac) if ethertype is None else Ether(src=src_mac, dst=dst_mac, type=ethertype)
        return bytes(eth / l3)
    eth = Ether(src=src_mac, dst=dst_mac, type=vlan_type)
    tag = Dot1Q(vlan=vlan) if ethertype is None else Dot1Q(vlan=vlan, type=ethertype)
    return bytes(eth / tag / l3)


def ipv4(src: str, dst: str, l4, ttl: int = 64, tos: int = 0, df: bool = False, ident: int = 1, proto=None):
    """A scapy IPv4 layer over l4 (a scapy layer or raw bytes)."""
    fields = dict(src=src, dst=dst, ttl=ttl, tos=tos, id=ident, flags="DF" if df else 0)
    if proto is not None:
        fields["proto"] = proto
    payload = l4 if not isinstance(l4, (bytes, bytearray)) else Raw(bytes(l4))
    return IP(**fields) / payload


def udp_frame(src, dst, sport, dport, payload: bytes = b"", vlan=None, **ip_fields) -> bytes:
    return frame(ipv4(src, dst, UDP(sport=sport, dport=dport) / Raw(payload), **ip_fields), vlan=vlan)


def tcp_frame(src, dst, sport, dport, payload: bytes = b"", flags: str = "S", vlan=None, seq: int = 1000,
              ack: int = 0, **ip_fields) -> bytes:
    return frame(ipv4(src, dst, TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack) / Raw(payload),
                      **ip_fields), vlan=vlan)


def icmp_echo_frame(src, dst, payload: bytes = b"", ident: int = 1, seq: int = 1, vlan=None, icmp_type: int = 8,
                    **ip_fields) -> bytes:
    """An echo request; another icmp_type (an error, a timestamp ...) keeps the same 8-byte header."""
    return frame(ipv4(src, dst, ICMP(type=icmp_type, id=ident, seq=seq) / Raw(payload), **ip_fields), vlan=vlan)


def raw_ip_frame(src, dst, proto: int, payload: bytes = b"", vlan=None, **ip_fields) -> bytes:
    """IPv4 carrying an arbitrary protocol number (GRE, ...) and raw payload."""
    return frame(ipv4(src, dst, payload, proto=proto, **ip_fields), vlan=vlan)


def ip_bytes(eth_frame: bytes) -> bytes:
    """The L3 packet of a frame (after Ethernet and at most two VLAN tags)."""
    return eth_frame[l3_offset(eth_frame):]


def ipip_frame(outer_src, outer_dst, inner_ip: bytes, vlan=None, ttl: int = 64, tos: int = 0, df: bool = False,
               **frame_fields) -> bytes:
    """IPv4-in-IPv4 (protocol 4) around inner_ip (an IP packet as bytes)."""
    return frame(ipv4(outer_src, outer_dst, inner_ip, ttl=ttl, tos=tos, df=df, ident=0, proto=4), vlan=vlan,
                 **frame_fields)


def ipv6_frame(src, dst, payload: bytes = b"", nh: int = 17, vlan=None) -> bytes:
    return frame(IPv6(src=src, dst=dst, nh=nh) / Raw(payload), vlan=vlan)


def arp_frame(sender_ip="10.0.0.254", target_ip="10.0.0.1") -> bytes:
    return bytes(Ether(src=DEFAULT_SRC_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=sender_ip, pdst=target_ip))


# ---- offsets ------------------------------------------------------------------------------------------

def l3_offset(eth_frame: bytes) -> int:
    """14, or 18 / 22 behind one or two 802.1Q/802.1ad tags (past the end of a frame cut inside
    its tags: such a frame has no L3 bytes)."""
    offset = ETH_HLEN
    for dummy in range(2):
        if offset > len(eth_frame):
            break
        (ethertype,) = struct.unpack_from("!H", eth_frame, offset - 2)
        if ethertype not in (ETH_P_8021Q, ETH_P_8021AD):
            break
        offset += VLAN_HLEN
    return offset


def l4_offset(eth_frame: bytes) -> int:
    l3 = l3_offset(eth_frame)
    return l3 + (eth_frame[l3] & 0x0F) * 4


def ipv4_checksum(header: bytes) -> int:
    """RFC 1071 checksum of an IPv4 header (its own check field taken as zero)."""
    data = header[:10] + b"\0\0" + header[12:]
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def fix_ip_checksum(eth_frame: bytes, l3: int | None = None) -> bytes:
    """Recompute the checksum of the IPv4 header at l3 (default: the frame's L3 offset)."""
    out = bytearray(eth_frame)
    l3 = l3_offset(eth_frame) if l3 is None else l3
    hdr_len = max(20, (out[l3] & 0x0F) * 4)
    if l3 + hdr_len > len(out):
        return bytes(out)
    struct.pack_into("!H", out, l3 + 10, ipv4_checksum(bytes(out[l3:l3 + hdr_len])))
    return bytes(out)


# ---- mutators (each returns a new frame) -----------------------------------------------------------------

def truncate(eth_frame: bytes, length: int) -> bytes:
    return eth_frame[:max(0, length)]


def pad(eth_frame: bytes, extra: bytes) -> bytes:
    """Bytes after the IP packet (Ethernet padding or junk); IP lengths unchanged."""
    return eth_frame + extra


def set_ip_field(eth_frame: bytes, fmt: str, offset: int, value: int, fix_checksum: bool = True) -> bytes:
    """Write value (struct format fmt, network order) at offset within the IPv4 header."""
    out = bytearray(eth_frame)
    l3 = l3_offset(eth_frame)
    struct.pack_into("!" + fmt, out, l3 + offset, value)
    return fix_ip_checksum(bytes(out)) if fix_checksum else bytes(out)


def set_tot_len(eth_frame: bytes, value: int, fix_checksum: bool = True) -> bytes:
    return set_ip_field(eth_frame, "H", 2, value & 0xFFFF, fix_checksum)


def set_ihl(eth_frame: bytes, ihl: int, fix_checksum: bool = True) -> bytes:
    out = bytearray(eth_frame)
    l3 = l3_offset(eth_frame)
    out[l3] = (out[l3] & 0xF0) | (ihl & 0x0F)
    return fix_ip_checksum(bytes(out)) if fix_checksum else bytes(out)


def set_version(eth_frame: bytes, version: int) -> bytes:
    out = bytearray(eth_frame)
    l3 = l3_offset(eth_frame)
    out[l3] = ((version & 0x0F) << 4) | (out[l3] & 0x0F)
    return bytes(out)


def set_ttl(eth_frame: bytes, ttl: int) -> bytes:
    return set_ip_field(eth_frame, "B", 8, ttl & 0xFF)


def set_fragment(eth_frame: bytes, more_fragments: bool = True, offset_units: int = 0, df: bool = False) -> bytes:
    """Set the flags/fragment-offset word (offset in 8-byte units)."""
    word = (0x2000 if more_fragments else 0) | (0x4000 if df else 0) | (offset_units & 0x1FFF)
    return set_ip_field(eth_frame, "H", 6, word)


def insert_ip_options(eth_frame: bytes, options: bytes) -> bytes:
    """Insert option bytes (padded with EOL to a multiple of 4) after the 20-byte header; IHL, total
    length and checksum follow."""
    options = options + b"\0" * (-len(options) % 4)
    l3 = l3_offset(eth_frame)
    ihl = eth_frame[l3] & 0x0F
    end = l3 + ihl * 4
    out = bytearray(eth_frame[:end] + options + eth_frame[end:])
    out[l3] = (out[l3] & 0xF0) | ((ihl + len(options) // 4) & 0x0F)
    (tot_len,) = struct.unpack_from("!H", out, l3 + 2)
    struct.pack_into("!H", out, l3 + 2, (tot_len + len(options)) & 0xFFFF)
    return fix_ip_checksum(bytes(out))


def set_udp_len(eth_frame: bytes, value: int) -> bytes:
    out = bytearray(eth_frame)
    struct.pack_into("!H", out, l4_offset(eth_frame) + 4, value & 0xFFFF)
    return bytes(out)


def set_tcp_doff(eth_frame: bytes, doff: int) -> bytes:
    out = bytearray(eth_frame)
    at = l4_offset(eth_frame) + 12
    out[at] = ((doff & 0x0F) << 4) | (out[at] & 0x0F)
    return bytes(out)


def set_ethertype(eth_frame: bytes, ethertype: int) -> bytes:
    out = bytearray(eth_frame)
    struct.pack_into("!H", out, 12, ethertype)
    return bytes(out)


def add_vlan(eth_frame: bytes, vid: int, tpid: int = ETH_P_8021Q) -> bytes:
    """Insert one more tag right after the MAC addresses (an already tagged frame becomes QinQ)."""
    return eth_frame[:12] + struct.pack("!HH", tpid, vid & 0x0FFF) + eth_frame[12:]


def flip_byte(eth_frame: bytes, index: int, xor: int) -> bytes:
    out = bytearray(eth_frame)
    if out:
        out[index % len(out)] ^= xor & 0xFF
    return bytes(out)
