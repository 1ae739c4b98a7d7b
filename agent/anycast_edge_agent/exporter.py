"""Prometheus exporter: the data plane's counters, read from the pinned maps on every scrape.

A custom collector (no background polling): a scrape opens the pins, reads the per-CPU maps
with batch lookups, sums the CPUs and yields the families below. Counters are the kernel's own
running totals, so they survive agent restarts; they reset only when the program's maps are
recreated (an upgrade that changes a layout), which Prometheus' rate() handles like a restart.

Top players are by *recent* traffic: the packets and bytes each source sent since the previous
scrape (the difference of two readings of the per-source map), so a player who was busy an
hour ago does not stay on top. The first scrape after a start has no previous reading and
reports the totals instead.

The per-entry maps (the per-source entries with their counters and bans: up to 524,288; the
port punches: up to 262,144) are walked at most once per their cache period, whatever the number of scrapes: scrapes in
between, and scrapes that arrive while a walk is under way, reuse its result (``WalkCache``).
The small array maps (verdict reasons, services) and the agent's own state are read live.

Cost: see bench/agent_exporter_cost.py (100,000 tracked players, some of them banned, a full punch map).

``serve`` is the HTTP(S) server: prometheus_client's WSGI app in a threading server of our own,
so TLS (and client certificates) work with Debian 12's python3-prometheus-client 0.16, whose
``start_http_server`` has no TLS, and the TLS handshake happens in the connection's thread, not
in the accepting one (a client that never finishes its handshake cannot stall the others).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import operator
import socket
import socketserver
import struct
import sys
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ansible_collections.anycast.edge.plugins.module_utils import _bpf
from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _payload_rules

from . import health, refresher
from .maps import PinError

LOG = logging.getLogger(__name__)

PREFIX = "anycast_edge_"
PROTOCOL_NAMES = {number: name for name, number in abi.IPPROTO.items()}
STATS_MAPS = ("edge_reason_stats", "edge_service_stats", "edge_sources", "edge_services",
              "edge_punches", "edge_a2s_cache")
# The flood defence's maps, opened apart: a program that does not read them (older than them)
# still has the rest of its counters exported.
FLOOD_MAPS = ("edge_admission", "edge_attack_state", "edge_verify_stats")
# The A2S answers by kind, opened apart for the same reason.
A2S_STATS_MAP = "edge_a2s_stats"
# struct a2s_counter's fields: the answer label of anycast_edge_a2s_answers_total.
A2S_ANSWERS = ("challenge", "cached", "bad_cookie")
# The payload rules' maps (the list, the bank switch, the hit counters), opened apart for the same reason.
PAYLOAD_RULE_MAPS = (_payload_rules.RULES_MAP, _payload_rules.BANK_MAP, _payload_rules.HITS_MAP)
# struct admission_bucket's counters (after refilled_ns, packet_tokens, byte_tokens): metric name,
# help. The unverified traffic is what attack mode watches; verified players are never charged.
ADMISSION_COUNTERS = (
    ("unverified_packets", "Packets to the service from sources not verified for it (under attack or not)"),
    ("unverified_bytes", "Bytes to the service from sources not verified for it (under attack or not)"),
    ("admitted_packets", "Unverified packets passed within the admission budget while the service was under attack"),
    ("unverified_dropped_packets", "Unverified packets dropped while the service was under attack (drop_unverified)"),
    ("verified_packets", "Packets to the service from verified sources (never charged to the budget)"),
)
# Per-source values are read in big batches: fewer syscalls per scrape.
CLIENT_BATCH = 16384


def verdict_of(reason: str) -> str:
    return reason.split("_", 1)[0]  # pass / drop / tx


def read_sources(bpf_map):
    """(keys, packets, bytes, ban ends) of every source in edge_sources (one entry per source,
    not per CPU), read as strided slices of one memoryview rather than unpacked entry by entry."""
    entries = bpf_map.lookup_batch(chunk_size=CLIENT_BATCH)
    keys = [key for key, dummy in entries]
    if not entries:
        return keys, [], [], []
    words = memoryview(b"".join(value for dummy, value in entries)).cast("Q")
    stride, word = abi.SOURCE_WORDS, abi.SOURCE_WORD
    return (keys, list(words[word["packets"]::stride]), list(words[word["bytes"]::stride]),
            list(words[word["ban_until_ns"]::stride]))


class TopTalkers:
    """Keeps the previous reading of the per-client counters to rank by recent traffic."""

    def __init__(self):
        self.previous_packets = {}
        self.previous_bytes = {}
        self.lock = threading.Lock()

    def update(self, keys, packets, byte_counts, top):
        """Top ``top`` clients by packets and by bytes since the previous call:
        ([(address, packets)], [(address, bytes)]).

        Vectorised with map() over C-level callables: with 100,000 clients a Python-level loop
        here costs more than reading the map. A client the LRU evicted and re-created since the
        previous reading has a counter below its old one: its difference is negative for that one
        interval, so it is not ranked then (it is counted in full from the next scrape on).
        """
        with self.lock:
            zeros = itertools.repeat(0)
            delta_p = list(map(operator.sub, packets, map(self.previous_packets.get, keys, zeros)))
            delta_b = list(map(operator.sub, byte_counts, map(self.previous_bytes.get, keys, zeros)))
            self.previous_packets = dict(zip(keys, packets))
            self.previous_bytes = dict(zip(keys, byte_counts))
        best_p = heapq.nlargest(top, zip(delta_p, keys)) if top > 0 else []
        best_b = heapq.nlargest(top, zip(delta_b, keys)) if top > 0 else []
        return ([(socket.inet_ntoa(key), delta) for delta, key in best_p if delta > 0],
                [(socket.inet_ntoa(key), delta) for delta, key in best_b if delta > 0])


class WalkCache:
    """The result of an expensive map walk, recomputed at most once per ``period_sec``.

    Concurrent callers wait for the walk under way and share it: a burst of N scrapes costs one
    walk, not N. ``walks`` counts the walks (the exporter's own metric and the tests read it).
    """

    def __init__(self, period_sec: float):
        self.period_sec = period_sec
        self.walks = 0
        self._lock = threading.Lock()
        self._done_at = None
        self._value = None

    def get(self, walk):
        asked_at = time.monotonic()
        with self._lock:
            # A walk that finished after this caller asked is as fresh as one it would make.
            fresh = self._done_at is not None and (
                self._done_at >= asked_at or time.monotonic() - self._done_at < self.period_sec)
            if not fresh:
                self._value = walk()
                self.walks += 1
                self._done_at = time.monotonic()
            return self._value


def _state_value(state):
    return {health.UP: 1.0, health.DOWN: 0.0}.get(state, math.nan)


class EdgeCollector:
    """prometheus_client collector of one POP: the maps of ``edge_maps`` and the agent's state."""

    def __init__(self, edge_maps, top_clients=10, watches=(), agent=None, clients_interval_sec=0.0,
                 state_interval_sec=0.0, attack=None):
        self.edge_maps = edge_maps
        # The attack-mode controller (attack.AttackController) whose transitions are exported.
        self.attack = attack
        self.top_clients = top_clients
        # Reading 100,000 per-source entries (counters and bans), or a full punch map, is most of a
        # scrape's cost (bench/agent_exporter_cost.py): those families are recomputed at most once
        # per interval and reused in between, so the other counters can be scraped every second
        # at a fraction of the cost, and parallel scrapes cannot multiply it.
        self.clients_cache = WalkCache(clients_interval_sec)
        self.state_cache = WalkCache(state_interval_sec)
        self.watches = list(watches)
        self.agent = agent
        self.top_talkers = TopTalkers()
        self.read_errors = 0
        # What kept each optional family from being exported at the last scrape (_open_optional_maps).
        self.optional_maps_errors = {}

    def describe(self):
        return []  # collect() reads the kernel: never at registration time

    def collect(self):
        started = time.monotonic()
        readable = GaugeMetricFamily(PREFIX + "maps_readable",
                                     "1 if the XDP program's pinned maps could be read at this scrape")
        try:
            families = list(self._collect_maps())
            readable.add_metric([], 1)
        except Exception as exc:  # pylint: disable=broad-except
            # No pins (program not deployed), permission: say so, keep exporting the agent's side.
            LOG.error("cannot read the data plane's maps: %s", exc)
            self.read_errors += 1
            families = []
            readable.add_metric([], 0)
        yield from families
        yield readable
        errors = CounterMetricFamily(PREFIX + "map_read_errors", "Scrapes that could not read the maps")
        errors.add_metric([], self.read_errors)
        yield errors
        yield from self._collect_agent()
        duration = GaugeMetricFamily(PREFIX + "scrape_duration_seconds", "Time this scrape took to read the maps")
        duration.add_metric([], time.monotonic() - started)
        yield duration

    # ---- the data plane -------------------------------------------------------------------

    def _collect_maps(self):
        with self.edge_maps.open(*STATS_MAPS) as maps:
            services = self._services(maps["edge_services"])
            yield from self._reasons(maps["edge_reason_stats"])
            yield from self._service_counters(maps["edge_service_stats"], services)
            yield from self.clients_cache.get(lambda: list(self._sources(maps["edge_sources"])))
            yield from self.state_cache.get(lambda: list(self._state_maps(maps, services)))
            yield from self._flood_defence(services)
            yield from self._a2s_answers()
            yield from self._payload_rules()

    @staticmethod
    def _services(services_map):
        """{service id: (name-ish label, protocol, attack mode)} from edge_services."""
        by_id = {}
        for key, value in services_map.lookup_batch():
            address, port, proto = abi.SERVICE_KEY.unpack(key)
            fields = abi.SERVICE_VALUE.unpack(value)
            attack_mode = fields[9]
            by_id[fields[0]] = ("%s:%d" % (socket.inet_ntoa(address), struct.unpack("!H", port)[0]),
                                PROTOCOL_NAMES.get(proto, str(proto)),
                                abi.ATTACK_MODES[attack_mode] if attack_mode < len(abi.ATTACK_MODES) else str(attack_mode))
        return by_id

    def _reasons(self, reason_map):
        packets = CounterMetricFamily(PREFIX + "packets", "Packets seen by the XDP program, by verdict reason",
                                      labels=["reason", "verdict"])
        byte_family = CounterMetricFamily(PREFIX + "bytes", "Bytes (frames) seen by the XDP program, by verdict reason",
                                          labels=["reason", "verdict"])
        hits = challenges = 0
        entries = reason_map.lookup_batch()
        totals = reason_map.sum_percpu([value for dummy, value in entries], 2)
        for (key, dummy), count, size in zip(entries, totals[0], totals[1]):
            index = abi.U32.unpack(key)[0]
            if index < len(abi.REASONS):
                reason = abi.REASONS[index]
                packets.add_metric([reason, verdict_of(reason)], count)
                byte_family.add_metric([reason, verdict_of(reason)], size)
                if reason == "tx_a2s_cached":
                    hits = count
                elif reason == "tx_a2s_challenge":
                    challenges = count
        yield packets
        yield byte_family
        hits_family = CounterMetricFamily(PREFIX + "a2s_cache_hits", "A2S requests (info, player, rules) answered from the cache")
        hits_family.add_metric([], hits)
        yield hits_family
        challenge_family = CounterMetricFamily(PREFIX + "a2s_challenges_sent",
                                               "A2S requests (info, player, rules) answered with this POP's challenge")
        challenge_family.add_metric([], challenges)
        yield challenge_family

    def _service_counters(self, stats_map, services):
        names = {watch.service.id: watch.service.name for watch in self.watches}
        packets = CounterMetricFamily(PREFIX + "service_packets", "Packets per service: in from players, out to players",
                                      labels=["service", "service_id", "protocol", "direction"])
        byte_family = CounterMetricFamily(PREFIX + "service_bytes", "Bytes per service: in from players, out to players",
                                          labels=["service", "service_id", "protocol", "direction"])
        proto_packets = CounterMetricFamily(PREFIX + "protocol_packets", "Packets of all services of a protocol",
                                            labels=["protocol", "direction"])
        proto_bytes = CounterMetricFamily(PREFIX + "protocol_bytes", "Bytes of all services of a protocol",
                                          labels=["protocol", "direction"])
        by_protocol = {}
        entries = stats_map.lookup_batch()
        columns = stats_map.sum_percpu([value for dummy, value in entries], 4)
        for row, (key, dummy) in enumerate(entries):
            service_id = abi.U32.unpack(key)[0]
            in_p, in_b, out_p, out_b = (column[row] for column in columns)
            if service_id not in services and not (in_p or out_p):
                continue  # an id never used (the array has 1024 slots)
            label, protocol = services.get(service_id, ("", "unknown", ""))[:2]
            name = names.get(service_id, label or str(service_id))
            for direction, count, size in (("in", in_p, in_b), ("out", out_p, out_b)):
                packets.add_metric([name, str(service_id), protocol, direction], count)
                byte_family.add_metric([name, str(service_id), protocol, direction], size)
                sums = by_protocol.setdefault((protocol, direction), [0, 0])
                sums[0] += count
                sums[1] += size
        for (protocol, direction), (count, size) in sorted(by_protocol.items()):
            proto_packets.add_metric([protocol, direction], count)
            proto_bytes.add_metric([protocol, direction], size)
        yield from (packets, byte_family, proto_packets, proto_bytes)

    def _sources(self, sources_map):
        """Top talkers and active bans: one walk of edge_sources (the ban is in the source's entry)."""
        now = time.monotonic_ns()
        keys, packets, byte_counts, ban_ends = read_sources(sources_map)
        tracked = GaugeMetricFamily(PREFIX + "clients_tracked", "Source addresses in the per-source LRU map")
        tracked.add_metric([], len(keys))
        yield tracked
        ban_family = GaugeMetricFamily(PREFIX + "bans_active", "Sources banned now (rate limit exceeded)")
        ban_family.add_metric([], sum(1 for until in ban_ends if until > now))
        yield ban_family
        by_packets, by_bytes = self.top_talkers.update(keys, packets, byte_counts, self.top_clients)
        top_p = GaugeMetricFamily(PREFIX + "top_client_packets",
                                  "Busiest players by packets since the previous scrape", labels=["rank", "client"])
        for rank, (address, count) in enumerate(by_packets, 1):
            top_p.add_metric([str(rank), address], count)
        top_b = GaugeMetricFamily(PREFIX + "top_client_bytes",
                                  "Busiest players by bytes since the previous scrape", labels=["rank", "client"])
        for rank, (address, count) in enumerate(by_bytes, 1):
            top_b.add_metric([str(rank), address], count)
        yield top_p
        yield top_b

    def _state_maps(self, maps, services):
        now = time.monotonic_ns()
        punch_family = GaugeMetricFamily(PREFIX + "punches", "Port punches in the map (idle ones included until met)")
        punch_family.add_metric([], len(maps["edge_punches"].lookup_batch()))
        yield punch_family
        names = {watch.service.id: watch.service.name for watch in self.watches}
        entries = GaugeMetricFamily(PREFIX + "a2s_cache_entries",
                                    "Cached A2S replies, all kinds (one per service and kind: info, player, rules; "
                                    "a2s_cache_age_seconds has them by kind)")
        age = GaugeMetricFamily(PREFIX + "a2s_cache_age_seconds", "Age of each service's cached A2S reply, by kind",
                                labels=["service", "service_id", "kind"])
        count = 0
        for service_id in sorted(set(services) | set(names)):
            for kind in abi.A2S_KINDS:
                raw = maps["edge_a2s_cache"].lookup(abi.pack_a2s_cache_key(service_id, kind))
                if raw is None:
                    continue
                count += 1
                updated_ns = abi.A2S_CACHE_ENTRY.unpack_from(raw)[0]
                age.add_metric([names.get(service_id, services.get(service_id, ("",))[0]), str(service_id), kind],
                               max(0, now - updated_ns) / 1e9)
        entries.add_metric([], count)
        yield entries
        yield age

    def _a2s_answers(self):
        """A2S requests answered (or dropped for a bad cookie) by kind and answer. Nothing (said
        once in the log) when the program has no edge_a2s_stats."""
        maps = self._open_optional_maps((A2S_STATS_MAP,), "A2S answers by kind")
        if maps is None:
            return
        answers = CounterMetricFamily(PREFIX + "a2s_answers", "A2S requests answered by this POP, by kind (info, "
                                      "player, rules) and answer (challenge, cached, bad_cookie: dropped)",
                                      labels=["kind", "answer"])
        with maps:
            stats = maps[A2S_STATS_MAP]
            entries = stats.lookup_batch()
            totals = stats.sum_percpu([value for dummy, value in entries], len(A2S_ANSWERS))
        for position, (key, dummy) in enumerate(entries):
            index = abi.U32.unpack(key)[0]
            if index < len(abi.A2S_KINDS):
                for answer, column in zip(A2S_ANSWERS, totals):
                    answers.add_metric([abi.A2S_KINDS[index], answer], column[position])
        yield answers

    def _open_optional_maps(self, names, what):
        """The maps ``names`` opened, or None when the program cannot give them (an older program):
        then ``what`` is not exported, said in the log once for each new reason."""
        try:
            maps = self.edge_maps.open(*names)
        except (PinError, _bpf.BpfError) as exc:
            if self.optional_maps_errors.get(what) != str(exc):
                LOG.warning("not exporting %s: %s", what, exc)
                self.optional_maps_errors[what] = str(exc)
            return None
        self.optional_maps_errors.pop(what, None)
        return maps

    def _payload_rules(self):
        """The hits of each payload rule the program reads now, labelled by its position in
        anycast_edge_filters.rules, its action and what it matches. Nothing (said once in the log)
        when the program has no payload rules."""
        maps = self._open_optional_maps(PAYLOAD_RULE_MAPS, "the payload rules' hits")
        if maps is None:
            return
        labels = ["rule", "action", "match"]
        packets = CounterMetricFamily(PREFIX + "payload_rule_packets",
                                      "Packets each payload rule matched (anycast_edge_filters.rules[rule])", labels=labels)
        byte_family = CounterMetricFamily(PREFIX + "payload_rule_bytes",
                                          "Bytes (frames) each payload rule matched", labels=labels)
        with maps:
            present = {_payload_rules.RULES_MAP: dict(maps[_payload_rules.RULES_MAP].lookup_batch(chunk_size=512)),
                       _payload_rules.BANK_MAP: {_payload_rules.BANK_KEY:
                                                 maps[_payload_rules.BANK_MAP].lookup(_payload_rules.BANK_KEY)}}
            rules = _payload_rules.loaded(present)
            if rules:
                hits = dict(maps[_payload_rules.HITS_MAP].lookup_batch(chunk_size=512))
                buffers = [hits[abi.U32.pack(position)] for position in range(len(rules))]
                totals = maps[_payload_rules.HITS_MAP].sum_percpu(buffers, 2)
                for position, rule in enumerate(rules):
                    match = _payload_rules.render(rule)
                    values = [str(position), match.split(" ", 1)[0], match]
                    packets.add_metric(values, totals[0][position])
                    byte_family.add_metric(values, totals[1][position])
        yield packets
        yield byte_family

    def _flood_defence(self, services):
        """Attack mode (as XDP applies it), the admission counters per service, verified sources per proof.
        Nothing (said once in the log) when the program does not read these maps."""
        maps = self._open_optional_maps(FLOOD_MAPS, "attack mode and admission")
        if maps is None:
            return
        with maps:
            yield from self._flood_families(maps, services)

    def _flood_families(self, maps, services):
        names = {watch.service.id: watch.service.name for watch in self.watches}
        if self.attack is not None:
            names.update((service.id, service.name) for service, *dummy in self.attack.snapshot())
        labels = ["service", "service_id"]
        mode = GaugeMetricFamily(PREFIX + "attack_mode", "1 while the service is under attack (only verified and "
                                 "admitted traffic passes), 0 if not; mode: who decides (auto: the agent)",
                                 labels=labels + ["mode"])
        states = maps["edge_attack_state"]
        for service_id, (label, dummy, attack_mode) in sorted(services.items()):
            if attack_mode == "auto":
                raw = states.lookup(abi.U32.pack(service_id))
                under_attack = bool(raw is not None and abi.ATTACK_STATE.unpack(raw)[0])
            else:
                under_attack = attack_mode == "always"
            mode.add_metric([names.get(service_id, label), str(service_id), attack_mode], float(under_attack))
        yield mode
        families = [CounterMetricFamily(PREFIX + name, text, labels=labels) for name, text in ADMISSION_COUNTERS]
        admission = maps["edge_admission"]
        entries = admission.lookup_batch()
        columns = admission.sum_percpu([value for dummy, value in entries], len(abi.ADMISSION_BUCKET.unpack(
            bytes(abi.ADMISSION_BUCKET.size))))[3:]
        for row, (key, dummy) in enumerate(entries):
            service_id = abi.U32.unpack(key)[0]
            counts = [column[row] for column in columns]
            if service_id not in services and not any(counts):
                continue  # an id never used (the array has 1024 slots)
            label = names.get(service_id, services.get(service_id, (str(service_id),))[0])
            for family, count in zip(families, counts):
                family.add_metric([label, str(service_id)], count)
        yield from families
        verified = CounterMetricFamily(PREFIX + "verified_sources", "Sources verified for a service, by the proof "
                                       "(cookie: echoed the POP's A2S challenge; handshake: the game server's own; "
                                       "punch: the game server spoke first; syn_auth: answered the POP's "
                                       "SYN-ACK with its RST)", labels=["proof"])
        stats = maps["edge_verify_stats"]
        entries = stats.lookup_batch()
        totals = stats.sum_percpu([value for dummy, value in entries], 1)[0]
        for (key, dummy), count in zip(entries, totals):
            index = abi.U32.unpack(key)[0]
            if 0 < index < len(abi.VERIFY_PROOFS):
                verified.add_metric([abi.VERIFY_PROOFS[index]], count)
        yield verified

    # ---- the agent's own state --------------------------------------------------------------

    def _collect_agent(self):
        labels = ["service", "backend"]
        backend_up = GaugeMetricFamily(PREFIX + "backend_up",
                                       "1 if the service's backend is up, 0 if down, NaN before enough probes",
                                       labels=labels)
        probes = CounterMetricFamily(PREFIX + "probes", "Health probes by evidence", labels=labels + ["evidence"])
        refreshes = CounterMetricFamily(PREFIX + "a2s_refreshes", "A2S cache refreshes by kind and outcome",
                                        labels=["service", "kind", "outcome"])
        server_challenges = CounterMetricFamily(PREFIX + "a2s_server_challenges",
                                                "Challenges the game servers demanded from the agent's refreshes",
                                                labels=["service"])
        for watch in self.watches:
            with watch.lock:
                service = watch.service
                backend_up.add_metric([service.name, service.backend], _state_value(watch.health.state))
                for evidence in (health.UP, health.DOWN, health.UNKNOWN):
                    probes.add_metric([service.name, service.backend, evidence], watch.probes[evidence])
                if service.a2s_cache:
                    for kind in abi.A2S_KINDS:
                        for outcome in refresher.OUTCOMES:  # every outcome, zeros included: rate() needs a start
                            refreshes.add_metric([service.name, kind, outcome], watch.refreshes[kind, outcome])
                    server_challenges.add_metric([service.name], watch.challenges)
        yield from (backend_up, probes, refreshes, server_challenges)
        announced = GaugeMetricFamily(PREFIX + "announced",
                                      "1 if this POP announces its anycast prefixes, 0 if withdrawn, NaN if not known")
        attached = GaugeMetricFamily(PREFIX + "dataplane_attached",
                                     "1 if the pinned XDP program is the one attached, 0 if not, NaN if not known")
        intent = GaugeMetricFamily(PREFIX + "withdraw_intent",
                                   "1 while this POP decides whether to withdraw (the fleet guard's protocol)",
                                   labels=["pop"])
        agent_announced, agent_intent = (None, False) if self.agent is None else self.agent.published()
        announced.add_metric([], math.nan if agent_announced is None else float(agent_announced))
        attached.add_metric([], _state_value(health.UNKNOWN if self.agent is None else self.agent.dataplane.state))
        if self.agent is not None:
            intent.add_metric([self.agent.pop_name], float(agent_intent))
        yield announced
        yield intent
        yield attached
        yield from self._collect_attack()
        fleet_sync = getattr(self.agent, "fleet_sync", None)
        if fleet_sync is not None:
            yield from self._collect_fleet(fleet_sync.snapshot())
        manual_bans = getattr(self.agent, "manual_bans", None)
        if manual_bans is not None:
            yield self._manual_bans(manual_bans.live())

    @staticmethod
    def _manual_bans(live):
        """The hand-made bans (playbooks/ban.yml) this POP knows, its own and the fleet's: a few
        operator actions, not XDP's rate-limit bans (anycast_edge_bans_active counts those)."""
        family = GaugeMetricFamily(PREFIX + "manual_ban_expiry_timestamp_seconds",
                                   "Hand-made bans (ban.yml): when each ends (Unix time), by address and the POP "
                                   "the ban was made at", labels=["address", "origin"])
        for address, (expires_ns, origin) in sorted(live.items()):
            family.add_metric([address, origin], expires_ns / 1e9)
        return family

    def _collect_attack(self):
        """The attack-mode controller's side: transitions, the rate it reads, what caused the last flip."""
        transitions = CounterMetricFamily(PREFIX + "attack_transitions", "Attack mode changes the agent made "
                                          "(enter: under attack, leave: attack over)", labels=["service", "direction"])
        rate = GaugeMetricFamily(PREFIX + "attack_unverified_packets_per_second",
                                 "Unverified packets per second over the agent's last reading (every 0.25 s)",
                                 labels=["service"])
        threshold = GaugeMetricFamily(PREFIX + "attack_threshold_packets_per_second",
                                      "Above this many unverified packets per second (for enter_after_sec) the "
                                      "agent puts the service under attack", labels=["service"])
        cause_rate = GaugeMetricFamily(PREFIX + "attack_last_transition_packets_per_second",
                                       "Unverified packets per second at the last transition", labels=["service", "direction"])
        cause_packets = GaugeMetricFamily(PREFIX + "attack_last_transition_unverified_packets",
                                          "Unverified packets over the seconds that caused the last transition",
                                          labels=["service", "direction"])
        for service, detection, dummy, counts, last, last_rate in (self.attack.snapshot() if self.attack else []):
            for direction in ("enter", "leave"):
                transitions.add_metric([service.name, direction], counts[direction])
            threshold.add_metric([service.name], detection.unverified_packets_per_sec)
            if last_rate is not None:
                rate.add_metric([service.name], last_rate)
            if last is not None:
                cause_rate.add_metric([service.name, last.direction], last.rate)
                cause_packets.add_metric([service.name, last.direction], last.counts.unverified_packets)
        yield from (transitions, rate, threshold, cause_rate, cause_packets)

    @staticmethod
    def _collect_fleet(snapshot):
        """The fleet sync (fleet_sync.py): what this POP took from each other POP, what it refused
        and why, what it published, and whether it is on the bus."""
        imported = CounterMetricFamily(PREFIX + "fleet_imported", "Entries other POPs learned, written into this "
                                       "POP's maps, by origin POP and kind (punch, ban, verified)",
                                       labels=["from", "kind"])
        for (origin, kind), count in sorted(snapshot["imported"].items()):
            imported.add_metric([origin, kind], count)
        refused = CounterMetricFamily(PREFIX + "fleet_refused", "Entries from other POPs not imported, by origin, "
                                      "kind and reason (denied: on this POP's deny list; rate_cap, size_cap: the "
                                      "origin's import caps; not_its_ban: a lift of a ban not imported from the "
                                      "lifting POP; unknown_service, expired, malformed, origin_mismatch)",
                                      labels=["from", "kind", "reason"])
        for (origin, kind, reason), count in sorted(snapshot["refused"].items()):
            refused.add_metric([origin, kind, reason], count)
        published = CounterMetricFamily(PREFIX + "fleet_published", "Entries this POP learned and published to the "
                                        "fleet (acknowledged by JetStream), by kind", labels=["kind"])
        for kind, count in sorted(snapshot["published"].items()):
            published.add_metric([kind], count)
        errors = CounterMetricFamily(PREFIX + "fleet_errors", "Fleet sync failures by stage (publish: not "
                                     "acknowledged, retried; scan, import: map reads or writes)", labels=["stage"])
        for stage in ("publish", "scan", "import"):
            errors.add_metric([stage], snapshot[stage + "_errors"])
        connected = GaugeMetricFamily(PREFIX + "fleet_connected", "1 while the agent is connected to the fleet's NATS")
        connected.add_metric([], float(snapshot["connected"]))
        backlog = GaugeMetricFamily(PREFIX + "fleet_publish_backlog", "Entries learned here waiting to be published")
        backlog.add_metric([], snapshot["backlog"])
        scan = GaugeMetricFamily(PREFIX + "fleet_scan_seconds", "Time the last scan for news took, by map walk",
                                 labels=["maps"])
        for what, seconds in sorted(snapshot["scan_seconds"].items()):
            scan.add_metric([what], seconds)
        yield from (imported, refused, published, errors, connected, backlog, scan)


# ---- the HTTP(S) server ---------------------------------------------------------------------

class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """One line, not a traceback, for a client that failed (no certificate, wrong CA, gone)."""
        LOG.info("exporter: connection from %s failed: %s", client_address[0], sys.exc_info()[1])


class _QuietHandler(WSGIRequestHandler):
    # A scraper that stalls (or never finishes its TLS handshake) holds only its own thread, and
    # only this long.
    timeout = 10

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        """Scrapes every second would flood the journal."""


def serve(registry, address: str, port: int, ssl_context=None):
    """Serve ``registry`` on address:port (https with ``ssl_context``) from a daemon thread.

    Returns (server, thread); ``server.shutdown()`` stops it.
    """
    httpd = make_server(address, port, make_wsgi_app(registry), _ThreadingServer, handler_class=_QuietHandler)
    if ssl_context is not None:
        # Handshake on first read, i.e. in the connection's own thread (see the module's docstring).
        httpd.socket = ssl_context.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=httpd.serve_forever, name="exporter", daemon=True)
    thread.start()
    return httpd, thread
