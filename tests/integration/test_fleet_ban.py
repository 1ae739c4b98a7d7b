"""Hand-made bans (issue 15, global actions): playbooks/ban.yml and unban.yml against a POP in a
network namespace, and a ban made at one POP's agent enforced at another's through a real NATS
JetStream cluster.

- The playbooks: the xdp_edge program attached to a veth (xdp_program), players' real datagrams
  from the world namespace. The same datagrams pass before the ban, are dropped as drop_banned
  while it lasts, pass again after the unban; a second run of each changes nothing; a bad
  request fails on the controller naming the variable and the value, with the map untouched.
- The fleet: two POPs (their programs on BPF_PROG_TEST_RUN, their maps pinned, a real Agent
  each) and three nats-servers (tests/integration/test_agent_fleet_sync.py's world). A ban asked
  of A's control socket (the module's client) is in B's map within a second and B drops the
  packet it passed before; B's exporter lists it with its origin; the unban (the edge_ban module,
  through A's agent) lets the packet through at B again within a second. Delays printed (-s).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import edge_lab as topo
from helpers.playbook import recap_counts, run_tasks, task
from test_agent_fleet_sync import ban_by_flood, publish_on_the_bus, wait_for, world  # noqa: F401  pylint: disable=unused-import
from test_xdp_edge_role import inventory

from anycast_edge_agent import control
from anycast_edge_agent import fleet_sync
from bpf import scenario as sc
from harness.edge_env import monotonic_ns

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils._pins import open_pinned_maps
from ansible_collections.anycast.edge.plugins.modules.edge_ban import ask_agent
from ansible_collections.anycast.edge.plugins.module_utils._edge_stats import read_reasons

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF, bpffs and namespaces need root")

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PAYLOAD = b"x" * 22
OTHER_BANNED = ["198.18.7.0/30"]


def send(world_ns, source, count):
    with world_ns.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    for dummy in range(count):
        sock.sendto(PAYLOAD, (topo.SERVICE[1], topo.SERVICE[2]))
    sock.close()


def counts(pin_root, *reasons):
    """Packets so far of each reason (XDP's per-CPU counters, summed)."""
    with open_pinned_maps(pin_root, topo.POP_IFACE, ("edge_reason_stats",)) as maps:
        found = read_reasons(maps["edge_reason_stats"])
    return tuple(found[reason]["packets"] for reason in reasons)


def after(pin_root, sending, *reasons):
    """How many more packets each reason counted while ``sending()`` ran (a datagram through a
    veth is counted by the time the next call returns; wait for the sum to settle)."""
    before = counts(pin_root, *reasons)
    sending()
    deadline = time.monotonic() + 5
    while True:
        now = counts(pin_root, *reasons)
        if sum(now) - sum(before) >= 5 or time.monotonic() > deadline:
            return tuple(later - earlier for later, earlier in zip(now, before))
        time.sleep(0.05)


def ban_until(pin_root, address):
    with open_pinned_maps(pin_root, topo.POP_IFACE, ("edge_sources",)) as maps:
        raw = maps["edge_sources"].lookup(abi.ipv4(address))
    return 0 if raw is None else abi.SourceState.unpack(raw).ban_until_ns


def playbook(namespace, inventory_path, name, *extra):
    """(return code, output, {host: changed}) of playbooks/<name> run inside the namespace."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0",
               PATH="%s:%s" % (VENV_BIN, os.environ.get("PATH", "")))
    done = subprocess.run(["ip", "netns", "exec", namespace.name, str(VENV_BIN / "ansible-playbook"),
                           "-i", str(inventory_path), str(REPO / "playbooks" / name), *extra],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    output = done.stdout + done.stderr
    recap = recap_counts(output).get("pop1")
    return done.returncode, output, recap["changed"] if recap else None


def test_ban_and_unban_playbooks_at_a_pop(edge_lab, xdp_edge_object, pin_root, tmp_path):
    edge_lab.attach_with_rules(xdp_edge_object, pin_root, tmp_path / "attach")
    inv = inventory(tmp_path, pin_root, deny=[])   # its pop1 is this lab's POP (up0, 10.0.0.1)
    player = topo.ALLOWED_PLAYER
    request = ["-e", yaml.safe_dump({"anycast_edge_ban_addresses": [player] + OTHER_BANNED,
                                     "anycast_edge_ban_duration": 300}, default_flow_style=True).strip()]
    reasons = ("tx_forward", "drop_banned")

    # Before: the player's datagrams are forwarded.
    assert after(pin_root, lambda: send(edge_lab.world, player, 5), *reasons) == (5, 0)

    # A bad request fails on the controller, naming the variable and the value; nothing is banned.
    code, output, dummy = playbook(edge_lab.pop, inv, "ban.yml", "-e", yaml.safe_dump(
        {"anycast_edge_ban_addresses": [player, "198.18.7.1/30"], "anycast_edge_ban_duration": 300},
        default_flow_style=True).strip())
    assert code != 0 and "anycast_edge_ban_addresses[1]: '198.18.7.1/30': has host bits set" in output, output
    code, output, dummy = playbook(edge_lab.pop, inv, "ban.yml", "-e", yaml.safe_dump(
        {"anycast_edge_ban_addresses": [player], "anycast_edge_ban_duration": "ten minutes"},
        default_flow_style=True).strip())
    assert code != 0 and "anycast_edge_ban_duration: 'ten minutes': must be a whole number" in output, output
    assert ban_until(pin_root, player) == 0

    # Check mode says what it would do and does nothing.
    code, output, changed = playbook(edge_lab.pop, inv, "ban.yml", "--check", "--diff", *request)
    assert code == 0 and changed == 1, output
    assert "%s banned until" % player in output, output
    assert ban_until(pin_root, player) == 0

    started = time.time()
    code, output, changed = playbook(edge_lab.pop, inv, "ban.yml", *request)
    assert code == 0 and changed == 1, output
    assert "5 addresses banned until" in output and "5 written here (via map)" in output, output
    remaining = (ban_until(pin_root, player) - monotonic_ns()) / 1e9
    assert 300 - (time.time() - started) - 2 < remaining <= 300, remaining
    assert ban_until(pin_root, "198.18.7.3") == ban_until(pin_root, player)
    # The same datagrams are dropped now, as banned.
    assert after(pin_root, lambda: send(edge_lab.world, player, 5), *reasons) == (0, 5)

    # A shorter ban leaves the longer one alone; a ban until a given time, run twice, changes once.
    code, output, changed = playbook(edge_lab.pop, inv, "ban.yml", "-e", yaml.safe_dump(
        {"anycast_edge_ban_addresses": [player], "anycast_edge_ban_duration": 1}, default_flow_style=True).strip())
    assert code == 0 and changed == 0, output
    until = ["-e", yaml.safe_dump({"anycast_edge_ban_addresses": [player],
                                   "anycast_edge_ban_expires_at": int(time.time()) + 3600}, default_flow_style=True).strip()]
    code, output, changed = playbook(edge_lab.pop, inv, "ban.yml", *until)
    assert code == 0 and changed == 1, output
    code, output, changed = playbook(edge_lab.pop, inv, "ban.yml", *until)
    assert code == 0 and changed == 0, output

    unban = ["-e", yaml.safe_dump({"anycast_edge_ban_addresses": [player] + OTHER_BANNED},
                                  default_flow_style=True).strip()]
    code, output, changed = playbook(edge_lab.pop, inv, "unban.yml", *unban)
    assert code == 0 and changed == 1, output
    assert "5 of 5 addresses were banned here and are not now (via map)" in output, output
    assert after(pin_root, lambda: send(edge_lab.world, player, 5), *reasons) == (5, 0)
    code, output, changed = playbook(edge_lab.pop, inv, "unban.yml", *unban)
    assert code == 0 and changed == 0, output


def test_the_edge_ban_module_is_idempotent_with_one_end(edge_lab, xdp_edge_object, pin_root, tmp_path):
    run_tasks([task("anycast.edge.xdp_program", {"iface": topo.POP_IFACE, "object": xdp_edge_object,
                                                 "pin_root": pin_root})], tmp_path / "attach", netns=edge_lab.pop)
    args = {"iface": topo.POP_IFACE, "pin_root": pin_root, "addresses": ["203.0.113.40/31"],
            "expires_at": time.time() + 120}
    run = run_tasks([task("anycast.edge.edge_ban", args), task("anycast.edge.edge_ban", args),
                     task("anycast.edge.edge_ban", dict(args, state="absent", expires_at=None)),
                     task("anycast.edge.edge_ban", dict(args, state="absent", expires_at=None)),
                     task("anycast.edge.edge_ban", dict(args, via="agent", agent_socket=str(tmp_path / "none")))],
                    tmp_path / "module", netns=edge_lab.pop)
    first, second, lift, lift_again, no_agent = run.results
    assert first["changed"] and first["changed_addresses"] == ["203.0.113.40", "203.0.113.41"], first
    assert first["via"] == "map" and not first["fleet"]
    assert not second["changed"], second
    assert lift["changed"] and lift["changed_addresses"] == ["203.0.113.40", "203.0.113.41"], lift
    assert not lift_again["changed"], lift_again
    assert no_agent["failed"] and "cannot reach the agent at %s" % (tmp_path / "none") in no_agent["msg"], no_agent


def test_a_ban_at_a_is_enforced_at_b_within_a_second_and_lifted_the_same_way(world, tmp_path):
    dummy, make_pops = world
    pop_a, pop_b = make_pops()
    socket_path = str(tmp_path / "a-control.sock")
    server = control.serve(pop_a.agent.control, socket_path)[0]
    address = "203.0.113.91"
    try:
        # Before: B forwards the address's packet.
        assert pop_b.edge.run(sc.player_udp(src=address)).reason == "tx_forward"

        asked = time.monotonic()
        answer = ask_agent(socket_path, {"action": "ban", "addresses": [address],
                                         "expires_ns": time.time_ns() + 300 * 10**9})
        assert answer["changed"] == [address] and answer["published"] == [address] and answer["fleet"], answer
        wait_for(lambda: (pop_b.edge.ban_until(address) or 0) > monotonic_ns(), "the ban in B's map",
                 timeout=5, interval=0.005)
        delay = time.monotonic() - asked
        assert pop_a.edge.run(sc.player_udp(src=address)).reason == "drop_banned"
        print("\nhand-made ban pop-a -> pop-b: %.0f ms" % (delay * 1000))
        assert delay < 1.0
        assert pop_b.edge.run(sc.player_udp(src=address)).reason == "drop_banned"
        # Listed by both exporters, with the POP it was made at.
        listed = ("anycast_edge_manual_ban_expiry_timestamp_seconds", (("address", address), ("origin", "pop-a")))
        assert listed in pop_b.metrics() and listed in pop_a.metrics()
        assert pop_b.metrics()[("anycast_edge_fleet_imported_total", (("from", "pop-a"), ("kind", "ban")))] == 1

        # The unban through the module and A's agent: B lifts it too.
        lift = run_tasks([task("anycast.edge.edge_ban", {"addresses": [address], "state": "absent", "via": "agent",
                                                         "agent_socket": socket_path})], tmp_path / "unban")[0]
        lifted = time.monotonic()
        assert lift["changed"] and lift["via"] == "agent" and lift["published"] == [address], lift
        wait_for(lambda: (pop_b.edge.ban_until(address) or 0) <= monotonic_ns(), "the lift in B's map",
                 timeout=5, interval=0.005)
        print("hand-made unban pop-a -> pop-b: at most %.0f ms after the module returned"
              % ((time.monotonic() - lifted) * 1000))
        assert time.monotonic() - lifted < 1.0
        assert pop_b.edge.run(sc.player_udp(src=address)).reason == "tx_forward"
        assert pop_a.edge.run(sc.player_udp(src=address)).reason == "tx_forward"
        assert listed not in pop_b.metrics() and listed not in pop_a.metrics()
        assert pop_b.metrics()[("anycast_edge_fleet_imported_total", (("from", "pop-a"), ("kind", "unban")))] == 1
    finally:
        server.shutdown()
        server.server_close()


def test_a_lift_from_the_bus_ends_only_the_ban_its_origin_made(world):
    """An unban was a lift of the address's ban at every POP, whoever made it: pop-a's operator
    (unban.yml -l pop-a), or whoever has pop-a's login, lifted the ban pop-b's operator made at
    pop-b and the ban pop-b's own XDP made of a flooding source. A lift from the bus now ends at a
    POP only the ban it imported from the lifting POP; the POP's own bans stay."""
    cluster, make_pops = world
    pop_a, pop_b = make_pops()
    by_hand, flooder, from_a = "203.0.113.92", "203.0.113.93", "203.0.113.94"
    expires = time.time_ns() + 300 * 10**9
    # pop-b's operator bans one address at pop-b (published: pop-a imports it) ...
    assert pop_b.agent.control.handle({"action": "ban", "addresses": [by_hand], "expires_ns": expires})["published"]
    wait_for(lambda: (pop_a.edge.ban_until(by_hand) or 0) > monotonic_ns(), "pop-b's ban at pop-a", timeout=5)
    # ... pop-b's XDP bans a flooding source by itself, and pop-a's operator bans a third at pop-a.
    ban_by_flood(pop_b, flooder)
    assert pop_a.agent.control.handle({"action": "ban", "addresses": [from_a], "expires_ns": expires})["published"]
    wait_for(lambda: (pop_b.edge.ban_until(from_a) or 0) > monotonic_ns(), "pop-a's ban at pop-b", timeout=5)

    # pop-a's operator lifts all three at pop-a (pop-a had the first two too, a forger lifts the flooder).
    pop_a.edge.ban(flooder, monotonic_ns() + 300 * 10**9)
    answer = pop_a.agent.control.handle({"action": "unban", "addresses": [by_hand, flooder, from_a]})
    assert answer["published"] == [by_hand, flooder, from_a], answer
    publish_on_the_bus(cluster, fleet_sync.Entry("ban", abi.ipv4(flooder), time.time_ns() + 60 * 10**9, "pop-x",
                                                 lifted=True))
    wait_for(lambda: (pop_b.edge.ban_until(from_a) or 0) <= monotonic_ns(), "pop-a's own ban lifted at pop-b",
             timeout=5)
    wait_for(lambda: pop_b.sync.snapshot()["refused"].get(("pop-x", "unban", "not_its_ban")) == 1,
             "the forger's lift refused", timeout=5)
    refused = pop_b.sync.snapshot()["refused"]
    assert refused.get(("pop-a", "unban", "not_its_ban")) == 2, refused
    # pop-a's own ban ended at pop-b; pop-b's own two stand.
    for address, reason in ((from_a, "tx_forward"), (by_hand, "drop_banned"), (flooder, "drop_banned")):
        assert pop_b.edge.run(sc.player_udp(src=address, sport=40100)).reason == reason, address
    for address in (by_hand, flooder, from_a):
        assert pop_a.edge.run(sc.player_udp(src=address, sport=40100)).reason == "tx_forward", address
    listed = ("anycast_edge_manual_ban_expiry_timestamp_seconds", (("address", by_hand), ("origin", "pop-b.example")))
    assert listed in pop_b.metrics()
    assert pop_b.metrics()[("anycast_edge_fleet_refused_total",
                            (("from", "pop-a"), ("kind", "unban"), ("reason", "not_its_ban")))] == 2
    # pop-b's own lift ends its own ban at pop-b (its operator), and at pop-a nothing is left to end.
    assert pop_b.agent.control.handle({"action": "unban", "addresses": [by_hand]})["changed"] == [by_hand]
    assert pop_b.edge.run(sc.player_udp(src=by_hand, sport=40100)).reason == "tx_forward"
