"""Issue 14 item 3 through the real program: a minecraft service's first data segment.

For a TCP service with game_protocol minecraft, the POP opens an edge_mc_flows entry when it
forwards a flow's SYN, and the return path records in it the ACK that the backend's SYN-ACK asks
for; the flow's first data segment must then be a well-formed Java Edition handshake
(bpf/include/mc_proto.h): forwarded and the entry gone when it is, dropped as drop_handshake (the
entry kept, the source's verification for the service revoked) when it is not. Only the player's
own segment (one that acknowledges that SYN-ACK) can revoke: anything else is dropped as
drop_handshake_unacked, nobody revoked, so a spoofer who knows a player's address cannot revoke
it; on a flow whose SYN-ACK left through another POP (anycast) that is garbage only: a well-formed
handshake passes there. Each refusal is shown next to the same segment forwarded on the unprotected path (the same
service with game_protocol none), each spoofed attack next to the player's own segment revoking.
"""

from __future__ import annotations

import functools
import importlib.util
import socket
import struct
import types
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.packet import raw

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi

from . import mc_model as mc
from . import packets as pk
from harness import topology as topo
from harness.edge_env import monotonic_ns
from .scenario import BACKEND, GAME, GAME_PORT, GAME_TCP_ID, GAME_UDP_ID, PLAYER, PLAYER_PORT, eth, setup_pop
from .test_admission import BLACKHOLED_BACKEND, spoofed
from .test_syn_auth import cookie, rst

REPO = Path(__file__).resolve().parent.parent.parent
HANDSHAKE = mc.handshake_packet(b"mc.example.net", GAME_PORT, mc.NEXT_LOGIN, 767)
GARBAGE = {
    "random": bytes(range(7, 107)),
    "http": b"GET / HTTP/1.1\r\nHost: mc.example.net\r\n\r\n",
    "truncated": HANDSHAKE[:-1],
    "length_too_long": mc.varint(len(HANDSHAKE)) + HANDSHAKE[1:] + b"\x00",   # declares one byte more
    "wider_varint": b"\x0f\x00\xff\xff\xff\xff\xff\x01" + HANDSHAKE[4:],
    "next_state_4": HANDSHAKE[:-1] + b"\x04",
    "wrong_id": HANDSHAKE[:1] + b"\x01" + HANDSHAKE[2:],
    "legacy_ping": mc.legacy_ping(),
    "login_start_first": mc.login_start(),
}


def minecraft_pop(edge, game_protocol="minecraft", backend=BACKEND, **config):
    """The standard POP, its TCP service speaking `game_protocol`."""
    setup_pop(edge, **config)
    edge.add_service("tcp", GAME, GAME_PORT, GAME_TCP_ID, backend, game_protocol=game_protocol)
    return edge


SERVER_ISN = 5000                  # the backend's SYN-ACK's sequence number (backend_tcp)
CLIENT_ACK = SERVER_ISN + 1        # what the player's stack acknowledges with its first data
CLIENT_ISN = 1000                  # the player's SYN's sequence number (syn)
FIRST_SEQ = CLIENT_ISN + 1         # its first data byte's


def segment(payload=b"", flags="PA", src=PLAYER, sport=PLAYER_PORT, seq=FIRST_SEQ, ack=CLIENT_ACK):
    return raw(eth() / IP(src=src, dst=GAME) / TCP(sport=sport, dport=GAME_PORT, flags=flags, seq=seq, ack=ack)
               / payload)


def syn(src=PLAYER, sport=PLAYER_PORT, seq=CLIENT_ISN):
    return segment(flags="S", src=src, sport=sport, seq=seq)


def backend_tcp(flags, payload=b"", dst=PLAYER, dport=PLAYER_PORT, seq=SERVER_ISN, ack=FIRST_SEQ):
    """The game server's segment to the player, as the backend's tunnel sends it to the POP (a
    SYN-ACK acknowledges the player's SYN: its ACK is the player's first data byte's number)."""
    inner = IP(src=GAME, dst=dst) / TCP(sport=GAME_PORT, dport=dport, flags=flags, seq=seq, ack=ack) / payload
    return raw(eth() / IP(src=BACKEND, dst=topo.POP_TUNNEL_ADDR, proto=4) / inner)


def flows(edge):
    found = set()
    for key, dummy in edge.maps["edge_mc_flows"].items():
        saddr, daddr, sport, dport = abi.MC_FLOW_KEY.unpack(key)
        found.add((socket.inet_ntoa(saddr), socket.inet_ntoa(daddr), int.from_bytes(sport, "big"),
                   int.from_bytes(dport, "big")))
    return found


NOT_SYN_ACKED = "no SYN-ACK yet"


def syn_acked(edge, flow):
    """What the flow's entry knows: None without an entry, NOT_SYN_ACKED before its backend's
    SYN-ACK, else the ACK number the player's first data must carry."""
    key = abi.MC_FLOW_KEY.pack(socket.inet_aton(flow[0]), socket.inet_aton(flow[1]), flow[2].to_bytes(2, "big"),
                               flow[3].to_bytes(2, "big"))
    value = edge.maps["edge_mc_flows"].lookup(key)
    if value is None:
        return None
    acked = abi.MC_FLOW_VALUE.unpack(value)[1]
    return acked & 0xFFFFFFFF if acked & abi.MC_FLOW_SYN_ACKED else NOT_SYN_ACKED


def connect(edge, src=PLAYER, sport=PLAYER_PORT):
    """A player's SYN forwarded (the flow's entry) and its backend's SYN-ACK back to it."""
    assert edge.run(syn(src=src, sport=sport)).reason == "tx_forward"
    assert edge.run(backend_tcp("SA", dst=src, dport=sport)).reason == "tx_return"


FLOW = (PLAYER, GAME, PLAYER_PORT, GAME_PORT)


def verify_player(edge, service_id=GAME_TCP_ID):
    """The player verified for the service (as a proof leaves it: a live slot)."""
    state = edge.source(PLAYER) or abi.SourceState()
    slots = [slot for slot in state.verified if slot[0] not in (0, service_id)]
    state.verified = (slots + [(service_id, abi.VERIFY_PROOFS.index("punch"), monotonic_ns())]
                      + [(0, 0, 0)] * abi.VERIFIED_SLOTS)[:abi.VERIFIED_SLOTS]
    edge.set_source(PLAYER, state)


def test_a_connection_with_its_handshake_is_forwarded_and_then_not_looked_at(edge):
    """The whole life of a real connection: SYN (entry), the server's SYN-ACK, the client's ACK,
    its handshake and Login Start in one segment (checked, entry gone), the server's answer (a
    punch), then game traffic."""
    minecraft_pop(edge)
    assert edge.run(syn()).reason == "tx_forward"
    assert flows(edge) == {FLOW}
    assert syn_acked(edge, FLOW) == NOT_SYN_ACKED
    assert edge.run(backend_tcp("SA")).reason == "tx_return"
    assert syn_acked(edge, FLOW) == CLIENT_ACK
    assert edge.run(segment(flags="A")).reason == "tx_forward"        # no data: not the first data segment
    assert flows(edge) == {FLOW}
    assert edge.run(segment(HANDSHAKE + mc.login_start())).reason == "tx_forward"
    assert flows(edge) == set()
    assert edge.run(backend_tcp("PA", mc.frame(0x02, bytes(16)))).reason == "tx_return"
    # Later segments are the game's own packets, never a handshake: not checked any more.
    for payload in (GARBAGE["random"], mc.frame(0x1A, b"\x00" * 40)):
        assert edge.run(segment(payload)).reason == "tx_punched"


@pytest.mark.parametrize("next_state", mc.NEXT_STATES)
def test_every_next_state_is_forwarded(edge, next_state):
    minecraft_pop(edge)
    connect(edge)
    first = mc.handshake_packet(b"play.example.org", GAME_PORT, next_state, -1)
    assert edge.run(segment(first + mc.status_request())).reason == "tx_forward"
    assert flows(edge) == set()


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_garbage_first_segment_is_dropped_and_revokes_the_source_but_passes_unprotected(edge, name):
    payload = GARBAGE[name]
    # The unprotected path: the same service without the validator forwards the same segments, and
    # the source keeps its verification.
    minecraft_pop(edge, game_protocol="none")
    verify_player(edge)
    assert edge.run(syn()).reason == "tx_forward"
    assert edge.run(backend_tcp("SA")).reason == "tx_return"
    assert flows(edge) == set()
    assert edge.run(segment(payload)).reason == "tx_forward"
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) == "punch"

    edge.reset()
    minecraft_pop(edge)
    verify_player(edge)
    verify_player(edge, GAME_UDP_ID)            # verified for another service too
    connect(edge)
    assert edge.run(segment(payload)).reason == "drop_handshake"
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) is None
    assert edge.verified_for(PLAYER, GAME_UDP_ID, monotonic_ns()) == "punch"   # only this service's slot
    # The flow stays watched: its retransmission is dropped as well.
    assert flows(edge) == {FLOW}
    assert edge.run(segment(payload)).reason == "drop_handshake"
    assert edge.reason_counts()["drop_handshake"][0] == 2


def test_a_refused_flow_is_refused_whatever_the_punch(edge):
    """A live punch of the same four-tuple (a client that reuses its port within the punch's idle
    time) does not wave a new connection's first segment through: the check comes first."""
    minecraft_pop(edge)
    connect(edge)
    edge.punch("tcp", GAME, GAME_PORT, PLAYER, PLAYER_PORT, monotonic_ns())
    assert edge.run(segment(flags="A")).reason == "tx_punched"
    assert edge.run(segment(GARBAGE["random"])).reason == "drop_handshake"


def test_only_a_forwarded_syn_opens_a_flow(edge):
    """A SYN the POP drops (no route to the backend) opens no entry: nothing is waited for."""
    minecraft_pop(edge, backend=BLACKHOLED_BACKEND)
    assert edge.run(syn()).reason == "drop_no_route"
    assert flows(edge) == set()


def test_a_flow_the_pop_never_saw_begin_is_not_checked(edge):
    """No entry (the SYN went through another POP, the entry was evicted, the program was replaced
    mid-connection): its data is forwarded, as on every POP before this validator."""
    minecraft_pop(edge)
    assert edge.run(segment(GARBAGE["random"])).reason == "tx_forward"
    assert edge.run(segment(GARBAGE["random"], sport=PLAYER_PORT + 1)).reason == "tx_forward"


def test_syn_with_data_is_refused_rst_and_pure_acks_are_not(edge):
    minecraft_pop(edge)
    # TCP Fast Open: data on the SYN, which no Minecraft client sends (and anyone can send in
    # anyone's name: it revokes nobody, test_one_spoofed_syn_with_data_revokes_nobody).
    assert edge.run(segment(HANDSHAKE, flags="S")).reason == "drop_handshake_unacked"
    assert flows(edge) == set()
    connect(edge)
    for flags in ("A", "FA", "R", "RA"):
        assert edge.run(segment(b"", flags=flags)).reason == "tx_forward", flags
    assert edge.run(segment(b"reset reason", flags="R")).reason == "tx_forward"
    assert flows(edge) == {FLOW}


def test_a_retransmitted_syn_renews_the_flow_and_each_flow_is_its_own(edge):
    minecraft_pop(edge)
    connect(edge)
    connect(edge, sport=PLAYER_PORT + 1)
    assert flows(edge) == {FLOW, (PLAYER, GAME, PLAYER_PORT + 1, GAME_PORT)}
    assert edge.run(segment(HANDSHAKE)).reason == "tx_forward"
    assert edge.run(segment(GARBAGE["http"], sport=PLAYER_PORT + 1)).reason == "drop_handshake"
    # A new connection on the same port (the SYN again, a new SYN-ACK) is checked afresh.
    edge.run(syn())
    assert edge.run(backend_tcp("SA", seq=SERVER_ISN + 7)).reason == "tx_return"
    assert syn_acked(edge, FLOW) == CLIENT_ACK + 7
    assert edge.run(segment(GARBAGE["http"])).reason == "drop_handshake_unacked"   # the old connection's ACK
    assert edge.run(segment(GARBAGE["http"], ack=CLIENT_ACK + 7)).reason == "drop_handshake"


def test_many_sources_each_checked_on_their_own(edge):
    """A flood of connections from many sources (not under attack: their SYNs are forwarded),
    each sending garbage first: every one dropped; the real player's handshake among them passes."""
    minecraft_pop(edge)
    sources = spoofed(200, seed=14)
    for source in sources:
        connect(edge, src=source)
    connect(edge)
    for source in sources:
        assert edge.run(segment(GARBAGE["random"], src=source)).reason == "drop_handshake"
    assert edge.run(segment(HANDSHAKE)).reason == "tx_forward"
    assert len(flows(edge)) == len(sources)


def test_with_syn_authentication_a_revoked_source_must_prove_its_address_again(edge):
    """Issue 14 end to end: SYN authentication verifies the player (its stack's RST), its SYN is
    then forwarded and opens the flow; garbage first revokes it, so its next SYN is answered by the
    POP again (not forwarded) until its stack proves the address once more."""
    setup_pop(edge)
    edge.add_service("tcp", GAME, GAME_PORT, GAME_TCP_ID, BACKEND, game_protocol="minecraft", syn_auth="always")
    assert edge.run(syn()).reason == "tx_syn_auth"
    assert edge.run(rst(cookie())).reason == "drop_syn_auth_verified"
    connect(edge)
    assert flows(edge) == {FLOW}
    assert edge.run(segment(GARBAGE["http"])).reason == "drop_handshake"
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) is None
    assert edge.run(syn(sport=PLAYER_PORT + 1)).reason == "tx_syn_auth"
    assert edge.run(rst(cookie(sport=PLAYER_PORT + 1), sport=PLAYER_PORT + 1)).reason == "drop_syn_auth_verified"
    connect(edge, sport=PLAYER_PORT + 1)
    assert edge.run(segment(HANDSHAKE, sport=PLAYER_PORT + 1)).reason == "tx_forward"


# ---- the attacker's review: revoking a player in its name ----------------------------------------------

def with_syn_auth_pop(edge):
    """The lab's shape: the minecraft service with SYN authentication always on, the player verified
    by its own stack's RST (so its SYNs are forwarded)."""
    setup_pop(edge)
    edge.add_service("tcp", GAME, GAME_PORT, GAME_TCP_ID, BACKEND, game_protocol="minecraft", syn_auth="always")
    assert edge.run(syn()).reason == "tx_syn_auth"
    assert edge.run(rst(cookie())).reason == "drop_syn_auth_verified"
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) == "syn_auth"
    return edge


@pytest.mark.parametrize("payload", [HANDSHAKE, GARBAGE["random"]], ids=["handshake", "garbage"])
def test_one_spoofed_syn_with_data_revokes_nobody(edge, payload):
    """Attack 1, one packet: a SYN carrying data in the verified player's name. Dropped, the player
    still verified, its next SYN still forwarded; the same SYN passes the unprotected service."""
    minecraft_pop(edge, game_protocol="none")
    verify_player(edge)
    assert edge.run(segment(payload, flags="S", seq=1000, ack=0)).reason == "tx_forward"

    edge.reset()
    with_syn_auth_pop(edge)
    assert edge.run(segment(payload, flags="S", seq=1000, ack=0)).reason == "drop_handshake_unacked"
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) == "syn_auth"
    assert flows(edge) == set()
    assert edge.run(syn(sport=PLAYER_PORT + 1)).reason == "tx_forward"


@pytest.mark.parametrize("when", ["before_the_syn_ack", "after_the_syn_ack"])
def test_a_spoofed_syn_then_garbage_revokes_nobody(edge, when):
    """Attack 2, two packets: a SYN spoofed in the verified player's name is forwarded (the player is
    verified) and opens the flow's entry; garbage data on that flow follows. Before the backend's
    SYN-ACK came back, and after it (which went to the player, not to the spoofer: the spoofer's
    ACKs are guesses), the garbage is dropped and revokes nobody. The control: the player's own
    stack, acknowledging the SYN-ACK, sending the same garbage, is revoked."""
    with_syn_auth_pop(edge)
    sport = PLAYER_PORT + 5
    flow = (PLAYER, GAME, sport, GAME_PORT)
    assert edge.run(syn(sport=sport)).reason == "tx_forward"
    assert flows(edge) == {flow}
    guesses = (0, 1, CLIENT_ACK - 1, CLIENT_ACK + 1, 2 ** 32 - 1)
    if when == "after_the_syn_ack":
        assert edge.run(backend_tcp("SA", dport=sport)).reason == "tx_return"
    else:
        guesses += (CLIENT_ACK,)      # even the right number is not the player's before the SYN-ACK left
    for ack in guesses:
        assert edge.run(segment(GARBAGE["http"], sport=sport, ack=ack)).reason == "drop_handshake_unacked", ack
        assert edge.run(segment(GARBAGE["http"], flags="P", sport=sport, ack=ack)).reason == \
            "drop_handshake_unacked", ack     # no ACK flag: the number means nothing
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) == "syn_auth"
    assert edge.reason_counts().get("drop_handshake", (0, 0))[0] == 0
    # The flow is still watched, and still the player's own: the real client's handshake passes.
    if when == "before_the_syn_ack":
        assert edge.run(backend_tcp("SA", dport=sport)).reason == "tx_return"
    assert edge.run(segment(HANDSHAKE, sport=sport)).reason == "tx_forward"
    # The control: the player's own stack sending garbage first (it acknowledges the SYN-ACK) is revoked.
    connect(edge, sport=sport + 1)
    assert edge.run(segment(GARBAGE["http"], sport=sport + 1)).reason == "drop_handshake"
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) is None


def test_a_spoofed_syn_during_the_players_handshake_keeps_its_ack(edge):
    """A SYN spoofed into the player's own flow between the backend's SYN-ACK and the player's first
    data renews the entry's time only: the player's handshake still passes."""
    minecraft_pop(edge)
    connect(edge)
    assert edge.run(segment(flags="S", seq=777, ack=0)).reason == "tx_forward"
    assert syn_acked(edge, FLOW) == CLIENT_ACK
    assert edge.run(segment(HANDSHAKE)).reason == "tx_forward"
    assert flows(edge) == set()


def test_a_spoofed_syn_into_an_established_connection_stalls_and_revokes_nothing(edge):
    """A SYN spoofed with the four-tuple of the player's established connection (its backend answers
    with an ACK, never a SYN-ACK) opens an entry that never learns an ACK: the connection's data
    passes on its live punch (the game server spoke on it); without a live punch it would be
    dropped, and still revoke nobody."""
    minecraft_pop(edge)
    verify_player(edge)
    connect(edge)
    assert edge.run(segment(HANDSHAKE)).reason == "tx_forward"
    assert edge.run(backend_tcp("PA", mc.frame(0x02, bytes(16)))).reason == "tx_return"    # punches the flow
    assert edge.run(syn()).reason == "tx_punched"
    assert edge.run(backend_tcp("A")).reason == "tx_return"          # the backend's challenge ACK
    assert syn_acked(edge, FLOW) == NOT_SYN_ACKED
    assert edge.run(segment(GARBAGE["random"], ack=CLIENT_ACK + 20)).reason == "tx_punched"
    for key in list(edge.maps["edge_punches"].keys()):
        edge.maps["edge_punches"].delete(key)
    assert edge.run(segment(GARBAGE["random"], ack=CLIENT_ACK + 20)).reason == "drop_handshake_unacked"
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) == "punch"


def test_a_syn_ack_opens_no_flow_and_teaches_only_its_own(edge):
    """The return path records a SYN-ACK only in the entry the player's SYN opened: one for a flow
    the POP never forwarded a SYN of opens none, and another flow's SYN-ACK leaves the entry alone."""
    minecraft_pop(edge)
    assert edge.run(backend_tcp("SA")).reason == "tx_return"
    assert flows(edge) == set()
    assert edge.run(syn()).reason == "tx_forward"
    assert edge.run(backend_tcp("SA", dport=PLAYER_PORT + 1)).reason == "tx_return"
    assert edge.run(backend_tcp("A")).reason == "tx_return"
    assert edge.run(backend_tcp("R")).reason == "tx_return"
    assert syn_acked(edge, FLOW) == NOT_SYN_ACKED
    assert edge.run(backend_tcp("SA", seq=2 ** 32 - 1)).reason == "tx_return"
    assert syn_acked(edge, FLOW) == 0           # the ACK that wraps to 0 ...
    # ... is the player's all the same: the check (before the punch the backend's ACK above made)
    # passes its handshake and ends the flow's entry.
    assert edge.run(segment(HANDSHAKE, ack=0)).reason == "tx_punched"
    assert flows(edge) == set()


# ---- anycast: the backend's SYN-ACK left through another POP ---------------------------------------------

@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_garbage_on_a_flow_whose_syn_ack_left_through_another_pop_is_dropped_and_revokes_nobody(edge, name):
    """The flow's SYN came in here (its entry), but the backend's SYN-ACK went back through another
    POP (the mapper steered the player's address there: the route moved mid-handshake). Nothing
    here proves the first data segment the player's own, so garbage is dropped and nobody revoked;
    the entry stays, and the player's real handshake then passes. Next to it the same garbage on a
    flow whose SYN-ACK went back through this POP: the player's own, dropped and revoked (as before
    this change)."""
    minecraft_pop(edge)
    verify_player(edge)
    assert edge.run(syn()).reason == "tx_forward"          # the SYN-ACK never comes back here
    assert edge.run(segment(GARBAGE[name])).reason == "drop_handshake_unacked"
    assert edge.run(segment(GARBAGE[name], ack=CLIENT_ACK + 1)).reason == "drop_handshake_unacked"
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) == "punch"
    assert edge.reason_counts().get("drop_handshake", (0, 0))[0] == 0
    assert syn_acked(edge, FLOW) == NOT_SYN_ACKED
    assert edge.run(segment(HANDSHAKE)).reason == "tx_forward"
    assert flows(edge) == set()

    connect(edge, sport=PLAYER_PORT + 1)                   # the SYN-ACK seen here
    assert edge.run(segment(GARBAGE[name], sport=PLAYER_PORT + 1)).reason == "drop_handshake"
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) is None


def test_a_handshake_on_a_flow_whose_syn_ack_left_through_another_pop_is_forwarded(edge):
    """The player's connection whose SYN-ACK went back through another POP: its handshake (with
    Login Start, in one segment or two) is forwarded and ends the entry, so the rest of the
    connection goes through unchecked, whatever its ACK numbers. Measured before this change
    (main at 4a59b5d, this test's segments): the handshake was dropped as drop_handshake_unacked,
    and so was each retransmission, until the LRU evicted the entry: the connection stalled."""
    with_syn_auth_pop(edge)                 # the lab's shape: verified by its stack's RST
    assert edge.run(syn()).reason == "tx_forward"
    assert edge.run(segment(HANDSHAKE, ack=77)).reason == "tx_forward"       # any ACK: none is known here
    assert flows(edge) == set()
    assert edge.run(segment(mc.login_start(), seq=1001 + len(HANDSHAKE), ack=77)).reason == "tx_forward"
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) == "syn_auth"
    # Each next state, on flows of their own.
    for offset, next_state in enumerate(mc.NEXT_STATES, start=1):
        sport = PLAYER_PORT + offset
        assert edge.run(syn(sport=sport)).reason == "tx_forward"
        first = mc.handshake_packet(b"play.example.org", GAME_PORT, next_state, -1) + mc.status_request()
        assert edge.run(segment(first, sport=sport, flags="P", ack=0)).reason == "tx_forward"
    assert flows(edge) == set()


def test_a_spoofed_handshake_before_the_syn_ack_ends_the_check_and_revokes_nobody(edge):
    """What the change gives a spoofer: a well-formed handshake in a verified player's name on a flow
    whose SYN-ACK was not seen yet is forwarded (the backend's stack refuses data that does not
    acknowledge its SYN-ACK) and ends the entry, so that flow's next data is not checked. That is
    the player's own connection going unchecked, as every flow without an entry is (fail open:
    docs/game-protocols.md); nobody is revoked, and garbage in its name is still refused."""
    with_syn_auth_pop(edge)
    assert edge.run(syn()).reason == "tx_forward"
    assert edge.run(segment(GARBAGE["http"], ack=12345)).reason == "drop_handshake_unacked"
    assert edge.run(segment(HANDSHAKE, ack=12345)).reason == "tx_forward"
    assert flows(edge) == set()
    assert edge.run(backend_tcp("SA")).reason == "tx_return"                 # opens nothing
    assert edge.run(segment(GARBAGE["http"])).reason == "tx_forward"
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) == "syn_auth"


# ---- anycast: the flow's first data segment went through another POP ------------------------------------

LOGIN_START_SEQ = FIRST_SEQ + len(HANDSHAKE)    # the segment after a handshake sent on its own


@pytest.mark.parametrize("syn_ack", ["here", "elsewhere"])
def test_a_later_segment_whose_first_went_through_another_pop_is_forwarded_and_revokes_nobody(edge, syn_ack):
    """The player's SYN (and its backend's SYN-ACK, or not) came through this POP; then the route
    moved, its handshake went through another POP, and the route moved back: its next segment
    (Login Start, before the server replied) comes here, acknowledging the SYN-ACK like the
    handshake did. It is not the flow's first segment (its sequence number is past the SYN's + 1):
    forwarded unchecked, nobody revoked, the entry kept for the first segment should it come here.
    Measured on main (f1e1e21, these segments): Login Start dropped as drop_handshake and the
    player's verification revoked (SYN-ACK here), or dropped as drop_handshake_unacked, with each
    retransmission, until the entry was evicted: a stalled connection (SYN-ACK elsewhere)."""
    minecraft_pop(edge)
    verify_player(edge)
    assert edge.run(syn()).reason == "tx_forward"
    if syn_ack == "here":
        assert edge.run(backend_tcp("SA")).reason == "tx_return"
    for dummy in range(2):                          # and its retransmission
        assert edge.run(segment(mc.login_start(), seq=LOGIN_START_SEQ)).reason == "tx_forward"
    assert edge.run(segment(GARBAGE["random"], seq=LOGIN_START_SEQ + len(mc.login_start()))).reason == "tx_forward"
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) == "punch"
    assert edge.reason_counts().get("drop_handshake", (0, 0))[0] == 0
    assert flows(edge) == {FLOW}


@pytest.mark.parametrize("syn_ack", ["here", "elsewhere"])
def test_the_first_segment_is_still_judged_after_a_later_one(edge, syn_ack):
    """Out of order, or back through this POP: the flow's first segment (the SYN's sequence number
    + 1) is judged whenever it comes, a later segment before it changes nothing. The player's own
    garbage is refused (revoked where the SYN-ACK was seen here), its handshake forwarded."""
    minecraft_pop(edge)
    verify_player(edge)
    assert edge.run(syn()).reason == "tx_forward"
    if syn_ack == "here":
        assert edge.run(backend_tcp("SA")).reason == "tx_return"
    assert edge.run(segment(mc.login_start(), seq=LOGIN_START_SEQ)).reason == "tx_forward"
    refused = "drop_handshake" if syn_ack == "here" else "drop_handshake_unacked"
    assert edge.run(segment(GARBAGE["http"])).reason == refused
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) == (None if syn_ack == "here" else "punch")
    assert edge.run(segment(HANDSHAKE)).reason == "tx_forward"
    assert flows(edge) == set()


@pytest.mark.parametrize("start", [-1, -5, -len(HANDSHAKE)],
                         ids=["one-byte-before", "five-bytes-before", "its-length-before"])
def test_a_segment_that_carries_the_first_byte_from_further_back_is_refused(edge, start):
    """The server's stack trims what lies before the first data byte and reads the rest: data that
    starts before the SYN's sequence number + 1 and reaches past it carries the flow's first bytes
    at an offset, where no handshake is looked for. No client sends that; it is refused like a first
    segment without a handshake (the player's own: revoked)."""
    minecraft_pop(edge)
    verify_player(edge)
    connect(edge)
    payload = bytes(-start) + HANDSHAKE
    assert edge.run(segment(payload, seq=(FIRST_SEQ + start) % 2 ** 32)).reason == "drop_handshake"
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) is None
    assert flows(edge) == {FLOW}


def test_data_wholly_before_or_after_the_first_byte_is_not_judged(edge):
    """Segments that do not carry the first data byte (old data the server drops, data further on,
    the sequence space's wrap included) are not the first segment: forwarded, entry kept."""
    minecraft_pop(edge)
    verify_player(edge)
    assert edge.run(syn(seq=2 ** 32 - 3)).reason == "tx_forward"          # first data byte: 2**32 - 2
    assert edge.run(backend_tcp("SA", ack=2 ** 32 - 2)).reason == "tx_return"
    for seq, length in ((2 ** 32 - 2 - 40, 40), (2 ** 32 - 1, 20), (0, 20), (5, 64), (2 ** 31, 64)):
        assert edge.run(segment(GARBAGE["random"][:length], seq=seq)).reason == "tx_forward", seq
    assert edge.run(segment(GARBAGE["random"][:30], seq=2 ** 32 - 2 - 10)).reason == "drop_handshake"
    assert flows(edge) == {FLOW}


def test_the_syn_acks_ack_decides_which_segment_is_first(edge):
    """The backend's SYN-ACK acknowledges the SYN it accepted: its ACK is the first data byte's
    number, whatever SYNs came in. A SYN spoofed into the flow after it (chosen so that the
    player's Login Start would look first) moves nothing: Login Start passes, nobody revoked.
    Before the SYN-ACK, the latest SYN's number stands (a retransmission carries the same)."""
    minecraft_pop(edge)
    verify_player(edge)
    assert edge.run(syn(seq=7777)).reason == "tx_forward"                  # a SYN spoofed first
    assert edge.run(syn()).reason == "tx_forward"                          # the player's
    assert edge.run(backend_tcp("SA")).reason == "tx_return"
    assert edge.run(syn(seq=LOGIN_START_SEQ - 1)).reason == "tx_forward"   # spoofed after the SYN-ACK
    assert edge.run(segment(mc.login_start(), seq=LOGIN_START_SEQ)).reason == "tx_forward"
    assert edge.run(segment(GARBAGE["http"], seq=7778)).reason == "tx_forward"
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) == "punch"
    assert edge.run(segment(GARBAGE["http"])).reason == "drop_handshake"
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) is None


SECOND_ISN = (CLIENT_ISN + 2 ** 31) % 2 ** 32     # as far from the player's ISN as the sequence space allows


@pytest.mark.parametrize("ack", [77, CLIENT_ACK], ids=["any-ack", "the-syn-acks-ack"])
def test_a_second_syn_with_another_isn_before_the_syn_ack_leaves_no_segment_unjudged(edge, ack):
    """Review of cbc7eab: an attacker that owns its address completes a handshake with SYN seq X
    whose SYN-ACK leaves through another POP, then sends a second SYN on the same four-tuple with
    seq Y = X + 2^31. This POP forwards it; the backend keeps X (it answers with a challenge ACK).
    Had the entry taken Y as its isn, garbage at X + 1 would be "a later segment", forwarded
    unjudged, and the backend would hand it to the game as the connection's first bytes (so it
    was, on cbc7eab). Two ISNs before any SYN-ACK here: the entry cannot tell which one the
    backend accepted, so the flow's first data segment is judged whatever its sequence number (as
    before cbc7eab): garbage at X + 1, at Y + 1 or further on is dropped as drop_handshake_unacked,
    nobody revoked, and the handshake (at X + 1) is forwarded and ends the check."""
    minecraft_pop(edge)
    verify_player(edge)
    assert edge.run(syn()).reason == "tx_forward"                       # X; its SYN-ACK leaves elsewhere
    for isn in (SECOND_ISN, CLIENT_ISN):                                # Y; then X again: Y is not forgotten
        assert edge.run(syn(seq=isn)).reason == "tx_forward"
        for seq in (FIRST_SEQ, SECOND_ISN + 1, LOGIN_START_SEQ, (SECOND_ISN + 1 + len(HANDSHAKE)) % 2 ** 32):
            for flags in ("PA", "P"):
                assert edge.run(segment(GARBAGE["http"], flags=flags, seq=seq, ack=ack)).reason == \
                    "drop_handshake_unacked", (isn, seq, flags)
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) == "punch"
    assert edge.reason_counts().get("drop_handshake", (0, 0))[0] == 0
    assert flows(edge) == {FLOW}
    assert edge.run(segment(HANDSHAKE, ack=ack)).reason == "tx_forward"      # the player's, at X + 1
    assert flows(edge) == set()
    assert edge.run(segment(mc.login_start(), seq=LOGIN_START_SEQ, ack=ack)).reason == "tx_forward"


def test_a_retransmitted_syn_leaves_later_segments_unjudged(edge):
    """The control of the one above: a SYN retransmitted with the same ISN (the player's stack,
    before the SYN-ACK that left through another POP reached it) changes nothing: the player's
    later segment (its handshake went through another POP) is still forwarded unjudged, and the
    first segment still judged should it come here."""
    minecraft_pop(edge)
    verify_player(edge)
    for dummy in range(3):
        assert edge.run(syn()).reason == "tx_forward"
    assert edge.run(segment(mc.login_start(), seq=LOGIN_START_SEQ, ack=77)).reason == "tx_forward"
    assert flows(edge) == {FLOW}
    assert edge.run(segment(GARBAGE["http"], ack=77)).reason == "drop_handshake_unacked"
    assert edge.run(segment(HANDSHAKE, ack=77)).reason == "tx_forward"
    assert flows(edge) == set()
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) == "punch"


def test_a_spoofed_syn_into_a_quiet_established_connection_no_longer_stalls_it(edge):
    """A SYN spoofed with the four-tuple of the player's established connection, without a live
    punch (the game server quiet for the punch's idle time): the connection's segments are far
    from the spoofed SYN's sequence number (the spoofer does not know the connection's), so they
    are not its first segment: forwarded. (Before, all its data was dropped as
    drop_handshake_unacked until the entry was evicted.)"""
    minecraft_pop(edge)
    verify_player(edge)
    connect(edge)
    assert edge.run(segment(HANDSHAKE)).reason == "tx_forward"
    assert edge.run(syn(seq=0x9E3779B9)).reason == "tx_forward"
    assert flows(edge) == {FLOW}
    assert edge.run(segment(GARBAGE["random"], seq=LOGIN_START_SEQ + 4000, ack=CLIENT_ACK + 300)).reason == \
        "tx_forward"
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) == "punch"


# ---- the table's fail-open: a spoofed SYN flood and edge_mc_flows' 65,536 entries ----------------------

FLOOD = 2 * abi.MAX_MC_FLOWS       # twice the table: the LRU has evicted every older entry by then


@functools.lru_cache(maxsize=None)
def lab_spoof():
    """lab/spoof.py, the one home of a spoofed flood's frames (a script, loaded by path as
    tests/unit/lab_modules.py does), its link layer the test topology's instead of the lab's ARP."""
    spec = importlib.util.spec_from_file_location("lab_spoof_for_bpf", REPO / "lab" / "spoof.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.ether_to = lambda args: eth()
    return module


def spoofed_syns(count):
    """count SYNs to the service as lab/spoof.py tcp-flood sends them (a Linux client's options, a
    random sequence number, valid checksums), each from its own source of 100.0.0.0/8."""
    args = types.SimpleNamespace(sources="100.0.0.0/8", seed=14, count=count, target=GAME, port=GAME_PORT,
                                 flags="syn")
    frames, distinct = lab_spoof().tcp_flood_frames(args)
    assert distinct == count
    return frames


def backend_syn_acks(syns):
    """The game server's SYN-ACK to each SYN, as its tunnel brings it back to the POP: the one
    template's inner destination address and port patched, its IP and TCP checksums recomputed."""
    spoof = lab_spoof()
    template = bytearray(backend_tcp("SA", dst="100.0.0.0", dport=1024))
    inner = pk.l4_offset(bytes(template))          # the inner IPv4 header, after the outer one
    l4 = inner + (template[inner] & 0x0F) * 4
    frames = []
    for syn_frame in syns:
        frame = bytearray(template)
        frame[inner + 16:inner + 20] = syn_frame[26:30]            # to the SYN's source
        frame[l4 + 2:l4 + 4] = syn_frame[34:36]                    # and source port
        struct.pack_into("!H", frame, inner + 10, 0)
        struct.pack_into("!H", frame, inner + 10, spoof.ipv4_checksum(bytes(frame[inner:l4])))
        struct.pack_into("!H", frame, l4 + 16, 0)
        struct.pack_into("!H", frame, l4 + 16, spoof.tcp_checksum(bytes(frame[l4:]), bytes(frame[inner + 12:inner + 16]),
                                                                  bytes(frame[inner + 16:inner + 20])))
        frames.append(bytes(frame))
    return frames


def flood(edge, frames):
    """Run each frame once (the program's own test run, without the per-frame counter reads of
    edge.run); returns the reasons' packet counts the frames added."""
    before = edge.reason_counts()
    for frame in frames:
        edge.prog.test_run(frame, ctx_in=edge.xdp_ctx(topo.UPLINK, len(frame)))
    after = edge.reason_counts()
    return {name: after[name][0] - before.get(name, (0, 0))[0] for name in after
            if after[name][0] != before.get(name, (0, 0))[0]}


def test_a_spoofed_syn_flood_cannot_evict_a_flow_under_syn_authentication(edge):
    """A flow without an entry goes unchecked (fail open: docs/game-protocols.md), so a flood that
    evicted a player's entry from the 65,536-entry LRU would wave its first segment through. Under
    SYN authentication a spoofed SYN opens no entry (the POP answers it, never forwards it): after
    131,072 of them from as many sources, the player's flow is still the table's only entry and
    its own garbage (the SYN-ACK's ACK) is still refused and revoked."""
    with_syn_auth_pop(edge)
    connect(edge)
    added = flood(edge, spoofed_syns(FLOOD))
    assert added == {"tx_syn_auth": FLOOD}
    assert flows(edge) == {FLOW}
    assert syn_acked(edge, FLOW) == CLIENT_ACK
    assert edge.run(segment(GARBAGE["http"])).reason == "drop_handshake"
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) is None


def test_without_syn_authentication_a_spoofed_syn_flood_evicts_flows_which_then_go_unchecked(edge, one_cpu):
    """The control, and the documented limit: without SYN authentication (syn_auth never, or auto
    before attack mode is on) every spoofed SYN is forwarded and opens an entry, and the game
    server's SYN-ACK to it comes back through the POP (which looks the entry up, as it does the
    player's: the LRU gives neither a second chance the other lacks). 131,072 of them fill the
    table and evict the player's flow, whose garbage first segment then reaches the game server
    unchecked (which checks it itself), and nobody is revoked."""
    minecraft_pop(edge)
    verify_player(edge)
    connect(edge)
    assert syn_acked(edge, FLOW) == CLIENT_ACK
    syns = spoofed_syns(FLOOD)
    added = flood(edge, [frame for pair in zip(syns, backend_syn_acks(syns)) for frame in pair])
    assert added == {"tx_forward": FLOOD, "tx_return": FLOOD}
    left = flows(edge)
    assert FLOW not in left
    assert len(left) >= abi.MAX_MC_FLOWS * 9 // 10    # the flood's: the LRU keeps each CPU's reserve free
    assert edge.run(segment(GARBAGE["http"])).reason == "tx_forward"
    assert edge.verified_for(PLAYER, GAME_TCP_ID, monotonic_ns()) == "punch"
