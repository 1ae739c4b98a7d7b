"""The xdp_edge role on a POP in a network namespace, as an operator runs it.

attach -> rerun unchanged -> rules changed (playbooks/rules.yml) with the program and its
learned state intact -> detach. The POP is this machine inside a namespace, reached with
ansible_connection=local; the pins live in a private bpffs.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import raw

from ansible_collections.anycast.edge.plugins.module_utils import _bpf
from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi

from helpers.netns import veth

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
ROLE_PLAYBOOK = Path(__file__).resolve().parent / "playbooks" / "xdp_edge_role.yml"
RULES_PLAYBOOK = REPO / "playbooks" / "rules.yml"

GAME, BACKEND, PLAYER = "198.51.100.10", "10.1.0.10", "203.0.113.5"


def inventory(tmp_path: Path, pin_root: str, deny: list, **pop_vars) -> Path:
    data = {"all": {
        "vars": {
            "anycast_edge_asn": 64500,
            "anycast_edge_prefixes": ["198.51.100.0/24"],
            "anycast_edge_services": [{
                "name": "game", "address": GAME, "protocol": "udp", "port": 27015, "backend": "game1",
                "a2s_cache": True, "a2s_refresh_sec": 5, "a2s_max_age_sec": 30}],
            "anycast_edge_filters": {"deny": deny, "allow": ["100.64.0.0/10"],
                                     "rate_limits": {"udp": {"packets_per_sec": 1000}},
                                     "ban_sec": 60, "punch_idle_sec": 120, "a2s_cookie_epoch_sec": 30},
            "anycast_edge_bpf_pin_root": pin_root,
            "anycast_edge_controller_build_dir": str(tmp_path / "controller-build"),
            "anycast_edge_object_dir": str(tmp_path / "pop-objects"),
            "anycast_edge_manage_packages": False,
            "anycast_edge_sysctl_persist": False,
            "ansible_python_interpreter": sys.executable,
        },
        "children": {
            "pops": {"hosts": {"pop1": dict({"ansible_connection": "local", "anycast_edge_uplink": "up0",
                                             "anycast_edge_tunnel_address": "10.0.0.1"}, **pop_vars)}},
            "backends": {"hosts": {"game1": {"anycast_edge_tunnel_address": BACKEND, "anycast_edge_uplink": "eth0"}}},
        },
    }}
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def play(namespace, inventory_path: Path, playbook: Path) -> int:
    """Run a playbook inside the namespace; returns the POP's changed count from the recap."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0",
               PATH="%s:%s" % (VENV_BIN, os.environ.get("PATH", "")))
    done = subprocess.run(["ip", "netns", "exec", namespace.name, str(VENV_BIN / "ansible-playbook"),
                           "-i", str(inventory_path), str(playbook)],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    recap = re.search(r"^pop1\s*:.*?changed=(\d+).*?failed=(\d+)", output, re.M)
    assert recap and recap.group(2) == "0", output
    return int(recap.group(1))


def attached_prog_id(namespace) -> int:
    out = namespace.ip("-d", "-o", "link", "show", "up0").stdout
    found = re.search(r"prog/xdp id (\d+)", out)
    return int(found.group(1)) if found else 0


def pinned(pin_root: str, name: str) -> _bpf.BpfMap:
    return _bpf.BpfMap.from_pin(os.path.join(pin_root, "up0", "maps", name))


def flagged_tunnel_ifindexes(pin_root: str) -> set:
    """The ifindexes edge_tunnel_ifaces flags as carrying IPIP."""
    with pinned(pin_root, "edge_tunnel_ifaces") as ifaces:
        values, stride = ifaces.array_bytes(), ifaces.value_size
    return {index for index in range(len(values) // stride)
            if abi.IFACE_VALUE.unpack_from(values, index * stride)[0] & abi.IFACE_F_IPIP}


@pytest.fixture
def pop(netns):
    namespace = netns("role")
    veth(namespace, "up0", namespace, "up0p")
    namespace.ip("addr", "add", "10.0.0.1/24", "dev", "up0")
    namespace.ip("neigh", "replace", "10.0.0.254", "lladdr", "02:00:00:00:00:fe", "nud", "permanent", "dev", "up0")
    namespace.ip("route", "add", "default", "via", "10.0.0.254")
    return namespace


def test_attach_rerun_rules_update_and_detach(pop, pin_root, tmp_path):
    inv = inventory(tmp_path, pin_root, deny=["192.0.2.0/24"])

    assert play(pop, inv, ROLE_PLAYBOOK) > 0
    prog_id = attached_prog_id(pop)
    assert prog_id > 0
    assert pop.exec("cat", "/proc/sys/net/ipv4/conf/all/forwarding").stdout.strip() == "1"
    assert [abi.SERVICE_KEY.unpack(k) for k in pinned(pin_root, "edge_services").keys()] == [
        (abi.ipv4(GAME), abi.port(27015), 17)]
    assert set(pinned(pin_root, "edge_deny_v4").keys()) == {abi.pack_lpm_v4("192.0.2.0/24")}
    # No underlay devices: the uplink carries the backends' IPIP, and only the uplink (issue 12 §3).
    with pop.entered():
        uplink_ifindex = socket.if_nametoindex("up0")
    assert flagged_tunnel_ifindexes(pin_root) == {uplink_ifindex}
    assert "10.0.0.1" in abi.unpack_own_addrs(pinned(pin_root, "edge_own_addrs").lookup(abi.U32.pack(0)))

    # A second run changes nothing: same object, same program, same rules.
    assert play(pop, inv, ROLE_PLAYBOOK) == 0
    assert attached_prog_id(pop) == prog_id

    # What the program learned (a ban, a port punch, a cache entry) must survive a rule change.
    pinned(pin_root, "edge_bans").update(abi.ipv4("198.18.0.1"), abi.BAN_VALUE.pack(2**62))
    punch = abi.pack_punch_key("udp", GAME, 27015, PLAYER, 40000)
    pinned(pin_root, "edge_punches").update(punch, abi.PUNCH_VALUE.pack(2**62))
    cache = abi.pack_a2s_cache_entry(b"\xff\xff\xff\xffI-cached", 2**62)
    service_id = abi.SERVICE_VALUE.unpack(next(iter(pinned(pin_root, "edge_services").items()))[1])[0]
    pinned(pin_root, "edge_a2s_cache").update(abi.U32.pack(service_id), cache)
    cache_keys_before = set(pinned(pin_root, "edge_a2s_cache").keys())

    inv = inventory(tmp_path, pin_root, deny=["192.0.2.0/24", "203.0.113.0/24"])
    assert play(pop, inv, RULES_PLAYBOOK) > 0
    assert attached_prog_id(pop) == prog_id  # rules only: never re-attached
    assert set(pinned(pin_root, "edge_deny_v4").keys()) == {abi.pack_lpm_v4("192.0.2.0/24"),
                                                            abi.pack_lpm_v4("203.0.113.0/24")}
    assert pinned(pin_root, "edge_bans").lookup(abi.ipv4("198.18.0.1")) is not None
    assert pinned(pin_root, "edge_punches").lookup(punch) is not None
    assert set(pinned(pin_root, "edge_a2s_cache").keys()) == cache_keys_before
    assert play(pop, inv, RULES_PLAYBOOK) == 0

    # The attached program applies the new rule: a player of the new deny prefix is dropped.
    program = _bpf.BpfProgram.from_pin(os.path.join(pin_root, "up0", "program"))
    frame = raw(Ether() / IP(src=PLAYER, dst=GAME) / UDP(sport=40000, dport=27015) / b"x")
    assert program.test_run(frame).retval == _bpf.XDP_DROP
    program.close()

    # Detach: the program leaves the link and its pins go.
    env = dict(os.environ, PATH="%s:%s" % (VENV_BIN, os.environ.get("PATH", "")))
    done = subprocess.run(["ip", "netns", "exec", pop.name, str(VENV_BIN / "ansible"), "pop1", "-i", str(inv),
                           "-m", "anycast.edge.xdp_program", "-a", "iface=up0 state=absent pin_root=%s" % pin_root],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0 and "CHANGED" in done.stdout, done.stdout + done.stderr
    assert attached_prog_id(pop) == 0
    assert not os.path.exists(os.path.join(pin_root, "up0", "program"))


def test_a_pop_with_an_underlay_takes_the_backends_ipip_only_there(pop, pin_root, tmp_path):
    """anycast_edge_underlay_devices: the program runs on the underlay too, and only the underlay is
    flagged as carrying IPIP (a reply spoofed on the uplink is dropped: tests/bpf/test_trust.py)."""
    veth(pop, "ul0", pop, "ul0p")
    pop.ip("addr", "add", "10.20.0.1/24", "dev", "ul0")
    inv = inventory(tmp_path, pin_root, deny=[], anycast_edge_underlay_devices=["ul0"])
    assert play(pop, inv, ROLE_PLAYBOOK) > 0
    with pop.entered():
        underlay_ifindex = socket.if_nametoindex("ul0")
    assert flagged_tunnel_ifindexes(pin_root) == {underlay_ifindex}
    own = abi.unpack_own_addrs(pinned(pin_root, "edge_own_addrs").lookup(abi.U32.pack(0)))
    assert {"10.0.0.1", "10.20.0.1"} <= set(own)
    assert play(pop, inv, ROLE_PLAYBOOK) == 0
