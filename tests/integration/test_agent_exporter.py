"""The exporter's output, parsed back with prometheus_client's parser, matches the maps; the
Grafana dashboard and the alert rules name only metrics the exporter really exposes."""

from __future__ import annotations

import json
import os
import re
import threading
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent_world import IFACE, scenario_pop
from agent_world import world  # noqa: F401  pylint: disable=unused-import
from bpf.packets import a2s_field_request
from bpf.scenario import A2S_REQUEST, GAME, GAME_UDP_ID, PLAYER, cookie_for, player_tcp, player_udp
from anycast_edge_agent import config as agent_config
from anycast_edge_agent.exporter import EdgeCollector, serve
from anycast_edge_agent.maps import EdgeMaps
from anycast_edge_agent.refresher import ServiceWatch

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF and namespaces need root")
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pop(world):
    return scenario_pop(world)


def make_collector(world):
    config = agent_config.parse({
        "iface": IFACE, "pin_root": world.pin_root, "tunnel_address": "10.0.0.1", "listen_address": "10.0.0.1",
        "top_clients": 3,
        "services": [{"name": "cs2-main", "id": GAME_UDP_ID, "address": GAME, "protocol": "udp", "port": 27015,
                      "backend": "game1", "a2s_cache": True}]})
    edge_maps = EdgeMaps(world.pin_root, IFACE)
    watches = [ServiceWatch(service, config, edge_maps) for service in config.services]
    collector = EdgeCollector(edge_maps, config.top_clients, watches)
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


def scrape(registry) -> dict:
    """{(sample name, sorted labels): value} of one scrape, parsed back from the text format."""
    samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def traffic(pop):
    """Players of different weights, a denied source, a packet to no service, a TCP SYN."""
    for index, count in enumerate((30, 20, 10, 5)):
        for dummy in range(count):
            pop.edge.run(player_udp(b"x" * (10 + index), src="203.0.113.%d" % (10 + index)))
    pop.edge.deny("192.0.2.66/32")
    for dummy in range(4):
        pop.edge.run(player_udp(src="192.0.2.66"))
    pop.edge.run(player_udp(dport=1))
    pop.edge.run(player_tcp())


def test_counters_match_the_maps(pop):
    traffic(pop)
    samples = scrape(make_collector(pop))
    reasons = pop.edge.reason_counts()
    assert reasons["tx_forward"][0] == 66 and reasons["drop_deny"][0] == 4
    for index, reason in enumerate(abi.REASONS):
        verdict = reason.split("_")[0]
        packets, byte_count = reasons.get(reason, (0, 0))
        labels = (("reason", reason), ("verdict", verdict))
        assert samples[("anycast_edge_packets_total", labels)] == packets, reason
        assert samples[("anycast_edge_bytes_total", labels)] == byte_count, reason
    in_p, in_b, out_p, out_b = pop.edge.service_counters(GAME_UDP_ID)
    labels = (("direction", "in"), ("protocol", "udp"), ("service", "cs2-main"), ("service_id", str(GAME_UDP_ID)))
    assert samples[("anycast_edge_service_packets_total", labels)] == in_p == 65  # the 66th is the TCP SYN
    assert samples[("anycast_edge_service_bytes_total", labels)] == in_b
    assert samples[("anycast_edge_protocol_packets_total", (("direction", "in"), ("protocol", "tcp")))] == 1
    tracked = len(list(pop.edge.maps["edge_sources"].keys()))
    assert samples[("anycast_edge_clients_tracked", ())] == tracked
    # First scrape: totals since the start; the busiest three, in order.
    assert samples[("anycast_edge_top_client_packets", (("client", "203.0.113.10"), ("rank", "1")))] == 30
    assert samples[("anycast_edge_top_client_packets", (("client", "203.0.113.11"), ("rank", "2")))] == 20
    assert pop.edge.client_counters("203.0.113.10")[0] == 30


def test_top_players_are_ranked_by_traffic_since_the_previous_scrape(pop):
    registry = make_collector(pop)
    traffic(pop)
    scrape(registry)
    for dummy in range(7):
        pop.edge.run(player_udp(src="203.0.113.13"))  # the quiet one is the busiest now
    for dummy in range(2):
        pop.edge.run(player_udp(src=PLAYER))
    samples = scrape(registry)
    top = {labels: value for (name, labels), value in samples.items() if name == "anycast_edge_top_client_packets"}
    assert top == {(("client", "203.0.113.13"), ("rank", "1")): 7, (("client", PLAYER), ("rank", "2")): 2}


def test_bans_punches_and_cache_entries(pop):
    now = __import__("time").monotonic_ns()
    pop.edge.ban("192.0.2.1", now + 60 * 10**9)
    pop.edge.ban("192.0.2.2", now - 10**9)  # expired: not active
    pop.edge.punch("udp", GAME, 27015, PLAYER, 50000, now)
    pop.edge.set_a2s_cache(GAME_UDP_ID, b"\xff\xff\xff\xffI" + b"\x00" * 20, now - 2 * 10**9)
    pop.edge.set_a2s_cache(GAME_UDP_ID, b"\xff\xff\xff\xffD\x00", now - 7 * 10**9, kind="player")
    samples = scrape(make_collector(pop))
    assert samples[("anycast_edge_bans_active", ())] == 1
    assert samples[("anycast_edge_punches", ())] == 1
    assert samples[("anycast_edge_a2s_cache_entries", ())] == 2          # both kinds
    service = (("service", "cs2-main"), ("service_id", str(GAME_UDP_ID)))
    age = samples[("anycast_edge_a2s_cache_age_seconds", (("kind", "info"),) + service)]
    assert 2 <= age < 5
    assert 7 <= samples[("anycast_edge_a2s_cache_age_seconds", (("kind", "player"),) + service)] < 10
    assert ("anycast_edge_a2s_cache_age_seconds", (("kind", "rules"),) + service) not in samples
    assert samples[("anycast_edge_maps_readable", ())] == 1


def test_a2s_answers_by_kind(pop):
    """anycast_edge_a2s_answers_total{kind, answer}: what the POP answered per A2S kind, summed
    over CPUs from edge_a2s_stats; every kind and answer is exported, zeros included."""
    now = __import__("time").monotonic_ns()
    for kind in abi.A2S_KINDS:
        pop.edge.set_a2s_cache(GAME_UDP_ID, b"\xff\xff\xff\xff" + {"info": b"I", "player": b"D", "rules": b"E"}[kind]
                               + b"\x00" * 8, now, kind=kind)
    cookie = cookie_for()
    for payload in (A2S_REQUEST, A2S_REQUEST + cookie, a2s_field_request("player"),
                    a2s_field_request("player", int.from_bytes(cookie, "little")), a2s_field_request("player", 7),
                    a2s_field_request("rules", int.from_bytes(cookie, "little"))):
        pop.edge.run(player_udp(payload))
    samples = scrape(make_collector(pop))
    answers = {labels: value for (name, labels), value in samples.items() if name == "anycast_edge_a2s_answers_total"}
    expected = {("info", "challenge"): 1, ("info", "cached"): 1, ("info", "bad_cookie"): 0,
                ("player", "challenge"): 1, ("player", "cached"): 1, ("player", "bad_cookie"): 1,
                ("rules", "challenge"): 0, ("rules", "cached"): 1, ("rules", "bad_cookie"): 0}
    assert answers == {(("answer", answer), ("kind", kind)): count for (kind, answer), count in expected.items()}


def exposed_metric_names(pop) -> set:
    """Every sample name of a scrape of a POP with traffic and a cached A2S reply (families
    such as the cache age only have samples when there is something to report)."""
    traffic(pop)
    pop.edge.set_a2s_cache(GAME_UDP_ID, b"\xff\xff\xff\xffI" + b"\x00" * 20, __import__("time").monotonic_ns())
    names = set()
    for family in text_string_to_metric_families(generate_latest(make_collector(pop)).decode()):
        names.update(sample.name for sample in family.samples)
    return names


PROMQL_FUNCTIONS = {"sum", "rate", "irate", "increase", "by", "without", "topk", "avg", "max", "min", "on",
                    "ignoring", "group_left", "clamp_min", "count", "bool", "and", "or", "unless", "label_replace",
                    "sort_desc", "delta", "time", "vector", "absent", "offset", "group_right", "histogram_quantile"}


def metric_names_in(expression: str) -> set:
    """Metric names in a PromQL expression: identifiers not in label matchers, not functions or labels."""
    without_labels = re.sub(r"\{[^}]*\}", "", expression)
    without_labels = re.sub(r"(by|without|on|ignoring)\s*\([^)]*\)", "", without_labels)
    without_strings = re.sub(r'"[^"]*"', "", without_labels)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_ranges))
    return {word for word in words if word.startswith("anycast_edge_")} | {
        word for word in words - PROMQL_FUNCTIONS if not word.startswith("anycast_edge_") and word not in ("e",)
        and not word.startswith("$") and word.islower() and "_" in word}


def test_the_dashboard_names_only_exposed_metrics(pop):
    exposed = exposed_metric_names(pop)
    dashboard = json.loads((REPO_ROOT / "files" / "grafana" / "anycast-edge.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(expressions) >= 8
    for expression in expressions:
        unknown = metric_names_in(expression) - exposed
        assert not unknown, "dashboard query %r names metrics the exporter does not expose: %s" % (expression, unknown)


def test_the_alert_rules_name_only_exposed_metrics(pop):
    exposed = exposed_metric_names(pop)
    rules = yaml.safe_load((REPO_ROOT / "roles" / "edge_monitoring" / "files" / "anycast-edge-rules.yml").read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert expressions
    for expression in expressions:
        unknown = metric_names_in(expression) - exposed
        assert not unknown, "alert %r names metrics the exporter does not expose: %s" % (expression, unknown)


def test_a_burst_of_parallel_scrapes_walks_the_big_maps_once(pop):
    """Eight scrapers at once (Prometheus HA pair, other POPs' guards, an operator's top) cost one
    walk of the per-entry maps, not eight; the agent's own state stays live."""
    now = __import__("time").monotonic_ns()
    for index in range(200):
        pop.edge.ban("198.18.0.%d" % (index + 1), now + 60 * 10**9)
    traffic(pop)
    edge_maps = EdgeMaps(pop.pin_root, IFACE)
    collector = EdgeCollector(edge_maps, 3, clients_interval_sec=60, state_interval_sec=60)
    registry = CollectorRegistry()
    registry.register(collector)
    server, thread = serve(registry, "127.0.0.1", 0)
    url = "http://127.0.0.1:%d/metrics" % server.server_address[1]
    try:
        barrier = threading.Barrier(8)
        bodies = []

        def scrape_once():
            barrier.wait()
            with urllib.request.urlopen(url, timeout=10) as response:
                bodies.append(response.read().decode())

        scrapers = [threading.Thread(target=scrape_once) for dummy in range(8)]
        for scraper in scrapers:
            scraper.start()
        for scraper in scrapers:
            scraper.join()
        assert len(bodies) == 8
        assert (collector.state_cache.walks, collector.clients_cache.walks) == (1, 1)
        for body in bodies:
            assert "anycast_edge_bans_active 200.0" in body
        # Within the period, later scrapes reuse the walk too; the small counters stay live.
        pop.edge.run(player_udp(dport=1))
        samples = scrape(registry)
        assert collector.state_cache.walks == 1
        no_service = samples[("anycast_edge_packets_total", (("reason", "drop_no_service"), ("verdict", "drop")))]
        assert no_service == pop.edge.reason_counts()["drop_no_service"][0] == 2
    finally:
        server.shutdown()
        thread.join()


def test_a_cache_period_of_zero_walks_every_scrape_but_never_twice_for_one_burst(pop):
    collector = EdgeCollector(EdgeMaps(pop.pin_root, IFACE), 3)
    registry = CollectorRegistry()
    registry.register(collector)
    scrape(registry)
    scrape(registry)
    assert collector.state_cache.walks == 2
