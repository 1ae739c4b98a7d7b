"""bpf/include/mc_proto.h through the kernel: Minecraft's handshake validator on crafted segments.

The fixture program tests/bpf/fixtures_game/mc_proto_xdp.c runs mc_handshake_valid() on each
frame and leaves its answer (and the fields it read) in its map; the tests compare it with what
the protocol says (well-formed handshakes of every next state, address length and VarInt width;
every truncation, wrong lengths, over-wide and non-canonical VarInts, wrong id and next state,
the legacy ping, attackers' random payloads) and with the reference model tests/bpf/mc_model.py
(a differential test on random and mutated handshakes).
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import TCP
from scapy.packet import Raw

from ansible_collections.anycast.edge.plugins.module_utils import _bpf

from . import fuzz
from .fuzz import CLIENT, SERVICE
from . import mc_model as mc
from . import packets as pk
from .btf_check import assert_layout_matches_btf

FIXTURE = Path(__file__).resolve().parent / "fixtures_game" / "mc_proto_xdp.c"
PARSE_IPV4 = 0

# struct mc_answers and struct mc_handshake of the fixture (checked against its BTF below)
HANDSHAKE = struct.Struct("<IIIII")
HANDSHAKE_MEMBERS = ("protocol_version", "address_len", "port", "next_state", "end")
ANSWERS = struct.Struct("<IiII5I")
ANSWERS_MEMBERS = ("runs", "parse_result", "valid", "pad", "handshake")

EXAMPLES = fuzz.examples("MC_FUZZ_EXAMPLES")


@pytest.fixture(scope="module")
def mc_object(fixture_program):
    """mc_proto_xdp.c compiled with the Makefile's flags and loaded (the verifier accepts it)."""
    return fixture_program(FIXTURE)


def answer(mc_object, frame: bytes):
    """(parse result, what mc_handshake_valid() answered: an mc.Handshake or None) for one frame."""
    key = struct.pack("<I", 0)
    before = ANSWERS.unpack(mc_object.map("mc_answers").lookup(key))[0]
    result = mc_object.program("xdp_mc_proto").test_run(frame)
    assert result.retval == _bpf.XDP_PASS
    fields = ANSWERS.unpack(mc_object.map("mc_answers").lookup(key))
    assert fields[0] == before + 1
    handshake = mc.Handshake(*fields[4:]) if fields[2] else None
    if not fields[2]:
        assert fields[4:] == (0, 0, 0, 0, 0)
    return fields[1], handshake


def tcp(payload: bytes, **kwargs) -> bytes:
    return pk.tcp_frame(CLIENT, SERVICE, 40000, 25565, payload, flags="PA", **kwargs)


def assert_agrees(mc_object, payload: bytes, label: str = ""):
    """The C's answer for a TCP segment carrying payload is the model's; returns it."""
    parsed, handshake = answer(mc_object, tcp(payload))
    assert parsed == PARSE_IPV4
    assert handshake == mc.handshake(payload), "%s payload %r" % (label, payload)
    return handshake


# ---- well-formed handshakes -------------------------------------------------------------------

LONGEST_ASCII = b"a" * 63 + b"." + b"b" * 63 + b"." + b"c" * 63 + b"." + b"d" * 61   # 253: DNS's longest name
WELL_FORMED = {
    # name: (address, port, next state, protocol version)
    "status": (b"mc.example.net", 25565, mc.NEXT_STATUS, 767),
    "login": (b"mc.example.net", 25565, mc.NEXT_LOGIN, 767),
    "transfer": (b"mc.example.net", 25565, mc.NEXT_TRANSFER, 766),
    "ip_literal": (b"198.51.100.10", 25565, mc.NEXT_LOGIN, 47),
    "empty_address": (b"", 25565, mc.NEXT_STATUS, 4),
    "one_byte_address": (b"x", 1, mc.NEXT_LOGIN, 0),
    "address_127": (b"a" * 127, 65535, mc.NEXT_LOGIN, 767),     # the last one-byte address length
    "address_128": (b"a" * 128, 0, mc.NEXT_LOGIN, 767),         # the first two-byte one
    "longest_hostname": (LONGEST_ASCII, 25565, mc.NEXT_LOGIN, 767),
    "forge_marker": (b"mc.example.net\x00FML3\x00", 25565, mc.NEXT_LOGIN, 767),
    "unicode_255_chars": (("\u20ac" * 255).encode(), 25565, mc.NEXT_STATUS, 767),  # 765 bytes: String(255)'s limit
    "ping_version_minus_one": (b"mc.example.net", 25565, mc.NEXT_STATUS, -1),   # a 5-byte VarInt
    "snapshot_version": (b"mc.example.net", 25565, mc.NEXT_LOGIN, 0x40000000 | 200),  # 5 bytes
    "version_2_31_minus_1": (b"mc.example.net", 25565, mc.NEXT_LOGIN, 2 ** 31 - 1),
    "version_127": (b"h", 25565, mc.NEXT_LOGIN, 127),
    "version_128": (b"h", 25565, mc.NEXT_LOGIN, 128),
}


def well_formed(name: str) -> bytes:
    address, port, next_state, version = WELL_FORMED[name]
    return mc.handshake_packet(address, port, next_state, version)


def test_answers_layout_matches_the_c(mc_object):
    layouts = {"mc_answers": (ANSWERS, ANSWERS_MEMBERS), "mc_handshake": (HANDSHAKE, HANDSHAKE_MEMBERS)}
    assert_layout_matches_btf(mc_object, layouts, "mc_answers")
    assert_layout_matches_btf(mc_object, layouts, "mc_handshake")


@pytest.mark.parametrize("name", sorted(WELL_FORMED))
def test_well_formed_handshakes(mc_object, name):
    address, port, next_state, version = WELL_FORMED[name]
    payload = well_formed(name)
    handshake = assert_agrees(mc_object, payload, name)
    assert handshake == mc.Handshake(version & 0xFFFFFFFF, len(address), port, next_state, len(payload))


def test_the_widest_fields(mc_object):
    """Five-byte protocol version, two-byte address length and two-byte packet length at once: the
    longest head (10 bytes) and the longest handshake (778 bytes)."""
    payload = mc.handshake_packet(("\u20ac" * 255).encode(), 25565, mc.NEXT_LOGIN, -1)
    assert payload[:2] == mc.varint(776) and len(payload) == 778
    assert payload[3:8] == b"\xff\xff\xff\xff\x0f" and payload[8:10] == mc.varint(765)
    assert assert_agrees(mc_object, payload).end == 778


@pytest.mark.parametrize("follow", ["status_request", "login_start", "junk"])
def test_what_follows_in_the_same_segment_is_not_read(mc_object, follow):
    """A client writes its next packet with the handshake; the handshake alone is what is checked."""
    first = well_formed("login")
    rest = {"status_request": mc.status_request(), "login_start": mc.login_start(),
            "junk": bytes(range(256)) * 4}[follow]
    handshake = assert_agrees(mc_object, first + rest)
    assert handshake.end == len(first)


def test_tcp_options_vlan_tags_and_padding_do_not_move_the_payload(mc_object):
    payload = well_formed("status")
    options = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]
    with_options = pk.frame(pk.ipv4(CLIENT, SERVICE, TCP(sport=40000, dport=25565, flags="PA", options=options)
                                    / Raw(payload)))
    assert answer(mc_object, with_options)[1] == mc.handshake(payload)
    assert answer(mc_object, tcp(payload, vlan=7))[1] == mc.handshake(payload)
    qinq = pk.add_vlan(tcp(payload, vlan=7), 100, tpid=pk.ETH_P_8021AD)
    assert answer(mc_object, qinq)[1] == mc.handshake(payload)
    assert answer(mc_object, pk.pad(tcp(payload), b"\x00" * 30))[1] == mc.handshake(payload)


# ---- what an attacker (or a broken client) sends ---------------------------------------------------

@pytest.mark.parametrize("name", ["status", "login", "empty_address", "longest_hostname", "snapshot_version"])
def test_every_truncation_is_refused(mc_object, name):
    payload = well_formed(name)
    for length in range(len(payload)):
        assert assert_agrees(mc_object, payload[:length], "%s[:%d]" % (name, length)) is None


@pytest.mark.parametrize("name", ["status", "empty_address", "address_128"])
def test_bytes_in_the_ethernet_padding_are_not_payload(mc_object, name):
    """A handshake cut short whose missing bytes sit after the IP packet is refused: the validator
    reads payload_len bytes, not the frame."""
    payload = well_formed(name)
    for cut in (1, 3, len(payload) - 4):
        frame = pk.pad(tcp(payload[:len(payload) - cut]), payload[len(payload) - cut:])
        assert answer(mc_object, frame)[1] is None, (name, cut)


def with_length(payload: bytes, length: int) -> bytes:
    """The handshake with its length prefix replaced (the rest unchanged)."""
    _old, start = mc.read_varint(payload, 0, 2)
    return mc.varint(length) + payload[start:]


@pytest.mark.parametrize("name", ["status", "address_128", "unicode_255_chars"])
def test_a_declared_length_other_than_the_fields_is_refused(mc_object, name):
    payload = well_formed(name)
    length, start = mc.read_varint(payload, 0, 2)
    for wrong in (0, 1, length - 1, length + 1, length + 2, 2 ** 14 - 1):
        changed = with_length(payload, wrong) + b"\x01\x00" * 8   # bytes enough for a longer length
        assert assert_agrees(mc_object, changed, "length %d" % wrong) is None
    assert assert_agrees(mc_object, with_length(payload, length)) is not None


def test_address_longer_than_string_255_is_refused(mc_object):
    at_limit = mc.handshake_packet(b"a" * mc.ADDRESS_MAX_BYTES)
    assert assert_agrees(mc_object, at_limit).address_len == 765
    for address_len in (766, 1000, 1400):
        over = mc.handshake_packet(b"a" * address_len)
        assert assert_agrees(mc_object, over, "address %d" % address_len) is None


@pytest.mark.parametrize("spelling", [
    b"\x80\x00",                        # 0 in two bytes
    b"\xff\x00",                        # 127 in two bytes
    b"\x80\x80\x80\x80\x00",            # 0 in five
    b"\xff\xff\xff\xff\x1f",            # 33 bits
    b"\xff\xff\xff\xff\x7f",
    b"\xff\xff\xff\xff\x8f\x01",        # six bytes
    b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",   # ten (a VarLong's width)
])
def test_over_wide_or_non_canonical_protocol_versions_are_refused(mc_object, spelling):
    body = b"\x00" + spelling + mc.string(b"mc.example.net") + struct.pack(">H", 25565) + b"\x02"
    payload = mc.varint(len(body)) + body
    assert assert_agrees(mc_object, payload) is None


def test_non_canonical_lengths_are_refused(mc_object):
    payload = well_formed("status")
    body = payload[1:]
    for spelling in (bytes([0x80 | len(body), 0x00]), bytes([0x80 | len(body), 0x80, 0x00]),
                     bytes([0x80 | len(body), 0x80, 0x80, 0x00])):
        assert assert_agrees(mc_object, spelling + body, spelling.hex()) is None
    # The address length in two bytes where one does (0x0e, 0x00 for 14)
    address = b"mc.example.net"
    body = b"\x00" + mc.varint(767) + bytes([0x80 | len(address), 0x00]) + address + struct.pack(">H", 25565) + b"\x01"
    assert assert_agrees(mc_object, mc.varint(len(body)) + body) is None


@pytest.mark.parametrize("packet_id", [b"\x01", b"\x02", b"\x7f", b"\x80\x00", b"\xfe", b"\xff"])
def test_another_packet_id_is_refused(mc_object, packet_id):
    body = packet_id + well_formed("login")[2:]
    assert assert_agrees(mc_object, mc.varint(len(body)) + body) is None


@pytest.mark.parametrize("next_state", [0, 4, 5, 0x7f, 0xff])
def test_another_next_state_is_refused(mc_object, next_state):
    payload = well_formed("login")
    assert assert_agrees(mc_object, payload[:-1] + bytes([next_state])) is None
    assert assert_agrees(mc_object, payload) is not None


def test_next_state_as_a_two_byte_varint_is_refused(mc_object):
    body = well_formed("login")[1:-1] + b"\x82\x00"
    assert assert_agrees(mc_object, mc.varint(len(body)) + body) is None


@pytest.mark.parametrize("ping", [b"\xfe", b"\xfe\x01", mc.legacy_ping(), mc.legacy_ping("198.51.100.10", 25566, 78)])
def test_the_legacy_server_list_ping_is_refused(mc_object, ping):
    """Clients before 1.7 (2013) ping with FE 01 FA ...: not a handshake (docs/game-protocols.md)."""
    assert assert_agrees(mc_object, ping) is None


def test_only_unfragmented_tcp_is_considered(mc_object):
    payload = well_formed("login")
    assert answer(mc_object, tcp(payload))[1] is not None
    for frame in (pk.udp_frame(CLIENT, SERVICE, 40000, 25565, payload),
                  pk.set_fragment(tcp(payload), more_fragments=True),
                  pk.icmp_echo_frame(CLIENT, SERVICE, payload)):
        parsed, handshake = answer(mc_object, frame)
        assert parsed == PARSE_IPV4 and handshake is None


def test_a_random_payload_flood_is_never_a_handshake(mc_object):
    """What a flood sends: random bytes of every length. None is a handshake, and a handshake sent
    the same way (same addresses, ports) is: the check, not the path, decides."""
    rng = random.Random(14)
    for _flood_packet in range(400):
        payload = rng.randbytes(rng.choice((1, 6, 7, 8, 10, 16, 20, 32, 64, 200, 536, 1200, 1460)))
        assert assert_agrees(mc_object, payload, "random") is None
    assert answer(mc_object, tcp(well_formed("login")))[1] is not None


def test_a_flood_that_knows_the_layout_is_refused_unless_every_length_adds_up(mc_object):
    """A length byte, id 0, a protocol version, then random bytes: only a payload whose lengths
    add up and whose next state is 1..3 passes (the server then refuses what else is wrong)."""
    rng = random.Random(1414)
    valid = 0
    for _flood_packet in range(400):
        body = b"\x00" + mc.varint(767) + rng.randbytes(rng.choice((4, 8, 20, 40, 100)))
        valid += assert_agrees(mc_object, mc.varint(len(body)) + body, "layout-aware") is not None
    # The address length byte must equal the body's rest less 3, and the last byte be 1..3: ~2^-9.
    assert valid <= 5


# ---- the differential test: C against mc_model.py -----------------------------------------------

def mutate(payload: bytes, draw) -> bytes:
    """One or more of the changes an attacker (or a lossy path) makes to a handshake; the numbers
    of this protocol are VarInts."""
    return fuzz.mutate(payload, draw, (0x00, 0x01, 0x02, 0x03, 0x04, 0x7F, 0x80, 0x81, 0xFE, 0xFF),
                       (b"\x00", b"\x80", b"\xff", b"\x01"),
                       lambda draw: mc.varint(draw(st.integers(-2 ** 31, 2 ** 32 - 1))))


@st.composite
def payloads(draw):
    source = draw(st.sampled_from(("random", "layout", "well_formed", "mutated", "mutated", "mutated")))
    if source == "random":
        return draw(st.binary(min_size=0, max_size=64))
    if source == "layout":
        body = b"\x00" + draw(st.binary(min_size=0, max_size=30))
        return mc.varint(len(body) + draw(st.sampled_from((0, 0, 0, -1, 1)))) + body
    address = draw(st.one_of(st.binary(max_size=20), st.binary(min_size=120, max_size=140),
                             st.sampled_from((b"", b"a" * 765, b"a" * 766))))
    payload = mc.handshake_packet(address, draw(st.integers(0, 65535)),
                                  draw(st.sampled_from((0, 1, 2, 3, 4, 2, 2))),
                                  draw(st.one_of(st.integers(0, 800), st.integers(-2 ** 31, 2 ** 32 - 1))))
    payload += draw(st.sampled_from((b"", mc.status_request(), mc.login_start())))
    return payload if source == "well_formed" else mutate(payload, draw)


def test_program_agrees_with_mc_model(mc_object):
    """Random payloads, well-formed handshakes and mutated ones: the C answers what the model answers."""
    seen = {"valid": 0, "examples": 0}

    @fuzz.differential(EXAMPLES)
    @given(payload=payloads())
    def check(payload):
        seen["valid"] += assert_agrees(mc_object, payload) is not None
        seen["examples"] += 1

    check()
    print("minecraft differential: %(examples)d payloads, %(valid)d handshakes" % seen)
    # The generator reaches both answers, not only "no".
    assert seen["examples"] >= min(EXAMPLES, 100)
    assert 0 < seen["valid"] < seen["examples"]
