"""Issue 13 through the real program: verified players, the admission budget, attack mode, and the
game server's handshake as proof.

A source is verified for a service by a valid edge cookie, by the game server's reply on a flow it
took part in (punch), by echoing the game server's own challenge (handshake), or by the allow
list. While a service is under attack an unverified packet passes only when it is handshake-shaped
for the service's game and within the service's per-CPU admission budget; everything else is
drop_unverified, and a dropped source gets no entry in edge_sources. Each attack below is shown
failing and, with the same packets, passing on the unprotected path (attack mode off).
"""

from __future__ import annotations

import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi

from . import game_model as gm
from harness.edge_env import hammer_from_two_cpus, monotonic_ns
from .packets import a2s_field_request, a2s_player_reply, a2s_rules_reply, tcp_frame
from .scenario import (A2S_INFO_REPLY, A2S_MAX_AGE_MS, A2S_REQUEST, BACKEND, GAME, GAME_PORT, GAME_UDP_ID, PLAYER,
                       PLAYER_PORT, backend_reply, cookie_for, player_tcp, player_udp, setup_pop, spoofed)

SECOND = 10**9
BLACKHOLED_BACKEND = "10.9.0.1"   # harness/topology.py: a blackhole route (admitted -> drop_no_route)
CLIENT_CHALLENGE = 0x1234


def game_pop(edge, attack_mode="always", admission=(0, 0), game="source", backend=BACKEND, **config):
    """The standard POP, its UDP game service speaking `game` with this attack mode and budget."""
    setup_pop(edge, **config)
    edge.add_service("udp", GAME, GAME_PORT, GAME_UDP_ID, backend,
                     flags=abi.SERVICE_F_A2S_CACHE | abi.SERVICE_F_A2S_SNOOP, a2s_max_age_ms=A2S_MAX_AGE_MS,
                     admission=admission, game_protocol=game, attack_mode=attack_mode)
    return edge


def getchallenge(game="source"):
    return gm.source_getchallenge_packet(CLIENT_CHALLENGE) if game == "source" else gm.goldsrc_getchallenge_packet()


def connect(challenge, game="source"):
    return gm.source_connect_packet(challenge, CLIENT_CHALLENGE) if game == "source" else \
        gm.goldsrc_connect_packet(challenge)


def server_challenge(challenge, game="source"):
    return gm.source_challenge_packet(challenge, CLIENT_CHALLENGE) if game == "source" else \
        gm.goldsrc_challenge_packet(challenge)


def sources(edge):
    return {socket.inet_ntoa(key): abi.SourceState.unpack(value) for key, value in edge.maps["edge_sources"].items()}


def verified_anywhere(edge):
    """Sources with any slot (live or not) naming a service."""
    return {address for address, state in sources(edge).items() if any(slot[0] for slot in state.verified)}


# ---- attack mode: the same flood, before and under it -------------------------------------------------

FLOOD = spoofed(300, seed=1)


@pytest.mark.parametrize("payload", [b"\x00" * 40, b"\xff\xff\xff\xffjunk", A2S_REQUEST + b"\x01\x02\x03\x04"],
                         ids=["junk", "connectionless-junk", "a2s-guessed-cookie"])
def test_a_spoofed_flood_passes_without_attack_mode_and_dies_under_it(edge, payload):
    # The unprotected path (attack mode never; issue 13's starting point): every packet forwarded,
    # every spoofed source an entry (LRU churn that would evict players).
    game_pop(edge, attack_mode="never")
    before = [edge.run(player_udp(payload, src=source)).reason for source in FLOOD]
    assert set(before) == {"tx_forward"}
    assert len(sources(edge)) == len(FLOOD)
    # The same packets, the service under attack with no budget: all dropped, no entry made.
    edge.reset()
    game_pop(edge, attack_mode="always")
    under = [edge.run(player_udp(payload, src=source)).reason for source in FLOOD]
    assert set(under) == {"drop_unverified"}
    assert sources(edge) == {}
    counters = edge.admission_counters(GAME_UDP_ID)
    assert (counters["unverified_packets"], counters["dropped_packets"], counters["admitted_packets"]) == \
        (len(FLOOD), len(FLOOD), 0)


def test_attack_mode_auto_follows_the_agent_and_the_operator_overrides_it(edge):
    frame = player_udp(b"\x00" * 40, src=FLOOD[0])
    game_pop(edge, attack_mode="auto")
    assert edge.run(frame).reason == "tx_forward"           # auto, the agent says calm
    edge.set_under_attack(GAME_UDP_ID, True)
    assert edge.run(frame).reason == "drop_unverified"      # auto, the agent says attack
    edge.set_under_attack(GAME_UDP_ID, False)
    assert edge.run(frame).reason == "tx_forward"           # and back
    edge.set_under_attack(GAME_UDP_ID, True)
    game_pop(edge, attack_mode="never")
    assert edge.run(frame).reason == "tx_forward"           # never: whatever the agent says
    edge.set_under_attack(GAME_UDP_ID, False)
    game_pop(edge, attack_mode="always")
    assert edge.run(frame).reason == "drop_unverified"      # always: whatever the agent says
    # Unverified packets are counted under attack or not: what the agent's controller watches.
    counters = edge.admission_counters(GAME_UDP_ID)
    assert (counters["unverified_packets"], counters["dropped_packets"]) == (5, 2)


def test_without_attack_a_direct_connect_needs_no_a2s_and_no_proof(edge):
    """A player who connects directly (no server browser, no A2S) gets in while no attack is on."""
    game_pop(edge, attack_mode="auto")
    assert edge.run(player_udp(getchallenge())).reason == "tx_forward"
    assert edge.run(player_udp(connect(0xABCDEF))).reason == "tx_forward"   # the game server judges it
    assert edge.run(player_udp(b"netchannel data")).reason == "tx_forward"


# ---- the budget ------------------------------------------------------------------------------------------

def test_under_attack_only_handshake_shaped_packets_are_admitted_and_only_within_the_budget(edge):
    game_pop(edge, attack_mode="always", admission=(5, 0), nr_cpus=1)
    # Junk is never admitted, budget or not (and takes none of it).
    assert [edge.run(player_udp(b"\x00" * 40, src=source)).reason for source in FLOOD[:20]] == \
        ["drop_unverified"] * 20
    # Handshake-shaped: the first five (one second of a 5 pps budget on the POP's one CPU).
    reasons = [edge.run(player_udp(getchallenge(), src=source)).reason for source in FLOOD[20:40]]
    assert reasons == ["tx_forward"] * 5 + ["drop_unverified"] * 15
    # Only the admitted got an entry; none of them is verified by being admitted.
    assert set(sources(edge)) == set(FLOOD[20:25])
    assert verified_anywhere(edge) == set()
    counters = edge.admission_counters(GAME_UDP_ID)
    assert (counters["admitted_packets"], counters["dropped_packets"]) == (5, 35)


def test_a_byte_budget_admits_exactly_its_bytes(edge):
    frame = player_udp(getchallenge())
    ip_bytes = len(frame) - 14
    game_pop(edge, attack_mode="always", admission=(0, 3 * ip_bytes + ip_bytes // 2), nr_cpus=1)
    assert [edge.run(frame).reason for dummy in range(5)] == ["tx_forward"] * 3 + ["drop_unverified"] * 2


def test_a_game_without_a_known_handshake_admits_nothing_unverified(edge):
    game_pop(edge, attack_mode="always", admission=(1000, 0), game="none", nr_cpus=1)
    assert edge.run(player_udp(getchallenge())).reason == "drop_unverified"
    assert edge.run(player_udp(A2S_REQUEST)).reason == "drop_unverified"


def test_the_budget_is_exact_with_two_cpus_at_once(edge):
    """Each CPU's bucket holds budget / nr_cpus: two CPUs hammering at once admit the budget, no
    more (per-CPU buckets: no atomics, no shared count to race on)."""
    budget = 20
    game_pop(edge, attack_mode="always", admission=(budget, 0), nr_cpus=2, backend=BLACKHOLED_BACKEND)
    # The admitted end as drop_no_route (the frame is left as it was, so every repetition of
    # BPF_PROG_TEST_RUN is the same packet), the refused as drop_unverified.
    frame = player_udp(getchallenge(), src=FLOOD[0])
    repeat = 500
    cpus = hammer_from_two_cpus(edge, frame, repeat)
    per_cpu = [edge.admission_counters(GAME_UDP_ID, cpu=cpu)["admitted_packets"] for cpu in cpus]
    assert per_cpu == [budget // 2, budget // 2]
    reasons = edge.reason_counts()
    assert (reasons["drop_no_route"][0], reasons["drop_unverified"][0]) == (budget, 2 * repeat - budget)


# ---- the proofs ------------------------------------------------------------------------------------------

def a2s_cookie_round(edge, src=PLAYER):
    """A2S_INFO, the POP's challenge, the request with the cookie: answered from the cache."""
    edge.set_a2s_cache(GAME_UDP_ID, A2S_INFO_REPLY, monotonic_ns())
    assert edge.run(player_udp(A2S_REQUEST, src=src)).reason == "tx_a2s_challenge"
    return edge.run(player_udp(A2S_REQUEST + cookie_for(src=src), src=src)).reason


def test_a_valid_cookie_verifies_and_a_verified_player_is_never_charged(edge):
    game_pop(edge, attack_mode="always", admission=(2, 0), nr_cpus=1)
    # Before: the player's game traffic is unverified (junk to the budget: dropped).
    assert edge.run(player_udp(b"netchannel data")).reason == "drop_unverified"
    challenged = time.monotonic()
    assert a2s_cookie_round(edge) == "tx_a2s_cached"         # the challenge took the budget, not the echo
    assert edge.verified_for(PLAYER, GAME_UDP_ID, monotonic_ns()) == "cookie"
    assert edge.verify_counts()["cookie"] == 1
    # After: the budget is spent, the player streams anyway, charged nothing.
    reasons = [edge.run(player_udp(b"netchannel data")).reason for dummy in range(50)]
    assert reasons == ["tx_forward"] * 50
    counters = edge.admission_counters(GAME_UDP_ID)
    assert (counters["verified_packets"], counters["admitted_packets"]) == (1 + 50, 1)
    # What is left of the budget: 1 token, plus what 2 tokens/s refilled meanwhile (a loaded
    # machine can take half a second over the 50 runs; the bucket holds 2 at most).
    admitted = 0
    for source in FLOOD[:10]:
        if edge.run(player_udp(getchallenge(), src=source)).reason != "tx_forward":
            break
        admitted += 1
    refilled = int(2 * (time.monotonic() - challenged))
    assert 1 <= admitted <= min(2, 1 + refilled), (admitted, refilled)   # then one was dropped: spent


@pytest.mark.parametrize("kind", ["info", "player", "rules"])
def test_a_valid_cookie_is_a_proof_a_spent_budget_cannot_refuse(edge, kind):
    """The attack: a flood of spoofed A2S queries (handshake-shaped: each takes the budget's token
    while one is left) spends the budget, and the player who got the POP's challenge and echoes
    it - the one proof a server browser's player can give - was charged like the flood and dropped
    (drop_unverified). The echo is checked before the budget, as the handshake's is: a guessed
    cookie is no proof and is still charged and refused."""
    game_pop(edge, attack_mode="always", admission=(1, 0), nr_cpus=1)
    edge.set_a2s_cache(GAME_UDP_ID, A2S_INFO_REPLY, monotonic_ns())
    edge.set_a2s_cache(GAME_UDP_ID, a2s_player_reply(), monotonic_ns(), kind="player")
    edge.set_a2s_cache(GAME_UDP_ID, a2s_rules_reply(), monotonic_ns(), kind="rules")

    def request(cookie=None, src=PLAYER):
        if kind == "info":
            return player_udp(A2S_REQUEST + (b"" if cookie is None else cookie), src=src)
        return player_udp(a2s_field_request(kind, None if cookie is None else int.from_bytes(cookie, "little")),
                          src=src)

    challenged = time.monotonic()
    assert edge.run(request()).reason == "tx_a2s_challenge"          # the player's challenge: the budget
    flood = [edge.run(request(src=source)).reason for source in FLOOD[:20]]
    # 1 token/s: a loaded machine can take over a second for the 20 runs, and each token that came
    # back meanwhile answered one flood packet. The player's echo must meet a spent budget: the
    # flood goes on until a packet of it is refused (a token comes back once a second at most).
    for source in FLOOD[20:25]:
        if flood[-1] == "drop_unverified":
            break
        flood.append(edge.run(request(src=source)).reason)
    refilled = int(time.monotonic() - challenged)
    assert set(flood) <= {"drop_unverified", "tx_a2s_challenge"}, flood
    assert flood.count("tx_a2s_challenge") <= refilled and flood[-1] == "drop_unverified", (flood, refilled)
    assert edge.run(request(cookie_for())).reason == "tx_a2s_cached"
    assert edge.verified_for(PLAYER, GAME_UDP_ID, monotonic_ns()) == "cookie"
    assert edge.run(player_udp(b"netchannel data")).reason == "tx_forward"
    # A spoofer's guess (here: a cookie valid for another address) is charged and refused.
    assert edge.run(request(cookie_for(), src=FLOOD[0])).reason == "drop_unverified"
    assert verified_anywhere(edge) == {PLAYER}


def test_a_verified_players_own_rate_limit_still_applies(edge):
    game_pop(edge, attack_mode="always", admission=(10, 0), nr_cpus=1, limits={"udp": (4, 0)}, ban_sec=0)
    now = monotonic_ns()
    edge.set_source(PLAYER, abi.SourceState(verified=[(GAME_UDP_ID, 1, now)]))
    while monotonic_ns() % SECOND > 600 * 10**6:  # the burst in one rate window
        time.sleep(0.01)
    assert [edge.run(player_udp(b"x")).reason for dummy in range(6)] == ["tx_forward"] * 4 + ["drop_rate_limit"] * 2


def test_a_payload_rule_for_unverified_sources_spares_a_verified_player(edge):
    """The payload rules' "verified or not" is admission's answer: a proof counts, not only the
    allow list."""
    game_pop(edge, attack_mode="never")
    edge.set_payload_rules([abi.pack_payload_rule("drop", "udp", verified="unverified")])
    assert edge.run(player_udp(b"data")).reason == "drop_rule"
    edge.set_source(PLAYER, abi.SourceState(verified=[(GAME_UDP_ID, 1, monotonic_ns())]))
    assert edge.run(player_udp(b"data")).reason == "tx_forward"
    assert edge.run(player_udp(b"data", src=FLOOD[0])).reason == "drop_rule"


def test_the_allow_list_counts_as_verified_and_stores_nothing(edge):
    game_pop(edge, attack_mode="always")
    edge.allow("203.0.113.0/24")
    assert edge.run(player_udp(b"bgp-ish control traffic")).reason == "tx_forward"
    assert verified_anywhere(edge) == set()
    assert edge.admission_counters(GAME_UDP_ID)["verified_packets"] == 1
    assert edge.verify_counts() == dict.fromkeys(abi.VERIFY_PROOFS, 0)


def test_the_game_servers_reply_on_the_players_flow_verifies_by_punch(edge):
    game_pop(edge, attack_mode="always")
    assert edge.run(backend_reply(b"\x01\x02 netchannel")).reason == "tx_return"
    assert edge.verified_for(PLAYER, GAME_UDP_ID, monotonic_ns()) == "punch"
    assert edge.run(player_udp(b"netchannel data")).reason == "tx_punched"              # its flow
    assert edge.run(player_udp(b"netchannel data", sport=PLAYER_PORT + 1)).reason == "tx_forward"   # the player


# A split reply (Valve, "Server queries": header -2, little endian, then the answer's id, the
# packet count and number): a player or rules list too long for one datagram, sent to whoever asked.
SPLIT_REPLY = struct.pack("<iiBB", -2, 0x1234, 2, 0) + b"\xff\xff\xff\xffD\x20" + b"p\x00" * 20


@pytest.mark.parametrize("reply", ["connectionless", "split", "syn-ack"])
def test_a_reply_any_spoofed_request_gets_does_not_verify(edge, reply):
    """Connectionless replies (A2S answers, challenges, and the parts of a split A2S answer) and a
    SYN-ACK answer whoever asked, a spoofed address as readily as a player's: they prove nothing."""
    game_pop(edge, attack_mode="always")
    if reply == "connectionless":
        frame = backend_reply(b"\xff\xff\xff\xffA\x01\x02\x03\x04")
    elif reply == "split":
        frame = backend_reply(SPLIT_REPLY)
    else:
        edge.add_service("tcp", GAME, GAME_PORT, 2, BACKEND, attack_mode="always")
        frame = backend_reply(b"", proto="tcp")
    assert edge.run(frame).reason == "tx_return"
    assert verified_anywhere(edge) == set()


def test_a_verified_attacker_cannot_punch_its_flood_past_its_own_rate_limit(edge):
    """Under attack, the attacker who does not spoof (a bot at its own address) verifies itself
    with a cookie like any player, then asks the game server for a challenge from the port it will
    flood from: the challenge (connectionless, sent to whoever asks) must not punch that flow, or
    the flood would skip the per-source limit that is all that holds a verified source back."""
    attacker = FLOOD[0]
    game_pop(edge, attack_mode="always", admission=(10, 0), nr_cpus=1, limits={"udp": (3, 0)}, ban_sec=0)
    assert a2s_cookie_round(edge, src=attacker) == "tx_a2s_cached"
    assert edge.run(player_udp(getchallenge(), src=attacker)).reason == "tx_forward"
    assert edge.run(backend_reply(server_challenge(0xC0FFEE), dst=attacker)).reason == "tx_return"
    time.sleep(1 - monotonic_ns() % SECOND / SECOND + 0.01)      # a new rate window
    reasons = [edge.run(player_udp(b"\x00" * 40, src=attacker)).reason for dummy in range(10)]
    assert reasons == ["tx_forward"] * 3 + ["drop_rate_limit"] * 7
    assert edge.admission_counters(GAME_UDP_ID)["verified_packets"] >= 10    # verified: never charged


@pytest.mark.parametrize("game", ["source", "goldsrc"])
def test_the_game_servers_handshake_verifies_the_player_who_echoes_it(edge, game):
    challenge = 0x9E3779B9
    game_pop(edge, attack_mode="always", admission=(1, 0), game=game, nr_cpus=1)
    # getchallenge: handshake-shaped, within the budget.
    assert edge.run(player_udp(getchallenge(game))).reason == "tx_forward"
    # The game server's challenge goes back to the player: stored, not yet a proof.
    assert edge.run(backend_reply(server_challenge(challenge, game))).reason == "tx_return"
    state = edge.source(PLAYER)
    assert (state.challenge_service_id, state.server_challenge) == (GAME_UDP_ID, challenge)
    assert verified_anywhere(edge) == set()
    # The budget is spent: a connect with another challenge is refused ...
    assert edge.run(player_udp(connect(challenge + 1, game))).reason == "drop_unverified"
    # ... the connect that echoes the server's challenge verifies (and is not charged). (The
    # challenge punched nothing: it goes to whoever asks for one.)
    assert edge.run(player_udp(connect(challenge, game))).reason == "tx_forward"
    assert edge.verified_for(PLAYER, GAME_UDP_ID, monotonic_ns()) == "handshake"
    assert edge.verify_counts()["handshake"] == 1
    assert edge.run(player_udp(b"netchannel data", sport=PLAYER_PORT + 1)).reason == "tx_forward"


@pytest.mark.parametrize("game", ["source", "goldsrc"])
def test_a_spoofer_that_never_got_the_challenge_is_not_verified(edge, game):
    """The player got the challenge; a spoofer echoing it from its own address, or sending in the
    player's name from elsewhere, gets nothing: the challenge is the player's address's."""
    challenge = 0x5EED5EED
    game_pop(edge, attack_mode="always", game=game)
    edge.allow("203.0.113.0/24")      # the player's getchallenge passes whatever the budget
    assert edge.run(player_udp(getchallenge(game))).reason == "tx_forward"
    assert edge.run(backend_reply(server_challenge(challenge, game))).reason == "tx_return"
    reasons = [edge.run(player_udp(connect(challenge, game), src=source)).reason for source in FLOOD[:50]]
    assert set(reasons) == {"drop_unverified"}
    assert verified_anywhere(edge) == set()


def test_an_old_challenge_is_not_accepted(edge):
    game_pop(edge, attack_mode="always", verified_idle_ns=30 * SECOND)
    now = monotonic_ns()
    edge.set_source(PLAYER, abi.SourceState(challenge_service_id=GAME_UDP_ID, server_challenge=77,
                                            challenge_ns=now - 31 * SECOND))
    assert edge.run(player_udp(connect(77))).reason == "drop_unverified"
    edge.set_source(PLAYER, abi.SourceState(challenge_service_id=GAME_UDP_ID, server_challenge=77,
                                            challenge_ns=now - 29 * SECOND))
    assert edge.run(player_udp(connect(77))).reason == "tx_forward"


# ---- expiry ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("idle_ns,inside,outside", [(30 * SECOND, 29, 31), (0, 599, 601)], ids=["30s", "default-10min"])
def test_verification_expires_after_the_idle_time_and_play_keeps_it(edge, idle_ns, inside, outside):
    now = monotonic_ns()
    assert now > 700 * SECOND, "the machine booted too recently for this test's times"
    game_pop(edge, attack_mode="always", verified_idle_ns=idle_ns)
    edge.set_source(PLAYER, abi.SourceState(verified=[(GAME_UDP_ID, 1, now - outside * SECOND)]))
    assert edge.run(player_udp(b"data")).reason == "drop_unverified"
    edge.set_source(PLAYER, abi.SourceState(verified=[(GAME_UDP_ID, 1, now - inside * SECOND)]))
    assert edge.run(player_udp(b"data")).reason == "tx_forward"
    # Playing refreshed it: the slot's activity is now.
    assert monotonic_ns() - edge.source(PLAYER).verified[0][2] < SECOND


GAME_TCP_SERVICE_ID = 2


@pytest.mark.parametrize("game", ["source", "goldsrc", "none"])
def test_with_syn_auth_never_no_tcp_segment_is_handshake_shaped(edge, game):
    """A TCP service under attack with SYN authentication off (syn_auth never) is left to this
    issue's admission, and no TCP segment is handshake-shaped, whatever its flags and bytes: the
    game's getchallenge and A2S query (handshakes over UDP), a SYN, an ACK, a FIN. Each is
    drop_unverified and takes none of a budget that would admit them all; the control is the same
    bytes over UDP to the same game, admitted from the same budget (the UDP service's)."""
    game_pop(edge, attack_mode="always", admission=(10**6, 10**9), game=game, nr_cpus=1)
    edge.add_service("tcp", GAME, GAME_PORT, GAME_TCP_SERVICE_ID, BACKEND, admission=(10**6, 10**9),
                     game_protocol=game, attack_mode="always", syn_auth="never")
    payloads = [getchallenge("source"), getchallenge("goldsrc"), A2S_REQUEST]
    if game != "none":     # the control: over UDP, the game's own handshakes are admitted
        for payload in (getchallenge(game), A2S_REQUEST):
            assert edge.run(player_udp(payload)).reason == "tx_forward"
        assert edge.admission_counters(GAME_UDP_ID)["admitted_packets"] == 2
    sent = 0
    for flags in ("S", "A", "PA", "FA", "R"):
        for payload in [b""] + payloads:
            frame = tcp_frame(FLOOD[sent % len(FLOOD)], GAME, PLAYER_PORT, GAME_PORT, payload, flags=flags)
            assert edge.run(frame).reason == "drop_unverified", (flags, payload)
            sent += 1
    counters = edge.admission_counters(GAME_TCP_SERVICE_ID)
    assert (counters["unverified_packets"], counters["admitted_packets"], counters["dropped_packets"]) == \
        (sent, 0, sent)
    assert set(sources(edge)) <= {PLAYER}     # a dropped source gets no entry


def test_a_source_verified_for_one_service_is_not_for_another(edge):
    game_pop(edge, attack_mode="always")
    edge.add_service("tcp", GAME, GAME_PORT, 2, BACKEND, attack_mode="always")
    edge.set_source(PLAYER, abi.SourceState(verified=[(GAME_UDP_ID, 1, monotonic_ns())]))
    assert edge.run(player_udp(b"data")).reason == "tx_forward"
    assert edge.run(player_tcp(flags="A")).reason == "drop_unverified"


# ---- the property ------------------------------------------------------------------------------------------

SPOOFED_PAYLOADS = st.one_of(
    st.binary(min_size=0, max_size=64),
    st.builds(lambda value: gm.source_connect_packet(value, CLIENT_CHALLENGE), st.integers(0, 2**32 - 1)),
    st.builds(gm.goldsrc_connect_packet, st.integers(0, 2**32 - 1)),
    st.just(getchallenge("source")), st.just(getchallenge("goldsrc")),
    st.builds(lambda cookie: A2S_REQUEST + struct.pack("<I", cookie), st.integers(0, 2**32 - 1)),
    st.just(A2S_REQUEST),
)


@settings(max_examples=60, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(packets=st.lists(st.tuples(st.integers(0, 2**24 - 1), st.integers(1, 65535), SPOOFED_PAYLOADS),
                        min_size=1, max_size=40),
       mode=st.sampled_from(["always", "auto", "never"]), game=st.sampled_from(["source", "goldsrc", "none"]),
       budget=st.sampled_from([(0, 0), (3, 0), (10**6, 0)]))
def test_a_spoofed_source_is_never_verified(edge, packets, mode, game, budget):
    """Whatever spoofed sources send (guessed challenges and cookies, handshakes, junk), in any
    attack mode and budget, none of them is ever verified: they never see what the POP or the game
    server sends back (here: nothing is sent back to them at all). Only a player that got the
    server's challenge (stored for PLAYER below) could be, and no spoofer is PLAYER."""
    edge.reset()
    game_pop(edge, attack_mode=mode, admission=budget, game=game, nr_cpus=1)
    edge.set_a2s_cache(GAME_UDP_ID, A2S_INFO_REPLY, monotonic_ns())
    edge.set_source(PLAYER, abi.SourceState(challenge_service_id=GAME_UDP_ID, server_challenge=4242,
                                            challenge_ns=monotonic_ns()))
    for address, sport, payload in packets:
        source = socket.inet_ntoa(struct.pack("!I", (100 << 24) | address))
        edge.run(player_udp(payload, src=source, sport=sport))
    assert verified_anywhere(edge) == set()
    assert edge.verify_counts() == dict.fromkeys(abi.VERIFY_PROOFS, 0)
