"""Backend health and the POP's announcement.

Evidence, not guesses. Every probe ends in one of three outcomes:

* ``UP``: the server answered (an A2S reply or challenge, a TCP handshake, a UDP answer);
* ``DOWN``: explicit evidence it is not serving: no answer within the timeout, a TCP reset,
  an ICMP port unreachable;
* ``UNKNOWN``: the agent could not ask (its own socket error, no route configured on this POP,
  a permission problem). UNKNOWN never moves a rise/fall counter: it is logged, and the last
  state stays.

``RiseFall`` turns evidence into a state: ``rise`` consecutive UPs make a service up, ``fall``
consecutive DOWNs make it down. The same applies to the data plane check (is our XDP program
attached?).

``decide`` says what the POP should do: withdraw when the XDP program is not attached, or when
every service's backend is down; announce when the program is attached and at least one service
is up; otherwise (anything unknown) keep what it does now.

``Announcer`` carries that out through birdc ``disable``/``enable`` of the static protocol that
holds the anycast routes (``anycast_edge_announce`` of the bird_anycast role), with two guards:

* an operator's drain (``playbooks/drain.yml`` leaves ``gshut``/``withdrawn`` in the drain state
  file) is never undone: the agent does not announce a drained POP;
* the fleet guard: before withdrawing, the agent reads the other POPs' exporters
  (``anycast_edge_announced``); it withdraws only when at least ``min_announcing_peers`` of them
  say they announce. If the peers cannot be read, the agent cannot tell whether it would be the
  last POP standing, so it keeps announcing (and logs why). A POP whose backends are down
  attracts traffic it forwards into a void, but every POP withdrawing at once takes the prefix
  off the internet, which is worse and cannot be undone by the game servers recovering until
  every agent notices.

Simultaneous decisions. Reading the peers and then withdrawing is a check-then-act: two POPs
that decide within the time one read takes would each see the other still announcing and both
withdraw. So a withdrawal is a small protocol, carried out through the exporters themselves:

1. *intent*: the POP publishes ``anycast_edge_withdraw_intent{pop="<name>"} 1``;
2. *settle*: it waits ``settle_sec`` plus a random jitter, so that any POP deciding at about the
   same time has published its own intent before this one reads;
3. *read*: it reads every peer at once (in parallel). A peer that shows an intent and whose name
   sorts before this POP's goes first: this POP defers (keeps announcing, tries again at the
   next decision). A peer with an intent whose name sorts after this one's defers to this one,
   so it still counts as announcing. Peers that say they are withdrawn do not count;
4. *act*: if enough peers announce, the POP publishes ``announced 0`` *before* it tells BIRD,
   then clears its intent. If reading took longer than half of ``settle_sec`` the answers are
   too old to act on and it defers;
5. *re-check*: after the withdrawal (and at every later decision while withdrawn) it reads the
   peers again and announces again when fewer than the minimum announce.

Why this is safe: a POP reads only after ``settle_sec`` has passed since its own intent, and its
read lasts less than half of that. If POP A saw B's intent, B's reading ended after A's read, so
it began after A's intent was published: B saw A's intent too, and exactly one of them (the
lower name) goes first. If A saw B announcing without an intent, B's own intent (if any) comes
later, so B's read comes after A has published its outcome (announced 0, or no intent any more).
"""

from __future__ import annotations

import concurrent.futures
import errno
import logging
import os
import random
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass

from . import a2s

LOG = logging.getLogger(__name__)

UP = "up"
DOWN = "down"
UNKNOWN = "unknown"

ANNOUNCE = "announce"
WITHDRAW = "withdraw"

# errnos that say "the server (or its host) is not there", as opposed to "this POP cannot ask".
_DOWN_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH, errno.ETIMEDOUT}


@dataclass
class ProbeOutcome:
    evidence: str
    detail: str = ""


def evidence_of_query(result: a2s.QueryResult) -> ProbeOutcome:
    """An A2S exchange as health evidence: any A2S answer (even a split one) is alive."""
    if result.answered:
        return ProbeOutcome(UP, result.kind)
    return ProbeOutcome(DOWN, result.error)


def a2s_probe(target, timeout, source=None) -> ProbeOutcome:
    try:
        return evidence_of_query(a2s.query_info(target, timeout=timeout, source=source))
    except OSError as exc:
        return _oserror_outcome(exc, target)


def _socket_probe(kind, what, target, timeout, source, exchange) -> ProbeOutcome:
    """Connect a socket of ``kind`` (from ``source``, if given) to ``target`` and return what
    ``exchange(sock)`` makes of it; silence for ``timeout`` s is DOWN, as an error is (_oserror_outcome)."""
    sock = socket.socket(socket.AF_INET, kind)
    try:
        sock.settimeout(timeout)
        if source is not None:
            sock.bind(source)
        sock.connect(target)
        return exchange(sock)
    except socket.timeout:
        return ProbeOutcome(DOWN, "no %s answer from %s:%d within %.1f s" % ((what,) + tuple(target) + (timeout,)))
    except OSError as exc:
        return _oserror_outcome(exc, target)
    finally:
        sock.close()


def tcp_probe(target, timeout, source=None) -> ProbeOutcome:
    """A completed TCP handshake is UP; a reset or silence is DOWN."""
    return _socket_probe(socket.SOCK_STREAM, "TCP", target, timeout, source,
                         lambda sock: ProbeOutcome(UP, "connected"))


def udp_probe(target, timeout, source=None, payload=a2s.INFO_REQUEST) -> ProbeOutcome:
    """Any datagram back from the target is UP; an ICMP port unreachable or silence is DOWN."""
    def exchange(sock):
        # The socket is connected: ICMP errors are reported on it.
        sock.send(payload)
        sock.recv(65535)
        return ProbeOutcome(UP, "answered")

    return _socket_probe(socket.SOCK_DGRAM, "UDP", target, timeout, source, exchange)


def _oserror_outcome(exc: OSError, target) -> ProbeOutcome:
    if exc.errno in _DOWN_ERRNOS:
        return ProbeOutcome(DOWN, "%s:%d: %s" % (target + (os.strerror(exc.errno),)))
    # EADDRNOTAVAIL (tunnel address not on this POP), ENETUNREACH (no route), EPERM, ...:
    # the POP's own problem, not evidence about the backend.
    return ProbeOutcome(UNKNOWN, "cannot probe %s:%d: %s" % (target + (exc,)))


class RiseFall:
    """``rise`` consecutive UPs make the state up, ``fall`` consecutive DOWNs make it down.

    The state starts as UNKNOWN; UNKNOWN evidence changes nothing (not even the streaks).
    """

    def __init__(self, rise: int, fall: int, state: str = UNKNOWN):
        self.rise = rise
        self.fall = fall
        self.state = state
        self._streak_of = None
        self._streak = 0

    def feed(self, evidence: str) -> bool:
        """Take one probe's evidence; True when the state changed."""
        if evidence not in (UP, DOWN):
            return False
        if evidence == self._streak_of:
            self._streak += 1
        else:
            self._streak_of, self._streak = evidence, 1
        needed = self.rise if evidence == UP else self.fall
        if self.state != evidence and self._streak >= needed:
            self.state = evidence
            return True
        return False


def decide(dataplane: str, services: dict) -> str | None:
    """ANNOUNCE, WITHDRAW or None (keep the current state: not enough evidence either way).

    ``dataplane``: UP/DOWN/UNKNOWN state of "our XDP program is attached";
    ``services``: {service name: UP/DOWN/UNKNOWN state}.
    """
    if dataplane == DOWN:
        return WITHDRAW
    states = set(services.values())
    if services and states == {DOWN}:
        return WITHDRAW
    if dataplane == UP and UP in states:
        return ANNOUNCE
    return None


def drained(drain_state_file: str) -> bool:
    """True when an operator drained this POP (drain.yml) and has not undrained it."""
    try:
        with open(drain_state_file, encoding="utf-8") as handle:
            return handle.read().strip() in ("gshut", "withdrawn")
    except FileNotFoundError:
        return False


@dataclass
class PeerState:
    """What a peer POP's exporter says about its announcement."""

    url: str
    name: str              # the peer's pop label ("" from an agent too old to publish it)
    announced: bool
    intent: bool           # the peer is deciding whether to withdraw


class FleetGuard:
    """Lets this POP withdraw only while enough other POPs announce, even when they decide at
    the same instant (the intent/settle/read protocol of this module's docstring).

    ``intent`` is what this POP publishes (the exporter reads it); ``ssl_context`` is used to
    read peers whose exporters serve TLS (and to present this POP's client certificate).
    """

    def __init__(self, peers, min_announcing: int, timeout: float = 1.0, name: str = "",
                 settle_sec: float = 3.0, jitter_sec: float = 1.0, ssl_context=None):
        self.peers = list(peers)
        self.min_announcing = min_announcing
        self.timeout = timeout
        self.name = name
        self.settle_sec = settle_sec
        self.jitter_sec = jitter_sec
        self.ssl_context = ssl_context
        self.intent = False
        self._random = random.SystemRandom()

    @property
    def active(self) -> bool:
        return bool(self.peers) and self.min_announcing > 0

    def read_peers(self) -> tuple[list, list]:
        """([PeerState], [unreadable "url (why)"]), every peer read in parallel."""
        if not self.peers:
            return [], []
        states, unreadable = [], []
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(self.peers), 16)) as pool:
            futures = {pool.submit(read_peer, url, self.timeout, self.ssl_context): url for url in self.peers}
            for future, url in futures.items():
                try:
                    states.append(future.result())
                except (OSError, ValueError) as exc:
                    unreadable.append("%s (%s)" % (url, exc))
        return states, unreadable

    def may_withdraw(self, before_acting=None) -> tuple[bool, str]:
        """(allowed, why). ``before_acting`` (when allowed) is called while the intent is still
        published: the caller publishes "announced 0" there, so no peer ever sees neither."""
        if not self.active:
            if before_acting is not None:
                before_acting()
            return True, "no fleet guard configured"
        self.intent = True
        try:
            time.sleep(self.settle_sec + self._random.uniform(0, self.jitter_sec))
            started = time.monotonic()
            states, unreadable = self.read_peers()
            took = time.monotonic() - started
            if took > self.settle_sec / 2:
                return False, ("reading the peers took %.2f s, more than half the settle time (%.2f s): "
                               "their answers are too old to act on" % (took, self.settle_sec))
            first = sorted(peer.name or peer.url for peer in states if peer.intent and self._goes_first(peer))
            if first:
                return False, "%s decide(s) too and go(es) first" % ", ".join(first)
            allowed, why = self._enough(states, unreadable)
            if allowed and before_acting is not None:
                before_acting()
            return allowed, why
        finally:
            self.intent = False

    def fleet_holds(self) -> tuple[bool, str]:
        """After a withdrawal: do at least the minimum of the other POPs still announce?"""
        if not self.active:
            return True, "no fleet guard configured"
        return self._enough(*self.read_peers())

    def _goes_first(self, peer: PeerState) -> bool:
        """A peer deciding at the same time goes first when its name sorts before ours."""
        return (peer.name or peer.url) < self.name

    def _enough(self, states, unreadable) -> tuple[bool, str]:
        announcing = sum(1 for peer in states if peer.announced)
        if announcing >= self.min_announcing:
            return True, "%d other POP(s) announce" % announcing
        why = "only %d other POP(s) announce (need %d)" % (announcing, self.min_announcing)
        if unreadable:
            why += "; cannot read %s" % ", ".join(unreadable)
        return False, why


def read_peer(url: str, timeout: float, ssl_context=None) -> PeerState:
    """A peer's ``anycast_edge_announced`` and ``anycast_edge_withdraw_intent`` from its /metrics."""
    from prometheus_client.parser import text_string_to_metric_families  # pylint: disable=import-outside-toplevel
    # nosec: operator-given URLs
    with urllib.request.urlopen(url, timeout=timeout, context=ssl_context) as response:
        text = response.read().decode("utf-8")
    announced = None
    name, intent = "", False
    for family in text_string_to_metric_families(text):
        if family.name == "anycast_edge_announced":
            announced = any(sample.value == 1 for sample in family.samples)
        elif family.name == "anycast_edge_withdraw_intent":
            for sample in family.samples:
                name = sample.labels.get("pop", "")
                intent = sample.value == 1
    if announced is None:
        raise ValueError("no anycast_edge_announced metric")
    return PeerState(url, name, announced, intent)


def peer_announces(url: str, timeout: float, ssl_context=None) -> bool:
    """Read ``anycast_edge_announced`` from a peer's /metrics."""
    return read_peer(url, timeout, ssl_context).announced


class Announcer:
    """Turns decisions into birdc enable/disable of the announcing protocol."""

    def __init__(self, birdc, protocol: str, drain_state_file: str, fleet_guard: FleetGuard | None = None):
        self.birdc = birdc
        self.protocol = protocol
        self.drain_state_file = drain_state_file
        self.fleet_guard = fleet_guard
        self.announced = None  # what the agent last saw or made BIRD do; None: not known yet
        self._state_lock = threading.Lock()

    def published(self) -> tuple[bool | None, bool]:
        """(announced, withdraw intent) as one consistent reading, for the exporter."""
        with self._state_lock:
            return self.announced, self.fleet_guard is not None and self.fleet_guard.intent

    def _set_announced(self, value) -> None:
        with self._state_lock:
            self.announced = value

    def apply(self, decision: str | None) -> None:
        """Carry out ``decision``; errors are logged and leave the last state (never raise)."""
        if decision is None:
            return
        try:
            if decision == ANNOUNCE:
                self._announce("backends healthy")
            elif decision == WITHDRAW:
                if self.announced is False:
                    self._recheck()
                else:
                    self._withdraw()
        except Exception as exc:  # pylint: disable=broad-except
            # The agent's own failure (BIRD down, socket gone): log, keep the last state.
            LOG.error("cannot %s through birdc (%s): keeping the last state", decision, exc)

    def _announce(self, why: str) -> None:
        if drained(self.drain_state_file):
            LOG.info("%s but the POP is drained by an operator (%s): not announcing", why, self.drain_state_file)
            self._set_announced(False)
            return
        if self.birdc.set_protocol(self.protocol, True):
            LOG.warning("announcing again: enabled BIRD protocol %s (%s)", self.protocol, why)
        self._set_announced(True)

    def _withdraw(self) -> None:
        before = self.announced
        if self.fleet_guard is None:
            allowed, why = True, "no fleet guard"
            self._set_announced(False)
        else:
            # "announced 0" is published while the intent still is: a peer reading in between
            # sees one or the other, never a POP that neither intends to withdraw nor says it did.
            allowed, why = self.fleet_guard.may_withdraw(before_acting=lambda: self._set_announced(False))
        if not allowed:
            LOG.error("this POP should withdraw but the fleet guard refuses: %s", why)
            return
        try:
            if self.birdc.set_protocol(self.protocol, False):
                LOG.warning("withdrawing: disabled BIRD protocol %s (%s)", self.protocol, why)
        except Exception:
            self._set_announced(before)
            raise
        if self.fleet_guard is not None and self.fleet_guard.active:
            time.sleep(self.fleet_guard.settle_sec)  # let a peer that acted at the same time show it
            self._recheck()

    def _recheck(self) -> None:
        """Withdrawn: announce again if the fleet fell below the minimum since."""
        if self.fleet_guard is None:
            return
        holds, why = self.fleet_guard.fleet_holds()
        if not holds:
            LOG.error("this POP is withdrawn but the fleet fell below the minimum (%s): announcing again", why)
            self._announce("the fleet guard")
