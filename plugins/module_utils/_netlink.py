# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# MIT License (see https://opensource.org/licenses/MIT)
"""The collection's one pyroute2 set-up (``IPRoute``, ``NetlinkError``, ``PYROUTE2_IMPORT_ERROR``,
``open_iproute``; _ipip and the modules take them from here), and the traffic-control (tc)
helpers over it: clsact qdiscs and direct-action BPF filters.

What the collection needs from tc is small and must never disturb anybody else's setup:

* find out whether an interface has a ``clsact`` qdisc, and add one only if it has none
  (never delete or replace a qdisc: other filters hang off it);
* list the filters of one hook (ingress or egress) with, for BPF filters, the id and tag of
  the program they run;
* add, atomically replace, or delete one filter, addressed by (priority, handle).

Works with pyroute2 0.7 (Debian 12's python3-pyroute2) and 0.9 (PyPI): only ``IPRoute`` and
its ``tc()``/``get_qdiscs()``/``get_filters()`` calls are used, which both versions share.
Neither version decodes the program id and tag of a BPF filter (TCA_BPF_ID, TCA_BPF_TAG are
newer than their attribute tables), so those two are read from the raw TCA_OPTIONS bytes of
the dumped message.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import socket
import struct
import traceback

from ansible.module_utils.basic import missing_required_lib

try:
    from pyroute2 import IPRoute
    # Re-exported: modules catch this class whichever pyroute2 version is installed.
    from pyroute2.netlink.exceptions import NetlinkError  # pylint: disable=unused-import
except ImportError:
    IPRoute = None
    NetlinkError = OSError
    PYROUTE2_IMPORT_ERROR = traceback.format_exc()
else:
    PYROUTE2_IMPORT_ERROR = None

# The clsact qdisc sits at handle ffff:0; its two hooks are pseudo classes of it
# (linux/pkt_sched.h: TC_H_CLSACT, TC_H_MIN_INGRESS, TC_H_MIN_EGRESS).
CLSACT_HANDLE = 0xFFFF0000
HOOK_PARENTS = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}

ETH_P_ALL = 0x0003

# linux/pkt_cls.h: attributes inside TCA_OPTIONS of a "bpf" filter.
_TCA_BPF_NAME = 7
_TCA_BPF_FLAGS = 8
_TCA_BPF_TAG = 10
_TCA_BPF_ID = 11
TCA_BPF_FLAG_ACT_DIRECT = 1

TcFilter = collections.namedtuple("TcFilter", [
    "kind", "priority", "protocol", "handle", "name", "prog_id", "tag", "direct_action",
])
TcFilter.__doc__ = """One filter of a tc hook as the kernel dumps it.

``priority`` and ``handle`` address it; ``protocol`` is the ethertype it matches (3 = all);
``name``, ``prog_id``, ``tag`` and ``direct_action`` are set for ``bpf`` filters only (None /
False otherwise)."""


# The name of every tc filter anycast.edge.tc_program attaches starts with this (then the program's
# name): how it, and xdp_program (which must not leave tc_wireguard_redirect without xdp_edge), find them.
TC_FILTER_NAME_PREFIX = "anycast_edge:"


class TcError(Exception):
    """A tc operation failed; the message names the interface, hook and operation."""


def fail_without_pyroute2(module):
    """Fail the module, saying what to install, when pyroute2 could not be imported."""
    if PYROUTE2_IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("pyroute2 (Debian: python3-pyroute2)"),
                         exception=PYROUTE2_IMPORT_ERROR)


def open_iproute():
    """An ``IPRoute`` socket in the current network namespace (use as a context manager)."""
    if IPRoute is None:
        raise TcError("pyroute2 is not installed (Debian: python3-pyroute2)")
    return IPRoute()


def link_index_and_mtu(ipr, name):
    """(ifindex, MTU) of the link called ``name`` in this network namespace, as the kernel reports
    them; None when there is none."""
    indexes = ipr.link_lookup(ifname=name)
    if not indexes:
        return None
    return indexes[0], ipr.get_links(indexes[0])[0].get_attr("IFLA_MTU")


def qdisc_kind_at_clsact_handle(ipr, ifindex):
    """Kind of the qdisc at ffff:0 of ``ifindex``: ``"clsact"``, ``"ingress"`` or None."""
    for qdisc in ipr.get_qdiscs(index=ifindex):
        if qdisc["handle"] == CLSACT_HANDLE:
            return qdisc.get_attr("TCA_KIND")
    return None


def add_clsact(ipr, ifindex):
    """Add a clsact qdisc to ``ifindex`` (fails if the handle is taken)."""
    ipr.tc("add", "clsact", ifindex)


def _bpf_options(options_nla):
    """(name, prog_id, tag, direct_action) from the TCA_OPTIONS of a bpf filter message.

    Parsed from the attribute's own bytes: ``data`` (the message buffer), ``offset`` and
    ``length`` are the nla's position in it, stable attributes of pyroute2's nlmsg_base.
    """
    raw = bytes(options_nla.data[options_nla.offset:options_nla.offset + options_nla.length])
    name = prog_id = tag = None
    flags = 0
    position = 4  # skip the TCA_OPTIONS header itself
    while position + 4 <= len(raw):
        length, kind = struct.unpack_from("=HH", raw, position)
        if length < 4:
            break
        payload = raw[position + 4:position + length]
        kind &= 0x3FFF  # strip NLA_F_NESTED / NLA_F_NET_BYTEORDER
        if kind == _TCA_BPF_NAME:
            name = payload.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif kind == _TCA_BPF_ID and len(payload) >= 4:
            prog_id = struct.unpack_from("=I", payload)[0]
        elif kind == _TCA_BPF_TAG:
            tag = payload.hex()
        elif kind == _TCA_BPF_FLAGS and len(payload) >= 4:
            flags = struct.unpack_from("=I", payload)[0]
        position += (length + 3) & ~3
    return name, prog_id, tag, bool(flags & TCA_BPF_FLAG_ACT_DIRECT)


def list_filters(ipr, ifindex, direction):
    """TcFilter for every filter on the ``direction`` hook of ``ifindex``.

    The kernel also dumps one bare entry per (priority, protocol) chain head (handle 0, no
    options); those are left out.
    """
    found = []
    for message in ipr.get_filters(index=ifindex, parent=HOOK_PARENTS[direction]):
        options = message.get_attr("TCA_OPTIONS")
        if options is None:
            continue
        info = message["info"]
        kind = message.get_attr("TCA_KIND")
        name = prog_id = tag = None
        direct_action = False
        if kind == "bpf":
            name, prog_id, tag, direct_action = _bpf_options(options)
        found.append(TcFilter(kind=kind, priority=info >> 16,
                              protocol=socket.ntohs(info & 0xFFFF), handle=message["handle"],
                              name=name, prog_id=prog_id, tag=tag, direct_action=direct_action))
    return found


def put_bpf_filter(ipr, ifindex, direction, priority, handle, prog_fd, name, replace):
    """Add (``replace`` False) or atomically replace (``replace`` True) the direct-action
    BPF filter at (``priority``, ``handle``) on the ``direction`` hook.

    Replacing swaps the program inside the existing filter: packets see either the old
    program or the new one, never no filter.
    """
    command = "replace-filter" if replace else "add-filter"
    ipr.tc(command, "bpf", ifindex, handle, fd=prog_fd, name=name,
           parent=HOOK_PARENTS[direction], prio=priority, protocol=ETH_P_ALL,
           direct_action=True)


def delete_filter(ipr, ifindex, direction, priority, handle, kind="bpf"):
    """Delete the filter at (``priority``, ``handle``) of kind ``kind`` on the hook."""
    ipr.tc("del-filter", kind, ifindex, handle, parent=HOOK_PARENTS[direction],
           prio=priority, protocol=ETH_P_ALL)
