"""The agent as the unit runs it: its own uid and gid, BIRD's group, and one capability
(CAP_DAC_OVERRIDE), nothing else: no CAP_BPF, CAP_SYS_ADMIN, CAP_NET_ADMIN or CAP_NET_RAW.

    [POP ns]  xdp_edge attached (generic XDP) to the uplink, its pins in a bpffs mounted mode=700
              (as systemd mounts /sys/fs/bpf on Debian), BIRD with the anycast protocol disabled
              and its control socket root:<bird group> 0660, the agent under setpriv
    [backend ns]  tests/a2s_responder.py, the game server

The agent runs from a copy laid out like the role's lib folder, by Debian's /usr/bin/python3,
with ``setpriv --reuid --regid --groups --inh-caps --ambient-caps --bounding-set --no-new-privs``
(the unit's User=, Group=, SupplementaryGroups=, AmbientCapabilities=, CapabilityBoundingSet=,
NoNewPrivileges=). With exactly that it reads the maps, sees its program attached, fills the
A2S cache and announces through BIRD; without CAP_DAC_OVERRIDE it cannot open the pins (root's,
0600, under a 0700 bpffs), so the maps are unreadable, the cache stays empty and the POP is not
announced, which is why the unit keeps that one capability.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import prometheus_client
import pytest

from agent_world import AGENT_DIR, IFACE, SERVICE_ADDRESS, SERVICE_PORT, AgentWorld, run
from bpf.scenario import GAME_UDP_ID

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils import _pins

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"),
                                reason="setpriv, BPF and namespaces need root; Debian's python3 runs the agent")

AGENT_UID = AGENT_GID = 64990   # the role's system user, without a passwd entry here
BIRD_GID = 64991                # the group of BIRD's control socket (bird on Debian)
PROTOCOL = "anycast_edge_announce"
REPO = Path(__file__).resolve().parents[2]
BIRD_CONFIG = """\
router id 10.0.0.1;
protocol device {{}}
protocol static {protocol} {{
  disabled;
  ipv4;
  route 198.51.100.0/24 blackhole;
}}
"""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def install_like_the_role(lib: Path) -> None:
    """The agent, the module_utils it imports and prometheus_client (Debian's python3-prometheus-client
    on a POP) in one folder readable by anyone, as the role unpacks them."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(AGENT_DIR / "anycast_edge_agent", lib / "anycast_edge_agent", ignore=ignore)
    shutil.copytree(REPO / "plugins" / "module_utils", lib / "ansible_collections/anycast/edge/plugins/module_utils",
                    ignore=ignore)
    shutil.copytree(Path(prometheus_client.__file__).parent, lib / "prometheus_client", ignore=ignore)
    for folder in [lib, *lib.rglob("*")]:
        folder.chmod(0o755 if folder.is_dir() else 0o644)


@pytest.fixture(scope="module")
def pop(repo_root):
    subprocess.run(["make", "--no-print-directory", "build/xdp_edge.o"], cwd=repo_root, check=True,
                   capture_output=True)
    # Outside pytest's 0700 temp root: only the bpffs (mode=700) may stand in the agent's way.
    workdir = Path(tempfile.mkdtemp(prefix="aedge-leastpriv-", dir="/tmp"))
    workdir.chmod(0o755)
    world = AgentWorld(str(repo_root / "build" / "xdp_edge.o"), workdir)
    bird_pid = None
    try:
        world.start()
        # pylint: disable=protected-access
        run("ip", "-n", world._pop_ns, "link", "set", "dev", IFACE, "xdpgeneric", "pinned",
            _pins.program_pin_path(world.pin_root, IFACE))
        world.edge.add_service("udp", SERVICE_ADDRESS, SERVICE_PORT, GAME_UDP_ID, "10.1.0.10",
                               flags=abi.SERVICE_F_A2S_CACHE, a2s_max_age_ms=30000)
        world.start_game_server()
        install_like_the_role(workdir / "lib")
        bird_dir = workdir / "bird"
        bird_dir.mkdir(mode=0o755)
        (bird_dir / "bird.conf").write_text(BIRD_CONFIG.format(protocol=PROTOCOL))
        run("ip", "netns", "exec", world._pop_ns, "bird", "-c", str(bird_dir / "bird.conf"),
            "-s", str(bird_dir / "bird.ctl"), "-P", str(bird_dir / "bird.pid"))
        deadline = time.monotonic() + 10
        while not (bird_dir / "bird.ctl").exists():
            assert time.monotonic() < deadline, "BIRD did not start"
            time.sleep(0.05)
        bird_pid = int((bird_dir / "bird.pid").read_text())
        os.chown(bird_dir / "bird.ctl", 0, BIRD_GID)
        os.chmod(bird_dir / "bird.ctl", 0o660)
        world.workdir_path = workdir
        world.bird_socket = str(bird_dir / "bird.ctl")
        yield world
    finally:
        if bird_pid is not None:
            os.kill(bird_pid, signal.SIGTERM)
        world.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def birdc(world, *command):
    return run("birdc", "-s", world.bird_socket, *command, check=False).stdout


def protocol_up(world) -> bool:
    return any(line.split()[:1] == [PROTOCOL] and " up " in " %s " % line
               for line in birdc(world, "show", "protocols", PROTOCOL).splitlines())


def scrape(world, url) -> str:
    # pylint: disable=protected-access
    done = subprocess.run(["ip", "netns", "exec", world._pop_ns, sys.executable, "-c",
                           "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())",
                           url], capture_output=True, text=True, timeout=15, check=False)
    return done.stdout


def run_agent(world, caps: str, seconds: float = 8.0) -> tuple[dict, str]:
    """The agent under setpriv with ``caps`` (e.g. "+dac_override", "" for none) for up to
    ``seconds``: (the last scrape's anycast_edge_* samples without labels, its log)."""
    workdir = world.workdir_path
    port = free_port()
    config = workdir / "agent.json"
    config.write_text(json.dumps({
        "iface": IFACE, "pin_root": world.pin_root, "tunnel_address": "10.0.0.1", "listen_address": "127.0.0.1",
        "listen_port": port, "probe_interval_sec": 0.3, "probe_timeout_sec": 0.5, "rise": 1, "fall": 3,
        "bird_socket": world.bird_socket, "drain_state_file": str(workdir / "drain_state"),
        "services": [{"name": "cs2", "id": GAME_UDP_ID, "address": SERVICE_ADDRESS, "protocol": "udp",
                      "port": SERVICE_PORT, "backend": "game1", "a2s_cache": True, "a2s_refresh_sec": 0.5,
                      "a2s_max_age_sec": 30}]}))
    config.chmod(0o644)
    capabilities = "-all" + ("," + caps if caps else "")
    # pylint: disable=protected-access
    argv = ["ip", "netns", "exec", world._pop_ns, "setpriv", "--reuid=%d" % AGENT_UID, "--regid=%d" % AGENT_GID,
            "--groups=%d" % BIRD_GID, "--inh-caps=" + capabilities, "--ambient-caps=" + capabilities,
            "--bounding-set=" + capabilities, "--no-new-privs",
            "/usr/bin/python3", "-m", "anycast_edge_agent", "--config", str(config)]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(workdir / "lib"), "PYTHONDONTWRITEBYTECODE": "1"}
    log_path = workdir / "agent.log"
    with open(log_path, "w", encoding="utf-8") as log:
        agent = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)  # pylint: disable=consider-using-with
    samples = {}
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and agent.poll() is None:
            time.sleep(0.5)
            text = scrape(world, "http://127.0.0.1:%d/metrics" % port)
            samples = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                       if line.startswith("anycast_edge_") and "{" not in line}
            if samples.get("anycast_edge_announced") == 1 and \
                    samples.get("anycast_edge_a2s_cache_entries") == len(abi.A2S_KINDS):
                break
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=10)
    return samples, log_path.read_text()


def reset(world):
    birdc(world, "disable", PROTOCOL)
    cache = world.edge.maps["edge_a2s_cache"]
    for kind in abi.A2S_KINDS:
        if cache.lookup(abi.pack_a2s_cache_key(GAME_UDP_ID, kind)) is not None:
            cache.delete(abi.pack_a2s_cache_key(GAME_UDP_ID, kind))


def test_with_only_cap_dac_override_the_agent_does_everything(pop):
    reset(pop)
    assert not protocol_up(pop)
    samples, log = run_agent(pop, "+dac_override")
    assert samples.get("anycast_edge_maps_readable") == 1, log
    assert samples.get("anycast_edge_dataplane_attached") == 1, log
    # it wrote the cache (map writes): info, player and rules
    assert samples.get("anycast_edge_a2s_cache_entries") == len(abi.A2S_KINDS), log
    assert samples.get("anycast_edge_announced") == 1, log
    assert protocol_up(pop), log                                      # through BIRD's socket, by group
    assert pop.edge.maps["edge_a2s_cache"].lookup(abi.U32.pack(GAME_UDP_ID)) is not None
    assert "Permission denied" not in log and "Operation not permitted" not in log, log


def test_without_it_the_pins_are_closed_to_the_agent(pop):
    reset(pop)
    samples, log = run_agent(pop, "", seconds=4)
    assert samples.get("anycast_edge_maps_readable") == 0, log
    assert samples.get("anycast_edge_a2s_cache_entries") is None, log
    assert pop.edge.maps["edge_a2s_cache"].lookup(abi.U32.pack(GAME_UDP_ID)) is None
    # The data plane's state is unknown, not down: the POP keeps what it does (here: not announced).
    assert not protocol_up(pop)
    assert "Permission denied" in log, log
