"""The fleet sync end to end: two POPs, each the real xdp_edge program with its maps pinned on its
own bpffs and a real ``Agent`` of the agent package (its fleet-sync thread and its exporter), and
a real NATS JetStream cluster of three Debian nats-servers, all in one network namespace.

What a POP learns is learned by its program, from packets (BPF_PROG_TEST_RUN): a game server's
reply through POP A opens the punch, a flood over the rate limit bans. What the other POP then
does with the same packets is read from its program's verdicts, before and after the sync.
Propagation delays are printed (pytest -s shows them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
import urllib.request
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import raw

# agent_world puts agent/ and tests/ on sys.path.
import agent_world  # noqa: F401  pylint: disable=unused-import
from anycast_edge_agent import config as agent_config
from anycast_edge_agent import fleet_sync
from anycast_edge_agent.main import Agent
from bpf import scenario as sc
from harness import topology as topo
from harness.edge_env import EdgeEnv, monotonic_ns
from helpers.bpffs import private_bpffs
from helpers.closed_host import answer_of_a_closed_host
from helpers.nats_cluster import NatsCluster, free_ports

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _pins

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF, bpffs and namespaces need root")

NS = 10**9
PUNCH_IDLE_SEC = 6
STRANGER = "203.0.113.77"


def pin(edge, pin_root):
    os.makedirs(_pins.maps_dir(pin_root, topo.UPLINK))
    edge.prog.pin(_pins.program_pin_path(pin_root, topo.UPLINK))
    for name, bpf_map in edge.maps.items():
        bpf_map.pin(_pins.map_pin_path(pin_root, topo.UPLINK, name))


class Pop:
    """One POP: its program (EdgeEnv), its pins and its agent."""

    def __init__(self, name, edge, pin_root, servers, **sync):
        self.name = name
        self.edge = edge
        pin(edge, pin_root)
        self.port = free_ports(1)[0]
        settings = dict(servers=servers, punch_scan_interval_sec=0.1, sources_scan_interval_sec=0.25)
        settings.update(sync)
        self.config = agent_config.parse({
            "iface": topo.UPLINK, "tunnel_address": topo.POP_TUNNEL_ADDR, "listen_address": "127.0.0.1",
            "listen_port": self.port, "pin_root": pin_root, "bird_manage": False, "check_dataplane": False,
            "pop_name": name, "fleet_sync": settings})
        self.agent = Agent(self.config)
        self.httpd = None

    def start(self):
        self.httpd = self.agent.serve_metrics()[0]
        self.agent.start()
        return self

    def stop(self):
        self.agent.stop()
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()

    @property
    def sync(self):
        return self.agent.fleet_sync

    def metrics(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.port, timeout=5) as answer:
            text = answer.read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def punched(self, dport=sc.PLAYER_PORT, src=sc.PLAYER):
        return self.edge.maps["edge_punches"].lookup(
            abi.pack_punch_key("udp", sc.GAME, sc.GAME_PORT, src, dport)) is not None


@pytest.fixture
def world(xdp_edge_object, tmp_path, request):
    """(cluster, make_pops): make_pops(a_sync={}, b_sync={}) -> (A, B), both started. Parametrized
    (indirect) with {user: password}, the servers want those logins."""
    edge_a = EdgeEnv.start(xdp_edge_object, netns="aedge-fleet-" + uuid.uuid4().hex[:6])
    edge_b = None
    cluster = None
    pops = []
    try:
        # The servers start in the POPs' namespace (this thread is in it now) and elect their
        # JetStream leader (seconds) while the second program loads; both are ready before the POPs.
        (tmp_path / "nats").mkdir()
        cluster = NatsCluster(tmp_path / "nats", size=3, users=getattr(request, "param", None)).start()
        edge_b = edge_a.another_pop()
        for edge in (edge_a, edge_b):
            # A tight rate limit, so that "not punched" shows as drops; punches idle out quickly.
            sc.setup_pop(edge, limits={"udp": (2, 0)}, ban_sec=60, punch_idle_ns=PUNCH_IDLE_SEC * NS)
        cluster.wait_for_jetstream()
        with private_bpffs(tmp_path / "pins-a") as pins_a, private_bpffs(tmp_path / "pins-b") as pins_b:

            def make_pops(a_sync=None, b_sync=None, connected=("pop-a", "pop-b.example")):
                pops.append(Pop("pop-a", edge_a, str(pins_a), cluster.urls, **(a_sync or {})).start())
                pops.append(Pop("pop-b.example", edge_b, str(pins_b), cluster.urls[::-1], **(b_sync or {})).start())
                wait_for(lambda: all(pop.sync.connected for pop in pops if pop.name in connected),
                         "%s on the bus" % ", ".join(connected))
                return pops

            try:
                yield cluster, make_pops
            finally:
                for pop in pops:
                    pop.stop()
    finally:
        if cluster is not None:
            cluster.stop()
        if edge_b is not None:
            edge_b.stop()
        edge_a.stop()


def wait_for(predicate, what, timeout=15.0, interval=0.01):
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        value = predicate()
        if value:
            return time.monotonic() - started
        time.sleep(interval)
    raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))


def player_packets(pop, count=4, **fields):
    """The verdicts of ``count`` packets of the player's flow at ``pop`` (within one second)."""
    return [pop.edge.run(sc.player_udp(**fields)).reason for dummy in range(count)]


def learn_punch(pop, dport=sc.PLAYER_PORT, dst=sc.PLAYER):
    """The game server answers the player through ``pop``: its program opens the punch."""
    result = pop.edge.run(sc.backend_reply(dport=dport, dst=dst))
    assert result.action == "TX", result.reason


def learn_punches(pop, dports, dst=sc.PLAYER):
    """learn_punch for many ports, fast (the verdicts are not read back: the punches are)."""
    for dport in dports:
        frame = sc.backend_reply(dport=dport, dst=dst)
        assert pop.edge.prog.test_run(frame, ctx_in=pop.edge.xdp_ctx(topo.UPLINK, len(frame))).retval == 3  # XDP_TX


def ban_by_hand(pop, address, seconds=300):
    """The POP's operator bans ``address`` (ban.yml through the agent's control socket): its agent
    writes the ban and publishes it."""
    answer = pop.agent.control.handle({"action": "ban", "addresses": [address],
                                       "expires_ns": time.time_ns() + seconds * NS})
    assert answer["changed"] == [address] and answer["published"] == [address], answer


def ban_by_flood(pop, address):
    """``address`` floods the game port at ``pop`` past its rate limit: the program bans it."""
    reasons = []
    while "drop_banned" not in reasons:
        assert len(reasons) < 10, reasons
        reasons.append(pop.edge.run(sc.player_udp(src=address, sport=40000)).reason)
    assert "drop_rate_limit" in reasons, reasons


def live_punches(pop):
    now = monotonic_ns()
    return sum(1 for dummy, value in pop.edge.maps["edge_punches"].lookup_batch()
               if now - abi.PUNCH_VALUE.unpack(value)[0] < PUNCH_IDLE_SEC * NS)


def test_a_punch_learned_at_a_is_in_b_within_a_second_and_expires_everywhere(world):
    dummy, make_pops = world
    pop_a, pop_b = make_pops()
    # Before: B does not know the flow; the player's packet there is an unpunched one.
    assert player_packets(pop_b, count=1) == ["tx_forward"]
    pop_b.edge.maps["edge_sources"].delete(abi.ipv4(sc.PLAYER))   # a clean rate window at B for after

    learn_punch(pop_a)
    delay = wait_for(pop_b.punched, "the punch learned at pop-a in pop-b's map", timeout=5)
    print("\npunch propagation pop-a -> pop-b: %.0f ms" % (delay * 1000))
    assert delay < 1.0
    # Six packets in a second at a limit of two: a punch is what lets them through.
    assert player_packets(pop_b, count=6) == ["tx_punched"] * 6
    assert player_packets(pop_a, count=6) == ["tx_punched"] * 6
    metrics_b = pop_b.metrics()
    assert metrics_b[("anycast_edge_fleet_imported_total", (("from", "pop-a"), ("kind", "punch")))] == 1
    assert pop_a.metrics()[("anycast_edge_fleet_published_total", (("kind", "punch"),))] >= 1
    # B's copy is not published back as B's own.
    assert ("anycast_edge_fleet_published_total", (("kind", "punch"),)) not in metrics_b

    # Idle everywhere: no reply for the idle time -> no punch at A nor at B.
    time.sleep(PUNCH_IDLE_SEC + 0.5)
    for pop in (pop_a, pop_b):
        assert pop.edge.run(sc.player_udp()).reason != "tx_punched", pop.name
        assert not pop.punched(), pop.name
    # ... and nothing brings it back from the bus.
    time.sleep(1.0)
    assert not pop_b.punched()


def test_a_deny_listed_address_is_refused_on_import(world):
    dummy, make_pops = world
    pop_a, pop_b = make_pops()
    ban_by_hand(pop_a, STRANGER)
    # Before B deny-lists it, A's ban is imported: the stranger is dropped at B without having flooded B.
    wait_for(lambda: pop_b.edge.ban_until(STRANGER), "pop-a's ban at pop-b", timeout=5)
    assert pop_b.edge.run(sc.player_udp(src=STRANGER, sport=40000)).reason == "drop_banned"
    first_ban = pop_b.edge.ban_until(STRANGER)

    # B deny-lists the player's /24 (edge_rules' records and what XDP reads); A learns about it more.
    pop_b.edge.deny("203.0.113.0/24")
    pop_b.edge.maps["edge_sources"].delete(abi.ipv4(STRANGER))
    learn_punch(pop_a, dst=STRANGER, dport=40000)
    ban_by_hand(pop_a, "203.0.113.78")
    wait_for(lambda: pop_b.sync.snapshot()["refused"].get(("pop-a", "ban", "denied"), 0) >= 1
             and pop_b.sync.snapshot()["refused"].get(("pop-a", "punch", "denied"), 0) >= 1,
             "pop-b refusing the denied entries", timeout=5)
    assert pop_b.edge.ban_until("203.0.113.78") is None
    assert not pop_b.punched(src=STRANGER, dport=40000)
    assert pop_a.punched(src=STRANGER, dport=40000)                  # the POP without the deny entry has it
    metrics = pop_b.metrics()
    assert metrics[("anycast_edge_fleet_refused_total", (("from", "pop-a"), ("kind", "ban"), ("reason", "denied")))] >= 1
    assert first_ban   # imported before the deny


def test_a_flood_spoofed_in_a_players_name_bans_the_player_only_where_it_arrives(world):
    """A UDP source address is anyone's to write: a flood in a player's name past the rate limit
    at A gets the player banned at A. The bans XDP made by itself were shared, so the player was
    banned at B too, where its own packets arrive (anycast) and nothing was flooded: B dropped
    them within a second. They stay at A now; B keeps forwarding the player, and refuses an
    automatic ban published by an agent of before (origin pop-x); hand-made bans still travel
    (test_fleet_ban)."""
    cluster, make_pops = world
    pop_a, pop_b = make_pops()
    victim = "203.0.113.79"
    assert pop_b.edge.run(sc.player_udp(src=victim, sport=40000)).reason == "tx_forward"
    pop_b.edge.maps["edge_sources"].delete(abi.ipv4(victim))   # a clean rate window at B for after
    ban_by_flood(pop_a, victim)                                 # the spoofer's flood reaches A
    assert pop_a.edge.run(sc.player_udp(src=victim, sport=40000)).reason == "drop_banned"
    # Several scans of A's sources later: nothing published, nothing at B.
    time.sleep(2.0)
    assert "ban" not in pop_a.sync.snapshot()["published"]
    assert pop_b.edge.ban_until(victim) is None
    assert pop_b.edge.run(sc.player_udp(src=victim, sport=40000)).reason == "tx_forward"
    older = fleet_sync.Entry("ban", abi.ipv4(victim), time.time_ns() + 60 * NS, "pop-x")
    publish_on_the_bus(cluster, older)
    wait_for(lambda: pop_b.sync.snapshot()["refused"].get(("pop-x", "ban", "automatic_ban")) == 1,
             "pop-b refusing the automatic ban", timeout=5)
    assert pop_b.edge.ban_until(victim) is None


def test_the_import_caps_hold_under_a_burst_from_one_pop(world):
    dummy, make_pops = world
    rate, burst, size = 100, 150, 100
    pop_a, pop_b = make_pops(b_sync=dict(import_rate_per_pop=rate, import_burst_per_pop=burst,
                                         import_max_entries_per_pop=size))
    # An attacker makes pop-a learn 1,000 junk flows (replies to 1,000 ports) as fast as it can.
    started = time.monotonic()
    learn_punches(pop_a, range(20000, 21000))
    assert live_punches(pop_a) == 1000
    wait_for(lambda: pop_a.sync.snapshot()["published"].get("punch", 0) >= 1000, "pop-a publishing 1,000 punches",
             timeout=20)

    def handled():
        snapshot = pop_b.sync.snapshot()
        return sum(snapshot["imported"].values()) + sum(snapshot["refused"].values())

    # 1,000 punches and the player's verification (the replies proved the flow).
    wait_for(lambda: handled() >= 1001, "pop-b reading all 1,001", timeout=20)
    elapsed = time.monotonic() - started
    snapshot = pop_b.sync.snapshot()
    imported = snapshot["imported"][("pop-a", "punch")]
    refused = {reason: count for (dummy, kind, reason), count in snapshot["refused"].items() if kind == "punch"}
    print("\nburst of 1000 punches from pop-a in %.2f s: pop-b imported %d (caps: %d/s, burst %d, %d live), "
          "refused %s" % (elapsed, imported, rate, burst, size, refused))
    assert live_punches(pop_b) <= size
    assert imported <= burst + rate * elapsed
    assert refused["rate_cap"] >= 1000 - burst - rate * elapsed - 1
    assert refused["size_cap"] >= 1
    assert sum(refused.values()) + imported == 1000
    metrics = pop_b.metrics()
    assert metrics[("anycast_edge_fleet_refused_total",
                    (("from", "pop-a"), ("kind", "punch"), ("reason", "rate_cap")))] == refused["rate_cap"]


def publish_on_the_bus(cluster, *entries):
    """Whoever reaches the bus (a POP's login, or none) publishes these entries, as fleet_sync would."""
    async def publish():
        import nats  # pylint: disable=import-outside-toplevel
        client = await nats.connect(cluster.urls, connect_timeout=2, allow_reconnect=False)
        try:
            js = client.jetstream(timeout=5)
            for entry in entries:
                await js.publish(entry.subject(), entry.payload())
        finally:
            await client.close()

    asyncio.run(publish())


def publish_raw_on_the_bus(cluster, *messages):
    """(subject, payload bytes) published as they are: what a forger's client can send."""
    async def publish():
        import nats  # pylint: disable=import-outside-toplevel
        client = await nats.connect(cluster.urls, connect_timeout=2, allow_reconnect=False)
        try:
            js = client.jetstream(timeout=5)
            for subject, payload in messages:
                await js.publish(subject, payload)
        finally:
            await client.close()

    asyncio.run(publish())


def test_an_infinite_or_nan_expiry_is_refused_as_malformed(world):
    """JSON as Python reads it has Infinity and NaN (and 1e400 is infinite): int(inf) raises
    OverflowError, which the decoder did not take for a malformed message; the importer counted it
    as an import error (the exporter's anycast_edge_fleet_import_errors_total), not as a refusal of
    the origin's message. A well-formed punch after them is imported."""
    cluster, make_pops = world
    pop_a, pop_b = make_pops()
    good = fleet_sync.Entry("punch", abi.pack_punch_key("udp", sc.GAME, sc.GAME_PORT, sc.PLAYER, 50200),
                            time.time_ns() + 60 * NS, "pop-x")
    messages = []
    for index, expiry in enumerate((b"Infinity", b"-Infinity", b"NaN", b"1e400")):
        entry = dataclasses.replace(good, key=abi.pack_punch_key("udp", sc.GAME, sc.GAME_PORT, sc.PLAYER, 50201 + index))
        messages.append((entry.subject(), entry.payload().replace(b'"expires_ns":%d' % entry.expires_ns,
                                                                  b'"expires_ns":' + expiry)))
        assert expiry in messages[-1][1]
    messages.append((good.subject(), good.payload()))
    publish_raw_on_the_bus(cluster, *messages)
    wait_for(lambda: pop_b.sync.snapshot()["imported"].get(("pop-x", "punch")) == 1, "pop-b importing the good one",
             timeout=5)
    snapshot = pop_b.sync.snapshot()
    assert snapshot["refused"].get(("pop-x", "punch", "malformed")) == 4, snapshot
    assert snapshot["import_errors"] == 0
    assert pop_b.metrics()[("anycast_edge_fleet_refused_total",
                            (("from", "pop-x"), ("kind", "punch"), ("reason", "malformed")))] == 4
    assert pop_b.punched(dport=50200) and not any(pop_b.punched(dport=50201 + index) for index in range(4))


def test_an_expiry_years_ahead_does_not_keep_a_pop_from_publishing_what_it_learns(world):
    """The importer's cursor takes an imported entry as the bus's: with the expiry the message
    claimed, a forged punch 'expiring' in ten years kept B from ever publishing the same flow's
    punch learned by B itself. B keeps it no longer than its own idle time, and notes that."""
    cluster, make_pops = world
    pop_a, pop_b = make_pops()
    forged = fleet_sync.Entry("punch", abi.pack_punch_key("udp", sc.GAME, sc.GAME_PORT, sc.PLAYER, 50123),
                              time.time_ns() + 10 * 365 * 86400 * NS, "pop-x")
    publish_on_the_bus(cluster, forged)
    wait_for(lambda: pop_b.sync.snapshot()["imported"].get(("pop-x", "punch")) == 1, "pop-b importing pop-x's punch",
             timeout=5)
    # B keeps it for its own idle time (as before the fix).
    assert pop_b.punched(dport=50123)
    # The game server answers the player on that flow through B, after a quarter of the idle time
    # (the slack past which a punch's later expiry is news): B publishes it and A imports B's.
    time.sleep(PUNCH_IDLE_SEC / 4 + 0.5)
    learn_punch(pop_b, dport=50123)
    wait_for(lambda: pop_a.sync.snapshot()["imported"].get(("pop-b.example", "punch")) == 1,
             "pop-a importing the punch pop-b learned itself", timeout=5)
    # B counts a publication once the bus has acknowledged it, which may come after A's import.
    wait_for(lambda: pop_b.sync.snapshot()["published"].get("punch") == 1, "pop-b counting its publication",
             timeout=5)


def test_a_verified_player_at_a_is_verified_at_b(world):
    dummy, make_pops = world
    pop_a, pop_b = make_pops()
    for edge in (pop_a.edge, pop_b.edge):   # the game service under attack at both (no unverified budget)
        edge.add_service("udp", sc.GAME, sc.GAME_PORT, sc.GAME_UDP_ID, sc.BACKEND, attack_mode="always")
    # Under attack, an unverified player is dropped at B (no admission budget set).
    assert pop_b.edge.run(sc.player_udp(sport=41000)).reason == "drop_unverified"
    # The game server speaks first on the player's flow through A: A verifies it (proof: punch).
    learn_punch(pop_a, dport=41000)
    assert pop_a.edge.verified_for(sc.PLAYER, sc.GAME_UDP_ID, monotonic_ns())
    wait_for(lambda: pop_b.edge.verified_for(sc.PLAYER, sc.GAME_UDP_ID, monotonic_ns()),
             "the verification at pop-b", timeout=5)
    # On another flow (no punch at B for it) the player passes B as verified.
    assert pop_b.edge.run(sc.player_udp(sport=41001)).reason == "tx_forward"


def test_imported_verifications_that_their_sources_keep_alive_count_under_the_cap(world):
    """An imported verification counted under its origin's live-entry cap only for the lifetime it
    was imported with, but XDP refreshes a verified slot at each packet of its source: the sources
    kept their slots alive at B past that, their places under A's cap were given back, and A could
    make B hold verifications without end (its cap's worth per verified idle time). They count as
    long as they live at B now; once their sources stop, their places come back."""
    dummy, make_pops = world
    idle = 3
    pop_a, pop_b = make_pops(a_sync=dict(kinds=["verified"]), b_sync=dict(import_max_entries_per_pop=3))
    for edge in (pop_a.edge, pop_b.edge):
        sc.setup_pop(edge, limits={"udp": (50, 0)}, ban_sec=60, punch_idle_ns=PUNCH_IDLE_SEC * NS,
                     verified_idle_ns=idle * NS)
        edge.add_service("udp", sc.GAME, sc.GAME_PORT, sc.GAME_UDP_ID, sc.BACKEND, attack_mode="always")
    players = ["203.0.113.%d" % host for host in range(101, 106)]

    def verify_at_a(player):
        learn_punch(pop_a, dst=player, dport=41000)
        assert pop_a.edge.verified_for(player, sc.GAME_UDP_ID, monotonic_ns(), idle * NS)

    def verified_at_b(player):
        return pop_b.edge.verified_for(player, sc.GAME_UDP_ID, monotonic_ns(), idle * NS)

    for player in players[:3]:
        verify_at_a(player)
    wait_for(lambda: all(verified_at_b(player) for player in players[:3]), "three verifications at pop-b", timeout=5)
    # The three players play at B for twice the idle time: their own packets keep them verified there.
    deadline = time.monotonic() + 2 * idle
    while time.monotonic() < deadline:
        for player in players[:3]:
            assert pop_b.edge.run(sc.player_udp(src=player, sport=41000)).reason == "tx_forward", player
        time.sleep(0.3)
    # A verifies a fourth: B is at A's cap still (the three are alive), and refuses it.
    verify_at_a(players[3])
    wait_for(lambda: pop_b.sync.snapshot()["refused"].get(("pop-a", "verified", "size_cap")), "pop-b refusing it",
             timeout=5)
    assert not verified_at_b(players[3])
    assert pop_b.edge.run(sc.player_udp(src=players[3], sport=41000)).reason == "drop_unverified"
    # The three stop; once their slots end at B, A's next verification has a place again.
    time.sleep(idle + 0.5)
    verify_at_a(players[4])
    wait_for(lambda: verified_at_b(players[4]), "the fifth verification at pop-b", timeout=5)


def test_a_source_verified_by_syn_authentication_is_verified_at_its_pop_only(world):
    """SYN authentication's RST proves that the address has a TCP stack, not that it sent the SYN:
    any host without a stateful firewall answers the POP's SYN-ACK to a SYN spoofed in its name with
    the very RST that verifies it (docs/tcp-protection.md, "Limits"). A spoofer can so verify such
    hosts at the POP it reaches, and flood in their names; shared with the fleet, every POP would
    take that flood. Shared were every verification, so syn_auth's too: B forwarded the spoofer's
    ACKs in the victim's name without ever having answered it."""
    dummy, make_pops = world
    pop_a, pop_b = make_pops()
    victim = "192.0.2.99"            # a host that never sent a packet to the fleet
    for edge in (pop_a.edge, pop_b.edge):
        edge.add_service("tcp", sc.GAME, sc.GAME_PORT, sc.GAME_TCP_ID, sc.BACKEND, syn_auth="always")
    in_the_victims_name = raw(sc.eth() / IP(src=victim, dst=sc.GAME) /
                              TCP(sport=40001, dport=sc.GAME_PORT, flags="A", seq=1, ack=1) / b"flood")
    assert pop_b.edge.run(in_the_victims_name).reason == "drop_tcp_unverified"

    # At A: the spoofer's SYN in the victim's name; the victim's kernel answers the SYN-ACK.
    syn_ack = pop_a.edge.run(raw(sc.eth() / IP(src=victim, dst=sc.GAME) /
                                 TCP(sport=40001, dport=sc.GAME_PORT, flags="S", seq=7)))
    assert syn_ack.reason == "tx_syn_auth"
    reset = answer_of_a_closed_host(raw(Ether(syn_ack.data)[IP]))
    assert reset is not None and IP(reset)[TCP].flags == "R" and IP(reset)[TCP].seq == Ether(syn_ack.data)[TCP].ack
    assert pop_a.edge.run(raw(sc.eth() / IP(reset))).reason == "drop_syn_auth_verified"
    assert pop_a.edge.verified_for(victim, sc.GAME_TCP_ID, monotonic_ns()) == "syn_auth"
    assert pop_a.edge.run(in_the_victims_name).reason == "tx_forward"          # the known limit, at A

    # A player the game server proved afterwards (its reply on the player's flow, proof punch) is
    # shared, and once B has it, B would have had the victim's earlier verification too.
    learn_punch(pop_a, dport=41000)
    wait_for(lambda: pop_b.edge.verified_for(sc.PLAYER, sc.GAME_UDP_ID, monotonic_ns()), "the player's "
             "verification at pop-b", timeout=5)
    assert pop_b.edge.verified_for(victim, sc.GAME_TCP_ID, monotonic_ns()) is None
    assert pop_b.edge.run(in_the_victims_name).reason == "drop_tcp_unverified"
    assert pop_b.metrics()[("anycast_edge_fleet_imported_total", (("from", "pop-a"), ("kind", "verified")))] == 1


def test_the_pops_keep_working_without_the_bus_and_catch_up_on_heal(world):
    cluster, make_pops = world
    pop_a, pop_b = make_pops()
    for pop in (pop_a, pop_b):   # flows that stay punched through the outages below, however long they take
        sc.setup_pop(pop.edge, limits={"udp": (2, 0)}, ban_sec=60, punch_idle_ns=120 * NS)
    learn_punch(pop_a)
    wait_for(pop_b.punched, "the first punch at pop-b", timeout=5)

    # One server dies: the cluster keeps its quorum, the agents move to another server.
    cluster.kill(0)
    learn_punch(pop_a, dport=50001)

    delay = wait_for(lambda: pop_b.punched(dport=50001), "a punch while one server is down", timeout=15)
    print("\none server down: punch propagation %.0f ms" % (delay * 1000))

    # A second one dies: no JetStream (no quorum). Both data planes work from their maps alone:
    # A with what it learns now, B with what it imported.
    cluster.kill(1)
    learn_punch(pop_a, dport=50002)
    time.sleep(2.0)
    assert not pop_b.punched(dport=50002)
    assert player_packets(pop_a, count=3, sport=50002) == ["tx_punched"] * 3
    assert player_packets(pop_b, count=3, sport=50001) == ["tx_punched"] * 3
    ban_by_hand(pop_b, STRANGER)
    # The agents' other work goes on: the exporter answers, says the sync is behind.
    metrics_a = pop_a.metrics()
    assert metrics_a[("anycast_edge_fleet_publish_backlog", ())] >= 1
    assert metrics_a[("anycast_edge_maps_readable", ())] == 1

    # Heal: both servers back (same stores). What was learned meanwhile arrives.
    healed = time.monotonic()
    cluster.start(0)
    cluster.start(1)
    wait_for(lambda: pop_b.punched(dport=50002) and pop_a.edge.ban_until(STRANGER), "the catch-up after the heal",
             timeout=40)
    print("\nheal: caught up %.1f s after the servers came back" % (time.monotonic() - healed))
    assert pop_a.edge.run(sc.player_udp(src=STRANGER, sport=40000)).reason == "drop_banned"
    assert pop_a.metrics()[("anycast_edge_fleet_publish_backlog", ())] == 0


LOGINS = {"pop-a": "a-s3cret-password-1", "pop-b.example": "b-s3cret-password-2"}


@pytest.mark.parametrize("world", [LOGINS], indirect=True)
def test_logins_work_and_no_password_is_ever_logged_or_exported(world, caplog):
    dummy, make_pops = world
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-s3cret-password-3"
    pop_a, pop_b = make_pops(a_sync=dict(user="pop-a", password=LOGINS["pop-a"]),
                             b_sync=dict(user="pop-b.example", password=wrong), connected=("pop-a",))
    learn_punch(pop_a)
    wait_for(lambda: pop_a.sync.snapshot()["published"].get("punch"), "pop-a publishing with its login")
    time.sleep(2.0)
    assert not pop_b.sync.connected and not pop_b.punched()
    assert pop_b.metrics()[("anycast_edge_fleet_connected", ())] == 0
    logged = "\n".join(record.getMessage() + " " + str(record.exc_info or "") for record in caplog.records)
    assert "uthorization" in logged                                   # the refusal is said ...
    for secret in (wrong, *LOGINS.values()):
        assert secret not in logged                                   # ... never the password
        assert secret not in repr(pop_a.config) + repr(pop_b.config)
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % pop_b.port, timeout=5) as answer:
        assert wrong.encode() not in answer.read()
