"""The agent's attack-mode controller, as a real agent process on the real object's pinned maps.

The program is loaded from build/xdp_edge.o and its maps pinned on a private bpffs as
xdp_program pins them; the test plays XDP's part by writing edge_admission's per-CPU counters the
way the program counts them (each CPU its own slot, only ever growing), at a flood's rate, and
watches what the agent (its own Agent class: the attack-mode thread and the exporter's HTTP server,
in this process) writes to edge_attack_state, logs and exports.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

# Imported for its side effect: it puts agent/ on sys.path (see its docstring).
import a2s_responder  # noqa: F401  pylint: disable=unused-import
from anycast_edge_agent import config as agent_config
from anycast_edge_agent import main as agent_main
from helpers.background import BackgroundLoop
from helpers.bpffs import private_bpffs

from ansible_collections.anycast.edge.plugins.module_utils import _bpf
from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _pins

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF maps and bpffs need root")

IFACE = "uplink0"
AUTO, ALWAYS, NEVER = 11, 12, 13
THRESHOLD = 1000           # unverified packets per second
ENTER_SEC, LEAVE_SEC = 1, 2
FLOOD_PPS = 20000
# What the agent must never touch: the states of the services the operator decides.
OPERATOR_STATES = {ALWAYS: abi.ATTACK_STATE.pack(0, 12345), NEVER: abi.ATTACK_STATE.pack(1, 777)}


@pytest.fixture
def pinned(xdp_edge_object, tmp_path):
    """The program and its maps pinned as xdp_program pins them, on a private bpffs."""
    with private_bpffs(tmp_path / "bpffs") as folder:
        mount_point = str(folder)
        obj = _bpf.BpfObject.open(xdp_edge_object)
        try:
            obj.load()
            obj.program("xdp_edge").pin(_pins.program_pin_path(mount_point, IFACE))
            for bpf_map in obj.maps():
                bpf_map.pin(_pins.map_pin_path(mount_point, IFACE, bpf_map.name))
            maps = dict((bpf_map.name, bpf_map) for bpf_map in obj.maps())
            # The services as edge_rules writes them: the exporter reads their attack mode from here.
            for service_id, mode in ((AUTO, "auto"), (ALWAYS, "always"), (NEVER, "never")):
                maps["edge_services"].update(abi.pack_service_key("udp", "198.51.100.10", 27000 + service_id),
                                             abi.pack_service_value(service_id, "10.1.0.10", game_protocol="source",
                                                                    attack_mode=mode))
            for service_id, state in OPERATOR_STATES.items():
                maps["edge_attack_state"].update(abi.U32.pack(service_id), state)
            yield mount_point, maps
        finally:
            obj.close()
            shutil.rmtree(os.path.join(mount_point, IFACE), ignore_errors=True)


class FakeDataPlane(BackgroundLoop):
    """Counts unverified traffic into edge_admission as XDP does: per CPU, only growing."""

    interval = 0.01

    def __init__(self, admission_map):
        super().__init__()
        self.map = admission_map
        self.cpus = _bpf.num_possible_cpus()
        self.totals = {}
        self.rates = {}
        self.lock = threading.Lock()
        self.last = None

    def set_rate(self, service_id, packets_per_sec):
        with self.lock:
            self.rates[service_id] = packets_per_sec

    def _write(self, service_id, total):
        per_cpu = []
        for cpu in range(self.cpus):
            share = total // self.cpus + (1 if cpu < total % self.cpus else 0)
            admitted = share // 20
            per_cpu.append(abi.ADMISSION_BUCKET.pack(0, 0, 0, share, share * 60, admitted, share - admitted, cpu))
        self.map.update_percpu(abi.U32.pack(service_id), per_cpu)

    def step(self):
        now = time.monotonic()
        with self.lock:
            for service_id, rate in self.rates.items():
                self.totals[service_id] = self.totals.get(service_id, 0) + int(rate * (now - (self.last or now)))
                self._write(service_id, self.totals[service_id])
        self.last = now


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


DETECTION = {"unverified_packets_per_sec": THRESHOLD, "enter_after_sec": ENTER_SEC, "leave_after_sec": LEAVE_SEC}


@pytest.fixture
def agent(pinned):
    """Starts an Agent (the service's own class: its attack-mode thread, its exporter on a free
    port) on the pinned maps; call it again for a restart. Stopped at the end."""
    pin_root, dummy = pinned
    running = []

    def start():
        config = agent_config.parse({
            "iface": IFACE, "pin_root": pin_root, "tunnel_address": "10.0.0.1", "listen_address": "127.0.0.1",
            "listen_port": free_port(), "bird_manage": False, "check_dataplane": False,
            "services": [{"name": name, "id": service_id, "address": "198.51.100.10", "protocol": "udp",
                          "port": 27000 + service_id, "backend": "game1", "probe": "none", "attack_mode": mode,
                          "attack_detection": DETECTION}
                         for name, service_id, mode in (("cs2", AUTO, "auto"), ("op-always", ALWAYS, "always"),
                                                        ("op-never", NEVER, "never"))]})
        instance = agent_main.Agent(config)
        instance.metrics_server, dummy = instance.serve_metrics()
        instance.start()
        running.append(instance)
        return instance, instance.metrics_server.server_address[1]

    yield start
    for instance in running:
        stop(instance)


def stop(instance):
    if not instance.stopping.is_set():
        instance.stop()
        instance.metrics_server.shutdown()
        instance.metrics_server.server_close()


def wait_until(predicate, what, timeout=15.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(interval)
    raise AssertionError("timed out waiting for %s" % what)


def state(maps, service_id):
    return abi.ATTACK_STATE.unpack(maps["edge_attack_state"].lookup(abi.U32.pack(service_id)))


def scrape(port):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def transition_lines(caplog, service):
    return [record.getMessage() for record in caplog.records
            if record.name == "anycast_edge_agent.attack" and record.getMessage().startswith("service %s " % service)]


def test_a_flood_puts_the_auto_service_under_attack_within_2s_and_the_quiet_takes_it_out(pinned, agent, caplog):
    caplog.set_level(logging.INFO, logger="anycast_edge_agent")
    dummy, maps = pinned
    dummy, port = agent()
    with FakeDataPlane(maps["edge_admission"]) as data_plane:
        # Below the threshold for longer than the entry time: nothing happens.
        data_plane.set_rate(AUTO, THRESHOLD // 2)
        time.sleep(ENTER_SEC + 1)
        assert state(maps, AUTO)[0] == 0

        # The flood: every service gets it, only the auto one is the agent's to flip.
        flood_started = time.monotonic()
        flood_started_ns = time.monotonic_ns()
        for service_id in (AUTO, ALWAYS, NEVER):
            data_plane.set_rate(service_id, FLOOD_PPS)
        entered = wait_until(lambda: state(maps, AUTO)[0] == 1, "attack mode on", timeout=ENTER_SEC + 5)
        under_attack, since_ns = state(maps, AUTO)
        # not before the configured seconds (less one reading), within 2 s after them
        assert ENTER_SEC - 0.3 <= entered - flood_started <= ENTER_SEC + 2, entered - flood_started
        assert flood_started_ns < since_ns <= time.monotonic_ns()      # CLOCK_MONOTONIC, as XDP reads it

        # The flood stops: out after the quiet period, not before.
        for service_id in (AUTO, ALWAYS, NEVER):
            data_plane.set_rate(service_id, 0)
        flood_stopped = time.monotonic()
        left = wait_until(lambda: state(maps, AUTO)[0] == 0, "attack mode off", timeout=LEAVE_SEC + 5)
        assert LEAVE_SEC - 0.3 <= left - flood_stopped <= LEAVE_SEC + 2, left - flood_stopped
        assert state(maps, AUTO)[1] > since_ns
        totals = dict(data_plane.totals)

    # The operator's services were never written, flood or not.
    for service_id, raw in OPERATOR_STATES.items():
        assert maps["edge_attack_state"].lookup(abi.U32.pack(service_id)) == raw

    # One line per transition, with the counts that caused it.
    lines = transition_lines(caplog, "cs2")
    assert len(lines) == 2, lines
    assert lines[0].startswith("service cs2 (id 11) under attack: above 1000 unverified packets/s for ")
    assert "admitted" in lines[0] and "dropped" in lines[0]
    assert lines[1].startswith("service cs2 (id 11) attack over: at or below 1000 unverified packets/s for ")
    assert transition_lines(caplog, "op-always") == transition_lines(caplog, "op-never") == []

    # The exporter: attack mode as XDP applies it, transitions, the admission counters, the cause.
    samples = scrape(port)

    def value(name, **labels):
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("anycast_edge_attack_mode", service="cs2", service_id=str(AUTO), mode="auto") == 0
    assert value("anycast_edge_attack_mode", service="op-always", service_id=str(ALWAYS), mode="always") == 1
    assert value("anycast_edge_attack_mode", service="op-never", service_id=str(NEVER), mode="never") == 0
    assert value("anycast_edge_attack_transitions_total", service="cs2", direction="enter") == 1
    assert value("anycast_edge_attack_transitions_total", service="cs2", direction="leave") == 1
    assert ("anycast_edge_attack_transitions_total", (("direction", "enter"), ("service", "op-always"))) not in samples
    assert value("anycast_edge_attack_threshold_packets_per_second", service="cs2") == THRESHOLD
    assert value("anycast_edge_attack_last_transition_packets_per_second", service="cs2", direction="leave") == 0
    assert value("anycast_edge_unverified_packets_total", service="cs2", service_id=str(AUTO)) == totals[AUTO]
    assert value("anycast_edge_unverified_bytes_total", service="cs2", service_id=str(AUTO)) == totals[AUTO] * 60
    admitted = value("anycast_edge_admitted_packets_total", service="cs2", service_id=str(AUTO))
    dropped = value("anycast_edge_unverified_dropped_packets_total", service="cs2", service_id=str(AUTO))
    assert admitted + dropped == totals[AUTO] and 0 < admitted < dropped
    assert value("anycast_edge_verified_packets_total", service="cs2", service_id=str(AUTO)) == \
        sum(range(_bpf.num_possible_cpus()))


def test_the_state_under_the_flood_is_visible_and_a_restarted_agent_keeps_it(pinned, agent, caplog):
    """While the flood lasts the exporter says so; an agent restarted during the flood starts from
    the state in the map (no window in which the flood passes), and flips nothing."""
    dummy, maps = pinned
    ncpu = _bpf.num_possible_cpus()
    maps["edge_verify_stats"].update_percpu(abi.U32.pack(abi.VERIFY_PROOFS.index("cookie")),
                                            [abi.U64.pack(3)] * ncpu)
    # SYN authentication's counters (issue 14): RSTs that verified a source, SYN-ACKs sent, out-of-state drops.
    maps["edge_verify_stats"].update_percpu(abi.U32.pack(abi.VERIFY_PROOFS.index("syn_auth")),
                                            [abi.U64.pack(2)] * ncpu)
    for reason, packets in (("tx_syn_auth", 5), ("drop_syn_auth_verified", 2), ("drop_tcp_unverified", 7)):
        maps["edge_reason_stats"].update_percpu(abi.U32.pack(abi.REASON_INDEX[reason]),
                                                [abi.EDGE_COUNTER.pack(packets, 60 * packets)] * ncpu)
    with FakeDataPlane(maps["edge_admission"]) as data_plane:
        data_plane.set_rate(AUTO, FLOOD_PPS)
        caplog.set_level(logging.INFO, logger="anycast_edge_agent")
        first, port = agent()
        wait_until(lambda: state(maps, AUTO)[0] == 1, "attack mode on", timeout=ENTER_SEC + 5)
        samples = scrape(port)
        assert samples[("anycast_edge_attack_mode", (("mode", "auto"), ("service", "cs2"),
                                                     ("service_id", str(AUTO))))] == 1
        assert samples[("anycast_edge_attack_unverified_packets_per_second", (("service", "cs2"),))] > THRESHOLD
        assert samples[("anycast_edge_verified_sources_total", (("proof", "cookie"),))] == \
            3 * _bpf.num_possible_cpus()
        assert samples[("anycast_edge_verified_sources_total", (("proof", "syn_auth"),))] == 2 * ncpu
        for reason, verdict, packets in (("tx_syn_auth", "tx", 5), ("drop_syn_auth_verified", "drop", 2),
                                         ("drop_tcp_unverified", "drop", 7)):
            assert samples[("anycast_edge_packets_total", (("reason", reason), ("verdict", verdict)))] == \
                packets * ncpu
        since_ns = state(maps, AUTO)[1]

        # A new agent during the flood (the first one stopped): it adopts the state, writes nothing.
        stop(first)
        caplog.clear()
        dummy, port2 = agent()
        time.sleep(ENTER_SEC + LEAVE_SEC)
        assert state(maps, AUTO) == (1, since_ns)
        assert transition_lines(caplog, "cs2") == []
        samples = scrape(port2)
        assert samples[("anycast_edge_attack_transitions_total", (("direction", "enter"), ("service", "cs2")))] == 0
