"""The edge_monitoring role and playbooks/monitoring.yml, run by the real ansible-playbook against
this machine (local connection) with the configuration folder in a temporary place.

promtool (Debian's prometheus package) checks both files inside the role; then a real
Prometheus server started by the test from the rendered configuration loads the alert rules and
scrapes a real agent exporter (anycast-edge-agent, listening on loopback as POP "pop1").
systemd is not PID 1 here, so the role's service handling is off (manage_service: false).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from a2s_responder import AGENT_DIR
from fleet_pki import make_pki
from helpers.netns import terminate
from helpers import waiting
from helpers.playbook import changed_by_host

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PLAYBOOK = REPO / "playbooks" / "monitoring.yml"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the role installs root-owned files"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def inventory(tmp_path: Path, config_dir: Path, exporter_port: int, pki=None) -> Path:
    data = {"all": {
        "vars": {"ansible_python_interpreter": sys.executable},
        "children": {
            "monitoring": {"hosts": {"prom1": {
                "ansible_connection": "local",
                "anycast_edge_manage_packages": False,
                "anycast_edge_monitoring_manage_service": False,
                "anycast_edge_monitoring_config_dir": str(config_dir),
                "anycast_edge_monitoring_promtool": PROMTOOL,
                "anycast_edge_monitoring_scrape_interval": "1s",
                "anycast_edge_monitoring_evaluation_interval": "1s",
            }}},
            "pops": {"hosts": {
                # The one whose exporter really runs (on loopback, as the test's agent).
                "pop1": {"ansible_host": "192.0.2.10", "anycast_edge_agent_listen_address": "127.0.0.1",
                         "anycast_edge_agent_listen_port": exporter_port},
                "pop2": {"ansible_host": "192.0.2.20"},
                "pop3": {"ansible_host": "pop3.example.net"},
            }},
        },
    }}
    if pki is not None:
        # pop1's exporter serves TLS with client certificates; Prometheus presents the fleet's.
        data["all"]["children"]["pops"]["hosts"]["pop1"].update({
            "anycast_edge_agent_tls_cert_file": str(pki / "pop.pem"),
            "anycast_edge_agent_tls_key_file": str(pki / "pop.key"),
            "anycast_edge_agent_tls_ca_file": str(pki / "ca.pem"),
            "anycast_edge_agent_tls_client_auth": True})
        data["all"]["children"]["monitoring"]["hosts"]["prom1"].update({
            "anycast_edge_monitoring_tls_ca_file": str(pki / "ca.pem"),
            "anycast_edge_monitoring_tls_cert_file": str(pki / "scraper.pem"),
            "anycast_edge_monitoring_tls_key_file": str(pki / "scraper.key")})
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def play(inventory_path: Path) -> int:
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0",
               PATH="%s:%s" % (VENV_BIN, os.environ.get("PATH", "")))
    done = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(inventory_path), str(PLAYBOOK)],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return changed_by_host(output, ["prom1"])["prom1"]


class Child:
    """A process the test started, stopped by its own pid."""

    def __init__(self, argv, log: Path, env=None):
        self.log = log
        with open(log, "w", encoding="utf-8") as handle:
            self.proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env)

    def stop(self):
        terminate(self.proc)


def api(base: str, path: str, **query) -> dict:
    url = "%s/api/v1/%s" % (base, path)
    if query:
        url += "?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


def wait_for(predicate, what, timeout=30.0):
    return waiting.wait_for(predicate, what, timeout, interval=0.3)


def agent_env(collections_root) -> dict:
    """The environment the agent and its tools run in: the agent's package and the collection."""
    return dict(os.environ, PYTHONPATH="%s:%s" % (AGENT_DIR, collections_root))


def start_agent_and_prometheus(tmp_path: Path, config_dir: Path, exporter_port: int, collections_root, **agent_settings):
    """A real agent serving its exporter on 127.0.0.1:exporter_port (no pins, no BIRD; the extra
    settings, e.g. TLS, added to its config) and a real Prometheus run from the rendered
    configuration. Returns (agent, prometheus, Prometheus's base URL); stop both when done."""
    agent_config = tmp_path / "agent.json"
    agent_config.write_text(json.dumps(dict({
        "iface": "lo", "tunnel_address": "127.0.0.1", "listen_address": "127.0.0.1", "listen_port": exporter_port,
        "pin_root": str(tmp_path / "no-pins"), "bird_manage": False, "check_dataplane": False}, **agent_settings)))
    agent = Child([sys.executable, "-m", "anycast_edge_agent", "--config", str(agent_config)], tmp_path / "agent.log",
                  env=agent_env(collections_root))
    web_port = free_port()
    server = Child([PROMETHEUS, "--config.file=%s" % (config_dir / "prometheus.yml"),
                    "--storage.tsdb.path=%s" % (tmp_path / "tsdb"), "--web.listen-address=127.0.0.1:%d" % web_port],
                   tmp_path / "prometheus.log")
    return agent, server, "http://127.0.0.1:%d" % web_port


def test_render_check_rerun_and_scrape_a_real_agent(tmp_path, collections_root):
    config_dir = tmp_path / "etc-prometheus"
    exporter_port = free_port()
    inv = inventory(tmp_path, config_dir, exporter_port)
    assert play(inv) > 0

    config = yaml.safe_load((config_dir / "prometheus.yml").read_text())
    assert config["rule_files"] == [str(config_dir / "anycast-edge-rules.yml")]
    job = config["scrape_configs"][0]
    assert job["job_name"] == "anycast-edge"
    assert job["static_configs"] == [
        {"targets": ["127.0.0.1:%d" % exporter_port], "labels": {"pop": "pop1"}},
        {"targets": ["192.0.2.20:9591"], "labels": {"pop": "pop2"}},
        {"targets": ["pop3.example.net:9591"], "labels": {"pop": "pop3"}},
    ]
    assert (config_dir / "anycast-edge-rules.yml").read_bytes() == \
        (REPO / "roles/edge_monitoring/files/anycast-edge-rules.yml").read_bytes()
    checked = subprocess.run([PROMTOOL, "check", "config", str(config_dir / "prometheus.yml")],
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    assert play(inv) == 0

    # A real agent as pop1's exporter (no pins here: it reports maps_readable 0), and a real
    # Prometheus from the rendered file.
    agent, server, base = start_agent_and_prometheus(tmp_path, config_dir, exporter_port, collections_root)
    try:
        groups = wait_for(lambda: api(base, "rules")["groups"], "the alert rules loaded")
        assert {group["name"] for group in groups} == {"anycast-edge-attack-signs", "anycast-edge-health"}
        readable = wait_for(lambda: api(base, "query", query='anycast_edge_maps_readable{pop="pop1"}')["result"],
                            "a scrape of pop1's agent")
        assert readable[0]["value"][1] == "0"
        up = {item["metric"]["pop"]: item["value"][1]
              for item in api(base, "query", query='up{job="anycast-edge"}')["result"]}
        assert up["pop1"] == "1"
        # anycast-edge top reads the same POP through this Prometheus (POPs by their "pop" label).
        done = subprocess.run([sys.executable, "-m", "anycast_edge_agent.top", "--prometheus", base, "--once",
                               "--json", "--interval", "1.5"], capture_output=True, text=True,
                              env=agent_env(collections_root), timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        pops = {item["pop"]: item for item in json.loads(done.stdout)}
        assert pops["pop1"]["maps_readable"] is False and pops["pop1"]["announced"] is None
        assert pops["pop1"]["in"]["packets"] == 0
    finally:
        server.stop()
        agent.stop()
    assert agent.proc.returncode == 0, (tmp_path / "agent.log").read_text()


def test_a_tls_exporter_with_client_certificates_is_scraped_over_https(tmp_path, collections_root):
    """pop1's agent serves https and requires a client certificate of the fleet's CA: the role
    renders the target with scheme https and this host's certificate, and a real Prometheus
    scrapes it; plain http and a client without a certificate get nothing from the agent."""
    pki = make_pki(tmp_path)
    config_dir = tmp_path / "etc-prometheus"
    exporter_port = free_port()
    assert play(inventory(tmp_path, config_dir, exporter_port, pki=pki)) > 0
    job = yaml.safe_load((config_dir / "prometheus.yml").read_text())["scrape_configs"][0]
    assert job["static_configs"][0] == {"targets": ["127.0.0.1:%d" % exporter_port],
                                        "labels": {"pop": "pop1", "__scheme__": "https"}}
    assert job["static_configs"][1]["labels"] == {"pop": "pop2"}  # no certificate: plain http
    assert job["tls_config"] == {"ca_file": str(pki / "ca.pem"), "cert_file": str(pki / "scraper.pem"),
                                 "key_file": str(pki / "scraper.key")}

    agent, server, base = start_agent_and_prometheus(
        tmp_path, config_dir, exporter_port, collections_root,
        tls_cert_file=str(pki / "pop.pem"), tls_key_file=str(pki / "pop.key"), tls_ca_file=str(pki / "ca.pem"),
        tls_client_auth=True)
    try:
        readable = wait_for(lambda: api(base, "query", query='anycast_edge_maps_readable{pop="pop1"}')["result"],
                            "a scrape of pop1's agent over https")
        assert readable[0]["value"][1] == "0"
        for url in ("http://127.0.0.1:%d/metrics" % exporter_port, "https://127.0.0.1:%d/metrics" % exporter_port):
            with pytest.raises(OSError):  # URLError, SSLError, ConnectionResetError: all OSErrors
                urllib.request.urlopen(url, timeout=5,  # pylint: disable=consider-using-with
                                       context=ssl.create_default_context(cafile=str(pki / "ca.pem")))
    finally:
        server.stop()
        agent.stop()
    assert agent.proc.returncode == 0, (tmp_path / "agent.log").read_text()
