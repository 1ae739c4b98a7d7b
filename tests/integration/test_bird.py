"""bird_anycast, bird_config, bird_protocol, bird_info and drain/undrain against real BIRDs.

The lab (tests/integration/bird_lab.py) is a POP BIRD and an upstream BIRD in two network
namespaces on a veth. Ansible runs for real: ``ip netns exec <pop ns> ansible-playbook`` with
``ansible_connection=local``, so the modules talk to the POP's BIRD through its own socket.
Assertions are made on what the upstream learns (``birdc show route all``), as an operator would.

One lab for the whole module: the tests run in order and each leaves the POP announced.
"""

from __future__ import annotations

import grp
import json
import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import yaml
# agent_world puts agent/ on sys.path (for anycast_edge_agent below).
import agent_world  # noqa: F401  pylint: disable=unused-import
from anycast_edge_agent import health

from ansible_collections.anycast.edge.plugins.module_utils._birdc import Birdc

# tests/integration may or may not be a package (other engineers add files here too).
try:
    from .bird_lab import POP_ADDRESS, POP_ASN, UPSTREAM_ADDRESS, UPSTREAM_ASN, BirdLab
except ImportError:
    from bird_lab import POP_ADDRESS, POP_ASN, UPSTREAM_ADDRESS, UPSTREAM_ASN, BirdLab
from helpers.background import BackgroundLoop

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PREFIX = "198.51.100.0/24"
RTBH_HOST = "198.51.100.66/32"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bird-lab")
    bird_lab = BirdLab(workdir, uuid.uuid4().hex[:6]).start()
    try:
        yield bird_lab
    finally:
        bird_lab.stop()


def inventory(lab: BirdLab, **extra) -> dict:
    pop_vars = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "anycast_edge_tunnel_address": POP_ADDRESS,
        # validate_inventory (run first by drain.yml / undrain.yml) wants a whole POP.
        "anycast_edge_uplink": "eth0",
        "anycast_edge_bgp_neighbors": [{
            "name": "upstream1",
            "address": UPSTREAM_ADDRESS,
            "asn": UPSTREAM_ASN,
            "communities": ["64600:42"],
            # BFD works between namespaces on a veth; the upstream runs protocol bfd too.
            "bfd": True,
        }],
        "anycast_edge_bird_install": False,
        "anycast_edge_bird_manage_service": False,
        "anycast_edge_bird_config_path": str(lab.pop_config),
        "anycast_edge_bird_socket": str(lab.pop_socket),
        "anycast_edge_bird_state_dir": str(lab.pop_dir / "state"),
        "anycast_edge_bird_confirm_timeout": 30,
        "anycast_edge_bird_session_wait": 20,
        "anycast_edge_bgp_timers": {"hold": 6, "keepalive": 2, "connect_retry": 1},
        "anycast_edge_bfd_timers": {"interval_ms": 100, "multiplier": 3},
        "anycast_edge_drain_wait_sec": 1,
    }
    pop_vars.update(extra)
    return {
        "all": {
            "vars": {
                "anycast_edge_asn": POP_ASN,
                "anycast_edge_prefixes": [PREFIX],
                "anycast_edge_bgp_communities": ["64500:100"],
                "anycast_edge_rtbh": [RTBH_HOST],
            },
            "children": {"pops": {"hosts": {"pop1": pop_vars}}},
        }
    }


def ansible_playbook(lab: BirdLab, playbook: str, inv: dict, *args: str) -> subprocess.CompletedProcess:
    """Run a playbook inside the POP namespace; -v with one-line JSON results so they can be asserted."""
    inv_path = lab.workdir / "inventory.yml"
    inv_path.write_text(yaml.safe_dump(inv))
    env = dict(os.environ)
    env.update({
        "ANSIBLE_STDOUT_CALLBACK": "default",
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
        "ANSIBLE_CALLBACK_FORMAT_PRETTY": "0",
        "ANSIBLE_DISPLAY_SKIPPED_HOSTS": "1",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_LOCAL_TEMP": str(lab.workdir / "ansible-tmp"),
        "ANSIBLE_HOME": str(lab.workdir / "ansible-home"),
        "PATH": "%s:%s" % (VENV_BIN, env.get("PATH", "")),
    })
    return subprocess.run(
        ["ip", "netns", "exec", lab.pop_ns, str(VENV_BIN / "ansible-playbook"), "-i", str(inv_path),
         playbook, "-v", *args],
        capture_output=True, text=True, env=env, timeout=300, check=False, cwd=str(lab.workdir),
    )


def role_playbook(lab: BirdLab) -> str:
    path = lab.workdir / "bird_role.yml"
    path.write_text(textwrap.dedent("""\
        - name: Converge BIRD on the POP
          hosts: pops
          gather_facts: false
          roles:
            - anycast.edge.bird_anycast
        """))
    return str(path)


_TASK_HEADER = re.compile(r"^TASK \[(?:[^\]]* : )?(?P<name>.*)\] \**$")
_HOST_RESULT = re.compile(r"^(?P<status>ok|changed|fatal|skipping): \[pop1\](?:: FAILED!)? => (?P<json>\{.*\})$")
_RECAP = re.compile(r"^pop1\s+:\s+(?P<counts>.*)$")


def task_results(proc: subprocess.CompletedProcess) -> tuple[dict, dict]:
    """(task name -> result of host pop1, recap counts) read from the default callback's -v output.

    ansible-core ships no JSON stdout callback; with result_format json and pretty off, the
    default callback prints each result as one JSON line after the task's header.
    """
    results: dict = {}
    stats: dict = {}
    task = None
    for line in proc.stdout.splitlines():
        header = _TASK_HEADER.match(line)
        if header:
            task = header.group("name")
            continue
        result = _HOST_RESULT.match(line)
        if result and task is not None:
            results[task] = dict(json.loads(result.group("json")), status=result.group("status"))
            continue
        recap = _RECAP.match(line)
        if recap:
            stats = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", recap.group("counts"))}
    return results, stats


def upstream_route(lab: BirdLab, prefix: str) -> str | None:
    """The upstream's `show route <prefix> all` block, or None when it has no such route."""
    out = lab.birdc(lab.upstream_socket, "show", "route", "for", prefix.split("/")[0], "all")
    if prefix not in out:
        return None
    return out


def communities(route_text: str) -> set[str]:
    match = re.search(r"BGP\.community:\s*(.*)", route_text)
    return set("%s:%s" % pair for pair in re.findall(r"\((\d+),\s*(\d+)\)", match.group(1))) if match else set()


def failed_task(lab: BirdLab, playbook, task: str) -> dict:
    """The result of `task` in a run of `playbook` that must fail, the task with it (fatal)."""
    proc = ansible_playbook(lab, str(playbook), inventory(lab))
    assert proc.returncode != 0
    results, dummy = task_results(proc)
    failed = results[task]
    assert failed["status"] == "fatal"
    return failed


def converge(lab: BirdLab, **extra) -> tuple[dict, dict]:
    proc = ansible_playbook(lab, role_playbook(lab), inventory(lab, **extra))
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    return task_results(proc)


def test_role_announces_prefix_with_asn_and_communities(lab):
    results, stats = converge(lab)
    assert results["Apply the BIRD configuration"]["changed"] is True
    lab.wait_for(lab.session_established, "the BGP session to be Established")
    route = lab.wait_for(lambda: upstream_route(lab, PREFIX), "the anycast prefix at the upstream")
    assert re.search(r"BGP\.as_path:\s*%d\s*$" % POP_ASN, route, re.M), route
    assert {"64500:100", "64600:42"} <= communities(route), route
    assert "65535:0" not in communities(route)
    # The anycast routes are blackholes for BGP only: never in the POP's kernel table.
    kernel = subprocess.run(["ip", "-n", lab.pop_ns, "route", "show", "table", "all"],
                            capture_output=True, text=True, check=True).stdout
    assert "198.51.100." not in kernel
    # BFD came up with the session (bfd on needs protocol bfd on both sides).
    bfd = lab.birdc(lab.pop_socket, "show", "bfd", "sessions")
    assert re.search(r"%s\s+\S+\s+Up" % UPSTREAM_ADDRESS, bfd), bfd


def test_rtbh_host_route_carries_blackhole_and_no_export(lab):
    route = lab.wait_for(lambda: upstream_route(lab, RTBH_HOST), "the RTBH route at the upstream")
    assert {"65535:666", "65535:65281"} <= communities(route), route


def test_rerun_changes_nothing(lab):
    before = lab.birdc(lab.pop_socket, "show", "status")
    results, stats = converge(lab)
    assert stats["changed"] == 0, results
    assert results["Apply the BIRD configuration"]["changed"] is False
    # No reload happened: the last reconfiguration time is the same.
    last = re.search(r"Last reconfiguration on (.*)", before).group(1)
    assert "Last reconfiguration on " + last in lab.birdc(lab.pop_socket, "show", "status")


def test_check_mode_and_diff_report_without_touching(lab):
    before = lab.pop_config.read_text()
    inv = inventory(lab, anycast_edge_bgp_communities=["64500:200"])
    inv["all"]["vars"]["anycast_edge_bgp_communities"] = ["64500:200"]
    proc = ansible_playbook(lab, role_playbook(lab), inv, "--check", "--diff")
    assert proc.returncode == 0, proc.stdout[-6000:]
    results, dummy = task_results(proc)
    apply = results["Apply the BIRD configuration"]
    assert apply["changed"] is True
    # The callback prints the diff itself (it is not part of the printed result).
    assert re.search(r"^\+\s*bgp_community.add\(\(64500,200\)\);$", proc.stdout, re.M), proc.stdout[-4000:]
    assert re.search(r"^-\s*bgp_community.add\(\(64500,100\)\);$", proc.stdout, re.M), proc.stdout[-4000:]
    assert lab.pop_config.read_text() == before


def test_broken_config_fails_with_birds_message_and_changes_nothing(lab):
    before = lab.pop_config.read_text()
    status_before = lab.birdc(lab.pop_socket, "show", "status")
    playbook = lab.workdir / "broken.yml"
    playbook.write_text(textwrap.dedent("""\
        - name: Apply a broken configuration
          hosts: pops
          gather_facts: false
          tasks:
            - name: Apply it
              anycast.edge.bird_config:
                content: "{{ lookup('ansible.builtin.file', anycast_edge_bird_config_path) }}\\nprotocol bgp broken { neighbor as; }\\n"
                path: "{{ anycast_edge_bird_config_path }}"
                socket: "{{ anycast_edge_bird_socket }}"
        """))
    failed = failed_task(lab, playbook, "Apply it")
    assert "syntax error" in failed["msg"] and "BIRD rejected" in failed["msg"], failed["msg"]
    assert lab.pop_config.read_text() == before
    assert not [p for p in lab.pop_dir.iterdir() if p.name.endswith(".staged")]
    last = re.search(r"Last reconfiguration on (.*)", status_before).group(1)
    assert "Last reconfiguration on " + last in lab.birdc(lab.pop_socket, "show", "status")
    assert lab.session_established()
    assert upstream_route(lab, PREFIX)


def test_bird_info_reports_sessions_and_exported_routes(lab):
    playbook = lab.workdir / "info.yml"
    playbook.write_text(textwrap.dedent("""\
        - name: Read BIRD
          hosts: pops
          gather_facts: false
          tasks:
            - name: Read it
              anycast.edge.bird_info:
                socket: "{{ anycast_edge_bird_socket }}"
        """))
    proc = ansible_playbook(lab, str(playbook), inventory(lab))
    assert proc.returncode == 0, proc.stdout[-6000:]
    results, dummy = task_results(proc)
    info = results["Read it"]
    bgp = [p for p in info["protocols"] if p["name"] == "bgp_upstream1"]
    assert bgp and bgp[0]["established"] is True
    exported = {route["network"]: route for route in info["exported"]["bgp_upstream1"]}
    assert set(exported) == {PREFIX, RTBH_HOST}
    assert exported[RTBH_HOST]["communities"] == ["65535:666", "65535:65281"]
    assert set(exported[PREFIX]["communities"]) == {"64500:100", "64600:42"}


def test_drain_adds_gshut_then_withdraws_and_undrain_brings_it_back(lab):
    proc = ansible_playbook(lab, str(REPO_ROOT / "playbooks" / "drain.yml"), inventory(lab),
                            "-e", "anycast_edge_drain_all=true")
    assert proc.returncode == 0, proc.stdout[-8000:]
    results, dummy = task_results(proc)
    # The GSHUT phase was announced (and seen by the upstream) before the withdrawal.
    gshut = results["Check that every upstream is sent GRACEFUL_SHUTDOWN before the wait"]
    assert "65535:0" in gshut["msg"], gshut
    # What the upstream is sent once withdrawn: the RTBH route, no anycast prefix.
    report = results["Sum up what each upstream is sent"]["ansible_facts"]["bird_anycast_report"]
    assert report["bgp_upstream1"]["established"] is True
    assert list(report["bgp_upstream1"]["routes"]) == [RTBH_HOST], report
    lab.wait_for(lambda: upstream_route(lab, PREFIX) is None, "the withdrawal of the anycast prefix")
    assert lab.session_established(), "drain must not drop the BGP session"
    assert (lab.pop_dir / "state" / "bird_drain_state").read_text().strip() == "withdrawn"

    # A normal converge run keeps the POP drained.
    results, stats = converge(lab)
    assert stats["changed"] == 0, results
    assert upstream_route(lab, PREFIX) is None

    proc = ansible_playbook(lab, str(REPO_ROOT / "playbooks" / "undrain.yml"), inventory(lab))
    assert proc.returncode == 0, proc.stdout[-8000:]
    route = lab.wait_for(lambda: upstream_route(lab, PREFIX), "the prefix back at the upstream")
    assert "65535:0" not in communities(route)
    assert lab.session_established()


def test_reload_that_loses_a_session_is_undone(lab):
    """A config BIRD accepts but that breaks the session (wrong peer ASN): undo, old file back."""
    lab.wait_for(lab.session_established, "the BGP session before the bad reload")
    before = lab.pop_config.read_text()
    playbook = lab.workdir / "wrong_asn.yml"
    playbook.write_text(textwrap.dedent("""\
        - name: Apply a configuration that breaks the session
          hosts: pops
          gather_facts: false
          tasks:
            - name: Apply it
              anycast.edge.bird_config:
                content: "{{ lookup('ansible.builtin.file', anycast_edge_bird_config_path) | replace('as 64600;', 'as 64601;') }}"
                path: "{{ anycast_edge_bird_config_path }}"
                socket: "{{ anycast_edge_bird_socket }}"
                session_wait: 4
                confirm_timeout: 30
        """))
    failed = failed_task(lab, playbook, "Apply it")
    assert "bgp_upstream1" in failed["msg"] and "configure undo" in failed["msg"], failed["msg"]
    assert lab.pop_config.read_text() == before
    lab.wait_for(lab.session_established, "the session back after configure undo")
    lab.wait_for(lambda: upstream_route(lab, PREFIX), "the prefix back at the upstream")
    # BIRD runs the old configuration again (the session could not be Established otherwise).
    assert re.search(r"Neighbor AS:\s+64600\b", lab.birdc(lab.pop_socket, "show", "protocols", "all", "bgp_upstream1"))


PASSWORD = "Md5-s3cret-" + uuid.uuid4().hex[:10]


def test_bgp_password_in_no_output_result_or_diff_and_file_is_0640_root_bird(lab):
    """A neighbour with a TCP MD5 password, rolled out with -vvv --diff (and again in check mode
    after a change): the password is in the live file, which is 0640 root:bird, and nowhere in
    ansible-playbook's output - not in invocation.module_args, not in the diff, not in a result.
    On the old module the same grep finds it (`password "..."` in module_args.content)."""
    lab.wait_for(lab.session_established, "the BGP session before the password run")
    # A second neighbour that is never Established (nothing listens there): the reload does not
    # wait for it, and the upstream1 session stays as it is.
    secured = {"name": "secured", "address": "192.0.2.250", "asn": 64999, "password": PASSWORD,
               "bfd": False, "multihop": 2}
    neighbors = inventory(lab)["all"]["children"]["pops"]["hosts"]["pop1"]["anycast_edge_bgp_neighbors"]
    inv = inventory(lab, anycast_edge_bgp_neighbors=neighbors + [secured])
    # A live file left world-readable by someone: the module must take it back to 0640 root:bird.
    os.chmod(lab.pop_config, 0o644)
    runs = [ansible_playbook(lab, role_playbook(lab), inv, "-vvv", "--diff")]
    assert runs[0].returncode == 0, runs[0].stdout[-6000:] + runs[0].stderr[-3000:]
    assert PASSWORD not in runs[0].stdout + runs[0].stderr
    text = lab.pop_config.read_text()
    assert 'password "%s";' % PASSWORD in text  # the secret really went through the module
    stat = os.stat(lab.pop_config)
    assert (stat.st_mode & 0o7777, stat.st_uid, stat.st_gid) == (0o640, 0, grp.getgrnam("bird").gr_gid)
    # Change it again (another password) in check mode with diff: before/after both hold one.
    other = dict(secured, password=PASSWORD + "-next")
    runs.append(ansible_playbook(lab, role_playbook(lab), inventory(lab, anycast_edge_bgp_neighbors=neighbors + [other]),
                                 "-vvv", "--diff", "--check"))
    assert runs[1].returncode == 0, runs[1].stdout[-6000:]
    results, dummy = task_results(runs[1])
    assert results["Apply the BIRD configuration"]["changed"] is True
    for proc in runs:
        assert PASSWORD not in proc.stdout + proc.stderr
    assert 'password "********"' in runs[0].stdout  # the diff was shown, masked
    # The staged copies are gone (none left behind with the password in it).
    assert not [p for p in lab.pop_config.parent.iterdir() if p.name.endswith(".staged")]
    # Back to the neighbours the other tests expect.
    results, dummy = converge(lab)
    assert PASSWORD not in lab.pop_config.read_text()


class UpstreamWatcher(BackgroundLoop):
    """Polls the upstream's route for a prefix every 50 ms in a thread; keeps each change."""

    interval = 0.05

    def __init__(self, lab: BirdLab, prefix: str):
        super().__init__()
        self.lab = lab
        self.prefix = prefix
        self.seen: list[tuple[float, frozenset | None]] = []

    def step(self):
        route = upstream_route(self.lab, self.prefix)
        state = frozenset(communities(route)) if route else None
        if not self.seen or self.seen[-1][1] != state:
            self.seen.append((time.monotonic(), state))

    def announcements(self):
        return [(at, state) for at, state in self.seen if state is not None]


class HealthyAgent(BackgroundLoop):
    """The POP agent's announcer (agent/anycast_edge_agent/health.py, the real class) as the agent
    runs it while the backends are healthy: ANNOUNCE every probe interval, which enables the
    announcing protocol through birdc unless the drain state file says the POP is drained."""

    def __init__(self, lab: BirdLab, interval: float = 0.2):
        super().__init__()
        self.announcer = health.Announcer(Birdc(str(lab.pop_socket)), "anycast_edge_announce",
                                          str(lab.pop_dir / "state" / "bird_drain_state"))
        self.interval = interval

    def step(self):
        self.announcer.apply(health.ANNOUNCE)


def test_undrain_returns_the_pop_without_gshut_in_the_first_announcement(lab):
    """Issue 12 section 7: with the agent running (healthy backends), undrain.yml used to delete
    the drain state file before BIRD's configuration changed; the agent then re-enabled the
    announcing protocol under the drained configuration's export filter, so the upstream's first
    route back carried GRACEFUL_SHUTDOWN (65535:0) until the role reconfigured BIRD (~32 s on the
    TCG lab). The first route the upstream has after undrain must carry no 65535:0, and undrain
    reports what each neighbour is now sent."""
    with HealthyAgent(lab):
        proc = ansible_playbook(lab, str(REPO_ROOT / "playbooks" / "drain.yml"), inventory(lab),
                                "-e", "anycast_edge_drain_all=true")
        assert proc.returncode == 0, proc.stdout[-8000:]
        lab.wait_for(lambda: upstream_route(lab, PREFIX) is None, "the withdrawal of the anycast prefix")
        # The agent keeps a drained POP drained.
        time.sleep(1)
        assert upstream_route(lab, PREFIX) is None
        with UpstreamWatcher(lab, PREFIX) as watcher:
            started = time.monotonic()
            proc = ansible_playbook(lab, str(REPO_ROOT / "playbooks" / "undrain.yml"), inventory(lab))
            returned = time.monotonic()
            assert proc.returncode == 0, proc.stdout[-8000:]
            lab.wait_for(watcher.announcements, "the prefix back at the upstream")
            time.sleep(1)
    results, dummy = task_results(proc)
    report = results["Sum up what each upstream is sent"]["ansible_facts"]["bird_anycast_report"]
    assert report["bgp_upstream1"]["established"] is True
    assert report["bgp_upstream1"]["routes"][PREFIX].split() == ["64500:100", "64600:42"], report
    assert "announced; the upstreams are sent" in results[
        "Check that every upstream is sent the anycast prefixes without GRACEFUL_SHUTDOWN"]["msg"]
    seen = [("%.2fs" % (at - started), sorted(state) if state is not None else None) for at, state in watcher.seen]
    print("undrain.yml took %.1fs; the upstream saw: %s" % (returned - started, seen))
    assert all("65535:0" not in state for at, state in watcher.announcements()), seen
