"""The wireguard_transport role on a POP and a backend, each its own network namespace, in one
ansible-playbook run as an operator's (the modules of each host run in its namespace: its
interpreter is `ip netns exec NS python`).

This host's kernel has no wireguard, so the interfaces the role configures are wireguard-go ones
the test makes with the names the role derives (the role uses an existing WireGuard interface of
either kind; the lab's VMs have the kernel's). pop1 says `anycast_edge_transport: wireguard`: both
ends get their key, each other's public key and endpoint, and complete a handshake over the veth
between them; a rerun changes nothing; setting the pair back to ipip removes both interfaces; and an
inventory without WireGuard (the default) installs, makes and changes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ansible_collections.anycast.edge.plugins.module_utils import _transport

from helpers.netns import veth
from helpers.playbook import changed_by_host
from test_wireguard_interface import WireguardGo

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, TUN)")

VENV_BIN = Path(sys.executable).parent
ROLE_PLAYBOOK = Path(__file__).resolve().parent / "playbooks" / "wireguard_transport_role.yml"
INVENTORIES = Path(__file__).resolve().parents[2] / "inventories"
ADDRESSES = {"pop1": "10.99.0.1", "game1": "10.99.0.2"}


@pytest.fixture
def hosts(netns, tmp_path):
    namespaces = {"pop1": netns("wgpop"), "game1": netns("wggame")}
    veth(namespaces["pop1"], "up0", namespaces["game1"], "up0")
    for host, namespace in namespaces.items():
        namespace.ip("addr", "add", ADDRESSES[host] + "/24", "dev", "up0")
        wrapper = tmp_path / ("python-%s" % host)
        wrapper.write_text("#!/bin/sh\nexec ip netns exec %s %s \"$@\"\n" % (namespace.name, sys.executable))
        wrapper.chmod(0o755)
    return namespaces


def inventory(tmp_path: Path, transport: str) -> Path:
    def host(name, **more):
        return dict({"ansible_connection": "local", "ansible_python_interpreter": str(tmp_path / ("python-%s" % name)),
                     "anycast_edge_tunnel_address": ADDRESSES[name], "anycast_edge_uplink": "up0",
                     "wireguard_transport_key_file": str(tmp_path / name / "wireguard" / "private.key")}, **more)
    data = {"all": {
        "vars": {
            "anycast_edge_asn": 64500,
            "anycast_edge_prefixes": ["198.51.100.0/24"],
            "anycast_edge_services": [{"name": "game", "address": "198.51.100.10", "protocol": "udp",
                                       "port": 27015, "backend": "game1"}],
            "anycast_edge_manage_packages": False,
            "anycast_edge_rules_dir": str(tmp_path / "rules"),
        },
        "children": {
            "pops": {"hosts": {"pop1": host("pop1", anycast_edge_transport=transport)}},
            "backends": {"hosts": {"game1": host("game1")}},
        },
    }}
    path = tmp_path / ("inventory-%s.yml" % transport)
    path.write_text(yaml.safe_dump(data))
    return path


def run_playbook(inventory_path: Path, *arguments: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0",
               PATH="%s:%s" % (VENV_BIN, os.environ.get("PATH", "")))
    argv = [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory_path), str(ROLE_PLAYBOOK)] + list(arguments)
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=False)


def play(inventory_path: Path, hosts=("pop1", "game1"), extra_vars=None) -> dict:
    """Run the role's playbook; {host: its changed count}."""
    done = run_playbook(inventory_path, *(["-e", json.dumps(extra_vars)] if extra_vars else []))
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    changed = changed_by_host(output, hosts)
    return changed


def handshake_done(end: WireguardGo) -> bool:
    lines = end.dump().splitlines()
    return len(lines) == 2 and lines[1].split("\t")[4] != "0"


def test_a_wireguard_pair_gets_both_ends_and_goes_away_with_it(hosts, tmp_path):
    ends = {"pop1": WireguardGo(hosts["pop1"], _transport.interface_name("game1")),
            "game1": WireguardGo(hosts["game1"], _transport.interface_name("pop1"))}
    try:
        assert play(inventory(tmp_path, "wireguard")) == {"pop1": 2, "game1": 2}   # key, interface
        for host, end in ends.items():
            peer = "game1" if host == "pop1" else "pop1"
            key = tmp_path / host / "wireguard" / "private.key"
            assert oct(key.stat().st_mode & 0o777) == "0o600"
            state = end.dump().splitlines()
            own = state[0].split("\t")
            assert own[2] == "51820"
            peer_line = state[1].split("\t")
            peer_public = subprocess.run(["wg", "pubkey"], input=(tmp_path / peer / "wireguard" / "private.key")
                                         .read_text(), capture_output=True, text=True, check=True).stdout.strip()
            assert peer_line[0] == peer_public
            assert peer_line[2] == "%s:51820" % ADDRESSES[peer]
            assert peer_line[3] == "0.0.0.0/0" and peer_line[7] == "25"
            link = hosts[host].ip("-d", "link", "show", end.name).stdout
            assert "mtu 1440" in link and "alias anycast.edge: peer %s" % peer in link
        # The keepalive starts a handshake: it completes only if each end has the other's key and endpoint.
        deadline = time.monotonic() + 15
        while not all(handshake_done(end) for end in ends.values()):
            assert time.monotonic() < deadline, [end.dump() for end in ends.values()]
            time.sleep(0.2)

        assert play(inventory(tmp_path, "wireguard")) == {"pop1": 0, "game1": 0}

        # The pair back to ipip: both WireGuard interfaces are removed (the keys stay).
        assert play(inventory(tmp_path, "ipip")) == {"pop1": 1, "game1": 1}
        for host, end in ends.items():
            assert end.name not in hosts[host].ip("-o", "link", "show").stdout
            assert (tmp_path / host / "wireguard" / "private.key").exists()
    finally:
        for end in ends.values():
            end.stop()


def test_a_limit_without_the_other_end_stops_before_any_interface_naming_the_peer(hosts, tmp_path):
    """pop1 alone (--limit pop1) with a WireGuard pair: game1's keys play did not run, so its public
    key is unknown - the role says so, naming the peer and the pair, and configures nothing."""
    ends = {"pop1": WireguardGo(hosts["pop1"], _transport.interface_name("game1"))}
    try:
        before = ends["pop1"].dump()
        done = run_playbook(inventory(tmp_path, "wireguard"), "--limit", "pop1")
        output = done.stdout + done.stderr
        assert done.returncode != 0, output
        assert ("game1's WireGuard public key is unknown (the pair pop1 <-> game1 is wireguard): "
                "playbooks/wireguard_keys.yml did not run on game1 in this run - a --limit must include both ends "
                "of every WireGuard pair") in output, output
        assert "has no attribute" not in output, output
        assert ends["pop1"].dump() == before   # no key, no peer, no port set on the interface
    finally:
        ends["pop1"].stop()


def test_without_wireguard_pairs_the_role_changes_nothing(hosts, tmp_path):
    before = dict((host, namespace.ip("-o", "link", "show").stdout) for host, namespace in hosts.items())
    assert play(inventory(tmp_path, "ipip")) == {"pop1": 0, "game1": 0}
    for host, namespace in hosts.items():
        assert namespace.ip("-o", "link", "show").stdout == before[host]
        assert not (tmp_path / host).exists()


@pytest.mark.parametrize("name, hosts", [
    ("lab", ("pop1", "pop2", "backend")),
    ("example", ("pop-ams1", "pop-fra1", "pop-lon1", "pop-nyc1", "game-ams-01", "game-fra-01", "game-nyc-01")),
])
def test_the_shipped_inventories_have_no_wireguard_pair_and_the_role_changes_nothing(netns, tmp_path, name, hosts):
    """The lab's and the example's inventories as they are (transport ipip by default): every host
    of them, run in one empty namespace, installs, makes and changes nothing - what pop.yml and
    backend.yml now add to a converge of an existing fleet."""
    namespace = netns("wgship")
    wrapper = tmp_path / "python-ns"
    wrapper.write_text("#!/bin/sh\nexec ip netns exec %s %s \"$@\"\n" % (namespace.name, sys.executable))
    wrapper.chmod(0o755)
    before = namespace.ip("-o", "link", "show").stdout
    key_file = tmp_path / "keys" / "private.key"
    changed = play(INVENTORIES / name, hosts, {
        "ansible_connection": "local", "ansible_python_interpreter": str(wrapper),
        "anycast_edge_rules_dir": str(tmp_path / "rules"), "wireguard_transport_key_file": str(key_file)})
    assert changed == dict((host, 0) for host in hosts)
    assert namespace.ip("-o", "link", "show").stdout == before
    assert not key_file.parent.exists()
