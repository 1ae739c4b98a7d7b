"""Rule 7: A2S_INFO, A2S_PLAYER and A2S_RULES answered at the POP, never amplifying."""

from __future__ import annotations

import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import raw

from ansible_collections.anycast.edge.plugins.module_utils._a2s_cookie import tai_offset_ns
from harness.cookies import cookie_clock_ns, cookie_epoch

from harness.edge_env import monotonic_ns
from .packets import a2s_field_request, a2s_player_reply, a2s_rules_reply
from .scenario import (A2S_INFO_REPLY, A2S_MAX_AGE_MS, A2S_REQUEST, BACKEND, COOKIE_EPOCH_NS, COOKIE_KEY, GAME,
                       GAME_PORT, GAME_UDP_ID, PLAYER, PLAYER_PORT, SIDE_BACKEND, backend_reply, checksums_valid,
                       cookie_for, player_udp, setup_pop)
from harness import topology as topo

SECOND = 10**9


@pytest.fixture
def cached(pop):
    pop.set_a2s_cache(GAME_UDP_ID, A2S_INFO_REPLY, monotonic_ns())
    return pop


def assert_reply_to_player(frame: bytes, payload: bytes):
    out = Ether(frame)
    assert (out.src, out.dst) == (topo.MAC[topo.UPLINK], topo.ROUTER_MAC)
    assert (out[IP].src, out[IP].dst, out[IP].ttl) == (GAME, PLAYER, 64)
    assert (out[UDP].sport, out[UDP].dport) == (GAME_PORT, PLAYER_PORT)
    assert out[UDP].load == payload
    assert out[IP].len == 28 + len(payload) and len(frame) == 14 + 28 + len(payload)
    assert checksums_valid(frame)


def test_answers_go_back_the_way_the_request_came_vlan_tag_and_all(cached):
    """XDP_TX to the router that handed the request over (Ethernet addresses swapped), in the
    request's VLAN: no route lookup per query."""
    other_router = "02:00:00:00:00:aa"

    def tagged(payload):
        return raw(Ether(src=other_router, dst=topo.MAC[topo.UPLINK]) / Dot1Q(vlan=42) / IP(src=PLAYER, dst=GAME)
                   / UDP(sport=PLAYER_PORT, dport=GAME_PORT) / payload)

    challenge = cached.run(tagged(A2S_REQUEST))
    assert (challenge.action, challenge.reason) == ("TX", "tx_a2s_challenge")
    out = Ether(challenge.data)
    assert (out.src, out.dst, out[Dot1Q].vlan) == (topo.MAC[topo.UPLINK], other_router, 42)
    assert (out[IP].src, out[IP].dst) == (GAME, PLAYER) and len(challenge.data) == 18 + 28 + 9
    assert checksums_valid(challenge.data)

    answered = cached.run(tagged(A2S_REQUEST + out[UDP].load[5:9]))
    assert (answered.action, answered.reason) == ("TX", "tx_a2s_cached")
    out = Ether(answered.data)
    assert (out.src, out.dst, out[Dot1Q].vlan) == (topo.MAC[topo.UPLINK], other_router, 42)
    assert out[UDP].load == A2S_INFO_REPLY and len(answered.data) == 18 + 28 + len(A2S_INFO_REPLY)
    assert checksums_valid(answered.data)


def test_a_request_gets_this_pops_challenge(cached):
    request = player_udp(A2S_REQUEST)
    result = cached.run(request)
    assert (result.action, result.reason) == ("TX", "tx_a2s_challenge")
    assert_reply_to_player(result.data, b"\xff\xff\xff\xffA" + cookie_for())
    assert len(result.data) < len(request)  # 9 bytes of payload for 25: no amplification


def test_a_request_with_the_cookie_is_answered_from_the_cache(cached):
    result = cached.run(player_udp(A2S_REQUEST + cookie_for()))
    assert (result.action, result.reason) == ("TX", "tx_a2s_cached")
    assert_reply_to_player(result.data, A2S_INFO_REPLY)
    assert cached.service_counters(GAME_UDP_ID)[2] == 1  # counted out


def test_the_previous_epochs_cookie_is_still_accepted_but_not_older(cached):
    epoch = cookie_epoch(cookie_clock_ns(), COOKIE_EPOCH_NS)
    assert cached.run(player_udp(A2S_REQUEST + cookie_for(epoch=epoch - 1))).reason == "tx_a2s_cached"
    assert cached.run(player_udp(A2S_REQUEST + cookie_for(epoch=epoch - 2))).reason == "drop_bad_cookie"


@pytest.mark.parametrize("cookie", [b"\x00\x00\x00\x00", b"\xde\xad\xbe\xef"], ids=["zero", "random"])
def test_a_wrong_cookie_is_dropped(cached, cookie):
    assert cached.run(player_udp(A2S_REQUEST + cookie)).reason == "drop_bad_cookie"


def test_a_cookie_is_bound_to_the_clients_address_and_port(cached):
    stolen = cookie_for()  # issued to PLAYER:PLAYER_PORT
    assert cached.run(player_udp(A2S_REQUEST + stolen, src="203.0.113.6")).reason == "drop_bad_cookie"
    assert cached.run(player_udp(A2S_REQUEST + stolen, sport=PLAYER_PORT + 1)).reason == "drop_bad_cookie"


# ---- the fleet's cookie: wall-clock epochs, one key, rotated in generations ------------------------

NEXT_KEY = (0x1111111111111111, 0x2222222222222222)     # key generation N+1 (COOKIE_KEY is N)


def challenge_of(pop, **client):
    result = pop.run(player_udp(A2S_REQUEST, **client))
    assert (result.action, result.reason) == ("TX", "tx_a2s_challenge")
    return Ether(result.data)[UDP].load[5:9]


def issued_in_one_epoch(issue, epoch_ns=COOKIE_EPOCH_NS, clock=cookie_clock_ns):
    """(what issue() returned, its cookie epoch on `clock`), retried if the epoch turned while it ran."""
    for dummy in range(3):
        before = cookie_epoch(clock(), epoch_ns)
        value = issue()
        if cookie_epoch(clock(), epoch_ns) == before:
            return value, before
    pytest.fail("the cookie epoch kept turning under the test")


def test_the_challenge_is_the_wall_clock_epochs_cookie_not_the_uptimes(cached):
    """The epoch is UTC / cookie_epoch_ns: the same on every NTP-synced POP, whenever it
    booted. (The old program divided its monotonic clock - the time since this host booted - so
    POPs issued different cookies for the same client even with one key.)"""
    challenge, epoch = issued_in_one_epoch(lambda: challenge_of(cached))
    assert challenge == cookie_for(epoch=epoch)
    assert challenge != cookie_for(epoch=monotonic_ns() // COOKIE_EPOCH_NS)


def test_a_challenge_from_one_pop_is_answered_by_another(cached):
    """Two POPs of the fleet (two loaded copies of the program, the fleet's one key): a player whose
    route moves between the challenge and the request is answered by the second POP. One host has
    one monotonic clock, so "booted at another time" cannot be staged here; the test above pins
    that the cookie depends on wall-clock time only, which is what makes this hold across hosts."""
    other = cached.another_pop()
    try:
        setup_pop(other)
        other.set_a2s_cache(GAME_UDP_ID, A2S_INFO_REPLY, monotonic_ns())
        (from_first, from_second), epoch = issued_in_one_epoch(lambda: (challenge_of(cached), challenge_of(other)))
        assert from_first == from_second == cookie_for(epoch=epoch)
        assert other.run(player_udp(A2S_REQUEST + from_first)).reason == "tx_a2s_cached"
        assert cached.run(player_udp(A2S_REQUEST + from_second)).reason == "tx_a2s_cached"
        # A POP of another fleet (another key) issues other cookies and refuses these.
        setup_pop(other, cookie_key=NEXT_KEY)
        assert challenge_of(other) != challenge_of(cached)
        assert other.run(player_udp(A2S_REQUEST + from_first)).reason == "drop_bad_cookie"
    finally:
        other.stop()


CHRONY_TAI_OFFSET = 37 * SECOND       # chrony with leapsectz right/UTC; systemd-timesyncd leaves 0
DEFAULT_EPOCH_NS = 30 * SECOND        # edge_rules' default a2s_cookie_epoch_sec: shorter than the offset


def run_as_pop(pop, tai_ahead_ns, config_offset_ns):
    """Make `pop` compute its cookie epoch as a POP whose kernel CLOCK_TAI is UTC + tai_ahead_ns
    (its time daemon's TAI offset) and whose edge_config carries config_offset_ns.

    This host has one TAI clock, T = UTC + X (X: its own offset). The program uses nothing but
    T - cookie_tai_offset_ns, so a POP reading UTC + tai_ahead_ns with offset config_offset_ns
    computes exactly what this program computes with offset X - tai_ahead_ns + config_offset_ns.
    (Both sides of the equation are pinned elsewhere: test_the_tai_offset_is_taken_off_the_clock
    and the differential fuzz for the program, test_a2s_cookie for the host's X.)"""
    setup_pop(pop, cookie_epoch_ns=DEFAULT_EPOCH_NS,
              cookie_tai_offset_ns=tai_offset_ns() - tai_ahead_ns + config_offset_ns)
    pop.set_a2s_cache(GAME_UDP_ID, A2S_INFO_REPLY, monotonic_ns())


def test_the_tai_offset_is_taken_off_the_clock(cached):
    """The epoch is (CLOCK_TAI - cookie_tai_offset_ns) / epoch_ns: with 37 s more in the config
    the program issues the cookie of the epoch 37 s earlier, not of now."""
    setup_pop(cached, cookie_epoch_ns=DEFAULT_EPOCH_NS, cookie_tai_offset_ns=tai_offset_ns() + CHRONY_TAI_OFFSET)
    challenge, epoch = issued_in_one_epoch(lambda: challenge_of(cached), DEFAULT_EPOCH_NS,
                                           clock=lambda: cookie_clock_ns() - CHRONY_TAI_OFFSET)
    assert challenge == cookie_for(epoch=epoch)
    # 37 s back is one or two 30 s epochs back: never the cookie of now's epoch.
    assert challenge not in (cookie_for(epoch=epoch + 1), cookie_for(epoch=epoch + 2))


def test_a_chrony_pop_and_a_timesyncd_pop_accept_each_others_challenges(cached):
    """POP A runs systemd-timesyncd (TAI = UTC), POP B chrony (TAI = UTC + 37 s). Counting epochs
    in raw TAI (the config offset left 0, as before edge_rules wrote it), B is 37 s - one or two
    30 s epochs - ahead of A, so A refuses every challenge B issues: its epoch is A's next one or
    later. With each POP's own offset in its config, both count UTC epochs and each answers the
    other's challenge."""
    pop_a, pop_b = cached, cached.another_pop()
    try:
        # Before: the offset is not taken off (0 in both configs).
        run_as_pop(pop_a, tai_ahead_ns=0, config_offset_ns=0)
        run_as_pop(pop_b, tai_ahead_ns=CHRONY_TAI_OFFSET, config_offset_ns=0)
        (from_a, from_b), dummy = issued_in_one_epoch(lambda: (challenge_of(pop_a), challenge_of(pop_b)),
                                                      DEFAULT_EPOCH_NS)
        assert from_a != from_b
        assert pop_a.run(player_udp(A2S_REQUEST + from_b)).reason == "drop_bad_cookie"
        assert pop_b.run(player_udp(A2S_REQUEST + from_b)).reason == "tx_a2s_cached"   # B itself accepts it

        # After: each config carries its POP's offset, as edge_rules reads it there.
        run_as_pop(pop_a, tai_ahead_ns=0, config_offset_ns=0)
        run_as_pop(pop_b, tai_ahead_ns=CHRONY_TAI_OFFSET, config_offset_ns=CHRONY_TAI_OFFSET)
        (from_a, from_b), epoch = issued_in_one_epoch(lambda: (challenge_of(pop_a), challenge_of(pop_b)),
                                                      DEFAULT_EPOCH_NS)
        assert from_a == from_b == cookie_for(epoch=epoch)
        assert pop_a.run(player_udp(A2S_REQUEST + from_b)).reason == "tx_a2s_cached"
        assert pop_b.run(player_udp(A2S_REQUEST + from_a)).reason == "tx_a2s_cached"
    finally:
        pop_b.stop()


def test_a_challenge_is_answered_across_an_epoch_boundary_and_refused_one_epoch_later(pop):
    """Real time, one-second epochs: a challenge issued late in epoch E is still answered in E+1,
    refused in E+2."""
    epoch_ns = SECOND
    setup_pop(pop, cookie_epoch_ns=epoch_ns)
    pop.set_a2s_cache(GAME_UDP_ID, A2S_INFO_REPLY, monotonic_ns())

    def sleep_until(epoch, at_ns):
        """Sleep until `at_ns` into `epoch` of the cookie clock."""
        delay = epoch * epoch_ns + at_ns - cookie_clock_ns()
        if delay > 0:
            time.sleep(delay / 1e9)

    first = cookie_epoch(cookie_clock_ns(), epoch_ns)
    sleep_until(first + 1, 600 * 10**6)     # late in an epoch, well clear of both edges
    challenge, epoch = issued_in_one_epoch(lambda: challenge_of(pop), epoch_ns)
    sleep_until(epoch + 1, 200 * 10**6)
    assert challenge_of(pop) != challenge                     # the next epoch issues another cookie
    assert pop.run(player_udp(A2S_REQUEST + challenge)).reason == "tx_a2s_cached"
    sleep_until(epoch + 2, 200 * 10**6)
    assert pop.run(player_udp(A2S_REQUEST + challenge)).reason == "drop_bad_cookie"


def test_rotating_the_key_keeps_challenges_in_flight_until_the_old_generation_is_retired(cached):
    """Generation N issues a challenge; after rotating to N+1 (N kept as the previous generation)
    the echo is still answered and new challenges are N+1's; once N is retired, the same echo is
    refused."""
    issued_under_n, epoch = issued_in_one_epoch(lambda: challenge_of(cached))
    assert issued_under_n == cookie_for(epoch=epoch)
    assert cached.run(player_udp(A2S_REQUEST + issued_under_n)).reason == "tx_a2s_cached"

    setup_pop(cached, cookie_key=NEXT_KEY, cookie_key_previous=COOKIE_KEY)     # rotate: N+1 issues
    assert cached.run(player_udp(A2S_REQUEST + issued_under_n)).reason == "tx_a2s_cached"
    assert cached.run(player_udp(A2S_REQUEST + cookie_for(epoch=epoch - 1))).reason == "tx_a2s_cached"
    assert cached.run(player_udp(A2S_REQUEST + cookie_for(epoch=epoch - 2))).reason == "drop_bad_cookie"
    issued_under_n1, epoch = issued_in_one_epoch(lambda: challenge_of(cached))
    assert issued_under_n1 == cookie_for(epoch=epoch, key=NEXT_KEY) != cookie_for(epoch=epoch)
    assert cached.run(player_udp(A2S_REQUEST + issued_under_n1)).reason == "tx_a2s_cached"

    setup_pop(cached, cookie_key=NEXT_KEY)                                      # retire N
    assert cached.run(player_udp(A2S_REQUEST + issued_under_n)).reason == "drop_bad_cookie"
    assert cached.run(player_udp(A2S_REQUEST + issued_under_n1)).reason == "tx_a2s_cached"


def test_an_unset_previous_generation_is_not_the_all_zero_key(cached):
    """No previous generation (all zero) means none: a cookie made with the zero key - which an
    attacker can compute - is refused. With a real previous key in the slot, that key's cookie
    passes, and the zero key's still does not."""
    forged = cookie_for(key=(0, 0))
    assert cached.run(player_udp(A2S_REQUEST + forged)).reason == "drop_bad_cookie"
    setup_pop(cached, cookie_key_previous=NEXT_KEY)
    assert cached.run(player_udp(A2S_REQUEST + cookie_for(key=NEXT_KEY))).reason == "tx_a2s_cached"
    assert cached.run(player_udp(A2S_REQUEST + forged)).reason == "drop_bad_cookie"


def test_without_a_cache_entry_requests_go_to_the_game_server(pop):
    for payload in (A2S_REQUEST, A2S_REQUEST + b"\x01\x02\x03\x04"):
        result = pop.run(player_udp(payload))
        assert (result.action, result.reason) == ("TX", "tx_forward")
        assert Ether(result.data)[IP].dst == BACKEND


def test_a_stale_entry_is_not_served(pop):
    pop.set_a2s_cache(GAME_UDP_ID, A2S_INFO_REPLY, monotonic_ns() - (A2S_MAX_AGE_MS + 1000) * 10**6)
    assert pop.run(player_udp(A2S_REQUEST)).reason == "tx_forward"
    assert pop.run(player_udp(A2S_REQUEST + cookie_for())).reason == "tx_forward"


def test_other_queries_and_lookalikes_go_to_the_game_server(cached):
    """Only the INFO entry is cached here: an A2S_PLAYER request has nothing of its kind to be
    answered from, so it goes on even though the INFO entry is fresh."""
    for payload in (b"\xff\xff\xff\xffU\xff\xff\xff\xff", A2S_REQUEST[:-1] + b"X", A2S_REQUEST + b"\x00" * 8):
        assert cached.run(player_udp(payload)).reason == "tx_forward"


def test_services_without_the_cache_forward_requests(pop):
    pop.add_service("udp", GAME, GAME_PORT, GAME_UDP_ID, BACKEND)  # flags 0
    pop.set_a2s_cache(GAME_UDP_ID, A2S_INFO_REPLY, monotonic_ns())
    assert pop.run(player_udp(A2S_REQUEST)).reason == "tx_forward"


def test_spoofed_requests_never_get_more_bytes_than_they_sent(cached):
    """Amplification <= 1 for a sender that has not proven it owns its address."""
    sent = received = 0
    for source in ("192.0.2.%d" % i for i in range(1, 40)):
        for payload in (A2S_REQUEST, A2S_REQUEST + b"\x11\x22\x33\x44"):
            frame = player_udp(payload, src=source)
            result = cached.run(frame)
            sent += len(frame)
            if result.action in ("TX", "REDIRECT") and result.reason.startswith("tx_a2s"):
                received += len(result.data)
    assert 0 < received <= sent


# ---- A2S_PLAYER and A2S_RULES: their own cache entries, the same cookie in their challenge field -------

KINDS = ("player", "rules")
# A 12-player server and a short rules list: a few hundred bytes each, as real ones are.
REPLIES = {"player": a2s_player_reply(names=["player-%02d" % index for index in range(12)]),
           "rules": a2s_rules_reply(rules=[("mp_rule_%02d" % index, str(index)) for index in range(16)])}


@pytest.fixture
def all_cached(pop):
    """Fresh INFO, PLAYER and RULES entries, each its own reply."""
    now = monotonic_ns()
    pop.set_a2s_cache(GAME_UDP_ID, A2S_INFO_REPLY, now)
    for kind in KINDS:
        pop.set_a2s_cache(GAME_UDP_ID, REPLIES[kind], now, kind=kind)
    return pop


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("field", [None, 0], ids=["ff_ff_ff_ff", "zero"])
def test_a_player_or_rules_request_without_a_challenge_gets_this_pops_challenge(all_cached, kind, field):
    """FF FF FF FF (Valve's -1), or 0 from older clients, asks for a challenge: the POP answers with
    its cookie in 9 bytes - exactly the size of the 9-byte request, never more."""
    request = player_udp(a2s_field_request(kind, field))
    result = all_cached.run(request)
    assert (result.action, result.reason) == ("TX", "tx_a2s_challenge")
    assert_reply_to_player(result.data, b"\xff\xff\xff\xffA" + cookie_for())
    assert len(result.data) == len(request)


@pytest.mark.parametrize("kind", KINDS)
def test_a_player_or_rules_request_with_the_cookie_gets_its_own_cached_reply(all_cached, kind):
    """The exact bytes of that kind's entry (not the INFO reply), with valid checksums; the
    challenge an A2S_INFO request got is the same cookie and works here too."""
    challenge = challenge_of(all_cached)
    result = all_cached.run(player_udp(a2s_field_request(kind, int.from_bytes(challenge, "little"))))
    assert (result.action, result.reason) == ("TX", "tx_a2s_cached")
    assert_reply_to_player(result.data, REPLIES[kind])
    assert all_cached.service_counters(GAME_UDP_ID)[2] == 2  # the challenge and this reply, counted out


@pytest.mark.parametrize("kind", KINDS)
def test_the_previous_epochs_cookie_is_accepted_in_the_field_but_not_older(all_cached, kind):
    epoch = cookie_epoch(cookie_clock_ns(), COOKIE_EPOCH_NS)

    def field(cookie):
        return player_udp(a2s_field_request(kind, int.from_bytes(cookie, "little")))
    assert all_cached.run(field(cookie_for(epoch=epoch - 1))).reason == "tx_a2s_cached"
    assert all_cached.run(field(cookie_for(epoch=epoch - 2))).reason == "drop_bad_cookie"
    assert all_cached.run(field(cookie_for(src="203.0.113.6"))).reason == "drop_bad_cookie"   # someone else's


@pytest.mark.parametrize("kind", KINDS)
def test_a_wrong_cookie_is_dropped_while_fresh_and_forwarded_while_stale(pop, kind):
    """Fresh: a challenge the POP did not issue cannot be the game server's either (the POP issued
    the challenges while the entry was fresh): dropped. Stale: the POP challenges nobody, so the
    challenge is the game server's own: it goes to the game server, as does a request that asks."""
    wrong = player_udp(a2s_field_request(kind, 0xDEADBEEF))
    asks = player_udp(a2s_field_request(kind))
    pop.set_a2s_cache(GAME_UDP_ID, REPLIES[kind], monotonic_ns(), kind=kind)
    assert pop.run(wrong).reason == "drop_bad_cookie"
    pop.set_a2s_cache(GAME_UDP_ID, REPLIES[kind], monotonic_ns() - (A2S_MAX_AGE_MS + 1000) * 10**6, kind=kind)
    for frame in (wrong, asks, player_udp(a2s_field_request(kind, int.from_bytes(cookie_for(), "little")))):
        result = pop.run(frame)
        assert (result.action, result.reason) == ("TX", "tx_forward")
        assert Ether(result.data)[IP].dst == BACKEND


def test_each_kind_is_fresh_on_its_own(pop):
    """A fresh INFO entry does not make the POP answer A2S_PLAYER, nor a fresh PLAYER entry A2S_RULES:
    a kind with no fresh entry of its own goes to the game server."""
    pop.set_a2s_cache(GAME_UDP_ID, A2S_INFO_REPLY, monotonic_ns())
    pop.set_a2s_cache(GAME_UDP_ID, REPLIES["player"], monotonic_ns(), kind="player")
    cookie = int.from_bytes(cookie_for(), "little")
    assert pop.run(player_udp(a2s_field_request("player", cookie))).reason == "tx_a2s_cached"
    assert pop.run(player_udp(a2s_field_request("rules", cookie))).reason == "tx_forward"
    assert pop.run(player_udp(a2s_field_request("rules"))).reason == "tx_forward"
    pop.set_a2s_cache(GAME_UDP_ID, REPLIES["rules"], monotonic_ns(), kind="rules")
    assert pop.run(player_udp(a2s_field_request("rules", cookie))).reason == "tx_a2s_cached"


@pytest.mark.parametrize("kind", KINDS)
def test_requests_that_are_not_exactly_player_or_rules_go_to_the_game_server(all_cached, kind):
    """Shorter than the challenge field (5..8 bytes: nothing to echo, and a 9-byte challenge would be
    more than was sent), over-long (a valid cookie followed by more), or garbage with the header:
    never answered by the POP - they are the game server's to judge, like any other payload."""
    request = a2s_field_request(kind, int.from_bytes(cookie_for(), "little"))
    malformed = [request[:length] for length in range(5, 9)]
    malformed += [request + b"\x00", request + b"\xff" * 4, request * 2]
    malformed += [b"\xff\xff\xff\xffW" + request[5:], b"\xff\xff\xff\xfe" + request[4:],
                  b"\xff\xff\xff\xff\x00" + request[5:], b"\x00" + request[1:]]
    for payload in malformed:
        frame = player_udp(payload)
        result = all_cached.run(frame)
        assert (result.action, result.reason) == ("TX", "tx_forward"), payload
        assert Ether(result.data)[IP].dst == BACKEND


@pytest.mark.parametrize("kind, reply", [("info", A2S_INFO_REPLY), ("player", REPLIES["player"]),
                                         ("rules", REPLIES["rules"])], ids=["info", "player", "rules"])
def test_snooped_replies_fill_their_own_kinds_entry(pop, kind, reply):
    """The game server's own single-packet reply, forwarded to a player, is cached under its kind
    (and only that kind); another player's request of that kind is answered from it (the first
    player's flow is punched now: its packets go to the game server)."""
    before = monotonic_ns()
    result = pop.run(backend_reply(reply))
    assert (result.action, result.reason) == ("TX", "tx_return")
    updated_ns, payload, dummy = pop.a2s_cache(GAME_UDP_ID, kind)
    assert payload == reply and before <= updated_ns <= monotonic_ns()
    assert [other for other in ("info", "player", "rules") if pop.a2s_cache(GAME_UDP_ID, other)] == [kind]
    other_player = dict(src=PLAYER, sport=PLAYER_PORT + 1)
    if kind == "info":
        request = A2S_REQUEST + cookie_for(**other_player)
    else:
        request = a2s_field_request(kind, int.from_bytes(cookie_for(**other_player), "little"))
    answered = pop.run(player_udp(request, **other_player))
    assert (answered.action, answered.reason) == ("TX", "tx_a2s_cached")
    assert Ether(answered.data)[UDP].load == reply and checksums_valid(answered.data)


def test_split_replies_challenges_and_lookalikes_are_never_cached(pop):
    """A split reply (FE FF FF FF, header -2: a player or rules list too long for one packet) is forwarded but
    not cached - the POP answers with one packet - nor is the server's challenge, a reply over the
    cache's 1400 bytes, or another type."""
    too_big = a2s_player_reply(names=["p%03d-%s" % (index, "x" * 35) for index in range(28)])
    assert 1400 < len(too_big) <= 1500 - 28      # one packet on the player's path, too big for the cache
    for payload in (b"\xfe\xff\xff\xff\x01\x00\x00\x00\x02\x00" + a2s_player_reply()[4:],
                    b"\xfe\xff\xff\xff" + a2s_rules_reply()[4:],
                    b"\xff\xff\xff\xff\x41\x01\x02\x03\x04",
                    too_big,
                    b"\xff\xff\xff\xff\x46" + a2s_rules_reply()[5:],
                    b"\xff\xff\xff\x00\x44" + a2s_player_reply()[5:]):
        assert pop.run(backend_reply(payload)).reason == "tx_return"
    assert all(pop.a2s_cache(GAME_UDP_ID, kind) is None for kind in ("info", "player", "rules"))


@pytest.mark.parametrize("kind", KINDS)
def test_a_spoofed_return_never_fills_the_cache(pop, kind):
    """Replies in a backend's name from elsewhere (not a backend; another service's backend; an
    inner source that is not the service) are dropped and teach nothing; the honest reply does."""
    reply = REPLIES[kind]
    for frame in (backend_reply(reply, outer_src="192.0.2.66"), backend_reply(reply, outer_src=SIDE_BACKEND),
                  backend_reply(reply, inner_src="198.51.100.99")):
        result = pop.run(frame)
        assert (result.action, result.reason) == ("DROP", "drop_bad_return")
    assert pop.a2s_cache(GAME_UDP_ID, kind) is None
    assert pop.run(backend_reply(reply)).reason == "tx_return"
    assert pop.a2s_cache(GAME_UDP_ID, kind)[1] == reply


def test_a_spoofed_flood_of_player_and_rules_queries_never_gets_more_bytes_than_it_sent(all_cached):
    """Amplification <= 1 for senders that have not proven their address, request by request: asks,
    guessed and stolen cookies, short and over-long requests, from 40 spoofed sources. The cached
    replies are what an unprotected cache would have sent them - several times the request (shown
    first) - and a proven client still gets them."""
    cookie = int.from_bytes(cookie_for(), "little")         # PLAYER:PLAYER_PORT's, stolen
    for kind in KINDS:
        proven = all_cached.run(player_udp(a2s_field_request(kind, cookie)))
        assert proven.reason == "tx_a2s_cached" and len(proven.data) > 2 * len(player_udp(a2s_field_request(kind)))
    sent = received = answered = 0
    for index in range(1, 41):
        source = "192.0.2.%d" % index
        for kind in KINDS:
            for payload in (a2s_field_request(kind), a2s_field_request(kind, 0), a2s_field_request(kind, cookie),
                            a2s_field_request(kind, 0x01020304 * index), a2s_field_request(kind)[:6],
                            a2s_field_request(kind) + b"\x00" * 16):
                frame = player_udp(payload, src=source)
                result = all_cached.run(frame)
                sent += len(frame)
                if result.reason.startswith("tx_a2s"):
                    assert result.reason == "tx_a2s_challenge" and len(result.data) <= len(frame)
                    received += len(result.data)
                    answered += 1
    assert answered == 40 * 2 * 2 and 0 < received <= sent


def test_answers_are_counted_by_kind(all_cached):
    """edge_a2s_stats: per kind, the challenges sent, the cached answers and the bad-cookie drops
    (what the exporter shows as anycast_edge_a2s_answers_total{kind, answer}); forwarded requests
    are not answers and count nothing."""
    cookie = int.from_bytes(cookie_for(), "little")
    frames = {"info": [A2S_REQUEST, A2S_REQUEST + cookie_for(), A2S_REQUEST + cookie_for(), A2S_REQUEST + b"bad!"],
              "player": [a2s_field_request("player"), a2s_field_request("player", cookie),
                         a2s_field_request("player", 1), a2s_field_request("player", 2)],
              "rules": [a2s_field_request("rules", cookie), a2s_field_request("rules")[:6]]}
    for payloads in frames.values():
        for payload in payloads:
            all_cached.run(player_udp(payload))
    assert all_cached.a2s_counters("info") == (1, 2, 1)
    assert all_cached.a2s_counters("player") == (1, 1, 2)
    assert all_cached.a2s_counters("rules") == (0, 1, 0)
