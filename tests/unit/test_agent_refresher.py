"""The refresher against a game server that demands a challenge; what it caches and what not."""

from __future__ import annotations

import threading
import time

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi

from a2s_responder import A2SResponder
from anycast_edge_agent import config as agent_config
from anycast_edge_agent import health, refresher


class RecordingCache:
    """Stands in for the pinned edge_a2s_cache map (root-only; tests/integration writes the real one)."""

    def __init__(self):
        self.writes = []

    def write_a2s_cache(self, service_id, payload, updated_ns=None, kind="info"):
        self.writes.append((service_id, payload, updated_ns, kind))

    def of(self, kind):
        """(service id, payload, updated_ns) of the writes of one kind."""
        return [write[:3] for write in self.writes if write[3] == kind]


def make_watch(server, **service_settings):
    settings = dict(name="cs2-main", id=17, address=server.address[0], protocol="udp", port=server.address[1],
                    backend="game1", a2s_cache=True, a2s_refresh_sec=0.2, a2s_max_age_sec=1)
    settings.update(service_settings)
    config = agent_config.parse({"iface": "eth1", "tunnel_address": "127.0.0.1", "listen_address": "127.0.0.1",
                                 "rise": 2, "fall": 2, "probe_timeout_sec": 0.3, "services": [settings]})
    cache = RecordingCache()
    return refresher.ServiceWatch(config.services[0], config, cache), cache


def test_a_refresh_completes_the_challenge_and_caches_the_whole_reply_of_each_kind():
    with A2SResponder(demand_challenge=True) as server:
        watch, cache = make_watch(server)
        outcome = watch.probe_once()
    assert outcome.evidence == health.UP
    for kind in abi.A2S_KINDS:
        assert [(service_id, payload) for service_id, payload, dummy in cache.of(kind)] == [(17, server.reply_of(kind))]
        assert watch.refreshes[kind, refresher.REFRESHED] == 1
        assert (server.queries[kind, "request"], server.queries[kind, "challenged"]) == (2, 1)
    assert watch.challenges == 3 and server.requests == 2


def test_each_interval_sends_one_query_to_the_server_whatever_happens():
    """The game server sees one refresh (plus its challenge round) per interval, no more."""
    with A2SResponder(demand_challenge=True) as server:
        watch, cache = make_watch(server, a2s_refresh_sec=0.2, a2s_max_age_sec=1)
        stopping = threading.Event()
        thread = threading.Thread(target=watch.run, args=(stopping,))
        thread.start()
        stopping.wait(1.05)
        stopping.set()
        thread.join()
    rounds = len(cache.of("info"))
    assert 5 <= rounds <= 6
    for kind in abi.A2S_KINDS:
        assert len(cache.of(kind)) == rounds
        assert server.queries[kind, "challenged"] == rounds and server.queries[kind, "answered"] == rounds
        times = [updated for dummy, dummy2, updated in cache.of(kind)]
        assert times == sorted(times)


def test_a_split_reply_is_not_cached_but_counts_as_alive():
    with A2SResponder(split=True) as server:
        watch, cache = make_watch(server)
        outcome = watch.probe_once()
    assert outcome.evidence == health.UP and cache.of("info") == []
    assert watch.refreshes["info", refresher.SPLIT_NOT_CACHED] == 1
    assert len(cache.of("player")) == len(cache.of("rules")) == 1     # the other kinds are cached


@pytest.mark.parametrize("kind", ["player", "rules"])
def test_a_split_player_or_rules_list_is_not_cached_and_the_other_kinds_are(kind):
    """A long player or rules list comes split (FE FF FF FF): that kind is left to age out."""
    with A2SResponder(split=[kind]) as server:
        watch, cache = make_watch(server)
        assert watch.probe_once().evidence == health.UP
    assert cache.of(kind) == []
    assert watch.refreshes[kind, refresher.SPLIT_NOT_CACHED] == 1
    assert sorted(write[3] for write in cache.writes) == sorted(set(abi.A2S_KINDS) - {kind})


def test_a_server_that_knows_only_a2s_info_is_up_and_costs_one_timeout_per_refresh():
    """PLAYER and RULES unanswered (an old server, or one with them off): INFO is cached and health
    is UP; the other kinds count no_reply, and waiting for them takes one timeout for both (they
    are asked at once), not one each."""
    with A2SResponder(answer=["info"]) as server:
        watch, cache = make_watch(server)
        started = time.monotonic()
        outcome = watch.probe_once()
        elapsed = time.monotonic() - started
    assert outcome.evidence == health.UP and [write[3] for write in cache.writes] == ["info"]
    assert watch.refreshes["player", refresher.NO_REPLY] == watch.refreshes["rules", refresher.NO_REPLY] == 1
    assert watch.config.probe_timeout_sec <= elapsed < 2 * watch.config.probe_timeout_sec


def test_a_reply_too_big_for_the_cache_is_not_cached():
    with A2SResponder(demand_challenge=False) as server:
        server.info["keywords"] = "k" * 1500
        server.players = [("p%02d-%s" % (index, "x" * 40), index, 1.0) for index in range(31)]
        watch, cache = make_watch(server)
        outcome = watch.probe_once()
    assert outcome.evidence == health.UP and [write[3] for write in cache.writes] == ["rules"]
    assert watch.refreshes["info", refresher.TOO_BIG_NOT_CACHED] == 1
    assert watch.refreshes["player", refresher.TOO_BIG_NOT_CACHED] == 1


def test_a_stopped_server_goes_down_after_fall_probes_and_the_entry_is_left_to_expire():
    with A2SResponder(demand_challenge=True) as server:
        watch, cache = make_watch(server)
        for dummy in range(2):
            watch.probe_once()
        assert watch.health.state == health.UP
    writes = len(cache.writes)
    watch.probe_once()
    assert watch.health.state == health.UP  # one miss is not enough (fall = 2)
    watch.probe_once()
    assert watch.health.state == health.DOWN
    assert len(cache.writes) == writes  # nothing written: the XDP program stops serving it by age
    assert all(watch.refreshes[kind, refresher.NO_REPLY] == 2 for kind in abi.A2S_KINDS)


def test_a_probe_the_pop_cannot_make_is_unknown_and_keeps_the_state():
    with A2SResponder(demand_challenge=True) as server:
        watch, dummy = make_watch(server)
        watch.probe_once()
        watch.probe_once()
        assert watch.health.state == health.UP
        # The tunnel address is not on this host: bind() fails with EADDRNOTAVAIL.
        watch.config.tunnel_address = "192.0.2.1"
        for dummy in range(5):
            assert watch.probe_once().evidence == health.UNKNOWN
    assert watch.health.state == health.UP


@pytest.mark.parametrize("probe", ["tcp", "udp"])
def test_services_without_a2s_are_probed_by_tcp_or_udp(probe):
    import socket
    kind = socket.SOCK_STREAM if probe == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as listener:
        listener.bind(("127.0.0.1", 0))
        address = listener.getsockname()
        if probe == "tcp":
            listener.listen(4)
        else:
            def echo():
                data, client = listener.recvfrom(2048)
                listener.sendto(data, client)
            threading.Thread(target=echo, daemon=True).start()
        server = type("Server", (), {"address": address})
        watch, dummy = make_watch(server, protocol=probe, probe=probe, a2s_cache=False)
        assert watch.probe_once().evidence == health.UP
    # The socket is closed: TCP is refused, UDP gets ICMP port unreachable.
    assert watch.probe_once().evidence == health.DOWN
