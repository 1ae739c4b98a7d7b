# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# MIT License (see https://opensource.org/licenses/MIT)
"""IPv4-in-IPv4 tunnel links: wanted vs present state, and the pyroute2 calls that converge them.

The module ``ipip_tunnel`` is a thin shell around this file. The interesting part is pure:

* ``link_from_dumps()`` turns what pyroute2 returns for a link and its addresses (the plain
  dicts of ``message.dump()``, identical in pyroute2 0.7 and 0.9) into a flat *link state*
  dict: name, local, remote, ttl, mtu, addresses, admin_state, external, description, ...
* ``plan()`` compares a wanted state with a present one and says what to do: create, change
  attributes in place, or delete and re-create (with the reasons) when the kernel cannot
  change an attribute of an existing ipip link.

Unit tests feed both with recorded dumps (tests/unit/fixtures/ipip_*.json), so the decisions
are tested without an ipip-capable kernel. The pyroute2 side (``read_link``, ``apply``...) only
uses calls that 0.7 (Debian 12's python3-pyroute2) and 0.9 (PyPI) share: ``IPRoute.link``,
``link_lookup``, ``get_links``, ``get_addr``, ``addr`` and ``NetlinkError.code``.

What the kernel can and cannot change in place (net/ipv4/ipip.c ipip_changelink and
net/ipv4/ip_tunnel.c ip_tunnel_changelink):

* ``external`` (IFLA_IPIP_COLLECT_METADATA) is fixed at creation: a changelink carrying it is
  EINVAL, one without it leaves the tunnel in collect-metadata mode. Re-create.
* a point-to-point tunnel (remote set) cannot become a "remote any" one or back: the change of
  IFF_POINTOPOINT is EINVAL. Re-create.
* an external tunnel shares its (zero) endpoints with the fallback device tunl0, so a
  changelink on it may match tunl0 and fail with EEXIST; its ttl is re-created too.
* everything else (local, remote, ttl, mtu, admin state, alias, addresses) changes in place.
  A changelink rebuilds the tunnel parameters from the attributes it carries (missing = 0), so
  every ipip attribute we know is sent each time, unmanaged ones with their present value.

Which tunnels are ours: the ones whose interface alias (IFLA_IFALIAS) is ``anycast.edge`` or
starts with ``anycast.edge: `` (then followed by a description). Links without that mark are
never changed or deleted.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import ipaddress
import os
import re
import socket

# The one pyroute2 set-up (import, fallbacks, the socket) is _netlink's.
from ansible_collections.anycast.edge.plugins.module_utils._netlink import NetlinkError

MARK = "anycast.edge"
KIND = "ipip"
IFF_UP = 0x1
# Linux interface names: 1..15 bytes, no '/', ':' or whitespace, not '.' or '..'.
INTERFACE_NAME = re.compile(r"[^/:\s]{1,15}")  # whole name: use fullmatch
# An ipip link's maximum MTU is 65535 minus the outer IPv4 header (ip_tunnel_bind_dev).
MAX_MTU = 65535 - 20
MIN_MTU = 68
# What ``link_state`` contains, in the order diffs show it.
STATE_KEYS = ("name", "kind", "ours", "description", "local", "remote", "ttl", "mtu",
              "admin_state", "external", "addresses")
# Keys a wanted state may leave at None (= "leave as it is" / kernel default on creation).
OPTIONAL_KEYS = ("description", "local", "remote", "ttl", "mtu", "addresses")
MISSING_MODULE_HINT = ("the kernel lacks ipip (IPv4-in-IPv4 tunnels): load the module with "
                       "'modprobe ipip' (Debian: package linux-image-*, module ipip.ko; make it "
                       "permanent with 'ipip' in /etc/modules-load.d/)")


class IpipError(Exception):
    """A tunnel operation failed; the message says what, on which link, and why.

    ``host_changed`` is True when the failure left the host different from before (a restore
    that failed too), so that the module can report ``changed`` truthfully."""

    def __init__(self, message, host_changed=False):
        super(IpipError, self).__init__(message)
        self.host_changed = host_changed


# -- reading pyroute2 dumps ---------------------------------------------------------------------

def get_attr(dumped, name, default=None):
    """Value of the netlink attribute ``name`` in a ``message.dump()`` dict (first one wins)."""
    for pair in dumped.get("attrs", ()):
        if pair[0] == name:
            return pair[1]
    return default


def alias_is_ours(alias):
    return alias == MARK or (alias or "").startswith(MARK + ": ")


def alias_for(description):
    """The IFLA_IFALIAS marking a tunnel as ours, with the optional description after it."""
    return MARK if not description else "%s: %s" % (MARK, description)


def _description_from_alias(alias):
    if alias_is_ours(alias) and alias != MARK:
        return alias[len(MARK) + 2:]
    return None


def _endpoint(value):
    """An IFLA_IPIP_LOCAL/REMOTE value: 0.0.0.0 ("any") becomes None."""
    if value in (None, "0.0.0.0"):
        return None
    return value


def address_sort_key(cidr):
    interface = ipaddress.ip_interface(cidr)
    return (int(interface.ip), interface.network.prefixlen)


def addresses_from_dumps(address_dumps):
    """Sorted "a.b.c.d/len" of the IPv4 addresses in ``get_addr()`` dumps (IPv6 is ignored:
    an ipip link carries IPv4 and the kernel gives it no IPv6 link-local address)."""
    found = set()
    for dumped in address_dumps:
        if dumped.get("family") != socket.AF_INET:
            continue
        # On a point-to-point link IFA_LOCAL is our address and IFA_ADDRESS the peer's (equal
        # unless a peer was configured); the address we manage is the local one.
        local = get_attr(dumped, "IFA_LOCAL") or get_attr(dumped, "IFA_ADDRESS")
        found.add("%s/%d" % (local, dumped["prefixlen"]))
    return sorted(found, key=address_sort_key)


def link_from_dumps(link_dump, address_dumps):
    """The link state of one link from its ``get_links()`` dump and its ``get_addr()`` dumps.

    Keys: STATE_KEYS plus ``index`` and ``pmtudisc`` (kept so that an in-place change can send
    it back unchanged). ipip attributes are None for links of another kind.
    """
    linkinfo = get_attr(link_dump, "IFLA_LINKINFO") or {}
    kind = get_attr(linkinfo, "IFLA_INFO_KIND")
    data = get_attr(linkinfo, "IFLA_INFO_DATA") or {}
    if not isinstance(data, dict):  # pyroute2 gives a hex string for kinds it cannot decode
        data = {}
    alias = get_attr(link_dump, "IFLA_IFALIAS")
    is_ipip = kind == KIND
    return {
        "name": get_attr(link_dump, "IFLA_IFNAME"),
        "index": link_dump.get("index"),
        "kind": kind,
        "ours": alias_is_ours(alias),
        "description": _description_from_alias(alias),
        "local": _endpoint(get_attr(data, "IFLA_IPIP_LOCAL")) if is_ipip else None,
        "remote": _endpoint(get_attr(data, "IFLA_IPIP_REMOTE")) if is_ipip else None,
        "ttl": get_attr(data, "IFLA_IPIP_TTL", 0) if is_ipip else None,
        "pmtudisc": bool(get_attr(data, "IFLA_IPIP_PMTUDISC", 1)) if is_ipip else None,
        "mtu": get_attr(link_dump, "IFLA_MTU"),
        "admin_state": "up" if link_dump.get("flags", 0) & IFF_UP else "down",
        "external": bool(get_attr(data, "IFLA_IPIP_COLLECT_METADATA", False)) if is_ipip else False,
        "addresses": addresses_from_dumps(address_dumps),
    }


# -- wanted state -------------------------------------------------------------------------------

def _ipv4(parameter, value):
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise IpipError("%s: %r is not an IPv4 address" % (parameter, value))


def _cidr(value):
    try:
        interface = ipaddress.IPv4Interface(value)
    except ValueError:
        raise IpipError("addresses: %r is not an IPv4 address with an optional /prefix length"
                        % (value,))
    return "%s/%d" % (interface.ip, interface.network.prefixlen)


def wanted_state(name, local=None, remote=None, ttl=None, mtu=None, addresses=None,
                 admin_state="up", external=False, description=None):
    """Validated, normalised wanted state; None for an attribute means "not managed" (left as
    it is on an existing tunnel, the kernel's default on a new one). Raises IpipError naming
    the parameter and value."""
    if not INTERFACE_NAME.fullmatch(name or "") or name in (".", ".."):
        raise IpipError("name: %r is not a Linux interface name (1..15 characters, no '/', ':' "
                        "or whitespace)" % (name,))
    if external and (local or remote):
        raise IpipError("external: a collect-metadata tunnel takes no local or remote (the BPF "
                        "program or route sets them per packet); got local=%r remote=%r"
                        % (local, remote))
    if ttl is not None and not 0 <= ttl <= 255:
        raise IpipError("ttl: %r is not 0 (inherit from the inner packet) .. 255" % (ttl,))
    if mtu is not None and not MIN_MTU <= mtu <= MAX_MTU:
        raise IpipError("mtu: %r is not %d..%d" % (mtu, MIN_MTU, MAX_MTU))
    if admin_state not in ("up", "down"):
        raise IpipError("admin_state: %r is not up or down" % (admin_state,))
    if description is not None and ("\n" in description or len(alias_for(description)) > 255):
        raise IpipError("description: must be one line and at most %d characters"
                        % (255 - len(MARK) - 2))
    normalised = None
    if addresses is not None:
        normalised = sorted(set(_cidr(item) for item in addresses), key=address_sort_key)
    return {
        "name": name,
        "kind": KIND,
        "ours": True,
        "description": description,
        "local": _ipv4("local", local) if local else None,
        "remote": _ipv4("remote", remote) if remote else None,
        "ttl": ttl,
        "mtu": mtu,
        "admin_state": admin_state,
        "external": bool(external),
        "addresses": normalised,
    }


# -- the plan -----------------------------------------------------------------------------------

class Plan(object):
    """What converging one tunnel takes.

    ``action`` is one of "none", "create", "update", "recreate", "delete"; ``reasons`` lists why
    a re-create is needed; ``changes`` maps attribute -> (present, wanted) for in-place
    changes; ``add_addresses``/``del_addresses`` are the address changes; ``before``/``after``
    are the states for Ansible's diff (None = the link does not exist).
    """

    def __init__(self, action, before, after, reasons=None, changes=None, add_addresses=None,
                 del_addresses=None):
        self.action = action
        self.before = before
        self.after = after
        self.reasons = reasons or []
        self.changes = changes or {}
        self.add_addresses = add_addresses or []
        self.del_addresses = del_addresses or []

    @property
    def changed(self):
        return self.action != "none"

    def summary(self):
        """Human-readable lines, one per thing done (returned as the module's ``actions``)."""
        if self.action == "none":
            return []
        name = (self.after or self.before)["name"]
        if self.action == "delete":
            return ["delete %s" % name]
        lines = []
        if self.action == "create":
            lines.append("create %s" % name)
        elif self.action == "recreate":
            lines.append("re-create %s: %s" % (name, "; ".join(self.reasons)))
        for key in sorted(self.changes):
            present, wanted = self.changes[key]
            lines.append("set %s %s: %s -> %s" % (name, key, _show(present), _show(wanted)))
        for cidr in self.del_addresses:
            lines.append("remove address %s from %s" % (cidr, name))
        for cidr in self.add_addresses:
            lines.append("add address %s to %s" % (cidr, name))
        return lines


def _show(value):
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def public_state(state):
    """The state without internal keys, for diffs and return values (None stays None)."""
    if state is None:
        return None
    return dict((key, state.get(key)) for key in STATE_KEYS)


def merged(wanted, present):
    """The state after converging: wanted values, present ones where wanted says None. For a
    new link (present None) the unmanaged attributes are the kernel defaults."""
    defaults = {"ttl": 0, "addresses": [], "local": None, "remote": None, "description": None,
                "mtu": None}
    result = dict(wanted)
    for key in OPTIONAL_KEYS:
        if result.get(key) is None:
            if key in ("local", "remote"):
                continue  # None is a value here: "any"
            result[key] = present.get(key) if present is not None else defaults[key]
    return result


def recreate_reasons(wanted, present):
    """Why ``present`` cannot be turned into ``wanted`` in place (empty: it can)."""
    reasons = []
    if wanted["external"] != present["external"]:
        reasons.append("external %s -> %s cannot change on an existing link"
                       % (_show(present["external"]), _show(wanted["external"])))
    elif not wanted["external"] and (wanted["remote"] is None) != (present["remote"] is None):
        reasons.append("remote %s -> %s switches between point-to-point and 'remote any', "
                       "which the kernel refuses in place"
                       % (_show(present["remote"]), _show(wanted["remote"])))
    elif wanted["external"] and wanted["ttl"] is not None and wanted["ttl"] != present["ttl"]:
        reasons.append("ttl %s -> %s of an external (collect-metadata) tunnel is fixed at creation"
                       % (present["ttl"], wanted["ttl"]))
    return reasons


def plan(wanted, present):
    """Plan for making the link named ``wanted["name"]`` match ``wanted``.

    ``wanted`` comes from ``wanted_state()`` (or is None: the link must not exist);
    ``present`` from ``link_from_dumps()`` (or None: no link of that name). A present link
    that is not an ipip link marked as ours is an error: it is never touched.
    """
    if present is not None and (present["kind"] != KIND or not present["ours"]):
        name = present["name"]
        what = ("a %s link" % present["kind"]) if present["kind"] != KIND else \
            "an ipip link without the %r alias (not created by this collection)" % MARK
        raise IpipError("name: %s already exists and is %s; it is left alone - pick another "
                        "name or remove it yourself" % (name, what))
    if wanted is None:
        if present is None:
            return Plan("none", None, None)
        return Plan("delete", present, None)
    after = merged(wanted, present)
    if present is None:
        return Plan("create", None, after, add_addresses=list(after["addresses"]))
    reasons = recreate_reasons(wanted, present)
    if reasons:
        return Plan("recreate", present, after, reasons=reasons,
                    add_addresses=list(after["addresses"]))
    changes = {}
    for key in ("description", "local", "remote", "ttl", "mtu", "admin_state"):
        if after[key] != present[key]:
            changes[key] = (present[key], after[key])
    add = [cidr for cidr in after["addresses"] if cidr not in present["addresses"]]
    remove = [cidr for cidr in present["addresses"] if cidr not in after["addresses"]]
    if not changes and not add and not remove:
        return Plan("none", present, present)
    return Plan("update", present, after, changes=changes, add_addresses=add,
                del_addresses=remove)


def stale_tunnels(present_links, keep):
    """Names of the links that are ipip, ours and not in ``keep``, sorted."""
    keep = set(keep)
    return sorted(link["name"] for link in present_links
                  if link["kind"] == KIND and link["ours"] and link["name"] not in keep)


# -- kernel support -----------------------------------------------------------------------------

def ipip_module_present(sys_module="/sys/module", proc_modules="/proc/modules"):
    """Whether ipip is visibly in the running kernel: loaded, or built in.

    /sys/module/ipip exists in both cases (ipip has a module parameter, so even a built-in ipip
    shows up there); /proc/modules is checked too. False does not prove that creating will
    fail - the kernel loads the module on demand when it can (see ``modules_loadable``).
    """
    if os.path.isdir(os.path.join(sys_module, KIND)):
        return True
    if os.path.exists(proc_modules):
        with open(proc_modules) as modules:
            return any(line.split(" ", 1)[0] == KIND for line in modules)
    return False


def modules_loadable(proc_modules="/proc/modules"):
    """A kernel built without loadable-module support has no /proc/modules."""
    return os.path.exists(proc_modules)


def _is_missing_kind_error(exc):
    """The kernel's answer to RTM_NEWLINK of a kind it has no driver for (rtnl_newlink:
    'Unknown device type', EOPNOTSUPP after request_module failed)."""
    return getattr(exc, "code", None) in (errno.EOPNOTSUPP, errno.ENOTSUP) or \
        "Unknown device type" in str(exc)


# -- pyroute2 -----------------------------------------------------------------------------------

def _dump(message):
    return message.dump()


def read_link(ipr, name):
    """Link state of the link called ``name``, or None if there is none."""
    indices = list(ipr.link_lookup(ifname=name))
    if not indices:
        return None
    links = list(ipr.get_links(indices[0]))
    if not links:
        return None
    addresses = [_dump(message) for message in ipr.get_addr(index=indices[0], family=socket.AF_INET)]
    return link_from_dumps(_dump(links[0]), addresses)


def list_ipip_links(ipr):
    """Link state of every ipip link in the namespace (ours or not)."""
    found = []
    for message in ipr.get_links():
        dumped = _dump(message)
        if get_attr(get_attr(dumped, "IFLA_LINKINFO") or {}, "IFLA_INFO_KIND") == KIND:
            addresses = [_dump(item) for item in
                         ipr.get_addr(index=dumped["index"], family=socket.AF_INET)]
            found.append(link_from_dumps(dumped, addresses))
    return found


def _ipip_attributes(state):
    """Keyword arguments of IPRoute.link carrying every ipip attribute of ``state``."""
    arguments = {
        "kind": KIND,
        "ipip_local": state["local"] or "0.0.0.0",
        "ipip_remote": state["remote"] or "0.0.0.0",
        "ipip_ttl": state["ttl"] or 0,
    }
    if state.get("pmtudisc") is not None:
        arguments["ipip_pmtudisc"] = 1 if state["pmtudisc"] else 0
    return arguments


def _netlink_failure(what, name, exc):
    code = getattr(exc, "code", None)
    detail = os.strerror(code) if isinstance(code, int) and code > 0 else str(exc)
    hint = ""
    if code == errno.EEXIST:
        hint = (" (another ipip tunnel already has these endpoints - the kernel keeps one tunnel "
                "per local/remote pair, and one external tunnel per namespace)")
    return IpipError("%s %s: %s%s" % (what, name, detail, hint))


def _create(ipr, state):
    arguments = {"ifname": state["name"]}
    if state["external"]:
        arguments["kind"] = KIND
        arguments["ipip_collect_metadata"] = True
        if state["ttl"]:
            arguments["ipip_ttl"] = state["ttl"]
    else:
        arguments.update(_ipip_attributes(state))
    if state["mtu"]:
        arguments["mtu"] = state["mtu"]
    try:
        ipr.link("add", **arguments)
    except NetlinkError as exc:
        if _is_missing_kind_error(exc):
            raise IpipError("create %s: %s" % (state["name"], MISSING_MODULE_HINT))
        raise _netlink_failure("create", state["name"], exc)


def _index(ipr, name):
    indices = list(ipr.link_lookup(ifname=name))
    if not indices:
        raise IpipError("%s disappeared while being configured" % name)
    return indices[0]


def _set_common(ipr, index, state, changes=None):
    """Alias, MTU and admin state (the attributes every link kind has), then nothing else.

    ``changes`` limits it to the changed ones; None sets all three (a new link)."""
    arguments = {}
    if changes is None or "description" in changes:
        arguments["ifalias"] = alias_for(state["description"])
    if state["mtu"] and (changes is None or "mtu" in changes):
        arguments["mtu"] = state["mtu"]
    if arguments:
        ipr.link("set", index=index, **arguments)
    if changes is None or "admin_state" in changes:
        ipr.link("set", index=index, state=state["admin_state"])


def _add_address(ipr, index, cidr):
    interface = ipaddress.IPv4Interface(cidr)
    ipr.addr("add", index=index, address=str(interface.ip), prefixlen=interface.network.prefixlen)


def _del_address(ipr, index, cidr):
    interface = ipaddress.IPv4Interface(cidr)
    ipr.addr("del", index=index, address=str(interface.ip), prefixlen=interface.network.prefixlen)


def _delete(ipr, name):
    try:
        ipr.link("del", index=_index(ipr, name))
    except NetlinkError as exc:
        raise _netlink_failure("delete", name, exc)


def _build(ipr, state):
    """Create the link of ``state`` with everything on it; on failure remove it again."""
    _create(ipr, state)
    try:
        index = _index(ipr, state["name"])
        _set_common(ipr, index, state)
        for cidr in state["addresses"]:
            _add_address(ipr, index, cidr)
    except (NetlinkError, IpipError) as exc:
        try:
            _delete(ipr, state["name"])
        except (NetlinkError, IpipError):
            pass
        if isinstance(exc, IpipError):
            raise
        raise _netlink_failure("configure new link", state["name"], exc)


def _update(ipr, the_plan):
    after = the_plan.after
    index = the_plan.before["index"]
    name = after["name"]
    try:
        if set(the_plan.changes) & {"local", "remote", "ttl"}:
            arguments = _ipip_attributes(dict(after, pmtudisc=the_plan.before.get("pmtudisc")))
            # With IFLA_MTU in the same request the kernel keeps the MTU instead of recomputing
            # it from the new route to the remote (ip_tunnel_update's set_mtu).
            arguments["mtu"] = after["mtu"] or the_plan.before["mtu"]
            ipr.link("set", index=index, **arguments)
        _set_common(ipr, index, after, the_plan.changes)
        for cidr in the_plan.del_addresses:
            _del_address(ipr, index, cidr)
        for cidr in the_plan.add_addresses:
            _add_address(ipr, index, cidr)
    except NetlinkError as exc:
        raise _netlink_failure("update", name, exc)


def apply(ipr, the_plan):
    """Carry out ``the_plan``. On failure, puts back what was there (best effort) and raises
    IpipError; the message says whether the restore worked."""
    if the_plan.action == "none":
        return
    name = (the_plan.after or the_plan.before)["name"]
    try:
        if the_plan.action == "delete":
            _delete(ipr, name)
        elif the_plan.action == "create":
            _build(ipr, the_plan.after)
        elif the_plan.action == "update":
            _update(ipr, the_plan)
        elif the_plan.action == "recreate":
            _delete(ipr, name)
            _build(ipr, the_plan.after)
    except IpipError as exc:
        note, restored = _restore(ipr, the_plan.before, name)
        raise IpipError("%s%s" % (exc, note), host_changed=not restored)


def _restore(ipr, before, name):
    """Put the link back to ``before`` after a failed change.

    Returns (note for the message, whether the link is as it was)."""
    try:
        present = read_link(ipr, name)
        if before is None:
            if present is not None and present["ours"] and present["kind"] == KIND:
                _delete(ipr, name)
        else:
            wanted = dict(before)
            if present is None:
                _build(ipr, wanted)
            else:
                undo = plan(wanted, present)
                if undo.action == "recreate":
                    _delete(ipr, name)
                    _build(ipr, wanted)
                elif undo.action == "update":
                    _update(ipr, undo)
    except (IpipError, NetlinkError) as exc:
        return "; restoring the previous state failed too: %s" % exc, False
    return ("; the previous state was restored" if before is not None else ""), True


# ---- what every module managing one kind of our links shares (ipip_tunnel, wireguard_interface) --

def link_argument_spec(**kind_options):
    """The argument spec of such a module: the options of any link of ours, plus ``kind_options``."""
    spec = dict(
        name=dict(type="str"),
        state=dict(type="str", default="present", choices=["present", "absent", "pruned"]),
        mtu=dict(type="int"),
        addresses=dict(type="list", elements="str"),
        admin_state=dict(type="str", default="up", choices=["up", "down"]),
        description=dict(type="str"),
        keep=dict(type="list", elements="str", default=[]),
    )
    spec.update(kind_options)
    return spec


def remove_links(module, shown_before, delete, error_class, **result):
    """Remove our links ``shown_before`` ({name: the link as the diff shows it}), sorted by name,
    with ``delete(name)`` (which raises ``error_class`` or NetlinkError); return the module's result:
    ``result`` plus changed, actions, removed and, in diff mode, the diff.

    Nothing is deleted in check mode. A failure raises ``error_class`` naming the links removed
    before it: they stay removed, so the host changed when there was one.
    """
    names = sorted(shown_before)
    result.update(changed=bool(names), actions=["delete %s" % name for name in names], removed=names)
    if module._diff:
        result["diff"] = {"before": shown_before, "after": {}}
    if not module.check_mode:
        for done, name in enumerate(names):
            try:
                delete(name)
            except (error_class, NetlinkError) as exc:
                raise error_class("%s (removed before the failure: %s)" % (exc, ", ".join(names[:done]) or "none"),
                                  host_changed=done > 0 or getattr(exc, "host_changed", False))
    return result


# ---- per-device IPv4 settings (net.ipv4.conf.<link>.<key>) ---------------------------------
# A POP's tunnels exist only so that the agent's probes and their answers are delivered
# locally: they must not forward (a spoofed IPIP packet the kernel decapsulates would otherwise
# be routed on to any victim) and want strict reverse-path filtering. A new link takes the
# values of net.ipv4.conf.default, so the module sets them after every create or re-create.

CONF_ROOT = "/proc/sys/net/ipv4/conf"
DEVICE_SETTINGS = ("forwarding", "rp_filter")


def wanted_settings(forwarding=None, rp_filter=None):
    """The settings asked for, as the kernel writes them ("0", "1", "2"); None = leave alone."""
    wanted = {}
    if forwarding is not None:
        wanted["forwarding"] = "1" if forwarding else "0"
    if rp_filter is not None:
        if rp_filter not in (0, 1, 2):
            raise IpipError("rp_filter: %r is not 0 (off), 1 (strict) or 2 (loose)" % (rp_filter,))
        wanted["rp_filter"] = str(rp_filter)
    return wanted


def read_settings(device, keys, conf_root=CONF_ROOT):
    """{key: value} of net.ipv4.conf.<device>.<key> in the module's network namespace."""
    values = {}
    for key in keys:
        with open(os.path.join(conf_root, device, key)) as handle:
            values[key] = handle.read().strip()
    return values


def settings_changes(wanted, present):
    """[(key, before, after)] for each setting that differs, in a stable order."""
    return [(key, present.get(key), wanted[key]) for key in DEVICE_SETTINGS
            if key in wanted and present.get(key) != wanted[key]]


def write_settings(device, changes, conf_root=CONF_ROOT):
    for key, dummy, value in changes:
        path = os.path.join(conf_root, device, key)
        try:
            with open(path, "w") as handle:
                handle.write(value + "\n")
        except OSError as exc:
            raise IpipError("cannot set net.ipv4.conf.%s.%s = %s (%s): %s"
                            % (device, key, value, path, exc), host_changed=True)
