"""The refresher against a game server that demands a challenge; what it caches and what not."""

from __future__ import annotations

import threading

import pytest

from a2s_responder import A2SResponder
from anycast_edge_agent import config as agent_config
from anycast_edge_agent import health, refresher


class RecordingCache:
    """Stands in for the pinned edge_a2s_cache map (root-only; tests/integration writes the real one)."""

    def __init__(self):
        self.writes = []

    def write_a2s_cache(self, service_id, payload, updated_ns=None):
        self.writes.append((service_id, payload, updated_ns))


def make_watch(server, **service_settings):
    settings = dict(name="cs2-main", id=17, address=server.address[0], protocol="udp", port=server.address[1],
                    backend="game1", a2s_cache=True, a2s_refresh_sec=0.2, a2s_max_age_sec=1)
    settings.update(service_settings)
    config = agent_config.parse({"iface": "eth1", "tunnel_address": "127.0.0.1", "listen_address": "127.0.0.1",
                                 "rise": 2, "fall": 2, "probe_timeout_sec": 0.3, "services": [settings]})
    cache = RecordingCache()
    return refresher.ServiceWatch(config.services[0], config, cache), cache


def test_a_refresh_completes_the_challenge_and_caches_the_whole_reply():
    with A2SResponder(demand_challenge=True) as server:
        watch, cache = make_watch(server)
        outcome = watch.probe_once()
    assert outcome.evidence == health.UP
    assert [(service_id, payload) for service_id, payload, dummy in cache.writes] == [(17, server.reply)]
    assert watch.challenges == 1 and watch.refreshes[refresher.REFRESHED] == 1
    assert server.requests == 2


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
    assert 5 <= len(cache.writes) <= 6
    assert server.challenged == len(cache.writes) and server.answered == len(cache.writes)
    times = [updated for dummy, dummy2, updated in cache.writes]
    assert times == sorted(times)


def test_a_split_reply_is_not_cached_but_counts_as_alive():
    with A2SResponder(split=True) as server:
        watch, cache = make_watch(server)
        outcome = watch.probe_once()
    assert outcome.evidence == health.UP and cache.writes == []
    assert watch.refreshes[refresher.SPLIT_NOT_CACHED] == 1


def test_a_reply_too_big_for_the_cache_is_not_cached():
    with A2SResponder(demand_challenge=False) as server:
        server.info["keywords"] = "k" * 1500
        watch, cache = make_watch(server)
        outcome = watch.probe_once()
    assert outcome.evidence == health.UP and cache.writes == []
    assert watch.refreshes[refresher.TOO_BIG_NOT_CACHED] == 1


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
    assert watch.refreshes[refresher.NO_REPLY] == 2


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
