"""edge_rules against the real maps of build/xdp_edge.o, through real ansible-playbook runs.

Each test loads the compiled program, pins it and its maps on a private bpffs (mounted on a
temporary folder, never the host's /sys/fs/bpf) in the layout xdp_program makes
(<pin_root>/<iface>/program, <pin_root>/<iface>/maps/<name>), then runs the module the way a
user does: ansible-playbook, connection local, with --check and --diff where it matters. The
maps are read back with the libbpf binding and decoded independently of _rules.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import raw

from helpers.bpffs import private_bpffs
from helpers.playbook import recap_counts, run_playbook
from ansible_collections.anycast.edge.plugins.module_utils import _bpf
from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _rules
from ansible_collections.anycast.edge.plugins.modules import edge_rules
from ansible_collections.anycast.edge.plugins.module_utils._a2s_cookie import tai_offset_ns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (BPF maps, bpffs)")

VENV_BIN = Path(sys.executable).parent
IFACE = "uplink0"
RULE_MAP_NAMES = _rules.RULE_MAPS
LEARNED_MAPS = ("edge_sources", "edge_punches", "edge_a2s_cache", "edge_service_stats", "edge_reason_stats")

RULES = {
    "tunnel_address": "10.0.0.1",
    "anycast_prefixes": ["198.51.100.0/24"],
    "backends": ["10.1.0.10", "10.1.0.11"],
    "services": [
        {"name": "cs2-main", "id": 17, "address": "198.51.100.10", "protocol": "udp", "port": 27015,
         "backend_address": "10.1.0.10", "a2s_cache": True, "a2s_max_age_sec": 20},
        {"name": "tf2", "id": 30, "address": "198.51.100.11", "protocol": "udp", "port": 27015,
         "backend_address": "10.1.0.11", "a2s_cache": True},
        {"name": "cs2-tv", "id": 18, "address": "198.51.100.10", "protocol": "udp", "port": 27020,
         "backend_address": "10.1.0.10", "rate_limit": {"packets_per_sec": 50}},
        {"name": "ping", "id": 19, "address": "198.51.100.10", "protocol": "icmp", "backend_address": "10.1.0.10"},
    ],
    "allow": ["192.0.2.0/28"],
    "deny": ["100.64.0.0/10", "233.252.0.5/32"],
    "rate_limits": {"udp": {"packets_per_sec": 500, "bytes_per_sec": 1000000}, "icmp": {"packets_per_sec": 10}},
    "ban_sec": 30,
    "punch_idle_sec": 90,
    "a2s_cookie_epoch_sec": 20,
}


def changed_rules():
    """RULES after a typical edit: one deny more, the allow gone, tf2 renumbered, cs2-tv's
    limit raised, a new backend for a new service."""
    rules = json.loads(json.dumps(RULES))
    rules["deny"].append("203.0.113.0/24")
    rules["allow"] = []
    rules["backends"].append("10.1.0.12")
    rules["services"][1]["id"] = 31
    rules["services"][2]["rate_limit"] = {"packets_per_sec": 80}
    rules["services"].append({"name": "rust", "id": 40, "address": "198.51.100.12", "protocol": "udp",
                              "port": 28015, "backend_address": "10.1.0.12"})
    return rules


# --- the POP: program and maps pinned on a private bpffs ---------------------------------------

@pytest.fixture(scope="session")
def bpffs(tmp_path_factory):
    with private_bpffs(tmp_path_factory.mktemp("edge-rules-bpffs")) as folder:
        yield folder


class Pop:
    """The loaded program with its pins, as xdp_program would leave them."""

    def __init__(self, object_path, pin_root):
        self.pin_root = pin_root
        self.iface = IFACE
        self.obj = _bpf.BpfObject.open(object_path)
        self.obj.load()
        self.program = self.obj.program("xdp_edge")
        self.program.pin(str(pin_root / IFACE / "program"))
        for bpf_map in self.obj.maps():
            bpf_map.pin(str(pin_root / IFACE / "maps" / bpf_map.name))

    def map(self, name):
        return self.obj.map(name)

    def entries(self, name):
        bpf_map = self.map(name)
        if bpf_map.type in (_bpf.BPF_MAP_TYPE_ARRAY, _bpf.BPF_MAP_TYPE_PERCPU_ARRAY):
            return dict((key, bpf_map.lookup(key)) for key in bpf_map.keys())
        return dict(bpf_map.lookup_batch(chunk_size=8192))

    def snapshot(self, names=RULE_MAP_NAMES + LEARNED_MAPS):
        return dict((name, self.entries(name)) for name in names)

    def verdict(self, frame):
        return self.program.test_run(frame).retval

    def close(self):
        shutil.rmtree(self.pin_root, ignore_errors=True)   # unlink the pins (bpffs allows it)
        self.obj.close()


@pytest.fixture
def pop(xdp_edge_object, bpffs):
    instance = Pop(xdp_edge_object, bpffs / uuid.uuid4().hex[:12])
    yield instance
    instance.close()


# --- running the module as a user does -----------------------------------------------------------

class Run:
    def __init__(self, proc, result):
        self.proc = proc
        self.result = result
        self.stdout = proc.stdout

    @property
    def recap(self):
        counts = recap_counts(self.stdout)
        if "localhost" not in counts:
            raise AssertionError("no PLAY RECAP in:\n" + self.stdout)
        return counts["localhost"]


def run_edge_rules(pop, tmp_path, rules, *args, expect_failure=False, extra=None):
    """Run anycast.edge.edge_rules once through ansible-playbook; the registered result is
    written to a file by a second task (which runs even under --check)."""
    work = tmp_path / uuid.uuid4().hex[:8]
    work.mkdir()
    module_args = dict(rules, pin_root=str(pop.pin_root), iface=pop.iface, **(extra or {}))
    (work / "args.json").write_text(json.dumps({"edge_rules_args": module_args}))
    task = dict(("%s" % key, "{{ edge_rules_args[%r] }}" % key) for key in module_args)
    playbook = [{
        "name": "Converge the rule maps",
        "hosts": "localhost",
        "gather_facts": False,
        "tasks": [
            {"name": "edge_rules", "anycast.edge.edge_rules": task, "register": "edge_rules_result",
             "ignore_errors": expect_failure},
            {"name": "keep the result", "ansible.builtin.copy": {
                "content": "{{ edge_rules_result | to_json }}", "dest": str(work / "result.json"), "mode": "0600"},
             "check_mode": False, "diff": False, "changed_when": False},
        ],
    }]
    (work / "playbook.yml").write_text(yaml.safe_dump(playbook))
    proc = run_playbook(work / "playbook.yml", work, "-e", "@%s" % (work / "args.json"), *args,
                        extra_env={"ANSIBLE_HOME": str(work / "ansible-home")}, timeout=600, cwd=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((work / "result.json").read_text())
    if not expect_failure:
        assert not result.get("failed"), result.get("msg")
    return Run(proc, result)


# --- decoding the maps (independently of _rules) --------------------------------------------------

def ip(raw_bytes):
    return ".".join(str(byte) for byte in raw_bytes)


def cidrs(entries):
    result = set()
    for key in entries:
        length, address = struct.unpack("<I4s", key)
        result.add("%s/%d" % (ip(address), length))
    return result


def by_service(entries, fields):
    """{(protocol, address, port): fields(the unpacked struct service_value)} of edge_services."""
    decoded = {}
    protocols = {6: "tcp", 17: "udp", 1: "icmp"}
    for key, value in entries.items():
        address, port_raw, proto = struct.unpack("<4s2sBx", key)
        decoded[(protocols[proto], ip(address), struct.unpack("!H", port_raw)[0])] = fields(
            abi.SERVICE_VALUE.unpack(value))
    return decoded


def services(entries):
    """{(protocol, address, port): (id, backend, flags, A2S max age ms, limit pps, limit bps)}."""
    return by_service(entries, lambda value: (value[0], ip(value[1])) + value[2:6])


def defence(entries):
    """{(protocol, address, port): (admission pps, admission bps, game protocol, attack mode)}."""
    return by_service(entries, lambda value: value[6:8] + (abi.GAME_PROTOCOLS[value[8]], abi.ATTACK_MODES[value[9]]))


def config(entries):
    fields = struct.unpack("<4sIQQ2Q8Q2QqQI4x", entries[struct.pack("<I", 0)])
    return {"tunnel": ip(fields[0]), "ban_sec": fields[1], "punch_idle_ns": fields[2], "cookie_epoch_ns": fields[3],
            "cookie_key": fields[4:6], "limits": [fields[6 + 2 * i:8 + 2 * i] for i in range(4)],
            "cookie_key_previous": fields[14:16], "cookie_tai_offset_ns": fields[16],
            "verified_idle_ns": fields[17], "nr_cpus": fields[18]}


CACHE = abi.SERVICE_F_A2S_CACHE | abi.SERVICE_F_A2S_SNOOP


def rule_steps(result):
    """The result's steps on the rule maps, without those on the maps derived from them (the lists
    derived from deny/allow, and edge_dst_pass from the prefixes and services)."""
    return [step for step in result["steps"] if step["map"] not in _rules.DERIVED_MAPS + (_rules.DEST_PASS_MAP,)]


def dest_pass_writes(result):
    return sum(step["count"] for step in result["steps"] if step["map"] == _rules.DEST_PASS_MAP)


def rule_writes(result):
    return sum(step["count"] for step in rule_steps(result))


def derived_lists(pop):
    """{edge_src_filter: all its values (bytes), edge_src_hosts: entries} as pinned."""
    return {_rules.SOURCE_FILTER_MAP: pop.map(_rules.SOURCE_FILTER_MAP).array_bytes(),
            _rules.SOURCE_HOSTS_MAP: pop.entries(_rules.SOURCE_HOSTS_MAP)}


# --- tests -------------------------------------------------------------------------------------

def test_converges_the_maps_and_a_rerun_changes_nothing(pop, tmp_path):
    first = run_edge_rules(pop, tmp_path, RULES)
    assert first.result["changed"] is True and first.recap["changed"] == 1
    assert first.result["maps"]["edge_deny_v4"] == {"added": 2, "changed": 0, "removed": 0}
    assert first.result["maps"]["edge_services"] == {"added": 4, "changed": 0, "removed": 0}
    assert rule_writes(first.result) == 2 + 1 + 2 + 4 + 1 + 1      # deny, config, backends, services, anycast, allow
    assert dest_pass_writes(first.result) == abi.SRC_FILTER_ENTRIES  # the first write: every word has a /24 passed
    assert [step["name"] for step in first.result["steps"]] == [
        "src_hosts_tighten", "src_filter_tighten", "deny_add", "backends_add", "config", "services_add", "anycast_add",
        "allow_add", "src_filter_final", "dst_pass_final"]
    # what XDP reads of the lists: derived from the record, and it drops what the record denies
    assert derived_lists(pop) == _rules.source_list_entries(pop.entries("edge_deny_v4"), pop.entries("edge_allow_v4"))
    # and the /24s nothing of which is ours, from the prefixes and the services
    assert pop.map(_rules.DEST_PASS_MAP).array_bytes() == _rules.dest_pass_entries(
        pop.entries("edge_anycast_v4"), pop.entries("edge_services"))
    # 233.252.0.5/32 and 192.0.2.0/28: a bitmap each
    assert first.result["maps"]["edge_src_hosts"] == {"added": 2, "changed": 0, "removed": 0}
    for source, verdict in (("100.64.7.7", _bpf.XDP_DROP), ("100.128.0.1", _bpf.XDP_PASS),
                            ("233.252.0.5", _bpf.XDP_DROP), ("233.252.0.6", _bpf.XDP_PASS)):
        assert pop.verdict(frame_from(source)) == verdict, source
    assert first.result["a2s_cookie_key_generated"] is True
    assert first.result["elapsed_ms"] > 0 and set(first.result["timing_ms"]) >= {"params", "read", "write"}

    assert cidrs(pop.entries("edge_deny_v4")) == {"100.64.0.0/10", "233.252.0.5/32"}
    assert cidrs(pop.entries("edge_allow_v4")) == {"192.0.2.0/28"}
    assert cidrs(pop.entries("edge_anycast_v4")) == {"198.51.100.0/24"}
    assert set(ip(key) for key in pop.entries("edge_backends")) == {"10.1.0.10", "10.1.0.11"}
    assert services(pop.entries("edge_services")) == {
        ("udp", "198.51.100.10", 27015): (17, "10.1.0.10", CACHE, 20000, 0, 0),
        ("udp", "198.51.100.11", 27015): (30, "10.1.0.11", CACHE, 30000, 0, 0),
        ("udp", "198.51.100.10", 27020): (18, "10.1.0.10", 0, 0, 50, 0),
        ("icmp", "198.51.100.10", 0): (19, "10.1.0.10", 0, 0, 0, 0),
    }
    cfg = config(pop.entries("edge_config"))
    assert cfg["tunnel"] == "10.0.0.1" and cfg["ban_sec"] == 30
    assert cfg["punch_idle_ns"] == 90 * 10**9 and cfg["cookie_epoch_ns"] == 20 * 10**9
    assert cfg["limits"] == [(0, 0), (500, 1000000), (10, 0), (0, 0)]      # tcp, udp, icmp, other
    assert cfg["cookie_key"] != (0, 0)
    # the flood defence's defaults: 10 minutes of verified idle time, the budgets shared among the
    # CPUs libbpf counts (the per-CPU maps' slots), every service auto with the default budget
    assert cfg["verified_idle_ns"] == 600 * 10**9 and cfg["nr_cpus"] == _bpf.num_possible_cpus()
    assert set(defence(pop.entries("edge_services")).values()) == {(2000, 2000000, "none", "auto")}

    second = run_edge_rules(pop, tmp_path, RULES)
    assert second.result["changed"] is False and second.recap["changed"] == 0
    assert second.result["writes"] == 0 and second.result["steps"] == []
    assert second.result["a2s_cookie_key_generated"] is False
    assert config(pop.entries("edge_config"))["cookie_key"] == cfg["cookie_key"]


def syn_auth_modes(entries):
    """{(protocol, address, port): syn_auth name} of edge_services entries."""
    modes = {}
    for key, value in entries.items():
        address, port_raw, proto = abi.SERVICE_KEY.unpack(key)
        modes[({6: "tcp", 17: "udp", 1: "icmp"}[proto], ip(address), struct.unpack("!H", port_raw)[0])] = \
            abi.SYN_AUTH_MODES[abi.SERVICE_VALUE.unpack(value)[10]]
    return modes


def test_syn_auth_of_a_tcp_service_is_converged_idempotently(pop, tmp_path):
    """syn_auth lands in the TCP service's entry (auto by default; never for the other protocols), a
    rerun changes nothing, and changing it rewrites that entry alone (check mode first)."""
    rules = json.loads(json.dumps(RULES))
    rules["services"].append({"name": "rcon", "id": 40, "address": "198.51.100.10", "protocol": "tcp", "port": 27015,
                              "backend_address": "10.1.0.10"})
    assert run_edge_rules(pop, tmp_path, rules).result["changed"] is True
    modes = syn_auth_modes(pop.entries("edge_services"))
    assert modes.pop(("tcp", "198.51.100.10", 27015)) == "auto"
    assert set(modes.values()) == {"never"}
    assert run_edge_rules(pop, tmp_path, rules).result["changed"] is False

    before = pop.snapshot(RULE_MAP_NAMES)
    rules["services"][-1]["syn_auth"] = "always"
    checked = run_edge_rules(pop, tmp_path, rules, "--check", "--diff")
    assert checked.result["changed"] is True and pop.snapshot(RULE_MAP_NAMES) == before
    assert "syn_auth always" in checked.stdout
    made = run_edge_rules(pop, tmp_path, rules)
    assert made.result["maps"]["edge_services"] == {"added": 0, "changed": 1, "removed": 0}
    assert syn_auth_modes(pop.entries("edge_services"))[("tcp", "198.51.100.10", 27015)] == "always"
    again = run_edge_rules(pop, tmp_path, rules)
    assert again.result["changed"] is False and again.result["writes"] == 0


def test_flood_defence_settings_are_written_and_one_change_rewrites_one_entry(pop, tmp_path):
    """game_protocol, attack_mode and the admission budget land in their service's entry,
    verified_idle_sec in edge_config; a rerun changes nothing; changing one service's field
    rewrites exactly that entry (check mode first: announced, not made), and the idle time
    edge_config alone."""
    rules = json.loads(json.dumps(RULES))
    rules["services"][0].update(game_protocol="source", admission={"packets_per_sec": 800})
    rules["services"][1].update(game_protocol="goldsrc", attack_mode="always",
                                admission={"packets_per_sec": 0, "bytes_per_sec": 0})
    rules["services"][3].update(attack_mode="never")
    rules["verified_idle_sec"] = 900
    first = run_edge_rules(pop, tmp_path, rules)
    assert first.result["changed"] is True
    assert defence(pop.entries("edge_services")) == {
        ("udp", "198.51.100.10", 27015): (800, 2000000, "source", "auto"),
        ("udp", "198.51.100.11", 27015): (0, 0, "goldsrc", "always"),
        ("udp", "198.51.100.10", 27020): (2000, 2000000, "none", "auto"),
        ("icmp", "198.51.100.10", 0): (2000, 2000000, "none", "never"),
    }
    cfg = config(pop.entries("edge_config"))
    assert cfg["verified_idle_ns"] == 900 * 10**9 and cfg["nr_cpus"] == _bpf.num_possible_cpus()
    assert run_edge_rules(pop, tmp_path, rules).result["changed"] is False

    before = pop.snapshot(RULE_MAP_NAMES)
    rules["services"][2]["attack_mode"] = "always"          # cs2-tv only
    checked = run_edge_rules(pop, tmp_path, rules, "--check", "--diff")
    assert checked.result["changed"] is True and pop.snapshot(RULE_MAP_NAMES) == before
    assert "attack_mode always" in checked.stdout
    made = run_edge_rules(pop, tmp_path, rules)
    assert made.result["maps"]["edge_services"] == {"added": 0, "changed": 1, "removed": 0}
    assert made.result["writes"] == 1 and made.result["steps"] == checked.result["steps"]
    after = pop.snapshot(RULE_MAP_NAMES)
    changed_keys = [key for key in after["edge_services"] if after["edge_services"][key] != before["edge_services"][key]]
    assert changed_keys == [abi.pack_service_key("udp", "198.51.100.10", 27020)]
    assert {name: entries for name, entries in after.items() if name != "edge_services"} == \
        {name: entries for name, entries in before.items() if name != "edge_services"}

    rules["verified_idle_sec"] = 300
    idle = run_edge_rules(pop, tmp_path, rules, "--diff")
    assert [step["map"] for step in idle.result["steps"]] == ["edge_config"] and idle.result["writes"] == 1
    assert "verified_idle_sec 900" in idle.stdout and "verified_idle_sec 300" in idle.stdout
    assert config(pop.entries("edge_config"))["verified_idle_ns"] == 300 * 10**9
    assert run_edge_rules(pop, tmp_path, rules).result["changed"] is False


@pytest.mark.parametrize("service_change, message", [
    ({"admission": {"packets_per_sec": 0}}, "services[0].admission: 0 packets/s and 2000000 bytes/s: give both > 0, "
                                            "or both 0 (nothing unverified passes under attack)"),
    ({"protocol": "tcp", "a2s_cache": False, "game_protocol": "source"},
     "services[0].game_protocol: source is a udp game protocol, the service is tcp"),
    ({"game_protocol": "minecraft"}, "services[0].game_protocol: minecraft is a tcp game protocol, the service is udp"),
])
def test_a_bad_flood_defence_setting_fails_before_any_write(pop, tmp_path, service_change, message):
    rules = json.loads(json.dumps(RULES))
    rules["services"][0].update(service_change)
    before = pop.snapshot(RULE_MAP_NAMES)
    failed = run_edge_rules(pop, tmp_path, rules, expect_failure=True)
    assert failed.result["failed"] is True and failed.result["msg"] == message
    assert pop.snapshot(RULE_MAP_NAMES) == before


def test_a_minecraft_service_is_written_and_converged(pop, tmp_path):
    """game_protocol minecraft on a tcp service lands in its entry (the validator's switch); a rerun
    changes nothing; back to none rewrites that one entry."""
    rules = json.loads(json.dumps(RULES))
    rules["services"].append({"name": "mc", "id": 40, "address": "198.51.100.12", "protocol": "tcp", "port": 25565,
                              "backend_address": "10.1.0.11", "game_protocol": "minecraft"})
    assert run_edge_rules(pop, tmp_path, rules).result["changed"] is True
    assert defence(pop.entries("edge_services"))[("tcp", "198.51.100.12", 25565)][2] == "minecraft"
    assert run_edge_rules(pop, tmp_path, rules).result["changed"] is False
    rules["services"][-1]["game_protocol"] = "none"
    made = run_edge_rules(pop, tmp_path, rules)
    assert made.result["maps"]["edge_services"] == {"added": 0, "changed": 1, "removed": 0}
    assert defence(pop.entries("edge_services"))[("tcp", "198.51.100.12", 25565)][2] == "none"


KEY_N, KEY_N1 = "00112233445566778899aabbccddeeff", "8899aabbccddeeff0011223344556677"


def key_ints(text):
    return struct.unpack("<QQ", bytes.fromhex(text))


def test_the_pops_tai_offset_is_written_and_a_rerun_changes_it_only_when_it_moved(pop, tmp_path):
    """The cookie epoch is CLOCK_TAI less the POP's TAI offset (chrony sets 37 s, timesyncd 0):
    edge_rules writes the offset it reads on the POP, in whole seconds, so a rerun finds it equal
    and changes nothing. When the kernel's offset moves (a leap second: the kernel adds one;
    a daemon setting it), the config holds the old one - staged here by writing a stale value -
    and the next run puts this POP's offset back, touching edge_config only."""
    host_offset = tai_offset_ns()
    first = run_edge_rules(pop, tmp_path, RULES, extra={"cookie_keys": [KEY_N]})
    assert first.result["changed"] is True
    assert config(pop.entries("edge_config"))["cookie_tai_offset_ns"] == host_offset
    assert run_edge_rules(pop, tmp_path, RULES, extra={"cookie_keys": [KEY_N]}).result["changed"] is False

    stale = bytearray(pop.entries("edge_config")[struct.pack("<I", 0)])
    tai_at = abi.EDGE_CONFIG.size - 24   # cookie_tai_offset_ns: before verified_idle_ns and nr_cpus + pad
    stale[tai_at:tai_at + 8] = struct.pack("<q", host_offset - 10**9)     # the offset before a leap second
    pop.map("edge_config").update(struct.pack("<I", 0), bytes(stale))
    rules_before = pop.snapshot(RULE_MAP_NAMES)
    fixed = run_edge_rules(pop, tmp_path, RULES, "--diff", extra={"cookie_keys": [KEY_N]})
    assert fixed.result["changed"] is True and fixed.result["writes"] == 1
    assert [step["map"] for step in fixed.result["steps"]] == ["edge_config"]
    assert "cookie_tai_offset_sec %g" % ((host_offset - 10**9) / 1e9) in fixed.stdout
    assert "cookie_tai_offset_sec %g" % (host_offset / 1e9) in fixed.stdout
    after = pop.snapshot(RULE_MAP_NAMES)
    assert config(after["edge_config"])["cookie_tai_offset_ns"] == host_offset
    assert config(after["edge_config"])["cookie_key"] == key_ints(KEY_N)             # the key is kept
    assert {name: entries for name, entries in after.items() if name != "edge_config"} == \
        {name: entries for name, entries in rules_before.items() if name != "edge_config"}
    assert run_edge_rules(pop, tmp_path, RULES, extra={"cookie_keys": [KEY_N]}).result["changed"] is False


def assert_no_key_in(run, *keys):
    """Neither the key nor its bytes in any form anywhere in what the run printed or returned."""
    shown = run.stdout + run.proc.stderr + json.dumps(run.result)
    for key in keys:
        for form in (key, key.upper(), str(key_ints(key)[0]), str(key_ints(key)[1])):
            assert form not in shown, "a cookie key shows in the output"


def test_cookie_key_given_kept_and_hidden(pop, tmp_path):
    given = run_edge_rules(pop, tmp_path, RULES, "-vvv", "--diff", extra={"cookie_keys": [KEY_N]})
    assert given.result["changed"] is True and given.result["a2s_cookie_key_generated"] is False
    cfg = config(pop.entries("edge_config"))
    assert (cfg["cookie_key"], cfg["cookie_key_previous"]) == (key_ints(KEY_N), (0, 0))
    assert_no_key_in(given, KEY_N)
    assert "cookie_key current (set)" in given.stdout      # the diff says it is set, never what it is
    # the same key again: nothing to do, and still not shown
    again = run_edge_rules(pop, tmp_path, RULES, "-vvv", "--diff", extra={"cookie_keys": [KEY_N]})
    assert again.result["changed"] is False and again.result["writes"] == 0
    assert_no_key_in(again, KEY_N)
    # omitted afterwards: the key in the map is kept, nothing changes
    kept = run_edge_rules(pop, tmp_path, RULES)
    assert kept.result["changed"] is False
    assert config(pop.entries("edge_config"))["cookie_key"] == key_ints(KEY_N)
    # the old single-key parameter still works (an alias), hidden as well
    alias = run_edge_rules(pop, tmp_path, RULES, "-vvv", extra={"a2s_cookie_key": KEY_N})
    assert alias.result["changed"] is False
    assert_no_key_in(alias, KEY_N)


def test_cookie_keys_rotate_in_generations(pop, tmp_path):
    """N issues; rotating writes N+1 as current and keeps N as previous (still accepted); a rerun
    changes nothing; retiring N clears the previous slot. The data plane's side of this is
    tests/bpf/test_a2s.py::test_rotating_the_key_keeps_challenges_in_flight_until_the_old_generation_is_retired."""
    run_edge_rules(pop, tmp_path, RULES, extra={"cookie_keys": [KEY_N]})
    rotated = run_edge_rules(pop, tmp_path, RULES, "--diff", extra={"cookie_keys": [KEY_N1, KEY_N]})
    assert rotated.result["changed"] is True and rotated.result["maps"]["edge_config"]["changed"] == 1
    cfg = config(pop.entries("edge_config"))
    assert (cfg["cookie_key"], cfg["cookie_key_previous"]) == (key_ints(KEY_N1), key_ints(KEY_N))
    assert "cookie_key current (set, changed)" in rotated.stdout and "cookie_key previous (set)" in rotated.stdout
    assert_no_key_in(rotated, KEY_N, KEY_N1)
    assert run_edge_rules(pop, tmp_path, RULES, extra={"cookie_keys": [KEY_N1, KEY_N]}).result["changed"] is False
    retired = run_edge_rules(pop, tmp_path, RULES, "--diff", extra={"cookie_keys": [KEY_N1]})
    assert retired.result["changed"] is True
    cfg = config(pop.entries("edge_config"))
    assert (cfg["cookie_key"], cfg["cookie_key_previous"]) == (key_ints(KEY_N1), (0, 0))
    assert "cookie_key previous (unset)" in retired.stdout
    assert_no_key_in(retired, KEY_N, KEY_N1)


@pytest.mark.parametrize("keys, message", [
    ([KEY_N, KEY_N[:-2] + "zz"], "cookie_keys[1]: must be 32 hex digits (16 bytes); got a character that is not a hex"),
    ([KEY_N1, KEY_N, "0f" * 16], "cookie_keys: 3 keys given; the data plane holds 2 generations"),
])
def test_a_bad_cookie_key_is_refused_before_the_maps_are_touched_and_not_shown(pop, tmp_path, keys, message):
    run_edge_rules(pop, tmp_path, RULES, extra={"cookie_keys": [KEY_N]})
    before = pop.snapshot()
    failed = run_edge_rules(pop, tmp_path, RULES, "-vvv", expect_failure=True, extra={"cookie_keys": keys})
    assert failed.result["failed"] is True and message in failed.result["msg"]
    assert pop.snapshot() == before
    assert_no_key_in(failed, KEY_N, KEY_N1)


def test_check_mode_writes_nothing_and_reports_everything(pop, tmp_path):
    run_edge_rules(pop, tmp_path, RULES)
    before = pop.snapshot()
    checked = run_edge_rules(pop, tmp_path, changed_rules(), "--check", "--diff")
    assert pop.snapshot() == before
    assert checked.result["changed"] is True and checked.recap["changed"] == 1
    assert checked.result["maps"]["edge_deny_v4"] == {"added": 1, "changed": 0, "removed": 0}
    assert checked.result["maps"]["edge_allow_v4"] == {"added": 0, "changed": 0, "removed": 1}
    assert checked.result["maps"]["edge_services"] == {"added": 1, "changed": 2, "removed": 0}
    assert checked.result["maps"]["edge_a2s_cache"] == {"added": 0, "changed": 0, "removed": 1}  # tf2's id 30
    # the same run for real then makes exactly what check mode announced
    real = run_edge_rules(pop, tmp_path, changed_rules())
    assert (real.result["maps"], real.result["writes"], real.result["steps"]) == (
        checked.result["maps"], checked.result["writes"], checked.result["steps"])


def test_diff_names_the_entries_as_a_human_reads_them(pop, tmp_path):
    run_edge_rules(pop, tmp_path, RULES)
    rules = changed_rules()
    rules["deny"] += ["10.%d.%d.0/24" % (index // 256, index % 256) for index in range(150)]
    diffed = run_edge_rules(pop, tmp_path, rules, "--diff")
    out = diffed.stdout
    assert "+  203.0.113.0/24" in out
    assert "-  192.0.2.0/28" in out
    assert "+  rust: udp 198.51.100.12:28015 id 40 -> backend 10.1.0.12" in out
    assert "-  tf2: udp 198.51.100.11:27015 id 30 -> backend 10.1.0.11 a2s_cache,a2s_snoop max_age 30s" in out
    assert "+  tf2: udp 198.51.100.11:27015 id 31 -> backend 10.1.0.11 a2s_cache,a2s_snoop max_age 30s" in out
    assert "+  cs2-tv: udp 198.51.100.10:27020 id 18 -> backend 10.1.0.10 limit 80 pps / - Bps" in out
    assert "-  cached replies of service id 30" in out
    # 151 new denies: the first 100 are listed, then a count
    assert "+  ... and 51 more" in out
    # 100 lines: 203.0.113.0/24 (given first) and the first 99 of the 10.x.y.0/24
    assert len(re.findall(r"^\+  10\.\d+\.\d+\.0/24$", out, re.MULTILINE)) == 99
    assert diffed.result["maps"]["edge_deny_v4"]["added"] == 151


def test_learned_state_survives_a_rule_change(pop, tmp_path):
    run_edge_rules(pop, tmp_path, RULES)
    now = time.monotonic_ns()
    pop.map("edge_sources").update(abi.ipv4("203.0.113.66"), abi.SourceState(ban_until_ns=now + 60 * 10**9).pack())
    pop.map("edge_punches").update(abi.pack_punch_key("udp", "198.51.100.10", 27015, "203.0.113.5", 50000),
                                   abi.PUNCH_VALUE.pack(now))
    pop.map("edge_sources").update(abi.ipv4("203.0.113.7"), abi.SourceState(
        last_seen_ns=now, packets=3, byte_count=300, window=now // 10**9, window_packets=3, window_bytes=300).pack())
    replies = {"info": b"\xff\xff\xff\xffI\x11cached server\x00", "player": b"\xff\xff\xff\xffD\x00",
               "rules": b"\xff\xff\xff\xffE\x00\x00"}
    for service_id in (17, 30):     # cs2-main keeps id 17; tf2 moves from 30 to 31
        for kind, reply in replies.items():
            pop.map("edge_a2s_cache").update(abi.pack_a2s_cache_key(service_id, kind),
                                             abi.pack_a2s_cache_entry(reply, now))
    stats = pop.map("edge_service_stats")
    stats.update_percpu(abi.U32.pack(17), [abi.SERVICE_COUNTER.pack(5, 500, 4, 400)] * _bpf.num_possible_cpus())
    learned = pop.snapshot(("edge_sources", "edge_punches", "edge_service_stats"))

    result = run_edge_rules(pop, tmp_path, changed_rules()).result
    assert result["changed"] is True

    assert pop.snapshot(("edge_sources", "edge_punches", "edge_service_stats")) == learned
    cache = pop.entries("edge_a2s_cache")
    # tf2's old replies are gone, every kind of them; cs2-main's are kept, every kind
    assert set(cache) == {abi.pack_a2s_cache_key(17, kind) for kind in abi.A2S_KINDS}
    assert all(abi.A2S_CACHE_ENTRY.unpack(value)[0] == now for value in cache.values())
    assert result["maps"]["edge_a2s_cache"]["removed"] == 1     # counted by service id
    assert [step["name"] for step in rule_steps(result)] == [
        "deny_add", "allow_remove", "backends_add", "services_disarm", "a2s_cache_delete", "services_change",
        "services_add"]
    assert services(pop.entries("edge_services"))[("udp", "198.51.100.11", 27015)][0] == 31


CONTROL_PLANE = [{"address": "172.16.1.1", "reason": "BGP neighbour upstream of pop1"},
                 {"address": "10.0.0.2", "reason": "tunnel address of POP pop2"},
                 {"address": "192.0.2.5", "reason": "monitoring host mon-1 (ansible_host)"}]


def allow_origins(pop):
    return dict((cidr, abi.U32.unpack(value)[0]) for cidr, value in
                ((next(iter(cidrs([key]))), value) for key, value in pop.entries("edge_allow_v4").items()))


def test_control_plane_sources_are_exempt_labelled_and_idempotent(pop, tmp_path):
    first = run_edge_rules(pop, tmp_path, RULES, "--diff", extra={"control_plane": CONTROL_PLANE})
    assert first.result["changed"] is True
    # one record, the operator's prefix and the control plane's addresses told apart by their value
    assert allow_origins(pop) == {"192.0.2.0/28": abi.ALLOW_OPERATOR, "172.16.1.1/32": abi.ALLOW_CONTROL_PLANE,
                                  "10.0.0.2/32": abi.ALLOW_CONTROL_PLANE,
                                  "192.0.2.5/32": abi.ALLOW_CONTROL_PLANE}
    assert first.result["control_plane"] == {
        "sources": [{"address": "172.16.1.1/32", "reason": "BGP neighbour upstream of pop1"},
                    {"address": "10.0.0.2/32", "reason": "tunnel address of POP pop2"},
                    {"address": "192.0.2.5/32", "reason": "monitoring host mon-1 (ansible_host)"}],
        "added": 3, "removed": 0}
    assert "+  172.16.1.1/32 (control plane: BGP neighbour upstream of pop1)" in first.stdout
    assert "+  192.0.2.0/28\n" in first.stdout
    # XDP reads what is derived from every key of the record
    assert derived_lists(pop) == _rules.source_list_entries(pop.entries("edge_deny_v4"), pop.entries("edge_allow_v4"))

    second = run_edge_rules(pop, tmp_path, RULES, extra={"control_plane": CONTROL_PLANE})
    assert second.result["changed"] is False and second.result["writes"] == 0
    assert second.result["control_plane"]["added"] == 0 and second.result["control_plane"]["removed"] == 0
    # the order of the list is no change either
    assert run_edge_rules(pop, tmp_path, RULES, extra={"control_plane": CONTROL_PLANE[::-1]}).result["changed"] is False

    # the operator lists the neighbour too: the entry gets both labels, nothing else moves
    rules = dict(RULES, allow=["192.0.2.0/28", "172.16.1.1/32"])
    both = run_edge_rules(pop, tmp_path, rules, "--diff", extra={"control_plane": CONTROL_PLANE})
    assert both.result["maps"]["edge_allow_v4"] == {"added": 0, "changed": 1, "removed": 0}
    assert [step["name"] for step in both.result["steps"]] == ["allow_add"]
    assert allow_origins(pop)["172.16.1.1/32"] == abi.ALLOW_OPERATOR | abi.ALLOW_CONTROL_PLANE
    assert "+  172.16.1.1/32 (allow list; control plane: BGP neighbour upstream of pop1)" in both.stdout

    # the control plane shrinks: only its own entries go, in check mode first
    checked = run_edge_rules(pop, tmp_path, rules, "--check", extra={"control_plane": CONTROL_PLANE[:1]})
    assert checked.result["control_plane"]["removed"] == 2
    fewer = run_edge_rules(pop, tmp_path, rules, extra={"control_plane": CONTROL_PLANE[:1]})
    assert (fewer.result["maps"], fewer.result["steps"]) == (checked.result["maps"], checked.result["steps"])
    assert allow_origins(pop) == {"192.0.2.0/28": abi.ALLOW_OPERATOR,
                                  "172.16.1.1/32": abi.ALLOW_OPERATOR | abi.ALLOW_CONTROL_PLANE}
    assert run_edge_rules(pop, tmp_path, rules, extra={"control_plane": CONTROL_PLANE[:1]}).result["changed"] is False


def test_a_denied_control_plane_source_fails_before_any_write(pop, tmp_path):
    run_edge_rules(pop, tmp_path, RULES)
    before = pop.snapshot()
    failed = run_edge_rules(pop, tmp_path, RULES, expect_failure=True,
                            extra={"control_plane": [{"address": "100.64.0.1", "reason": "BGP neighbour transit"}]})
    assert failed.result["msg"] == ("control_plane[0].address: 100.64.0.1/32 (BGP neighbour transit) is inside the "
                                    "deny prefix 100.64.0.0/10: deny beats the exemption, every packet from it "
                                    "would be dropped")
    assert pop.snapshot() == before


def test_parameter_error_fails_before_any_write(pop, tmp_path):
    run_edge_rules(pop, tmp_path, RULES)
    before = pop.snapshot()
    rules = changed_rules()
    rules["deny"].append("10.1.2.3/8")
    failed = run_edge_rules(pop, tmp_path, rules, expect_failure=True).result
    assert failed["failed"] is True
    assert failed["msg"] == "deny[3]: 10.1.2.3/8 has host bits set (did you mean 10.0.0.0/8?)"
    assert pop.snapshot() == before


def test_missing_program_pin_fails_clearly(pop, tmp_path):
    os.unlink(pop.pin_root / IFACE / "program")
    failed = run_edge_rules(pop, tmp_path, RULES, expect_failure=True).result
    assert failed["msg"] == ("iface: no XDP program is pinned for interface uplink0 (%s/uplink0/program does not "
                             "exist): attach it with anycast.edge.xdp_program first" % pop.pin_root)


def test_check_mode_before_the_program_is_attached_reports_the_first_run(pop, tmp_path):
    """A first `--check` of a POP: xdp_program (in check mode) pinned nothing, so edge_rules
    compares with empty maps and says what the first real run will write."""
    os.unlink(pop.pin_root / IFACE / "program")
    checked = run_edge_rules(pop, tmp_path, RULES, "--check")
    assert checked.result["changed"] is True
    assert rule_writes(checked.result) == 2 + 2 + 1 + 4 + 1 + 1
    assert dest_pass_writes(checked.result) == abi.SRC_FILTER_ENTRIES
    assert any("no XDP program is pinned for interface uplink0 yet" in warning
               for warning in checked.result.get("warnings", []))
    assert pop.entries("edge_deny_v4") == {}


def test_check_mode_ahead_of_an_upgrade_that_brings_a_new_map(pop, tmp_path):
    """`site.yml --check` on an upgrade: the running program predates a map this version writes
    (here edge_dst_pass, as before f2f9170) and xdp_program, in check mode, replaced nothing.
    Check mode compares that map as empty - what the real run finds once the upgrade created it -
    and says so; it failed on the missing pin before. A real run against the old program still
    refuses, as it must: the rules need every map."""
    run_edge_rules(pop, tmp_path, RULES)
    os.unlink(pop.pin_root / IFACE / "maps" / _rules.DEST_PASS_MAP)
    before = pop.snapshot()
    checked = run_edge_rules(pop, tmp_path, RULES, "--check", "--diff")
    assert checked.result["changed"] is True
    assert rule_writes(checked.result) == 0                     # the other maps are converged
    assert dest_pass_writes(checked.result) == abi.SRC_FILTER_ENTRIES   # the new map's first write
    assert any("has no map edge_dst_pass yet" in warning for warning in checked.result.get("warnings", []))
    assert pop.snapshot() == before
    assert not os.path.exists(pop.pin_root / IFACE / "maps" / _rules.DEST_PASS_MAP)

    failed = run_edge_rules(pop, tmp_path, RULES, expect_failure=True).result
    assert failed["failed"] is True
    assert "map edge_dst_pass of the XDP program on interface uplink0 is not pinned" in failed["msg"]
    assert pop.snapshot() == before


def test_a_failed_write_undoes_every_earlier_one(pop, tmp_path):
    """edge_backends holds 1024 entries: fill it with strays, so that adding a backend fails
    half-way through the plan (after the deny and allow steps were made)."""
    run_edge_rules(pop, tmp_path, RULES)
    strays = [bytes([10, 9, index // 256, index % 256]) for index in range(1024 - 2)]
    pop.map("edge_backends").update_batch(strays, [abi.BACKEND_VALUE.pack(0)] * len(strays))
    before = pop.snapshot()
    failed = run_edge_rules(pop, tmp_path, changed_rules(), expect_failure=True).result
    assert failed["failed"] is True
    assert failed["msg"].startswith("step backends_add (update of 1 entries in edge_backends) failed: ")
    assert failed["msg"].endswith("; every earlier write was undone")
    assert pop.snapshot() == before


# --- order of the writes, seen by the running program -----------------------------------------

def frame_from(source):
    """A UDP frame from `source` to an address that is not anycast: the deny list is checked
    before anything else, so the program drops it if denied and passes it to the kernel if not."""
    return raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=source, dst="192.0.2.200")
               / UDP(sport=40000, dport=53) / b"x")


class Sampler(threading.Thread):
    """Runs the pinned program on frames from each source, over and over, recording verdicts."""

    def __init__(self, pop, sources):
        super().__init__(daemon=True)
        self.pop = pop
        self.frames = dict((source, frame_from(source)) for source in sources)
        self.verdicts = dict((source, []) for source in sources)
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            for source, frame in self.frames.items():
                self.verdicts[source].append(self.pop.verdict(frame))

    def __enter__(self):
        self.start()
        time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        time.sleep(0.05)
        self.stop.set()
        self.join()


def filler(first_octet, count, seed):
    """`count` distinct /32s under first_octet.0.0.0/8: bulk that makes each step take a while."""
    rnd = random.Random(seed)
    hosts = set()
    while len(hosts) < count:
        hosts.add("%d.%d.%d.%d/32" % (first_octet, rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)))
    return sorted(hosts)


MOVER = "203.0.113.5"      # allowed before, denied after
ALWAYS = "10.1.2.3"        # denied before (by 10.0.0.0/8) and after (by 10.1.0.0/16)


def strictness_rules():
    old = dict(RULES, allow=["203.0.113.0/24"], deny=["10.0.0.0/8"] + filler(100, 30000, 1))
    new = dict(RULES, allow=[], deny=["203.0.113.0/24", "10.1.0.0/16"] + filler(101, 30000, 2))
    return old, new


def test_a_denied_source_never_passes_while_the_rules_move(pop, tmp_path):
    old, new = strictness_rules()
    run_edge_rules(pop, tmp_path, old)
    with Sampler(pop, [MOVER, ALWAYS]) as sampler:
        result = run_edge_rules(pop, tmp_path, new).result
    assert rule_writes(result) == 30002 + 30001 + 1
    mover, always = sampler.verdicts[MOVER], sampler.verdicts[ALWAYS]
    assert len(always) > 1000
    assert set(always) == {_bpf.XDP_DROP}, "a source denied by both rule sets passed mid-update"
    # the moved source: passed under the old rules, dropped from the first deny on, never passed again
    assert mover[0] == _bpf.XDP_PASS and mover[-1] == _bpf.XDP_DROP
    first_drop = mover.index(_bpf.XDP_DROP)
    assert set(mover[first_drop:]) == {_bpf.XDP_DROP}


def test_the_sampler_does_catch_a_wrong_order(pop, tmp_path):
    """Control for the test above: the same change written the naive way (the lists XDP reads
    emptied first, then rebuilt) lets the always-denied source through, and the sampler sees it."""
    old, new = strictness_rules()
    run_edge_rules(pop, tmp_path, old)
    maps = dict((name, pop.map(name))
                for name in RULE_MAP_NAMES + (_rules.A2S_CACHE_MAP, _rules.DEST_PASS_MAP) + _rules.DERIVED_MAPS)
    present = dict((name, pop.entries(name)) for name in RULE_MAP_NAMES)
    present.update(derived_lists(pop))
    present[_rules.DEST_PASS_MAP] = pop.map(_rules.DEST_PASS_MAP).array_bytes()
    desired, dummy = _rules.desired_entries(new, _rules.config_cookie_key(present["edge_config"][_rules.CONFIG_KEY]))
    plan = _rules.plan_writes(present, desired)
    emptied = [(key, _rules.SOURCE_FILTER_ZERO, old_entry)
               for key, old_entry in _rules.source_filter_changes(present[_rules.SOURCE_FILTER_MAP], None)[2].items()]
    wrong = [_rules.Step("empty_the_filter", _rules.SOURCE_FILTER_MAP, "update", emptied)] + plan
    with Sampler(pop, [ALWAYS]) as sampler:
        edge_rules.apply_plan(maps, wrong)
    assert _bpf.XDP_PASS in sampler.verdicts[ALWAYS]


# --- scale: 100,000 prefixes ----------------------------------------------------------------

def test_100k_denies_converge_rerun_is_a_noop_and_10_changes_write_10(pop, tmp_path):
    rnd = random.Random(3)
    deny = set()
    while len(deny) < 100000:
        length = rnd.randint(12, 32)
        address = rnd.getrandbits(32) & (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF
        deny.add("%s/%d" % (ip(address.to_bytes(4, "big")), length))
    deny = sorted(deny)
    rules = dict(RULES, deny=deny, allow=[])

    converged = run_edge_rules(pop, tmp_path, rules).result
    assert converged["maps"]["edge_deny_v4"] == {"added": 100000, "changed": 0, "removed": 0}
    assert cidrs(pop.entries("edge_deny_v4")) == set(deny)

    noop = run_edge_rules(pop, tmp_path, rules).result
    assert noop["changed"] is False and noop["writes"] == 0

    edited = deny[5:] + ["%s/32" % ip(bytes([198, 18, 0, index])) for index in range(5)]
    changed = run_edge_rules(pop, tmp_path, dict(rules, deny=edited)).result
    assert changed["maps"]["edge_deny_v4"] == {"added": 5, "changed": 0, "removed": 5}
    assert rule_writes(changed) == 10
    assert [(step["name"], step["count"]) for step in rule_steps(changed)] == [("deny_add", 5), ("deny_remove", 5)]
    # the derived lists change where those 10 prefixes are, not everywhere
    assert changed["writes"] - 10 <= 40
    assert derived_lists(pop) == _rules.source_list_entries(pop.entries("edge_deny_v4"), {})
    assert cidrs(pop.entries("edge_deny_v4")) == set(edited)
    print("\n100k converge %.0f ms, no-op %.0f ms, 10 changes %.0f ms (inside the module)"
          % (converged["elapsed_ms"], noop["elapsed_ms"], changed["elapsed_ms"]))


def test_module_docs_render():
    proc = subprocess.run([str(VENV_BIN / "ansible-doc"), "anycast.edge.edge_rules"], capture_output=True,
                          text=True, check=False, env=dict(os.environ, ANSIBLE_NOCOLOR="1"))
    assert proc.returncode == 0, proc.stderr
    assert "Writes the rules of the inventory into the maps" in proc.stdout
    as_json = subprocess.run([str(VENV_BIN / "ansible-doc"), "--json", "anycast.edge.edge_rules"],
                             capture_output=True, text=True, check=True)
    doc = json.loads(as_json.stdout)["anycast.edge.edge_rules"]
    assert doc["doc"]["short_description"] == "Converge the XDP edge program's rule maps (services, prefixes, filters, limits)"
    assert doc["doc"]["options"]["cookie_keys"]["type"] == "list"
    assert doc["doc"]["options"]["cookie_keys"]["aliases"] == ["a2s_cookie_key"]
    assert set(doc["return"]) == {"maps", "writes", "steps", "elapsed_ms", "cpu_ms", "timing_ms",
                                  "a2s_cookie_key_generated", "pin_dir", "control_plane"}
    assert set(doc["doc"]["options"]["control_plane"]["suboptions"]) == {"address", "reason"}
