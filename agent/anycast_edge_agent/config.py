"""The agent's configuration: one JSON (or YAML) file rendered by the edge_agent role from inventory.

Everything has a default except the interface, the tunnel address, the listen address and the
services; ``load`` checks every value and names the one that is wrong.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import dataclass, field

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _rules

PROBES = ("a2s", "tcp", "udp", "none")


class ConfigError(ValueError):
    """The configuration file is unusable; the text names the setting."""


@dataclass
class Service:
    name: str
    id: int
    address: str                 # the anycast address players use
    protocol: str                # udp | tcp | icmp
    port: int
    backend: str = ""            # inventory name of the backend host (for labels)
    a2s_cache: bool = False
    a2s_refresh_sec: float = 5.0
    a2s_max_age_sec: float = 30.0
    probe: str = "a2s"           # how health is probed: a2s | tcp | udp | none
    # Where probes are sent. Default: the service's own address and port, which the POP's kernel
    # routes to the backend through the IPIP tunnel (a /32 per service: see README "reaching").
    probe_address: str = ""
    probe_port: int = 0
    # Who puts the service under attack (auto: this agent, attack.py) and, for auto, when:
    # {unverified_packets_per_sec, enter_after_sec, leave_after_sec} (validate_inventory resolves
    # the fleet's default under the service's own fields; the defaults are _rules').
    attack_mode: str = _rules.DEFAULT_ATTACK_MODE
    attack_detection: dict = field(default_factory=lambda: dict(_rules.DEFAULT_ATTACK_DETECTION))

    @property
    def probe_target(self) -> tuple[str, int]:
        return (self.probe_address or self.address, self.probe_port or self.port)


@dataclass
class Config:
    iface: str
    tunnel_address: str          # the POP's own address: source of every probe
    listen_address: str          # exporter; the management address, never an anycast address
    listen_port: int = 9591
    pin_root: str = "/sys/fs/bpf/anycast_edge"
    anycast_prefixes: list = field(default_factory=list)
    services: list = field(default_factory=list)
    probe_interval_sec: float = 2.0
    probe_timeout_sec: float = 1.0
    rise: int = 2
    fall: int = 3
    top_clients: int = 10
    # How often the per-client map (top players) is read; scrapes in between reuse the last ranking.
    top_clients_interval_sec: float = 10.0
    # How often the ban and punch maps (up to 262,144 entries each) are walked for their gauges.
    state_maps_interval_sec: float = 5.0
    # BIRD: the static protocol that carries the anycast prefixes (bird_anycast role).
    bird_manage: bool = True
    bird_socket: str = "/run/bird/bird.ctl"
    bird_protocol: str = "anycast_edge_announce"
    drain_state_file: str = "/var/lib/anycast_edge/bird_drain_state"
    # The fleet guard: other POPs' exporters, and how many of them must be announcing before this
    # POP may withdraw (see health.FleetGuard).
    fleet_peers: list = field(default_factory=list)
    min_announcing_peers: int = 1
    # This POP's name in the fleet (inventory_hostname): the tie-break when POPs decide to
    # withdraw at the same time (the lower name goes first). Default: the host name.
    pop_name: str = ""
    # The withdrawal protocol's timing: wait settle (+ up to jitter) after publishing the intent,
    # read the peers within timeout (which must be under half of settle).
    fleet_timeout_sec: float = 1.0
    fleet_settle_sec: float = 3.0
    fleet_jitter_sec: float = 1.0
    # TLS of the exporter (PEM files). With a certificate and key the exporter serves https only;
    # tls_ca_file verifies the peers' exporters (the fleet guard) and, with tls_client_auth,
    # the clients' certificates (Prometheus, the other POPs).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ca_file: str = ""
    tls_client_auth: bool = False
    check_dataplane: bool = True
    # The local control socket (control.py: hand-made bans, playbooks/ban.yml); "": none. The
    # edge_agent role sets /run/anycast-edge-agent/control.sock (its unit's RuntimeDirectory).
    control_socket: str = ""
    # The fleet sync over NATS JetStream (fleet_sync.py); None (no ``fleet_sync`` setting): off.
    fleet_sync: "FleetSyncConfig | None" = None


@dataclass
class FleetSyncConfig:
    """``fleet_sync``: where the fleet's NATS servers are, how this agent logs in, and its caps.

    The password and the TLS key are secrets: ``repr`` leaves the password out, and nothing here
    logs either (docs/fleet-sync.md).
    """
    servers: list                            # nats://host:port or tls://host:port, this POP's own first
    user: str = ""
    password: str = field(default="", repr=False)
    # Or the password in a file, read at each connection: the edge_agent role gives a systemd
    # credential ("$CREDENTIALS_DIRECTORY/nats-password": LoadCredential= in the unit), so that
    # the secret is in no configuration file the agent's user can read. $VARIABLES are expanded.
    password_file: str = ""
    tls_ca_file: str = ""                    # verifies the servers; tls:// servers need it or the system's CAs
    tls_cert_file: str = ""                  # this POP's client certificate (with tls_key_file)
    tls_key_file: str = ""
    stream: str = "ANYCAST_EDGE_FLEET"
    # The stream's replicas when this agent creates it (the first agent to connect does): 3 keeps
    # the fleet's state through the loss of one server of a cluster of three or more.
    replicas: int = 3
    # No entry lives longer on the bus than this (a longer ban is published with this lifetime).
    max_age_sec: float = 3600.0
    # How often the punches (what a moving player needs first) and the sources (bans, verified
    # players) are scanned for what this POP learned.
    punch_scan_interval_sec: float = 0.2
    sources_scan_interval_sec: float = 1.0
    # What one other POP may make this one import: entries per second (with a burst of
    # import_burst_per_pop), and entries alive at once.
    import_rate_per_pop: float = 1000.0
    import_burst_per_pop: int = 5000
    import_max_entries_per_pop: int = 50000
    kinds: list = field(default_factory=lambda: ["punch", "ban", "verified"])


def _positive(name, value, kind=float):
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError("%s: %r is not a number" % (name, value)) from None
    if number <= 0:
        raise ConfigError("%s: must be > 0, not %r" % (name, value))
    return number


def _known_settings(where, raw, known) -> dict:
    """A copy of ``raw``, checked to be a mapping of ``known`` settings only (``where``: its name,
    "" for the file's top level)."""
    prefix = where + ": " if where else ""
    if not isinstance(raw, dict):
        raise ConfigError("%smust be a mapping" % prefix)
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError("%sunknown settings: %s" % (prefix, ", ".join(unknown)))
    return dict(raw)


def _positives(settings, raw, keys, kind=float, where="") -> None:
    """settings[key] = raw[key] checked to be > 0, for each of ``keys`` that ``raw`` gives."""
    for key in keys:
        if key in raw:
            settings[key] = _positive("%s.%s" % (where, key) if where else key, raw[key], kind)


def _address(name, value):
    try:
        return str(ipaddress.IPv4Address(value))
    except (ipaddress.AddressValueError, ValueError):
        raise ConfigError("%s: %r is not an IPv4 address" % (name, value)) from None


def parse(raw: dict) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError("the configuration must be a mapping")
    for key in ("iface", "tunnel_address", "listen_address"):
        if not raw.get(key):
            raise ConfigError("%s: required" % key)
    settings = _known_settings("", raw, Config.__dataclass_fields__)
    settings["tunnel_address"] = _address("tunnel_address", raw["tunnel_address"])
    settings["listen_address"] = _address("listen_address", raw["listen_address"])
    _positives(settings, raw, ("probe_interval_sec", "probe_timeout_sec", "fleet_timeout_sec", "fleet_settle_sec"))
    _positives(settings, raw, ("rise", "fall", "listen_port"), int)
    if "min_announcing_peers" in raw:
        settings["min_announcing_peers"] = int(raw["min_announcing_peers"])
    if "fleet_jitter_sec" in raw:
        settings["fleet_jitter_sec"] = _positive("fleet_jitter_sec", raw["fleet_jitter_sec"]) \
            if raw["fleet_jitter_sec"] else 0.0
    timeout = settings.get("fleet_timeout_sec", Config.fleet_timeout_sec)
    settle = settings.get("fleet_settle_sec", Config.fleet_settle_sec)
    if timeout >= settle / 2:
        raise ConfigError("fleet_timeout_sec: %r must be under half of fleet_settle_sec (%r): a withdrawal "
                          "acts only on answers read within that time" % (timeout, settle))
    settings["pop_name"] = str(raw.get("pop_name") or socket.gethostname())
    _check_tls(settings)
    prefixes = [ipaddress.IPv4Network(prefix) for prefix in raw.get("anycast_prefixes", [])]
    if any(ipaddress.IPv4Address(settings["listen_address"]) in prefix for prefix in prefixes):
        raise ConfigError("listen_address: %s is inside an anycast prefix; the exporter must listen on "
                          "the POP's management address" % settings["listen_address"])
    settings["services"] = [parse_service(index, item) for index, item in enumerate(raw.get("services", []))]
    if raw.get("fleet_sync") is not None:
        settings["fleet_sync"] = parse_fleet_sync(raw["fleet_sync"])
    ids = [service.id for service in settings["services"]]
    if len(ids) != len(set(ids)):
        raise ConfigError("services: service ids must be unique, got %s" % ids)
    return Config(**settings)


def _check_tls(settings) -> None:
    cert, key = settings.get("tls_cert_file", ""), settings.get("tls_key_file", "")
    if bool(cert) != bool(key):
        raise ConfigError("tls_cert_file, tls_key_file: give both or neither (got %r, %r)" % (cert, key))
    if settings.get("tls_client_auth") and not (cert and settings.get("tls_ca_file")):
        raise ConfigError("tls_client_auth: needs tls_cert_file, tls_key_file and tls_ca_file "
                          "(the CA that signs the clients' certificates)")
    if cert and any(url.startswith("http://") for url in settings.get("fleet_peers", [])):
        raise ConfigError("fleet_peers: the exporters serve TLS (tls_cert_file) but a peer is read over http: %s"
                          % [url for url in settings["fleet_peers"] if url.startswith("http://")])


FLEET_KINDS = ("punch", "ban", "verified")


def parse_fleet_sync(raw) -> FleetSyncConfig:
    """``fleet_sync`` checked; the error names the setting (never the password's value)."""
    where = "fleet_sync"
    settings = _known_settings(where, raw, FleetSyncConfig.__dataclass_fields__)
    servers = raw.get("servers")
    if not servers or not isinstance(servers, list):
        raise ConfigError("%s.servers: a list of nats:// or tls:// URLs is required" % where)
    for index, url in enumerate(servers):
        if not isinstance(url, str) or not url.startswith(("nats://", "tls://")):
            raise ConfigError("%s.servers[%d]: %r is not a nats:// or tls:// URL" % (where, index, url))
        if "@" in url:
            # Credentials in a URL end up in logs and error messages: refused, and not echoed.
            raise ConfigError("%s.servers[%d]: no credentials in the URL; use %s.user and %s.password"
                              % (where, index, where, where))
    if bool(raw.get("tls_cert_file")) != bool(raw.get("tls_key_file")):
        raise ConfigError("%s.tls_cert_file, %s.tls_key_file: give both or neither" % (where, where))
    if (raw.get("password") or raw.get("password_file")) and not raw.get("user"):
        raise ConfigError("%s.password: needs %s.user" % (where, where))
    if raw.get("password") and raw.get("password_file"):
        raise ConfigError("%s.password, %s.password_file: give one or the other" % (where, where))
    _positives(settings, raw, ("max_age_sec", "punch_scan_interval_sec", "sources_scan_interval_sec",
                               "import_rate_per_pop"), where=where)
    _positives(settings, raw, ("replicas", "import_burst_per_pop", "import_max_entries_per_pop"), int, where)
    if not 1 <= settings.get("replicas", 3) <= 5:
        raise ConfigError("%s.replicas: 1..5 (JetStream's limit), not %r" % (where, raw["replicas"]))
    stream = str(settings.get("stream", FleetSyncConfig.stream))
    if not stream or any(char in stream for char in " .*>/\\"):
        raise ConfigError("%s.stream: %r is not a JetStream stream name" % (where, stream))
    kinds = settings.get("kinds", list(FLEET_KINDS))
    if not isinstance(kinds, list) or any(kind not in FLEET_KINDS for kind in kinds):
        raise ConfigError("%s.kinds: a list of %s, not %r" % (where, ", ".join(FLEET_KINDS), kinds))
    return FleetSyncConfig(**settings)


def parse_service(index: int, raw: dict) -> Service:
    where = "services[%d]" % index
    _known_settings(where, raw, Service.__dataclass_fields__)
    for key in ("name", "id", "address", "protocol"):
        if key not in raw:
            raise ConfigError("%s.%s: required" % (where, key))
    service = Service(**raw)
    service.address = _address(where + ".address", service.address)
    if service.probe_address:
        service.probe_address = _address(where + ".probe_address", service.probe_address)
    if not 1 <= int(service.id) <= 1023:
        raise ConfigError("%s.id: must be 1..1023, not %r" % (where, service.id))
    if service.protocol not in ("udp", "tcp", "icmp"):
        raise ConfigError("%s.protocol: udp, tcp or icmp, not %r" % (where, service.protocol))
    if service.probe not in PROBES:
        raise ConfigError("%s.probe: one of %s, not %r" % (where, ", ".join(PROBES), service.probe))
    if service.a2s_cache and service.protocol != "udp":
        raise ConfigError("%s.a2s_cache: only for udp services" % where)
    if service.a2s_cache and service.probe != "a2s":
        raise ConfigError("%s.probe: a service with the A2S cache is probed by its refresh (a2s)" % where)
    if service.probe in ("a2s", "udp") and service.protocol != "udp":
        raise ConfigError("%s.probe: %s probes need a udp service" % (where, service.probe))
    if service.probe == "tcp" and service.protocol != "tcp":
        raise ConfigError("%s.probe: tcp probes need a tcp service" % where)
    if service.attack_mode not in abi.ATTACK_MODES:
        raise ConfigError("%s.attack_mode: one of %s, not %r" % (where, ", ".join(abi.ATTACK_MODES), service.attack_mode))
    service.attack_detection = _attack_detection(where + ".attack_detection", service.attack_detection)
    service.a2s_refresh_sec = _positive(where + ".a2s_refresh_sec", service.a2s_refresh_sec)
    service.a2s_max_age_sec = _positive(where + ".a2s_max_age_sec", service.a2s_max_age_sec)
    if service.a2s_max_age_sec < service.a2s_refresh_sec:
        raise ConfigError("%s.a2s_max_age_sec: must be >= a2s_refresh_sec" % where)
    return service


def _attack_detection(where, raw) -> dict:
    """The detection with the defaults under the given fields; thresholds > 0, enter time >= 0."""
    _known_settings(where, raw, _rules.DEFAULT_ATTACK_DETECTION)
    detection = dict(_rules.DEFAULT_ATTACK_DETECTION)
    detection.update(raw)
    for key in ("unverified_packets_per_sec", "leave_after_sec"):
        detection[key] = _positive("%s.%s" % (where, key), detection[key])
    enter = detection["enter_after_sec"]
    detection["enter_after_sec"] = 0.0 if enter in (0, "0") else _positive(where + ".enter_after_sec", enter)
    return detection


def load(path: str) -> Config:
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        try:
            import yaml  # pylint: disable=import-outside-toplevel
        except ImportError:
            raise ConfigError("%s is not JSON (and PyYAML is not installed to read YAML)" % path) from None
        raw = yaml.safe_load(text)
    return parse(raw)
