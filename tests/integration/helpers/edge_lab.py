"""A POP and its upstream in two network namespaces, joined by one veth, for XDP traffic tests.

    [ns world]  up0p  10.0.0.254/24  (the upstream router; the players' addresses too:
                      192.0.2.10 an allowed player, 203.0.113.66 a denied one)
        |  veth
    [ns pop]    up0   10.0.0.1/24    xdp_edge attached here (by the xdp_program module)
                      backends 10.1.0.0/16 via 10.0.0.254, default via 10.0.0.254

A player's UDP datagram to the anycast service 198.51.100.10:27015 enters the POP on up0; the
program encapsulates it in IPIP towards the backend 10.1.0.10 and, since the next hop is the
router on the same link, sends it straight back out of up0 (XDP_TX): the capture on up0p sees
``10.0.0.1 > 10.1.0.10`` IPIP packets. Were the POP ever without a program, its kernel would
forward the datagram unencapsulated along the default route, back out of up0: the capture would
see plain UDP. So "every datagram came back encapsulated, none plain" is "there was always a
program", and "no datagram of the denied player came back" is "the deny list always held".
"""

from __future__ import annotations

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _map_sync
from ansible_collections.anycast.edge.plugins.module_utils import _rules
from ansible_collections.anycast.edge.plugins.module_utils._pins import open_pinned_maps

from .netns import NetNs, link_mac, run, veth
from .playbook import run_tasks, task

POP_IFACE = "up0"
WORLD_IFACE = "up0p"
POP_ADDRESS = "10.0.0.1"
ROUTER_ADDRESS = "10.0.0.254"
ALLOWED_PLAYER = "192.0.2.10"
DENIED_PLAYER = "203.0.113.66"
DENY_CIDR = "203.0.113.0/24"
ANYCAST_PREFIX = "198.51.100.0/24"
SERVICE = ("udp", "198.51.100.10", 27015)
SERVICE_ID = 17
BACKEND = "10.1.0.10"


class EdgeLab:
    def __init__(self, xdp_pass_object: str):
        self.pop = NetNs("pop")
        self.world = NetNs("world")
        try:
            self._build(xdp_pass_object)
        except BaseException:
            self.delete()
            raise

    def _build(self, xdp_pass_object: str) -> None:
        pop, world = self.pop, self.world
        # No IPv6 on the links: a router solicitation or an MLD report that the kernel sends by
        # itself seconds after link-up is a frame of nobody's, and one reached xdp_edge's counters
        # between two reads of a test (pass_not_ours 1, 70 bytes: an ICMPv6 router solicitation).
        for namespace in (pop, world):
            for conf in ("all", "default"):
                namespace.sysctl("net.ipv6.conf.%s.disable_ipv6" % conf, "1")
        veth(pop, POP_IFACE, world, WORLD_IFACE)
        pop.ip("addr", "add", POP_ADDRESS + "/24", "dev", POP_IFACE)
        world.ip("addr", "add", ROUTER_ADDRESS + "/24", "dev", WORLD_IFACE)
        for player in (ALLOWED_PLAYER, DENIED_PLAYER):
            world.ip("addr", "add", player + "/32", "dev", WORLD_IFACE)
        # Static neighbours: no ARP in the way of the first packets.
        pop.ip("neigh", "replace", ROUTER_ADDRESS, "lladdr", link_mac(world, WORLD_IFACE),
               "nud", "permanent", "dev", POP_IFACE)
        world.ip("neigh", "replace", POP_ADDRESS, "lladdr", link_mac(pop, POP_IFACE),
                 "nud", "permanent", "dev", WORLD_IFACE)
        pop.ip("route", "add", "10.1.0.0/16", "via", ROUTER_ADDRESS)
        pop.ip("route", "add", "default", "via", ROUTER_ADDRESS)
        world.ip("route", "add", ANYCAST_PREFIX, "via", POP_ADDRESS, "dev", WORLD_IFACE)
        # bpf_fib_lookup answers only with forwarding on; no ICMP redirects to confuse the world.
        for conf in ("all", "default", POP_IFACE):
            pop.sysctl("net.ipv4.conf.%s.forwarding" % conf, "1")
            pop.sysctl("net.ipv4.conf.%s.send_redirects" % conf, "0")
        # A veth delivers the POP's XDP_TX frames only to a peer that runs XDP itself.
        run("ip", "-n", world.name, "link", "set", "dev", WORLD_IFACE, "xdpdrv",
            "obj", xdp_pass_object, "sec", "xdp")

    def delete(self) -> None:
        self.pop.delete()
        self.world.delete()

    def attach_with_rules(self, xdp_edge_object: str, pin_root: str, workdir) -> None:
        """xdp_edge attached to the POP's uplink by the xdp_program module, its pins under pin_root,
        and the rules of write_rules in its maps."""
        attach = run_tasks([task("anycast.edge.xdp_program", {"iface": POP_IFACE, "object": xdp_edge_object,
                                                              "pin_root": pin_root})], workdir, netns=self.pop)
        assert attach[0]["changed"] and not attach[0].get("failed"), attach[0]
        self.write_rules(pin_root)

    @staticmethod
    def write_rules(pin_root: str) -> None:
        """The rules edge_rules would write, packed with _edge_abi: config, prefix, service,
        backend, and a deny list holding the denied player."""
        names = ["edge_config", "edge_anycast_v4", "edge_services", "edge_backends", "edge_deny_v4",
                 "edge_src_filter", "edge_src_hosts"]
        with open_pinned_maps(pin_root, POP_IFACE, names) as maps:
            maps["edge_config"].update(abi.U32.pack(0), abi.pack_config(POP_ADDRESS))
            maps["edge_anycast_v4"].update(abi.pack_lpm_v4(ANYCAST_PREFIX), abi.U32.pack(1))
            maps["edge_services"].update(abi.pack_service_key(*SERVICE),
                                         abi.pack_service_value(SERVICE_ID, BACKEND))
            maps["edge_backends"].update(abi.ipv4(BACKEND), abi.BACKEND_VALUE.pack(0))
            # ... and the deny list with what XDP reads of it, planned and written as edge_rules does
            deny = {abi.pack_lpm_v4(DENY_CIDR): _rules.LPM_PRESENT}
            desired = dict(_rules.source_list_entries(deny, {}), edge_deny_v4=deny, edge_allow_v4={})
            _map_sync.apply_plan(_rules.plan_writes({}, desired), _map_sync.executor(maps, _rules.IN_PLACE_MAPS))
