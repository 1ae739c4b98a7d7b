"""Attack mode of the ``auto`` services: the agent decides, from the unverified traffic XDP counts.

Every ``TICK_SEC`` the controller reads ``edge_admission`` (per service, per CPU: XDP's token
buckets and counters; the CPUs are summed here) and feeds each ``auto`` service's count of
unverified packets to its ``Hysteresis``: the service goes under attack once its unverified
packets per second stayed above the threshold for ``enter_after_sec`` seconds in a row, and out
of it after ``leave_after_sec`` seconds at or below it. A transition is written to
``edge_attack_state[id]`` (``under_attack``, ``since_ns`` on CLOCK_MONOTONIC, the clock
bpf_ktime_get_ns() reads), logged in one line and counted for the exporter.

``always`` and ``never`` services are never written: XDP decides them from the service entry
(edge_rules writes it). The controller starts from the state it finds in the map, so an agent
restarted during a flood keeps the service under attack.

Thresholds and why: docs/data-plane.md, "Attack mode and admission".
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _rules

LOG = logging.getLogger(__name__)

# How often edge_admission is read: a flood is answered within enter_after_sec + TICK_SEC.
TICK_SEC = 0.25
ADMISSION_MAP = "edge_admission"
ATTACK_STATE_MAP = "edge_attack_state"

# The counters of struct admission_bucket the agent reads (the CPUs summed), in its field order
# after refilled_ns, packet_tokens and byte_tokens (the buckets themselves are XDP's business).
Counts = collections.namedtuple("Counts", ["unverified_packets", "unverified_bytes", "admitted_packets",
                                           "dropped_packets", "verified_packets"])
ZERO_COUNTS = Counts(0, 0, 0, 0, 0)


def sum_admission(per_cpu_values) -> Counts:
    """The counters of one service's edge_admission entry, all CPUs summed."""
    totals = abi.unpack_counters(per_cpu_values, abi.ADMISSION_BUCKET)
    return Counts(*totals[3:])


@dataclass(frozen=True)
class Detection:
    """When an ``auto`` service is put under attack (anycast_edge_attack_detection)."""
    unverified_packets_per_sec: int = _rules.DEFAULT_ATTACK_DETECTION["unverified_packets_per_sec"]
    enter_after_sec: float = _rules.DEFAULT_ATTACK_DETECTION["enter_after_sec"]
    leave_after_sec: float = _rules.DEFAULT_ATTACK_DETECTION["leave_after_sec"]


@dataclass(frozen=True)
class Transition:
    """A change of attack mode and what caused it."""
    under_attack: bool
    rate: float              # unverified packets per second over the reading that decided it
    seconds: float           # how long the traffic had been on the new side (>= the configured time)
    counts: Counts           # the counters' increase over those seconds

    @property
    def direction(self) -> str:
        return "enter" if self.under_attack else "leave"


class Hysteresis:
    """The attack-mode state machine of one service. Pure: fed (time, counters), returns the
    Transition when the state flips.

    Each reading gives the rate of the interval since the previous one. A run is the time the
    rate has been on the other side of the threshold than the state (above while not under
    attack, at or below while under attack), from the start of its first interval: the state
    flips once a run lasts enter_after_sec (or leave_after_sec). A counter that went down (the
    maps were recreated by a program upgrade) starts over from that reading.
    """

    def __init__(self, detection: Detection, under_attack: bool = False):
        self.detection = detection
        self.under_attack = under_attack
        self.rate = None                 # the last interval's unverified packets per second
        self._last = None                # (time, Counts) of the previous reading
        self._run = None                 # (time, Counts) where the current run started

    def feed(self, now: float, counts: Counts):
        last = self._last
        if last is not None and now <= last[0]:
            return None                  # no time has passed: no rate (the clock is monotonic)
        self._last = (now, counts)
        if last is None or any(new < old for new, old in zip(counts, last[1])):
            self._run = None
            return None
        self.rate = (counts.unverified_packets - last[1].unverified_packets) / (now - last[0])
        above = self.rate > self.detection.unverified_packets_per_sec
        if above == self.under_attack:
            self._run = None
            return None
        if self._run is None:
            self._run = last
        started, counts_then = self._run
        needed = self.detection.enter_after_sec if above else self.detection.leave_after_sec
        if now - started < needed:
            return None
        self.under_attack = above
        self._run = None
        return Transition(above, self.rate, now - started,
                          Counts(*(new - old for new, old in zip(counts, counts_then))))


class ServiceAttack:
    """One ``auto`` service: its state machine and what the exporter reports of it."""

    def __init__(self, service, detection: Detection):
        self.service = service
        self.hysteresis = None           # made on the first reading, from the state in the map
        self.detection = detection
        self.transitions = {"enter": 0, "leave": 0}
        self.last_transition = None

    @property
    def under_attack(self):
        return None if self.hysteresis is None else self.hysteresis.under_attack


class AttackController:
    """Reads edge_admission every TICK_SEC and writes edge_attack_state for the ``auto`` services."""

    def __init__(self, services, edge_maps, clock=time.monotonic_ns):
        self.edge_maps = edge_maps
        self.clock = clock
        self.lock = threading.Lock()
        self.services = [ServiceAttack(service, Detection(**service.attack_detection))
                         for service in services if service.attack_mode == "auto"]
        self.ticks = 0
        self.errors = 0
        self._error = None               # the last error logged (logged once until it changes)

    def tick(self) -> list:
        """One reading of every auto service; returns the transitions made."""
        made = []
        if not self.services:
            return made
        with self.edge_maps.open(ADMISSION_MAP, ATTACK_STATE_MAP) as maps:
            admission, states = maps[ADMISSION_MAP], maps[ATTACK_STATE_MAP]
            for watched in self.services:
                key = abi.U32.pack(watched.service.id)
                counts = sum_admission(admission.lookup_percpu(key))
                now_ns = self.clock()
                with self.lock:
                    if watched.hysteresis is None:
                        raw = states.lookup(key)
                        under_attack = bool(raw is not None and abi.ATTACK_STATE.unpack(raw)[0])
                        watched.hysteresis = Hysteresis(watched.detection, under_attack)
                    transition = watched.hysteresis.feed(now_ns / 1e9, counts)
                if transition is None:
                    continue
                states.update(key, abi.ATTACK_STATE.pack(int(transition.under_attack), now_ns))
                with self.lock:
                    watched.transitions[transition.direction] += 1
                    watched.last_transition = transition
                self._log(watched, transition)
                made.append((watched.service.name, transition))
        self.ticks += 1
        return made

    @staticmethod
    def _log(watched, transition):
        detection = watched.detection
        what = ("under attack: above %d unverified packets/s for %.2f s" if transition.under_attack
                else "attack over: at or below %d unverified packets/s for %.2f s")
        LOG.warning("service %s (id %d) %s (last %.0f packets/s; in those seconds %d unverified packets, %d bytes, "
                    "%d admitted, %d dropped, %d from verified players)", watched.service.name, watched.service.id,
                    what % (detection.unverified_packets_per_sec, transition.seconds), transition.rate,
                    transition.counts.unverified_packets, transition.counts.unverified_bytes,
                    transition.counts.admitted_packets, transition.counts.dropped_packets,
                    transition.counts.verified_packets)

    def run(self, stopping: threading.Event) -> None:
        """Tick until ``stopping`` is set, on a fixed schedule (a slow read does not drift it)."""
        deadline = time.monotonic()
        while not stopping.is_set():
            try:
                self.tick()
                if self._error is not None:
                    LOG.warning("attack mode: the maps are readable again")
                    self._error = None
            except Exception as exc:  # pylint: disable=broad-except
                # No pins (the program is being replaced), a program that does not read these maps
                # (_pins refuses to write into them), permission: keep the state, say so once.
                self.errors += 1
                if str(exc) != self._error:
                    LOG.error("attack mode: cannot read or write the maps (retrying every %g s): %s", TICK_SEC, exc)
                    self._error = str(exc)
            deadline += TICK_SEC
            stopping.wait(max(0.0, deadline - time.monotonic()))
            if time.monotonic() - deadline > 10 * TICK_SEC:
                deadline = time.monotonic()   # suspended for a while: do not catch up in a burst

    def snapshot(self):
        """[(service, detection, under_attack or None, transitions, last transition)] for the exporter."""
        with self.lock:
            return [(watched.service, watched.detection, watched.under_attack, dict(watched.transitions),
                     watched.last_transition, None if watched.hysteresis is None else watched.hysteresis.rate)
                    for watched in self.services]
