"""The xdp_edge role on a POP in a network namespace, as an operator runs it.

attach -> rerun unchanged -> rules changed (playbooks/rules.yml) with the program and its
learned state intact -> detach. The POP is this machine inside a namespace, reached with
ansible_connection=local; the pins live in a private bpffs.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import struct
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
from helpers.playbook import bpf_role_vars, changed_by_host

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
ROLE_PLAYBOOK = Path(__file__).resolve().parent / "playbooks" / "xdp_edge_role.yml"
RULES_PLAYBOOK = REPO / "playbooks" / "rules.yml"

GAME, BACKEND, PLAYER = "198.51.100.10", "10.1.0.10", "203.0.113.5"


def inventory(tmp_path: Path, pin_root: str, deny: list, pops: dict = None, extra_vars: dict = None,
              **pop_vars) -> Path:
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
            **bpf_role_vars(tmp_path, pin_root, "pop-objects"),
            **(extra_vars or {}),
        },
        "children": {
            "pops": {"hosts": pops or {"pop1": dict({"ansible_connection": "local", "anycast_edge_uplink": "up0",
                                                     "anycast_edge_tunnel_address": "10.0.0.1"}, **pop_vars)}},
            "backends": {"hosts": {"game1": {"anycast_edge_tunnel_address": BACKEND, "anycast_edge_uplink": "eth0"}}},
        },
    }}
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def play(namespace, inventory_path: Path, playbook: Path, *args: str, hosts=("pop1",), output=None) -> int:
    """Run a playbook inside the namespace; returns the POPs' changed count from the recap
    (and appends the play's output to the list `output`, when given)."""
    changed, text = play_output(namespace, inventory_path, playbook, *args, hosts=hosts)
    if output is not None:
        output.append(text)
    return sum(changed.values())


def play_output(namespace, inventory_path: Path, playbook: Path, *args: str, hosts=("pop1",)):
    """({host: changed count}, everything ansible-playbook printed)."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0",
               PATH="%s:%s" % (VENV_BIN, os.environ.get("PATH", "")))
    done = subprocess.run(["ip", "netns", "exec", namespace.name, str(VENV_BIN / "ansible-playbook"),
                           "-i", str(inventory_path), str(playbook), *args],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    changed = changed_by_host(output, hosts)
    return changed, output


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
    pinned(pin_root, "edge_sources").update(abi.ipv4("198.18.0.1"), abi.SourceState(ban_until_ns=2**62).pack())
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
    assert abi.SourceState.unpack(pinned(pin_root, "edge_sources").lookup(abi.ipv4("198.18.0.1"))).ban_until_ns == 2**62
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


# --- the fleet's edge cookie keys -------------------------------------------------------------

TWO_POPS = {
    "pop1": {"ansible_connection": "local", "anycast_edge_uplink": "up0", "anycast_edge_tunnel_address": "10.0.0.1"},
    "pop2": {"ansible_connection": "local", "anycast_edge_uplink": "up1", "anycast_edge_tunnel_address": "10.0.0.2"},
}


def cookie_keys_of(pin_root: str, iface: str):
    """(current, previous) cookie keys in a POP's edge_config, as 16 raw bytes each."""
    config = _bpf.BpfMap.from_pin(os.path.join(pin_root, iface, "maps", "edge_config")).lookup(abi.U32.pack(0))
    fields = abi.EDGE_CONFIG.unpack(config)
    previous_at = 6 + 2 * len(abi.PROTO_CLASSES)   # after the per-class limits
    return struct.pack("<QQ", *fields[4:6]), struct.pack("<QQ", *fields[previous_at:previous_at + 2])


def assert_no_key_in(output: str, *keys: bytes):
    for key in keys:
        for form in (key.hex(), key.hex().upper(), *(str(word) for word in struct.unpack("<QQ", key))):
            assert form not in output, "a cookie key shows in the output"


@pytest.fixture
def two_pops(pop):
    veth(pop, "up1", pop, "up1p")
    pop.ip("addr", "add", "10.0.0.2/24", "dev", "up1")
    return pop


def test_one_fleet_key_is_made_on_the_controller_and_given_to_every_pop(two_pops, pin_root, tmp_path):
    """No key in the inventory: the first run makes one key file beside the inventory (0600) and
    every POP of the play gets that key; the key shows nowhere, even at -vvv --diff; a rerun
    (also with the file ansible-vault encrypted) changes nothing."""
    inv = inventory(tmp_path, pin_root, deny=[], pops=TWO_POPS)
    key_file = tmp_path / "edge_cookie_keys.yml"
    assert not key_file.exists()

    changed, output = play_output(two_pops, inv, ROLE_PLAYBOOK, "-vvv", "--diff", hosts=TWO_POPS)
    assert all(changed.values())
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    (key_text,) = yaml.safe_load(key_file.read_text())["anycast_edge_cookie_keys"]
    fleet_key = bytes.fromhex(key_text)
    assert fleet_key != bytes(16)
    assert cookie_keys_of(pin_root, "up0") == cookie_keys_of(pin_root, "up1") == (fleet_key, bytes(16))
    assert_no_key_in(output, fleet_key)

    made = key_file.read_text()
    changed, output = play_output(two_pops, inv, ROLE_PLAYBOOK, "-vvv", hosts=TWO_POPS)
    assert changed == {"pop1": 0, "pop2": 0}
    assert key_file.read_text() == made
    assert_no_key_in(output, fleet_key)

    # Kept in a vault: the same key is read back, nothing changes.
    password = tmp_path / "vault-password"
    password.write_text("correct horse battery staple\n")
    subprocess.run([str(VENV_BIN / "ansible-vault"), "encrypt", "--vault-password-file", str(password), str(key_file)],
                   check=True, capture_output=True)
    assert key_text not in key_file.read_text()
    changed, output = play_output(two_pops, inv, ROLE_PLAYBOOK, "-vvv", "--vault-password-file", str(password),
                                  hosts=TWO_POPS)
    assert changed == {"pop1": 0, "pop2": 0}
    assert cookie_keys_of(pin_root, "up0") == cookie_keys_of(pin_root, "up1") == (fleet_key, bytes(16))
    assert_no_key_in(output, fleet_key)


def test_keys_from_the_inventory_rotate_on_every_pop(two_pops, pin_root, tmp_path):
    """anycast_edge_cookie_keys in the inventory wins over the key file (none is made); rotating
    (a new key first, the old one second) and retiring reach every POP; no key in the output."""
    old, new = "00112233445566778899aabbccddeeff", "8899aabbccddeeff0011223344556677"
    inv = inventory(tmp_path, pin_root, deny=[], pops=TWO_POPS, extra_vars={"anycast_edge_cookie_keys": [old]})
    # -vvv: the role's argument validation sees the variable too, and must not show it
    dummy, output = play_output(two_pops, inv, ROLE_PLAYBOOK, "-vvv", hosts=TWO_POPS)
    assert_no_key_in(output, bytes.fromhex(old))
    assert not (tmp_path / "edge_cookie_keys.yml").exists()
    for iface in ("up0", "up1"):
        assert cookie_keys_of(pin_root, iface) == (bytes.fromhex(old), bytes(16))

    inv = inventory(tmp_path, pin_root, deny=[], pops=TWO_POPS, extra_vars={"anycast_edge_cookie_keys": [new, old]})
    changed, output = play_output(two_pops, inv, RULES_PLAYBOOK, "-vvv", "--diff", hosts=TWO_POPS)
    assert changed == {"pop1": 1, "pop2": 1}
    for iface in ("up0", "up1"):
        assert cookie_keys_of(pin_root, iface) == (bytes.fromhex(new), bytes.fromhex(old))
    assert_no_key_in(output, bytes.fromhex(old), bytes.fromhex(new))
    assert play(two_pops, inv, RULES_PLAYBOOK, hosts=TWO_POPS) == 0

    inv = inventory(tmp_path, pin_root, deny=[], pops=TWO_POPS, extra_vars={"anycast_edge_cookie_keys": [new]})
    assert play(two_pops, inv, RULES_PLAYBOOK, hosts=TWO_POPS) == 2
    for iface in ("up0", "up1"):
        assert cookie_keys_of(pin_root, iface) == (bytes.fromhex(new), bytes(16))


# --- the control plane derived from inventory reaches the maps (issue 12, section 2) ------------

NEIGHBOUR, OTHER_POP, MONITORING = "10.0.0.254", "10.0.0.2", "192.0.2.250"


def fleet_inventory(tmp_path: Path, pin_root: str, monitoring_address: str = MONITORING) -> Path:
    """The role test's POP with a BGP neighbour (the namespace's router), a second POP (not
    converged here: --limit pop1) and a monitoring host; UDP limited to 5 packets a second."""
    path = inventory(tmp_path, pin_root, deny=["198.18.0.0/15"])
    data = yaml.safe_load(path.read_text())
    data["all"]["vars"]["anycast_edge_filters"]["rate_limits"] = {"udp": {"packets_per_sec": 5}}
    pops = data["all"]["children"]["pops"]["hosts"]
    pops["pop1"]["anycast_edge_bgp_neighbors"] = [{"name": "upstream", "address": NEIGHBOUR, "asn": 64510}]
    pops["pop2"] = {"anycast_edge_uplink": "eth1", "anycast_edge_tunnel_address": OTHER_POP,
                    "anycast_edge_bgp_neighbors": [{"name": "upstream", "address": "172.16.2.1", "asn": 64510}]}
    data["all"]["children"]["monitoring"] = {"hosts": {"mon-1": {"ansible_host": monitoring_address}}}
    path.write_text(yaml.safe_dump(data))
    return path


def limit_drops(pin_root: str) -> int:
    """Packets the program dropped as over a limit or banned (its reason counters)."""
    stats = pinned(pin_root, "edge_reason_stats")
    return sum(abi.unpack_counters(stats.lookup_percpu(abi.U32.pack(abi.REASON_INDEX[name])))[0]
               for name in ("drop_rate_limit", "drop_banned"))


def allow_record(pin_root: str) -> dict:
    return dict((key, abi.U32.unpack(value)[0]) for key, value in pinned(pin_root, "edge_allow_v4").items())


def test_the_derived_control_plane_reaches_the_maps_and_a_rerun_changes_nothing(pop, pin_root, tmp_path):
    inv = fleet_inventory(tmp_path, pin_root)
    output = []
    assert play(pop, inv, ROLE_PLAYBOOK, "--limit", "pop1", "--diff", output=output) > 0
    assert allow_record(pin_root) == {
        abi.pack_lpm_v4("100.64.0.0/10"): abi.ALLOW_OPERATOR,           # the operator's allow list
        abi.pack_lpm_v4(NEIGHBOUR + "/32"): abi.ALLOW_CONTROL_PLANE,
        abi.pack_lpm_v4(OTHER_POP + "/32"): abi.ALLOW_CONTROL_PLANE,
        abi.pack_lpm_v4(MONITORING + "/32"): abi.ALLOW_CONTROL_PLANE,
    }
    # the diff says why each is exempt; pop2's own neighbour is not pop1's business
    for line in ("+  10.0.0.254/32 (control plane: BGP neighbour upstream of pop1)",
                 "+  10.0.0.2/32 (control plane: tunnel address of POP pop2)",
                 "+  192.0.2.250/32 (control plane: monitoring host mon-1 (ansible_host))",
                 "+  100.64.0.0/10\n"):
        assert line in output[0], line
    assert "172.16.2.1" not in output[0]

    assert play(pop, inv, ROLE_PLAYBOOK, "--limit", "pop1") == 0
    assert play(pop, inv, RULES_PLAYBOOK, "--limit", "pop1") == 0

    # Through the attached program: a flood spoofed in the neighbour's name is neither limited
    # nor banned; the same flood from a player is (reasons read from the program's counters).
    program = _bpf.BpfProgram.from_pin(os.path.join(pin_root, "up0", "program"))
    try:
        for source in (NEIGHBOUR, PLAYER):
            frame = raw(Ether() / IP(src=source, dst=GAME) / UDP(sport=40000, dport=27015) / b"x")
            before = limit_drops(pin_root)
            for dummy in range(20):
                program.test_run(frame)
            dropped = limit_drops(pin_root) - before
            entry = pinned(pin_root, "edge_sources").lookup(abi.ipv4(source))
            banned = entry is not None and abi.SourceState.unpack(entry).ban_until_ns > 0
            if source == NEIGHBOUR:
                assert (dropped, banned) == (0, False)
            else:   # 5 pass; 15 dropped (10 at least, should the flood straddle two one-second windows)
                assert dropped >= 10 and banned
    finally:
        program.close()

    # The monitoring host moves: the old address loses its exemption, the new one gains it.
    inv = fleet_inventory(tmp_path, pin_root, monitoring_address="192.0.2.251")
    output = []
    assert play(pop, inv, RULES_PLAYBOOK, "--limit", "pop1", "--diff", output=output) > 0
    record = allow_record(pin_root)
    assert abi.pack_lpm_v4("192.0.2.250/32") not in record
    assert record[abi.pack_lpm_v4("192.0.2.251/32")] == abi.ALLOW_CONTROL_PLANE
    assert "-  192.0.2.250/32 (control plane)" in output[0]
    assert play(pop, inv, RULES_PLAYBOOK, "--limit", "pop1") == 0


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
