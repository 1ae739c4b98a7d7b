"""wireguard_key and wireguard_interface through real ansible-playbook, on real WireGuard.

This host's kernel has no wireguard module, so each end is wireguard-go (userspace WireGuard on a
TUN device, which `wg` configures through its UAPI socket exactly as it configures a kernel
interface) in its own network namespace, the two namespaces joined by a veth: the "internet"
between a POP and a backend. The modules configure both ends from each other's public keys, and
a datagram and a ping go through the tunnel - encrypted on the veth, where only UDP to the
WireGuard ports is seen. The kernel-creation path is exercised where it fails here (no kernel
wireguard: a clear error, nothing left behind); the lab's 6.1 VMs have the module.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from helpers.netns import terminate, veth
from helpers.playbook import run_tasks, task

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, TUN)")

UAPI_DIR = Path("/var/run/wireguard")
KERNEL_HAS_WIREGUARD = os.path.isdir("/sys/module/wireguard")
A_UNDERLAY, B_UNDERLAY = "10.99.0.1", "10.99.0.2"
A_INNER, B_INNER = "10.200.0.0", "10.200.0.1"
A_PORT, B_PORT = 51820, 51821


class WireguardGo:
    """A wireguard-go interface in a namespace: the process (foreground) and its UAPI socket."""

    def __init__(self, ns, name):
        self.ns, self.name = ns, name
        self.process = subprocess.Popen(["ip", "netns", "exec", ns.name, "wireguard-go", "-f", name],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not (UAPI_DIR / (name + ".sock")).exists():
            assert self.process.poll() is None, "wireguard-go %s exited" % name
            assert time.monotonic() < deadline, "wireguard-go %s made no UAPI socket" % name
            time.sleep(0.05)

    def dump(self):
        return self.ns.exec("wg", "show", self.name, "dump").stdout

    def config(self):
        """The dump without what traffic changes (a peer's last handshake and byte counters): what
        the module configures. Keepalives and handshake attempts run on their own."""
        lines = self.dump().splitlines()
        return lines[:1] + ["\t".join(fields[:4] + fields[7:]) for fields in (line.split("\t") for line in lines[1:])]

    def stop(self):
        terminate(self.process, timeout=5)
        (UAPI_DIR / (self.name + ".sock")).unlink(missing_ok=True)


@pytest.fixture
def world(netns, tmp_path):
    """Two namespaces a and b joined by a veth (the underlay), a wireguard-go interface in each
    (distinct names: the UAPI sockets share one folder), each end's key file path."""
    a, b = netns("wga"), netns("wgb")
    veth(a, "ula", b, "ulb")
    a.ip("addr", "add", A_UNDERLAY + "/24", "dev", "ula")
    b.ip("addr", "add", B_UNDERLAY + "/24", "dev", "ulb")
    suffix = uuid.uuid4().hex[:6]
    ends = {"a": WireguardGo(a, "wga" + suffix), "b": WireguardGo(b, "wgb" + suffix)}
    keys = {"a": tmp_path / "a" / "private.key", "b": tmp_path / "b" / "private.key"}
    try:
        yield {"ns": {"a": a, "b": b}, "ends": ends, "keys": keys, "work": tmp_path}
    finally:
        for end in ends.values():
            end.stop()


def run(world, side, tasks, label):
    return run_tasks(tasks, world["work"] / ("%s-%s" % (label, side)), netns=world["ns"][side])


def make_keys(world):
    public = {}
    for side in ("a", "b"):
        result = run(world, side, [task("anycast.edge.wireguard_key", {"path": str(world["keys"][side])})], "key")[0]
        assert result["changed"] is True and result["created"] is True and not result.get("failed")
        public[side] = result["public_key"]
    return public


def interface_args(world, side, public, **changes):
    other = "b" if side == "a" else "a"
    args = {
        "name": world["ends"][side].name,
        "private_key_file": str(world["keys"][side]),
        "listen_port": A_PORT if side == "a" else B_PORT,
        "mtu": 1440,
        "addresses": ["%s/31" % (A_INNER if side == "a" else B_INNER)],
        "description": "peer %s" % other,
        "peers": [{"public_key": public[other],
                   "endpoint": "%s:%d" % ((B_UNDERLAY, B_PORT) if side == "a" else (A_UNDERLAY, A_PORT)),
                   "allowed_ips": ["0.0.0.0/0"], "persistent_keepalive": 25}],
    }
    args.update(changes)
    return args


def datagram_through(world, payload: bytes, timeout: float = 5.0):
    """Send `payload` from a's inner address to b's over UDP; what b receives (or None) and from where."""
    with world["ns"]["b"].entered():
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with world["ns"]["a"].entered():
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind((B_INNER, 5555))
        receiver.settimeout(0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:   # the first packet waits for the handshake
            sender.sendto(payload, (B_INNER, 5555))
            try:
                return receiver.recvfrom(2048)
            except socket.timeout:
                continue
        return None
    finally:
        receiver.close()
        sender.close()


def test_two_ends_configured_from_each_others_keys_carry_traffic_and_converge(world):
    public = make_keys(world)
    assert public["a"] != public["b"]
    # The key files: the host's own, mode 0600, and the private key in no result.
    for side in ("a", "b"):
        assert oct(world["keys"][side].stat().st_mode & 0o777) == "0o600"

    results = {}
    for side in ("a", "b"):
        results[side] = run(world, side, [task("anycast.edge.wireguard_interface", interface_args(world, side, public),
                                               diff=True)], "first")
        result = results[side][0]
        assert not result.get("failed"), result
        assert result["changed"] is True and result["created"] is False
        assert result["public_key"] == public[side]
        assert result["interface"]["listen_port"] == (A_PORT if side == "a" else B_PORT)
        assert result["interface"]["mtu"] == 1440 and result["interface"]["admin_state"] == "up"
        assert result["interface"]["description"] == "peer %s" % ("b" if side == "a" else "a")
        assert [peer["public_key"] for peer in result["interface"]["peers"]] == [public["b" if side == "a" else "a"]]
        assert result["diff"]["before"]["public_key"] is None and result["diff"]["before"]["peers"] == []

    # Packets out: a datagram from a's inner address arrives at b's, from a's inner address.
    received = datagram_through(world, b"player packet")
    assert received is not None, world["ends"]["b"].dump()
    assert received == (b"player packet", (A_INNER, received[1][1]))
    ping = world["ns"]["a"].exec("ping", "-c", "1", "-W", "3", B_INNER, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    peer_line = world["ends"]["a"].dump().splitlines()[1].split("\t")
    assert peer_line[4] != "0" and int(peer_line[5]) > 0 and int(peer_line[6]) > 0   # handshake, rx, tx

    # The private keys are in no output, no result, no diff.
    for side in ("a", "b"):
        private = world["keys"][side].read_text().strip()
        for other in ("a", "b"):
            assert private not in results[other].output
            assert private not in json.dumps(results[other].results)

    # Run twice: nothing changes (the endpoint WireGuard has now is the configured one).
    for side in ("a", "b"):
        again = run(world, side, [task("anycast.edge.wireguard_key", {"path": str(world["keys"][side])}),
                                  task("anycast.edge.wireguard_interface", interface_args(world, side, public),
                                       diff=True)], "second")
        assert [result["changed"] for result in again] == [False, False], again.results
        assert again[0]["public_key"] == public[side] and again[0]["created"] is False
        assert again[1]["actions"] == []


def test_check_mode_reports_the_change_and_changes_nothing(world):
    public = make_keys(world)
    run(world, "a", [task("anycast.edge.wireguard_interface", interface_args(world, "a", public))], "setup")
    before = world["ends"]["a"].config()
    result = run(world, "a", [task("anycast.edge.wireguard_interface",
                                   interface_args(world, "a", public, listen_port=52000, mtu=1400), check=True,
                                   diff=True)], "check")[0]
    assert result["changed"] is True and not result.get("failed")
    assert "listen port %d -> 52000" % A_PORT in result["actions"]
    assert "mtu of %s: 1440 -> 1400" % world["ends"]["a"].name in result["actions"]
    assert result["diff"]["before"]["listen_port"] == A_PORT and result["diff"]["after"]["listen_port"] == 52000
    assert world["ends"]["a"].config() == before
    assert "mtu 1440" in world["ns"]["a"].ip("link", "show", world["ends"]["a"].name).stdout


def test_a_peer_inventory_no_longer_has_is_pruned(world):
    public = make_keys(world)
    stranger = world["ns"]["a"].exec("wg", "genkey").stdout.strip()
    stranger_public = subprocess.run(["wg", "pubkey"], input=stranger + "\n", capture_output=True, text=True,
                                     check=True).stdout.strip()
    args = interface_args(world, "a", public)
    with_stranger = dict(args, peers=args["peers"] + [{"public_key": stranger_public, "endpoint": "10.99.0.9:51820",
                                                       "allowed_ips": ["10.250.0.0/24"]}])
    first = run(world, "a", [task("anycast.edge.wireguard_interface", with_stranger)], "two-peers")[0]
    assert first["changed"] is True
    assert sorted(peer["public_key"] for peer in first["interface"]["peers"]) == sorted([public["b"], stranger_public])

    kept = run(world, "a", [task("anycast.edge.wireguard_interface", dict(args, prune_peers=False))], "no-prune")[0]
    assert kept["changed"] is False and len(kept["interface"]["peers"]) == 2

    pruned = run(world, "a", [task("anycast.edge.wireguard_interface", args, diff=True)], "pruned")[0]
    assert pruned["changed"] is True
    assert pruned["actions"] == ["remove peer %s" % stranger_public]
    dump = world["ends"]["a"].dump()
    assert stranger_public not in dump and public["b"] in dump


def test_bad_arguments_fail_clearly_and_change_nothing(world):
    public = make_keys(world)
    name = world["ends"]["a"].name
    before = world["ends"]["a"].config()
    bad_key = dict(interface_args(world, "a", public))
    bad_key["peers"] = [dict(bad_key["peers"][0], public_key="not-a-key")]
    bad_endpoint = dict(interface_args(world, "a", public))
    bad_endpoint["peers"] = [dict(bad_endpoint["peers"][0], endpoint="game1.example.net:51820")]
    results = run(world, "a", [
        task("anycast.edge.wireguard_interface", bad_key),
        task("anycast.edge.wireguard_interface", bad_endpoint),
        task("anycast.edge.wireguard_interface", interface_args(world, "a", public,
                                                                private_key_file=str(world["work"] / "nokey"))),
        task("anycast.edge.wireguard_interface", interface_args(world, "a", public, name="ula")),
        task("anycast.edge.wireguard_interface", {"name": name}),
        task("anycast.edge.wireguard_interface", interface_args(world, "a", public, listen_port=70000)),
    ], "bad")
    messages = [result.get("msg", "") for result in results]
    assert all(result["failed"] and not result["changed"] for result in results), results.results
    assert messages[0] == ("peers[0].public_key: 'not-a-key' is not a WireGuard public key (44 characters of base64, "
                           "as 'wg pubkey' prints it)")
    assert messages[1] == "peers[0].endpoint: 'game1.example.net:51820' is not an IPv4 address and port (a.b.c.d:port)"
    assert messages[2] == ("private_key_file: %s does not exist (make it with anycast.edge.wireguard_key)"
                           % (world["work"] / "nokey"))
    assert messages[3].startswith("ula is a veth link, not a WireGuard interface")
    assert messages[4] == "state is present but all of the following are missing: private_key_file"
    assert messages[5] == "listen_port: 70000 is out of range (1..65535)"
    assert world["ends"]["a"].config() == before


def test_a_key_file_that_holds_no_key_is_refused_without_showing_it(world):
    path = world["work"] / "junk.key"
    path.write_text("secret-looking-junk\n")
    result = run(world, "a", [task("anycast.edge.wireguard_key", {"path": str(path)})], "junk")
    assert result[0]["failed"] is True
    assert result[0]["msg"] == ("path: %s does not hold a WireGuard private key (not shown); move it away or name "
                                "another path" % path)
    assert "secret-looking-junk" not in result.output + json.dumps(result.results)


def test_a_key_file_with_a_wider_mode_is_set_back_to_0600(world):
    public = make_keys(world)
    world["keys"]["a"].chmod(0o644)
    result = run(world, "a", [task("anycast.edge.wireguard_key", {"path": str(world["keys"]["a"])}, diff=True)],
                 "mode")[0]
    assert result["changed"] is True and result["created"] is False and result["public_key"] == public["a"]
    assert result["diff"]["before"]["mode"] == "0644" and result["diff"]["after"]["mode"] == "0600"
    assert oct(world["keys"]["a"].stat().st_mode & 0o777) == "0o600"


def test_removal_and_pruning_touch_only_our_wireguard_interfaces(world):
    public = make_keys(world)
    ours = world["ends"]["a"].name
    run(world, "a", [task("anycast.edge.wireguard_interface", interface_args(world, "a", public))], "mark")
    # A second userspace interface nobody marked: never pruned.
    foreign = WireguardGo(world["ns"]["a"], "wgf" + uuid.uuid4().hex[:6])
    try:
        results = run(world, "a", [
            task("anycast.edge.wireguard_interface", {"state": "pruned", "keep": [ours]}),
            task("anycast.edge.wireguard_interface", {"state": "pruned", "keep": []}, check=True),
            task("anycast.edge.wireguard_interface", {"state": "pruned", "keep": []}),
            task("anycast.edge.wireguard_interface", {"state": "absent", "name": ours}),
            task("anycast.edge.wireguard_interface", {"state": "absent", "name": "ula"}),
        ], "prune")
        assert [result["changed"] for result in results.results[:4]] == [False, True, True, False]
        assert results[1]["removed"] == [ours] and results[2]["removed"] == [ours]
        assert results[4]["failed"] is True and "not a WireGuard interface" in results[4]["msg"]
        names = world["ns"]["a"].ip("-o", "link", "show").stdout
        assert ours not in names and foreign.name in names and "ula" in names
    finally:
        foreign.stop()


@pytest.mark.skipif(KERNEL_HAS_WIREGUARD, reason="this kernel has wireguard; the error path cannot happen")
def test_without_kernel_wireguard_creating_fails_clearly_and_leaves_nothing(world):
    public = make_keys(world)
    before = world["ns"]["a"].ip("-o", "link", "show").stdout
    result = run(world, "a", [task("anycast.edge.wireguard_interface",
                                   interface_args(world, "a", public, name="aw-new"))], "nokernel")[0]
    assert result["failed"] is True and result["changed"] is False
    assert result["msg"].startswith("create aw-new: the kernel lacks wireguard: load the module with "
                                    "'modprobe wireguard'")
    assert world["ns"]["a"].ip("-o", "link", "show").stdout == before
