"""The compiled tc_mapper programs, loaded into the kernel and run on crafted frames.

MapperEnv owns one network namespace shaped like a game-server host (the calling thread enters
it, so bpf_fib_lookup in the DSR path sees its routes), one loaded copy of build/tc_mapper.o,
helpers to fill its maps the way the tc_mapper role will, and runners for both programs through
BPF_PROG_TEST_RUN.

    game-server host: nic0 10.1.0.10/24 (the tunnel address), gateway 10.1.0.254 (static MAC),
    default route via the gateway; POPs and players are somewhere beyond it, except
    10.5.0.0/16, reached through another router, 10.1.0.253 (static MAC).
"""

from __future__ import annotations

import ctypes
import socket
import struct
from dataclasses import dataclass

from ansible_collections.anycast.edge.plugins.module_utils import _bpf
from ansible_collections.anycast.edge.plugins.module_utils import _mapper_abi as abi

from harness.namespace import ProgramInNamespace, add_veth, enable_forwarding, ip, reason_counts

TC_ACTIONS = {-1: "UNSPEC", 0: "OK", 2: "SHOT", 7: "REDIRECT"}

NIC = "nic0"
NIC_MAC = "02:00:00:00:01:0a"
HOST_ADDR = "10.1.0.10"           # the host's tunnel address (outer destination from POPs)
GATEWAY = "10.1.0.254"
GATEWAY_MAC = "02:00:00:00:01:fe"
# A POP reached through another router on the same link (a private interconnect, say).
PEERED_POP = "10.5.0.1"
PEERING_ROUTER = "10.1.0.253"
PEERING_ROUTER_MAC = "02:00:00:00:01:fd"
# A POP behind a second link of the host (the VM lab's backend has a link per POP).
SECOND_NIC = "nic1"
SECOND_NIC_MAC = "02:00:00:00:02:0a"
SECOND_LINK_POP = "10.6.0.1"
SECOND_LINK_ROUTER = "10.2.0.1"
SECOND_LINK_ROUTER_MAC = "02:00:00:00:02:01"

# struct __sk_buff as BPF_PROG_TEST_RUN takes it: only a few fields may be non-zero, among them
# ifindex (offset 40), which makes the test skb's device the one named (for bpf_fib_lookup).
SK_BUFF_SIZE = 192
SK_BUFF_IFINDEX_OFFSET = 40


@dataclass
class RunResult:
    action: str          # "OK", "SHOT", "REDIRECT", ...
    reason: str          # the mapper_reason counted for this packet
    data: bytes          # the frame as the program left it


class MapperEnv(ProgramInNamespace):
    """One namespace, one loaded tc_mapper object. Create with MapperEnv.start(object_path)."""

    NETNS_PREFIX = "aedge-mapper"

    def __init__(self, object_path: str, netns: str):
        super().__init__(object_path, netns)
        self.ifindex = 0
        self.programs = {}
        self.maps = {}

    def _build(self) -> None:
        add_veth(NIC, NIC_MAC)
        ip("addr", "add", HOST_ADDR + "/24", "dev", NIC)
        ip("neigh", "replace", GATEWAY, "lladdr", GATEWAY_MAC, "nud", "permanent", "dev", NIC)
        ip("route", "add", "default", "via", GATEWAY, "dev", NIC)
        ip("neigh", "replace", PEERING_ROUTER, "lladdr", PEERING_ROUTER_MAC, "nud", "permanent", "dev", NIC)
        ip("route", "add", "10.5.0.0/16", "via", PEERING_ROUTER, "dev", NIC)
        add_veth(SECOND_NIC, SECOND_NIC_MAC)
        ip("addr", "add", "10.2.0.2/24", "dev", SECOND_NIC)
        ip("neigh", "replace", SECOND_LINK_ROUTER, "lladdr", SECOND_LINK_ROUTER_MAC, "nud", "permanent",
           "dev", SECOND_NIC)
        ip("route", "add", SECOND_LINK_POP + "/32", "via", SECOND_LINK_ROUTER, "dev", SECOND_NIC)
        self.second_ifindex = socket.if_nametoindex(SECOND_NIC)
        enable_forwarding(NIC)
        self.ifindex = socket.if_nametoindex(NIC)

    def _load(self) -> None:
        self.obj = _bpf.BpfObject.open(self.object_path)
        self.obj.load()
        self.programs = {"ingress": self.obj.program(abi.INGRESS_PROGRAM),
                         "egress": self.obj.program(abi.EGRESS_PROGRAM)}
        self.maps = {name: self.obj.map(name) for name in abi.MAPS}

    # ---- map contents ------------------------------------------------------------------------

    def reset(self) -> None:
        """Empty every map (arrays zeroed): each test starts from an unconfigured host."""
        for name in ("mapper_pops", "mapper_services", "mapper_flows"):
            for key in list(self.maps[name].keys()):
                self.maps[name].delete(key)
        self.maps["mapper_config"].update(abi.U32.pack(0), bytes(abi.MAPPER_CONFIG.size))
        zero = [bytes(abi.MAPPER_COUNTER.size)] * _bpf.num_possible_cpus()
        for index in range(len(abi.REASONS)):
            self.maps["mapper_stats"].update_percpu(abi.U32.pack(index), zero)

    def configure(self, tunnel_addr=HOST_ADDR, **settings) -> None:
        self.maps["mapper_config"].update(abi.U32.pack(0), abi.pack_config(tunnel_addr, **settings))

    def add_pop(self, address: str, ifindex: int = 0) -> None:
        """A known POP, accepted on the device `ifindex` (default: nic0, the uplink)."""
        self.maps["mapper_pops"].update(abi.pack_pop_key(address), abi.pack_pop_value(ifindex or self.ifindex))

    def remove_pop(self, address: str) -> None:
        self.maps["mapper_pops"].delete(abi.pack_pop_key(address))

    def add_service(self, proto, address, port, dsr=False) -> None:
        self.maps["mapper_services"].update(abi.pack_service_key(proto, address, port), abi.pack_service_value(dsr))

    def set_flow(self, proto, player, player_port, service, service_port, pop, last_seen_ns) -> None:
        self.maps["mapper_flows"].update(abi.pack_flow_key(proto, player, player_port, service, service_port),
                                         abi.pack_flow_value(pop, last_seen_ns))

    def flow(self, proto, player, player_port, service, service_port):
        """(POP address, last_seen_ns) or None."""
        raw = self.maps["mapper_flows"].lookup(abi.pack_flow_key(proto, player, player_port, service, service_port))
        return None if raw is None else abi.unpack_flow_value(raw)

    def flows(self) -> dict:
        """{(proto, player, player_port, service, service_port): (POP, last_seen_ns)}."""
        return {abi.unpack_flow_key(key): abi.unpack_flow_value(value)
                for key, value in self.maps["mapper_flows"].items()}

    # ---- counters ----------------------------------------------------------------------------

    def reason_counts(self) -> dict:
        """{reason: (packets, bytes)} summed over CPUs, zero reasons left out."""
        return reason_counts(self.maps["mapper_stats"], abi.REASONS, abi.unpack_counters)

    # ---- running packets -----------------------------------------------------------------------

    def skb_ctx(self, ifindex: int = 0) -> bytes:
        """struct __sk_buff for BPF_PROG_TEST_RUN: the skb is on `ifindex` (default nic0)."""
        ctx = bytearray(SK_BUFF_SIZE)
        struct.pack_into("<I", ctx, SK_BUFF_IFINDEX_OFFSET, ifindex or self.ifindex)
        return bytes(ctx)

    def run(self, direction: str, frame: bytes, ifindex: int = 0) -> RunResult:
        """Run one frame through the ingress or egress program on the device `ifindex` (default
        nic0); the reason comes from the counters."""
        before = self.reason_counts()
        result = self.programs[direction].test_run(bytes(frame), ctx_in=self.skb_ctx(ifindex), ctx_size_out=512)
        after = self.reason_counts()
        changed = [name for name in abi.REASONS if after.get(name, (0, 0))[0] != before.get(name, (0, 0))[0]]
        retval = ctypes.c_int32(result.retval).value
        return RunResult(TC_ACTIONS.get(retval, str(retval)), ",".join(changed), bytes(result.data_out))

    def ingress(self, frame: bytes, ifindex: int = 0) -> RunResult:
        return self.run("ingress", frame, ifindex)

    def egress(self, frame: bytes) -> RunResult:
        return self.run("egress", frame)
