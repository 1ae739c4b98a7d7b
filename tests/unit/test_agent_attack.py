"""The agent's attack-mode state machine (agent/anycast_edge_agent/attack.py: Hysteresis) and its
configuration. Pure: readings are (time, counters) as the controller takes them every 0.25 s."""

from __future__ import annotations

import importlib

import pytest

importlib.import_module("a2s_responder")  # puts agent/ on sys.path (see its docstring)

from anycast_edge_agent import attack  # noqa: E402  pylint: disable=wrong-import-position
from anycast_edge_agent import config as agent_config  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi  # noqa: E402  pylint: disable=wrong-import-position

TICK = attack.TICK_SEC
DETECTION = attack.Detection(unverified_packets_per_sec=1000, enter_after_sec=3, leave_after_sec=10)


def counts(unverified, admitted=0, dropped=0):
    return attack.Counts(unverified, unverified * 100, admitted, dropped, 0)


def drive(machine, rates, start=100.0, total=0, tick=TICK):
    """Feed one reading per tick at the given unverified rates (packets/s); returns
    [(time, Transition)] and the last (time, total)."""
    made = []
    now = start
    machine.feed(now, counts(total))
    for rate in rates:
        now += tick
        total += int(rate * tick)
        transition = machine.feed(now, counts(total))
        if transition is not None:
            made.append((now, transition))
    return made, (now, total)


def test_a_flood_above_the_threshold_enters_after_the_configured_seconds_not_before():
    machine = attack.Hysteresis(DETECTION)
    made, (now, total) = drive(machine, [50000] * 11)                 # 2.75 s above: not yet
    assert made == [] and machine.under_attack is False
    made, dummy = drive(machine, [50000] * 4, start=now, total=total)
    assert len(made) == 1
    at, transition = made[0]
    assert transition.under_attack is True and transition.direction == "enter"
    # on the reading that completes 3 s above: the run started with the first interval above,
    # 12 readings of 12,500 packets
    assert at == pytest.approx(103.0) and transition.seconds == pytest.approx(3.0)
    assert transition.counts.unverified_packets == 12 * 12500 and transition.rate == pytest.approx(50000)
    # and stays under attack while the flood goes on
    assert drive(machine, [50000] * 40, start=at, total=total + 12500)[0] == []


def test_it_leaves_after_the_quiet_period_and_a_single_quiet_reading_does_not_count():
    machine = attack.Hysteresis(DETECTION, under_attack=True)
    # quiet 9.75 s, one loud reading, quiet again: the loud one restarts the quiet period
    made, (now, total) = drive(machine, [10] * 39 + [50000] + [10] * 39)
    assert made == [] and machine.under_attack is True
    made, dummy = drive(machine, [10] * 2, start=now, total=total)
    assert len(made) == 1 and made[0][1].direction == "leave"
    assert made[0][1].seconds == pytest.approx(10.0)


def test_the_threshold_itself_is_quiet_and_pulses_shorter_than_the_entry_time_never_enter():
    machine = attack.Hysteresis(DETECTION)
    assert drive(machine, [1000] * 100)[0] == []                       # at the threshold: quiet
    pulses = ([50000] * 8 + [0] * 4) * 10                              # 2 s on, 1 s off
    assert drive(machine, pulses)[0] == [] and machine.under_attack is False


def test_enter_after_zero_enters_on_the_first_loud_reading():
    machine = attack.Hysteresis(attack.Detection(1000, 0, 5))
    made, dummy = drive(machine, [0, 0, 2000])
    assert [transition.direction for dummy, transition in made] == ["enter"]
    assert made[0][1].seconds == pytest.approx(TICK)


def test_counters_that_go_down_start_over_instead_of_reading_a_flood():
    """The maps were recreated (a program upgrade): the first reading after it is no rate."""
    machine = attack.Hysteresis(attack.Detection(1000, 0, 5))
    machine.feed(1.0, counts(10**9))
    assert machine.feed(1.25, counts(5)) is None and machine.rate is None
    assert machine.feed(1.5, counts(10)) is None and machine.rate == pytest.approx(20)
    # and the very first reading has nothing to compare with
    fresh = attack.Hysteresis(attack.Detection(1000, 0, 5))
    assert fresh.feed(1.0, counts(10**9)) is None and fresh.under_attack is False


def test_the_counts_of_the_run_are_reported():
    machine = attack.Hysteresis(attack.Detection(1000, 1, 5))
    machine.feed(0.0, attack.Counts(100, 1000, 7, 3, 50))
    machine.feed(0.5, attack.Counts(2100, 21000, 107, 1003, 60))
    transition = machine.feed(1.0, attack.Counts(4100, 41000, 207, 2003, 70))
    assert transition.counts == attack.Counts(4000, 40000, 200, 2000, 20) and transition.seconds == 1.0


def test_per_cpu_buckets_are_summed():
    per_cpu = [abi.ADMISSION_BUCKET.pack(cpu, 9, 9, 10 + cpu, 1000, 3, 5, 7) for cpu in range(4)]
    assert attack.sum_admission(per_cpu) == attack.Counts(46, 4000, 12, 20, 28)


# --- configuration -----------------------------------------------------------------------------

BASE = {"iface": "eth1", "tunnel_address": "10.0.0.1", "listen_address": "127.0.0.1"}
SERVICE = {"name": "cs2", "id": 7, "address": "198.51.100.10", "protocol": "udp", "port": 27015, "probe": "none"}


def test_a_service_without_attack_settings_gets_rules_defaults():
    config = agent_config.parse(dict(BASE, services=[SERVICE]))
    service = config.services[0]
    assert service.attack_mode == "auto"
    assert service.attack_detection == {"unverified_packets_per_sec": 5000, "enter_after_sec": 3, "leave_after_sec": 60}
    assert attack.Detection(**service.attack_detection) == attack.Detection()


def test_only_auto_services_are_watched():
    services = [dict(SERVICE, id=index + 1, name=mode, port=27015 + index, attack_mode=mode)
                for index, mode in enumerate(abi.ATTACK_MODES)]
    config = agent_config.parse(dict(BASE, services=services))
    controller = attack.AttackController(config.services, edge_maps=None)
    assert [watched.service.name for watched in controller.services] == ["auto"]


@pytest.mark.parametrize("change, message", [
    ({"attack_mode": "on"}, r"services\[0\].attack_mode: one of auto, always, never, not 'on'"),
    ({"attack_detection": {"unverified_pps": 5}}, r"services\[0\].attack_detection: unknown settings: unverified_pps"),
    ({"attack_detection": {"leave_after_sec": 0}}, r"services\[0\].attack_detection.leave_after_sec: must be > 0"),
    ({"attack_detection": {"enter_after_sec": -1}}, r"services\[0\].attack_detection.enter_after_sec: must be > 0"),
    ({"attack_detection": [1]}, r"services\[0\].attack_detection: must be a mapping"),
])
def test_bad_attack_settings_name_the_setting(change, message):
    with pytest.raises(agent_config.ConfigError, match=message):
        agent_config.parse(dict(BASE, services=[dict(SERVICE, **change)]))
