# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Validation of the anycast.edge inventory schema (run on the controller, before any host).

check() looks at everything and returns every problem at once, each naming the variable path
and the bad value, e.g.

    anycast_edge_services[2].address: 203.0.113.9 is not inside any of anycast_edge_prefixes

An operator fixes a whole inventory in one round instead of one error per playbook run. The
schema itself is documented in roles/validate_inventory/meta/argument_specs.yml and README.md.

Addresses are checked with netaddr (installed on the controller with the collection's
requirements; the module reports it missing otherwise).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

try:
    import netaddr
    HAS_NETADDR = True
except ImportError:  # reported by the inventory_check module via missing_required_lib
    netaddr = None
    HAS_NETADDR = False

from ansible_collections.anycast.edge.plugins.module_utils import _rules

SERVICE_NAME = re.compile(r"^[a-z0-9_-]+$")
# Linux interface names: 1..15 bytes, no '/', no whitespace, not '.' or '..'.
INTERFACE_NAME = re.compile(r"^[^/\s]{1,15}$")
PROTOCOLS = ("udp", "tcp", "icmp")
RATE_LIMIT_FIELDS = ("packets_per_sec", "bytes_per_sec")
MAX_ASN = 4294967295

SERVICE_KEYS = ("name", "id", "address", "protocol", "port", "backend", "a2s_cache", "a2s_snoop",
                "a2s_refresh_sec", "a2s_max_age_sec", "rate_limit")
FILTER_KEYS = ("allow", "deny", "rate_limits", "ban_sec", "punch_idle_sec", "a2s_cookie_epoch_sec")

# Defaults of the schema (also in roles/validate_inventory/defaults/main.yml and the specs).
SERVICE_DEFAULTS = {"a2s_cache": False, "a2s_refresh_sec": 5, "a2s_max_age_sec": 30}
FILTER_DEFAULTS = {"allow": [], "deny": [], "rate_limits": {}, "ban_sec": 60, "punch_idle_sec": 120,
                   "a2s_cookie_epoch_sec": 30}


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
    if isinstance(value, str) and re.match(r"^-?[0-9]+$", value.strip()):
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


def _boolean(problems, path, value):
    if not isinstance(value, bool):
        problems.add(path, value, "is not a boolean (true or false)")
        return None
    return value


def _ipv4_address(problems, path, value):
    """The canonical text of an IPv4 address, or None after reporting."""
    if not isinstance(value, str):
        problems.add(path, value, "is not an IPv4 address")
        return None
    try:
        address = netaddr.IPAddress(value)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        problems.add(path, value, "is not an IPv4 address")
        return None
    if address.version != 4:
        problems.add(path, value, "is not an IPv4 address (IPv6 is not supported yet)")
        return None
    return address


def _ipv4_network(problems, path, value):
    """netaddr.IPNetwork of a CIDR without host bits, or None after reporting."""
    if not isinstance(value, str):
        problems.add(path, value, "is not a CIDR (a string such as 198.51.100.0/24)")
        return None
    try:
        network = netaddr.IPNetwork(value)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        problems.add(path, value, "is not a valid IPv4 CIDR")
        return None
    if network.version != 4:
        problems.add(path, value, "is an IPv6 prefix (only IPv4 is supported yet)")
        return None
    if network.ip != network.network:
        problems.add(path, value, "has host bits set (did you mean %s?)" % network.cidr)
        return None
    return network


def _mapping(problems, path, value):
    if not isinstance(value, dict):
        problems.add(path, value, "is not a mapping")
        return None
    return value


def _sequence(problems, path, value):
    if not isinstance(value, (list, tuple)):
        problems.add(path, value, "is not a list")
        return None
    return value


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


def check(variables, pops, backends):
    """Validate the schema. Returns (problems, normalized).

    variables: the schema vars (anycast_edge_asn, anycast_edge_prefixes, anycast_edge_services,
        anycast_edge_filters), as the play sees them.
    pops, backends: {inventory hostname: {its anycast_edge_* host vars}} of the `pops` and
        `backends` groups.
    problems: list of strings, one per problem (empty when the inventory is fine).
    normalized: the variables with defaults filled in and CIDRs in canonical form (only
        meaningful when there is no problem).
    """
    problems = _Problems()
    normalized = {}

    if variables.get("anycast_edge_asn") is None:
        problems.note("anycast_edge_asn", "is required (the ASN the POPs announce from)")
    else:
        normalized["anycast_edge_asn"] = _integer(problems, "anycast_edge_asn", variables["anycast_edge_asn"],
                                                  minimum=1, maximum=MAX_ASN)

    # --- anycast prefixes -----------------------------------------------------------------
    prefixes = []
    raw_prefixes = variables.get("anycast_edge_prefixes")
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
    normalized["anycast_edge_prefixes"] = [str(network.cidr) for network in prefixes]

    def in_anycast(address):
        return any(address in network for network in prefixes)

    # --- hosts ------------------------------------------------------------------------------
    tunnel_owner = {}

    def tunnel_address(host, hostvars):
        path = _hostvars_path(host, "anycast_edge_tunnel_address")
        value = hostvars.get("anycast_edge_tunnel_address")
        if value is None:
            problems.note(path, "is required (the address IPIP tunnels use on this host)")
            return None
        address = _ipv4_address(problems, path, value)
        if address is None:
            return None
        if in_anycast(address):
            problems.add(path, value, "is inside an anycast prefix; it must be the host's own unicast address")
        elif address in tunnel_owner:
            problems.add(path, value, "is also the tunnel address of %s" % tunnel_owner[address])
        else:
            tunnel_owner[address] = host
        return address

    for host in sorted(pops):
        hostvars = pops[host] or {}
        path = _hostvars_path(host, "anycast_edge_uplink")
        uplink = hostvars.get("anycast_edge_uplink")
        if uplink is None or uplink == "":
            problems.note(path, "is required (the interface XDP attaches to)")
        elif not isinstance(uplink, str) or not INTERFACE_NAME.match(uplink) or uplink in (".", ".."):
            problems.add(path, uplink, "is not an interface name")
        tunnel_address(host, hostvars)
        devices = hostvars.get("anycast_edge_egress_devices")
        dev_path = _hostvars_path(host, "anycast_edge_egress_devices")
        if devices is not None and _sequence(problems, dev_path, devices) is not None:
            for index, device in enumerate(devices):
                if not isinstance(device, str) or not INTERFACE_NAME.match(device) or device in (".", ".."):
                    problems.add("%s[%d]" % (dev_path, index), device, "is not an interface name")

    backend_addresses = {}
    for host in sorted(backends):
        address = tunnel_address(host, backends[host] or {})
        if address is not None:
            backend_addresses[host] = str(address)
    if len(backends) > _rules.CAPACITY["edge_backends"]:
        problems.note("groups['backends']", "%d backends, at most %d fit" % (len(backends), _rules.CAPACITY["edge_backends"]))
    normalized["backend_addresses"] = backend_addresses

    # --- services ---------------------------------------------------------------------------
    services = []
    raw_services = variables.get("anycast_edge_services")
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
        elif not isinstance(name, str) or not SERVICE_NAME.match(name):
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
            if address is not None and prefixes and not in_anycast(address):
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
        services.append(service)
    normalized["anycast_edge_services"] = services

    # --- filters ----------------------------------------------------------------------------
    raw_filters = variables.get("anycast_edge_filters")
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
    return problems.lines, normalized


def validate(variables, pops, backends):
    """Every problem of the inventory, one line each (empty list: all good)."""
    return check(variables, pops, backends)[0]
