"""The agent's local control socket: hand-made bans (playbooks/ban.yml and unban.yml, through the
``anycast.edge.edge_ban`` module) that the agent writes into its POP's map and, with the fleet
sync on, publishes to every other POP.

Why a request to the agent rather than a map write the fleet sync would notice: the sync's scan
reads only the sources XDP touched since its previous scan (docs/fleet-sync.md), so a ban
written by hand into an entry no packet touched is never seen; and a lift (unban) is not a map
state a scan could tell from a ban that ended. The agent is the one process on the POP that is
on the bus, so it is the one that publishes.

The socket (``control_socket``, default /run/anycast-edge-agent/control.sock) is a Unix stream
socket, mode 0600 in a 0700 folder: only the agent's own user and root (Ansible's become) reach
it; nothing listens on the network. One JSON request per connection, one JSON answer:

- ``{"action": "ban", "addresses": [...], "expires_ns": <CLOCK_REALTIME ns>, "check": false}``
- ``{"action": "unban", "addresses": [...], "check": false}``
- ``{"action": "bans"}``: the hand-made bans this POP knows (its own and the fleet's)

Addresses are expanded already (``_bans.resolve``, run by the module); the agent checks them again.
The answer says which addresses changed in the map (``changed``), which were published or
queued for the bus (``published``), and whether the fleet sync is on (``fleet``).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import socketserver
import threading
import time

from ansible_collections.anycast.edge.plugins.module_utils import _bans

LOG = logging.getLogger(__name__)

# A request is one JSON document of at most this size (4,096 addresses as text fit).
MAX_REQUEST_BYTES = 256 * 1024
REQUEST_TIMEOUT_SEC = 5.0


class ManualBans:
    """The hand-made bans this POP knows: its own requests and those other POPs published.
    {address: (expires_ns CLOCK_REALTIME, origin POP)}; the exporter lists the live ones."""

    def __init__(self):
        self.lock = threading.Lock()
        self._bans = {}

    def add(self, address, expires_ns, origin):
        with self.lock:
            had = self._bans.get(address)
            if had is None or had[0] < expires_ns:
                self._bans[address] = (expires_ns, origin)

    def remove(self, address, origin=None):
        """Forget the address's ban (only if ``origin`` made it, when given: a lift from the bus)."""
        with self.lock:
            had = self._bans.get(address)
            if had is None or (origin is not None and had[1] != origin):
                return False
            del self._bans[address]
            return True

    def expiry(self, address):
        with self.lock:
            had = self._bans.get(address)
        return None if had is None else had[0]

    def live(self, now_ns=None):
        """{address: (expires_ns, origin)} of the bans not over yet (the ended are forgotten)."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        with self.lock:
            for address in [address for address, (expires, dummy) in self._bans.items() if expires <= now_ns]:
                del self._bans[address]
            return dict(self._bans)


class RequestError(ValueError):
    """A request the agent refuses; the text says why."""


class Control:
    """What a request does (the socket server below only carries it)."""

    def __init__(self, edge_maps, pop_name, manual_bans, fleet_sync=None):
        self.edge_maps = edge_maps
        self.pop_name = pop_name
        self.manual_bans = manual_bans
        self.fleet_sync = fleet_sync
        # One request at a time: a ban's read-plan-write is not interleaved with another's.
        self.lock = threading.Lock()

    def handle(self, request) -> dict:
        if not isinstance(request, dict):
            raise RequestError("a request is a JSON object")
        action = request.get("action")
        if action == "bans":
            return {"bans": [{"address": address, "expires_ns": expires, "origin": origin}
                             for address, (expires, origin) in sorted(self.manual_bans.live().items())],
                    "fleet": self.fleet_sync is not None}
        addresses = request.get("addresses")
        if not isinstance(addresses, list) or not all(isinstance(item, str) for item in addresses):
            raise RequestError("addresses: a list of IPv4 addresses")
        try:
            addresses = [str(ipaddress.IPv4Address(item)) for item in addresses]
        except ValueError as exc:
            raise RequestError("addresses: %s" % exc) from None
        if len(addresses) > _bans.DEFAULT_MAX_ADDRESSES:
            raise RequestError("addresses: %d, more than %d" % (len(addresses), _bans.DEFAULT_MAX_ADDRESSES))
        check = bool(request.get("check", False))
        with self.lock:
            if action == "ban":
                expires_ns = request.get("expires_ns")
                if not isinstance(expires_ns, int) or isinstance(expires_ns, bool):
                    raise RequestError("expires_ns: CLOCK_REALTIME nanoseconds (an integer)")
                if expires_ns <= time.time_ns():
                    raise RequestError("expires_ns: %d is in the past" % expires_ns)
                return self.ban(addresses, expires_ns, check)
            if action == "unban":
                return self.unban(addresses, check)
        raise RequestError("action: %r is not ban, unban or bans" % (action,))

    def ban(self, addresses, expires_ns, check):
        until_mono = expires_ns - _bans.realtime_offset_ns()
        with self.edge_maps.open("edge_sources") as maps:
            changed = _bans.plan_ban(_bans.current_bans(maps["edge_sources"], addresses), until_mono)
            # The fleet is told of every address this POP has not published (or heard) a hand-made
            # ban of that long: an address banned here already (by XDP) may be a stranger elsewhere.
            publish = [address for address in addresses
                       if (self.manual_bans.expiry(address) or 0) < expires_ns - _bans.SAME_END_SLACK_NS]
            if not check:
                _bans.write_bans(maps["edge_sources"], changed, until_mono)
        if not check:
            for address in publish:
                self.manual_bans.add(address, expires_ns, self.pop_name)
            if self.fleet_sync is not None and publish:
                self.fleet_sync.publish_manual("ban", publish, expires_ns)
            if changed or publish:
                LOG.warning("hand-made ban of %d addresses until %s (%d written here, %d %s)", len(addresses),
                            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_ns // 10**9)), len(changed),
                            len(publish), "published to the fleet" if self.fleet_sync is not None else "listed")
        return {"changed": changed, "published": publish if self.fleet_sync is not None else [],
                "fleet": self.fleet_sync is not None}

    def unban(self, addresses, check):
        now_mono = time.monotonic_ns()
        with self.edge_maps.open("edge_sources") as maps:
            changed = _bans.plan_lift(_bans.current_bans(maps["edge_sources"], addresses), now_mono)
            # Lifted fleet-wide: every address banned here or listed as a hand-made ban.
            listed = self.manual_bans.live()
            publish = sorted(set(changed) | {address for address in addresses if address in listed},
                             key=ipaddress.IPv4Address)
            if not check:
                _bans.lift_bans(maps["edge_sources"], changed)
        if not check:
            for address in publish:
                self.manual_bans.remove(address)
            if self.fleet_sync is not None and publish:
                self.fleet_sync.publish_manual("unban", publish)
            if publish:
                LOG.warning("hand-made unban of %d addresses (%d banned here)", len(publish), len(changed))
        return {"changed": changed, "published": publish if self.fleet_sync is not None else [],
                "fleet": self.fleet_sync is not None}


class _Handler(socketserver.StreamRequestHandler):
    timeout = REQUEST_TIMEOUT_SEC

    def handle(self):
        try:
            raw = self.rfile.readline(MAX_REQUEST_BYTES + 1)
            if len(raw) > MAX_REQUEST_BYTES:
                raise RequestError("the request is larger than %d bytes" % MAX_REQUEST_BYTES)
            answer = self.server.control.handle(json.loads(raw))
            answer["ok"] = True
        except (RequestError, ValueError) as exc:
            answer = {"ok": False, "error": str(exc)}
        except Exception as exc:  # pylint: disable=broad-except
            LOG.error("control request failed: %s", exc)
            answer = {"ok": False, "error": "%s: %s" % (type(exc).__name__, exc)}
        self.wfile.write(json.dumps(answer).encode() + b"\n")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve(control: Control, path: str):
    """Listen on the Unix socket ``path`` (0600; a stale socket file is replaced) from a daemon
    thread. Returns (server, thread); ``server.shutdown()`` stops it."""
    folder = os.path.dirname(path)
    if folder and not os.path.isdir(folder):
        os.makedirs(folder, mode=0o700)
    # A socket file no agent answers on is a previous run's: replaced. One that answers is in use
    # (bind then fails, and says so).
    with socket.socket(socket.AF_UNIX) as probe:
        if os.path.exists(path) and probe.connect_ex(path) != 0:
            os.unlink(path)
    old_umask = os.umask(0o177)
    try:
        server = _Server(path, _Handler)
    finally:
        os.umask(old_umask)
    server.control = control
    thread = threading.Thread(target=server.serve_forever, name="control", daemon=True)
    thread.start()
    return server, thread
