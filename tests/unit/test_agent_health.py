"""Rise/fall, the POP's decision, the drain and fleet guards, and the configuration checks."""

from __future__ import annotations

import importlib
import time

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

importlib.import_module("a2s_responder")  # puts agent/ on sys.path (see its docstring)

from anycast_edge_agent import config as agent_config  # noqa: E402  pylint: disable=wrong-import-position
from anycast_edge_agent import health  # noqa: E402  pylint: disable=wrong-import-position
from anycast_edge_agent.health import DOWN, UNKNOWN, UP  # noqa: E402  pylint: disable=wrong-import-position


def test_rise_and_fall_need_consecutive_evidence():
    state = health.RiseFall(rise=2, fall=3)
    assert state.state == UNKNOWN
    assert not state.feed(UP) and state.feed(UP) and state.state == UP
    for evidence in (DOWN, DOWN, UP, DOWN, DOWN):  # an UP in between restarts the count
        assert not state.feed(evidence)
    assert state.feed(DOWN) and state.state == DOWN


def test_unknown_evidence_changes_nothing_not_even_the_streak():
    state = health.RiseFall(rise=1, fall=2, state=UP)
    state.feed(DOWN)
    for dummy in range(10):
        assert not state.feed(UNKNOWN)
    assert state.state == UP
    assert state.feed(DOWN) and state.state == DOWN


@pytest.mark.parametrize("dataplane, services, wanted", [
    (UP, {"a": UP, "b": DOWN}, health.ANNOUNCE),
    (UP, {"a": DOWN, "b": DOWN}, health.WITHDRAW),          # no backend reachable
    (DOWN, {"a": UP}, health.WITHDRAW),                      # program not attached
    (UP, {"a": DOWN, "b": UNKNOWN}, None),                   # cannot tell about b: keep
    (UNKNOWN, {"a": UP}, None),                              # cannot tell about the program: keep
    (UP, {"a": UNKNOWN}, None),
    (UP, {}, None),                                          # nothing to judge by
])
def test_decide(dataplane, services, wanted):
    assert health.decide(dataplane, services) == wanted


def test_a_drain_by_an_operator_is_never_undone(tmp_path):
    state_file = tmp_path / "bird_drain_state"
    assert not health.drained(str(state_file))
    for text, is_drained in (("gshut\n", True), ("withdrawn\n", True), ("announced\n", False)):
        state_file.write_text(text)
        assert health.drained(str(state_file)) is is_drained


def serve_announced(value, pop="", intent=0):
    registry = CollectorRegistry()
    Gauge("anycast_edge_announced", "test", registry=registry).set(value)
    if pop:
        Gauge("anycast_edge_withdraw_intent", "test", ["pop"], registry=registry).labels(pop).set(intent)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    return server, thread, "http://127.0.0.1:%d/metrics" % server.server_address[1]


def quick_guard(peers, minimum, name="pop-m"):
    return health.FleetGuard(peers, minimum, timeout=0.2, name=name, settle_sec=0.5, jitter_sec=0.01)


@pytest.fixture
def exporters():
    started = []

    def start(*args, **kwargs):
        server, thread, url = serve_announced(*args, **kwargs)
        started.append((server, thread))
        return url

    yield start
    for server, thread in started:
        server.shutdown()
        thread.join()


def test_the_fleet_guard_counts_peers_that_announce(exporters):
    up_url, down_url = exporters(1), exporters(0)
    assert quick_guard([up_url, down_url], 1).may_withdraw()[0]
    allowed, why = quick_guard([up_url, down_url], 2).may_withdraw()
    assert not allowed and "only 1" in why
    allowed, why = quick_guard([down_url, "http://127.0.0.1:1/metrics"], 1).may_withdraw()
    assert not allowed and "cannot read" in why  # unreadable peers never count as announcing


def test_a_peer_deciding_too_goes_first_when_its_name_sorts_first(exporters):
    """The tie-break: both intents published; the lower name goes, the higher one defers."""
    lower = exporters(1, pop="pop-a", intent=1)
    higher = exporters(1, pop="pop-z", intent=1)
    allowed, why = quick_guard([lower], 1, name="pop-m").may_withdraw()
    assert not allowed and "pop-a decide(s) too and go(es) first" in why
    # The same peers without intents: pop-m may go.
    assert quick_guard([exporters(1, pop="pop-a")], 1, name="pop-m").may_withdraw()[0]
    # A higher-named peer that decides too defers to pop-m: it still counts as announcing.
    assert quick_guard([higher], 1, name="pop-m").may_withdraw()[0]


def test_the_intent_is_published_during_the_settle_time_and_cleared_after():
    guard = quick_guard(["http://127.0.0.1:1/metrics"], 1)
    seen = []
    original = guard.read_peers

    def reading():
        seen.append(guard.intent)
        return original()

    guard.read_peers = reading
    assert not guard.may_withdraw()[0]
    assert seen == [True] and guard.intent is False


def test_answers_older_than_half_the_settle_time_are_not_acted_on(exporters):
    guard = quick_guard([exporters(1)], 1)
    original = guard.read_peers

    def slow_read():
        time.sleep(0.3)  # settle 0.5 s: anything read over more than 0.25 s may be stale
        return original()

    guard.read_peers = slow_read
    allowed, why = guard.may_withdraw()
    assert not allowed and "too old to act on" in why


BASE = {"iface": "eth1", "tunnel_address": "10.0.0.1", "listen_address": "192.0.2.10",
        "anycast_prefixes": ["198.51.100.0/24"]}
SERVICE = {"name": "cs2", "id": 17, "address": "198.51.100.10", "protocol": "udp", "port": 27015,
           "a2s_cache": True}


def test_a_good_configuration_parses_with_defaults():
    config = agent_config.parse(dict(BASE, services=[SERVICE]))
    assert (config.listen_port, config.rise, config.fall, config.bird_protocol) == (9591, 2, 3, "anycast_edge_announce")
    assert config.services[0].probe_target == ("198.51.100.10", 27015)


@pytest.mark.parametrize("change, message", [
    ({"listen_address": "198.51.100.7"}, "inside an anycast prefix"),
    ({"rise": 0}, "rise: must be > 0"),
    ({"tunnel_address": "pop1"}, "tunnel_address"),
    ({"bogus": 1}, "unknown settings: bogus"),
    ({"services": [dict(SERVICE, protocol="tcp")]}, "only for udp"),
    ({"services": [dict(SERVICE, a2s_max_age_sec=1, a2s_refresh_sec=5)]}, "a2s_max_age_sec"),
    ({"services": [SERVICE, dict(SERVICE, name="b")]}, "unique"),
    ({"services": [dict(SERVICE, id=1024)]}, "1..1023"),
    ({"fleet_timeout_sec": 2, "fleet_settle_sec": 3}, "fleet_timeout_sec: 2.0 must be under half of fleet_settle_sec"),
    ({"tls_cert_file": "/etc/a.pem"}, "tls_cert_file, tls_key_file: give both"),
    ({"tls_client_auth": True, "tls_cert_file": "/a", "tls_key_file": "/b"}, "tls_client_auth: needs"),
    ({"tls_cert_file": "/a", "tls_key_file": "/b", "fleet_peers": ["http://192.0.2.2:9591/metrics"]},
     "fleet_peers: the exporters serve TLS"),
])
def test_bad_configurations_name_the_setting(change, message):
    with pytest.raises(agent_config.ConfigError, match=message):
        agent_config.parse(dict(BASE, **change))
