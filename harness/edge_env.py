"""The compiled xdp_edge program, loaded into the kernel and run on crafted packets.

EdgeEnv owns one network namespace built from harness/topology.py (the calling thread enters
it, so bpf_fib_lookup sees its routes), one loaded copy of build/xdp_edge.o, and helpers to fill
its maps the way edge_rules will and to run packets through BPF_PROG_TEST_RUN.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from dataclasses import dataclass

from ansible_collections.anycast.edge.plugins.module_utils import _bpf
from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _map_sync
from ansible_collections.anycast.edge.plugins.module_utils import _rules
from ansible_collections.anycast.edge.plugins.module_utils import _source_lists

from . import topology as topo
from .namespace import ProgramInNamespace, add_veth, enable_forwarding, ip, reason_counts

XDP_ACTIONS = {0: "ABORTED", 1: "DROP", 2: "PASS", 3: "TX", 4: "REDIRECT"}

# Maps the program fills itself and edge_rules never touches, cleared between tests too.
ALL_MAPS = (
    "edge_config", "edge_services", "edge_anycast_v4", "edge_anycast_v6", "edge_backends",
    "edge_allow_v4", "edge_deny_v4", "edge_sources", "edge_punches",
    "edge_a2s_cache", "edge_reason_stats", "edge_service_stats", "edge_tx_ports",
    "edge_src_filter", "edge_src_hosts", "edge_dst_pass", "edge_next_hops", "edge_tunnel_ifaces", "edge_own_addrs",
    "edge_payload_rules", "edge_payload_rule_bank", "edge_payload_rule_stats", "edge_rule_limits",
    "edge_a2s_stats", "edge_admission", "edge_attack_state", "edge_verify_stats", "edge_mc_flows",
    "edge_wireguard_pairs",
)
ARRAY_MAPS = ("edge_config", "edge_reason_stats", "edge_service_stats", "edge_src_filter", "edge_dst_pass",
              "edge_next_hops",
              "edge_tunnel_ifaces", "edge_own_addrs", "edge_payload_rules", "edge_payload_rule_bank",
              "edge_payload_rule_stats", "edge_a2s_stats", "edge_admission", "edge_attack_state", "edge_verify_stats")


@dataclass
class RunResult:
    action: str          # "DROP", "PASS", "TX", "REDIRECT", "ABORTED"
    reason: str          # the edge_reason counted for this packet
    data: bytes          # the frame as the program left it
    duration_ns: int


class EdgeEnv(ProgramInNamespace):
    """One namespace, one loaded program. Create with EdgeEnv.start(object_path)."""

    NETNS_PREFIX = "aedge-bpf"

    def __init__(self, object_path: str, netns: str):
        super().__init__(object_path, netns)
        # The deny/allow records, and what was last derived from them into edge_src_filter and
        # edge_src_hosts (the maps XDP reads), written the way edge_rules writes them.
        self._lists = {"deny": {}, "allow": {}}
        self._derived = {_rules.SOURCE_FILTER_MAP: None, _rules.SOURCE_HOSTS_MAP: {}}
        # The edge_dst_pass words whose bits add_anycast/add_service cleared ({index: word}); None
        # until the map is first filled (all zero, as loaded).
        self._claimed_words = None

    # ---- lifecycle (start, stop: ProgramInNamespace) -----------------------------------------

    def another_pop(self) -> "EdgeEnv":
        """A second POP: another copy of the program with its own maps (all empty), loaded beside
        this one, on the same devices. Stop it before this one."""
        other = EdgeEnv(self.object_path, self.netns)
        other._owns_namespace = False
        other.ifindex = dict(self.ifindex)
        try:
            other._load()
            other.reset()
        except BaseException:
            other.stop()
            raise
        return other

    def _build(self) -> None:
        for dev in (topo.UPLINK, topo.SIDE):
            add_veth(dev, topo.MAC[dev], topo.MTU[dev])
        ip("addr", "add", topo.UPLINK_ADDR, "dev", topo.UPLINK)
        ip("addr", "add", topo.SIDE_ADDR, "dev", topo.SIDE)
        ip("neigh", "replace", topo.ROUTER_IP, "lladdr", topo.ROUTER_MAC, "nud", "permanent", "dev", topo.UPLINK)
        for address, mac in topo.SIDE_NEIGHBOURS.items():
            ip("neigh", "replace", address, "lladdr", mac, "nud", "permanent", "dev", topo.SIDE)
        ip("route", "add", "default", "via", topo.ROUTER_IP, "dev", topo.UPLINK)
        ip("route", "add", topo.BACKENDS_VIA_ROUTER, "via", topo.ROUTER_IP, "dev", topo.UPLINK)
        ip("route", "add", "blackhole", topo.BLACKHOLE)
        enable_forwarding(topo.UPLINK, topo.SIDE)
        # /sys/class/net shows the namespace sysfs was mounted in, not ours: ask by ioctl instead.
        self.ifindex = {dev: socket.if_nametoindex(dev) for dev in (topo.UPLINK, topo.SIDE)}

    def _load(self) -> None:
        self.obj = _bpf.BpfObject.open(self.object_path)
        self.obj.load()
        self.prog = self.obj.program("xdp_edge")
        self.maps = {name: self.obj.map(name) for name in ALL_MAPS}

    # ---- map contents ------------------------------------------------------------------------

    def reset(self) -> None:
        """Empty every map (arrays zeroed): each test starts from a blank POP."""
        self._write_lists({}, {})
        self._reset_dest_pass()
        for name in ALL_MAPS:
            bpf_map = self.maps[name]
            if name in ARRAY_MAPS:
                continue
            for key in list(bpf_map.keys()):
                bpf_map.delete(key)
        self.maps["edge_config"].update(abi.U32.pack(0), bytes(abi.EDGE_CONFIG.size))
        self.maps["edge_own_addrs"].update(abi.U32.pack(0), abi.pack_own_addrs([]))
        for ifindex in self.ifindex.values():
            self.maps["edge_tunnel_ifaces"].update(abi.U32.pack(ifindex), abi.IFACE_VALUE.pack(0))
        ncpu = _bpf.num_possible_cpus()
        # No cached next hop may outlive its test (one may change a neighbour): one batch write.
        next_hops = self.maps["edge_next_hops"]
        next_hops.update_batch([abi.U32.pack(index) for index in range(next_hops.max_entries)],
                               [bytes(next_hops.value_buffer_size)] * next_hops.max_entries)
        # No rule list and bank 0, as a freshly loaded program has.
        rules = self.maps["edge_payload_rules"]
        rules.update_batch([abi.U32.pack(index) for index in range(rules.max_entries)],
                           [bytes(abi.PAYLOAD_RULE.size)] * rules.max_entries)
        self.maps["edge_payload_rule_bank"].update(abi.U32.pack(0), abi.PAYLOAD_RULE_BANK.pack(0))
        for name, layout, count in (("edge_reason_stats", abi.EDGE_COUNTER, len(abi.REASONS)),
                                    ("edge_service_stats", abi.SERVICE_COUNTER, abi.MAX_SERVICES),
                                    ("edge_payload_rule_stats", abi.EDGE_COUNTER, abi.MAX_PAYLOAD_RULES),
                                    ("edge_a2s_stats", abi.A2S_COUNTER, len(abi.A2S_KINDS)),
                                    ("edge_verify_stats", abi.U64, len(abi.VERIFY_PROOFS))):
            zero = [bytes(layout.size)] * ncpu
            for index in range(count):
                self.maps[name].update_percpu(abi.U32.pack(index), zero)
        # The admission buckets and attack states of every service id: one batch write each.
        for name in ("edge_admission", "edge_attack_state"):
            bpf_map = self.maps[name]
            bpf_map.update_batch([abi.U32.pack(index) for index in range(bpf_map.max_entries)],
                                 [bytes(bpf_map.value_buffer_size)] * bpf_map.max_entries)

    def configure(self, tunnel_addr=topo.POP_TUNNEL_ADDR, **settings) -> None:
        self.maps["edge_config"].update(abi.U32.pack(0), abi.pack_config(tunnel_addr, **settings))

    def add_anycast(self, cidr: str) -> None:
        key = abi.pack_lpm_v4(cidr)
        length, network = abi.LPM_V4_KEY.unpack(key)
        self._claim(int.from_bytes(network, "big"), length)
        self.maps["edge_anycast_v4"].update(key, abi.U32.pack(1))

    def add_anycast_v6(self, cidr: str) -> None:
        self.maps["edge_anycast_v6"].update(abi.pack_lpm_v6(cidr), abi.U32.pack(1))

    def add_backend(self, address: str) -> None:
        self.maps["edge_backends"].update(abi.ipv4(address), abi.BACKEND_VALUE.pack(0))

    def add_wireguard_pair(self, backend: str, ifindex: int, mtu: int) -> None:
        """The backend's pair with this POP is WireGuard, on device ifindex of that MTU (what edge_rules
        writes from its wireguard_pairs: docs/transport.md)."""
        self.maps["edge_wireguard_pairs"].update(abi.ipv4(backend), abi.WIREGUARD_PAIR.pack(ifindex, mtu))

    def set_tunnel_devices(self, *devs: str) -> None:
        """Flag exactly these devices as carrying IPIP (what xdp_program's tunnel_devices writes)."""
        for dev, ifindex in self.ifindex.items():
            flags = abi.IFACE_F_IPIP if dev in devs else 0
            self.maps["edge_tunnel_ifaces"].update(abi.U32.pack(ifindex), abi.IFACE_VALUE.pack(flags))

    def add_own_address(self, address: str) -> None:
        present = abi.unpack_own_addrs(self.maps["edge_own_addrs"].lookup(abi.U32.pack(0)))
        self.maps["edge_own_addrs"].update(abi.U32.pack(0), abi.pack_own_addrs(present + [address]))

    def add_service(self, proto, address, port, service_id, backend, flags=0, a2s_max_age_ms=0, limit=(0, 0),
                    admission=(0, 0), game_protocol="none", attack_mode="never", syn_auth="never"):
        """An edge_services entry as edge_rules packs it. admission: the unverified budget (pps,
        bps) for the POP; game_protocol, attack_mode, syn_auth: names (abi.GAME_PROTOCOLS,
        abi.ATTACK_MODES, abi.SYN_AUTH_MODES)."""
        key = abi.pack_service_key(proto, address, port)
        self._claim(int.from_bytes(abi.ipv4(address), "big"), 32)
        self.maps["edge_services"].update(
            key,
            abi.pack_service_value(service_id, backend, flags, a2s_max_age_ms, limit, admission, game_protocol,
                                   attack_mode, syn_auth),
        )

    def set_under_attack(self, service_id: int, under_attack: bool, since_ns: int = 0) -> None:
        """edge_attack_state[service id], as the agent's attack-mode controller writes it."""
        self.maps["edge_attack_state"].update(abi.U32.pack(service_id),
                                              abi.ATTACK_STATE.pack(int(under_attack), since_ns))

    def admission_counters(self, service_id: int, cpu=None) -> dict:
        """A service's admission bucket: one CPU's, or (cpu None) the counters summed over CPUs
        (the token credits are per CPU and not summed: left out)."""
        values = self.maps["edge_admission"].lookup_percpu(abi.U32.pack(service_id))
        names = ("refilled_ns", "packet_tokens", "byte_tokens", "unverified_packets", "unverified_bytes",
                 "admitted_packets", "dropped_packets", "verified_packets")
        if cpu is not None:
            return dict(zip(names, abi.ADMISSION_BUCKET.unpack(values[cpu])))
        totals = abi.unpack_counters(values, abi.ADMISSION_BUCKET)
        return dict((name, value) for name, value in zip(names, totals) if name.endswith("_packets")
                    or name == "unverified_bytes")

    def verify_counts(self) -> dict:
        """{proof name: sources verified by it}, summed over CPUs."""
        counts = {}
        for index, name in enumerate(abi.VERIFY_PROOFS):
            counts[name] = abi.unpack_counters(self.maps["edge_verify_stats"].lookup_percpu(abi.U32.pack(index)),
                                               abi.U64)[0]
        return counts

    def verified_for(self, address: str, service_id: int, now_ns: int, idle_ns: int = 600 * 10**9):
        """The proof name a source's live slot for the service holds, or None (no slot, or idle)."""
        state = self.source(address)
        for slot_service, proof, active_ns in (state.verified if state else []):
            if slot_service == service_id and (active_ns >= now_ns or now_ns - active_ns < idle_ns):
                return abi.VERIFY_PROOFS[proof]
        return None

    def deny(self, cidr: str) -> None:
        self._add_to_list("deny", cidr)

    def allow(self, cidr: str) -> None:
        self._add_to_list("allow", cidr)

    def allow_entries(self, entries) -> None:
        """Write edge_allow_v4 entries as edge_rules packs them ({LPM key: enum edge_allow_origin
        bits}: the operator's list and the control plane) and derive the lists XDP reads."""
        allow = dict(self._lists["allow"])
        allow.update(entries)
        self._write_lists(self._lists["deny"], allow)

    def deny_many(self, lpm_keys) -> None:
        """Deny many packed LPM keys at once (the bench's large lists): one plan."""
        deny = dict(self._lists["deny"])
        deny.update(dict.fromkeys(lpm_keys, _rules.LPM_PRESENT))
        self._write_lists(deny, self._lists["allow"])

    def _add_to_list(self, name: str, cidr: str) -> None:
        lists = {"deny": dict(self._lists["deny"]), "allow": dict(self._lists["allow"])}
        lists[name][abi.pack_lpm_v4(cidr)] = _rules.LPM_PRESENT
        self._write_lists(lists["deny"], lists["allow"])

    def _write_lists(self, deny, allow) -> None:
        """Bring the deny/allow records ({LPM key: value}) and the lists XDP reads of them
        (edge_src_filter, edge_src_hosts) to `deny` and `allow` with edge_rules' own plan and
        engine: only what differs, in its order."""
        present = {"edge_deny_v4": self._lists["deny"], "edge_allow_v4": self._lists["allow"]}
        present.update(self._derived)
        desired = {"edge_deny_v4": deny, "edge_allow_v4": allow}
        desired.update(_rules.source_list_entries(deny, allow))
        _map_sync.apply_plan(_rules.plan_writes(present, desired), _map_sync.executor(self.maps, _rules.IN_PLACE_MAPS))
        self._lists = {"deny": dict(deny), "allow": dict(allow)}
        self._derived = dict((name, desired[name]) for name in _rules.DERIVED_MAPS)

    # edge_dst_pass as edge_rules derives it (_rules.dest_pass_entries; tests/bpf/test_filters.py
    # compares the two): a POP with nothing claimed passes every destination at once, as the
    # service and anycast lookups would; each prefix or service added clears its /24s' bits
    # before its entry is written (edge_rules' dst_pass_tighten). Only the words that change are
    # written: the whole map once per loaded program, then a word or two per test.

    def _reset_dest_pass(self) -> None:
        all_ones = abi.U64.pack((1 << 64) - 1)
        if self._claimed_words is None:
            words = range(abi.SRC_FILTER_ENTRIES)
        else:
            words = list(self._claimed_words)
        self.maps[_rules.DEST_PASS_MAP].array_write((index, all_ones) for index in words)
        self._claimed_words = {}

    def _claim(self, address: int, length: int) -> None:
        if self._claimed_words is None:
            return   # left all zero (clear_dest_pass): nothing is passed at once
        first, count = _source_lists.nets_touched(address, length)
        changed = {}
        for net24 in range(first, first + count):
            index = net24 // abi.SRC_NETS_PER_ENTRY
            word = changed.get(index, self._claimed_words.get(index, (1 << 64) - 1))
            changed[index] = word & ~(1 << (net24 % abi.SRC_NETS_PER_ENTRY))
        self.maps[_rules.DEST_PASS_MAP].array_write((index, abi.U64.pack(word)) for index, word in changed.items())
        self._claimed_words.update(changed)

    def clear_dest_pass(self) -> None:
        """edge_dst_pass all zero, as a program just loaded has it before edge_rules first writes
        it (an upgrade's window): every packet asks the services and the anycast prefixes. Until
        the next reset, prefixes and services added leave it so."""
        self.maps[_rules.DEST_PASS_MAP].array_write((index, bytes(abi.U64.size))
                                                    for index in range(abi.SRC_FILTER_ENTRIES))
        self._claimed_words = None

    def source(self, address: str):
        """The source's edge_sources entry (abi.SourceState), or None."""
        raw = self.maps["edge_sources"].lookup(abi.ipv4(address))
        return None if raw is None else abi.SourceState.unpack(raw)

    def set_source(self, address: str, state) -> None:
        self.maps["edge_sources"].update(abi.ipv4(address), state.pack())

    def set_payload_rules(self, packed_rules) -> None:
        """Load a list of packed struct payload_rule (abi.pack_payload_rule) the way edge_rules does:
        into the bank XDP does not read (the rest of it emptied), then switch banks."""
        packed_rules = list(packed_rules)
        if len(packed_rules) > abi.MAX_PAYLOAD_RULES:
            raise ValueError("%d rules; the program holds %d" % (len(packed_rules), abi.MAX_PAYLOAD_RULES))
        bank = 1 - self.payload_rule_bank()
        empty = bytes(abi.PAYLOAD_RULE.size)
        values = packed_rules + [empty] * (abi.MAX_PAYLOAD_RULES - len(packed_rules))
        base = bank * abi.MAX_PAYLOAD_RULES
        self.maps["edge_payload_rules"].update_batch([abi.U32.pack(base + index) for index in range(len(values))],
                                                     values)
        self.maps["edge_payload_rule_bank"].update(abi.U32.pack(0), abi.PAYLOAD_RULE_BANK.pack(bank))

    def payload_rule_bank(self) -> int:
        return abi.PAYLOAD_RULE_BANK.unpack(self.maps["edge_payload_rule_bank"].lookup(abi.U32.pack(0)))[0]

    def rule_hits(self, position: int) -> tuple:
        """(packets, bytes) the rule at `position` matched, summed over CPUs."""
        return abi.unpack_counters(self.maps["edge_payload_rule_stats"].lookup_percpu(abi.U32.pack(position)))

    def ban(self, address: str, until_ns: int) -> None:
        """Ban by hand, as an operator does: the source's entry gets ban_until_ns (made if need be)."""
        state = self.source(address) or abi.SourceState()
        state.ban_until_ns = until_ns
        self.set_source(address, state)

    def ban_until(self, address: str):
        """The source's ban end, or None when it has no entry or was never banned."""
        state = self.source(address)
        return None if state is None or not state.ban_until_ns else state.ban_until_ns

    def punch(self, proto, service_addr, service_port, remote_addr, remote_port, last_seen_ns) -> None:
        self.maps["edge_punches"].update(
            abi.pack_punch_key(proto, service_addr, service_port, remote_addr, remote_port),
            abi.PUNCH_VALUE.pack(last_seen_ns),
        )

    def punch_last_seen(self, proto, service_addr, service_port, remote_addr, remote_port):
        raw = self.maps["edge_punches"].lookup(
            abi.pack_punch_key(proto, service_addr, service_port, remote_addr, remote_port))
        return None if raw is None else abi.PUNCH_VALUE.unpack(raw)[0]

    def set_a2s_cache(self, service_id: int, payload: bytes, updated_ns: int, kind: str = "info") -> None:
        self.maps["edge_a2s_cache"].update(abi.pack_a2s_cache_key(service_id, kind),
                                           abi.pack_a2s_cache_entry(payload, updated_ns))

    def a2s_cache(self, service_id: int, kind: str = "info"):
        """(updated_ns, payload, payload_csum) of a service's cached reply of one kind, or None."""
        raw = self.maps["edge_a2s_cache"].lookup(abi.pack_a2s_cache_key(service_id, kind))
        if raw is None:
            return None
        updated_ns, length, csum, payload = abi.A2S_CACHE_ENTRY.unpack(raw)
        return updated_ns, payload[:length], csum

    def cached_next_hops(self, service_id: int) -> list:
        """Every CPU's edge_next_hops entry of a service (NEXT_HOP_CACHE_ENTRY fields)."""
        return [abi.NEXT_HOP_CACHE_ENTRY.unpack(value)
                for value in self.maps["edge_next_hops"].lookup_percpu(abi.U32.pack(service_id))]

    def add_tx_port(self, dev: str) -> None:
        ifindex = self.ifindex[dev]
        self.maps["edge_tx_ports"].update(abi.U32.pack(ifindex), abi.U32.pack(ifindex))

    # ---- counters ----------------------------------------------------------------------------

    def reason_counts(self) -> dict:
        """{reason: (packets, bytes)} summed over CPUs, zero reasons left out."""
        return reason_counts(self.maps["edge_reason_stats"], abi.REASONS, abi.unpack_counters)

    def a2s_counters(self, kind: str) -> tuple:
        """(challenges, cached, bad_cookie) of an A2S kind, summed over CPUs."""
        return abi.unpack_counters(self.maps["edge_a2s_stats"].lookup_percpu(abi.U32.pack(abi.A2S_KINDS.index(kind))),
                                   abi.A2S_COUNTER)

    def service_counters(self, service_id: int) -> tuple:
        """(in_packets, in_bytes, out_packets, out_bytes)."""
        return abi.unpack_counters(self.maps["edge_service_stats"].lookup_percpu(abi.U32.pack(service_id)),
                                   abi.SERVICE_COUNTER)

    def client_counters(self, address: str):
        """(packets, bytes) the source sent to our services and prefixes, or None."""
        state = self.source(address)
        return None if state is None else (state.packets, state.byte_count)

    # ---- running packets -----------------------------------------------------------------------

    def xdp_ctx(self, ingress: str, frame_len: int) -> bytes:
        """struct xdp_md for BPF_PROG_TEST_RUN: the frame arrived on `ingress`."""
        return struct.pack("<6I", 0, frame_len, 0, self.ifindex[ingress], 0, 0)

    def run(self, frame: bytes, ingress: str = topo.UPLINK, repeat: int = 1) -> RunResult:
        """Run one frame through the program; the reason is read back from the counters."""
        before = self.reason_counts()
        result = self.prog.test_run(bytes(frame), repeat=repeat, ctx_in=self.xdp_ctx(ingress, len(frame)))
        after = self.reason_counts()
        changed = [name for name in abi.REASONS if after.get(name, (0, 0))[0] != before.get(name, (0, 0))[0]]
        reason = changed[0] if len(changed) == 1 else ",".join(changed)
        return RunResult(XDP_ACTIONS.get(result.retval, str(result.retval)), reason, bytes(result.data_out),
                         result.duration_ns)


def monotonic_ns() -> int:
    """The clock bpf_ktime_get_ns() reads."""
    return time.monotonic_ns()


def hammer_from_two_cpus(edge, frame, repeat):
    """Run frame `repeat` times on each of two CPUs at once (BPF_PROG_TEST_RUN pinned per thread);
    returns the two CPUs."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    assert len(cpus) == 2, "this test needs two CPUs to race on"
    ctx = edge.xdp_ctx("up0", len(frame))
    errors = []

    def hammer(cpu):
        try:
            os.sched_setaffinity(0, {cpu})
            edge.prog.test_run(frame, repeat=repeat, ctx_in=ctx)
        except Exception as exc:  # reported below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(cpu,)) for cpu in cpus]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    return cpus
