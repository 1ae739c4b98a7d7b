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
"""

from __future__ import annotations

import errno
import logging
import os
import socket
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


def tcp_probe(target, timeout, source=None) -> ProbeOutcome:
    """A completed TCP handshake is UP; a reset or silence is DOWN."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        if source is not None:
            sock.bind(source)
        sock.connect(target)
        return ProbeOutcome(UP, "connected")
    except socket.timeout:
        return ProbeOutcome(DOWN, "no TCP answer from %s:%d within %.1f s" % (target + (timeout,)))
    except OSError as exc:
        return _oserror_outcome(exc, target)
    finally:
        sock.close()


def udp_probe(target, timeout, source=None, payload=a2s.INFO_REQUEST) -> ProbeOutcome:
    """Any datagram back from the target is UP; an ICMP port unreachable or silence is DOWN."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.settimeout(timeout)
        if source is not None:
            sock.bind(source)
        sock.connect(target)  # connected: ICMP errors are reported on this socket
        sock.send(payload)
        sock.recv(65535)
        return ProbeOutcome(UP, "answered")
    except socket.timeout:
        return ProbeOutcome(DOWN, "no UDP answer from %s:%d within %.1f s" % (target + (timeout,)))
    except OSError as exc:
        return _oserror_outcome(exc, target)
    finally:
        sock.close()


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


class FleetGuard:
    """Counts the other POPs that say (on their exporter) that they announce."""

    def __init__(self, peers, min_announcing: int, timeout: float = 2.0):
        self.peers = list(peers)
        self.min_announcing = min_announcing
        self.timeout = timeout

    def may_withdraw(self) -> tuple[bool, str]:
        if not self.peers or self.min_announcing <= 0:
            return True, "no fleet guard configured"
        announcing = 0
        unreadable = []
        for url in self.peers:
            try:
                if peer_announces(url, self.timeout):
                    announcing += 1
            except (OSError, ValueError) as exc:
                unreadable.append("%s (%s)" % (url, exc))
        if announcing >= self.min_announcing:
            return True, "%d other POP(s) announce" % announcing
        why = "only %d other POP(s) announce (need %d)" % (announcing, self.min_announcing)
        if unreadable:
            why += "; cannot read %s" % ", ".join(unreadable)
        return False, why


def peer_announces(url: str, timeout: float) -> bool:
    """Read ``anycast_edge_announced`` from a peer's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families  # pylint: disable=import-outside-toplevel
    with urllib.request.urlopen(url, timeout=timeout) as response:  # nosec: operator-given URLs
        text = response.read().decode("utf-8")
    for family in text_string_to_metric_families(text):
        if family.name == "anycast_edge_announced":
            return any(sample.value == 1 for sample in family.samples)
    raise ValueError("no anycast_edge_announced metric")


class Announcer:
    """Turns decisions into birdc enable/disable of the announcing protocol."""

    def __init__(self, birdc, protocol: str, drain_state_file: str, fleet_guard: FleetGuard | None = None):
        self.birdc = birdc
        self.protocol = protocol
        self.drain_state_file = drain_state_file
        self.fleet_guard = fleet_guard
        self.announced = None  # what the agent last saw or made BIRD do; None: not known yet

    def apply(self, decision: str | None) -> None:
        """Carry out ``decision``; errors are logged and leave the last state (never raise)."""
        if decision is None:
            return
        try:
            if decision == ANNOUNCE:
                if drained(self.drain_state_file):
                    LOG.info("backends healthy but the POP is drained by an operator (%s): not announcing",
                             self.drain_state_file)
                    self.announced = False
                    return
                if self.birdc.set_protocol(self.protocol, True):
                    LOG.warning("announcing again: enabled BIRD protocol %s", self.protocol)
                self.announced = True
            elif decision == WITHDRAW:
                if self.fleet_guard is not None:
                    allowed, why = self.fleet_guard.may_withdraw()
                    if not allowed:
                        LOG.error("this POP should withdraw but the fleet guard refuses: %s", why)
                        return
                if self.birdc.set_protocol(self.protocol, False):
                    LOG.warning("withdrawing: disabled BIRD protocol %s", self.protocol)
                self.announced = False
        except Exception as exc:  # pylint: disable=broad-except
            # The agent's own failure (BIRD down, socket gone): log, keep the last state.
            LOG.error("cannot %s through birdc (%s): keeping the last state", decision, exc)
