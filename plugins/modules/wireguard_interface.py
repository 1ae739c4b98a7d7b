#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: wireguard_interface
short_description: Create, update and remove a WireGuard interface and its peers
version_added: "0.1.0"
description:
  - Manages one WireGuard interface - its private key (from a file on the host, see
    M(anycast.edge.wireguard_key)), O(listen_port), O(peers), O(mtu), IPv4 O(addresses) and admin
    state - in the network namespace the module runs in.
  - "Reads the WireGuard state with C(wg show NAME dump) and the link with netlink (pyroute2),
    compares them with the task, and changes only what differs: the WireGuard part with one
    C(wg set) carrying every difference, the link with netlink. A second run with the same
    arguments reports no change."
  - Works with both kinds of WireGuard interface - the kernel's (C(ip link add NAME type wireguard),
    which the module creates when there is no link of that name) and a userspace one (wireguard-go
    on a TUN device, which must exist before the task; C(wg) reaches it through its UAPI socket).
    A link of that name that is not a WireGuard interface makes the task fail.
  - Peers the task does not list are removed (O(prune_peers)) - how the inventory's removed pairs
    leave the host.
  - The private key never appears in the result, the diff or the log - only public keys do. The
    key reaches C(wg) as a file path; the module masks its value anywhere Ansible would print it.
  - "The interface is marked as ours with the interface alias C(anycast.edge) (or
    C(anycast.edge: <description>)); O(state=pruned) removes every WireGuard interface so marked
    whose name is not in O(keep), and never an unmarked one."
  - When the kernel cannot create a WireGuard device the task fails saying so, naming
    C(modprobe wireguard) and the userspace alternative; a link it created is removed again when
    a later step fails.
author:
  - anycast.edge maintainers (!UNKNOWN)
requirements:
  - wireguard-tools (C(wg))
  - the C(wireguard) kernel module, or an interface made by a userspace implementation
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - anycast.edge.link
  - anycast.edge.state
  - anycast.edge.netlink
attributes:
  check_mode:
    details: Reads the interface and reports what would change; a private key file not there yet (made by
      M(anycast.edge.wireguard_key) in the same check run) is reported as a key to set.
  diff_mode:
    details: The interface before and after - public key, listen port, peers (public keys, endpoints,
      allowed IPs, keepalive), MTU, addresses, admin state. Never the private key.
options:
  state:
    description:
      - V(present) creates (kernel WireGuard) or updates the interface; V(absent) removes it;
        V(pruned) removes every WireGuard interface marked as ours whose name is not in O(keep).
  private_key_file:
    description:
      - File on the host holding the interface's private key (as C(wg genkey) prints it), readable
        by root only - M(anycast.edge.wireguard_key) makes it. Required with O(state=present).
    type: path
  listen_port:
    description: The UDP port the interface listens on (1..65535). Omitted leaves it as it is (random on a new interface).
    type: int
  peers:
    description:
      - The interface's peers, each with its O(peers[].public_key). The interface ends with exactly
        these when O(prune_peers) (the default); a listed peer's settings are set as given.
    type: list
    elements: dict
    default: []
    suboptions:
      public_key:
        description: The peer's public key (C(wg pubkey) of its private key).
        type: str
        required: true
      endpoint:
        description:
          - Where to send to the peer, C(a.b.c.d:port). Omitted leaves it to WireGuard, which learns it
            from the peer's packets. A peer that roamed elsewhere is set back to this one.
        type: str
      allowed_ips:
        description:
          - The networks the peer may send from and is sent to (CIDRs without host bits), e.g. V(0.0.0.0/0)
            on an interface with one peer.
        type: list
        elements: str
        default: []
      persistent_keepalive:
        description: Seconds between keepalives to the peer when idle (0 - none; at most 65535).
        type: int
        default: 0
  prune_peers:
    description: Remove the peers of the interface that O(peers) does not list.
    type: bool
    default: true
  mtu:
    description: The interface's MTU (576..65475 - the player's largest packet). Omitted leaves it as it is.
    type: int
  addresses:
    description:
      - IPv4 addresses of the interface, as C(address/prefixlen). The interface ends with exactly
        these. Omitted leaves the addresses alone; V([]) removes all of them.
    type: list
    elements: str
notes:
  - The key file is read on every run; a changed key file (a new key) changes the interface's key
    and public key, which every peer must then be given.
  - A userspace interface's O(mtu) and addresses are set on its TUN device like a kernel one's.
seealso:
  - module: anycast.edge.wireguard_key
  - module: anycast.edge.ipip_tunnel
"""

EXAMPLES = r"""
- name: The host's WireGuard key (made once, on the host)
  anycast.edge.wireguard_key:
    path: /etc/anycast-edge/wireguard/private.key
  register: wireguard_key

- name: The interface toward the game server game1, one peer
  anycast.edge.wireguard_interface:
    name: aw-a31a83312b
    private_key_file: /etc/anycast-edge/wireguard/private.key
    listen_port: 51820
    mtu: 1440
    addresses: [100.64.0.2/31]
    description: peer game1
    peers:
      - public_key: "{{ hostvars['game1'].wireguard_key.public_key }}"
        endpoint: 198.51.100.20:51820
        allowed_ips: [0.0.0.0/0]
        persistent_keepalive: 25

- name: Remove every WireGuard interface of ours but these
  anycast.edge.wireguard_interface:
    state: pruned
    keep: [aw-a31a83312b]
"""

RETURN = r"""
interface:
  description:
    - The interface after the run (in check mode, as it would be); null when absent or with O(state=pruned).
      Public keys only.
  returned: always
  type: dict
  sample:
    name: aw-a31a83312b
    kind: wireguard
    description: peer game1
    public_key: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
    listen_port: 51820
    mtu: 1440
    admin_state: up
    addresses: [100.64.0.2/31]
    peers:
      - public_key: "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
        endpoint: 198.51.100.20:51820
        allowed_ips: [0.0.0.0/0]
        persistent_keepalive: 25
public_key:
  description: The interface's public key (from the key file; null in check mode when the file is not there yet).
  returned: with O(state=present)
  type: str
  sample: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
actions:
  description: What was done (or would be, in check mode), one line each.
  returned: always
  type: list
  elements: str
  sample: ["create aw-a31a83312b (kernel wireguard)", "add peer HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="]
created:
  description: True if the link was (or would be) created.
  returned: always
  type: bool
removed:
  description: Names of the interfaces removed (or that would be) - O(state=absent) or O(state=pruned).
  returned: always
  type: list
  elements: str
"""

import errno
import ipaddress

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.anycast.edge.plugins.module_utils import _ipip
from ansible_collections.anycast.edge.plugins.module_utils import _netlink
from ansible_collections.anycast.edge.plugins.module_utils import _transport
from ansible_collections.anycast.edge.plugins.module_utils import _wireguard

LINK_KEYS = ("name", "kind", "description", "mtu", "admin_state", "addresses")


class Wg(object):
    """The `wg` command, with every private key it meets masked in the module's output."""

    def __init__(self, module):
        self.module = module
        # None on a host without wireguard-tools: it has no interface this module configured.
        self.path = module.get_bin_path("wg")

    def run(self, arguments, data=None):
        if self.path is None:
            raise _wireguard.WireguardError("wg (wireguard-tools) is not installed on the host")
        rc, out, err = self.module.run_command([self.path] + arguments, data=data)
        return rc, out, err.strip()

    def dump(self, name):
        """(WireGuard state, None) of interface `name`, or (None, why not) if it is no WireGuard interface."""
        rc, out, err = self.run(["show", name, "dump"])
        if rc != 0:
            return None, err or "wg show failed (rc %d)" % rc
        state, private_key = _wireguard.parse_dump(out)
        if private_key:
            self.module.no_log_values.add(private_key)
        return state, None

    def interfaces(self):
        rc, out, err = self.run(["show", "interfaces"])
        if rc != 0:
            raise _wireguard.WireguardError("wg show interfaces: %s" % err)
        return out.split()

    def public_key(self, path):
        """The public key of the private key in file `path`, or None when there is no such file."""
        try:
            with open(path) as handle:
                private_key = handle.read().strip()
        except (IOError, OSError) as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise _wireguard.WireguardError("private_key_file: cannot read %s: %s" % (path, exc.strerror))
        if private_key:
            self.module.no_log_values.add(private_key)
        if not _wireguard.is_key(private_key):
            raise _wireguard.WireguardError("private_key_file: %s does not hold a WireGuard private key (not shown; "
                                            "make it with anycast.edge.wireguard_key or wg genkey)" % path)
        rc, out, err = self.run(["pubkey"], data=private_key + "\n")
        if rc != 0:
            raise _wireguard.WireguardError("wg pubkey: %s" % err)
        return out.strip()


def link_state(link):
    if link is None:
        return None
    return dict((key, link.get(key)) for key in LINK_KEYS)


def shown(link, wireguard):
    """The interface as results and diffs show it (public keys only)."""
    if link is None:
        return None
    result = dict(link)
    result.update(_wireguard.public(wireguard) or {"public_key": None, "listen_port": None, "peers": []})
    return result


def _cidr(value):
    try:
        interface = ipaddress.IPv4Interface(value)
    except ValueError:
        raise _wireguard.WireguardError("addresses: %r is not an IPv4 address with an optional /prefix length" % (value,))
    return "%s/%d" % (interface.ip, interface.network.prefixlen)


def wanted_link(params, present):
    """The link attributes after the run, and the names of those that change."""
    after = dict(present or {"name": params["name"], "kind": "wireguard", "description": None, "mtu": None,
                             "admin_state": "down", "addresses": []})
    if params["mtu"] is not None:
        if not _transport.MIN_MTU <= params["mtu"] <= _transport.MAX_MTU:
            raise _wireguard.WireguardError("mtu: %d is out of range (%d..%d)"
                                            % (params["mtu"], _transport.MIN_MTU, _transport.MAX_MTU))
        after["mtu"] = params["mtu"]
    if params["addresses"] is not None:
        after["addresses"] = sorted(set(_cidr(value) for value in params["addresses"]), key=_ipip.address_sort_key)
    after["admin_state"] = params["admin_state"]
    after["description"] = params["description"] if params["description"] is not None else after["description"]
    changes = [key for key in LINK_KEYS[2:] if present is None or after[key] != present[key]]
    # An unmarked WireGuard interface (made by hand, or by wireguard-go for this task) gets our mark.
    if present is not None and not present.get("ours") and "description" not in changes:
        changes.append("description")
    return after, changes


def link_lines(name, before, after, changes):
    lines = []
    for key in changes:
        if key == "addresses":
            lines += ["add address %s to %s" % (cidr, name) for cidr in after[key] if cidr not in (before or {}).get(key, [])]
            lines += ["remove address %s from %s" % (cidr, name) for cidr in (before or {}).get(key, [])
                      if cidr not in after[key]]
        elif before is not None:
            lines.append("%s of %s: %s -> %s" % (key.replace("_", " "), name, before.get(key), after[key]))
    return lines


def apply_link(ipr, name, before, after, changes):
    index = list(ipr.link_lookup(ifname=name))[0]
    arguments = {}
    if "description" in changes:
        arguments["ifalias"] = _ipip.alias_for(after["description"])
    if "mtu" in changes and after["mtu"]:
        arguments["mtu"] = after["mtu"]
    if arguments:
        ipr.link("set", index=index, **arguments)
    if "addresses" in changes:
        for cidr in (before or {}).get("addresses", []):
            if cidr not in after["addresses"]:
                interface = ipaddress.IPv4Interface(cidr)
                ipr.addr("del", index=index, address=str(interface.ip), prefixlen=interface.network.prefixlen)
        for cidr in after["addresses"]:
            if cidr not in (before or {}).get("addresses", []):
                interface = ipaddress.IPv4Interface(cidr)
                ipr.addr("add", index=index, address=str(interface.ip), prefixlen=interface.network.prefixlen)
    if "admin_state" in changes:
        ipr.link("set", index=index, state=after["admin_state"])


def run_present(module, ipr, wg):
    params = module.params
    name = params["name"]
    public_key = wg.public_key(params["private_key_file"])
    if public_key is None and not module.check_mode:
        raise _wireguard.WireguardError("private_key_file: %s does not exist (make it with anycast.edge.wireguard_key)"
                                        % params["private_key_file"])
    wanted = {"public_key": public_key, "private_key_file": params["private_key_file"],
              "listen_port": params["listen_port"], "peers": _wireguard.wanted_peers(params["peers"])}
    if params["listen_port"] is not None and not 1 <= params["listen_port"] <= 65535:
        raise _wireguard.WireguardError("listen_port: %d is out of range (1..65535)" % params["listen_port"])
    link = _ipip.read_link(ipr, name)
    present = None
    if link is not None:
        present, why = wg.dump(name)
        if present is None:
            raise _wireguard.WireguardError("%s is a %s link, not a WireGuard interface (%s); it is not ours to change"
                                            % (name, link["kind"] or "plain", why))
    arguments, lines = _wireguard.plan(wanted, present, params["prune_peers"])
    if public_key is None:
        lines.append("the private key from %s, which is not there yet (check mode)" % params["private_key_file"])
    after_link, link_changes = wanted_link(params, link_state(link) and dict(link_state(link), ours=link["ours"]))
    after_link.pop("ours", None)
    lines = (["create %s (kernel wireguard)" % name] if link is None else []) + lines + \
        link_lines(name, link_state(link), after_link, link_changes)
    after = _wireguard.after_state(wanted, present, params["prune_peers"])
    result = {
        "changed": link is None or bool(arguments) or bool(link_changes) or public_key is None,
        "interface": shown(after_link, after),
        "public_key": public_key,
        "actions": lines,
        "created": link is None,
        "removed": [],
    }
    if module._diff:
        result["diff"] = {"before": shown(link_state(link), present) or {}, "after": result["interface"]}
    if module.check_mode or not result["changed"]:
        return result
    if link is None:
        try:
            ipr.link("add", ifname=name, kind="wireguard")
        except _netlink.NetlinkError as exc:
            if getattr(exc, "code", None) in (errno.EOPNOTSUPP, errno.ENODEV, errno.EINVAL):
                raise _wireguard.WireguardError("create %s: %s" % (name, _wireguard.MISSING_KERNEL_HINT))
            raise _wireguard.WireguardError("create %s: %s" % (name, exc))
    try:
        if arguments:
            rc, dummy, err = wg.run(["set", name] + arguments)
            if rc != 0:
                raise _wireguard.WireguardError("wg set %s: %s" % (name, err), host_changed=link is not None)
        apply_link(ipr, name, link_state(link), after_link, link_changes)
    except (_wireguard.WireguardError, _netlink.NetlinkError) as exc:
        if link is None:   # leave the host as it was: the link this run made goes again
            ipr.link("del", index=list(ipr.link_lookup(ifname=name))[0])
            raise _wireguard.WireguardError("%s (the new interface %s was removed again)" % (exc, name))
        raise _wireguard.WireguardError(str(exc), host_changed=True)
    # Report what the interface says now, not our prediction.
    state, dummy = wg.dump(name)
    result["interface"] = shown(link_state(_ipip.read_link(ipr, name)), state)
    if module._diff:
        result["diff"]["after"] = result["interface"]
    return result


def ours_wireguard(ipr, wg):
    """{name: link} of the WireGuard interfaces marked as ours (none on a host without wg: this
    module configures through it, so every interface it made has it)."""
    found = {}
    if wg.path is None:
        return found
    for name in wg.interfaces():
        link = _ipip.read_link(ipr, name)
        if link is not None and link["ours"]:
            found[name] = link
    return found


def run_removal(module, ipr, wg):
    params = module.params
    if params["state"] == "absent":
        link = _ipip.read_link(ipr, params["name"])
        if link is None:
            return {"changed": False, "interface": None, "actions": [], "created": False, "removed": []}
        present, why = wg.dump(params["name"])
        if present is None:
            raise _wireguard.WireguardError("%s is a %s link, not a WireGuard interface (%s); it is not ours to remove"
                                            % (params["name"], link["kind"] or "plain", why))
        doomed = {params["name"]: (link, present)}
    else:
        doomed = dict((name, (link, wg.dump(name)[0])) for name, link in ours_wireguard(ipr, wg).items()
                      if name not in params["keep"])

    def delete(name):
        try:
            ipr.link("del", index=doomed[name][0]["index"])
        except _netlink.NetlinkError as exc:
            raise _wireguard.WireguardError("delete %s: %s" % (name, exc))

    return _ipip.remove_links(
        module, dict((name, shown(link_state(link), present)) for name, (link, present) in doomed.items()),
        delete, _wireguard.WireguardError, interface=None, created=False)


def main():
    module = AnsibleModule(
        argument_spec=_ipip.link_argument_spec(
            private_key_file=dict(type="path"),
            listen_port=dict(type="int"),
            peers=dict(type="list", elements="dict", default=[], options=dict(
                public_key=dict(type="str", required=True),
                endpoint=dict(type="str"),
                allowed_ips=dict(type="list", elements="str", default=[]),
                persistent_keepalive=dict(type="int", default=0),
            )),
            prune_peers=dict(type="bool", default=True),
        ),
        required_if=[("state", "present", ["name", "private_key_file"]), ("state", "absent", ["name"])],
        supports_check_mode=True,
    )
    _netlink.fail_without_pyroute2(module)
    name = module.params["name"]
    if name is not None and (not _ipip.INTERFACE_NAME.fullmatch(name) or name in (".", "..")):
        module.fail_json(msg="name: %r is not a Linux interface name (1..15 characters, no '/', ':' or whitespace)"
                         % (name,))
    wg = Wg(module)
    try:
        with _netlink.open_iproute() as ipr:
            if module.params["state"] == "present":
                result = run_present(module, ipr, wg)
            else:
                result = run_removal(module, ipr, wg)
    except _wireguard.WireguardError as exc:
        module.fail_json(msg=str(exc), changed=exc.host_changed)
    except _netlink.NetlinkError as exc:
        module.fail_json(msg="netlink: %s" % exc, changed=False)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
