"""Issue 14: SYN authentication and out-of-state drops at the POP, through the real program.

While SYN authentication is on for a TCP service (syn_auth always, or auto while the service is
under attack), an unverified source's SYN is answered by the POP with a SYN-ACK whose
acknowledgement number is a keyed cookie; the RST a real stack sends back carries that cookie as
its sequence number and verifies the source (proof syn_auth); its next SYN is forwarded. Every
other segment from an unverified source is dropped (drop_tcp_unverified). Each attack below is
also shown passing on the unprotected path (syn_auth never), with the same packets.
"""

from __future__ import annotations

import random
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import raw

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from harness.cookies import a2s_cookie, cookie_clock_ns, cookie_epoch, syn_cookie

from harness import topology as topo
from harness.edge_env import monotonic_ns
from .scenario import (BACKEND, COOKIE_EPOCH_NS, COOKIE_KEY, GAME, GAME_PORT, GAME_TCP_ID, PLAYER, PLAYER_PORT,
                       SIDE_BACKEND, SIDE_GAME, backend_reply, checksums_valid, eth, pop_config, setup_pop, spoofed)

PREVIOUS_KEY = (0x1111111111111111, 0x2222222222222222)
OLDER_KEY = (0x3333333333333333, 0x4444444444444444)
CLIENT_ISN = 0x10203040
SYN_OPTIONS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (12345, 0)), ("NOP", None), ("WScale", 7)]


def tcp_pop(edge, syn_auth="always", attack_mode="never", **config):
    """The standard POP, its TCP service with this SYN authentication and attack mode."""
    setup_pop(edge, **config)
    edge.add_service("tcp", GAME, GAME_PORT, GAME_TCP_ID, BACKEND, attack_mode=attack_mode, syn_auth=syn_auth)
    return edge


def segment(flags="S", src=PLAYER, sport=PLAYER_PORT, seq=CLIENT_ISN, ack=0, payload=b"", options=(), vlans=()):
    frame = eth()
    for vid in vlans:
        frame = frame / Dot1Q(vlan=vid)
    tcp = TCP(sport=sport, dport=GAME_PORT, flags=flags, seq=seq, ack=ack, options=list(options))
    return raw(frame / IP(src=src, dst=GAME) / tcp / payload)


def epoch_now():
    return cookie_epoch(cookie_clock_ns(), COOKIE_EPOCH_NS)


def cookie(src=PLAYER, sport=PLAYER_PORT, epoch=None, key=COOKIE_KEY):
    return syn_cookie(key, abi.ipv4(src), abi.ipv4(GAME), sport, GAME_PORT, epoch_now() if epoch is None else epoch)


def rst(value, src=PLAYER, sport=PLAYER_PORT, flags="R"):
    """The RST a client's stack sends for the POP's SYN-ACK: <SEQ=SEG.ACK><CTL=RST>."""
    return segment(flags, src=src, sport=sport, seq=value)


def entries(edge):
    return {socket.inet_ntoa(key) for key in edge.maps["edge_sources"].keys()}


# ---- the SYN-ACK -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("vlans", [(), (7,), (100, 7)], ids=["untagged", "vlan", "qinq"])
@pytest.mark.parametrize("options", [(), SYN_OPTIONS], ids=["bare-syn", "syn-with-options"])
def test_a_syn_gets_the_cookie_syn_ack_byte_for_byte(edge, vlans, options):
    tcp_pop(edge)
    syn = segment(options=options, vlans=vlans)
    result = edge.run(syn)
    value = cookie()
    assert (result.action, result.reason) == ("TX", "tx_syn_auth")
    # Back the way it came: Ethernet addresses swapped, the tags kept, the addresses and ports
    # swapped, no options, ACK = the cookie (not the client's ISN + 1), our ISN its complement.
    reply = Ether(src=topo.MAC[topo.UPLINK], dst=topo.ROUTER_MAC)
    for vid in vlans:
        reply = reply / Dot1Q(vlan=vid)
    expected = raw(reply / IP(src=GAME, dst=PLAYER, ttl=64, id=1) /
                   TCP(sport=GAME_PORT, dport=PLAYER_PORT, flags="SA", seq=~value & 0xFFFFFFFF, ack=value,
                       window=65535))
    assert result.data == expected
    assert checksums_valid(result.data)
    assert value != CLIENT_ISN + 1
    assert len(result.data) <= len(syn) and len(IP(raw(Ether(result.data).getlayer(IP)))) == 40
    # A SYN-ACK proves nothing and makes no entry; the service counts the answer as outbound.
    assert entries(edge) == set()
    assert edge.service_counters(GAME_TCP_ID)[2:] == (1, len(expected))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option_words=st.integers(0, 10), payload=st.binary(max_size=64), isn=st.integers(0, 2**32 - 1),
       sport=st.integers(1, 65535))
def test_the_answer_is_never_larger_than_the_syn(edge, option_words, payload, isn, sport):
    """Amplification <= 1 for any SYN, with any options and data (TCP Fast Open) on it."""
    edge.reset()
    tcp_pop(edge)
    syn = raw(eth() / IP(src=PLAYER, dst=GAME) /
              TCP(sport=sport, dport=GAME_PORT, flags="S", seq=isn, options=[("NOP", None)] * (4 * option_words))
              / payload)
    result = edge.run(syn)
    assert result.reason in ("tx_syn_auth", "drop_tcp_unverified")   # the latter: cookie == ISN + 1 (2^-32)
    if result.reason == "tx_syn_auth":
        assert len(result.data) <= len(syn)
        assert Ether(result.data)[TCP].ack == cookie(sport=sport)
        assert checksums_valid(result.data)


# ---- the RST -----------------------------------------------------------------------------------------------

def test_the_clients_rst_verifies_the_source_and_its_next_syn_is_forwarded(edge):
    tcp_pop(edge)
    assert edge.run(segment()).reason == "tx_syn_auth"
    value = Ether(edge.run(segment()).data)[TCP].ack          # what the client's stack saw
    result = edge.run(rst(value))
    assert (result.action, result.reason) == ("DROP", "drop_syn_auth_verified")
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) == "syn_auth"
    assert edge.verify_counts()["syn_auth"] == 1
    # The retransmitted SYN (same ISN) now goes to the game server: IPIP to the backend, next hop
    # the router, the inner packet the SYN as it came (TTL less one).
    syn = segment(options=SYN_OPTIONS)
    result = edge.run(syn)
    assert (result.action, result.reason) == ("TX", "tx_forward")
    out = Ether(result.data)
    assert (out.dst, out.src) == (topo.ROUTER_MAC, topo.MAC[topo.UPLINK])
    assert (out[IP].src, out[IP].dst, out[IP].proto) == (topo.POP_TUNNEL_ADDR, BACKEND, 4)
    inner = out[IP].payload
    assert (inner.src, inner.dst, inner[TCP].flags, inner[TCP].seq) == (PLAYER, GAME, "S", CLIENT_ISN)
    assert inner[TCP].options == Ether(syn)[TCP].options
    # And so is the rest of the connection; the RST was counted once.
    assert edge.run(segment("A", seq=CLIENT_ISN + 1, ack=5)).reason == "tx_forward"
    assert edge.run(segment("PA", seq=CLIENT_ISN + 1, ack=5, payload=b"hello")).reason == "tx_forward"
    assert edge.verify_counts()["syn_auth"] == 1


def test_a_rst_with_ack_set_verifies_too(edge):
    """Stacks differ on the ACK bit of the reset; the cookie decides."""
    tcp_pop(edge)
    assert edge.run(rst(cookie(), flags="RA")).reason == "drop_syn_auth_verified"
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) == "syn_auth"


@pytest.mark.parametrize("case", ["guessed", "cookie-plus-one", "other-source", "other-port", "two-epochs-old",
                                  "older-key-generation", "a2s-cookie-of-the-tuple", "with-syn", "with-fin"])
def test_an_invalid_rst_does_not_verify(edge, case):
    tcp_pop(edge, cookie_key_previous=PREVIOUS_KEY)
    frame = {
        "guessed": lambda: rst(0xDEADBEEF),
        "cookie-plus-one": lambda: rst((cookie() + 1) & 0xFFFFFFFF),
        # Replayed by someone else: the player's valid RST, from another address or port.
        "other-source": lambda: rst(cookie(), src="203.0.113.6"),
        "other-port": lambda: rst(cookie(), sport=PLAYER_PORT + 1),
        # Replayed later: a cookie two epochs old, or under a key generation rotated out.
        "two-epochs-old": lambda: rst(cookie(epoch=epoch_now() - 2)),
        "older-key-generation": lambda: rst(cookie(key=OLDER_KEY)),
        # The A2S challenge of the same tuple is not a TCP cookie (a key of its own).
        "a2s-cookie-of-the-tuple": lambda: rst(struct.unpack("<I", _a2s_cookie_bytes())[0]),
        "with-syn": lambda: rst(cookie(), flags="SR"),
        "with-fin": lambda: rst(cookie(), flags="FR"),
    }[case]()
    result = edge.run(frame)
    assert (result.action, result.reason) == ("DROP", "drop_tcp_unverified")
    assert entries(edge) == set()
    assert edge.verify_counts()["syn_auth"] == 0
    assert edge.run(segment("A")).reason == "drop_tcp_unverified"     # still unverified


def _a2s_cookie_bytes():
    return a2s_cookie(COOKIE_KEY, abi.ipv4(PLAYER), abi.ipv4(GAME), PLAYER_PORT, GAME_PORT, epoch_now())


# The proof the program itself issued (its SYN-ACK's ACK, not the harness' copy of the cookie
# function), replayed: it verifies only its own four-tuple, within its key generation and the one
# after, its epoch and the one after (docs/tcp-protection.md, "Limits": a replayed RST).
NEWER_KEY = (0x5555555555555555, 0x6666666666666666)
NEWEST_KEY = (0x7777777777777777, 0x0888888888888888)
OTHER_TCP_ID = 41
REPLAYS = {
    # case: (source, source port, service address, service port, key generations rotated since the
    #        SYN-ACK, epochs passed since it, verifies?)
    "as-issued": (PLAYER, PLAYER_PORT, GAME, GAME_PORT, 0, 0, True),
    "other-source": ("203.0.113.6", PLAYER_PORT, GAME, GAME_PORT, 0, 0, False),
    "other-source-port": (PLAYER, PLAYER_PORT + 1, GAME, GAME_PORT, 0, 0, False),
    "other-service-port": (PLAYER, PLAYER_PORT, GAME, GAME_PORT + 1, 0, 0, False),
    "other-service-address": (PLAYER, PLAYER_PORT, SIDE_GAME, GAME_PORT, 0, 0, False),
    "one-epoch-later": (PLAYER, PLAYER_PORT, GAME, GAME_PORT, 0, 1, True),
    "two-epochs-later": (PLAYER, PLAYER_PORT, GAME, GAME_PORT, 0, 2, False),
    "one-rotation-later": (PLAYER, PLAYER_PORT, GAME, GAME_PORT, 1, 0, True),
    "one-rotation-and-epoch-later": (PLAYER, PLAYER_PORT, GAME, GAME_PORT, 1, 1, True),
    "two-rotations-later": (PLAYER, PLAYER_PORT, GAME, GAME_PORT, 2, 0, False),
}


@pytest.mark.parametrize("case", sorted(REPLAYS))
def test_the_issued_cookie_verifies_its_own_tuple_generation_and_epoch_only(edge, case):
    """The RST proof is bound to the exact four-tuple, key generation and epoch of the SYN-ACK: the
    cookie the program put in its SYN-ACK, sent back as a RST from another address or port, or to
    another service (another port, another address: both with SYN authentication on), after two
    key rotations (edge_rules keeps one previous generation) or two epochs later (the POP's cookie
    clock moved on through its TAI offset), verifies nothing; as issued, one rotation or one epoch
    later (a route that moved to another POP, a RST across a rotation) it verifies."""
    src, sport, dst, dport, rotations, epochs, verifies = REPLAYS[case]
    tcp_pop(edge)
    edge.add_service("tcp", GAME, GAME_PORT + 1, OTHER_TCP_ID, BACKEND, syn_auth="always")
    edge.add_service("tcp", SIDE_GAME, GAME_PORT, OTHER_TCP_ID + 1, SIDE_BACKEND, syn_auth="always")
    service_id = {(GAME, GAME_PORT): GAME_TCP_ID, (GAME, GAME_PORT + 1): OTHER_TCP_ID,
                  (SIDE_GAME, GAME_PORT): OTHER_TCP_ID + 1}[(dst, dport)]
    epoch = epoch_now()
    answer = edge.run(segment())
    assert answer.reason == "tx_syn_auth"
    issued = Ether(answer.data)[TCP].ack
    keys = {0: (COOKIE_KEY, (0, 0)), 1: (NEWER_KEY, COOKIE_KEY), 2: (NEWEST_KEY, NEWER_KEY)}[rotations]
    offset = pop_config()["cookie_tai_offset_ns"] - epochs * COOKIE_EPOCH_NS     # the cookie clock moved on
    edge.configure(**pop_config(cookie_key=keys[0], cookie_key_previous=keys[1], cookie_tai_offset_ns=offset))
    replay = raw(eth() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="R", seq=issued))
    result = edge.run(replay)
    assert epoch_now() == epoch, "the hour-long epoch ended during the test: run it again"
    if verifies:
        assert result.reason == "drop_syn_auth_verified"
        assert edge.verified_for(src, service_id, monotonic_ns()) == "syn_auth"
        assert edge.run(segment()).reason == "tx_forward"
    else:
        assert (result.action, result.reason) == ("DROP", "drop_tcp_unverified")
        assert entries(edge) == set()
        assert edge.verify_counts()["syn_auth"] == 0
        assert edge.verified_for(src, service_id, monotonic_ns()) is None


@pytest.mark.parametrize("case", ["previous-epoch", "previous-key-generation", "previous-both"])
def test_a_rst_across_an_epoch_or_a_key_rotation_still_verifies(edge, case):
    """A client whose route moves to another POP mid-handshake, or whose RST crosses a rotation."""
    tcp_pop(edge, cookie_key_previous=PREVIOUS_KEY)
    epoch = epoch_now() - (0 if case == "previous-key-generation" else 1)
    key = PREVIOUS_KEY if case != "previous-epoch" else COOKIE_KEY
    assert edge.run(rst(cookie(epoch=epoch, key=key))).reason == "drop_syn_auth_verified"
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) == "syn_auth"


def test_another_pop_of_the_fleet_accepts_the_rst(edge):
    """The SYN-ACK from one POP, the RST to another (anycast routes move): the fleet's one key."""
    tcp_pop(edge)
    value = Ether(edge.run(segment()).data)[TCP].ack
    other = edge.another_pop()
    try:
        tcp_pop(other)
        assert other.run(rst(value)).reason == "drop_syn_auth_verified"
        assert other.run(segment()).reason == "tx_forward"
    finally:
        other.stop()


@pytest.mark.parametrize("source", [GAME, "198.51.100.77"], ids=["the-service-itself", "elsewhere-in-the-prefix"])
def test_a_source_inside_the_fleets_own_prefix_is_neither_answered_nor_verified(edge, source):
    """Nobody else holds the anycast prefixes: a SYN from inside them is spoofed. Answered, its
    SYN-ACK went back into the fleet, at one of its own services (the POP reflecting at itself), and
    that service's game server, answering the SYN-ACK with its RST, verified the fleet's own address
    for this service. The same SYN is still forwarded when SYN authentication is off."""
    tcp_pop(edge, syn_auth="never")
    assert edge.run(segment(src=source, sport=27016)).reason == "tx_forward"
    edge.reset()
    tcp_pop(edge)
    assert edge.run(segment(src=source, sport=27016)).reason == "drop_tcp_unverified"
    assert edge.reason_counts().get("tx_syn_auth", (0, 0))[0] == 0
    assert edge.run(rst(cookie(src=source, sport=27016), src=source, sport=27016)).reason == "drop_tcp_unverified"
    assert entries(edge) == set()
    assert edge.run(segment(src="100.1.2.3")).reason == "tx_syn_auth"        # everyone else: answered


# ---- floods ------------------------------------------------------------------------------------------------

FLOOD = spoofed(200, seed=14)
FLOOD_KINDS = {
    "syn": dict(flags="S"),
    "ack": dict(flags="A", ack=1),
    "data": dict(flags="PA", ack=1, payload=b"\x00" * 64),
    "fin": dict(flags="FA", ack=1),
    "rst": dict(flags="R", seq=0x12345678),
    "syn-ack": dict(flags="SA", ack=1),
}


@pytest.mark.parametrize("kind", sorted(FLOOD_KINDS))
def test_a_flood_from_random_sources_passes_unprotected_and_never_reaches_the_backend_under_syn_auth(edge, kind):
    rng = random.Random(kind)
    frames = [segment(src=source, sport=rng.randrange(1024, 65536), **FLOOD_KINDS[kind]) for source in FLOOD]
    # The unprotected path (syn_auth never): every segment forwarded, every source an entry.
    tcp_pop(edge, syn_auth="never")
    assert {edge.run(frame).reason for frame in frames} == {"tx_forward"}
    assert len(entries(edge)) == len(FLOOD)
    # The same segments with SYN authentication on: nothing forwarded, no entry made.
    edge.reset()
    tcp_pop(edge, syn_auth="always")
    reasons = [edge.run(frame).reason for frame in frames]
    assert set(reasons) == ({"tx_syn_auth"} if kind == "syn" else {"drop_tcp_unverified"})
    assert entries(edge) == set()
    assert edge.reason_counts().get("tx_forward", (0, 0))[0] == 0
    # Counted as unverified traffic of the service: what the agent's attack mode watches.
    assert edge.admission_counters(GAME_TCP_ID)["unverified_packets"] == len(FLOOD)


def test_out_of_state_segments_pass_for_verified_sources_punched_flows_and_the_allow_list(edge):
    tcp_pop(edge)
    ack = segment("A", ack=1)
    assert edge.run(ack).reason == "drop_tcp_unverified"
    # A punched flow (the game server spoke on it) passes, also from an unverified source.
    edge.punch("tcp", GAME, GAME_PORT, PLAYER, PLAYER_PORT, monotonic_ns())
    assert edge.run(ack).reason == "tx_punched"
    assert edge.run(segment("A", ack=1, sport=PLAYER_PORT + 1)).reason == "drop_tcp_unverified"   # not its flow
    # A verified source (any proof) passes on every flow.
    edge.set_source(PLAYER, abi.SourceState(verified=[(GAME_TCP_ID, abi.VERIFY_PROOFS.index("punch"),
                                                       monotonic_ns())]))
    assert edge.run(segment("A", ack=1, sport=PLAYER_PORT + 1)).reason == "tx_forward"
    assert edge.run(segment("S", sport=PLAYER_PORT + 2)).reason == "tx_forward"
    # The allow list needs no proof.
    edge.allow("198.18.0.0/24")
    assert edge.run(segment("A", ack=1, src="198.18.0.7")).reason == "tx_forward"
    assert edge.run(segment("S", src="198.18.0.7")).reason == "tx_forward"


def test_a_verified_source_of_another_service_is_not_verified_for_this_one(edge):
    tcp_pop(edge)
    edge.set_source(PLAYER, abi.SourceState(verified=[(1, abi.VERIFY_PROOFS.index("cookie"), monotonic_ns())]))
    assert edge.run(segment("A", ack=1)).reason == "drop_tcp_unverified"
    assert edge.run(segment()).reason == "tx_syn_auth"


def test_the_game_servers_syn_ack_does_not_verify_but_the_established_flow_does(edge):
    """A SYN-ACK answers whoever asked: no proof. Data from the game server on the flow: punch."""
    tcp_pop(edge)
    assert edge.run(backend_reply(b"", proto="tcp")).reason == "tx_return"
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) is None


# ---- when it is on -------------------------------------------------------------------------------------------

def test_syn_auth_auto_follows_the_services_attack_state(edge):
    syn, ack = segment(), segment("A", ack=1, src="100.1.2.3")
    tcp_pop(edge, syn_auth="auto", attack_mode="auto")
    assert (edge.run(syn).reason, edge.run(ack).reason) == ("tx_forward", "tx_forward")      # calm
    edge.reset()
    tcp_pop(edge, syn_auth="auto", attack_mode="auto")
    edge.set_under_attack(GAME_TCP_ID, True)                                                   # the agent
    assert (edge.run(syn).reason, edge.run(ack).reason) == ("tx_syn_auth", "drop_tcp_unverified")
    edge.set_under_attack(GAME_TCP_ID, False)
    assert edge.run(ack).reason == "tx_forward"
    tcp_pop(edge, syn_auth="auto", attack_mode="always")                                       # the operator
    assert edge.run(ack).reason == "drop_tcp_unverified"
    # never: issue 13's admission alone decides (under attack, unverified TCP is drop_unverified).
    tcp_pop(edge, syn_auth="never", attack_mode="always")
    assert edge.run(syn).reason == "drop_unverified"
    tcp_pop(edge, syn_auth="always", attack_mode="never")
    assert edge.run(segment(src="100.9.9.9")).reason == "tx_syn_auth"


def test_syn_auth_is_for_tcp_only(edge):
    """A UDP service with syn_auth always (edge_rules never writes that) behaves as before."""
    setup_pop(edge)
    edge.add_service("udp", GAME, GAME_PORT, 1, BACKEND, syn_auth="always")
    result = edge.run(raw(eth() / IP(src=PLAYER, dst=GAME) / UDP(sport=PLAYER_PORT, dport=GAME_PORT) / b"join"))
    assert result.reason == "tx_forward"
