"""bpf/include/game_proto.h through the kernel: the game-protocol validators on crafted packets.

The fixture program tests/bpf/fixtures_game/game_proto_xdp.c runs game_handshake_shaped(),
game_server_challenge() and game_client_echo() on each frame for every game protocol value and
leaves the answers in its map; the tests compare them with what the protocols say (well-formed,
truncated, over-long, wrong-magic packets, attackers' random payloads) and with the reference
model tests/bpf/game_model.py (a differential test on random and mutated handshakes).
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.anycast.edge.plugins.module_utils import _bpf
from ansible_collections.anycast.edge.plugins.module_utils._edge_abi import GAME_PROTOCOLS

from . import fuzz
from .fuzz import CLIENT, SERVICE
from . import game_model as gm
from . import packets as pk
from .btf_check import assert_layout_matches_btf, enum_names

FIXTURE = Path(__file__).resolve().parent / "fixtures_game" / "game_proto_xdp.c"
PROTOCOLS_TRIED = gm.EDGE_GAME_COUNT + 1   # and one value no protocol has
UNKNOWN_PROTOCOL = gm.EDGE_GAME_COUNT
SOURCE, GOLDSRC, NONE = gm.EDGE_GAME_SOURCE, gm.EDGE_GAME_GOLDSRC, gm.EDGE_GAME_NONE
PARSE_IPV4 = 0

# struct game_answers of the fixture (checked against its BTF below)
ANSWERS = struct.Struct("<Ii" + "%dI" % PROTOCOLS_TRIED * 5)
ANSWERS_MEMBERS = ("runs", "parse_result", "shaped", "server_found", "server_challenge", "echo_found",
                   "echo_challenge")

EXAMPLES = fuzz.examples("GAME_FUZZ_EXAMPLES")


# ---- the fixture program -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def game_object(fixture_program):
    """game_proto_xdp.c compiled with the Makefile's flags and loaded (the verifier accepts it)."""
    return fixture_program(FIXTURE)


class Answers:
    """What the three C functions answered for one frame, per game protocol value."""

    def __init__(self, raw: bytes):
        fields = ANSWERS.unpack(raw)
        self.runs, self.parse_result = fields[0], fields[1]
        rest = fields[2:]
        n = PROTOCOLS_TRIED
        self.shaped = [bool(v) for v in rest[0:n]]
        found, values = rest[n:2 * n], rest[2 * n:3 * n]
        self.server = [values[i] if found[i] else None for i in range(n)]
        found, values = rest[3 * n:4 * n], rest[4 * n:5 * n]
        self.echo = [values[i] if found[i] else None for i in range(n)]

    def for_protocol(self, protocol: int):
        return self.shaped[protocol], self.server[protocol], self.echo[protocol]


def run(game_object, frame: bytes) -> Answers:
    before = Answers(game_object.map("game_answers").lookup(struct.pack("<I", 0))).runs
    result = game_object.program("xdp_game_proto").test_run(frame)
    assert result.retval == _bpf.XDP_PASS
    answers = Answers(game_object.map("game_answers").lookup(struct.pack("<I", 0)))
    assert answers.runs == before + 1
    return answers


def udp(payload: bytes, **kwargs) -> bytes:
    return pk.udp_frame(CLIENT, SERVICE, 27005, 27015, payload, **kwargs)


def model_answers(payload: bytes, protocol: int):
    return (gm.handshake_shaped(payload, protocol), gm.server_challenge(payload, protocol),
            gm.client_echo(payload, protocol))


def assert_agrees(game_object, payload: bytes, label: str = ""):
    """The C answers for a UDP packet carrying payload are the model's, for every protocol value."""
    answers = run(game_object, udp(payload))
    assert answers.parse_result == PARSE_IPV4
    for protocol in range(PROTOCOLS_TRIED):
        assert answers.for_protocol(protocol) == model_answers(payload, protocol), (
            "%s protocol %d, payload %r" % (label, protocol, payload))
    return answers


# ---- well-formed packets of each protocol ---------------------------------------------------------

CHALLENGE = 0x8F3A5C21          # above 2^31-1: a GoldSrc client echoes it negative
CLIENT_CHALLENGE = 0x0123ABCD

WELL_FORMED = {
    # name: (payload, shaped for (source, goldsrc), server challenge for (source, goldsrc), echo for (source, goldsrc))
    "a2s_info": (pk.a2s_request(), (True, True), (None, None), (None, None)),
    "a2s_info_challenged": (pk.a2s_request(0x11223344), (True, True), (None, None), (None, None)),
    "a2s_player_challenge_request": (pk.a2s_field_request("player"), (True, True), (None, None), (None, None)),
    "a2s_player": (pk.a2s_field_request("player", 0x55667788), (True, True), (None, None), (None, None)),
    "a2s_rules": (pk.a2s_field_request("rules", 0x55667788), (True, True), (None, None), (None, None)),
    "source_getchallenge": (gm.source_getchallenge_packet(CLIENT_CHALLENGE), (True, False), (None, None),
                            (None, None)),
    "source_challenge_steam": (gm.source_challenge_packet(CHALLENGE, CLIENT_CHALLENGE), (False, False),
                               (CHALLENGE, None), (None, None)),
    "source_challenge_cdkey": (gm.source_challenge_packet(CHALLENGE, CLIENT_CHALLENGE, auth=2), (False, False),
                               (CHALLENGE, None), (None, None)),
    "source_connect": (gm.source_connect_packet(CHALLENGE, CLIENT_CHALLENGE), (True, False), (None, None),
                       (CHALLENGE, None)),
    "source_connect_shortest": (gm.source_connect_packet(CHALLENGE, CLIENT_CHALLENGE, name=b"")[:24],
                                (True, False), (None, None), (CHALLENGE, None)),
    "goldsrc_getchallenge": (gm.goldsrc_getchallenge_packet(), (False, True), (None, None), (None, None)),
    "goldsrc_getchallenge_nul": (gm.goldsrc_getchallenge_packet(nul=True), (False, True), (None, None),
                                 (None, None)),
    "goldsrc_challenge_steam": (gm.goldsrc_challenge_packet(CHALLENGE), (False, False), (None, CHALLENGE),
                                (None, None)),
    "goldsrc_challenge_cdkey": (gm.goldsrc_challenge_packet(CHALLENGE, auth=2), (False, False), (None, CHALLENGE),
                                (None, None)),
    "goldsrc_connect": (gm.goldsrc_connect_packet(CHALLENGE), (False, True), (None, None), (None, CHALLENGE)),
    "goldsrc_connect_signed": (gm.goldsrc_connect_packet(CHALLENGE, signed=True), (False, True), (None, None),
                               (None, CHALLENGE)),
}


def test_answers_layout_and_protocol_names_match_the_c(game_object, repo_root):
    assert_layout_matches_btf(game_object, {"game_answers": (ANSWERS, ANSWERS_MEMBERS)}, "game_answers")
    header = (repo_root / "bpf" / "include" / "edge_abi.h").read_text()
    assert enum_names(header, "edge_game_protocol", "EDGE_GAME_") == list(GAME_PROTOCOLS)


@pytest.mark.parametrize("name", sorted(WELL_FORMED))
def test_well_formed_packets(game_object, name):
    payload, shaped, server, echo = WELL_FORMED[name]
    answers = assert_agrees(game_object, payload, name)
    for index, protocol in enumerate((SOURCE, GOLDSRC)):
        assert answers.for_protocol(protocol) == (shaped[index], server[index], echo[index])
    for protocol in (NONE, UNKNOWN_PROTOCOL):   # no protocol known: nothing is a handshake
        assert answers.for_protocol(protocol) == (False, None, None)


@pytest.mark.parametrize("family", [SOURCE, GOLDSRC])
def test_the_echo_of_a_server_challenge_is_that_challenge(game_object, family):
    """The flow the POP verifies a player by: the value read from the reply is the one the connect carries."""
    for challenge in (0, 1, 2 ** 31 - 1, 2 ** 31, CHALLENGE, 2 ** 32 - 1):
        if family == SOURCE:
            reply = gm.source_challenge_packet(challenge, CLIENT_CHALLENGE)
            connects = [gm.source_connect_packet(challenge, CLIENT_CHALLENGE)]
        else:
            reply = gm.goldsrc_challenge_packet(challenge)
            connects = [gm.goldsrc_connect_packet(challenge), gm.goldsrc_connect_packet(challenge, signed=True)]
        assert run(game_object, udp(reply)).server[family] == challenge
        for connect in connects:
            answers = run(game_object, udp(connect))
            assert answers.echo[family] == challenge
            assert answers.shaped[family]


# ---- what an attacker sends ------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(WELL_FORMED))
def test_every_truncation_agrees_and_fixed_length_shapes_need_every_byte(game_object, name):
    payload = WELL_FORMED[name][0]
    fixed_length = name in ("a2s_info", "a2s_player", "a2s_rules", "a2s_player_challenge_request",
                            "source_getchallenge", "goldsrc_getchallenge")
    for length in range(len(payload)):
        answers = assert_agrees(game_object, payload[:length], "%s[:%d]" % (name, length))
        if fixed_length:
            assert not any(answers.shaped), "%s cut to %d bytes is still handshake-shaped" % (name, length)


@pytest.mark.parametrize("name", sorted(WELL_FORMED))
def test_bytes_in_the_ethernet_padding_are_not_payload(game_object, name):
    """A payload cut short whose missing bytes sit after the IP packet (Ethernet padding) matches nothing
    the cut payload does not: the validators read payload_len bytes, not the frame."""
    payload = WELL_FORMED[name][0]
    for cut in (1, 4, len(payload) - 9):
        short = payload[:len(payload) - cut]
        frame = pk.pad(udp(short), payload[len(payload) - cut:])
        answers = run(game_object, frame)
        for protocol in range(PROTOCOLS_TRIED):
            assert answers.for_protocol(protocol) == model_answers(short, protocol)


@pytest.mark.parametrize("name", sorted(WELL_FORMED))
def test_over_long_packets(game_object, name):
    payload = WELL_FORMED[name][0]
    fixed_length = name in ("a2s_info_challenged", "a2s_player", "a2s_rules", "a2s_player_challenge_request",
                            "source_getchallenge", "goldsrc_getchallenge_nul")
    longer = assert_agrees(game_object, payload + b"\x00", name + "+1")
    if fixed_length:
        assert not any(longer.shaped)
    # Longer than any handshake datagram (1400 bytes of payload): nothing, whatever its start.
    huge = payload + bytes(gm.GAME_MAX_LEN + 1 - len(payload))
    answers = assert_agrees(game_object, huge, name + " padded to 1401")
    assert not any(answers.shaped) and answers.server == [None] * PROTOCOLS_TRIED
    assert answers.echo == [None] * PROTOCOLS_TRIED
    at_limit = assert_agrees(game_object, huge[:gm.GAME_MAX_LEN], name + " padded to 1400")
    if name in ("source_connect", "goldsrc_connect"):
        assert any(at_limit.shaped)


@pytest.mark.parametrize("name", sorted(WELL_FORMED))
def test_any_wrong_byte_of_the_header_type_or_magic_matches_nothing(game_object, name):
    payload = WELL_FORMED[name][0]
    checked = {
        "source_challenge_steam": range(9), "source_challenge_cdkey": range(9),   # header, 'A', magic
        "goldsrc_challenge_steam": range(14), "goldsrc_challenge_cdkey": range(14),  # "A00000000 "
        "goldsrc_connect": range(15), "goldsrc_connect_signed": range(15),         # "connect 48 "
        "goldsrc_getchallenge": range(len(payload)), "goldsrc_getchallenge_nul": range(len(payload)),
        "source_getchallenge": list(range(5)) + list(range(9, 20)),               # all but the client's nonce
        "a2s_info": range(25), "a2s_info_challenged": range(25),
    }.get(name, range(5))
    for index in checked:
        for xor in (0x01, 0x20, 0x80):
            mutated = payload[:index] + bytes([payload[index] ^ xor]) + payload[index + 1:]
            answers = assert_agrees(game_object, mutated, "%s byte %d ^ %#x" % (name, index, xor))
            if name.startswith(("a2s_player", "a2s_rules")) and index == 4 and payload[index] ^ xor in (0x55, 0x56):
                continue   # 'U' <-> 'V': still a query
            assert not any(answers.shaped) and answers.server == [None] * PROTOCOLS_TRIED, (name, index, xor)
            assert answers.echo == [None] * PROTOCOLS_TRIED


def test_a_random_payload_flood_is_not_handshake_shaped(game_object):
    """What a spoofed flood sends: random bytes of every length. None is a handshake, and the
    handshakes sent the same way (same addresses, ports) are: the check, not the path, decides."""
    rng = random.Random(13)
    for _flood_packet in range(400):
        payload = rng.randbytes(rng.choice((9, 20, 23, 24, 25, 29, 32, 64, 200, 512, 1200, 1400)))
        answers = assert_agrees(game_object, payload, "random")
        assert not any(answers.shaped)
    for name in ("source_getchallenge", "source_connect", "goldsrc_getchallenge", "goldsrc_connect"):
        assert any(run(game_object, udp(WELL_FORMED[name][0])).shaped)


def test_a_flood_that_knows_the_header_is_still_not_a_handshake(game_object):
    """FF FF FF FF then random bytes (the 'connectionless' floods seen against Valve servers)."""
    rng = random.Random(1313)
    shaped = 0
    for _flood_packet in range(400):
        payload = gm.CONNECTIONLESS + rng.randbytes(rng.choice((5, 16, 19, 20, 21, 25, 60, 300, 1396)))
        answers = assert_agrees(game_object, payload, "connectionless random")
        shaped += any(answers.shaped)
    # Only the 9-byte A2S_PLAYER/RULES queries (any 4 challenge bytes) can match by chance: type
    # 'U' or 'V' is 2 in 256, and a connect 'k' with an auth protocol of 1..3 is ~2^-38.
    assert shaped <= 10


@pytest.mark.parametrize("text,expected", [
    (b"0", 0), (b"7", 7), (b"4294967295", 2 ** 32 - 1), (b"2147483648", 2 ** 31),
    (b"4294967296", None), (b"9999999999", None), (b"12345678901", None), (b"00", None), (b"07", None),
    (b"", None), (b"-1", None), (b"+1", None), (b" 1", None), (b"1a", None),
])
def test_goldsrc_challenge_decimals(game_object, text, expected):
    reply = gm.GOLDSRC_CHALLENGE + text + b" 3 90071996842377216 1\n\x00"
    assert run(game_object, udp(reply)).server[GOLDSRC] == expected
    assert_agrees(game_object, reply)


@pytest.mark.parametrize("text,expected", [
    (b"0", 0), (b"4294967295", 2 ** 32 - 1), (b"-1", 2 ** 32 - 1), (b"-2147483648", 2 ** 31),
    (b"-2147483649", None), (b"-0", None), (b"--1", None), (b"-", None), (b"-01", None),
    (b"4294967296", None), (b"12345678901", None), (b"-12345678901", None),
])
def test_goldsrc_connect_decimals(game_object, text, expected):
    connect = gm.GOLDSRC_CONNECT + text + b' "\\prot\\3\\unique\\-1\\raw\\steam" "\\name\\p"\n'
    assert run(game_object, udp(connect)).echo[GOLDSRC] == expected
    assert_agrees(game_object, connect)


def test_goldsrc_number_must_end_with_what_follows_it(game_object):
    for reply in (gm.GOLDSRC_CHALLENGE + b"123", gm.GOLDSRC_CHALLENGE + b"123 ", gm.GOLDSRC_CHALLENGE + b"123 4\n",
                  gm.GOLDSRC_CHALLENGE + b"123 3", gm.GOLDSRC_CHALLENGE + b"123\n3 ", gm.GOLDSRC_CHALLENGE + b"123 3x"):
        assert run(game_object, udp(reply)).server[GOLDSRC] is None, reply
        assert_agrees(game_object, reply)
    for connect in (gm.GOLDSRC_CONNECT + b"123", gm.GOLDSRC_CONNECT + b"123 ", gm.GOLDSRC_CONNECT + b"123 x",
                    gm.GOLDSRC_CONNECT + b"123\"\"", gm.GOLDSRC_CONNECT + b"-4294967295 \""):
        answers = run(game_object, udp(connect))
        assert answers.echo[GOLDSRC] is None and not answers.shaped[GOLDSRC], connect
        assert_agrees(game_object, connect)


def test_only_unfragmented_udp_is_considered(game_object):
    connect = gm.source_connect_packet(CHALLENGE, CLIENT_CHALLENGE)
    reply = gm.goldsrc_challenge_packet(CHALLENGE)
    plain = run(game_object, udp(connect))
    assert plain.shaped[SOURCE] and plain.echo[SOURCE] == CHALLENGE
    assert run(game_object, udp(reply)).server[GOLDSRC] == CHALLENGE
    for frame in (pk.tcp_frame(CLIENT, SERVICE, 27005, 27015, connect, flags="PA"),
                  pk.set_fragment(udp(connect), more_fragments=True),
                  pk.tcp_frame(CLIENT, SERVICE, 27005, 27015, reply, flags="PA"),
                  pk.set_fragment(udp(reply), more_fragments=True)):
        answers = run(game_object, frame)
        assert not any(answers.shaped) and answers.server == [None] * PROTOCOLS_TRIED
        assert answers.echo == [None] * PROTOCOLS_TRIED
    # Behind VLAN tags the payload is found where parse_frame() says it is.
    for vlan in (7,):
        tagged = run(game_object, udp(connect, vlan=vlan))
        assert tagged.shaped[SOURCE] and tagged.echo[SOURCE] == CHALLENGE
    qinq = run(game_object, pk.add_vlan(udp(reply, vlan=7), 100, tpid=pk.ETH_P_8021AD))
    assert qinq.server[GOLDSRC] == CHALLENGE


# ---- the differential test: C against game_model.py ---------------------------------------------

def mutate(payload: bytes, draw) -> bytes:
    """One or more of the changes an attacker (or a lossy path) makes to a handshake; the numbers
    of these protocols are decimal digits."""
    return fuzz.mutate(payload, draw, (0x00, 0x20, 0x22, 0x2D, 0x30, 0x39, 0x0A, 0xFF, 0x41, 0x6B),
                       (b"0", b"9", b"-", b" ", b'"', b"\n", b"\x00"),
                       lambda draw: str(draw(st.integers(-2 ** 33, 2 ** 34))).encode())


@st.composite
def payloads(draw):
    source = draw(st.sampled_from(("random", "connectionless", "well_formed", "mutated", "mutated", "mutated")))
    if source == "random":
        return draw(st.binary(min_size=0, max_size=64))
    if source == "connectionless":
        return gm.CONNECTIONLESS + draw(st.binary(min_size=0, max_size=40))
    challenge = draw(st.integers(0, 2 ** 32 - 1))
    builders = (
        lambda: gm.source_getchallenge_packet(draw(st.integers(0, 2 ** 32 - 1))),
        lambda: gm.source_challenge_packet(challenge, draw(st.integers(0, 2 ** 32 - 1)),
                                           auth=draw(st.sampled_from((0, 1, 2, 3, 4)))),
        lambda: gm.source_connect_packet(challenge, draw(st.integers(0, 2 ** 32 - 1)),
                                         name=draw(st.binary(max_size=12)), auth=draw(st.sampled_from((0, 1, 2, 3, 4)))),
        lambda: gm.goldsrc_getchallenge_packet(nul=draw(st.booleans())),
        lambda: gm.goldsrc_challenge_packet(challenge, auth=draw(st.sampled_from((2, 3)))),
        lambda: gm.goldsrc_connect_packet(challenge, signed=draw(st.booleans())),
        lambda: pk.a2s_request(draw(st.one_of(st.none(), st.integers(0, 2 ** 32 - 1)))),
        lambda: b"\xff\xff\xff\xff" + draw(st.sampled_from(b"UVW")).to_bytes(1, "big") + draw(st.binary(min_size=4, max_size=4)),
    )
    payload = draw(st.sampled_from(builders))()
    return payload if source == "well_formed" else mutate(payload, draw)


def test_program_agrees_with_game_model(game_object):
    """Random payloads, well-formed handshakes and mutated ones: the C answers what the model answers."""
    seen = {"shaped": 0, "server": 0, "echo": 0, "examples": 0}

    @fuzz.differential(EXAMPLES)
    @given(payload=payloads())
    def check(payload):
        answers = assert_agrees(game_object, payload)
        seen["shaped"] += any(answers.shaped)
        seen["server"] += any(v is not None for v in answers.server)
        seen["echo"] += any(v is not None for v in answers.echo)
        seen["examples"] += 1

    check()
    print("game differential: %(examples)d payloads, %(shaped)d shaped, %(server)d server challenges, "
          "%(echo)d echoes" % seen)
    # The generator reaches every answer, not only "no".
    assert seen["examples"] >= min(EXAMPLES, 100)
    assert seen["shaped"] and seen["server"] and seen["echo"]
