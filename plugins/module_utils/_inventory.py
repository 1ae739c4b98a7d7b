# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Validation of the anycast.edge inventory schema (run on the controller, before any host).

check() looks at everything and returns every problem at once, each naming the variable path
and the bad value, e.g.

    anycast_edge_services[2].address: 203.0.113.9 is not inside any of anycast_edge_prefixes

An operator fixes a whole inventory in one round instead of one error per playbook run. The
schema itself is documented in roles/validate_inventory/meta/argument_specs.yml and README.md.

Every check of the inventory lives here (one front door): the roles do not re-check what
validate_inventory already refused. A check is a function decorated with @inventory_check; they
run in the order they are defined and share one _Context (problems, warnings, the raw inputs
and what earlier checks normalized). To add one: write

    @inventory_check
    def _check_something(ctx):
        value = ctx.variables.get("anycast_edge_something")
        ...
        ctx.problems.add("anycast_edge_something", value, "is not ...")

and, if it reads a per-host variable, add the variable's name to POP_VARS / BACKEND_VARS (the
role collects exactly those from hostvars). Warnings (ctx.warnings) are shown, not fatal.

Regular expressions match whole values (re.fullmatch): Python's `$` also matches before a
final newline, so "eth0\n" would pass a `^...$` pattern.

Addresses are checked with netaddr (installed on the controller with the collection's
requirements; the module reports it missing otherwise).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import binascii
import hashlib
import re
import socket

try:
    import netaddr
    HAS_NETADDR = True
except ImportError:  # reported by the inventory_check module via missing_required_lib
    netaddr = None
    HAS_NETADDR = False

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _ipip
from ansible_collections.anycast.edge.plugins.module_utils import _payload_rules
from ansible_collections.anycast.edge.plugins.module_utils import _rules
from ansible_collections.anycast.edge.plugins.module_utils import _transport

SERVICE_NAME = re.compile(r"[a-z0-9_-]+")
# Linux interface names (dev_valid_name): 1..15 bytes, no '/', ':' or whitespace, not '.' or '..'.
# The same rule as the ipip_tunnel module's (_ipip.INTERFACE_NAME), which this one reuses.
INTERFACE_NAME = _ipip.INTERFACE_NAME
# A BIRD symbol: the BGP protocol is named bgp_<name>.
NEIGHBOR_NAME = re.compile(r"[a-z][a-z0-9_]*")
INTEGER = re.compile(r"-?[0-9]+")
COMMUNITY = re.compile(r"([0-9]{1,5}):([0-9]{1,5})")
# BIRD reads the password between double quotes: no quote, backslash or control character.
PASSWORD_FORBIDDEN = re.compile(r'["\\\x00-\x1f\x7f]')
PROTOCOLS = ("udp", "tcp", "icmp")
RATE_LIMIT_FIELDS = ("packets_per_sec", "bytes_per_sec")
MAX_ASN = 4294967295
DRAIN_STATES = ("announced", "gshut", "withdrawn")

# A service's settings for players under a spoofed flood (their defaults: _rules.DEFAULT_*).
ATTACK_SERVICE_KEYS = ("game_protocol", "attack_mode", "admission", "attack_detection", "syn_auth")
SERVICE_KEYS = ("name", "id", "address", "protocol", "port", "backend", "a2s_cache", "a2s_snoop",
                "a2s_refresh_sec", "a2s_max_age_sec", "rate_limit") + ATTACK_SERVICE_KEYS
ATTACK_DETECTION_KEYS = tuple(_rules.DEFAULT_ATTACK_DETECTION)
# The longest anycast_edge_verified_idle_sec: a year (edge_config holds it in nanoseconds).
MAX_VERIFIED_IDLE_SEC = 365 * 86400
FILTER_KEYS = ("allow", "deny", "rate_limits", "ban_sec", "punch_idle_sec", "a2s_cookie_epoch_sec", "rules")
NEIGHBOR_KEYS = ("name", "address", "asn", "password", "multihop", "bfd", "communities")

# Defaults of the schema (also in roles/validate_inventory/defaults/main.yml and the specs).
SERVICE_DEFAULTS = {"a2s_cache": False, "a2s_refresh_sec": 5, "a2s_max_age_sec": 30}
FILTER_DEFAULTS = {"allow": [], "deny": [], "rate_limits": {}, "ban_sec": 60, "punch_idle_sec": 120,
                   "a2s_cookie_epoch_sec": 30}
# bird_anycast's defaults (roles/bird_anycast/defaults/main.yml; tests/unit/test_inventory.py
# checks they agree): a timers mapping that leaves a key out gets the template's default for it.
BGP_TIMER_DEFAULTS = {"hold": 90, "keepalive": 30, "connect_retry": 120}
BFD_TIMER_DEFAULTS = {"interval_ms": 300, "multiplier": 3}

# The per-host variables the role collects from hostvars for the checks (only these: whole
# hostvars would template every variable of every host). An absent one is passed as None, which
# means "the role's default" (hostvars does not hold role defaults).
POP_VARS = ("anycast_edge_uplink", "anycast_edge_tunnel_address", "anycast_edge_egress_devices",
            "anycast_edge_underlay_devices", "anycast_edge_underlay_networks",
            "anycast_edge_router_id", "anycast_edge_bgp_neighbors", "anycast_edge_bgp_communities",
            "anycast_edge_rtbh", "anycast_edge_bgp_timers", "anycast_edge_bfd_timers",
            "anycast_edge_drain_state", "anycast_edge_cookie_keys", "ansible_host",
            "anycast_edge_agent_listen_address", "anycast_edge_nats_address", "anycast_edge_nats_password",
            "anycast_edge_nats_tls_cert", "anycast_edge_nats_tls_key") + _transport.POP_VARS
BACKEND_VARS = ("anycast_edge_tunnel_address", "anycast_edge_uplink", "anycast_edge_mapper_devices",
                "anycast_edge_mapper_fib_next_hop", "anycast_edge_mapper_rp_filter",
                "anycast_edge_default_pop", "anycast_edge_dsr_services") + _transport.BACKEND_VARS
# The hosts of group monitoring (Prometheus, playbooks/monitoring.yml): only their address.
MONITORING_VARS = ("ansible_host",)
# Variables that hold secrets: checked, never shown (the problem says what is wrong, not the value).
SECRET_KEYS = ("password",)
# The POPs' own secrets of the fleet sync's NATS cluster (checked, never shown, masked in results).
NATS_SECRET_VARS = ("anycast_edge_nats_password", "anycast_edge_nats_tls_key")


class _Problems(object):
    """Collects 'path: value is wrong because ...' lines."""

    def __init__(self):
        self.lines = []

    def add(self, path, value, reason):
        self.lines.append("%s: %s %s" % (path, _show(value), reason))

    def note(self, path, text):
        self.lines.append("%s: %s" % (path, text))


def _show(value):
    """The bad value as the user wrote it (strings bare, other types repr'd)."""
    if isinstance(value, str):
        return value if value.strip() == value and value else repr(value)
    return repr(value)


def _integer(problems, path, value, minimum=None, maximum=None, strictly_positive=False):
    """The int of `value` (an int, or a string of digits as INI inventories give) or None
    after reporting why it is not acceptable."""
    if isinstance(value, bool):
        problems.add(path, value, "is not an integer")
        return None
    if isinstance(value, str) and INTEGER.fullmatch(value.strip()):
        value = int(value)
    if not isinstance(value, int):
        problems.add(path, value, "is not an integer")
        return None
    if strictly_positive and value <= 0:
        problems.add(path, value, "must be > 0")
        return None
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        if maximum is None:
            problems.add(path, value, "must be >= %d" % minimum)
        else:
            problems.add(path, value, "is out of range (%d..%d)" % (minimum, maximum))
        return None
    return value


def _of_type(problems, path, value, types, what):
    """``value`` when it is one of ``types``, or None after reporting that it is not ``what``."""
    if not isinstance(value, types):
        problems.add(path, value, "is not %s" % what)
        return None
    return value


def _boolean(problems, path, value):
    return _of_type(problems, path, value, bool, "a boolean (true or false)")


def _parsed_ipv4(problems, path, value, parse, not_text, unparsable, not_ipv4):
    """``parse(value)`` (netaddr) when ``value`` is a string it parses as IPv4, or None after
    reporting which of the three it is not."""
    if not isinstance(value, str):
        problems.add(path, value, not_text)
        return None
    try:
        parsed = parse(value)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        problems.add(path, value, unparsable)
        return None
    if parsed.version != 4:
        problems.add(path, value, not_ipv4)
        return None
    return parsed


def _ipv4_address(problems, path, value):
    """The canonical text of an IPv4 address, or None after reporting."""
    return _parsed_ipv4(problems, path, value, netaddr.IPAddress, "is not an IPv4 address", "is not an IPv4 address",
                        "is not an IPv4 address (IPv6 is not supported yet)")


def _ipv4_network(problems, path, value):
    """netaddr.IPNetwork of a CIDR without host bits, or None after reporting."""
    network = _parsed_ipv4(problems, path, value, netaddr.IPNetwork, "is not a CIDR (a string such as 198.51.100.0/24)",
                           "is not a valid IPv4 CIDR", "is an IPv6 prefix (only IPv4 is supported yet)")
    if network is None:
        return None
    if network.ip != network.network:
        problems.add(path, value, "has host bits set (did you mean %s?)" % network.cidr)
        return None
    return network


def _mapping(problems, path, value):
    return _of_type(problems, path, value, dict, "a mapping")


def _sequence(problems, path, value):
    return _of_type(problems, path, value, (list, tuple), "a list")


def _unknown_keys(problems, path, item, known):
    for key in sorted(item, key=str):
        if key not in known:
            problems.note("%s.%s" % (path, key), "unknown setting (known: %s)" % ", ".join(known))


def _rate_limit(problems, path, value):
    """Validated {packets_per_sec, bytes_per_sec} (either may be omitted = unlimited)."""
    if _mapping(problems, path, value) is None:
        return None
    _unknown_keys(problems, path, value, RATE_LIMIT_FIELDS)
    result = {}
    for field in RATE_LIMIT_FIELDS:
        if value.get(field) is not None:
            number = _integer(problems, "%s.%s" % (path, field), value[field], strictly_positive=True)
            if number is not None:
                result[field] = number
    return result


def _cidr_list(problems, path, value):
    """Canonical CIDR strings of a list (order kept, duplicates dropped)."""
    if value is None:
        return []
    if _sequence(problems, path, value) is None:
        return []
    canonical = []
    seen = set()
    for index, item in enumerate(value):
        network = _ipv4_network(problems, "%s[%d]" % (path, index), item)
        if network is not None:
            text = str(network.cidr)
            if text not in seen:
                seen.add(text)
                canonical.append(text)
    return canonical


def _hostvars_path(host, var):
    return "hostvars['%s'].%s" % (host, var)


def _interface_name(name):
    return isinstance(name, str) and INTERFACE_NAME.fullmatch(name) is not None and name not in (".", "..")


class _Context(object):
    """What every check sees. The raw inputs (variables, pops, backends), the problem and warning
    lists, and what earlier checks normalized (normalized: returned to the caller; prefixes,
    tunnel_owner: for later checks)."""

    def __init__(self, variables, pops, backends, monitoring=None):
        self.variables = variables
        self.pops = dict((host, pops[host] or {}) for host in pops)
        self.backends = dict((host, backends[host] or {}) for host in backends)
        self.monitoring = dict((host, (monitoring or {})[host] or {}) for host in monitoring or {})
        # {POP: [(its BGP neighbour's address, name, variable path)]} of the valid neighbours.
        self.bgp_neighbors = {}
        self.problems = _Problems()
        self.warnings = _Problems()
        self.normalized = {}
        self.prefixes = []
        self.tunnel_owner = {}

    def in_anycast(self, address):
        return any(address in network for network in self.prefixes)


CHECKS = []


def inventory_check(function):
    """Register a check (run in the order of definition, after the ones above it)."""
    CHECKS.append(function)
    return function


@inventory_check
def _check_asn(ctx):
    if ctx.variables.get("anycast_edge_asn") is None:
        ctx.problems.note("anycast_edge_asn", "is required (the ASN the POPs announce from)")
    else:
        ctx.normalized["anycast_edge_asn"] = _integer(ctx.problems, "anycast_edge_asn", ctx.variables["anycast_edge_asn"],
                                                      minimum=1, maximum=MAX_ASN)


@inventory_check
def _check_prefixes(ctx):
    problems, prefixes = ctx.problems, ctx.prefixes
    raw_prefixes = ctx.variables.get("anycast_edge_prefixes")
    if not raw_prefixes:
        problems.note("anycast_edge_prefixes", "is required and must list at least one IPv4 prefix")
    elif _sequence(problems, "anycast_edge_prefixes", raw_prefixes) is not None:
        for index, item in enumerate(raw_prefixes):
            network = _ipv4_network(problems, "anycast_edge_prefixes[%d]" % index, item)
            if network is not None:
                if network in prefixes:
                    problems.add("anycast_edge_prefixes[%d]" % index, item, "is listed twice")
                else:
                    prefixes.append(network)
    if len(prefixes) > _rules.CAPACITY["edge_anycast_v4"]:
        problems.note("anycast_edge_prefixes", "%d prefixes, at most %d fit" % (len(prefixes), _rules.CAPACITY["edge_anycast_v4"]))
    ctx.normalized["anycast_edge_prefixes"] = [str(network.cidr) for network in prefixes]


def _tunnel_address(ctx, host, hostvars):
    problems = ctx.problems
    path = _hostvars_path(host, "anycast_edge_tunnel_address")
    value = hostvars.get("anycast_edge_tunnel_address")
    if value is None:
        problems.note(path, "is required (the address IPIP tunnels use on this host)")
        return None
    address = _ipv4_address(problems, path, value)
    if address is None:
        return None
    if ctx.in_anycast(address):
        problems.add(path, value, "is inside an anycast prefix; it must be the host's own unicast address")
    elif address in ctx.tunnel_owner:
        problems.add(path, value, "is also the tunnel address of %s" % ctx.tunnel_owner[address])
    else:
        ctx.tunnel_owner[address] = host
    return address


def _uplink(problems, host, hostvars, why):
    path = _hostvars_path(host, "anycast_edge_uplink")
    uplink = hostvars.get("anycast_edge_uplink")
    if uplink is None or uplink == "":
        problems.note(path, "is required (%s)" % why)
        return None
    if not _interface_name(uplink):
        problems.add(path, uplink, "is not an interface name")
        return None
    return uplink


def _device_list(problems, host, hostvars, var):
    """The valid interface names of the list `var` ([] when absent)."""
    devices = hostvars.get(var)
    path = _hostvars_path(host, var)
    if devices is None or _sequence(problems, path, devices) is None:
        return []
    names = []
    for index, device in enumerate(devices):
        if _interface_name(device):
            names.append(device)
        else:
            problems.add("%s[%d]" % (path, index), device, "is not an interface name")
    return names


@inventory_check
def _check_hosts(ctx):
    problems = ctx.problems
    both = sorted(set(ctx.pops) & set(ctx.backends))
    for host in both:
        problems.note("hostvars['%s']" % host, "is in both groups pops and backends; a host is one or the other")
    ctx.normalized["pop_addresses"] = {}
    for host in sorted(ctx.pops):
        hostvars = ctx.pops[host]
        _uplink(problems, host, hostvars, "the interface XDP attaches to")
        address = _tunnel_address(ctx, host, hostvars)
        if address is not None:
            ctx.normalized["pop_addresses"][host] = str(address)
        _device_list(problems, host, hostvars, "anycast_edge_egress_devices")

    backend_addresses = {}
    for host in sorted(ctx.backends):
        address = _tunnel_address(ctx, host, ctx.backends[host])
        if address is not None:
            backend_addresses[host] = str(address)
    if len(ctx.backends) > _rules.CAPACITY["edge_backends"]:
        problems.note("groups['backends']", "%d backends, at most %d fit" % (len(ctx.backends), _rules.CAPACITY["edge_backends"]))
    ctx.normalized["backend_addresses"] = backend_addresses


# --- players under a spoofed flood: verification, admission, attack mode --------------------------

@inventory_check
def _check_attack_defaults(ctx):
    """The fleet-wide settings: anycast_edge_verified_idle_sec and anycast_edge_attack_detection
    (each service may override the latter's fields), defaults from _rules."""
    problems, normalized = ctx.problems, ctx.normalized
    idle = ctx.variables.get("anycast_edge_verified_idle_sec")
    if idle is None:
        idle = _rules.DEFAULT_VERIFIED_IDLE_SEC
    normalized["anycast_edge_verified_idle_sec"] = _integer(problems, "anycast_edge_verified_idle_sec", idle,
                                                            minimum=1, maximum=MAX_VERIFIED_IDLE_SEC)
    detection = dict(_rules.DEFAULT_ATTACK_DETECTION)
    detection.update(_attack_detection(problems, "anycast_edge_attack_detection",
                                       ctx.variables.get("anycast_edge_attack_detection")))
    normalized["anycast_edge_attack_detection"] = detection


def _attack_detection(problems, path, value):
    """The valid fields of an attack detection mapping ({} when absent)."""
    if value is None or _mapping(problems, path, value) is None:
        return {}
    _unknown_keys(problems, path, value, ATTACK_DETECTION_KEYS)
    minimum = {"unverified_packets_per_sec": 1, "enter_after_sec": 0, "leave_after_sec": 1}
    fields = {}
    for key in ATTACK_DETECTION_KEYS:
        if value.get(key) is not None:
            number = _integer(problems, "%s.%s" % (path, key), value[key], minimum=minimum[key])
            if number is not None:
                fields[key] = number
    return fields


def _service_attack_settings(ctx, path, service, protocol):
    """Validates and normalizes a service's game_protocol, attack_mode, syn_auth, admission and attack
    detection in place (the detection: the fleet's, with the service's own fields over it)."""
    problems = ctx.problems
    game_protocol = service.setdefault("game_protocol", _rules.DEFAULT_GAME_PROTOCOL)
    if game_protocol not in abi.GAME_PROTOCOLS:
        problems.add(path + ".game_protocol", game_protocol, "is not one of %s" % ", ".join(abi.GAME_PROTOCOLS))
    elif game_protocol != "none" and protocol is not None and protocol != abi.GAME_PROTOCOL_TRANSPORT[game_protocol]:
        problems.add(path + ".game_protocol", game_protocol, "is a %s game protocol; the service is %s"
                     % (abi.GAME_PROTOCOL_TRANSPORT[game_protocol], protocol))
    attack_mode = service.setdefault("attack_mode", _rules.DEFAULT_ATTACK_MODE)
    if attack_mode not in abi.ATTACK_MODES:
        problems.add(path + ".attack_mode", attack_mode, "is not one of %s" % ", ".join(abi.ATTACK_MODES))
    if "syn_auth" in service and protocol not in (None, "tcp"):
        problems.add(path + ".syn_auth", service["syn_auth"], "is for tcp services only; the service is %s" % protocol)
    syn_auth = service.setdefault("syn_auth", _rules.DEFAULT_SYN_AUTH)
    if syn_auth not in abi.SYN_AUTH_MODES:
        problems.add(path + ".syn_auth", syn_auth, "is not one of %s" % ", ".join(abi.SYN_AUTH_MODES))

    admission = dict(_rules.DEFAULT_ADMISSION)
    raw = service.get("admission")
    if raw is not None and _mapping(problems, path + ".admission", raw) is not None:
        _unknown_keys(problems, path + ".admission", raw, RATE_LIMIT_FIELDS)
        for field in RATE_LIMIT_FIELDS:
            if raw.get(field) is not None:
                admission[field] = _integer(problems, "%s.admission.%s" % (path, field), raw[field], minimum=0)
        pps, bps = admission["packets_per_sec"], admission["bytes_per_sec"]
        if pps is not None and bps is not None and (pps == 0) != (bps == 0):
            problems.add(path + ".admission", raw, "has one budget 0 and the other not: give both > 0, or both 0 "
                         "(under attack, nothing unverified passes)")
    service["admission"] = admission

    detection = dict(ctx.normalized.get("anycast_edge_attack_detection") or _rules.DEFAULT_ATTACK_DETECTION)
    own = service.get("attack_detection")
    detection.update(_attack_detection(problems, path + ".attack_detection", own))
    if own is not None and attack_mode in ("always", "never"):
        ctx.warnings.add(path + ".attack_detection", own, "is not used: attack_mode is %s (only auto services "
                         "are put under attack by the agent)" % attack_mode)
    service["attack_detection"] = detection


@inventory_check
def _check_services(ctx):
    problems, backends = ctx.problems, ctx.backends
    services = []
    raw_services = ctx.variables.get("anycast_edge_services")
    if raw_services is None:
        raw_services = []
    if _sequence(problems, "anycast_edge_services", raw_services) is None:
        raw_services = []
    if len(raw_services) > _rules.MAX_SERVICE_ID:
        problems.note("anycast_edge_services", "%d services, at most %d fit" % (len(raw_services), _rules.MAX_SERVICE_ID))
    names = {}
    ids = {}
    endpoints = {}
    for index, raw in enumerate(raw_services):
        path = "anycast_edge_services[%d]" % index
        if _mapping(problems, path, raw) is None:
            continue
        _unknown_keys(problems, path, raw, SERVICE_KEYS)
        service = dict(SERVICE_DEFAULTS)
        service.update((key, value) for key, value in raw.items() if value is not None)

        name = service.get("name")
        if name is None:
            problems.note(path + ".name", "is required")
        elif not isinstance(name, str) or not SERVICE_NAME.fullmatch(name):
            problems.add(path + ".name", name, "is not a service name (lower-case letters, digits, '_' and '-')")
            name = None
        elif name in names:
            problems.add(path + ".name", name, "is also the name of anycast_edge_services[%d]" % names[name])
        else:
            names[name] = index
        label = name or ("#%d" % index)

        if "id" in service:
            service_id = _integer(problems, path + ".id", service["id"], minimum=1, maximum=_rules.MAX_SERVICE_ID)
            id_origin = "set"
        elif name is not None:
            service_id = _rules.default_service_id(name)
            id_origin = "derived from the name"
        else:
            service_id = None
        if service_id is not None:
            if service_id in ids:
                other_index, other_name, other_origin = ids[service_id]
                problems.add(path + ".id", service_id,
                             "(%s) is also the id of anycast_edge_services[%d] (%s, id %s); "
                             "set a distinct id on one of them" % (id_origin, other_index, other_name, other_origin))
            else:
                ids[service_id] = (index, label, id_origin)
            service["id"] = service_id

        protocol = service.get("protocol")
        if protocol is None:
            problems.note(path + ".protocol", "is required (udp, tcp or icmp)")
        elif protocol not in PROTOCOLS:
            problems.add(path + ".protocol", protocol, "is not one of udp, tcp, icmp")
            protocol = None

        address = None
        if service.get("address") is None:
            problems.note(path + ".address", "is required")
        else:
            address = _ipv4_address(problems, path + ".address", service["address"])
            if address is not None and ctx.prefixes and not ctx.in_anycast(address):
                problems.add(path + ".address", service["address"], "is not inside any of anycast_edge_prefixes")
            if address is not None:
                service["address"] = str(address)

        port = service.get("port")
        if protocol == "icmp":
            if port not in (None, 0, "0"):
                problems.add(path + ".port", port, "is given for an icmp service (icmp has no port; omit it)")
            port = 0
        elif port is None:
            if protocol is not None:
                problems.note(path + ".port", "is required for a %s service" % protocol)
        else:
            port = _integer(problems, path + ".port", port, minimum=1, maximum=65535)
        service["port"] = port

        if protocol is not None and address is not None and port is not None:
            endpoint = (protocol, str(address), port)
            if endpoint in endpoints:
                problems.add(path, "%s %s port %d" % endpoint,
                             "is also served by anycast_edge_services[%d] (one service per protocol, address, port)"
                             % endpoints[endpoint])
            else:
                endpoints[endpoint] = index

        backend = service.get("backend")
        if backend is None:
            problems.note(path + ".backend", "is required (an inventory host of group backends)")
        elif not isinstance(backend, str) or backend not in backends:
            problems.add(path + ".backend", backend, "is not a host of group backends")

        a2s_cache = _boolean(problems, path + ".a2s_cache", service["a2s_cache"])
        a2s_snoop = service.get("a2s_snoop", a2s_cache)
        if "a2s_snoop" in service:
            a2s_snoop = _boolean(problems, path + ".a2s_snoop", a2s_snoop)
        if protocol not in (None, "udp"):
            if a2s_cache:
                problems.add(path + ".a2s_cache", a2s_cache, "on a %s service (A2S is udp only)" % protocol)
            if a2s_snoop and "a2s_snoop" in service:
                problems.add(path + ".a2s_snoop", a2s_snoop, "on a %s service (A2S is udp only)" % protocol)
        service["a2s_snoop"] = a2s_snoop
        refresh = _integer(problems, path + ".a2s_refresh_sec", service["a2s_refresh_sec"], strictly_positive=True)
        max_age = _integer(problems, path + ".a2s_max_age_sec", service["a2s_max_age_sec"], strictly_positive=True)
        if refresh is not None and max_age is not None and max_age < refresh:
            problems.add(path + ".a2s_max_age_sec", max_age,
                         "is shorter than a2s_refresh_sec (%d): the cache would expire between refreshes" % refresh)
        service["a2s_refresh_sec"], service["a2s_max_age_sec"] = refresh, max_age
        if service.get("rate_limit") is not None:
            service["rate_limit"] = _rate_limit(problems, path + ".rate_limit", service["rate_limit"])
        _service_attack_settings(ctx, path, service, protocol)
        services.append(service)
    ctx.normalized["anycast_edge_services"] = services


@inventory_check
def _check_filters(ctx):
    problems, normalized = ctx.problems, ctx.normalized
    raw_filters = ctx.variables.get("anycast_edge_filters")
    if raw_filters is None:
        raw_filters = {}
    filters = dict(FILTER_DEFAULTS)
    if _mapping(problems, "anycast_edge_filters", raw_filters) is not None:
        _unknown_keys(problems, "anycast_edge_filters", raw_filters, FILTER_KEYS)
        filters.update((key, value) for key, value in raw_filters.items() if value is not None)
    filters["allow"] = _cidr_list(problems, "anycast_edge_filters.allow", filters["allow"])
    filters["deny"] = _cidr_list(problems, "anycast_edge_filters.deny", filters["deny"])
    denied = set(filters["deny"])
    for index, cidr in enumerate(filters["allow"]):
        if cidr in denied:
            problems.add("anycast_edge_filters.allow[%d]" % index, cidr,
                         "is also in anycast_edge_filters.deny (deny wins; keep it in one list)")
    # The deny list applies before the return path (a denied source is never forwarded), so a deny
    # prefix covering a backend's tunnel address would cut that backend's replies off.
    for index, cidr in enumerate(filters["deny"]):
        network = netaddr.IPNetwork(cidr)
        for host, address in sorted(normalized.get("backend_addresses", {}).items()):
            if netaddr.IPAddress(address) in network:
                problems.add("anycast_edge_filters.deny[%d]" % index, cidr,
                             "covers the tunnel address %s of backend %s: its replies would be dropped" % (address, host))
    for field in ("allow", "deny"):
        if len(filters[field]) > _rules.CAPACITY["edge_%s_v4" % field]:
            problems.note("anycast_edge_filters." + field, "%d prefixes, at most %d fit"
                          % (len(filters[field]), _rules.CAPACITY["edge_%s_v4" % field]))
    limits = {}
    limits_path = "anycast_edge_filters.rate_limits"
    if _mapping(problems, limits_path, filters["rate_limits"]) is not None:
        _unknown_keys(problems, limits_path, filters["rate_limits"], ("tcp", "udp", "icmp", "other"))
        for proto_class in ("tcp", "udp", "icmp", "other"):
            if filters["rate_limits"].get(proto_class) is not None:
                limit = _rate_limit(problems, "%s.%s" % (limits_path, proto_class), filters["rate_limits"][proto_class])
                if limit:
                    limits[proto_class] = limit
    filters["rate_limits"] = limits
    filters["ban_sec"] = _integer(problems, "anycast_edge_filters.ban_sec", filters["ban_sec"], minimum=0)
    filters["punch_idle_sec"] = _integer(problems, "anycast_edge_filters.punch_idle_sec", filters["punch_idle_sec"],
                                         strictly_positive=True)
    filters["a2s_cookie_epoch_sec"] = _integer(problems, "anycast_edge_filters.a2s_cookie_epoch_sec",
                                               filters["a2s_cookie_epoch_sec"], strictly_positive=True)
    normalized["anycast_edge_filters"] = filters


# --- BGP (what bird_anycast renders into bird.conf) ---------------------------------------------

def _communities(problems, path, value):
    """A list of standard communities "asn:value", each part 0..65535."""
    if value is None or _sequence(problems, path, value) is None:
        return
    for index, text in enumerate(value):
        match = COMMUNITY.fullmatch(text) if isinstance(text, str) else None
        if match is None or int(match.group(1)) > 65535 or int(match.group(2)) > 65535:
            problems.add("%s[%d]" % (path, index), text, 'is not a community "asn:value" (each 0..65535)')


def _timers(problems, path, value, defaults, positive_keys):
    """A timers mapping with the role's defaults filled in (None after reporting)."""
    if value is None:
        return dict(defaults)
    if _mapping(problems, path, value) is None:
        return None
    _unknown_keys(problems, path, value, tuple(defaults))
    timers = dict(defaults)
    for key in defaults:
        if value.get(key) is not None:
            timers[key] = _integer(problems, "%s.%s" % (path, key), value[key], minimum=positive_keys.get(key, 1))
    return timers


@inventory_check
def _check_bgp(ctx):
    problems = ctx.problems
    for host in sorted(ctx.pops):
        hostvars = ctx.pops[host]
        router_id = hostvars.get("anycast_edge_router_id")
        if router_id is not None:
            _ipv4_address(problems, _hostvars_path(host, "anycast_edge_router_id"), router_id)

        path = _hostvars_path(host, "anycast_edge_bgp_neighbors")
        neighbors = hostvars.get("anycast_edge_bgp_neighbors")
        names = {}
        if neighbors is not None and _sequence(problems, path, neighbors) is not None:
            for index, neighbor in enumerate(neighbors):
                item = "%s[%d]" % (path, index)
                if _mapping(problems, item, neighbor) is None:
                    continue
                _unknown_keys(problems, item, neighbor, NEIGHBOR_KEYS)
                name = neighbor.get("name")
                if name is None:
                    problems.note(item + ".name", "is required")
                elif not isinstance(name, str) or not NEIGHBOR_NAME.fullmatch(name):
                    problems.add(item + ".name", name, "is not a neighbor name ([a-z][a-z0-9_]*; BIRD's protocol is bgp_<name>)")
                elif name in names:
                    problems.add(item + ".name", name, "is also the name of %s[%d]" % (path, names[name]))
                else:
                    names[name] = index
                if neighbor.get("address") is None:
                    problems.note(item + ".address", "is required")
                else:
                    address = _ipv4_address(problems, item + ".address", neighbor["address"])
                    if address is not None:
                        ctx.bgp_neighbors.setdefault(host, []).append((address, name, item + ".address"))
                if neighbor.get("asn") is None:
                    problems.note(item + ".asn", "is required")
                else:
                    _integer(problems, item + ".asn", neighbor["asn"], minimum=1, maximum=MAX_ASN)
                if neighbor.get("multihop") is not None:
                    _integer(problems, item + ".multihop", neighbor["multihop"], minimum=0, maximum=255)
                password = neighbor.get("password")
                # A secret: say what is wrong with it, never show it.
                if password is not None and (not isinstance(password, str) or PASSWORD_FORBIDDEN.search(password)):
                    problems.note(item + ".password", "(not shown) must be a string without double quotes, "
                                  "backslashes or control characters (BIRD reads it between quotes)")
                if neighbor.get("bfd") is not None:
                    _boolean(problems, item + ".bfd", neighbor["bfd"])
                _communities(problems, item + ".communities", neighbor.get("communities"))

        _communities(problems, _hostvars_path(host, "anycast_edge_bgp_communities"),
                     hostvars.get("anycast_edge_bgp_communities"))
        rtbh_path = _hostvars_path(host, "anycast_edge_rtbh")
        rtbh = hostvars.get("anycast_edge_rtbh")
        if rtbh is not None and _sequence(problems, rtbh_path, rtbh) is not None:
            for index, text in enumerate(rtbh):
                address = text[:-3] if isinstance(text, str) and text.endswith("/32") else text
                if not isinstance(address, str) or "/" in address:
                    problems.add("%s[%d]" % (rtbh_path, index), text, "is not an IPv4 host address (optionally /32)")
                else:
                    _ipv4_address(problems, "%s[%d]" % (rtbh_path, index), address)

        bgp_path = _hostvars_path(host, "anycast_edge_bgp_timers")
        bgp = _timers(problems, bgp_path, hostvars.get("anycast_edge_bgp_timers"), BGP_TIMER_DEFAULTS, {"hold": 3})
        if bgp and bgp["hold"] is not None and bgp["keepalive"] is not None and bgp["keepalive"] >= bgp["hold"]:
            problems.add(bgp_path + ".keepalive", bgp["keepalive"], "must be shorter than hold (%d)" % bgp["hold"])
        _timers(problems, _hostvars_path(host, "anycast_edge_bfd_timers"), hostvars.get("anycast_edge_bfd_timers"),
                BFD_TIMER_DEFAULTS, {})

        drain = hostvars.get("anycast_edge_drain_state")
        if drain is not None and drain not in DRAIN_STATES:
            problems.add(_hostvars_path(host, "anycast_edge_drain_state"), drain,
                         "is not one of %s" % ", ".join(DRAIN_STATES))


# --- the backends' TC mapper (tc_mapper) ---------------------------------------------------------

@inventory_check
def _check_mapper(ctx):
    problems = ctx.problems
    for host in sorted(ctx.backends):
        hostvars = ctx.backends[host]
        uplink = _uplink(problems, host, hostvars, "the NIC the IPIP from the POPs crosses; the mapper attaches there")
        devices = _device_list(problems, host, hostvars, "anycast_edge_mapper_devices")
        fib = hostvars.get("anycast_edge_mapper_fib_next_hop")
        if fib is not None:
            fib = _boolean(problems, _hostvars_path(host, "anycast_edge_mapper_fib_next_hop"), fib)
        if uplink is not None and [device for device in devices if device != uplink] and not fib:
            problems.add(_hostvars_path(host, "anycast_edge_mapper_devices"), devices,
                         "besides the uplink needs anycast_edge_mapper_fib_next_hop: true "
                         "(a steered reply must leave by the device toward its POP)")
        rp_filter = hostvars.get("anycast_edge_mapper_rp_filter")
        if rp_filter is not None:
            value = _integer(problems, _hostvars_path(host, "anycast_edge_mapper_rp_filter"), rp_filter)
            if value is not None and value not in (0, 2):
                problems.add(_hostvars_path(host, "anycast_edge_mapper_rp_filter"), rp_filter,
                             "must be 0 (off) or 2 (loose); strict (1) drops players of every POP but the default one")
        default_pop = hostvars.get("anycast_edge_default_pop")
        if default_pop is not None and (not isinstance(default_pop, str) or default_pop not in ctx.pops):
            problems.add(_hostvars_path(host, "anycast_edge_default_pop"), default_pop, "is not a host of group pops")
        dsr_path = _hostvars_path(host, "anycast_edge_dsr_services")
        dsr = hostvars.get("anycast_edge_dsr_services")
        if dsr is not None and _sequence(problems, dsr_path, dsr) is not None:
            served = {service.get("name"): service for service in ctx.normalized.get("anycast_edge_services", [])
                      if service.get("backend") == host}
            for index, name in enumerate(dsr):
                if not isinstance(name, str) or name not in served:
                    problems.add("%s[%d]" % (dsr_path, index), name,
                                 "is not a service whose backend is %s (anycast_edge_services[].name)" % host)
                elif served[name].get("game_protocol") == "minecraft":
                    # The validator revokes a source only for a first data segment that carries
                    # the ACK of the backend's SYN-ACK, which the POP learns on the return path: a
                    # DSR reply never crosses it, so garbage would be dropped but never revoke its
                    # sender (docs/game-protocols.md).
                    problems.add("%s[%d]" % (dsr_path, index), name,
                                 "is a game_protocol minecraft service: its replies must come back through "
                                 "the POP (the handshake validator reads the backend's SYN-ACK there)")


# --- the transport of each (POP, backend) pair: IPIP or WireGuard (docs/transport.md) ------------

@inventory_check
def _check_transport(ctx):
    """Each POP's anycast_edge_transport and anycast_edge_transport_backends, and, on every host,
    the WireGuard settings (checked whenever set; a typo in an unused one is still a typo).

    normalized["transports"]: {POP: {backend: transport}} of every pair; normalized
    ["wireguard_interfaces"]: {host: _transport.wireguard_interfaces} of every POP and backend
    (their WireGuard interfaces, [] for a host with none). A host's WireGuard ports
    (its base port + one per WireGuard peer) must fit under 65535, and two hosts with the same
    endpoint address (behind one NAT) must not share a port.
    """
    problems = ctx.problems
    pops, backends = {}, {}
    for host in sorted(ctx.pops):
        hostvars = ctx.pops[host]
        pops[host] = own = dict((name, hostvars.get(name)) for name in _transport.POP_VARS)
        path = _hostvars_path(host, "anycast_edge_transport")
        if own["anycast_edge_transport"] is not None and own["anycast_edge_transport"] not in _transport.TRANSPORTS:
            problems.add(path, own["anycast_edge_transport"], "is not one of %s" % ", ".join(_transport.TRANSPORTS))
            own["anycast_edge_transport"] = None
        path = _hostvars_path(host, "anycast_edge_transport_backends")
        per_backend = own["anycast_edge_transport_backends"]
        if per_backend is not None and _mapping(problems, path, per_backend) is not None:
            valid = {}
            for backend in sorted(per_backend, key=str):
                item = "%s.%s" % (path, backend)
                if backend not in ctx.backends:
                    problems.add(item, per_backend[backend], "is set for %s, which is not a host of group backends"
                                 % _show(backend))
                elif per_backend[backend] not in _transport.TRANSPORTS:
                    problems.add(item, per_backend[backend], "is not one of %s" % ", ".join(_transport.TRANSPORTS))
                else:
                    valid[backend] = per_backend[backend]
            own["anycast_edge_transport_backends"] = valid
        else:
            own["anycast_edge_transport_backends"] = None
    for host in sorted(ctx.backends):
        backends[host] = dict((name, ctx.backends[host].get(name)) for name in _transport.BACKEND_VARS)

    ports = {}   # (endpoint address, port) -> the host listening there (two hosts behind one NAT)
    for host in sorted(pops) + sorted(backends):
        hostvars = ctx.pops[host] if host in pops else ctx.backends[host]
        own = pops[host] if host in pops else backends[host]
        peers = _transport.wireguard_peers_of(host, pops, backends)
        port_path = _hostvars_path(host, "anycast_edge_wireguard_port")
        port = _transport.DEFAULTS["anycast_edge_wireguard_port"]
        if own["anycast_edge_wireguard_port"] is not None:
            port = own["anycast_edge_wireguard_port"] = _integer(problems, port_path, own["anycast_edge_wireguard_port"],
                                                                 minimum=1, maximum=65535)
        endpoint_path = _hostvars_path(host, "anycast_edge_wireguard_endpoint")
        endpoint = own["anycast_edge_wireguard_endpoint"]
        if endpoint is not None:
            address = _ipv4_address(problems, endpoint_path, endpoint)
            if address is not None and ctx.in_anycast(address):
                problems.add(endpoint_path, endpoint, "is inside an anycast prefix; it must be the host's own "
                             "unicast address its peers send WireGuard to")
                address = None
            own["anycast_edge_wireguard_endpoint"] = str(address) if address is not None else None
        for name, minimum, maximum in (("anycast_edge_wireguard_mtu", _transport.MIN_MTU, _transport.MAX_MTU),
                                       ("anycast_edge_wireguard_keepalive", 0, _transport.MAX_KEEPALIVE)):
            if own[name] is not None:
                own[name] = _integer(problems, _hostvars_path(host, name), own[name], minimum=minimum, maximum=maximum)
        if not peers or port is None:
            continue
        last = port + len(peers) - 1
        if last > 65535:
            problems.add(port_path, port, "leaves no room for %s's %d WireGuard peers (ports %d..%d; each peer "
                         "has its own interface and port)" % (host, len(peers), port, last))
            continue
        address = own["anycast_edge_wireguard_endpoint"] if endpoint is not None else \
            _host_address(hostvars.get("anycast_edge_tunnel_address"))
        if address is None:
            continue
        address = str(address)
        for number in range(port, last + 1):
            other = ports.setdefault((address, number), host)
            if other != host:
                problems.add(port_path, port, "gives %s the port %d at the endpoint %s, where %s listens too: "
                             "two hosts behind one address need ports apart" % (host, number, address, other))
                break
    ctx.normalized["transports"] = _transport.transports(pops, backends)
    for host in list(pops) + list(backends):
        own = pops[host] if host in pops else backends[host]
        hostvars = ctx.pops[host] if host in pops else ctx.backends[host]
        own["anycast_edge_tunnel_address"] = hostvars.get("anycast_edge_tunnel_address")
    ctx.normalized["wireguard_interfaces"] = dict(
        (host, _transport.wireguard_interfaces(host, pops, backends)) for host in sorted(list(pops) + list(backends)))


# --- the WireGuard data plane: an opt-in until it is complete (docs/transport.md) --------------

WIREGUARD_DATA_PLANE_VAR = "anycast_edge_wireguard_data_plane"


@inventory_check
def _check_wireguard_data_plane(ctx):
    """anycast_edge_wireguard_data_plane (a boolean, off by default): whether a POP forwards the
    players of its WireGuard pairs into their WireGuard interfaces (the rules files' wireguard_pairs,
    which edge_rules writes and for which the xdp_edge role attaches the redirect). Only the POP's
    inbound side is built - not the backend side, not the return path - so by default every pair's
    players go over IPIP, a wireguard pair's too, as they did before the POP side was built (its
    WireGuard interfaces are made all the same). On, one warning per POP with WireGuard pairs.
    normalized["wireguard_data_plane"]: the flag (False for an invalid value, reported)."""
    value = ctx.variables.get(WIREGUARD_DATA_PLANE_VAR)
    enabled = value is not None and _boolean(ctx.problems, WIREGUARD_DATA_PLANE_VAR, value) is True
    ctx.normalized["wireguard_data_plane"] = enabled
    if not enabled:
        return
    for pop, by_backend in sorted(ctx.normalized.get("transports", {}).items()):
        backends = sorted(backend for backend, transport in by_backend.items() if transport == "wireguard")
        if backends:
            ctx.warnings.note(pop, "%s is true: the players of %s's WireGuard pairs (to %s) go into their WireGuard "
                              "interfaces, but the WireGuard data plane is incomplete - the backend side and the "
                              "return path are not built - so their traffic does not arrive whole. Leave it false "
                              "(every pair over IPIP) for pairs in service (docs/transport.md)"
                              % (WIREGUARD_DATA_PLANE_VAR, pop, ", ".join(backends)))


# --- the transport's trust (a warning: plain IPIP is authenticated by nothing but its path) ------

@inventory_check
def _warn_ipip_paths(ctx):
    """One warning per (POP, backend) pair whose IPIP is not known to stay on a declared underlay.

    What inventory knows: a POP sends and accepts the backends' IPIP on its
    anycast_edge_underlay_devices when it has any, else on its uplink - the internet. A POP that
    also lists anycast_edge_underlay_networks (the networks routed over those devices) reaches a
    backend over the underlay only when the backend's tunnel address is inside one of them.
    A pair whose transport is WireGuard is authenticated whatever its path: no warning.
    """
    problems, warnings = ctx.problems, ctx.warnings
    backend_addresses = ctx.normalized.get("backend_addresses", {})
    for pop in sorted(ctx.pops):
        hostvars = ctx.pops[pop]
        underlay = _device_list(problems, pop, hostvars, "anycast_edge_underlay_devices")
        networks_path = _hostvars_path(pop, "anycast_edge_underlay_networks")
        raw_networks = hostvars.get("anycast_edge_underlay_networks")
        networks = None
        if raw_networks is not None:
            networks = [netaddr.IPNetwork(cidr) for cidr in _cidr_list(problems, networks_path, raw_networks)]
            if not underlay:
                problems.add(networks_path, raw_networks, "is set without anycast_edge_underlay_devices "
                             "(the networks say which backends the underlay devices reach)")
                continue
        for backend, address in sorted(backend_addresses.items()):
            if ctx.normalized["transports"][pop].get(backend) == "wireguard":
                continue   # authenticated and encrypted, whatever path it takes
            if not underlay:
                reason = "%s has no anycast_edge_underlay_devices: it is sent and accepted on the uplink %s" % (
                    pop, hostvars.get("anycast_edge_uplink"))
            elif networks is not None and not any(netaddr.IPAddress(address) in network for network in networks):
                reason = "%s is not inside %s's anycast_edge_underlay_networks" % (address, pop)
            else:
                continue
            warnings.note("%s <-> %s" % (pop, backend),
                          "the IPIP to %s's tunnel address %s does not cross a declared underlay device (%s). "
                          "Plain IPIP is authenticated by nothing but its path: where it crosses the internet, "
                          "anyone can spoof it (see docs/data-plane.md, trust model)" % (backend, address, reason))


# --- the control plane: sources never banned or rate limited (derived, not listed by hand) -----

def _host_address(value):
    """The netaddr.IPAddress of an ansible_host-like value when it is an IPv4 address (a name,
    IPv6 or nothing: None)."""
    if not isinstance(value, str) or value.strip() != value:
        return None
    try:
        address = netaddr.IPAddress(value, flags=netaddr.INET_PTON)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return None
    return address if address.version == 4 else None


@inventory_check
def _check_control_plane(ctx):
    """normalized["control_plane"]: {POP: [{address, reason}]}, the sources each POP exempts from
    bans and rate limits (through the allow machinery, labelled apart from the operator's list):

    - its own BGP neighbours (anycast_edge_bgp_neighbors[].address);
    - every other POP's tunnel address, management address (ansible_host when it is an IPv4
      address) and exporter address (anycast_edge_agent_listen_address, when set);
    - every host of group monitoring (its ansible_host; a warning when that is not an address).

    Left out: loopback addresses (they never arrive on an uplink - the lab's ansible_host is
    127.0.0.1), addresses inside the anycast prefixes (ours: a packet "from" them on the uplink is
    spoofed), the POP's own addresses, and the backends: their traffic to a POP is IPIP to its
    tunnel address, which no ban or limit applies to (only traffic to a service or an anycast
    prefix is limited), so exempting them would only give a spoofer more unlimited sources.

    A deny prefix covering one is a problem: deny beats every exemption (a denied BGP neighbour
    loses its session).
    """
    problems, warnings = ctx.problems, ctx.warnings
    fleet = []   # (owner host, address, reason, variable path) for every POP and monitoring host
    for host in sorted(ctx.pops):
        hostvars = ctx.pops[host]
        address = _host_address(hostvars.get("anycast_edge_tunnel_address"))
        if address is not None:
            fleet.append((host, address, "tunnel address of POP %s" % host,
                          _hostvars_path(host, "anycast_edge_tunnel_address")))
        for var, what in (("ansible_host", "management address"),
                          ("anycast_edge_agent_listen_address", "exporter address"),
                          ("anycast_edge_nats_address", "NATS address")):
            address = _host_address(hostvars.get(var))
            if address is not None:
                fleet.append((host, address, "%s of POP %s (%s)" % (what, host, var), _hostvars_path(host, var)))
    for host in sorted(ctx.monitoring):
        value = ctx.monitoring[host].get("ansible_host")
        address = _host_address(value)
        if address is None:
            warnings.note(_hostvars_path(host, "ansible_host"),
                          "%s: the address of monitoring host %s is not known, so the POPs cannot exempt it from "
                          "bans and rate limits (set ansible_host to its address, or list the address in "
                          "anycast_edge_filters.allow)"
                          % ("is not set" if value is None else "%s is not an IPv4 address" % _show(value), host))
        else:
            fleet.append((host, address, "monitoring host %s (ansible_host)" % host, _hostvars_path(host, "ansible_host")))

    def usable(address):
        return not address.is_loopback() and not ctx.in_anycast(address)

    control_plane = {}
    reported = set()
    deny = [(index, netaddr.IPNetwork(cidr)) for index, cidr in enumerate(ctx.normalized["anycast_edge_filters"]["deny"])]
    for pop in sorted(ctx.pops):
        sources = [(address, "BGP neighbour %s of %s" % (name, pop), path)
                   for address, name, path in ctx.bgp_neighbors.get(pop, [])]
        sources.extend((address, reason, path) for owner, address, reason, path in fleet if owner != pop)
        own = set(address for owner, address, dummy, dummy in fleet if owner == pop)
        reasons = {}
        for address, reason, path in sources:
            if not usable(address) or address in own:
                continue
            reasons.setdefault(address, []).append(reason)
            for index, network in deny:
                if address in network and (index, path) not in reported:
                    reported.add((index, path))
                    problems.add("anycast_edge_filters.deny[%d]" % index, str(network.cidr),
                                 "covers %s, the %s (%s): deny beats the control plane's exemption, every packet "
                                 "from it would be dropped" % (address, reason, path))
        control_plane[pop] = [{"address": "%s/32" % address, "reason": "; ".join(reasons[address])}
                              for address in sorted(reasons)]
    ctx.normalized["control_plane"] = control_plane


def check(variables, pops, backends, monitoring=None):
    """Validate the schema. Returns (problems, normalized); see check_all for the warnings."""
    problems, warnings, normalized = check_all(variables, pops, backends, monitoring)
    return problems, normalized


def check_all(variables, pops, backends, monitoring=None):
    """Run every registered check. Returns (problems, warnings, normalized).

    variables: the schema vars (anycast_edge_asn, anycast_edge_prefixes, anycast_edge_services,
        anycast_edge_filters), as the play sees them.
    pops, backends: {inventory hostname: {its POP_VARS / BACKEND_VARS, absent ones None}} of
        the `pops` and `backends` groups.
    monitoring: the same of group `monitoring` (MONITORING_VARS), or None for no such group.
    problems: list of strings, one per problem (empty when the inventory is fine).
    warnings: list of strings, one per risk that is allowed but should be known.
    normalized: the variables with defaults filled in and CIDRs in canonical form (only
        meaningful when there is no problem).
    """
    ctx = _Context(variables, pops, backends, monitoring)
    for function in CHECKS:
        function(ctx)
    return ctx.problems.lines, ctx.warnings.lines, ctx.normalized


@inventory_check
def _check_cookie_keys(ctx):
    """The edge cookie keys, when the inventory sets them: well formed (never shown), and the same
    on every POP - a challenge one POP issues must be accepted by the next (docs/data-plane.md).
    Unset everywhere, the xdp_edge role makes one key file on the controller for the fleet."""
    keys_of = {}
    for host in sorted(ctx.pops):
        value = ctx.pops[host].get("anycast_edge_cookie_keys")
        if value is None:
            continue
        path = _hostvars_path(host, "anycast_edge_cookie_keys")
        try:
            keys_of[host] = _rules.parse_cookie_keys(value, path)
        except _rules.RuleError as exc:
            ctx.problems.lines.append("%s (not shown)" % exc)
    if keys_of and len(keys_of) != len(ctx.pops):
        unset = sorted(set(ctx.pops) - set(keys_of))
        ctx.problems.note(_hostvars_path(unset[0], "anycast_edge_cookie_keys"),
                          "unset while %s sets it: every POP needs the same keys (set it for group pops)"
                          % sorted(keys_of)[0])
    distinct = sorted(set(keys_of.values()))
    if len(distinct) > 1:
        differing = sorted(host for host in keys_of if keys_of[host] != keys_of[sorted(keys_of)[0]])
        ctx.problems.note(_hostvars_path(differing[0], "anycast_edge_cookie_keys"),
                          "(not shown) differs from %s's: every POP needs the same keys, or a player's "
                          "challenge from one POP is refused by the next (set it for group pops)" % sorted(keys_of)[0])


def secrets(pops):
    """Every secret value among the POPs' settings (for the module to mask in its output)."""
    found = []
    for hostvars in (pops or {}).values():
        keys = (hostvars or {}).get("anycast_edge_cookie_keys")
        if isinstance(keys, (list, tuple)):
            found.extend(key.strip() for key in keys if isinstance(key, str) and key.strip())
            found.extend(key for key in keys if isinstance(key, str) and key.strip() and key != key.strip())
        for var in NATS_SECRET_VARS:
            value = (hostvars or {}).get(var)
            if isinstance(value, str) and value.strip():
                found.extend(set([value, value.strip()]))
        neighbors = (hostvars or {}).get("anycast_edge_bgp_neighbors")
        if isinstance(neighbors, (list, tuple)):
            for neighbor in neighbors:
                if isinstance(neighbor, dict):
                    for key in SECRET_KEYS:
                        if isinstance(neighbor.get(key), str) and neighbor[key]:
                            found.append(neighbor[key])
    return found


def validate(variables, pops, backends, monitoring=None):
    """Every problem of the inventory, one line each (empty list: all good)."""
    return check(variables, pops, backends, monitoring)[0]


# --- payload rules (anycast_edge_filters.rules, docs/payload-rules.md) ---------------------------

@inventory_check
def _check_payload_rules(ctx):
    """Every problem of every rule, with its path and value (one parser: _payload_rules, which
    edge_rules packs with); the normalized list goes to anycast_edge_filters.rules."""
    raw_filters = ctx.variables.get("anycast_edge_filters")
    raw_rules = raw_filters.get("rules") if isinstance(raw_filters, dict) else None
    rules, problems = _payload_rules.parse_rules(raw_rules, "anycast_edge_filters.rules")
    for path, value, reason in problems:
        ctx.problems.add(path, value, reason)
    filters = ctx.normalized.setdefault("anycast_edge_filters", {})
    filters["rules"] = [] if problems else rules


# --- the validated inventory -> edge_rules' rules (on the controller) -------------------------

def resolve_rules(normalized):
    """edge_rules' rule parameters from a validated, normalized inventory (_inventory.check):
    service ids filled in, backend host names replaced by their tunnel addresses. The POP's own
    parameters (pin_root, iface, tunnel_address) are added by the role from its host vars, and
    its control_plane is control_plane[inventory_hostname] ({POP: [{address, reason}]}: each POP
    has its own BGP neighbours and leaves itself out)."""
    backend_addresses = normalized["backend_addresses"]
    filters = normalized["anycast_edge_filters"]
    services = []
    for service in normalized["anycast_edge_services"]:
        resolved = {
            "name": service["name"],
            "id": service.get("id") or _rules.default_service_id(service["name"]),
            "address": service["address"],
            "protocol": service["protocol"],
            "port": service.get("port") or 0,
            "backend_address": backend_addresses[service["backend"]],
            "a2s_cache": bool(service.get("a2s_cache")),
            "a2s_snoop": bool(service.get("a2s_snoop")),
            "a2s_max_age_sec": service.get("a2s_max_age_sec") or _rules.DEFAULT_A2S_MAX_AGE_SEC,
        }
        if service.get("rate_limit"):
            resolved["rate_limit"] = dict(service["rate_limit"])
        resolved.update(resolve_attack_settings(service))
        services.append(resolved)
    return {
        "services": services,
        "anycast_prefixes": list(normalized["anycast_edge_prefixes"]),
        "backends": sorted(set(backend_addresses.values()), key=socket.inet_aton),
        "allow": list(filters["allow"]),
        "deny": list(filters["deny"]),
        "rate_limits": dict((name, dict(limit)) for name, limit in filters["rate_limits"].items()),
        "ban_sec": filters["ban_sec"],
        "punch_idle_sec": filters["punch_idle_sec"],
        "a2s_cookie_epoch_sec": filters["a2s_cookie_epoch_sec"],
        "payload_rules": [dict(rule) for rule in filters.get("rules") or []],
        "control_plane": dict((pop, [dict(item) for item in items])
                              for pop, items in normalized.get("control_plane", {}).items()),
        "wireguard_pairs": wireguard_pairs(normalized),
        "verified_idle_sec": normalized.get("anycast_edge_verified_idle_sec", _rules.DEFAULT_VERIFIED_IDLE_SEC),
        # For the agent (edge_agent's template), not for XDP: {service name: its attack detection}.
        "attack_detection": dict((service["name"], dict(service["attack_detection"]))
                                 for service in normalized["anycast_edge_services"] if "attack_detection" in service),
    }


def resolve_attack_settings(service):
    """A normalized service's game_protocol, attack_mode, admission and syn_auth for edge_rules (defaults
    filled in: the rules say exactly what XDP gets)."""
    admission = dict(_rules.DEFAULT_ADMISSION)
    admission.update(service.get("admission") or {})
    return {
        "game_protocol": service.get("game_protocol") or _rules.DEFAULT_GAME_PROTOCOL,
        "attack_mode": service.get("attack_mode") or _rules.DEFAULT_ATTACK_MODE,
        "admission": admission,
        "syn_auth": service.get("syn_auth") or _rules.DEFAULT_SYN_AUTH,
    }


def wireguard_pairs(normalized):
    """{POP: [{backend, device}]}: edge_rules' wireguard_pairs of each POP that has WireGuard pairs -
    the backend's tunnel address and the POP's interface toward it (the name wireguard_transport
    gives it), sorted by backend name like the interfaces. None while anycast_edge_wireguard_data_plane
    is off (the default): every pair's players then go over IPIP (_check_wireguard_data_plane)."""
    if not normalized.get("wireguard_data_plane"):
        return {}
    addresses = normalized["backend_addresses"]
    pairs = {}
    for pop, by_backend in normalized.get("transports", {}).items():
        listed = [{"backend": addresses[backend], "device": _transport.interface_name(backend)}
                  for backend, transport in sorted(by_backend.items()) if transport == "wireguard"]
        if listed:
            pairs[pop] = listed
    return pairs


# The rules of one POP's own (by POP in resolve_rules' result).
PER_POP_RULES = ("control_plane", "wireguard_pairs")


def pop_rules(resolved, pop):
    """The rules edge_rules converges on one POP (the content of its rules file): resolve_rules'
    rules with this POP's own control plane and WireGuard pairs (none: every pair IPIP)."""
    rules = dict((name, resolved[name]) for name in _rules.RULES_FILE_OPTIONS if name not in PER_POP_RULES)
    rules["control_plane"] = resolved["control_plane"].get(pop, [])
    rules["wireguard_pairs"] = resolved.get("wireguard_pairs", {}).get(pop, [])
    return rules


# --- the fleet sync's NATS cluster (roles/nats_fleet, the agent's fleet_sync; docs/fleet-sync.md) --

# What the agent's fleet_sync takes from anycast_edge_fleet_sync_options (the connection itself -
# servers, login, TLS - is rendered by the roles). tests/unit/test_inventory.py keeps these equal
# to the agent's FleetSyncConfig fields.
FLEET_SYNC_OPTION_KEYS = ("stream", "replicas", "max_age_sec", "punch_scan_interval_sec",
                          "sources_scan_interval_sec", "import_rate_per_pop", "import_burst_per_pop",
                          "import_max_entries_per_pop", "kinds")
FLEET_SYNC_KINDS = ("punch", "ban", "verified")
FLEET_SYNC_DEFAULT_REPLICAS = 3
# The agent's default stream (FleetSyncConfig.stream): the servers' permissions name it.
FLEET_SYNC_DEFAULT_STREAM = "ANYCAST_EDGE_FLEET"
# JetStream's limit on a stream's replicas.
FLEET_SYNC_MAX_REPLICAS = 5
NATS_PORT_VARS = ("anycast_edge_nats_client_port", "anycast_edge_nats_cluster_port", "anycast_edge_nats_monitor_port")
# A POP's inventory name is its NATS user and, '.' written '~', a token of the subjects it may
# publish on (fleet_sync.origin_token): no whitespace, wildcard or quote.
NATS_POP_NAME = re.compile(r"[A-Za-z0-9_.-]+")
STREAM_NAME = re.compile(r"[A-Za-z0-9_-]+")
# The shortest password a POP may log in with: the NATS client port is on the management network.
MIN_NATS_PASSWORD = 16
PEM_CERTIFICATE = re.compile(r"\s*(-----BEGIN CERTIFICATE-----\s[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----\s*)+")
# The SHA-256 of the DER of the VM lab's NATS CA (inventories/lab/group_vars/pops.yml): its
# certificates and keys are committed in plain text, so anybody can present them. Refused
# unless the inventory says it is the lab (anycast_edge_lab_inventory); a unit test pins it to
# the lab's certificate.
LAB_NATS_CA_SHA256 = "1b7197548fc5298bd1140ed1cd2ddcbae0011d31d5831da1d0e4160d41dbc268"
PEM_PRIVATE_KEY = re.compile(r"\s*-----BEGIN ((RSA|EC) )?PRIVATE KEY-----\s[A-Za-z0-9+/=\s]+-----END ((RSA|EC) )?PRIVATE KEY-----\s*")


def nats_subject_token(pop_name):
    """A POP's name as one NATS subject token ('.' separates tokens; it is written '~'). The same
    rule as the agent's fleet_sync.origin_token (a unit test keeps them equal)."""
    return pop_name.replace(".", "~")


def pem_certificate_sha256s(pem):
    """The SHA-256 (hex) of the DER of each certificate in a PEM text that PEM_CERTIFICATE matched;
    a body that is not valid base64 has none (what TLS makes of it is the servers' business)."""
    digests = []
    for body in re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", pem, re.S):
        try:
            digests.append(hashlib.sha256(base64.b64decode("".join(body.split()), validate=True)).hexdigest())
        except (binascii.Error, ValueError):
            continue
    return digests


def _fleet_sync_options(problems, value, pop_count):
    """The agent's fleet_sync options of anycast_edge_fleet_sync_options, checked; replicas
    defaults to min(3, POPs) (a stream cannot have more replicas than servers), stream to the
    agent's (the servers' permissions name it)."""
    path = "anycast_edge_fleet_sync_options"
    options = {}
    if value is not None and _mapping(problems, path, value) is not None:
        _unknown_keys(problems, path, value, FLEET_SYNC_OPTION_KEYS)
        for key in ("max_age_sec", "punch_scan_interval_sec", "sources_scan_interval_sec", "import_rate_per_pop"):
            if value.get(key) is not None:
                number = value[key]
                if isinstance(number, bool) or not isinstance(number, (int, float)) or number <= 0:
                    problems.add("%s.%s" % (path, key), number, "is not a number > 0")
                else:
                    options[key] = number
        for key in ("import_burst_per_pop", "import_max_entries_per_pop"):
            if value.get(key) is not None:
                number = _integer(problems, "%s.%s" % (path, key), value[key], strictly_positive=True)
                if number is not None:
                    options[key] = number
        if value.get("replicas") is not None:
            replicas = _integer(problems, path + ".replicas", value["replicas"], minimum=1,
                                maximum=FLEET_SYNC_MAX_REPLICAS)
            if replicas is not None and replicas > pop_count:
                problems.add(path + ".replicas", value["replicas"],
                             "is more than the %d POP(s) of group pops (one server each)" % pop_count)
            elif replicas is not None:
                options["replicas"] = replicas
        if value.get("stream") is not None:
            if not isinstance(value["stream"], str) or not STREAM_NAME.fullmatch(value["stream"]):
                problems.add(path + ".stream", value["stream"], "is not a JetStream stream name ([A-Za-z0-9_-]+)")
            else:
                options["stream"] = value["stream"]
        if value.get("kinds") is not None:
            kinds = value["kinds"]
            if not isinstance(kinds, list) or not kinds or any(kind not in FLEET_SYNC_KINDS for kind in kinds):
                problems.add(path + ".kinds", kinds, "is not a list of %s" % ", ".join(FLEET_SYNC_KINDS))
            else:
                options["kinds"] = list(kinds)
    options.setdefault("replicas", max(1, min(FLEET_SYNC_DEFAULT_REPLICAS, pop_count)))
    options.setdefault("stream", FLEET_SYNC_DEFAULT_STREAM)
    return options


def _nats_ports(problems, variables):
    ports = {}
    for var in NATS_PORT_VARS:
        if variables.get(var) is not None:
            port = _integer(problems, var, variables[var], minimum=1, maximum=65535)
            if port is not None:
                if port in ports.values():
                    other = [name for name, number in ports.items() if number == port][0]
                    problems.add(var, variables[var], "is also %s" % other)
                ports[var] = port
    return ports


def _nats_pem(problems, host, hostvars, var, pattern, what, malformed):
    """Report the POP's ``var`` missing (it is ``what``) or not matching the PEM ``pattern``."""
    value = hostvars.get(var)
    path = _hostvars_path(host, var)
    if not value:
        problems.note(path, "is required with anycast_edge_fleet_sync (%s)" % what)
    elif not isinstance(value, str) or not pattern.fullmatch(value):
        problems.note(path, malformed)


@inventory_check
def _check_fleet_sync(ctx):
    """anycast_edge_fleet_sync (off by default: a single POP needs no NATS) and, when it is on,
    what the POPs' NATS cluster needs: each POP's address (anycast_edge_nats_address, else its
    ansible_host), password, certificate and key, the fleet's CA, the ports, the agent's options.
    Secrets are checked, never shown. normalized["fleet_sync"]: {enabled, pops: {POP: {address,
    origin}}, options} for the roles (nats_fleet, edge_agent)."""
    problems = ctx.problems
    lab = ctx.variables.get("anycast_edge_lab_inventory")
    if lab is not None:
        lab = _boolean(problems, "anycast_edge_lab_inventory", lab)
    enabled = ctx.variables.get("anycast_edge_fleet_sync")
    if enabled is None:
        enabled = False
    elif _boolean(problems, "anycast_edge_fleet_sync", enabled) is None:
        enabled = False
    ctx.normalized["fleet_sync"] = {"enabled": enabled}
    if not enabled:
        return
    ca = ctx.variables.get("anycast_edge_nats_tls_ca")
    if not ca:
        problems.note("anycast_edge_nats_tls_ca", "is required with anycast_edge_fleet_sync: the PEM of the CA that "
                      "signs every POP's NATS certificate (routes and clients are verified against it)")
    elif not isinstance(ca, str) or not PEM_CERTIFICATE.fullmatch(ca):
        # Not shown: whatever was put there by mistake may be a key.
        problems.note("anycast_edge_nats_tls_ca", "is not a PEM certificate (-----BEGIN CERTIFICATE----- ...)")
    elif LAB_NATS_CA_SHA256 in pem_certificate_sha256s(ca) and lab is not True:
        problems.note("anycast_edge_nats_tls_ca", "is the VM lab's CA, whose certificates and keys are public in this "
                      "collection's repository: anybody could join this fleet's NATS cluster with them. Make your "
                      "own CA and certificates (roles/nats_fleet/README.md); only the lab's inventory sets "
                      "anycast_edge_lab_inventory: true")
    _nats_ports(problems, ctx.variables)
    pops = {}
    owner = {}
    for host in sorted(ctx.pops):
        hostvars = ctx.pops[host]
        if not NATS_POP_NAME.fullmatch(host):
            problems.add("groups['pops']", host, "cannot be a NATS user and subject token (the fleet sync's origin): "
                         "use [A-Za-z0-9_.-] in the POP's inventory name")
        var = "anycast_edge_nats_address" if hostvars.get("anycast_edge_nats_address") is not None else "ansible_host"
        path = _hostvars_path(host, var)
        value = hostvars.get(var)
        address = _host_address(value)
        if address is None:
            problems.add(path, value, "is not an IPv4 address: the POP's NATS server listens and routes on "
                         "anycast_edge_nats_address (default: ansible_host), which must be one")
        elif address.is_loopback() and len(ctx.pops) > 1:
            problems.add(path, value, "is a loopback address: the other POPs' NATS servers cannot route to it")
        elif ctx.in_anycast(address):
            problems.add(path, value, "is inside an anycast prefix; the NATS cluster runs over the management network")
        elif address in owner:
            problems.add(path, value, "is also the NATS address of %s" % owner[address])
        else:
            owner[address] = host
            pops[host] = {"address": str(address), "origin": nats_subject_token(host)}
        password = hostvars.get("anycast_edge_nats_password")
        path = _hostvars_path(host, "anycast_edge_nats_password")
        if password is None or password == "":
            problems.note(path, "is required with anycast_edge_fleet_sync (this POP's NATS login; vault it)")
        elif not isinstance(password, str) or len(password) < MIN_NATS_PASSWORD or password.strip() != password \
                or re.search(r"[\x00-\x1f\x7f]", password):
            problems.note(path, "(not shown) must be a string of at least %d characters, without control characters "
                          "or surrounding spaces" % MIN_NATS_PASSWORD)
        _nats_pem(problems, host, hostvars, "anycast_edge_nats_tls_cert", PEM_CERTIFICATE,
                  "the PEM of this POP's NATS certificate, signed by anycast_edge_nats_tls_ca, naming its NATS address",
                  "is not a PEM certificate (-----BEGIN CERTIFICATE----- ...)")
        _nats_pem(problems, host, hostvars, "anycast_edge_nats_tls_key", PEM_PRIVATE_KEY,
                  "the PEM of this POP's NATS private key; vault it",
                  "(not shown) is not a PEM private key (-----BEGIN PRIVATE KEY----- ...)")
    options = _fleet_sync_options(problems, ctx.variables.get("anycast_edge_fleet_sync_options"), len(ctx.pops))
    ctx.normalized["fleet_sync"] = {"enabled": True, "pops": pops, "options": options}
