# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# MIT License (see https://opensource.org/licenses/MIT)
"""IPv4 addresses, routes and policy rules that the collection owns: want / have / compare.

The module ``ip_routing`` is a thin shell around this file. Each kind of entry is found by the
mark the collection gives it, so that what inventory no longer declares is removed and what
somebody else made is never touched:

* an address by its label (``lo:anycast``);
* a route by its routing protocol number (``proto 242``);
* a policy rule by its priority (the mapper's rules sit at their own priority).

``plan()`` is pure: the wanted entries and the present ones (as read from netlink, ours only)
in, the entries to add and to remove out, in the order that keeps the host working (new
entries first, then the stale ones go). ``read_present()`` and ``apply()`` are the pyroute2
side; they use only calls pyroute2 0.7 (Debian 12) and 0.9 (PyPI) share: ``get_addr``,
``get_routes``, ``get_rules``, ``addr``, ``route`` and ``rule``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import ipaddress
import socket

from ansible_collections.anycast.edge.plugins.module_utils._netlink import NetlinkError

RT_TABLE_MAIN = 254
# Kinds, in the order entries are added (an address before a route from it, a route before the
# rule that looks it up) and removed in reverse.
KINDS = ("addresses", "routes", "rules")

Address = collections.namedtuple("Address", ["address", "dev"])
Address.__doc__ = """An address ``a.b.c.d/len`` on device ``dev``."""
Route = collections.namedtuple("Route", ["dst", "table", "dev", "src"])
Route.__doc__ = """A unicast route to ``dst`` (``a.b.c.d/len``; ``0.0.0.0/0`` for the default) in
``table`` out of ``dev``, with preferred source ``src`` (None: the kernel picks one). (dst, table)
is its identity: the kernel replaces a route of the same destination and table in one step."""
Rule = collections.namedtuple("Rule", ["src", "table", "priority"])
Rule.__doc__ = """A policy rule: packets from ``src`` (``a.b.c.d/len``) look up ``table``."""


class RoutingError(Exception):
    """A wanted entry is invalid, or netlink refused a change; the message says which.

    ``host_changed`` is True when the failure left the host different from before (the undo of
    the changes made before it failed too), so that the module reports ``changed`` truthfully."""

    def __init__(self, message, host_changed=False):
        super(RoutingError, self).__init__(message)
        self.host_changed = host_changed


def show(entry):
    """One entry as ``ip`` would write it (the diff's and the result's lines)."""
    if isinstance(entry, Address):
        return "%s dev %s" % (entry.address, entry.dev)
    if isinstance(entry, Route):
        dst = "default" if entry.dst == "0.0.0.0/0" else entry.dst
        text = "%s dev %s table %d" % (dst, entry.dev, entry.table)
        return text + (" src %s" % entry.src if entry.src else "")
    return "from %s lookup %d priority %d" % (entry.src, entry.table, entry.priority)


def _network(value, path):
    """``a.b.c.d/len`` (a bare address is /32; ``default`` is 0.0.0.0/0); RoutingError naming ``path``."""
    if value == "default":
        return "0.0.0.0/0"
    try:
        return str(ipaddress.IPv4Network(u"%s" % value, strict=True))
    except ValueError as exc:
        raise RoutingError("%s: %r is not an IPv4 network (%s)" % (path, value, exc))


def _table(value, path):
    try:
        table = int(value)
    except (TypeError, ValueError):
        table = 0
    if not 1 <= table <= 0xFFFFFFFF or table in (253, 255):  # default and local are the kernel's
        raise RoutingError("%s: %r is not a routing table number (1..4294967295, not 253 or 255)" % (path, value))
    return table


def wanted_entries(addresses, routes, rules):
    """The module's options as sets of entries, every problem raised with its option path."""
    wanted = {"addresses": set(), "routes": set(), "rules": set()}
    for index, item in enumerate(addresses or []):
        path = "addresses[%d]" % index
        try:
            interface = ipaddress.IPv4Interface(u"%s" % item["address"])
        except ValueError as exc:
            raise RoutingError("%s.address: %r is not an IPv4 address (%s)" % (path, item["address"], exc))
        wanted["addresses"].add(Address(interface.with_prefixlen, item["dev"]))
    identities = {}
    for index, item in enumerate(routes or []):
        path = "routes[%d]" % index
        route = Route(_network(item["dst"], path + ".dst"), _table(item.get("table", RT_TABLE_MAIN), path + ".table"),
                      item["dev"], item.get("src") or None)
        if route.src is not None:
            try:
                route = route._replace(src=str(ipaddress.IPv4Address(u"%s" % route.src)))
            except ValueError as exc:
                raise RoutingError("%s.src: %r is not an IPv4 address (%s)" % (path, route.src, exc))
        other = identities.setdefault((route.dst, route.table), route)
        if other != route:
            raise RoutingError("%s: a second route to %s in table %d (%s and %s)"
                               % (path, route.dst, route.table, show(other), show(route)))
        wanted["routes"].add(route)
    for index, item in enumerate(rules or []):
        path = "rules[%d]" % index
        wanted["rules"].add(Rule(_network(item["src"], path + ".src"), _table(item["table"], path + ".table"),
                                 int(item["priority"])))
    return wanted


def plan(wanted, present):
    """What to do: ``(add, remove)``, each a list of entries in the order to apply them.

    ``present`` holds only our entries (read by their marks). A route whose destination and
    table stay but whose device or source change is in both lists: it is replaced in one step
    when added, and its removal is then a no-op (``apply`` skips it).
    """
    add, remove = [], []
    for kind in KINDS:
        add.extend(sorted(wanted[kind] - present[kind], key=show))
    for kind in reversed(KINDS):
        remove.extend(sorted(present[kind] - wanted[kind], key=show))
    return add, remove


def same_route(entry, others):
    """The route among ``others`` with ``entry``'s destination and table (one replaces the
    other), else None."""
    if not isinstance(entry, Route):
        return None
    for other in others:
        if isinstance(other, Route) and (other.dst, other.table) == (entry.dst, entry.table):
            return other
    return None


# -- pyroute2 -----------------------------------------------------------------------------------

def _attr(message, name, default=None):
    value = message.get_attr(name)
    return default if value is None else value


def _ifnames(ipr):
    return dict((link["index"], link.get_attr("IFLA_IFNAME")) for link in ipr.get_links())


def read_present(ipr, address_label=None, route_protocol=None, rule_priority=None):
    """Our entries now: addresses labelled ``address_label``, routes of ``route_protocol``, rules
    at ``rule_priority`` (a mark left at None: none of that kind is ours)."""
    names = _ifnames(ipr)
    present = {"addresses": set(), "routes": set(), "rules": set()}
    if address_label is not None:
        for message in ipr.get_addr(family=socket.AF_INET):
            if _attr(message, "IFA_LABEL") == address_label:
                address = _attr(message, "IFA_LOCAL") or _attr(message, "IFA_ADDRESS")
                present["addresses"].add(Address("%s/%d" % (address, message["prefixlen"]),
                                                 names.get(message["index"], "ifindex %d" % message["index"])))
    if route_protocol is not None:
        for message in ipr.get_routes(family=socket.AF_INET, table=None):
            if message["proto"] != route_protocol or message["type"] != 1:  # RTN_UNICAST
                continue
            oif = _attr(message, "RTA_OIF")
            present["routes"].add(Route("%s/%d" % (_attr(message, "RTA_DST", "0.0.0.0"), message["dst_len"]),
                                        _attr(message, "RTA_TABLE", message["table"]),
                                        names.get(oif, "ifindex %s" % oif), _attr(message, "RTA_PREFSRC")))
    if rule_priority is not None:
        for message in ipr.get_rules(family=socket.AF_INET):
            if _attr(message, "FRA_PRIORITY", 0) != rule_priority:
                continue
            present["rules"].add(Rule("%s/%d" % (_attr(message, "FRA_SRC", "0.0.0.0"), message["src_len"]),
                                      _attr(message, "FRA_TABLE", message["table"]), rule_priority))
    return present


def _ifindex(ipr, name):
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise RoutingError("no interface named %r in this network namespace" % name)
    return found[0]


def _request(ipr, command, entry, address_label, route_protocol):
    if isinstance(entry, Address):
        address, prefixlen = entry.address.split("/")
        kwargs = dict(index=_ifindex(ipr, entry.dev), address=address, prefixlen=int(prefixlen))
        if command == "add":
            kwargs["label"] = address_label
        ipr.addr(command, **kwargs)
    elif isinstance(entry, Route):
        kwargs = dict(dst=entry.dst, table=entry.table, proto=route_protocol)
        if command != "del":
            kwargs["oif"] = _ifindex(ipr, entry.dev)
            if entry.src:
                kwargs["prefsrc"] = entry.src
        ipr.route(command, **kwargs)
    else:
        address, src_len = entry.src.split("/")
        ipr.rule(command, table=entry.table, priority=entry.priority, src=address, src_len=int(src_len))


def apply(ipr, add, remove, address_label=None, route_protocol=None):
    """Make the changes; on a failure undo those already made (best effort) and raise
    RoutingError saying what failed (and whether the undo did)."""
    done = []  # (command, entry, the route it replaced or None), in the order made
    entry = None
    try:
        for entry in add:
            _request(ipr, "replace" if isinstance(entry, Route) else "add", entry, address_label, route_protocol)
            done.append(("add", entry, same_route(entry, remove)))
        for entry in remove:
            if same_route(entry, add) is not None:
                continue  # the added route took its place
            _request(ipr, "del", entry, address_label, route_protocol)
            done.append(("del", entry, None))
    except (NetlinkError, RoutingError) as exc:
        failed = "%s %s" % ("removing" if entry in remove else "adding", show(entry))
        undone = _undo(ipr, done, address_label, route_protocol)
        raise RoutingError("%s failed: %s%s" % (failed, exc, "" if undone else
                                                " (and undoing the changes before it failed too: the host is changed)"),
                           host_changed=not undone)


def _undo(ipr, done, address_label, route_protocol):
    """Undo ``done`` in reverse order: True if every step was undone."""
    ok = True
    for command, entry, replaced in reversed(done):
        try:
            if replaced is not None:
                _request(ipr, "replace", replaced, address_label, route_protocol)
            else:
                _request(ipr, "del" if command == "add" else "add", entry, address_label, route_protocol)
        except (NetlinkError, RoutingError):
            ok = False
    return ok
