"""The fleet sync: what this POP learns (port punches, bans, verified players) shared with every
other POP over NATS JetStream, and what they learn applied to this POP's maps.

How (docs/fleet-sync.md has the why):

- **Learning** is a scan of the maps XDP writes, with a cursor: ``edge_punches`` every
  ``punch_scan_interval_sec``, ``edge_sources`` (verified slots) every
  ``sources_scan_interval_sec``; each looks only at the entries XDP touched since the previous
  scan (a punch's last reply; a source's last packet or verified slot). The bans XDP makes
  stay at their POP (a spoofed flood would get a player banned everywhere: scan_sources); the
  bans operators make are published as they are made (publish_manual).
  Each entry's *expiry* (CLOCK_REALTIME ns: a punch's last reply + the punch idle time, a ban's
  end, a verified slot's last packet + the verified idle time) is compared with what the cursor knows (published or imported); an entry is published when it is
  new or its expiry moved later by more than a quarter of its lifetime (a ban: by a second), so
  a busy flow is republished a few times per idle time, not at every packet. The data plane
  needs no change and never waits for the agent.
- **The bus** is one JetStream stream (``fleet_sync.stream``) with one subject per entry,
  ``anycast_edge.fleet.<origin>.<kind>.<key in hex>``, keeping the last message of each subject
  (a key-value bucket in all but name) for at most ``max_age_sec``. Debian 12's nats-server
  (2.9) has no per-message TTL, so each message carries its own expiry and the importer applies
  the remaining lifetime; the stream's age limit only bounds what a POP that was away reads.
- **Importing**: an ordered consumer of every subject, from the start of the stream (catch-up
  after a start or a partition is the same path). Each entry, from another origin, is checked in
  order: well formed, its subject's origin is its payload's, not expired, the origin's import
  rate (token bucket), not on this POP's deny list, a service this POP carries, the origin's
  cap of live imported entries; then written with the remaining lifetime (never more than this
  POP's own idle times) unless this POP already knows it for longer.
- **Failure**: the sync runs in its own thread and event loop; the maps are written only by
  short map updates. With the bus down, scans go on and the publications wait (the cursor moves
  only on JetStream's acknowledgement); the client reconnects forever and the consumer resumes
  from the last stream sequence it saw.

Nothing here logs the credentials (``FleetSyncConfig.password``, the TLS key).
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import json
import logging
import os
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _fleet_stream

from .config import ConfigError

LOG = logging.getLogger(__name__)

KINDS = ("punch", "ban", "verified")
# Why an entry from another POP was not imported (the exporter's reason label).
REFUSALS = ("malformed", "origin_mismatch", "expired", "automatic_ban", "rate_cap", "denied", "unknown_service",
            "size_cap", "not_its_ban")
SUBJECT_ROOT = _fleet_stream.SUBJECT_ROOT
FORMAT_VERSION = 1
# A hand-made ban's lift (unban) is the one message of version 2: an agent that knows only version
# 1 refuses it as malformed rather than read it as a ban.
LIFT_VERSION = 2
NS = 10**9
# XDP's default when edge_config.verified_idle_ns is 0 (DEFAULT_VERIFIED_IDLE_NS in xdp_edge.c).
DEFAULT_VERIFIED_IDLE_NS = 600 * NS
# A ban's expiry is exact; a second covers the two clock readings of an imported ban.
BAN_SLACK_NS = NS
PROTO_NAMES = {number: name for name, number in abi.IPPROTO.items()}
# Messages published at once (each waits for its acknowledgement): enough for a burst of
# thousands of punches per second, few enough not to flood a server that just came back.
PUBLISH_WINDOW = 256
PUBLISH_TIMEOUT_SEC = 2.0
RECONNECT_WAIT_SEC = 0.5
# After a publication JetStream did not acknowledge (no stream leader for a moment, no quorum).
PUBLISH_RETRY_SEC = 0.2
# At most this share of a CPU goes to each of the two scans: with full maps the scans slow down
# (docs/fleet-sync.md has the cost) rather than take the POP's CPU.
SCAN_CPU_SHARE = 0.25
# How often the agent makes sure its consumer still exists (see _watch_consumer).
CONSUMER_CHECK_SEC = 2.0
_ORIGIN = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
VERIFIED_KEY = struct.Struct("<4sI")   # source address, service id
# Proofs that stay at the POP that saw them (enum edge_verify_proof): SYN authentication's RST
# proves that the address has a TCP stack, and any host without a stateful firewall answers a
# SYN-ACK to a SYN spoofed in its name with it (docs/tcp-protection.md, "Limits"): shared, a
# spoofer's verifications at one POP would let its flood in those names through every POP. A
# player it verified is shared once the game server's reply on its flow proves it (punch).
LOCAL_PROOFS = frozenset([abi.VERIFY_PROOFS.index("syn_auth")])


class Malformed(ValueError):
    """A message that is not an entry this version understands."""


def read_password(settings) -> str:
    """The login's password: ``password``, or the first line of ``password_file`` ($VARIABLES
    expanded: a systemd credential is "$CREDENTIALS_DIRECTORY/<name>"). The error names the file,
    never its content."""
    if not settings.password_file:
        return settings.password
    path = os.path.expandvars(settings.password_file)
    try:
        with open(path, encoding="utf-8") as handle:
            password = handle.readline().rstrip("\r\n")
    except OSError as exc:
        raise ConfigError("fleet_sync.password_file: cannot read %s (%s)" % (path, exc.strerror)) from None
    if not password:
        raise ConfigError("fleet_sync.password_file: %s is empty" % path)
    return password


def origin_token(pop_name: str) -> str:
    """The POP's name as one subject token ('.' separates tokens: it becomes '~', which no
    host name holds). NATS permissions can then tie a POP's credentials to its own subjects."""
    if not _ORIGIN.match(pop_name or ""):
        raise ValueError("pop_name %r cannot name a POP on the bus (letters, digits, '.', '_', '-')" % (pop_name,))
    return pop_name.replace(".", "~")


@dataclass(frozen=True)
class Entry:
    """One thing a POP learned. key: punch: struct punch_key; ban: the address (4 bytes);
    verified: VERIFIED_KEY (address, service id). expires_ns: CLOCK_REALTIME."""
    kind: str
    key: bytes
    expires_ns: int
    origin: str
    proof: int = 0       # verified: enum edge_verify_proof at the origin
    manual: bool = False  # ban: made by an operator (playbooks/ban.yml), listed by every POP's exporter
    lifted: bool = False  # ban: an operator's unban, which ends the address's ban at every POP

    @property
    def label(self) -> str:
        """The kind as the exporter counts it (a lift is an "unban")."""
        return "unban" if self.lifted else self.kind

    @property
    def address(self) -> bytes:
        """The player's (remote) address the entry is about."""
        return self.key[4:8] if self.kind == "punch" else self.key[:4]

    def subject(self, root=SUBJECT_ROOT) -> str:
        return "%s.%s.%s.%s" % (root, origin_token(self.origin), self.kind, self.key.hex())

    def payload(self) -> bytes:
        body = {"v": LIFT_VERSION if self.lifted else FORMAT_VERSION, "origin": self.origin, "kind": self.kind,
                "expires_ns": self.expires_ns}
        if self.lifted:
            body["lifted"] = True
        elif self.manual:
            body["manual"] = True
        if self.kind == "punch":
            service_addr, remote_addr, service_port, remote_port, proto = abi.PUNCH_KEY.unpack(self.key)
            body.update(proto=PROTO_NAMES.get(proto, proto),
                        service="%s:%d" % (socket.inet_ntoa(service_addr), struct.unpack("!H", service_port)[0]),
                        remote="%s:%d" % (socket.inet_ntoa(remote_addr), struct.unpack("!H", remote_port)[0]))
        elif self.kind == "ban":
            body["address"] = socket.inet_ntoa(self.key)
        else:
            address, service_id = VERIFIED_KEY.unpack(self.key)
            body.update(address=socket.inet_ntoa(address), service_id=service_id,
                        proof=abi.VERIFY_PROOFS[self.proof] if self.proof < len(abi.VERIFY_PROOFS) else "none")
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _endpoint(text):
    address, dummy, port_text = str(text).rpartition(":")
    number = int(port_text)
    if not 0 <= number <= 0xFFFF:
        raise ValueError("port %d" % number)
    return address, number


def _not_a_number(constant):
    """json.loads' hook for Infinity, -Infinity and NaN, which Python's JSON reads but JSON has not."""
    raise Malformed("%s is not a number" % constant)


def _integer(value, what):
    """An integer of the message (a float, even 1e400 which is infinite, or a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise Malformed("%s %r is not an integer" % (what, value))
    return value


def decode(subject: str, payload: bytes) -> Entry:
    """The entry a message carries. Malformed if anything is off; ValueError subclasses only.
    The subject's origin token is returned as the entry's origin when the payload agrees."""
    tokens = subject.split(".")
    root = SUBJECT_ROOT.split(".")
    if len(tokens) != len(root) + 3 or tokens[:len(root)] != root:
        raise Malformed("subject %r" % subject)
    try:
        body = json.loads(payload, parse_constant=_not_a_number)
        if not isinstance(body, dict) or body.get("v") not in (FORMAT_VERSION, LIFT_VERSION):
            raise Malformed("version")
        kind, origin, expires_ns = body["kind"], str(body["origin"]), _integer(body["expires_ns"], "expires_ns")
        if kind != tokens[-2] or kind not in KINDS:
            raise Malformed("kind %r" % kind)
        lifted = body.get("lifted") is True
        if lifted != (body["v"] == LIFT_VERSION) or (lifted and kind != "ban"):
            raise Malformed("a lift is a version %d ban" % LIFT_VERSION)
        proof = 0
        if kind == "punch":
            service_addr, service_port = _endpoint(body["service"])
            remote_addr, remote_port = _endpoint(body["remote"])
            key = abi.pack_punch_key(body["proto"], service_addr, service_port, remote_addr, remote_port)
            if body["proto"] not in ("udp", "tcp"):
                raise Malformed("proto %r" % body["proto"])
        elif kind == "ban":
            key = abi.ipv4(body["address"])
        else:
            service_id = _integer(body["service_id"], "service_id")
            if not 0 < service_id < 1 << 32:
                raise Malformed("service_id %r" % service_id)
            key = VERIFIED_KEY.pack(abi.ipv4(body["address"]), service_id)
            proof = abi.VERIFY_PROOFS.index(body.get("proof", "none")) if body.get("proof") in abi.VERIFY_PROOFS else 0
    except Malformed:
        raise
    except (ValueError, KeyError, TypeError, OSError, OverflowError, struct.error) as exc:
        raise Malformed(str(exc)) from None
    if key.hex() != tokens[-1]:
        raise Malformed("the subject's key is not the payload's")
    return Entry(kind, key, expires_ns, origin, proof, manual=kind == "ban" and body.get("manual") is True,
                 lifted=lifted)


class OriginMismatch(ValueError):
    """The payload names another POP than the subject it was published on."""


def check_origin(subject: str, entry: Entry) -> None:
    if origin_token(entry.origin) != subject.split(".")[-3]:
        raise OriginMismatch(entry.origin)


# ---- pure parts: the cursor and the import caps ------------------------------------------------

def slack_ns(kind: str, lifetime_ns: int) -> int:
    """How much later an entry's expiry must move before it is published again."""
    return BAN_SLACK_NS if kind == "ban" else max(lifetime_ns // 4, NS)


class Cursor:
    """What the bus already has of each (kind, key): the expiry published (or imported). Pure.

    ``changes`` says which of the entries read from the maps are news; ``forget_expired`` keeps
    it from growing past the live entries.
    """

    def __init__(self):
        self.known = {}

    def changes(self, kind, expiries, lifetime_ns):
        """[(key, expiry)] of ``expiries`` ({key: expiry ns}) the bus does not have, or has with an
        expiry earlier by more than the slack; those are noted as known."""
        slack = slack_ns(kind, lifetime_ns)
        known = self.known
        news = []
        for key, expires in expiries.items():
            had = known.get((kind, key))
            if had is None or expires > had + slack:
                known[(kind, key)] = expires
                news.append((key, expires))
        return news

    def note(self, kind, key, expires):
        """An imported entry: the bus has it (it came from there)."""
        if expires > self.known.get((kind, key), 0):
            self.known[(kind, key)] = expires

    def forget_expired(self, now_ns):
        for item in [item for item, expires in self.known.items() if expires <= now_ns]:
            del self.known[item]


class ImportCaps:
    """Per origin POP: a token bucket of entries per second and a cap of live imported entries. Pure
    (the caller gives the time).

    An origin at its cap is refused at its whole rate, so refusing costs O(log n), not a walk of
    the live entries: those are also kept in a heap by expiry, and only the expired ones at its
    top are looked at (a walk of 50,000 entries per refusal took 1.2 ms of CPU: at the default
    1,000 entries/s, more than a whole CPU for the agent, whose other threads share its GIL).
    """

    def __init__(self, rate_per_sec: float, burst: int, max_entries: int):
        self.rate = rate_per_sec
        self.burst = burst
        self.max_entries = max_entries
        self._buckets = {}           # origin -> [tokens, at_ns]
        self.live = collections.defaultdict(dict)   # origin -> {(kind, key): expires_ns}
        # origin -> [(expires_ns, (kind, key))]: a min-heap; an item admitted again (a later
        # expiry) leaves its older pair behind, recognised as stale by its expiry.
        self._expiries = collections.defaultdict(list)

    def take_token(self, origin: str, now_ns: int) -> bool:
        bucket = self._buckets.get(origin)
        if bucket is None:
            bucket = self._buckets[origin] = [float(self.burst), now_ns]
        tokens = min(float(self.burst), bucket[0] + (now_ns - bucket[1]) / NS * self.rate)
        bucket[1] = now_ns
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def has_room(self, origin: str, item, now_ns: int, renewed=None) -> bool:
        """renewed(item): the expiry (REALTIME ns) an entry has now at this POP, or None - asked
        of an entry whose imported lifetime is over, before its place is given back: an imported
        verification lives on here as long as its source's own packets refresh its slot, and goes
        on counting under its origin's cap."""
        live = self.live[origin]
        if item in live or len(live) < self.max_entries:
            return True
        expiries = self._expiries[origin]
        while expiries and expiries[0][0] <= now_ns:
            expires, old = heapq.heappop(expiries)
            if live.get(old) == expires:
                later = renewed(old) if renewed is not None else None
                if later is not None and later > now_ns:
                    live[old] = later
                    heapq.heappush(expiries, (later, old))
                else:
                    del live[old]
        return len(live) < self.max_entries

    def admit(self, origin: str, item, expires_ns: int) -> None:
        live, expiries = self.live[origin], self._expiries[origin]
        live[item] = expires_ns
        heapq.heappush(expiries, (expires_ns, item))
        if len(expiries) > 2 * len(live) + 1024:
            # Mostly stale pairs (items admitted again and again): rebuilt from the live ones.
            expiries[:] = [(expires, live_item) for live_item, expires in live.items()]
            heapq.heapify(expiries)


def realtime_offset_ns() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC (the clock bpf_ktime_get_ns() reads), now."""
    return time.time_ns() - time.monotonic_ns()


# ---- reading what XDP learned --------------------------------------------------------------------

# Entries per batch read of a scan.
SCAN_CHUNK = 16384


@dataclass
class Lifetimes:
    """This POP's lifetimes, from edge_config (edge_rules writes them)."""
    punch_idle_ns: int
    ban_sec: int
    verified_idle_ns: int

    @classmethod
    def read(cls, config_map):
        config = config_map.lookup(abi.U32.pack(0))
        return cls(abi.config_member(config, "punch_idle_ns"), abi.config_member(config, "ban_sec"),
                   abi.config_member(config, "verified_idle_ns") or DEFAULT_VERIFIED_IDLE_NS)


def punch_expiries(chunks, idle_ns, offset_ns, since_ns=0):
    """{punch key: expiry (REALTIME ns)} of edge_punches read as lookup_batch_chunks, for the
    punches whose last reply is at or after ``since_ns`` (monotonic) only."""
    key_size = abi.PUNCH_KEY.size
    base = offset_ns + idle_ns
    expiries = {}
    for count, keys, values in chunks:
        seen = memoryview(values).cast("Q")[:count]
        for index in [index for index, last in enumerate(seen) if last >= since_ns]:
            expiries[keys[index * key_size:(index + 1) * key_size]] = base + seen[index]
    return expiries


def source_expiries(chunks, mono_now_ns, offset_ns, verified_idle_ns, since_ns=0):
    """({address: ban expiry}, {VERIFIED_KEY: (expiry, proof)}) of edge_sources read as
    lookup_batch_chunks: live bans and live verified slots, of the sources XDP touched at or after
    ``since_ns`` (monotonic: a packet counted, a ban made, a slot verified or refreshed), read as
    strided words of each chunk rather than unpacked entry by entry."""
    bans, verified = {}, {}
    for count, keys, values in chunks:
        words = memoryview(values).cast("Q")
        stride = abi.SOURCE_WORDS
        touched = map(max, words[abi.SOURCE_WORD["last_seen_ns"]::stride],
                      *(words[active::stride] for dummy, active in abi.SOURCE_SLOT_WORDS))
        for index in [index for index, last in enumerate(touched) if last >= since_ns][:count]:
            base = index * stride
            address = keys[index * 4:index * 4 + 4]
            until = words[base + abi.SOURCE_WORD["ban_until_ns"]]
            if until > mono_now_ns:
                bans[address] = until + offset_ns
            for ids_word, active_word in abi.SOURCE_SLOT_WORDS:
                ids = words[base + ids_word]
                service_id = ids & 0xFFFFFFFF
                if not service_id:
                    continue
                active = words[base + active_word]
                if active + verified_idle_ns > mono_now_ns:
                    verified[VERIFIED_KEY.pack(address, service_id)] = (active + verified_idle_ns + offset_ns, ids >> 32)
    return bans, verified


# ---- the sync ----------------------------------------------------------------------------------

class FleetSync:
    """The POP's side of the fleet's state: scans, publishes, imports. ``run(stopping)`` is a
    thread's target; everything else is read by the exporter through ``snapshot``."""

    def __init__(self, settings, pop_name: str, edge_maps, manual_bans=None):
        self.settings = settings
        # The hand-made bans this POP knows (control.ManualBans): noted as they come and go on the bus.
        self.manual_bans = manual_bans
        self.pop_name = pop_name
        self.token = origin_token(pop_name)
        self.edge_maps = edge_maps
        self.cursor = Cursor()
        self.caps = ImportCaps(settings.import_rate_per_pop, settings.import_burst_per_pop,
                               settings.import_max_entries_per_pop)
        self.lock = threading.Lock()
        self.imported = collections.Counter()     # (origin, kind)
        self.refused = collections.Counter()      # (origin, kind, reason)
        self.published = collections.Counter()    # kind
        self.publish_errors = 0
        self.scan_errors = 0
        self.import_errors = 0
        self.connected = False
        self.last_scan_sec = {}                   # "punches" / "sources" -> seconds the last scan took
        self.last_sequence = 0                    # the stream's last sequence this POP read
        self.outbox = {}                          # (kind, key) -> Entry waiting for the bus
        self._services = None                     # (keys, ids) of edge_services, read with the config
        self._lifetimes = None
        self._errors = {}                         # what was last logged, per place (logged once)
        self._news = None                         # asyncio.Event: the outbox got something (made in run)
        self._loop = None                         # the sync's event loop (run), for other threads' news
        self._caught_up = None                    # asyncio.Event: the stream was read to its end once
        self._catch_up_to = 0                     # ... namely to this sequence
        # Per map: the monotonic time the last scan started; entries XDP has not touched since
        # were read by it (a scan reads only what is newer: its cost is mostly the map read).
        self._since = {}
        # {address: {origin: ban end, monotonic ns}}: the bans this POP imported from each origin.
        # A lift from the bus ends only its origin's ban here (_lift), never one this POP's XDP or
        # operator made, nor another POP's. Read and written by the sync's thread only.
        self._imported_bans = {}

    # ---- learning --------------------------------------------------------------------------

    def _refresh_local_state(self, maps):
        self._lifetimes = Lifetimes.read(maps["edge_config"])
        keys, ids = set(), set()
        for key, value in maps["edge_services"].lookup_batch():
            keys.add(key[:7])        # address, port, proto: a punch key's service part
            ids.add(abi.SERVICE_VALUE.unpack(value)[0])
        self._services = (keys, ids)

    def scan_punches(self) -> list:
        """Queue the punches learned since the last scan; returns them."""
        started = time.monotonic()
        # What XDP wrote from now on is read by this scan or the next one.
        scan_ns = time.monotonic_ns()
        with self.edge_maps.open("edge_config", "edge_services", "edge_punches") as maps:
            self._refresh_local_state(maps)
            chunks = maps["edge_punches"].lookup_batch_chunks(chunk_size=SCAN_CHUNK)
        if "punch" not in self.settings.kinds:
            return []
        idle = self._lifetimes.punch_idle_ns
        expiries = punch_expiries(chunks, idle, realtime_offset_ns(), self._since.get("punches", 0))
        news = self.cursor.changes("punch", expiries, idle)
        self._queue("punch", news)
        self._since["punches"] = scan_ns
        self.last_scan_sec["punches"] = time.monotonic() - started
        return news

    def scan_sources(self) -> list:
        """Queue the verified slots learned since the last scan; returns them.

        The bans XDP makes by itself (a source over its rate limit) stay at this POP: a UDP
        source address is anyone's to write, so a flood spoofed in a player's name gets the
        player banned where the flood arrives - shared, at every POP, including the one the
        player's own packets reach (anycast takes a real flooder to the same POP anyway). The
        fleet shares the bans operators make (publish_manual), which no packet can forge."""
        started = time.monotonic()
        scan_ns = time.monotonic_ns()
        with self.edge_maps.open("edge_config", "edge_services", "edge_sources") as maps:
            self._refresh_local_state(maps)
            chunks = maps["edge_sources"].lookup_batch_chunks(chunk_size=SCAN_CHUNK)
        offset = realtime_offset_ns()
        dummy_bans, verified = source_expiries(chunks, time.monotonic_ns(), offset,
                                               self._lifetimes.verified_idle_ns, self._since.get("sources", 0))
        news = []
        if "verified" in self.settings.kinds:
            verified = {key: value for key, value in verified.items() if value[1] not in LOCAL_PROOFS}
            changed = self.cursor.changes("verified", {key: expires for key, (expires, dummy) in verified.items()},
                                          self._lifetimes.verified_idle_ns)
            self._queue("verified", changed, proofs={key: proof for key, (dummy, proof) in verified.items()})
            news += changed
        self.cursor.forget_expired(time.time_ns())
        self._forget_ended_bans(time.monotonic_ns())
        self._since["sources"] = scan_ns
        self.last_scan_sec["sources"] = time.monotonic() - started
        return news

    def _queue(self, kind, news, proofs=None):
        limit = time.time_ns() + int(self.settings.max_age_sec * NS)
        with self.lock:
            for key, expires in news:
                self.outbox[(kind, key)] = Entry(kind, key, min(expires, limit), self.pop_name,
                                                 (proofs or {}).get(key, 0))
        if news and self._news is not None:
            self._news.set()     # the scans run in the sync's event loop: wake the publisher now

    def publish_manual(self, what, addresses, expires_ns=None):
        """Queue an operator's ban (``what`` "ban", until ``expires_ns``, CLOCK_REALTIME) or lift
        ("unban") of ``addresses`` for the bus. Called from the control socket's thread; the
        caller has written (or lifted) the bans in this POP's map."""
        now = time.time_ns()
        with self.lock:
            for address in addresses:
                key = abi.ipv4(address)
                if what == "ban":
                    expires = min(expires_ns, now + int(self.settings.max_age_sec * NS))
                    entry = Entry("ban", key, expires, self.pop_name, manual=True)
                    self.cursor.note("ban", key, expires)
                else:
                    # The lift lives on the bus as long as any ban it ends could (max_age_sec), and
                    # replaces this POP's ban message of the address there (one message per subject).
                    entry = Entry("ban", key, now + int(self.settings.max_age_sec * NS), self.pop_name, lifted=True)
                    self.cursor.known.pop(("ban", key), None)
                self.outbox[("ban", key)] = entry
        loop, news = self._loop, self._news
        if loop is not None and news is not None:
            loop.call_soon_threadsafe(news.set)

    # ---- importing -------------------------------------------------------------------------

    def import_message(self, subject: str, payload: bytes):
        """Apply one message from the bus. Returns "imported", "known" (this POP has it for as
        long already), "own", or a reason of REFUSALS."""
        origin_part = subject.split(".")[-3] if subject.count(".") >= 3 else "?"
        if origin_part == self.token:
            if self.manual_bans is not None and subject.split(".")[-2] == "ban":
                self._note_own_ban(subject, payload)
            return "own"
        try:
            entry = decode(subject, payload)
            check_origin(subject, entry)
        except OriginMismatch:
            return self._refuse(origin_part, subject.split(".")[-2], "origin_mismatch")
        except (Malformed, ValueError):
            kind = subject.split(".")[-2] if subject.count(".") >= 3 else "?"
            return self._refuse(origin_part, kind if kind in KINDS else "unknown", "malformed")
        now_real = time.time_ns()
        remaining = entry.expires_ns - now_real
        if remaining <= 0:
            return self._refuse(entry.origin, entry.label, "expired")
        if entry.kind == "ban" and not (entry.manual or entry.lifted):
            # An automatic ban (an agent of before this rule published them): see scan_sources.
            return self._refuse(entry.origin, entry.label, "automatic_ban")
        if not self.caps.take_token(entry.origin, time.monotonic_ns()):
            return self._refuse(entry.origin, entry.label, "rate_cap")
        with self.edge_maps.open("edge_config", "edge_services", "edge_deny_v4", "edge_punches",
                                 "edge_sources") as maps:
            if self._lifetimes is None:
                self._refresh_local_state(maps)
            if maps["edge_deny_v4"].lookup(abi.LPM_V4_KEY.pack(32, entry.address)) is not None:
                return self._refuse(entry.origin, entry.label, "denied")
            if not self._carries_service(entry):
                return self._refuse(entry.origin, entry.label, "unknown_service")
            item = (entry.kind, entry.key)
            if entry.lifted and entry.origin not in self._imported_bans.get(entry.address, {}):
                return self._refuse(entry.origin, entry.label, "not_its_ban")
            if not self.caps.has_room(entry.origin, item, now_real,
                                      renewed=lambda old: self._verified_until(maps["edge_sources"], old)):
                return self._refuse(entry.origin, entry.label, "size_cap")
            # What this POP keeps of it, whatever the message claims: the cursor and the caps go
            # by that too (an expiry years ahead would keep this POP from ever publishing the
            # same entry learned here, and hold its place under the origin's cap).
            remaining = min(remaining, self._lifetime_here_ns(entry.kind))
            written = self._apply(maps, entry, remaining)
        self._note_manual(entry, now_real + remaining)
        if entry.lifted:
            self.cursor.known.pop(item, None)
        else:
            self.cursor.note(entry.kind, entry.key, now_real + remaining)
        if not written:
            return "known"
        self.caps.admit(entry.origin, item, now_real + remaining)
        with self.lock:
            self.imported[(entry.origin, entry.label)] += 1
        return "imported"

    def _note_manual(self, entry, expires_ns=None):
        """expires_ns: when the ban ends here (an imported one: at most max_age_sec), else the entry's."""
        if self.manual_bans is None or entry.kind != "ban":
            return
        address = socket.inet_ntoa(entry.address)
        if entry.lifted:
            self.manual_bans.remove(address, origin=entry.origin)
        elif entry.manual:
            self.manual_bans.add(address, entry.expires_ns if expires_ns is None else expires_ns, entry.origin)

    def _note_own_ban(self, subject, payload):
        """This POP's own hand-made bans and lifts, read back from the bus: after a restart the
        agent lists again the bans it made before."""
        try:
            entry = decode(subject, payload)
        except (Malformed, ValueError):
            return
        if entry.expires_ns > time.time_ns():
            self._note_manual(entry)

    def _carries_service(self, entry) -> bool:
        keys, ids = self._services
        if entry.kind == "punch":
            # struct punch_key's service address and port, and its proto, as a service_key's.
            return entry.key[0:4] + entry.key[8:10] + entry.key[12:13] in keys
        if entry.kind == "verified":
            return VERIFIED_KEY.unpack(entry.key)[1] in ids
        return True

    def _refuse(self, origin, kind, reason):
        with self.lock:
            self.refused[(origin, kind, reason)] += 1
        return reason

    def _lifetime_here_ns(self, kind) -> int:
        """The longest an imported entry of the kind lives here: a punch or a verification this
        POP's own idle time, a ban the bus's max_age_sec."""
        if kind == "punch":
            return self._lifetimes.punch_idle_ns
        if kind == "verified":
            return self._lifetimes.verified_idle_ns
        return int(self.settings.max_age_sec * NS)

    def _apply(self, maps, entry, remaining_ns) -> bool:
        """Write the entry with its remaining lifetime (at most _lifetime_here_ns); False when this
        POP already has it for as long."""
        lifetimes = self._lifetimes
        now = time.monotonic_ns()
        if entry.kind == "punch":
            idle = lifetimes.punch_idle_ns
            last_seen = now - idle + remaining_ns
            punches = maps["edge_punches"]
            present = punches.lookup(entry.key)
            if present is not None and abi.PUNCH_VALUE.unpack(present)[0] >= last_seen:
                return False
            punches.update(entry.key, abi.PUNCH_VALUE.pack(last_seen))
            return True
        sources = maps["edge_sources"]
        address = entry.address
        raw = sources.lookup(address)
        state = abi.SourceState.unpack(raw) if raw is not None else abi.SourceState()
        if entry.lifted:
            if not self._lift(state, entry, now):
                return False
        elif entry.kind == "ban":
            until = now + remaining_ns
            self._imported_bans.setdefault(address, {})[entry.origin] = max(
                until, self._imported_bans.get(address, {}).get(entry.origin, 0))
            if state.ban_until_ns >= until:
                return False
            state.ban_until_ns = until
        else:
            idle = lifetimes.verified_idle_ns
            active = now - idle + remaining_ns
            service_id = VERIFIED_KEY.unpack(entry.key)[1]
            if not _verify_slot(state, service_id, entry.proof, active, now, idle):
                return False
        # The whole entry is written back: XDP's counts that land between the read and this
        # write are lost (a few packets of top-talker counters), never a ban or a verification.
        sources.update(address, state.pack())
        return True

    def _verified_until(self, sources, item):
        """When an imported verification ends here now (REALTIME ns), or None: XDP refreshes a
        verified slot at each packet of its source (source_verified), so the import's own lifetime
        says nothing of how long it stays. Punches and bans end when the import said (a punch
        refreshed here is this POP's own learning: the game server answered through it)."""
        kind, key = item
        if kind != "verified":
            return None
        address, service_id = VERIFIED_KEY.unpack(key)
        raw = sources.lookup(address)
        if raw is None:
            return None
        for slot_service, dummy, active in abi.SourceState.unpack(raw).verified:
            if slot_service == service_id:
                return active + self._lifetimes.verified_idle_ns + realtime_offset_ns()
        return None

    def _lift(self, state, entry, now) -> bool:
        """An operator's unban from another POP ends here only the ban this POP imported from that
        POP: if the address's ban is still the one written from it (not extended since by this
        POP's XDP, its operator or a later ban of another POP), it falls back to the latest ban
        imported from the others, else ends. A lift from anywhere of every ban would let one POP
        (its operator's unban.yml with -l, or its login in other hands) lift every POP's own bans
        of an attacker. False when the ban here is not changed."""
        origins = self._imported_bans.get(entry.address, {})
        theirs = origins.pop(entry.origin, None)
        if not origins:
            self._imported_bans.pop(entry.address, None)
        if theirs is None or state.ban_until_ns != theirs or state.ban_until_ns <= now:
            return False
        others = [until for until in origins.values() if until > now]
        state.ban_until_ns = max(others) if others else 0
        return True

    def _forget_ended_bans(self, now):
        for address in [address for address, origins in self._imported_bans.items()
                        if all(until <= now for until in origins.values())]:
            del self._imported_bans[address]

    # ---- the exporter's view -----------------------------------------------------------------

    def snapshot(self) -> dict:
        with self.lock:
            return {"imported": dict(self.imported), "refused": dict(self.refused),
                    "published": dict(self.published), "publish_errors": self.publish_errors,
                    "scan_errors": self.scan_errors, "import_errors": self.import_errors,
                    "connected": self.connected, "backlog": len(self.outbox),
                    "scan_seconds": dict(self.last_scan_sec)}

    # ---- the thread and its event loop -------------------------------------------------------

    def run(self, stopping: threading.Event) -> None:
        asyncio.run(self._main(stopping))

    async def _main(self, stopping):
        self._news = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._caught_up = asyncio.Event()
        tasks = [asyncio.create_task(self._every(self.settings.punch_scan_interval_sec, self.scan_punches, "punches")),
                 asyncio.create_task(self._every(self.settings.sources_scan_interval_sec, self.scan_sources, "sources")),
                 asyncio.create_task(self._bus())]
        while not stopping.is_set():
            await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _log_once(self, where, exc):
        text = str(exc) or type(exc).__name__
        if self._errors.get(where) != text:
            LOG.error("fleet sync: %s: %s", where, text)
            self._errors[where] = text

    def _log_recovered(self, where):
        if self._errors.pop(where, None) is not None:
            LOG.warning("fleet sync: %s works again", where)

    async def _every(self, interval, scan, what):
        """Scan every ``interval``, or less often when a scan takes long (full maps): a scan's
        share of a CPU stays under SCAN_CPU_SHARE. A failed scan (no pins during an upgrade) is
        retried."""
        # Not before the stream was read up to where it stood at the first subscription: the maps
        # may hold what this POP imported before a restart, which is the others' to publish.
        await self._caught_up.wait()
        while True:
            started = time.monotonic()
            try:
                scan()
                self._log_recovered("scanning " + what)
            except Exception as exc:  # pylint: disable=broad-except
                with self.lock:
                    self.scan_errors += 1
                self._log_once("scanning " + what, exc)
            took = time.monotonic() - started
            await asyncio.sleep(max(interval - took, took * (1 / SCAN_CPU_SHARE - 1)))

    def _connect_options(self):
        settings = self.settings
        options = dict(servers=settings.servers, name="anycast-edge-agent " + self.pop_name,
                       allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=RECONNECT_WAIT_SEC,
                       connect_timeout=2, ping_interval=2, max_outstanding_pings=2,
                       error_cb=self._on_error, disconnected_cb=self._on_disconnected,
                       reconnected_cb=self._on_reconnected)
        if settings.user:
            options.update(user=settings.user, password=read_password(settings))
        if settings.tls_ca_file or settings.tls_cert_file or any(url.startswith("tls://") for url in settings.servers):
            # pylint: disable-next=import-outside-toplevel
            from .tls import client_ssl_context
            options["tls"] = client_ssl_context(settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file)
        return options

    async def _on_error(self, exc):
        self._log_once("the bus", exc)

    async def _on_disconnected(self):
        self.connected = False
        LOG.warning("fleet sync: disconnected from the bus; the maps keep what they have, publications wait")

    async def _on_reconnected(self):
        self.connected = True
        self._log_recovered("the bus")
        LOG.warning("fleet sync: reconnected to the bus")

    async def _bus(self):
        """Connect (forever), make sure the stream exists, consume it, publish the outbox."""
        # pylint: disable-next=import-outside-toplevel
        import nats
        while True:
            client = None
            try:
                client = await nats.connect(**self._connect_options())
                self._log_recovered("connecting")
                js = client.jetstream(timeout=PUBLISH_TIMEOUT_SEC)
                await self._ensure_stream(js)
                subscription = [await self._subscribe(js)]
                if not self._caught_up.is_set():
                    self._catch_up_to = (await js.stream_info(self.settings.stream)).state.last_seq
                    if self.last_sequence >= self._catch_up_to:
                        self._caught_up.set()
                # On the bus: the stream is there and this POP consumes it.
                self.connected = True
                watchdog = asyncio.create_task(self._watch_consumer(client, js, subscription))
                try:
                    await self._publish_forever(client, js)
                finally:
                    watchdog.cancel()
                    await _quietly(subscription[0].unsubscribe())
            except asyncio.CancelledError:
                if client is not None:
                    await client.close()
                raise
            except Exception as exc:  # pylint: disable=broad-except
                self._log_once("connecting", exc)
            self.connected = False
            if client is not None:
                try:
                    await client.close()
                except Exception:  # pylint: disable=broad-except
                    pass
            await asyncio.sleep(1.0)

    async def _ensure_stream(self, js):
        # pylint: disable-next=import-outside-toplevel
        from nats.js import api
        from nats.js.errors import NotFoundError  # pylint: disable=import-outside-toplevel
        try:
            await js.stream_info(self.settings.stream)
            return
        except NotFoundError:
            pass
        # Where the roles run (nats_fleet), the stream is theirs (the fleet_stream module, with the
        # stream's own login) and this POP's login may not create it: this fails, and the bus loop
        # retries until the stream is there. A bus of its own (the tests) gets it from here.
        info = await js.add_stream(_fleet_stream.stream_config(api, self.settings.stream, self.settings.max_age_sec,
                                                               self.settings.replicas))
        # A new replicated stream answers publications once its replicas elected a leader.
        for dummy in range(50):
            if info.cluster is None or info.cluster.leader:
                break
            await asyncio.sleep(0.1)
            info = await js.stream_info(self.settings.stream)
        LOG.info("fleet sync: created the stream %s (%d replicas, entries kept %g s at most)", self.settings.stream,
                 self.settings.replicas, self.settings.max_age_sec)

    async def _subscribe(self, js):
        # pylint: disable-next=import-outside-toplevel
        from nats.js import api
        config = api.ConsumerConfig()
        policy = api.DeliverPolicy.ALL
        if self.last_sequence:
            policy = api.DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = self.last_sequence + 1
        return await js.subscribe(SUBJECT_ROOT + ".>", stream=self.settings.stream, cb=self._on_message,
                                  ordered_consumer=True, idle_heartbeat=0.5, deliver_policy=policy, config=config)

    async def _watch_consumer(self, client, js, subscription):
        """The consumer lives on one server (an ordered consumer is ephemeral, one replica). The
        client library recreates it when its heartbeats stop, but a recreation that fails (no
        JetStream quorum for a moment) is not retried for sure: if the consumer cannot be found
        twice in a row, subscribe again from the last sequence read."""
        misses = 0
        while True:
            await asyncio.sleep(CONSUMER_CHECK_SEC)
            if not client.is_connected:
                continue
            try:
                await subscription[0].consumer_info()
                misses = 0
                self._log_recovered("consuming")
                continue
            except Exception as exc:  # pylint: disable=broad-except
                misses += 1
                if misses < 2:
                    continue
                self._log_once("consuming", exc)
            await _quietly(subscription[0].unsubscribe())
            try:
                subscription[0] = await self._subscribe(js)
                misses = 0
                LOG.warning("fleet sync: consuming again from stream sequence %d", self.last_sequence + 1)
            except Exception as exc:  # pylint: disable=broad-except
                self._log_once("consuming", exc)

    async def _on_message(self, msg):
        try:
            self.last_sequence = max(self.last_sequence, msg.metadata.sequence.stream)
            self.import_message(msg.subject, msg.data)
            if self.last_sequence >= self._catch_up_to and self._catch_up_to and not self._caught_up.is_set():
                self._caught_up.set()
            self._log_recovered("importing")
        except Exception as exc:  # pylint: disable=broad-except
            with self.lock:
                self.import_errors += 1
            self._log_once("importing", exc)

    async def _publish_forever(self, client, js):
        while True:
            if client.is_closed:
                raise ConnectionError("the connection closed")
            with self.lock:
                batch = list(itertools.islice(self.outbox.items(), PUBLISH_WINDOW))
            if not batch or not client.is_connected:
                self._news.clear()
                try:
                    await asyncio.wait_for(self._news.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass
                continue
            now = time.time_ns()
            results = await asyncio.gather(*(self._publish(js, entry, now) for dummy, entry in batch),
                                           return_exceptions=True)
            failed = 0
            with self.lock:
                for (item, entry), result in zip(batch, results):
                    if result is True or entry.expires_ns <= now:
                        if self.outbox.get(item) is entry:
                            del self.outbox[item]
                        if result is True:
                            self.published[entry.label] += 1
                    else:
                        failed += 1
                self.publish_errors += failed
            if failed:
                self._log_once("publishing", next(result for result in results if result is not True))
                await asyncio.sleep(PUBLISH_RETRY_SEC)
            else:
                self._log_recovered("publishing")

    @staticmethod
    async def _publish(js, entry, now):
        if entry.expires_ns <= now:
            return False
        await js.publish(entry.subject(), entry.payload(), timeout=PUBLISH_TIMEOUT_SEC)
        return True


async def _quietly(awaitable):
    """Await a clean-up whose failure changes nothing (the connection is gone anyway)."""
    try:
        await awaitable
    except Exception:  # pylint: disable=broad-except
        pass


def _verify_slot(state, service_id, proof, active_ns, now_ns, idle_ns) -> bool:
    """Put a verification into a source's slots the way XDP's source_verify picks one (the
    service's own slot, else a free or expired one, else the least recently active); False when
    the service's slot is already active as recently."""
    slots = list(state.verified)
    chosen = None
    for index, (slot_service, dummy, slot_active) in enumerate(slots):
        if slot_service == service_id:
            if slot_active >= active_ns:
                return False
            chosen = index
            break
    if chosen is None:
        free = [index for index, (slot_service, dummy, slot_active) in enumerate(slots)
                if not slot_service or not (slot_active >= now_ns or now_ns - slot_active < idle_ns)]
        chosen = free[0] if free else min(range(len(slots)), key=lambda index: slots[index][2])
    slots[chosen] = (service_id, proof, active_ns)
    state.verified = slots
    return True
