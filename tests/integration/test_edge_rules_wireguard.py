"""edge_rules writes edge_wireguard_pairs: each WireGuard pair's backend -> the ifindex and MTU of
the pair's device on the POP, as the kernel reports them (docs/transport.md).

The POP is a network namespace holding the pair's devices. They are persistent ``tun`` devices
here (L3, like a WireGuard one: the stand-in of test_wireguard_forward.py): this host's kernel has
no wireguard module, and what edge_rules reads of a device - its name, ifindex and MTU, through
netlink - is the same for any link. The program and its maps are pinned on a
private bpffs in xdp_program's layout (as test_edge_rules.py does), and the module runs through
ansible-playbook inside the namespace.
"""

from __future__ import annotations

import socket

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _bpf
from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi

from helpers.playbook import run_tasks, task

IFACE = "uplink0"          # names the pins only: edge_rules does not touch the device
WG_BACKEND, OTHER_BACKEND, IPIP_BACKEND = "10.1.0.20", "10.1.0.21", "10.1.0.10"
RULES = {
    "tunnel_address": "10.0.0.1",
    "anycast_prefixes": ["198.51.100.0/24"],
    "backends": [IPIP_BACKEND, WG_BACKEND, OTHER_BACKEND],
    "services": [
        {"name": "ipip", "id": 17, "address": "198.51.100.10", "protocol": "udp", "port": 27015,
         "backend_address": IPIP_BACKEND},
        {"name": "wg", "id": 18, "address": "198.51.100.10", "protocol": "udp", "port": 27016,
         "backend_address": WG_BACKEND},
        {"name": "wg-other", "id": 19, "address": "198.51.100.10", "protocol": "udp", "port": 27017,
         "backend_address": OTHER_BACKEND},
    ],
}


def pairs(*items):
    return dict(RULES, wireguard_pairs=[{"backend": backend, "device": device} for backend, device in items])


class Pop:
    """xdp_edge loaded and pinned as xdp_program leaves it, and a namespace with the pairs' devices."""

    def __init__(self, object_path, pin_root, namespace):
        self.pin_root = pin_root
        self.ns = namespace
        self.obj = _bpf.BpfObject.open(object_path)
        self.obj.load()
        self.obj.program("xdp_edge").pin("%s/%s/program" % (pin_root, IFACE))
        for bpf_map in self.obj.maps():
            bpf_map.pin("%s/%s/maps/%s" % (pin_root, IFACE, bpf_map.name))

    def add_device(self, name, mtu):
        self.ns.ip("tuntap", "add", "dev", name, "mode", "tun")
        self.ns.ip("link", "set", name, "mtu", str(mtu))
        return self.ifindex(name)

    def ifindex(self, name):
        with self.ns.entered():
            return socket.if_nametoindex(name)

    def pairs(self):
        """{backend: (ifindex, mtu)} of edge_wireguard_pairs, decoded here."""
        entries = self.obj.map("edge_wireguard_pairs").lookup_batch()
        return dict((socket.inet_ntoa(key), abi.WIREGUARD_PAIR.unpack(value)) for key, value in entries)

    def rules(self, tmp_path, rules, check=False, diff=False):
        args = dict(rules, pin_root=str(self.pin_root), iface=IFACE)
        return run_tasks([task("anycast.edge.edge_rules", args, check=check, diff=diff)], tmp_path, netns=self.ns)[0]


@pytest.fixture
def pop(xdp_edge_object, pin_root, netns):
    instance = Pop(xdp_edge_object, pin_root, netns("wgrules"))
    yield instance
    instance.obj.close()


def test_pairs_are_written_from_their_devices_and_a_rerun_changes_nothing(pop, tmp_path):
    wg = pop.add_device("aw-one", 1440)
    other = pop.add_device("aw-two", 1420)
    first = pop.rules(tmp_path / "1", pairs((WG_BACKEND, "aw-one"), (OTHER_BACKEND, "aw-two")))
    assert first["changed"] and not first.get("failed"), first
    assert first["maps"]["edge_wireguard_pairs"] == {"added": 2, "changed": 0, "removed": 0}
    assert pop.pairs() == {WG_BACKEND: (wg, 1440), OTHER_BACKEND: (other, 1420)}   # the IPIP backend: none
    # The backends are known before their services, and their transport before the services too.
    names = [step["name"] for step in first["steps"]]
    assert names.index("backends_add") < names.index("wireguard_pairs_set") < names.index("services_add")

    again = pop.rules(tmp_path / "2", pairs((WG_BACKEND, "aw-one"), (OTHER_BACKEND, "aw-two")))
    assert not again["changed"] and again["writes"] == 0, again


def test_check_mode_and_diff_show_the_pair_and_write_nothing(pop, tmp_path):
    wg = pop.add_device("aw-one", 1440)
    pop.rules(tmp_path / "1", RULES)
    check = pop.rules(tmp_path / "2", pairs((WG_BACKEND, "aw-one")), check=True, diff=True)
    assert check["changed"] and check["maps"]["edge_wireguard_pairs"]["added"] == 1, check
    assert "edge_wireguard_pairs:\n  %s over WireGuard: device ifindex %d, mtu 1440" % (WG_BACKEND, wg) \
        in check["diff"]["after"]
    assert pop.pairs() == {}
    # A device that does not exist yet (the first --check run of a pair: wireguard_transport, in check
    # mode, made nothing) is a warning there, and its pair is left out.
    ahead = pop.rules(tmp_path / "3", pairs((WG_BACKEND, "aw-one"), (OTHER_BACKEND, "aw-later")), check=True)
    assert not ahead.get("failed") and ahead["maps"]["edge_wireguard_pairs"]["added"] == 1, ahead
    assert any("aw-later" in warning and OTHER_BACKEND in warning for warning in ahead["warnings"])


def test_drift_is_repaired_and_pairs_inventory_dropped_are_pruned(pop, tmp_path):
    pop.add_device("aw-one", 1440)
    other = pop.add_device("aw-two", 1420)
    wanted = pairs((WG_BACKEND, "aw-one"), (OTHER_BACKEND, "aw-two"))
    pop.rules(tmp_path / "1", wanted)

    # The device made anew (another ifindex) and given another MTU, and an entry written by hand.
    pop.ns.ip("link", "del", "aw-one")
    wg = pop.add_device("aw-one", 1380)
    pop.obj.map("edge_wireguard_pairs").update(abi.ipv4(OTHER_BACKEND), abi.WIREGUARD_PAIR.pack(1, 9000))
    pop.obj.map("edge_wireguard_pairs").update(abi.ipv4(IPIP_BACKEND), abi.WIREGUARD_PAIR.pack(other, 1420))
    repaired = pop.rules(tmp_path / "2", wanted)
    assert repaired["maps"]["edge_wireguard_pairs"] == {"added": 0, "changed": 2, "removed": 1}, repaired
    assert pop.pairs() == {WG_BACKEND: (wg, 1380), OTHER_BACKEND: (other, 1420)}

    # A pair that inventory no longer has (set back to ipip): its backend is IPIP again.
    pruned = pop.rules(tmp_path / "3", pairs((WG_BACKEND, "aw-one")))
    assert pruned["maps"]["edge_wireguard_pairs"] == {"added": 0, "changed": 0, "removed": 1}, pruned
    assert pop.pairs() == {WG_BACKEND: (wg, 1380)}
    assert pop.rules(tmp_path / "4", RULES)["maps"]["edge_wireguard_pairs"]["removed"] == 1
    assert pop.pairs() == {}


def test_a_pair_whose_device_does_not_exist_fails_before_anything_is_written(pop, tmp_path):
    pop.add_device("aw-one", 1440)
    pop.rules(tmp_path / "1", RULES)
    before = dict((name, dict(pop.obj.map(name).lookup_batch())) for name in ("edge_services", "edge_wireguard_pairs"))
    changed = dict(pairs((WG_BACKEND, "aw-one"), (OTHER_BACKEND, "aw-missing")), ban_sec=5)
    changed["services"] = RULES["services"][:2]
    failed = pop.rules(tmp_path / "2", changed)
    assert failed.get("failed") and not failed["changed"], failed
    assert failed["msg"] == ("wireguard_pairs[1]: the device aw-missing of the WireGuard pair with backend %s does not "
                             "exist on this POP (anycast.edge.wireguard_transport makes it)" % OTHER_BACKEND)
    assert dict((name, dict(pop.obj.map(name).lookup_batch())) for name in before) == before


@pytest.mark.parametrize("items, message", [
    ([(WG_BACKEND, "aw-one"), (WG_BACKEND, "aw-two")],
     "wireguard_pairs[1].backend: %s has a WireGuard pair already (one device per backend)" % WG_BACKEND),
    ([(WG_BACKEND, "aw-one"), (OTHER_BACKEND, "aw-one")],
     "wireguard_pairs[1].device: aw-one is also the device of the pair with %s (one device per pair)" % WG_BACKEND),
    ([("10.1.0.300", "aw-one")], "wireguard_pairs[0].backend"),
])
def test_a_bad_pair_is_refused_naming_it(pop, tmp_path, items, message):
    pop.add_device("aw-one", 1440)
    pop.add_device("aw-two", 1440)
    failed = pop.rules(tmp_path / "1", pairs(*items))
    assert failed.get("failed") and message in failed["msg"], failed
    assert pop.pairs() == {}
