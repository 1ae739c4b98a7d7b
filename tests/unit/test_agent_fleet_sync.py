"""The fleet sync's pure parts (agent/anycast_edge_agent/fleet_sync.py): the message format, the
cursor of what the bus already has, the import caps, reading XDP's entries, the verified slot
choice, and its configuration. The sync against real nats-servers and real maps:
tests/integration/test_agent_fleet_sync.py."""

from __future__ import annotations

import importlib
import json
import socket

import pytest

importlib.import_module("a2s_responder")  # puts agent/ on sys.path (see its docstring)

from anycast_edge_agent import config as agent_config  # noqa: E402  pylint: disable=wrong-import-position
from anycast_edge_agent import fleet_sync  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi  # noqa: E402  pylint: disable=wrong-import-position

NS = 10**9
PUNCH = abi.pack_punch_key("udp", "198.51.100.10", 27015, "203.0.113.5", 50000)
PLAYER = abi.ipv4("203.0.113.5")


def entries():
    return [fleet_sync.Entry("punch", PUNCH, 123 * NS, "pop1.ams"),
            fleet_sync.Entry("ban", PLAYER, 456 * NS, "pop2"),
            fleet_sync.Entry("verified", fleet_sync.VERIFIED_KEY.pack(PLAYER, 7), 789 * NS, "pop-3", proof=1)]


@pytest.mark.parametrize("entry", entries(), ids=lambda entry: entry.kind)
def test_an_entry_survives_the_bus(entry):
    subject = entry.subject()
    assert subject.startswith("anycast_edge.fleet.")
    assert fleet_sync.decode(subject, entry.payload()) == entry
    fleet_sync.check_origin(subject, entry)


def test_the_payload_is_readable_by_an_operator():
    body = json.loads(entries()[0].payload())
    assert body == {"v": 1, "origin": "pop1.ams", "kind": "punch", "expires_ns": 123 * NS, "proto": "udp",
                    "service": "198.51.100.10:27015", "remote": "203.0.113.5:50000"}
    assert entries()[0].subject() == "anycast_edge.fleet.pop1~ams.punch." + PUNCH.hex()


def test_a_dotted_pop_name_is_one_subject_token_and_junk_names_are_refused():
    assert fleet_sync.origin_token("pop1.ams.example.net") == "pop1~ams~example~net"
    for name in ("", "pop 1", "pop*", "pop>", ".pop"):
        with pytest.raises(ValueError):
            fleet_sync.origin_token(name)


def mutate(entry, **changes):
    body = json.loads(entry.payload())
    body.update(changes)
    return json.dumps(body).encode()


@pytest.mark.parametrize("subject_of, payload_of", [
    (lambda e: e.subject(), lambda e: b"not json"),
    (lambda e: e.subject(), lambda e: b"[1]"),
    (lambda e: e.subject(), lambda e: mutate(e, v=2)),
    (lambda e: e.subject(), lambda e: mutate(e, kind="ban")),
    (lambda e: e.subject(), lambda e: mutate(e, remote="203.0.113.6:50000")),   # not the subject's key
    (lambda e: e.subject(), lambda e: mutate(e, remote="203.0.113.5:70000")),
    (lambda e: e.subject(), lambda e: mutate(e, service="nowhere:1")),
    (lambda e: e.subject(), lambda e: mutate(e, proto="icmp")),
    (lambda e: e.subject(), lambda e: mutate(e, expires_ns="soon")),
    # Python's JSON writes and reads Infinity and NaN; int() of an infinity raised OverflowError.
    (lambda e: e.subject(), lambda e: mutate(e, expires_ns=float("inf"))),
    (lambda e: e.subject(), lambda e: mutate(e, expires_ns=float("-inf"))),
    (lambda e: e.subject(), lambda e: mutate(e, expires_ns=float("nan"))),
    (lambda e: e.subject(), lambda e: mutate(e, expires_ns=1.7e18)),
    (lambda e: e.subject(), lambda e: mutate(e, expires_ns=True)),
    (lambda e: e.subject(), lambda e: e.payload().replace(b'"expires_ns":%d' % e.expires_ns, b'"expires_ns":1e400')),
    (lambda e: "anycast_edge.fleet.pop1~ams.punch", lambda e: e.payload()),
    (lambda e: "other.fleet.pop1~ams.punch." + PUNCH.hex(), lambda e: e.payload()),
])
def test_malformed_messages_are_refused(subject_of, payload_of):
    entry = entries()[0]
    with pytest.raises(fleet_sync.Malformed):
        fleet_sync.decode(subject_of(entry), payload_of(entry))


def test_a_payload_naming_another_pop_than_its_subject_is_caught():
    entry = entries()[1]
    forged = fleet_sync.Entry("ban", PLAYER, entry.expires_ns, "pop1")
    with pytest.raises(fleet_sync.OriginMismatch):
        fleet_sync.check_origin(entry.subject(), fleet_sync.decode(entry.subject(), forged.payload()))


def test_the_cursor_publishes_news_and_moves_on_only_past_the_slack():
    cursor = fleet_sync.Cursor()
    idle = 120 * NS
    assert cursor.changes("punch", {PUNCH: 1000 * NS}, idle) == [(PUNCH, 1000 * NS)]
    assert cursor.changes("punch", {PUNCH: 1000 * NS}, idle) == []
    assert cursor.changes("punch", {PUNCH: 1029 * NS}, idle) == []         # under a quarter of the idle time
    assert cursor.changes("punch", {PUNCH: 1031 * NS}, idle) == [(PUNCH, 1031 * NS)]
    # An imported entry is known: its local copy is not published back.
    cursor.note("ban", PLAYER, 2000 * NS)
    assert cursor.changes("ban", {PLAYER: 2000 * NS + NS // 2}, 0) == []
    assert cursor.changes("ban", {PLAYER: 2100 * NS}, 0) == [(PLAYER, 2100 * NS)]   # banned again, longer
    cursor.forget_expired(2050 * NS)
    assert set(cursor.known) == {("ban", PLAYER)}


def test_the_import_rate_cap_is_a_token_bucket_per_origin():
    caps = fleet_sync.ImportCaps(rate_per_sec=10, burst=5, max_entries=100)
    start = 1000 * NS
    assert [caps.take_token("pop1", start) for dummy in range(7)] == [True] * 5 + [False] * 2
    assert caps.take_token("pop2", start)                                    # another origin: its own bucket
    assert caps.take_token("pop1", start + NS // 10)                         # a tenth of a second: one more
    assert not caps.take_token("pop1", start + NS // 10)
    assert sum(caps.take_token("pop1", start + 10 * NS) for dummy in range(10)) == 5   # never above the burst


def test_the_import_size_cap_counts_live_entries_per_origin():
    caps = fleet_sync.ImportCaps(rate_per_sec=10, burst=5, max_entries=2)
    now = 1000 * NS
    for index in range(2):
        assert caps.has_room("pop1", ("ban", bytes([index])), now)
        caps.admit("pop1", ("ban", bytes([index])), now + index * NS + NS)
    assert not caps.has_room("pop1", ("ban", b"\x09"), now)
    assert caps.has_room("pop1", ("ban", b"\x00"), now)                       # one it has: a renewal
    assert caps.has_room("pop2", ("ban", b"\x09"), now)
    assert caps.has_room("pop1", ("ban", b"\x09"), now + NS)                  # the first one expired


def test_an_entry_that_lives_on_here_past_its_imported_lifetime_keeps_its_place_under_the_cap():
    """An imported verification that its source's packets keep refreshing at this POP is still
    live here when its imported lifetime ends: it keeps counting, with the end it has now."""
    caps = fleet_sync.ImportCaps(rate_per_sec=10, burst=5, max_entries=2)
    now = 1000 * NS
    caps.admit("pop1", ("verified", b"a"), now + NS)
    caps.admit("pop1", ("verified", b"b"), now + NS)
    ends_here = {("verified", b"a"): now + 10 * NS, ("verified", b"b"): now + 10 * NS}   # their sources send
    asked = []

    def renewed(item):
        asked.append(item)
        return ends_here.get(item)

    assert not caps.has_room("pop1", ("verified", b"c"), now + 2 * NS, renewed=renewed)
    assert not caps.has_room("pop1", ("verified", b"c"), now + 3 * NS, renewed=renewed)
    assert sorted(asked) == [("verified", b"a"), ("verified", b"b")]          # each asked once, not per refusal
    assert not caps.has_room("pop1", ("verified", b"c"), now + 2 * NS)        # without asking: as before, ...
    del ends_here[("verified", b"b")]                                         # ... b's source stops sending
    assert caps.has_room("pop1", ("verified", b"c"), now + 10 * NS, renewed=renewed)
    assert caps.live["pop1"] == {}                                            # a stopped at 10 s too


def test_an_entry_admitted_again_counts_with_its_latest_expiry():
    caps = fleet_sync.ImportCaps(rate_per_sec=10, burst=5, max_entries=2)
    now = 1000 * NS
    caps.admit("pop1", ("punch", b"a"), now + NS)
    caps.admit("pop1", ("punch", b"b"), now + 2 * NS)
    caps.admit("pop1", ("punch", b"a"), now + 5 * NS)                          # renewed: lives longer
    assert not caps.has_room("pop1", ("punch", b"c"), now + NS)                # its first expiry is not its end
    assert caps.has_room("pop1", ("punch", b"c"), now + 2 * NS)                # b's is
    assert set(caps.live["pop1"]) == {("punch", b"a")}
    caps.admit("pop1", ("punch", b"c"), now + 3 * NS)
    caps.admit("pop1", ("punch", b"a"), now + 3 * NS)                          # renewed shorter
    assert caps.has_room("pop1", ("punch", b"d"), now + 3 * NS)
    assert not caps.live["pop1"]


def test_an_origin_refused_at_its_cap_never_makes_the_importer_walk_its_live_entries():
    """At its cap an origin is refused at its whole import rate: each refusal looks only at the
    entries that expired (a walk of the 50,000 live ones per refusal took 1.2 ms of the agent's CPU,
    more than a CPU at 1,000 refusals a second: bench/agent_fleet_import_cost.py)."""
    caps = fleet_sync.ImportCaps(rate_per_sec=10, burst=5, max_entries=50000)
    now = 1000 * NS
    for index in range(50000):
        caps.admit("pop1", ("punch", index.to_bytes(4, "little")), now + NS + index)
    walked = []

    class Live(dict):
        def items(self):
            walked.append(len(self))
            return super().items()

    caps.live["pop1"] = Live(caps.live["pop1"])
    assert not any(caps.has_room("pop1", ("punch", b"new" + bytes([index])), now) for index in range(100))
    assert caps.has_room("pop1", ("punch", b"new"), now + NS + 10)             # the first 11 expired
    assert len(caps.live["pop1"]) == 50000 - 11 and walked == []
    # Renewals leave stale pairs behind; their number stays bounded by the live entries.
    for round_ in range(3):
        for index in range(11, 50000):
            caps.admit("pop1", ("punch", index.to_bytes(4, "little")), now + 2 * NS + round_ + index)
    assert len(caps._expiries["pop1"]) <= 2 * len(caps.live["pop1"]) + 1024   # pylint: disable=protected-access


def source(ban_until=0, verified=()):
    return abi.SourceState(ban_until_ns=ban_until, packets=9, verified=list(verified)).pack()


def chunks(entries, per_chunk=2):
    """(key, value) pairs as BpfMap.lookup_batch_chunks returns them."""
    return [(len(entries[start:start + per_chunk]), b"".join(key for key, dummy in entries[start:start + per_chunk]),
             b"".join(value for dummy, value in entries[start:start + per_chunk]))
            for start in range(0, len(entries), per_chunk)]


def test_reading_bans_and_verified_slots_from_xdp_entries():
    now, offset, idle = 5000 * NS, 10**18, 600 * NS
    other = abi.ipv4("203.0.113.6")
    idle_one = abi.ipv4("203.0.113.7")
    entries = [(PLAYER, source(ban_until=now + 60 * NS, verified=[(7, 1, now - NS), (9, 3, now - 10 * NS)])),
               (other, source(ban_until=now - 1)),
               (idle_one, source(verified=[(0, 0, 0), (7, 2, now - idle)]))]
    bans, verified = fleet_sync.source_expiries(chunks(entries), now, offset, idle)
    assert bans == {PLAYER: now + 60 * NS + offset}
    assert verified == {fleet_sync.VERIFIED_KEY.pack(PLAYER, 7): (now - NS + idle + offset, 1),
                        fleet_sync.VERIFIED_KEY.pack(PLAYER, 9): (now - 10 * NS + idle + offset, 3)}
    # Only the sources XDP touched since the last scan are looked at (a packet, a verified slot).
    assert fleet_sync.source_expiries(chunks(entries), now, offset, idle, since_ns=now - 2 * NS)[1] == verified
    assert fleet_sync.source_expiries(chunks(entries), now, offset, idle, since_ns=now) == ({}, {})
    banned_now = abi.SourceState(ban_until_ns=now + 60 * NS, last_seen_ns=now).pack()
    assert fleet_sync.source_expiries(chunks([(other, banned_now)] + entries[1:]), now, offset, idle,
                                      since_ns=now - 2 * NS) == ({other: now + 60 * NS + offset}, {})


def test_punch_expiries_are_the_last_reply_plus_the_idle_time():
    other = abi.pack_punch_key("udp", "198.51.100.10", 27015, "203.0.113.5", 50001)
    entries = [(PUNCH, abi.PUNCH_VALUE.pack(50 * NS)), (other, abi.PUNCH_VALUE.pack(90 * NS))]
    assert fleet_sync.punch_expiries(chunks(entries, 1), 120 * NS, 7) == {PUNCH: 170 * NS + 7, other: 210 * NS + 7}
    assert fleet_sync.punch_expiries(chunks(entries), 120 * NS, 7, since_ns=60 * NS) == {other: 210 * NS + 7}


def test_an_imported_verification_takes_a_slot_as_xdp_would():
    now, idle = 5000 * NS, 600 * NS
    state = abi.SourceState(verified=[(7, 1, now - NS), (9, 1, now - 2 * NS)])
    assert not fleet_sync._verify_slot(state, 7, 3, now - 5 * NS, now, idle)   # already as recent
    assert fleet_sync._verify_slot(state, 7, 3, now, now, idle)
    assert state.verified[0] == (7, 3, now)
    assert fleet_sync._verify_slot(state, 11, 2, now, now, idle)             # the least recently active goes
    assert state.verified == [(7, 3, now), (11, 2, now)]
    expired = abi.SourceState(verified=[(7, 1, now), (9, 1, now - idle)])
    assert fleet_sync._verify_slot(expired, 11, 2, now, now, idle)
    assert expired.verified == [(7, 1, now), (11, 2, now)]


BASE = {"iface": "eth0", "tunnel_address": "10.0.0.1", "listen_address": "10.0.0.1"}


def test_fleet_sync_settings_are_checked_and_the_password_never_echoed():
    config = agent_config.parse(dict(BASE, fleet_sync={"servers": ["nats://10.0.0.1:4222"], "user": "pop1",
                                                       "password": "s3cret"}))
    assert config.fleet_sync.import_max_entries_per_pop == 50000
    assert "s3cret" not in repr(config)
    assert agent_config.parse(dict(BASE)).fleet_sync is None
    bad = [({"servers": []}, "fleet_sync.servers"),
           ({"servers": ["http://x:4222"]}, "fleet_sync.servers[0]"),
           ({"servers": ["nats://pop1:s3cret@x:4222"]}, "fleet_sync.servers[0]"),
           ({"servers": ["nats://x:4222"], "password": "s3cret"}, "fleet_sync.password"),
           ({"servers": ["nats://x:4222"], "import_rate_per_pop": 0}, "fleet_sync.import_rate_per_pop"),
           ({"servers": ["nats://x:4222"], "replicas": 7}, "fleet_sync.replicas"),
           ({"servers": ["nats://x:4222"], "stream": "a.b"}, "fleet_sync.stream"),
           ({"servers": ["nats://x:4222"], "kinds": ["cache"]}, "fleet_sync.kinds"),
           ({"servers": ["nats://x:4222"], "tls_cert_file": "/c.pem"}, "fleet_sync.tls_cert_file"),
           ({"servers": ["nats://x:4222"], "password_file": "/p"}, "fleet_sync.password"),
           ({"servers": ["nats://x:4222"], "user": "pop1", "password": "s3cret", "password_file": "/p"},
            "fleet_sync.password, fleet_sync.password_file: give one or the other"),
           ({"servers": ["nats://x:4222"], "colour": "red"}, "unknown settings: colour")]
    for settings, named in bad:
        with pytest.raises(agent_config.ConfigError) as caught:
            agent_config.parse(dict(BASE, fleet_sync=settings))
        assert named in str(caught.value)
        assert "s3cret" not in str(caught.value)


def test_the_password_file_is_read_at_each_login_from_the_credentials_directory(tmp_path, monkeypatch):
    """edge_agent gives the password as a systemd credential: "$CREDENTIALS_DIRECTORY/nats-password"."""
    settings = agent_config.parse(dict(BASE, fleet_sync={
        "servers": ["tls://10.0.0.1:4222"], "user": "pop1",
        "password_file": "$CREDENTIALS_DIRECTORY/nats-password"})).fleet_sync
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with pytest.raises(agent_config.ConfigError) as caught:
        fleet_sync.read_password(settings)
    assert str(caught.value) == "fleet_sync.password_file: cannot read %s/nats-password (No such file or directory)" \
        % tmp_path
    (tmp_path / "nats-password").write_text("")
    with pytest.raises(agent_config.ConfigError, match="is empty"):
        fleet_sync.read_password(settings)
    (tmp_path / "nats-password").write_text("s3cret-one\n")
    assert fleet_sync.read_password(settings) == "s3cret-one"
    (tmp_path / "nats-password").write_text("s3cret-two")     # a new password: the next login uses it
    sync = fleet_sync.FleetSync(settings, "pop1", None)
    assert sync._connect_options()["password"] == "s3cret-two"  # pylint: disable=protected-access
    assert "s3cret" not in repr(settings)


def test_an_address_in_a_message_is_dotted_quad():
    body = json.loads(entries()[1].payload())
    assert socket.inet_aton(body["address"]) == PLAYER
