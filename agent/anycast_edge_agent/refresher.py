"""Per service: probe the game server, refresh the A2S cache (INFO, PLAYER, RULES), feed health.

How the POP reaches the game server
-----------------------------------
The game server listens on the service's anycast address on its backend host. The agent sends
its A2S queries (or TCP/UDP probe) to that same address and port, from the POP's tunnel address,
and leaves the path to the kernel: the ipip_tunnels role gives each POP a /32 route per service
address through the IPIP tunnel to that service's backend. XDP only sees packets arriving on
the uplink, so these kernel routes never change how players' packets are handled; they only
carry the POP's own probes. So the probe takes the very path players' traffic takes to the
game server (IPIP to the backend, the anycast address as destination): when it answers, the
service works end to end from this POP. ``probe_address``/``probe_port`` in the configuration
point probes elsewhere (a game server that also listens on the backend's own address) where
that route cannot exist.

The answer comes back as IPIP from the backend to the POP's tunnel address (the backend's TC
mapper steers it to the POP the "client" came from: this POP). See the closing notes of
issue 6 for what the data plane must do with such a reply (hand it to the kernel, since its
inner destination is the POP itself).

Cache rules: a service with the cache on is asked A2S_INFO, A2S_PLAYER and A2S_RULES at once
(each on its own socket, one timeout for all) every ``a2s_refresh_sec``; for each kind, only a
complete single-packet reply of that kind (``FF FF FF FF 49`` / ``44`` / ``45``) that fits in
``A2S_CACHE_MAX_PAYLOAD`` is written, under that kind's key, with the time it arrived. A split
reply (``FE FF FF FF``: a long player or rules list), a reply too big, or no reply leaves that
kind's entry alone: the XDP program stops serving it once it is older than the service's
``a2s_max_age_sec`` and players' queries of that kind go to the server again. Health is judged
on the A2S_INFO answer alone (a server that ignores A2S_PLAYER is still up).
"""

from __future__ import annotations

import collections
import logging
import threading
import time

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi

from . import a2s, health

LOG = logging.getLogger(__name__)

# Outcomes of a refresh (the label of anycast_edge_a2s_refreshes_total).
REFRESHED = "refreshed"
SPLIT_NOT_CACHED = "split_not_cached"
TOO_BIG_NOT_CACHED = "too_big_not_cached"
NO_REPLY = "no_reply"
WRITE_FAILED = "write_failed"
OUTCOMES = (REFRESHED, SPLIT_NOT_CACHED, TOO_BIG_NOT_CACHED, NO_REPLY, WRITE_FAILED)


class ServiceWatch:
    """Probes one service; refreshes its cache entry when it has the A2S cache on."""

    def __init__(self, service, config, edge_maps):
        self.service = service
        self.config = config
        self.edge_maps = edge_maps
        self.health = health.RiseFall(config.rise, config.fall)
        self.refreshes = collections.Counter()   # (kind, outcome) -> count; kind: abi.A2S_KINDS
        self.challenges = 0                      # challenges answered (the server demanded them)
        self.probes = collections.Counter()      # evidence -> count
        self.last_detail = ""
        self.last_rtt_sec = 0.0
        self.lock = threading.Lock()

    @property
    def interval_sec(self) -> float:
        if self.service.a2s_cache:
            return self.service.a2s_refresh_sec
        return self.config.probe_interval_sec

    def probe_once(self) -> health.ProbeOutcome:
        """One probe (and refresh); feeds the rise/fall counter and returns the evidence."""
        source = (self.config.tunnel_address, 0)
        target = self.service.probe_target
        timeout = self.config.probe_timeout_sec
        kind = self.service.probe
        if kind == "a2s":
            outcome = self._a2s_probe(target, timeout, source)
        elif kind == "tcp":
            outcome = health.tcp_probe(target, timeout, source)
        elif kind == "udp":
            outcome = health.udp_probe(target, timeout, source)
        else:
            outcome = health.ProbeOutcome(health.UNKNOWN, "probe: none")
        with self.lock:
            self.probes[outcome.evidence] += 1
            self.last_detail = outcome.detail
            changed = self.health.feed(outcome.evidence)
        if outcome.evidence == health.UNKNOWN and kind != "none":
            LOG.error("service %s: %s (health stays %s)", self.service.name, outcome.detail, self.health.state)
        if changed:
            LOG.warning("service %s: backend %s is %s (%s)", self.service.name, self.service.backend or target[0],
                        self.health.state, outcome.detail)
        return outcome

    def _a2s_probe(self, target, timeout, source) -> health.ProbeOutcome:
        queries = abi.A2S_KINDS if self.service.a2s_cache else (a2s.INFO,)
        try:
            results = a2s.query(target, queries, timeout=timeout, source=source)
        except OSError as exc:
            return health._oserror_outcome(exc, target)  # pylint: disable=protected-access
        info = results[a2s.INFO]
        with self.lock:
            self.challenges += sum(result.challenges for result in results.values())
            self.last_rtt_sec = info.rtt_sec
        if self.service.a2s_cache:
            for kind, result in results.items():
                self._refresh_cache(kind, result)
        return health.evidence_of_query(info)

    def _refresh_cache(self, kind: str, result: a2s.QueryResult) -> None:
        if result.kind == kind and len(result.payload) <= abi.A2S_CACHE_MAX_PAYLOAD:
            try:
                self.edge_maps.write_a2s_cache(self.service.id, result.payload, time.monotonic_ns(), kind=kind)
                outcome = REFRESHED
            except Exception as exc:  # pylint: disable=broad-except
                LOG.error("service %s: cannot write the A2S %s cache entry: %s", self.service.name, kind, exc)
                outcome = WRITE_FAILED
        elif result.kind == kind:
            outcome = TOO_BIG_NOT_CACHED
        elif result.kind == a2s.SPLIT:
            outcome = SPLIT_NOT_CACHED
        else:
            outcome = NO_REPLY
        with self.lock:
            self.refreshes[kind, outcome] += 1

    def run(self, stopping: threading.Event) -> None:
        """Probe every interval until ``stopping`` is set. Never dies of a probe's exception."""
        while not stopping.is_set():
            started = time.monotonic()
            try:
                self.probe_once()
            except Exception:  # pylint: disable=broad-except
                LOG.exception("service %s: probe failed (health stays %s)", self.service.name, self.health.state)
            stopping.wait(max(0.0, self.interval_sec - (time.monotonic() - started)))
