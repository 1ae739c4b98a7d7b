"""The xdp_edge role on a POP with a WireGuard pair (docs/transport.md): it attaches
tc_wireguard_redirect on the uplink's TC ingress behind xdp_edge, edge_rules writes the pair from
the POP's rules file, and a player's datagram goes into the pair's device; set back to ipip, the
pair is taken off and the redirect removed after it. All of it only with the inventory's opt-in,
anycast_edge_wireguard_data_plane: true; without it a wireguard pair stays IPIP. The pair's device is a ``tun`` device named as
wireguard_transport names it (this host's kernel has no wireguard module: the stand-in of
test_wireguard_forward.py), made by the test, as wireguard_transport makes the real one before
xdp_edge in playbooks/pop.yml."""

from __future__ import annotations

import os
import socket

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import raw

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _rules, _transport

from helpers.netns import link_mac
from test_wireguard_forward import open_tun, read_all
import test_xdp_edge_role
from test_xdp_edge_role import BACKEND, GAME, PLAYER, ROLE_PLAYBOOK, inventory, pinned, play

pop = test_xdp_edge_role.pop    # the POP's namespace with its uplink (the role test's fixture)

DEVICE = _transport.interface_name("game1")     # the POP's interface toward the backend game1
# The opt-in of the POPs' WireGuard forward (off by default: every pair over IPIP, docs/transport.md).
DATA_PLANE_ON = {"anycast_edge_wireguard_data_plane": True}


def redirect_filters(namespace) -> str:
    return namespace.exec("tc", "filter", "show", "dev", "up0", "ingress").stdout


def forwards(pin_root) -> dict:
    """The POP's forwards so far, by reason: IPIP (tx_forward) and into a WireGuard device."""
    with pinned(pin_root, "edge_reason_stats") as stats:
        return dict((name, abi.unpack_counters(stats.lookup_percpu(abi.U32.pack(abi.REASON_INDEX[name])))[0])
                    for name in ("tx_forward", "tx_forward_wireguard"))


def pairs(pin_root) -> dict:
    with pinned(pin_root, "edge_wireguard_pairs") as pairs_map:
        return dict((socket.inet_ntoa(key), abi.WIREGUARD_PAIR.unpack(value)) for key, value in pairs_map.lookup_batch())


def send_player_datagram(namespace, payload: bytes) -> None:
    """A player's datagram to the service, sent into the uplink from its veth peer."""
    frame = raw(Ether(dst=link_mac(namespace, "up0")) / IP(src=PLAYER, dst=GAME, ttl=64)
                / UDP(sport=40000, dport=27015) / payload)
    with namespace.entered():
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind(("up0p", 0))
    sock.send(frame)
    sock.close()


def test_a_wireguard_pair_gets_the_redirect_and_its_entry_and_loses_both_back_to_ipip(pop, pin_root, tmp_path):
    fd, ifindex = open_tun(pop, DEVICE)
    try:
        read_all(fd, wait=0.1)
        wireguard = inventory(tmp_path, pin_root, deny=["192.0.2.0/24"], extra_vars=DATA_PLANE_ON,
                              anycast_edge_transport="wireguard")
        assert play(pop, wireguard, ROLE_PLAYBOOK) > 0
        assert "anycast_edge:tc_wireguard_redirect" in redirect_filters(pop)
        assert pairs(pin_root) == {BACKEND: (ifindex, 1440)}

        send_player_datagram(pop, b"over wireguard")
        packets = [IP(packet) for packet in read_all(fd)]
        assert [(packet.src, packet.dst, bytes(packet[UDP].payload)) for packet in packets] == [
            (PLAYER, GAME, b"over wireguard")]

        assert play(pop, wireguard, ROLE_PLAYBOOK) == 0      # a rerun changes nothing

        ipip = inventory(tmp_path, pin_root, deny=["192.0.2.0/24"], extra_vars=DATA_PLANE_ON)
        output = []
        assert play(pop, ipip, ROLE_PLAYBOOK, output=output) > 0
        assert pairs(pin_root) == {}
        assert "tc_wireguard_redirect" not in redirect_filters(pop)
        # the pair came off before the redirect did
        text = output[0]
        assert text.index("Converge the rule maps") < text.index("Remove the WireGuard redirect of a POP")
        assert play(pop, ipip, ROLE_PLAYBOOK) == 0
    finally:
        os.close(fd)


def test_without_the_opt_in_a_wireguard_pair_stays_ipip(pop, pin_root, tmp_path):
    """The default (anycast_edge_wireguard_data_plane unset): the pair is wireguard and its device is
    there, but the POP's rules file lists no pair, no redirect is attached, and a player's datagram
    goes out as IPIP, not into the device - as before the POP's WireGuard forward was built."""
    fd, _ifindex = open_tun(pop, DEVICE)
    try:
        read_all(fd, wait=0.1)
        rules_dir = tmp_path / "rules"
        wireguard = inventory(tmp_path, pin_root, deny=["192.0.2.0/24"],
                              extra_vars={"anycast_edge_rules_dir": str(rules_dir)}, anycast_edge_transport="wireguard")
        assert play(pop, wireguard, ROLE_PLAYBOOK) > 0
        assert _rules.read_rules_file((rules_dir / "pop1.json").read_text(), "pop1.json")["wireguard_pairs"] == []
        assert "tc_wireguard_redirect" not in redirect_filters(pop)
        assert pairs(pin_root) == {}

        send_player_datagram(pop, b"over ipip")
        assert read_all(fd) == []
        assert forwards(pin_root) == {"tx_forward": 1, "tx_forward_wireguard": 0}
    finally:
        os.close(fd)
