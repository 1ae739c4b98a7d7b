#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: ipip_tunnel
short_description: Create, update and remove IPv4-in-IPv4 (ipip) tunnel links
version_added: "0.1.0"
description:
  - Manages one C(ipip) link - its endpoints (O(local), O(remote)), O(ttl), O(mtu), IPv4
    O(addresses), admin state and collect-metadata (O(external)) mode - through netlink
    (pyroute2), in the network namespace the module runs in.
  - Every attribute is compared with the running link; the task is C(changed) only on a
    difference, and only the differences are applied. What the kernel cannot change on an
    existing link (O(external), switching between a point-to-point tunnel and "remote any",
    the TTL of an external tunnel) is applied by deleting and re-creating the link; the result's
    RV(actions) and the diff header say so, with the reason.
  - "Tunnels made by this module carry the interface alias C(anycast.edge) (or
    C(anycast.edge: <description>)). A link without that mark is never changed or removed, and
    O(state=pruned) removes every marked ipip link not listed in O(keep) - how the
    anycast.edge.ipip_tunnels role removes tunnels that inventory no longer declares."
  - On failure the host is left as it was - a link created by the failed run is removed again,
    a changed or re-created one is put back (the message says if that failed too).
  - When the kernel has no ipip support the task fails saying so and naming the module to
    load (C(modprobe ipip)).
author:
  - anycast.edge maintainers (!UNKNOWN)
requirements:
  - the C(ipip) kernel module
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - anycast.edge.state
  - anycast.edge.netlink
  - anycast.edge.link
attributes:
  check_mode:
    details: Reads the links and reports what would change; warns if the kernel shows no ipip support.
  diff_mode:
    details: The tunnel's attributes before and after; for a re-create the header gives the reason.
options:
  state:
    description:
      - V(present) creates or updates the tunnel; V(absent) removes it (only if it is ours);
        V(pruned) removes every ipip link marked as ours whose name is not in O(keep).
  local:
    description:
      - Outer source address (this host's tunnel address). Omitted means "any" (the kernel
        picks by route). Not with O(external=true).
    type: str
  remote:
    description:
      - Outer destination address (the peer's tunnel address). Omitted means "remote any"
        (a non point-to-point tunnel). Not with O(external=true).
    type: str
  ttl:
    description:
      - TTL of the outer header; V(0) inherits the inner packet's TTL. Omitted leaves it as it is
        (the kernel default V(0) on a new tunnel).
    type: int
  mtu:
    description:
      - The link's MTU (68..65515). Omitted leaves it as it is (the kernel derives it from the
        route to O(remote) on a new tunnel, usually 1480).
    type: int
  addresses:
    description:
      - IPv4 addresses of the link, as C(address/prefixlen) (no prefix length means C(/32)).
        The link ends with exactly these (others are removed). Omitted leaves the addresses
        alone; V([]) removes all of them. IPv6 addresses are never touched.
    type: list
    elements: str
  external:
    description:
      - Collect-metadata mode (C(ip link add NAME type ipip external)) - endpoints come per
        packet from a BPF program or lightweight-tunnel route. The kernel allows one such
        ipip link per network namespace and cannot switch an existing link in or out of it
        (changing this re-creates the link).
    type: bool
    default: false
  forwarding:
    description:
      - C(net.ipv4.conf.<name>.forwarding) of the link - whether the kernel routes packets that
        arrive through the tunnel on to other hosts. V(false) on a POP, whose tunnels serve the
        agent's probes only (local delivery), so a spoofed IPIP packet the kernel decapsulates
        is not forwarded to a victim. Omitted leaves it as it is.
      - Set after every create or re-create too (a new link takes C(net.ipv4.conf.default)'s).
    type: bool
  rp_filter:
    description:
      - C(net.ipv4.conf.<name>.rp_filter) of the link - V(0) off, V(1) strict, V(2) loose
        reverse-path filtering (the kernel applies the larger of this and
        C(net.ipv4.conf.all.rp_filter)). Omitted leaves it as it is.
    type: int
    choices: [0, 1, 2]
notes:
  - Addresses are compared as local address and prefix length; a peer address configured on
    the link (C(ip addr add A peer B)) is not managed.
  - A link of another kind, or an ipip link without the C(anycast.edge) alias, with the name
    O(name) makes the task fail - it is not ours to change.
  - O(forwarding) and O(rp_filter) are the runtime values of the network namespace the module
    runs in; they live and die with the link (the link itself is not persistent either).
seealso:
  - module: anycast.edge.tc_program
"""

EXAMPLES = r"""
- name: Tunnel from this POP to the game server game1
  anycast.edge.ipip_tunnel:
    name: ae-3f2a9c1d07
    local: 192.0.2.1
    remote: 198.51.100.20
    ttl: 64
    addresses: [100.64.0.0/31]
    description: peer game1

- name: A POP's tunnel to a backend - probes only, never a path onward
  anycast.edge.ipip_tunnel:
    name: ae-91c0d2e4aa
    local: 192.0.2.1
    remote: 198.51.100.30
    addresses: [100.64.0.2/31]
    forwarding: false
    rp_filter: 1

- name: Collect-metadata tunnel for a BPF program that sets the endpoints per packet
  anycast.edge.ipip_tunnel:
    name: ae-ext
    external: true

- name: Remove one tunnel
  anycast.edge.ipip_tunnel:
    name: ae-3f2a9c1d07
    state: absent

- name: Remove every tunnel of ours except these
  anycast.edge.ipip_tunnel:
    state: pruned
    keep: [ae-3f2a9c1d07, ae-91c0d2e4aa]
"""

RETURN = r"""
tunnel:
  description:
    - The tunnel after the run (in check mode, as it would be); null when absent or with
      O(state=pruned). Unmanaged attributes a new link would get from the kernel are null.
  returned: always
  type: dict
  sample:
    name: ae-3f2a9c1d07
    kind: ipip
    ours: true
    description: peer game1
    local: 192.0.2.1
    remote: 198.51.100.20
    ttl: 64
    mtu: 1480
    admin_state: up
    external: false
    addresses: [100.64.0.0/31]
settings:
  description:
    - The link's O(forwarding) and O(rp_filter) after the run (in check mode, as they would be),
      as the kernel writes them; only the ones asked for. Empty when none were asked for.
  returned: always
  type: dict
  sample: {forwarding: "0", rp_filter: "1"}
actions:
  description: What was done (or would be, in check mode), one line each; a re-create gives its reason.
  returned: always
  type: list
  elements: str
  sample: ["re-create ae-ext: external false -> true cannot change on an existing link"]
recreated:
  description: True if the link was (or would be) deleted and created again.
  returned: always
  type: bool
  sample: false
removed:
  description: Names of the tunnels removed (or that would be) - O(state=absent) or O(state=pruned).
  returned: always
  type: list
  elements: str
  sample: [ae-0b1c2d3e4f]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.anycast.edge.plugins.module_utils import _ipip
from ansible_collections.anycast.edge.plugins.module_utils import _netlink


def diff_for(before, after, header=None):
    diff = {"before": before if before is not None else {},
            "after": after if after is not None else {}}
    if header:
        diff["after_header"] = header
    return diff


def run_single(module, ipr):
    params = module.params
    wanted = None
    wanted_settings = {}
    if params["state"] == "present":
        wanted = _ipip.wanted_state(
            params["name"], local=params["local"], remote=params["remote"], ttl=params["ttl"],
            mtu=params["mtu"], addresses=params["addresses"], admin_state=params["admin_state"],
            external=params["external"], description=params["description"])
        wanted_settings = _ipip.wanted_settings(params["forwarding"], params["rp_filter"])
    elif not _ipip.INTERFACE_NAME.fullmatch(params["name"]):
        raise _ipip.IpipError("name: %r is not a Linux interface name" % (params["name"],))
    present = _ipip.read_link(ipr, params["name"])
    the_plan = _ipip.plan(wanted, present)
    new_link = the_plan.action in ("create", "recreate")
    settings_now, setting_changes = {}, []
    if wanted_settings:
        if present is not None:
            settings_now = _ipip.read_settings(params["name"], wanted_settings)
        # A link that is (re-)created starts with net.ipv4.conf.default's values.
        settings_start = _ipip.read_settings("default", wanted_settings) if new_link else settings_now
        setting_changes = _ipip.settings_changes(wanted_settings, settings_start)
    result = {
        "changed": the_plan.changed or bool(setting_changes),
        "tunnel": _ipip.public_state(the_plan.after),
        "settings": dict(wanted_settings),
        "actions": the_plan.summary() + ["set net.ipv4.conf.%s.%s %s -> %s" % ((params["name"],) + change)
                                         for change in setting_changes],
        "recreated": the_plan.action == "recreate",
        "removed": [params["name"]] if the_plan.action == "delete" else [],
    }
    if new_link and not _ipip.ipip_module_present():
        # The kernel may still load it on demand; if it cannot, the create below fails with
        # the full explanation. In check mode this warning is all there is.
        if _ipip.modules_loadable():
            module.warn("the ipip module is not loaded (no /sys/module/ipip); creating %s fails "
                        "unless the kernel can load it: modprobe ipip" % params["name"])
        else:
            module.warn("this kernel has no ipip (no /sys/module/ipip) and cannot load modules "
                        "(no /proc/modules); creating %s will fail - %s"
                        % (params["name"], _ipip.MISSING_MODULE_HINT))
    if module._diff:
        header = None
        if the_plan.action == "recreate":
            header = "%s (re-created: %s)" % (params["name"], "; ".join(the_plan.reasons))
        result["diff"] = diff_for(_with_settings(_ipip.public_state(the_plan.before), settings_now),
                                  _with_settings(_ipip.public_state(the_plan.after), wanted_settings), header)
    if module.check_mode:
        return result
    if the_plan.changed:
        _ipip.apply(ipr, the_plan)
        if the_plan.after is not None:
            # Report what the kernel made of it (the MTU it picked, ...), not our prediction.
            result["tunnel"] = _ipip.public_state(_ipip.read_link(ipr, params["name"]))
            if module._diff:
                result["diff"]["after"] = _with_settings(result["tunnel"], wanted_settings)
    if wanted_settings and the_plan.after is not None:
        # Read again from the link itself: a (re-)created one has the kernel's defaults now.
        _ipip.write_settings(params["name"], _ipip.settings_changes(
            wanted_settings, _ipip.read_settings(params["name"], wanted_settings)))
        result["settings"] = _ipip.read_settings(params["name"], wanted_settings)
    return result


def _with_settings(state, settings):
    """The tunnel as the diff shows it: its attributes plus the settings asked for."""
    if state is None or not settings:
        return state
    return dict(state, settings=settings)


def run_pruned(module, ipr):
    links = _ipip.list_ipip_links(ipr)
    stale = set(_ipip.stale_tunnels(links, module.params["keep"]))
    plans = dict((link["name"], _ipip.plan(None, link)) for link in links if link["name"] in stale)
    return _ipip.remove_links(
        module, dict((name, _ipip.public_state(the_plan.before)) for name, the_plan in plans.items()),
        lambda name: _ipip.apply(ipr, plans[name]), _ipip.IpipError, tunnel=None, recreated=False)


def main():
    module = AnsibleModule(
        argument_spec=_ipip.link_argument_spec(
            local=dict(type="str"),
            remote=dict(type="str"),
            ttl=dict(type="int"),
            external=dict(type="bool", default=False),
            forwarding=dict(type="bool"),
            rp_filter=dict(type="int", choices=[0, 1, 2]),
        ),
        required_if=[("state", "present", ["name"]), ("state", "absent", ["name"])],
        supports_check_mode=True,
    )
    _netlink.fail_without_pyroute2(module)
    try:
        with _netlink.open_iproute() as ipr:
            if module.params["state"] == "pruned":
                result = run_pruned(module, ipr)
            else:
                result = run_single(module, ipr)
    except _ipip.IpipError as exc:
        module.fail_json(msg=str(exc), changed=exc.host_changed)
    except _netlink.NetlinkError as exc:  # reading links failed: nothing was changed
        module.fail_json(msg="netlink: %s" % exc, changed=False)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
