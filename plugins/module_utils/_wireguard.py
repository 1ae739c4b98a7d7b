# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# MIT License (see https://opensource.org/licenses/MIT)
"""WireGuard interfaces: what ``wg show NAME dump`` says, what the task wants, and the one ``wg set``
that turns the one into the other (the modules wireguard_key and wireguard_interface are thin
shells around this file).

``wg`` (wireguard-tools) speaks to both kinds of WireGuard interface the same way: a kernel one
(``ip link add NAME type wireguard``) over generic netlink, a userspace one (wireguard-go on a TUN
device) over its UAPI socket ``/var/run/wireguard/NAME.sock``. So whatever made the interface, the
state is read with ``wg show NAME dump`` and changed with ``wg set NAME ...``; the link-level
attributes every device has (MTU, addresses, alias, up) go through pyroute2 like the IPIP
tunnels' (_ipip.read_link reads them).

The private key: ``wg show dump`` prints it first on its first line. parse_dump() takes it apart
from everything else and returns it separately, only so that the module can tell Ansible to mask
it (no_log_values); no state, diff or result carries it. The key reaches ``wg set`` as a file path
(``private-key FILE``), never as an argument or through a pipe we log.

The decisions are pure (parse_dump, wanted_peers, plan) and unit tested on recorded dumps.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import binascii
import ipaddress
import re

MARK_KINDS = ("wireguard", "tun")   # the kernel's device, and wireguard-go's TUN
# 43 base64 digits and "=": the last digit carries 4 bits of the key and two zero bits.
KEY_TEXT = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")
PEER_KEYS = ("public_key", "endpoint", "allowed_ips", "persistent_keepalive")
MAX_KEEPALIVE = 65535
MISSING_KERNEL_HINT = ("the kernel lacks wireguard: load the module with 'modprobe wireguard' (Debian 12: in "
                       "linux-image-*), or create the interface with a userspace implementation "
                       "(wireguard-go NAME) before this task - an existing WireGuard interface of either kind is used")


class WireguardError(Exception):
    """A WireGuard operation failed; the message says what, on which interface, and why.
    ``host_changed``: the failure left the host different from before."""

    def __init__(self, message, host_changed=False):
        super(WireguardError, self).__init__(message)
        self.host_changed = host_changed


def is_key(text):
    """Whether `text` is a WireGuard key as wg prints it (base64 of 32 bytes)."""
    if not isinstance(text, str) or not KEY_TEXT.fullmatch(text):
        return False
    try:
        return len(base64.b64decode(text.encode("ascii"), validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


# -- reading ------------------------------------------------------------------------------------

def _none(text):
    return None if text in ("(none)", "") else text


def parse_dump(text):
    """(interface, private_key) from the output of ``wg show NAME dump``.

    interface: {"public_key", "listen_port", "peers": {public key: peer}}, each peer
    {"public_key", "endpoint" ("a.b.c.d:port" or None), "allowed_ips" (sorted CIDRs),
    "persistent_keepalive" (0: off)}. private_key: the interface's, or None - for masking only.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise WireguardError("wg show dump printed nothing")
    first = lines[0].split("\t")
    if len(first) != 4:
        raise WireguardError("wg show dump: unexpected first line (%d fields, 4 expected)" % len(first))
    private_key, public_key, listen_port = _none(first[0]), _none(first[1]), first[2]
    peers = {}
    for line in lines[1:]:
        fields = line.split("\t")
        if len(fields) != 8:
            raise WireguardError("wg show dump: unexpected peer line (%d fields, 8 expected)" % len(fields))
        allowed = _none(fields[3])
        keepalive = fields[7]
        peers[fields[0]] = {
            "public_key": fields[0],
            "endpoint": _none(fields[2]),
            "allowed_ips": sorted(allowed.split(","), key=_cidr_key) if allowed else [],
            "persistent_keepalive": 0 if keepalive in ("off", "0") else int(keepalive),
        }
    return {"public_key": public_key, "listen_port": int(listen_port), "peers": peers}, private_key


# -- what the task wants ------------------------------------------------------------------------

def _cidr_key(cidr):
    network = ipaddress.ip_network(cidr, strict=False)
    return (network.version, int(network.network_address), network.prefixlen)


def _endpoint(path, value):
    """"a.b.c.d:port" in canonical form (WireGuard keeps endpoints as addresses: no names)."""
    if not isinstance(value, str) or value.count(":") != 1:
        raise WireguardError("%s: %r is not an IPv4 address and port (a.b.c.d:port)" % (path, value))
    address, port = value.split(":")
    try:
        address = ipaddress.IPv4Address(address)
    except ValueError:
        raise WireguardError("%s: %r is not an IPv4 address and port (a.b.c.d:port)" % (path, value))
    # ASCII digits only: str.isdigit() also takes '²' (int() then raises) and full-width digits.
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise WireguardError("%s: %r has no port in 1..65535" % (path, value))
    return "%s:%d" % (address, int(port))


def _allowed_ips(path, value):
    canonical = set()
    for index, item in enumerate(value or []):
        try:
            network = ipaddress.ip_network(item, strict=True)
        except ValueError:
            raise WireguardError("%s[%d]: %r is not a network (CIDR without host bits)" % (path, index, item))
        canonical.add(str(network))
    return sorted(canonical, key=_cidr_key)


def wanted_peers(peers):
    """{public key: peer} of the task's peers, validated and in the form parse_dump gives
    (the first problem raises WireguardError naming peers[i].field and the value)."""
    wanted = {}
    for index, peer in enumerate(peers or []):
        path = "peers[%d]" % index
        public_key = peer.get("public_key")
        if not is_key(public_key):
            raise WireguardError("%s.public_key: %r is not a WireGuard public key (44 characters of base64, as "
                                 "'wg pubkey' prints it)" % (path, public_key))
        if public_key in wanted:
            raise WireguardError("%s.public_key: %s is listed twice" % (path, public_key))
        keepalive = peer.get("persistent_keepalive") or 0
        if not 0 <= keepalive <= MAX_KEEPALIVE:
            raise WireguardError("%s.persistent_keepalive: %r is out of range (0..%d)" % (path, keepalive, MAX_KEEPALIVE))
        endpoint = peer.get("endpoint")
        wanted[public_key] = {
            "public_key": public_key,
            "endpoint": None if endpoint is None else _endpoint(path + ".endpoint", endpoint),
            "allowed_ips": _allowed_ips(path + ".allowed_ips", peer.get("allowed_ips")),
            "persistent_keepalive": keepalive,
        }
    return wanted


# -- the plan -----------------------------------------------------------------------------------

def peer_changes(want, have):
    """The fields of a peer that differ ([] when equal). An endpoint left out is not compared:
    WireGuard learns it from the peer's packets (roaming)."""
    changed = []
    for key in PEER_KEYS[1:]:
        if key == "endpoint" and want[key] is None:
            continue
        if want[key] != (have or {}).get(key):
            changed.append(key)
    return changed


def plan(wanted, present, prune):
    """(wg set arguments after the interface name, lines saying what changes) to turn the present
    WireGuard state (parse_dump's, or None for a new interface) into the wanted one:
    {"public_key" (of the key file), "private_key_file", "listen_port" (None: leave), "peers"}.
    Peers present but not wanted are removed when `prune`."""
    present = present or {"public_key": None, "listen_port": 0, "peers": {}}
    arguments, lines = [], []
    if present["public_key"] != wanted["public_key"]:
        arguments += ["private-key", wanted["private_key_file"]]
        lines.append("private key from %s (public key %s -> %s)"
                     % (wanted["private_key_file"], present["public_key"] or "none", wanted["public_key"]))
    if wanted["listen_port"] is not None and wanted["listen_port"] != present["listen_port"]:
        arguments += ["listen-port", str(wanted["listen_port"])]
        lines.append("listen port %s -> %d" % (present["listen_port"] or "random", wanted["listen_port"]))
    for key in sorted(wanted["peers"]):
        want, have = wanted["peers"][key], present["peers"].get(key)
        fields = peer_changes(want, have)
        if not fields:
            continue
        arguments += ["peer", key]
        if want["endpoint"] is not None:
            arguments += ["endpoint", want["endpoint"]]
        arguments += ["persistent-keepalive", str(want["persistent_keepalive"]),
                      "allowed-ips", ",".join(want["allowed_ips"])]
        lines.append(("add peer %s" % key) if have is None else
                     "peer %s: %s" % (key, ", ".join("%s %s -> %s" % (field, _text(have[field]), _text(want[field]))
                                                     for field in fields)))
    if prune:
        for key in sorted(set(present["peers"]) - set(wanted["peers"])):
            arguments += ["peer", key, "remove"]
            lines.append("remove peer %s" % key)
    return arguments, lines


def _text(value):
    if isinstance(value, list):
        return ",".join(value) or "none"
    return "none" if value is None else str(value)


def after_state(wanted, present, prune):
    """The WireGuard state once the plan is applied (for check mode's result and the diff)."""
    peers = dict(present["peers"]) if present and not prune else {}
    for key, want in wanted["peers"].items():
        peer = dict(want)
        if peer["endpoint"] is None:
            peer["endpoint"] = ((present or {}).get("peers") or {}).get(key, {}).get("endpoint")
        peers[key] = peer
    listen_port = wanted["listen_port"] if wanted["listen_port"] is not None else (present or {}).get("listen_port")
    return {"public_key": wanted["public_key"], "listen_port": listen_port, "peers": peers}


def public(state):
    """A WireGuard state as results and diffs show it: peers as a list sorted by key (public keys only)."""
    if state is None:
        return None
    shown = dict(state)
    shown["peers"] = [state["peers"][key] for key in sorted(state["peers"])]
    return shown
