#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: inventory_check
short_description: Validate the anycast.edge inventory and resolve it into edge_rules parameters
version_added: "0.1.0"
description:
  - "Checks the whole anycast.edge inventory schema at once - prefixes, services, filters,
    limits, and the POPs' and backends' own settings - and fails with one line per problem,
    each naming the variable path and the bad value, for example
    C(anycast_edge_services[2].address: 203.0.113.9 is not inside any of anycast_edge_prefixes)."
  - Every problem is reported in the same run, not only the first.
  - Risks that are allowed but should be known are returned as warnings (shown in the play
    output, once) - today one per POP/backend pair whose plain IPIP does not cross a declared
    underlay device (O(pops) C(anycast_edge_underlay_devices), C(anycast_edge_underlay_networks)).
  - Secrets (BGP passwords) are checked but never shown; they are masked in the result.
  - Resolves the transport of every (POP, backend) pair, C(ipip) or C(wireguard) (RV(transports)), and
    the WireGuard interfaces each host needs for its WireGuard pairs (RV(wireguard_interfaces)).
  - On success returns RV(rules), the parameters of M(anycast.edge.edge_rules) (service ids
    filled in, backend host names replaced by their tunnel addresses, CIDRs in canonical form).
  - "Derives each POP's control-plane sources, which no spoofed packet may get banned or rate
    limited (RV(rules.control_plane)): its BGP neighbours, the other POPs' tunnel addresses and
    management addresses (C(ansible_host) when it is an IPv4 address,
    C(anycast_edge_agent_listen_address) when set) and the hosts of group C(monitoring).
    Loopback addresses, anycast addresses and the backends are left out. A deny prefix that
    covers one of them is a problem (deny beats the exemption)."
  - A monitoring host whose C(ansible_host) is not an IPv4 address is a warning (its address
    is not known, so it cannot be exempted).
  - Meant to run once, on the controller, before any host is touched - the
    C(anycast.edge.validate_inventory) role does that (C(run_once), C(delegate_to=localhost)).
    The schema is documented in that role (C(ansible-doc -t role anycast.edge.validate_inventory)).
  - With O(rules_dir), also renders the rules of each POP into one compact file there,
    C(<rules_dir>/<POP>.json) - what M(anycast.edge.edge_rules) reads through its
    O(anycast.edge.edge_rules#module:rules_file), so that the rules (up to a million prefixes)
    reach a POP as one file, not as task arguments. A file is written only when its content changes.
  - Changes nothing on any managed host. The rules files are the controller's working copy of
    the inventory, like a registered result - written in check mode too, so that a check run
    compares the POPs with the inventory as it is; they never count as a change.
author:
  - anycast.edge maintainers (!UNKNOWN)
requirements:
  - netaddr (on the host the module runs on, normally the controller)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Validates the same way; it changes no managed host (the rules files of O(rules_dir) are written, see above).
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  asn:
    description: The value of C(anycast_edge_asn).
    type: raw
  prefixes:
    description: The value of C(anycast_edge_prefixes).
    type: raw
  services:
    description: The value of C(anycast_edge_services).
    type: raw
    default: []
  filters:
    description: The value of C(anycast_edge_filters).
    type: raw
    default: {}
  verified_idle_sec:
    description: The value of C(anycast_edge_verified_idle_sec) (omitted - the default, 600).
    type: raw
  fleet_sync:
    description:
      - C(anycast_edge_fleet_sync) - share port punches, bans and verified players between the POPs over
        their own NATS JetStream cluster (a boolean; null - off).
    type: raw
  fleet_sync_options:
    description: C(anycast_edge_fleet_sync_options) - the agent's fleet sync settings (caps, stream, replicas).
    type: raw
  nats_tls_ca:
    description: C(anycast_edge_nats_tls_ca) - the PEM of the CA of the POPs' NATS certificates.
    type: raw
  lab_inventory:
    description:
      - C(anycast_edge_lab_inventory) - true only in the project's VM lab inventory, whose public lab CA
        C(anycast_edge_nats_tls_ca) is refused anywhere else.
    type: raw
  wireguard_data_plane:
    description:
      - C(anycast_edge_wireguard_data_plane) - forward the players of the POPs' WireGuard pairs into their
        WireGuard interfaces (RV(rules.wireguard_pairs)); a boolean, null - off. Off, RV(rules.wireguard_pairs)
        is empty and every pair's players go over IPIP (the WireGuard data plane is not complete, see
        docs/transport.md); on, a warning for each POP with WireGuard pairs.
    type: raw
  nats_client_port:
    description: C(anycast_edge_nats_client_port).
    type: raw
  nats_cluster_port:
    description: C(anycast_edge_nats_cluster_port).
    type: raw
  nats_monitor_port:
    description: C(anycast_edge_nats_monitor_port).
    type: raw
  attack_detection:
    description: The value of C(anycast_edge_attack_detection) (omitted - the defaults).
    type: raw
  pops:
    description:
      - The hosts of group C(pops), each with its POP settings (absent ones as null) -
        C(anycast_edge_uplink), C(anycast_edge_tunnel_address), C(anycast_edge_egress_devices),
        C(anycast_edge_underlay_devices), C(anycast_edge_underlay_networks), C(anycast_edge_router_id),
        C(anycast_edge_bgp_neighbors), C(anycast_edge_bgp_communities), C(anycast_edge_rtbh),
        C(anycast_edge_bgp_timers), C(anycast_edge_bfd_timers), C(anycast_edge_drain_state),
        C(ansible_host), C(anycast_edge_agent_listen_address), C(anycast_edge_transport),
        C(anycast_edge_transport_backends), C(anycast_edge_wireguard_port), C(anycast_edge_wireguard_endpoint),
        C(anycast_edge_wireguard_mtu), C(anycast_edge_wireguard_keepalive), C(anycast_edge_nats_address),
        C(anycast_edge_nats_password), C(anycast_edge_nats_tls_cert), C(anycast_edge_nats_tls_key).
      - The NATS password and key are secrets - checked, never shown, masked in the result.
    type: dict
    default: {}
  backends:
    description:
      - The hosts of group C(backends), each with its settings (absent ones as null) -
        C(anycast_edge_tunnel_address), C(anycast_edge_uplink), C(anycast_edge_mapper_devices),
        C(anycast_edge_mapper_fib_next_hop), C(anycast_edge_mapper_rp_filter),
        C(anycast_edge_default_pop), C(anycast_edge_dsr_services), C(anycast_edge_wireguard_port),
        C(anycast_edge_wireguard_endpoint), C(anycast_edge_wireguard_mtu), C(anycast_edge_wireguard_keepalive).
    type: dict
    default: {}
  monitoring:
    description:
      - The hosts of group C(monitoring) (where Prometheus runs), each with its C(ansible_host)
        (null when unset). Their addresses are control-plane sources of every POP.
    type: dict
    default: {}
  rules_dir:
    description:
      - Folder on the host the module runs on (the controller) to render one rules file per POP
        into (made when missing, mode 0700; files mode 0600). Omitted, no file is written.
    type: path
notes:
  - The parameters are C(raw) on purpose - the module, not Ansible's type conversion, judges the
    values, so that a bad value is reported with its full path and every problem at once.
seealso:
  - module: anycast.edge.edge_rules
"""

EXAMPLES = r"""
- name: Check the inventory once, on the controller
  anycast.edge.inventory_check:
    asn: "{{ anycast_edge_asn | default(omit) }}"
    prefixes: "{{ anycast_edge_prefixes | default(omit) }}"
    services: "{{ anycast_edge_services | default([]) }}"
    filters: "{{ anycast_edge_filters | default({}) }}"
    pops:
      pop-ams1: {anycast_edge_uplink: eth1, anycast_edge_tunnel_address: 10.0.0.1}
    backends:
      game1: {anycast_edge_tunnel_address: 10.1.0.10}
  delegate_to: localhost
  run_once: true
  register: anycast_edge_inventory
"""

RETURN = r"""
warnings_found:
  description: One line per warning (also shown as the task's warnings).
  returned: always
  type: list
  elements: str
  sample:
    - "pop-ams1 <-> game1: the IPIP to game1's tunnel address 10.1.0.10 does not cross a declared underlay device (...)"
problems:
  description: One line per problem (empty when the inventory is valid; the task fails otherwise).
  returned: always
  type: list
  elements: str
  sample:
    - "anycast_edge_services[2].address: 203.0.113.9 is not inside any of anycast_edge_prefixes"
rules:
  description: The parameters of M(anycast.edge.edge_rules) the inventory resolves to.
  returned: success
  type: dict
  contains:
    services:
      description: Services with C(id) and C(backend_address) resolved.
      type: list
      elements: dict
      returned: success
    anycast_prefixes:
      description: Canonical anycast prefixes.
      type: list
      elements: str
      returned: success
    backends:
      description: Tunnel addresses of every host of group C(backends).
      type: list
      elements: str
      returned: success
    allow:
      description: Canonical allow CIDRs (duplicates dropped, order kept).
      type: list
      elements: str
      returned: success
    deny:
      description: Canonical deny CIDRs (duplicates dropped, order kept).
      type: list
      elements: str
      returned: success
    rate_limits:
      description: Per protocol class limits.
      type: dict
      returned: success
    ban_sec:
      description: Ban time.
      type: int
      returned: success
    punch_idle_sec:
      description: Port-punch idle time.
      type: int
      returned: success
    a2s_cookie_epoch_sec:
      description: A2S cookie epoch.
      type: int
      returned: success
    verified_idle_sec:
      description: How long a verified source stays verified without traffic (seconds).
      type: int
      returned: success
    attack_detection:
      description:
        - By service name - when the POP agent puts the service under attack (the fleet's
          C(anycast_edge_attack_detection) with the service's own fields over it). For the agent
          (M(anycast.edge.edge_rules) does not take it).
      type: dict
      returned: success
    control_plane:
      description:
        - By POP (inventory name) - the sources that POP exempts from bans and rate limits, each
          C(address) (a /32) and C(reason) (whose address it is). The O(anycast.edge.edge_rules#module:control_plane) of
          M(anycast.edge.edge_rules) on that POP.
      type: dict
      returned: success
    wireguard_pairs:
      description:
        - By POP (inventory name), for the POPs that have WireGuard pairs while
          O(wireguard_data_plane) is true (none otherwise) - each pair's C(backend)
          (its tunnel address) and C(device) (the POP's WireGuard interface toward it, see
          RV(wireguard_interfaces)). The O(anycast.edge.edge_rules#module:wireguard_pairs) of
          M(anycast.edge.edge_rules) on that POP (in its rules file; an empty list for a POP without).
      type: dict
      returned: success
  sample:
    services:
      - {name: cs2-main, id: 237, address: 198.51.100.10, protocol: udp, port: 27015, backend_address: 10.1.0.10,
         a2s_cache: true, a2s_snoop: true, a2s_max_age_sec: 30, game_protocol: source, attack_mode: auto,
         admission: {packets_per_sec: 2000, bytes_per_sec: 2000000}}
    anycast_prefixes: [198.51.100.0/24]
    backends: [10.1.0.10]
    allow: []
    deny: [192.0.2.0/24]
    rate_limits: {udp: {packets_per_sec: 500}}
    ban_sec: 60
    punch_idle_sec: 120
    a2s_cookie_epoch_sec: 30
    verified_idle_sec: 600
    attack_detection:
      cs2-main: {unverified_packets_per_sec: 5000, enter_after_sec: 3, leave_after_sec: 60}
    control_plane:
      pop1:
        - {address: 10.0.0.2/32, reason: tunnel address of POP pop2}
        - {address: 172.16.1.1/32, reason: BGP neighbour upstream of pop1}
    wireguard_pairs:
      pop2: [{backend: 10.1.0.10, device: aw-a31a83312b}]
transports:
  description: By POP, by backend (inventory names) - the transport of the pair, C(ipip) or C(wireguard) (docs/transport.md).
  returned: success
  type: dict
  sample: {pop1: {game1: ipip}, pop2: {game1: wireguard}}
wireguard_interfaces:
  description:
    - By POP and backend (inventory name) - its WireGuard interfaces, one per WireGuard pair (an empty
      list for a host with none), each with C(name), C(peer) (inventory name), C(listen_port), the
      peer's C(endpoint) (C(address:port)), C(mtu) and C(persistent_keepalive).
  returned: success
  type: dict
  sample:
    pop1: []
    pop2: [{name: aw-a31a83312b, peer: game1, listen_port: 51820, endpoint: "10.1.0.10:51820", mtu: 1440,
            persistent_keepalive: 25}]
    game1: [{name: aw-6aecf4af8a, peer: pop2, listen_port: 51820, endpoint: "10.0.0.2:51820", mtu: 1440,
             persistent_keepalive: 25}]
rules_files:
  description: By POP (inventory name) - the path of its rules file.
  returned: success, when O(rules_dir) is given
  type: dict
  sample: {pop1: /home/ops/inventory/edge_rules/pop1.json}
fleet_sync:
  description:
    - The fleet sync's NATS cluster as the roles render it - C(enabled); when enabled, C(pops) (by POP -
      its NATS C(address) and C(origin), the subject token it publishes under) and C(options) (the
      agent's fleet sync settings, C(replicas) defaulting to min(3, POPs)).
  returned: success
  type: dict
  sample:
    enabled: true
    pops:
      pop1: {address: 192.0.2.11, origin: pop1}
      pop2.example: {address: 192.0.2.12, origin: pop2~example}
    options: {replicas: 2}
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.anycast.edge.plugins.module_utils import _inventory
from ansible_collections.anycast.edge.plugins.module_utils import _rules


def main():
    module = AnsibleModule(
        argument_spec=dict(
            asn=dict(type="raw"),
            prefixes=dict(type="raw"),
            services=dict(type="raw", default=[]),
            filters=dict(type="raw", default={}),
            verified_idle_sec=dict(type="raw"),
            attack_detection=dict(type="raw"),
            fleet_sync=dict(type="raw"),
            fleet_sync_options=dict(type="raw"),
            nats_tls_ca=dict(type="raw"),
            lab_inventory=dict(type="raw"),
            wireguard_data_plane=dict(type="raw"),
            nats_client_port=dict(type="raw"),
            nats_cluster_port=dict(type="raw"),
            nats_monitor_port=dict(type="raw"),
            pops=dict(type="dict", default={}),
            backends=dict(type="dict", default={}),
            monitoring=dict(type="dict", default={}),
            rules_dir=dict(type="path"),
        ),
        supports_check_mode=True,
        # The POPs' settings hold the BGP passwords: nothing of the arguments goes to the journal.
        no_log=True,
    )
    if not _inventory.HAS_NETADDR:
        module.fail_json(msg=missing_required_lib("netaddr"))
    params = module.params
    variables = {
        "anycast_edge_asn": params["asn"],
        "anycast_edge_prefixes": params["prefixes"],
        "anycast_edge_services": params["services"],
        "anycast_edge_filters": params["filters"],
        "anycast_edge_verified_idle_sec": params["verified_idle_sec"],
        "anycast_edge_attack_detection": params["attack_detection"],
        "anycast_edge_fleet_sync": params["fleet_sync"],
        "anycast_edge_fleet_sync_options": params["fleet_sync_options"],
        "anycast_edge_nats_tls_ca": params["nats_tls_ca"],
        "anycast_edge_lab_inventory": params["lab_inventory"],
        "anycast_edge_wireguard_data_plane": params["wireguard_data_plane"],
        "anycast_edge_nats_client_port": params["nats_client_port"],
        "anycast_edge_nats_cluster_port": params["nats_cluster_port"],
        "anycast_edge_nats_monitor_port": params["nats_monitor_port"],
    }
    # Whatever the result says, a secret is masked in it (Ansible replaces these values).
    module.no_log_values.update(_inventory.secrets(params["pops"]))
    problems, warnings, normalized = _inventory.check_all(variables, params["pops"], params["backends"],
                                                          params["monitoring"])
    for warning in warnings:
        module.warn(warning)
    if problems:
        module.fail_json(
            msg="the anycast.edge inventory has %d problem%s:\n%s"
                % (len(problems), "" if len(problems) == 1 else "s", "\n".join(problems)),
            problems=problems, warnings_found=warnings, invocation=dict(module_args=echoed_params(params)))
    rules = _inventory.resolve_rules(normalized)
    result = dict(changed=False, problems=[], warnings_found=warnings, rules=rules,
                  transports=normalized["transports"], wireguard_interfaces=normalized["wireguard_interfaces"],
                  fleet_sync=normalized["fleet_sync"])
    if params["rules_dir"]:
        try:
            result["rules_files"] = write_rules_files(params["rules_dir"], rules, sorted(params["pops"]))
        except (IOError, OSError) as exc:
            module.fail_json(msg="rules_dir: cannot write the rules files in %s: %s" % (params["rules_dir"], exc),
                             invocation=dict(module_args=echoed_params(params)))
    module.exit_json(invocation=dict(module_args=echoed_params(params)), **result)


def write_rules_files(folder, rules, pops):
    """{POP: path} of the rules files written (each replaced whole, by a rename, and only when its
    content differs: an unchanged inventory rewrites nothing)."""
    if not os.path.isdir(folder):
        os.makedirs(folder, 0o700)
    paths = {}
    for pop in pops:
        path = paths[pop] = os.path.join(folder, "%s.json" % pop)
        text = _rules.render_rules_file(_inventory.pop_rules(rules, pop))
        try:
            with open(path) as present:
                if present.read() == text:
                    continue
        except (IOError, OSError):
            pass
        handle, staged = tempfile.mkstemp(dir=folder, prefix=".%s." % pop)
        try:
            with os.fdopen(handle, "w") as staged_file:
                staged_file.write(text)
            os.chmod(staged, 0o600)
            os.rename(staged, path)
        except BaseException:
            os.unlink(staged)
            raise
    return paths


def echoed_params(params, limit=100):
    """The parameters as the result echoes them, with long allow/deny lists cut to a count (the
    resolved lists are in `rules` already; echoing 100,000 prefixes twice helps nobody)."""
    echoed = dict(params)
    filters = params.get("filters")
    if isinstance(filters, dict):
        echoed["filters"] = dict(filters)
        for name in ("allow", "deny"):
            value = filters.get(name)
            if isinstance(value, list) and len(value) > limit:
                echoed["filters"][name] = value[:limit] + ["... and %d more" % (len(value) - limit)]
    return echoed


if __name__ == "__main__":
    main()
