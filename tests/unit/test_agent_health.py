"""Rise/fall, the POP's decision, the drain and fleet guards, and the configuration checks."""

from __future__ import annotations

import importlib

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


def serve_announced(value):
    registry = CollectorRegistry()
    Gauge("anycast_edge_announced", "test", registry=registry).set(value)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    return server, thread, "http://127.0.0.1:%d/metrics" % server.server_address[1]


def test_the_fleet_guard_counts_peers_that_announce():
    up_server, up_thread, up_url = serve_announced(1)
    down_server, down_thread, down_url = serve_announced(0)
    try:
        assert health.FleetGuard([up_url, down_url], 1).may_withdraw()[0]
        allowed, why = health.FleetGuard([up_url, down_url], 2).may_withdraw()
        assert not allowed and "only 1" in why
        allowed, why = health.FleetGuard([down_url, "http://127.0.0.1:1/metrics"], 1).may_withdraw()
        assert not allowed and "cannot read" in why  # unreadable peers never count as announcing
    finally:
        for server, thread in ((up_server, up_thread), (down_server, down_thread)):
            server.shutdown()
            thread.join()


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
])
def test_bad_configurations_name_the_setting(change, message):
    with pytest.raises(agent_config.ConfigError, match=message):
        agent_config.parse(dict(BASE, **change))
