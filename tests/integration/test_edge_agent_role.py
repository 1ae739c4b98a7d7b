"""The edge_agent role, run by the real ansible-playbook against this machine (local connection)
with every destination folder inside a temporary root.

systemd is not PID 1 here, so the service is not started (anycast_edge_agent_manage_service:
false); what is checked is what the role leaves on the POP: the agent and the module_utils it
imports (importable from the installed copy alone), a configuration the agent's own loader
accepts with the inventory's values, a unit `systemd-analyze verify` accepts, and a second run
that changes nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from a2s_responder import AGENT_DIR
from ansible_collections.anycast.edge.plugins.filter.ipip_tunnels import tunnel_name
from anycast_edge_agent import config as agent_config
from helpers.playbook import changed_by_host

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the role installs root-owned files")

VENV_BIN = Path(sys.executable).parent
PLAYBOOK = Path(__file__).resolve().parent / "playbooks" / "edge_agent_role.yml"
REPO = Path(__file__).resolve().parents[2]

SERVICES = [
    {"name": "cs2", "address": "198.51.100.10", "protocol": "udp", "port": 27015, "backend": "game1",
     "a2s_cache": True, "a2s_refresh_sec": 3, "a2s_max_age_sec": 20, "game_protocol": "source",
     "attack_detection": {"enter_after_sec": 1}},
    {"name": "cs2-rcon", "id": 40, "address": "198.51.100.10", "protocol": "tcp", "port": 27015, "backend": "game1"},
    {"name": "rust", "id": 100, "address": "198.51.100.20", "protocol": "udp", "port": 28015, "backend": "game2",
     "attack_mode": "never"},
    {"name": "ping", "address": "198.51.100.10", "protocol": "icmp", "backend": "game1"},
]


def inventory(tmp_path: Path, root: Path, services=None, **pop1_vars) -> Path:
    # No listen address: the exporter's default address is loopback (never ansible_host).
    pop1 = {"ansible_connection": "local", "ansible_host": "192.0.2.10", "anycast_edge_uplink": "eth1",
            "anycast_edge_tunnel_address": "10.0.0.1"}
    pop1.update(pop1_vars)
    data = {"all": {
        "vars": {
            "anycast_edge_asn": 64500,
            "anycast_edge_prefixes": ["198.51.100.0/24"],
            "anycast_edge_services": SERVICES if services is None else services,
            "anycast_edge_attack_detection": {"unverified_packets_per_sec": 8000},
            "anycast_edge_bpf_pin_root": "/sys/fs/bpf/anycast_edge_test",
            "anycast_edge_manage_packages": False,
            "anycast_edge_agent_manage_service": False,
            "anycast_edge_agent_lib_dir": str(root / "usr/local/lib/anycast-edge/agent"),
            "anycast_edge_agent_config_dir": str(root / "etc/anycast-edge"),
            "anycast_edge_agent_unit_dir": str(root / "etc/systemd/system"),
            "anycast_edge_agent_archive": str(tmp_path / "controller" / "agent.tar"),
            # The modules' and the agent's interpreter: this venv's (it has prometheus_client,
            # as Debian's python3-prometheus-client gives /usr/bin/python3 on a POP).
            "anycast_edge_agent_python": sys.executable,
            "ansible_python_interpreter": sys.executable,
            "anycast_edge_agent_probes": {"rust": "udp"},
            # Not on the test host's /etc/passwd: the unit names the user, the role test does not make it.
            "anycast_edge_agent_manage_user": False,
        },
        "children": {
            "pops": {"hosts": {
                "pop1": pop1,
                "pop2": {"ansible_host": "192.0.2.20", "anycast_edge_uplink": "eth1",
                         "anycast_edge_tunnel_address": "10.0.0.2"},
                "pop3": {"ansible_host": "pop3.example.net", "anycast_edge_agent_listen_address": "192.0.2.30",
                         "anycast_edge_agent_listen_port": 9600, "anycast_edge_uplink": "eth1",
                         "anycast_edge_tunnel_address": "10.0.0.3",
                         "anycast_edge_agent_tls_cert_file": "/etc/anycast-edge/tls/pop3.pem"},
                "pop5": {"ansible_host": "192.0.2.50", "anycast_edge_agent_listen_address": "192.0.2.55",
                         "anycast_edge_uplink": "eth1", "anycast_edge_tunnel_address": "10.0.0.5"},
                # Only a name and no listen address: not a peer the guard could read.
                "pop4": {"ansible_host": "pop4.example.net", "anycast_edge_uplink": "eth1",
                         "anycast_edge_tunnel_address": "10.0.0.4"},
            }},
            "monitoring": {"hosts": {"prom1": {"ansible_host": "203.0.113.9"},
                                     "prom2": {"ansible_host": "prom2.example.net"}}},
            "backends": {"hosts": {"game1": {"anycast_edge_tunnel_address": "10.1.0.10", "anycast_edge_uplink": "eth0"},
                                   "game2": {"anycast_edge_tunnel_address": "10.1.0.20", "anycast_edge_uplink": "eth0"}}},
        },
    }}
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def play(inventory_path: Path, netns, *options: str, expect_failure: bool = False) -> tuple[int, str]:
    """Run the role on pop1 inside ``netns`` (its routes are the namespace's), with ansible-playbook's
    ``options`` (--check, --diff); (changed count, output)."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0",
               PATH="%s:%s" % (VENV_BIN, os.environ.get("PATH", "")))
    done = subprocess.run(["ip", "netns", "exec", netns.name, str(VENV_BIN / "ansible-playbook"), "-i", str(inventory_path), "--limit", "pop1",
                           *options, str(PLAYBOOK)], capture_output=True, text=True, env=env, timeout=600, check=False)
    output = done.stdout + done.stderr
    if expect_failure:
        assert done.returncode != 0, output
        return -1, output
    assert done.returncode == 0, output
    return changed_by_host(output, ["pop1"])["pop1"], output


def changed_tasks(output: str) -> list[str]:
    """The names of the tasks the default callback reports changed on pop1, in order."""
    changed, task = [], None
    for line in output.splitlines():
        header = re.match(r"(?:TASK|RUNNING HANDLER) \[(?:[\w.]+ : )?(.*)\] \*+$", line)
        if header:
            task = header.group(1)
        elif line.startswith("changed: [pop1]"):
            changed.append(task)
    return changed


def installed_files(root: Path) -> dict:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def pop_namespace(netns):
    """A POP's network as far as the probes' routes go: its tunnel address and one device named
    like the ipip_tunnels role's tunnel to each backend (a veth: this kernel has no ipip or dummy)."""
    ns = netns("agent")
    ns.ip("link", "set", "lo", "up")
    ns.ip("addr", "add", "10.0.0.1/32", "dev", "lo")
    for backend in ("game1", "game2"):
        ns.ip("link", "add", tunnel_name(backend), "type", "veth", "peer", "name", backend)
        for device in (tunnel_name(backend), backend):
            ns.ip("link", "set", device, "up")
    return ns


def probe_routes(ns) -> dict:
    return {line.split()[0]: line for line in ns.ip("-4", "route", "show", "proto", "242").stdout.splitlines()}


def test_install_render_rerun_unchanged_and_refuse_an_anycast_exporter(tmp_path, netns):
    root = tmp_path / "root"
    inv = inventory(tmp_path, root)
    ns = pop_namespace(netns)
    changed, output = play(inv, ns)
    assert changed > 0, output

    # The probes reach each service's backend through its tunnel, from the POP's tunnel address.
    routes = probe_routes(ns)
    assert set(routes) == {"198.51.100.10", "198.51.100.20"}, routes
    assert "dev %s " % tunnel_name("game1") in routes["198.51.100.10"] + " "
    assert "dev %s " % tunnel_name("game2") in routes["198.51.100.20"] + " "
    assert all("src 10.0.0.1" in route for route in routes.values()), routes

    lib = root / "usr/local/lib/anycast-edge/agent"
    shipped = sorted(path.name for path in (lib / "anycast_edge_agent").iterdir())
    assert shipped == sorted(path.name for path in (AGENT_DIR / "anycast_edge_agent").glob("*.py"))
    utils = lib / "ansible_collections/anycast/edge/plugins/module_utils"
    for name in ("_bpf.py", "_edge_abi.py", "_pins.py", "_birdc.py"):
        assert (utils / name).read_bytes() == (REPO / "plugins/module_utils" / name).read_bytes()
    # Only the module_utils the agent imports (the role's edge_agent_module_utils) go to the POP.
    # The list itself is checked against the agent's imports by tests/unit/test_agent_module_utils.py.
    role_vars = yaml.safe_load((REPO / "roles/edge_agent/vars/main.yml").read_text())
    assert sorted(path.name for path in utils.iterdir()) == sorted(
        name + ".py" for name in role_vars["edge_agent_module_utils"])
    assert not list(lib.rglob("__pycache__")), "the controller's bytecode must not be shipped"

    # The agent's own loader accepts the file, with the inventory's values in it.
    config_path = root / "etc/anycast-edge/agent.json"
    config = agent_config.load(str(config_path))
    assert (config.iface, config.tunnel_address, config.listen_address, config.listen_port) == (
        "eth1", "10.0.0.1", "127.0.0.1", 9591)
    assert config.anycast_prefixes == ["198.51.100.0/24"]
    assert config.pin_root == "/sys/fs/bpf/anycast_edge_test"
    # The fleet guard reads the other POPs whose exporter listens on an address (not pop2, whose
    # exporter is on its loopback, nor pop4); https for pop3, whose exporter has a certificate.
    assert config.fleet_peers == ["https://192.0.2.30:9600/metrics", "http://192.0.2.55:9591/metrics"]
    assert (config.pop_name, config.fleet_settle_sec, config.fleet_timeout_sec) == ("pop1", 3, 1)
    assert (config.tls_cert_file, config.tls_client_auth) == ("", False)
    by_name = {service.name: service for service in config.services}
    assert set(by_name) == {"cs2", "cs2-rcon", "rust", "ping"}
    cs2 = by_name["cs2"]
    assert (cs2.a2s_cache, cs2.a2s_refresh_sec, cs2.a2s_max_age_sec, cs2.probe, cs2.backend) == (
        True, 3, 20, "a2s", "game1")
    assert 1 <= cs2.id <= 1023  # derived by validate_inventory
    assert (by_name["cs2-rcon"].id, by_name["cs2-rcon"].probe) == (40, "tcp")
    assert (by_name["rust"].id, by_name["rust"].probe, by_name["rust"].backend) == (100, "udp", "game2")
    assert (by_name["ping"].probe, by_name["ping"].port) == ("none", 0)
    # attack mode: the fleet's detection with each service's own fields over it (attack.py reads them)
    assert (cs2.attack_mode, cs2.attack_detection) == (
        "auto", {"unverified_packets_per_sec": 8000, "enter_after_sec": 1, "leave_after_sec": 60})
    assert by_name["ping"].attack_detection == {"unverified_packets_per_sec": 8000, "enter_after_sec": 3,
                                                "leave_after_sec": 60}
    assert by_name["rust"].attack_mode == "never"

    # The installed copy runs on its own: the package and module_utils come from the lib folder.
    env = dict(os.environ, PYTHONPATH=str(lib))
    probe = subprocess.run([sys.executable, "-c",
                            "import anycast_edge_agent.main, ansible_collections.anycast.edge.plugins.module_utils._bpf as b;"
                            "print(anycast_edge_agent.main.__file__); print(b.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, check=True)
    assert all(line.startswith(str(lib)) for line in probe.stdout.split()), probe.stdout
    checked = subprocess.run([sys.executable, "-m", "anycast_edge_agent", "--check", "--config", str(config_path)],
                             capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert checked.returncode == 0 and "configuration OK: 4 services" in checked.stdout, checked.stderr

    unit = (root / "etc/systemd/system/anycast-edge-agent.service").read_text()
    assert "Restart=on-failure" in unit and "ReadWritePaths=-/sys/fs/bpf/anycast_edge_test" in unit
    directives = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    # Its own user, one capability (what it needs is shown by test_agent_least_privilege.py).
    assert (directives["User"], directives["Group"], directives["SupplementaryGroups"]) == (
        "anycast-edge", "anycast-edge", "bird")
    assert directives["AmbientCapabilities"] == directives["CapabilityBoundingSet"] == "CAP_DAC_OVERRIDE"
    assert directives["NoNewPrivileges"] == "yes" and directives["ProtectSystem"] == "strict"
    assert "User=root" not in unit and "CAP_SYS_ADMIN" not in unit.split("[Service]")[1]
    # Only loopback, the other POPs' exporter and management addresses, the monitoring hosts
    # that have an address, and the services (the probes' destinations).
    assert directives["IPAddressDeny"] == "any"
    assert directives["IPAddressAllow"].split() == [
        "localhost", "192.0.2.20", "192.0.2.30", "192.0.2.55", "192.0.2.50", "203.0.113.9",
        "198.51.100.10", "198.51.100.20"]
    assert "ExecStart=%s -m anycast_edge_agent --config %s" % (sys.executable, config_path) in unit
    assert "Environment=PYTHONPATH=%s" % lib in unit
    if shutil.which("systemd-analyze"):
        # Not PID 1 here: verify the unit file offline (syntax, directives, executables).
        verified = subprocess.run(["systemd-analyze", "verify", "--man=no",
                                   str(root / "etc/systemd/system/anycast-edge-agent.service")],
                                  capture_output=True, text=True, check=False)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "anycast-edge-agent.service" not in verified.stderr, verified.stderr

    before = installed_files(root)
    changed, output = play(inv, ns)
    assert changed == 0, output
    assert installed_files(root) == before
    assert probe_routes(ns) == routes
    changed, output = play(inv, ns, "--check")      # the installed agent compares equal to its record
    assert changed == 0, output

    # An upgrade of the agent's code: the POP runs an older agent (one file and the record of the
    # installed archive differ from what the controller packs). --check --diff announces it and
    # leaves the POP as it is (unarchive alone said nothing: it skips tar archives in check mode);
    # the real run then makes the same one change.
    record = root / "usr/local/lib/anycast-edge/agent.tar"
    main_py = lib / "anycast_edge_agent" / "main.py"
    main_py.write_bytes(main_py.read_bytes() + b"# an older agent\n")
    subprocess.run(["tar", "--create", "--file", str(record), "--directory", str(lib), "anycast_edge_agent"], check=True)
    older = installed_files(root)
    changed, output = play(inv, ns, "--check", "--diff")
    assert changed_tasks(output) == ["Ship the agent's archive (the record of the installed agent)"], output
    assert installed_files(root) == older
    changed, output = play(inv, ns, "--diff")
    assert changed_tasks(output) == ["Ship the agent's archive (the record of the installed agent)"], output
    assert installed_files(root) == before
    # A file that drifted under an unchanged record: --check says so (unarchive cannot: it is not
    # run in check mode) and changes nothing; the real run puts it back and says so.
    main_py.write_bytes(b"# not the agent\n")
    drifted = installed_files(root)
    changed, output = play(inv, ns, "--check")
    assert changed_tasks(output) == ["Compare the installed agent with its record (check mode)"], output
    assert installed_files(root) == drifted
    changed, output = play(inv, ns)
    assert changed_tasks(output) == ["Install the agent and its module_utils"], output
    assert installed_files(root) == before

    # A service gone from inventory: its address's route goes; a route of somebody else's stays.
    ns.ip("route", "add", "198.51.100.99/32", "dev", tunnel_name("game2"))
    without_rust = [service for service in SERVICES if service["name"] != "rust"]
    changed, output = play(inventory(tmp_path, root, services=without_rust, anycast_edge_agent_probes={}), ns)
    assert changed > 0, output
    assert set(probe_routes(ns)) == {"198.51.100.10"}, probe_routes(ns)
    assert "198.51.100.99" in ns.ip("-4", "route", "show").stdout

    # The exporter's address is never one in an anycast prefix: the agent's own check refuses
    # it, and the old file stays.
    config_text = config_path.read_text()
    dummy, output = play(inventory(tmp_path, root, anycast_edge_agent_listen_address="198.51.100.77"), ns,
                         expect_failure=True)
    assert "198.51.100.77 is inside an anycast prefix" in output
    assert config_path.read_text() == config_text
