"""The tc_mapper role on a game-server host in a network namespace, as an operator runs it.

attach (next to somebody else's tc filters) -> rerun unchanged -> a POP added to inventory:
only the mapper's maps change, learned flows stay -> the attached egress program, run through
its pin, steers replies with exactly the maps the role filled. The host is this machine inside
a namespace, reached with ansible_connection=local; the pins live in a private bpffs. The host
kernel has no ipip, so a veth named like our tunnels (ae-*) stands in for one (rp_filter).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import raw

from ansible_collections.anycast.edge.plugins.filter.ipip_tunnels import tunnel_name
from ansible_collections.anycast.edge.plugins.module_utils import _bpf
from ansible_collections.anycast.edge.plugins.module_utils import _mapper_abi as abi

from helpers.netns import veth
from helpers.playbook import bpf_role_vars, changed_by_host, run_tasks, task

VENV_BIN = Path(sys.executable).parent
ROLE_PLAYBOOK = Path(__file__).resolve().parent / "playbooks" / "tc_mapper_role.yml"

HOST = "10.1.0.10"
POPS = {"pop1": "10.0.0.1", "pop2": "10.0.0.2", "pop3": "10.0.0.3"}
GAME, RACE, PLAYER = "198.51.100.10", "198.51.100.20", "203.0.113.5"
# Named as ipip_tunnels names the tunnel to the default POP (pop1): the role routes replies into it.
TUNNEL_STANDIN = tunnel_name("pop1")


def inventory(tmp_path: Path, pin_root: str, pops: list, **backend_vars) -> Path:
    data = {"all": {
        "vars": {
            "anycast_edge_asn": 64500,
            "anycast_edge_prefixes": ["198.51.100.0/24"],
            "anycast_edge_services": [
                {"name": "game", "address": GAME, "protocol": "udp", "port": 27015, "backend": "game1"},
                {"name": "race", "address": RACE, "protocol": "udp", "port": 7777, "backend": "game1"},
                {"name": "elsewhere", "address": "198.51.100.30", "protocol": "udp", "port": 27015,
                 "backend": "game2"},
            ],
            "anycast_edge_mapper_idle_sec": 30,
            **bpf_role_vars(tmp_path, pin_root, "host-objects"),
        },
        "children": {
            "pops": {"hosts": dict((name, {"anycast_edge_uplink": "eth0", "anycast_edge_tunnel_address": POPS[name]})
                                   for name in pops)},
            "backends": {"hosts": {
                # DSR for game1's "race" only: validate_inventory checks every backend's list.
                "game1": {"ansible_connection": "local", "anycast_edge_uplink": "up0",
                          "anycast_edge_tunnel_address": HOST, "anycast_edge_dsr_services": ["race"],
                          **backend_vars},
                "game2": {"anycast_edge_tunnel_address": "10.1.0.11", "anycast_edge_uplink": "eth0"}}},
        },
    }}
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def play(namespace, inventory_path: Path, expect_failure: bool = False):
    """Run the role's playbook inside the namespace; returns game1's changed count (or, with
    expect_failure, the output of the failed run)."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0",
               PATH="%s:%s" % (VENV_BIN, os.environ.get("PATH", "")))
    done = subprocess.run(["ip", "netns", "exec", namespace.name, str(VENV_BIN / "ansible-playbook"),
                           "-i", str(inventory_path), "--limit", "game1", str(ROLE_PLAYBOOK)],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    output = done.stdout + done.stderr
    if expect_failure:
        assert done.returncode != 0, output
        return output
    assert done.returncode == 0, output
    return changed_by_host(output, ["game1"])["game1"]


def tc_filters(namespace, direction: str) -> list:
    out = namespace.exec("tc", "filter", "show", "dev", "up0", direction).stdout
    return [line for line in out.splitlines() if "handle" in line or " fh " in line]


def program_maps(pin_root: str, direction: str) -> dict:
    """{map name: BpfMap} of the program pinned for that hook (the maps it really uses)."""
    with _bpf.BpfProgram.from_pin(os.path.join(pin_root, "up0", "tc_" + direction)) as program:
        info = program.info()
    maps = {}
    for map_id in info.map_ids:
        bpf_map = _bpf.BpfMap.from_id(map_id)
        maps[bpf_map.name] = bpf_map
    return maps


def pop_addresses(maps: dict) -> set:
    return {".".join(str(octet) for octet in key) for key in maps["mapper_pops"].keys()}


def reply_frame(routed_to: str) -> bytes:
    """What the kernel's ipip device hands the NIC: a game server's reply inside IPIP."""
    inner = IP(src=GAME, dst=PLAYER) / UDP(sport=27015, dport=50000) / b"snapshot"
    return raw(Ether(src="02:00:00:00:01:0a", dst="02:00:00:00:01:fe") / IP(src=HOST, dst=routed_to) / inner)


def outer_dst(frame: bytes) -> str:
    return ".".join(str(octet) for octet in frame[30:34])


@pytest.fixture
def backend(netns):
    namespace = netns("mapper")
    veth(namespace, "up0", namespace, "up0p")
    veth(namespace, TUNNEL_STANDIN, namespace, "peer-standin")
    namespace.ip("addr", "add", HOST + "/24", "dev", "up0")
    # The POPs are reached over the uplink (the mapper accepts each POP on its route's device).
    namespace.ip("route", "add", "default", "via", "10.1.0.254", "dev", "up0")
    # Strict filtering before the role, as a hardened image would have it.
    for conf in ("all", "default", TUNNEL_STANDIN):
        namespace.sysctl("net.ipv4.conf.%s.rp_filter" % conf, "1")
    # Somebody else's filters on both hooks, which the role must leave alone.
    namespace.exec("tc", "qdisc", "add", "dev", "up0", "clsact")
    for direction in ("ingress", "egress"):
        namespace.exec("tc", "filter", "add", "dev", "up0", direction, "prio", "50000", "u32",
                       "match", "u32", "0", "0", "classid", "1:1")
    return namespace


def test_attach_rerun_pop_added_and_steering(backend, pin_root, tmp_path):
    inv = inventory(tmp_path, pin_root, ["pop1", "pop2"])
    theirs = {direction: tc_filters(backend, direction) for direction in ("ingress", "egress")}

    assert play(backend, inv) > 0
    for direction in ("ingress", "egress"):
        now = tc_filters(backend, direction)
        assert [line for line in now if "anycast_edge:tc_mapper_%s" % direction in line], now
        assert set(theirs[direction]) <= set(now), now  # their u32 filter is still there
    egress = program_maps(pin_root, "egress")
    ingress = program_maps(pin_root, "ingress")
    for maps in (ingress, egress):
        idle_ns, tunnel, default_pop, gateway, flags = abi.MAPPER_CONFIG.unpack(maps["mapper_config"].lookup(bytes(4)))
        assert (idle_ns, tunnel, default_pop, gateway, flags) == (
            30 * 10**9, abi.ipv4(HOST), abi.ipv4(POPS["pop1"]), bytes(6), 0)
        assert pop_addresses(maps) == {POPS["pop1"], POPS["pop2"]}
    assert "mapper_services" not in ingress  # only egress reads the services
    assert dict(egress["mapper_services"].items()) == {
        abi.pack_service_key("udp", GAME, 27015): abi.pack_service_value(dsr=False),
        abi.pack_service_key("udp", RACE, 7777): abi.pack_service_value(dsr=True)}
    lo = backend.ip("-4", "-o", "addr", "show", "dev", "lo").stdout
    assert "inet %s/32" % GAME in lo and "inet %s/32" % RACE in lo
    assert "198.51.100.30" not in lo  # another backend's service
    for conf in ("all", "default", TUNNEL_STANDIN):
        assert backend.exec("cat", "/proc/sys/net/ipv4/conf/%s/rp_filter" % conf).stdout.strip() == "2"
    # Replies from the services' addresses are routed into the default POP's tunnel.
    assert "default dev %s" % TUNNEL_STANDIN in backend.ip("-4", "route", "show", "table", "4242").stdout
    assert "lookup 4242" in backend.ip("-4", "rule", "show").stdout
    prog_ids = {d: int(re.search(r" id (\d+)", [line for line in tc_filters(backend, d) if "anycast_edge" in line][0])
                       .group(1)) for d in ("ingress", "egress")}

    # Second run: nothing changes.
    assert play(backend, inv) == 0

    # A learned flow (written here as ingress would) must survive a rule change.
    flow_key = abi.pack_flow_key("udp", PLAYER, 50000, GAME, 27015)
    egress["mapper_flows"].update(flow_key, abi.pack_flow_value(POPS["pop3"], 2**62))

    # Another POP in inventory: only the maps change (one task), the programs stay.
    inv = inventory(tmp_path, pin_root, ["pop1", "pop2", "pop3"])
    assert play(backend, inv) == 1
    for direction, prog_id in prog_ids.items():
        assert "id %d " % prog_id in [line for line in tc_filters(backend, direction) if "anycast_edge" in line][0]
        assert pop_addresses(program_maps(pin_root, direction)) == set(POPS.values())
    assert egress["mapper_flows"].lookup(flow_key) is not None
    assert play(backend, inv) == 0

    # The attached egress program uses the maps the role filled: the learned flow (its POP is
    # listed now, and last seen "in the future" so never idle) goes to pop3; a flow it has never
    # seen goes to the default POP, pop1.
    with _bpf.BpfProgram.from_pin(os.path.join(pin_root, "up0", "tc_egress")) as program:
        steered = program.test_run(reply_frame(routed_to=POPS["pop2"]))
        assert steered.retval == _bpf.TC_ACT_OK and outer_dst(steered.data_out) == POPS["pop3"]
        egress["mapper_flows"].delete(flow_key)
        defaulted = program.test_run(reply_frame(routed_to=POPS["pop2"]))
        assert defaulted.retval == _bpf.TC_ACT_OK and outer_dst(defaulted.data_out) == POPS["pop1"]
    for bpf_map in list(egress.values()) + list(ingress.values()):
        bpf_map.close()


def test_ingress_and_egress_share_the_learned_flows(netns, pin_root, tmp_path, repo_root):
    namespace = netns("share")
    veth(namespace, "up0", namespace, "up0p")
    subprocess.run(["make", "--no-print-directory", "build/tc_mapper.o"], cwd=repo_root, check=True,
                   capture_output=True)
    obj = str(repo_root / "build" / "tc_mapper.o")
    run = run_tasks([task("anycast.edge.tc_program", {"iface": "up0", "direction": direction, "object": obj,
                                                      "program": "tc_mapper_" + direction, "pin_root": pin_root,
                                                      "share_maps": "maps"})
                     for direction in ("ingress", "egress", "ingress", "egress")], tmp_path / "share", netns=namespace)
    assert not any(result.get("failed") for result in run.results), run.output
    assert [result["changed"] for result in run.results] == [True, True, False, False]
    assert run.results[1]["maps_reused"]  # egress took ingress's maps
    flows = {direction: program_maps(pin_root, direction)["mapper_flows"].id for direction in ("ingress", "egress")}
    assert flows["ingress"] == flows["egress"]


def test_a_backend_with_a_link_per_pop(backend, pin_root, tmp_path):
    """anycast_edge_mapper_devices: the mapper on both links with one set of maps, forwarding on
    for those links only (bpf_fib_lookup needs it); refused without fib_next_hop."""
    veth(backend, "up1", backend, "up1p")
    backend.ip("addr", "add", "10.2.0.2/24", "dev", "up1")
    backend.ip("route", "add", POPS["pop2"] + "/32", "via", "10.2.0.1", "dev", "up1")
    refused = play(backend, inventory(tmp_path, pin_root, ["pop1", "pop2"], anycast_edge_mapper_devices=["up1"]),
                   expect_failure=True)
    assert "needs anycast_edge_mapper_fib_next_hop" in refused, refused
    inv = inventory(tmp_path, pin_root, ["pop1", "pop2"], anycast_edge_mapper_devices=["up1"],
                    anycast_edge_mapper_fib_next_hop=True)
    assert play(backend, inv) > 0
    map_ids = set()
    for device in ("up0", "up1"):
        for direction in ("ingress", "egress"):
            with _bpf.BpfProgram.from_pin(os.path.join(pin_root, device, "tc_" + direction)) as program:
                map_ids.add(tuple(sorted(program.info().map_ids)) if direction == "egress" else None)
        assert backend.exec("cat", "/proc/sys/net/ipv4/conf/%s/forwarding" % device).stdout.strip() == "1"
    assert len(map_ids - {None}) == 1, map_ids  # both egress halves read the same maps
    assert backend.exec("cat", "/proc/sys/net/ipv4/conf/all/forwarding").stdout.strip() == "0"
    # Each POP is accepted only on the device the host routes it through.
    with _bpf.BpfProgram.from_pin(os.path.join(pin_root, "up0", "tc_ingress")) as program:
        map_ids = program.info().map_ids
    pops = [_bpf.BpfMap.from_id(map_id) for map_id in map_ids]
    pops = next(bpf_map for bpf_map in pops if bpf_map.name == "mapper_pops")
    devices = {".".join(str(octet) for octet in key): abi.unpack_pop_value(value) for key, value in pops.items()}
    ifindex = {name: int(backend.exec("cat", "/sys/class/net/%s/ifindex" % name).stdout) for name in ("up0", "up1")}
    assert devices == {POPS["pop1"]: ifindex["up0"], POPS["pop2"]: ifindex["up1"]}
    assert play(backend, inv) == 0
    # A POP the host routes over a device the mapper is not on would have its IPIP dropped: refused.
    veth(backend, "up2", backend, "up2p")
    backend.ip("addr", "add", "10.3.0.2/24", "dev", "up2")
    backend.ip("route", "replace", POPS["pop2"] + "/32", "via", "10.3.0.1", "dev", "up2")
    refused = play(backend, inv, expect_failure=True)
    assert "does not route %s (routed via ifindex" % POPS["pop2"] in refused, refused
