"""The nats_fleet role (and edge_agent's fleet sync settings), run by the real ansible-playbook for
three POPs on this machine (local connection), each POP's files in a temporary root of its own.

systemd is not PID 1 here, so the roles start nothing (anycast_edge_nats_manage_service: false);
the test starts each POP's Debian nats-server on the configuration the role wrote, as the unit's
drop-in would, each in a network namespace of its own holding the POP's NATS address (the three
joined by veths, as the management network joins real POPs). What is checked: the files and their
modes, a second run that changes nothing, a check run that says what a real one would change and
changes nothing, the servers forming one cluster over mutual TLS (a server with a certificate of
another CA refused, the same server with one of the fleet's CA let in), and a client logging in the way
the agent does (the agent's own connection code on the configuration edge_agent rendered, the
password from the credential file) using JetStream, while a wrong password, a client without TLS,
and a POP publishing in another POP's name are refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import secrets
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from fleet_pki import issue, make_ca
from helpers import waiting
from helpers.netns import veth
# agent_world puts agent/ on sys.path.
import agent_world  # noqa: F401  pylint: disable=unused-import
from anycast_edge_agent import config as agent_config
from anycast_edge_agent.fleet_sync import FleetSync

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the roles install root-owned files")

VENV_BIN = Path(sys.executable).parent
PLAYBOOK = Path(__file__).resolve().parent / "playbooks" / "nats_fleet_role.yml"
# Inventory name -> NATS address (its ansible_host). A dotted name: its subject token is pop2~example.
POPS = {"pop1": "192.0.2.11", "pop2.example": "192.0.2.12", "pop3": "192.0.2.13"}
STREAM = "ANYCAST_EDGE_FLEET"


def pki(folder: Path) -> dict:
    """{name: (cert PEM, key PEM)} of every POP (its NATS address in the certificate), the CA's
    PEM under "ca", and the path of another CA's certificate under "stranger_ca_file"."""
    folder.mkdir()
    make_ca(folder, "ca")
    make_ca(folder, "stranger-ca")
    made = {"ca": (folder / "ca.pem").read_text(), "stranger_ca_file": str(folder / "stranger-ca.pem")}
    for name, address in POPS.items():
        issue(folder, name, "ca", "subjectAltName=IP:%s\nextendedKeyUsage=serverAuth,clientAuth" % address)
        made[name] = ((folder / (name + ".pem")).read_text(), (folder / (name + ".key")).read_text())
    return made


def inventory(tmp_path: Path, certs: dict, passwords: dict, **fleet_vars) -> Path:
    hosts = {}
    for index, (name, address) in enumerate(sorted(POPS.items())):
        root = tmp_path / "root" / name
        hosts[name] = {
            "ansible_host": address, "anycast_edge_uplink": "eth1", "anycast_edge_tunnel_address": "10.0.0.%d" % (index + 1),
            "anycast_edge_nats_password": passwords[name],
            "anycast_edge_nats_tls_cert": certs[name][0], "anycast_edge_nats_tls_key": certs[name][1],
            "anycast_edge_nats_config_dir": str(root / "etc/anycast-edge/nats"),
            "anycast_edge_nats_store_dir": str(root / "var/lib/anycast-edge/nats"),
            "anycast_edge_nats_unit_dir": str(root / "etc/systemd/system"),
            "anycast_edge_agent_lib_dir": str(root / "usr/local/lib/anycast-edge/agent"),
            "anycast_edge_agent_config_dir": str(root / "etc/anycast-edge"),
            "anycast_edge_agent_unit_dir": str(root / "etc/systemd/system"),
        }
    data = {"all": {
        "vars": {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "anycast_edge_asn": 64500,
            "anycast_edge_prefixes": ["198.51.100.0/24"],
            "anycast_edge_services": [],
            "anycast_edge_manage_packages": False,
            "anycast_edge_fleet_sync": True,
            "anycast_edge_nats_tls_ca": certs["ca"],
            "anycast_edge_nats_manage_service": False,
            "anycast_edge_agent_manage_service": False,
            "anycast_edge_agent_manage_user": False,
            "anycast_edge_agent_python": sys.executable,
            "anycast_edge_agent_archive": str(tmp_path / "controller" / "agent.tar"),
            **fleet_vars,
        },
        "children": {
            "pops": {"hosts": hosts},
            "backends": {"hosts": {"game1": {"anycast_edge_tunnel_address": "10.1.0.10", "anycast_edge_uplink": "eth0"}}},
        },
    }}
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def play(inventory_path: Path, netns, *args: str, expect_failure: bool = False) -> tuple[dict, str]:
    """Run the playbook for the three POPs inside ``netns`` (edge_agent's probe routes are the
    namespace's); ({POP: changed count}, output)."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0",
               PATH="%s:%s" % (VENV_BIN, os.environ.get("PATH", "")))
    done = subprocess.run(["ip", "netns", "exec", netns.name, str(VENV_BIN / "ansible-playbook"), "-i", str(inventory_path),
                           str(PLAYBOOK), *args], capture_output=True, text=True, env=env, timeout=600, check=False)
    output = done.stdout + done.stderr
    if expect_failure:
        assert done.returncode != 0, output
        return {}, output
    assert done.returncode == 0, output
    changed = {}
    for name in POPS:
        recap = re.search(r"^%s\s*:.*?changed=(\d+).*?failed=(\d+)" % re.escape(name), output, re.M)
        assert recap and recap.group(2) == "0", output
        changed[name] = int(recap.group(1))
    return changed, output


def files(root: Path) -> dict:
    return {str(path.relative_to(root)): (path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
            for path in sorted(root.rglob("*")) if path.is_file()}


def pop_root(tmp_path: Path, name: str) -> Path:
    return tmp_path / "root" / name


class Servers:
    """Each POP's nats-server, started as the drop-in starts it, in the POP's own namespace."""

    def __init__(self, tmp_path, namespaces):
        self.tmp_path = tmp_path
        self.namespaces = namespaces
        self.processes = {}

    def start(self, name):
        config = pop_root(self.tmp_path, name) / "etc/anycast-edge/nats/nats-server.conf"
        log = open(self.tmp_path / ("nats-%s.log" % name), "ab")  # pylint: disable=consider-using-with
        self.processes[name] = subprocess.Popen(["ip", "netns", "exec", self.namespaces[name].name,
                                                 "/usr/sbin/nats-server", "-c", str(config)],
                                                stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def stop(self):
        for process in self.processes.values():
            process.kill()
            process.wait(timeout=10)

    def log(self, name):
        return (self.tmp_path / ("nats-%s.log" % name)).read_text(errors="replace")

    def monitor(self, name, endpoint):
        """The server's monitoring endpoint (on the POP's loopback)."""
        with self.namespaces[name].entered():
            with urllib.request.urlopen("http://127.0.0.1:8222/" + endpoint, timeout=2) as answer:
                return json.load(answer)


def management_network(netns):
    """One namespace per POP with its NATS address, a veth to each other POP and a route to its address."""
    namespaces = {name: netns(name.split(".")[0]) for name in POPS}
    names = sorted(POPS)
    for name in names:
        namespaces[name].ip("addr", "add", POPS[name] + "/32", "dev", "lo")
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            a, b = "m%d%d" % (i, names.index(second)), "m%d%d" % (names.index(second), i)
            veth(namespaces[first], a, namespaces[second], b)
            namespaces[first].ip("route", "add", POPS[second] + "/32", "dev", a)
            namespaces[second].ip("route", "add", POPS[first] + "/32", "dev", b)
    return namespaces


def wait_for(predicate, what, timeout=30.0):
    return waiting.wait_for(predicate, what, timeout, errors=Exception)


def agent_settings(tmp_path, name):
    """The fleet sync settings edge_agent rendered for ``name``, loaded by the agent's own loader."""
    return agent_config.load(str(pop_root(tmp_path, name) / "etc/anycast-edge/agent.json")).fleet_sync


async def login(settings, name, **changes):
    """A client connected as the agent connects (FleetSync's own options), or the exception."""
    import nats  # pylint: disable=import-outside-toplevel
    options = FleetSync(settings, name, None)._connect_options()  # pylint: disable=protected-access
    options.update(allow_reconnect=False, connect_timeout=3, **changes)
    return await nats.connect(**options)


def test_the_role_converges_and_the_servers_form_an_authenticated_cluster(tmp_path, netns):
    certs = pki(tmp_path / "pki")
    passwords = {name: secrets.token_urlsafe(24) for name in POPS}
    namespaces = management_network(netns)
    inv = inventory(tmp_path, certs, passwords)

    # No server runs yet (the test starts them below): the stream waits for them.
    no_stream = ("-e", "anycast_edge_nats_manage_stream=false")
    changed, output = play(inv, namespaces["pop1"], *no_stream)
    assert all(count > 0 for count in changed.values()), output
    for name, password in passwords.items():
        assert password not in output, "a NATS password in the play's output"
    assert certs["pop1"][1].strip().splitlines()[1] not in output, "the key in the play's output"

    # The files, their owners' modes: the key and the configuration (the logins' hashes) are not
    # world-readable, the agent's password is root's alone.
    root = pop_root(tmp_path, "pop1")
    nats_dir = root / "etc/anycast-edge/nats"
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in nats_dir.iterdir()}
    assert modes == {"ca.pem": 0o644, "server.pem": 0o644, "server.key": 0o640, "nats-server.conf": 0o640}
    assert stat.S_IMODE(nats_dir.stat().st_mode) == 0o750
    assert (nats_dir / "server.key").read_text() == certs["pop1"][1].strip() + "\n"
    assert stat.S_IMODE((root / "var/lib/anycast-edge/nats").stat().st_mode) == 0o700
    config = (nats_dir / "nats-server.conf").read_text()
    assert not any(password in config for password in passwords.values())
    # The three POPs' logins and the stream's.
    assert len(re.findall(r'password: "\$2b\$10\$', config)) == 4
    assert 'user: "anycast-edge/stream"' in config
    assert 'listen: "192.0.2.11:4222"' in config and 'http: "127.0.0.1:8222"' in config
    assert '"nats-route://192.0.2.12:6222", "nats-route://192.0.2.13:6222"' in config
    dropin = (root / "etc/systemd/system/nats-server.service.d/anycast-edge.conf").read_text()
    assert "ExecStart=/usr/sbin/nats-server -c %s/nats-server.conf" % nats_dir in dropin

    agent_dir = root / "etc/anycast-edge"
    assert stat.S_IMODE((agent_dir / "nats-password").stat().st_mode) == 0o600
    assert (agent_dir / "nats-password").read_text() == passwords["pop1"]
    agent_json = (agent_dir / "agent.json").read_text()
    assert not any(password in agent_json for password in passwords.values())
    settings = agent_settings(tmp_path, "pop1")
    assert settings.servers == ["tls://192.0.2.11:4222", "tls://192.0.2.12:4222", "tls://192.0.2.13:4222"]
    assert (settings.user, settings.password, settings.password_file, settings.replicas) == (
        "pop1", "", "$CREDENTIALS_DIRECTORY/nats-password", 3)
    assert settings.tls_ca_file == str(agent_dir / "nats-ca.pem")
    unit = (root / "etc/systemd/system/anycast-edge-agent.service").read_text()
    assert "LoadCredential=nats-password:%s/nats-password" % agent_dir in unit
    allowed = re.search(r"^IPAddressAllow=(.*)$", unit, re.M).group(1).split()
    assert set(POPS.values()) <= set(allowed)
    # nats-py travels with the agent, and imports from there with nothing but the standard library.
    lib = root / "usr/local/lib/anycast-edge/agent"
    probe = subprocess.run([sys.executable, "-S", "-c", "import sys; sys.path.insert(0, %r); import nats, nats.js;"
                            "print(nats.__file__)" % str(lib)], capture_output=True, text=True, check=True)
    assert probe.stdout.startswith(str(lib)), probe.stdout

    # Twice: nothing changes (the hashes' salts are derived, not random).
    before = files(tmp_path / "root")
    changed, output = play(inv, namespaces["pop1"], *no_stream)
    assert changed == dict.fromkeys(POPS, 0), output
    assert files(tmp_path / "root") == before

    # A new password for pop3, in check mode: every server's logins (pop3's hash) and pop3's agent
    # credential would change; nothing does, and neither password is shown.
    new_passwords = dict(passwords, pop3=secrets.token_urlsafe(24))
    changed, output = play(inventory(tmp_path, certs, new_passwords), namespaces["pop1"], "--check", "--diff", *no_stream)
    assert changed == {"pop1": 1, "pop2.example": 1, "pop3": 2}, output
    assert files(tmp_path / "root") == before
    assert passwords["pop3"] not in output and new_passwords["pop3"] not in output
    inv = inventory(tmp_path, certs, passwords)

    servers = Servers(tmp_path, namespaces)
    try:
        for name in POPS:
            servers.start(name)
        # One cluster: each server routes to the two others (mutual TLS), JetStream has its meta leader.
        for name in POPS:
            routes = wait_for(lambda name=name: servers.monitor(name, "routez")["num_routes"] == 2
                              and servers.monitor(name, "routez"), "%s's two routes" % name)
            assert sorted(route["ip"] for route in routes["routes"]) == sorted(
                address for other, address in POPS.items() if other != name), (routes, servers.log(name))
        wait_for(lambda: servers.monitor("pop1", "jsz").get("meta_cluster", {}).get("leader"), "JetStream's leader")
        varz = servers.monitor("pop1", "varz")
        assert varz["tls_required"] and varz["cluster"]["tls_required"] and varz["cluster"]["tls_verify"]
        the_role_makes_the_stream(tmp_path, inv, certs, passwords, namespaces)
        run_clients(tmp_path, namespaces, passwords, certs)
        assert "TLS handshake error" in servers.log("pop1")
        stranger_routes(tmp_path, netns, namespaces, servers)
    finally:
        servers.stop()
    for name in POPS:
        assert not any(password in servers.log(name) for password in passwords.values())


STRANGER = "192.0.2.66"
STRANGER_CONFIG = """server_name: stranger
listen: "%(address)s:4222"
cluster {
  name: anycast_edge
  listen: "%(address)s:6222"
  tls { cert_file: "%(pki)s/%(cert)s.pem", key_file: "%(pki)s/%(cert)s.key", ca_file: "%(pki)s/ca.pem", verify: true }
  routes: ["nats-route://%(pop1)s:6222"]
}
"""


def stranger_routes(tmp_path, netns, namespaces, servers):
    """A server on the management network (it knows the fleet's CA, a public certificate) tries to
    route to pop1: with a certificate of its own CA it is refused, and pop1 keeps its two routes;
    the same server with a certificate of the fleet's CA joins (what the refusal rests on)."""
    pki_dir = tmp_path / "pki"
    issue(pki_dir, "stranger", "stranger-ca", "subjectAltName=IP:%s\nextendedKeyUsage=serverAuth,clientAuth" % STRANGER)
    issue(pki_dir, "insider", "ca", "subjectAltName=IP:%s\nextendedKeyUsage=serverAuth,clientAuth" % STRANGER)
    stranger = netns("stranger")
    stranger.ip("addr", "add", STRANGER + "/32", "dev", "lo")
    veth(stranger, "s0", namespaces["pop1"], "s1")
    stranger.ip("route", "add", POPS["pop1"] + "/32", "dev", "s0")
    namespaces["pop1"].ip("route", "add", STRANGER + "/32", "dev", "s1")
    refused_before = servers.log("pop1").count("TLS route handshake error")
    for cert, routes in (("stranger", 2), ("insider", 3)):
        config = tmp_path / (cert + ".conf")
        config.write_text(STRANGER_CONFIG % dict(address=STRANGER, pki=pki_dir, cert=cert, pop1=POPS["pop1"]))
        with open(tmp_path / (cert + ".log"), "ab") as log:
            process = subprocess.Popen(  # pylint: disable=consider-using-with
                ["ip", "netns", "exec", stranger.name, "/usr/sbin/nats-server", "-c", str(config)],
                stdout=log, stderr=subprocess.STDOUT)
        try:
            if routes == 2:
                wait_for(lambda: servers.log("pop1").count("TLS route handshake error") > refused_before,
                         "pop1 refusing the stranger's route")
                time.sleep(2)
                assert servers.monitor("pop1", "routez")["num_routes"] == 2
            else:
                wait_for(lambda: servers.monitor("pop1", "routez")["num_routes"] == 3, "the insider's route")
        finally:
            process.kill()
            process.wait(timeout=10)


def the_role_makes_the_stream(tmp_path, inv, certs, passwords, namespaces):
    """With the servers up, the play makes the fleet's stream (once, from the first POP, with the
    stream's login), a rerun leaves it alone, and a new max_age_sec is an update in place."""
    changed, output = play(inv, namespaces["pop1"])
    assert changed == {"pop1": 1, "pop2.example": 0, "pop3": 0}, output
    assert not any(password in output for password in passwords.values())
    with namespaces["pop1"].entered():
        info = asyncio.run(stream_info(tmp_path, passwords["pop1"]))
    assert (info.config.num_replicas, info.config.subjects, info.config.max_msgs_per_subject, info.config.max_age) == (
        3, ["anycast_edge.fleet.>"], 1, 3600.0)
    assert info.cluster.leader and len(info.cluster.replicas) == 2
    changed, output = play(inv, namespaces["pop1"])
    assert changed == dict.fromkeys(POPS, 0), output
    # Each play below moves max_age_sec from the previous play's value (1800, 900, 600), then back
    # to the inventory's: every one changes the agent's configuration and the stream, in place.
    shorter = inventory(tmp_path, certs, passwords, anycast_edge_fleet_sync_options={"max_age_sec": 1800})
    changed, output = play(shorter, namespaces["pop1"])
    assert changed["pop1"] == 2, output   # the agent's configuration and the stream
    with namespaces["pop1"].entered():
        assert asyncio.run(stream_info(tmp_path, passwords["pop1"])).config.max_age == 1800.0
    # The agent's tag alone (`--tags anycast_edge_agent`) also brings the stream to the inventory:
    # the stream's password is derived under that tag too (the task failed on its undefined value
    # before), and the task shows its diff (a task-wide no_log hid it) but never a password.
    tagged = inventory(tmp_path, certs, passwords, anycast_edge_fleet_sync_options={"max_age_sec": 900})
    changed, output = play(tagged, namespaces["pop1"], "--tags", "anycast_edge_agent", "--diff")
    assert changed["pop1"] == 2, output
    assert '+    "max_age": 900.0' in output, output
    assert not any(password in output for password in passwords.values())
    with namespaces["pop1"].entered():
        assert asyncio.run(stream_info(tmp_path, passwords["pop1"])).config.max_age == 900.0
    # Skipping the servers' tag (`--skip-tags anycast_edge_nats`) still runs the agent's tasks,
    # the stream's among them: its password is derived then too (an undefined value before).
    skipped = inventory(tmp_path, certs, passwords, anycast_edge_fleet_sync_options={"max_age_sec": 600})
    changed, output = play(skipped, namespaces["pop1"], "--skip-tags", "anycast_edge_nats")
    assert changed["pop1"] == 2, output
    assert not any(password in output for password in passwords.values())
    with namespaces["pop1"].entered():
        assert asyncio.run(stream_info(tmp_path, passwords["pop1"])).config.max_age == 600.0
    # inventory() writes the same file: the fleet's settings back as they were (what run_clients expects).
    changed, output = play(inventory(tmp_path, certs, passwords), namespaces["pop1"], "--skip-tags", "anycast_edge_nats")
    assert changed["pop1"] == 2, output
    with namespaces["pop1"].entered():
        assert asyncio.run(stream_info(tmp_path, passwords["pop1"])).config.max_age == 3600.0


async def stream_info(tmp_path, password):
    """The fleet stream's info, read with pop1's login (it may read it)."""
    settings = dataclasses.replace(agent_settings(tmp_path, "pop1"), password=password, password_file="")
    client = await login(settings, "pop1")
    try:
        return await client.jetstream(timeout=5).stream_info(STREAM)
    finally:
        await client.close()


def run_clients(tmp_path, namespaces, passwords, certs):
    """The agents' logins, run from pop1's namespace (its own server first, the others through the veths)."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    os.environ["CREDENTIALS_DIRECTORY"] = str(credentials)
    try:
        with namespaces["pop1"].entered():
            asyncio.run(clients(tmp_path, passwords, certs, credentials))
            # A login in clear text (the right password, no TLS): the server wants a TLS handshake,
            # and closes the connection without an answer.
            with socket.create_connection((POPS["pop1"], 4222), timeout=5) as sock:
                stream = sock.makefile("rwb")
                assert json.loads(stream.readline().split(b" ", 1)[1])["tls_required"] is True
                stream.write(b'CONNECT {"user":"pop1","pass":"%s"}\r\nPING\r\n' % passwords["pop1"].encode())
                stream.flush()
                assert stream.readline() == b""
    finally:
        del os.environ["CREDENTIALS_DIRECTORY"]


async def clients(tmp_path, passwords, certs, credentials):
    import nats  # pylint: disable=import-outside-toplevel
    from nats.js import api  # pylint: disable=import-outside-toplevel
    pop1, pop2 = agent_settings(tmp_path, "pop1"), agent_settings(tmp_path, "pop2.example")

    # pop1 logs in as the agent does: the password from the credential systemd would hand it.
    (credentials / "nats-password").write_text(passwords["pop1"])
    client = await login(pop1, "pop1")
    js = client.jetstream(timeout=5)
    await FleetSync(pop1, "pop1", None)._ensure_stream(js)  # pylint: disable=protected-access
    info = await js.stream_info(STREAM)
    assert info.config.num_replicas == 3 and info.config.subjects == ["anycast_edge.fleet.>"]
    ack = await js.publish("anycast_edge.fleet.pop1.punch.00", b'{"v":1}')
    assert ack.stream == STREAM

    # pop2.example reads it (an ordered consumer, as the agent's) and publishes under its own name.
    (credentials / "nats-password").write_text(passwords["pop2.example"])
    errors = []

    async def on_error(exc):
        errors.append(str(exc))

    other = await login(pop2, "pop2.example", servers=list(reversed(pop2.servers)), error_cb=on_error)
    other_js = other.jetstream(timeout=5)
    received = asyncio.Queue()

    async def on_message(msg):
        received.put_nowait(msg.subject)

    subscription = await other_js.subscribe("anycast_edge.fleet.>", stream=STREAM, ordered_consumer=True,
                                            deliver_policy=api.DeliverPolicy.ALL, cb=on_message)
    assert await asyncio.wait_for(received.get(), 10) == "anycast_edge.fleet.pop1.punch.00"
    await other_js.publish("anycast_edge.fleet.pop2~example.ban.01", b'{"v":1}')
    assert await asyncio.wait_for(received.get(), 10) == "anycast_edge.fleet.pop2~example.ban.01"

    # ... but not in pop1's name, nor may it delete, purge, change or (re)create the fleet's stream,
    # make a durable consumer (it would hold the stream's messages for it) or delete a consumer: the
    # servers refuse each (the stream is the roles', made with its own login).
    assert errors == []
    with pytest.raises(nats.errors.TimeoutError):
        await other_js.publish("anycast_edge.fleet.pop1.ban.02", b'{"v":1}', timeout=2)
    # What the agent's bus loop does besides: read the stream's info, its consumer's (the watchdog).
    assert (await other_js.stream_info(STREAM)).config.name == STREAM
    assert (await subscription.consumer_info()).stream_name == STREAM
    # The one consumer subject it may use makes ephemeral consumers only: a durable asked for there
    # is refused by the server itself.
    answer = await other.request("$JS.API.CONSUMER.CREATE." + STREAM, json.dumps(
        {"stream_name": STREAM, "config": {"durable_name": "hoard", "ack_policy": "explicit"}}).encode(), timeout=5)
    assert "error" in json.loads(answer.data), answer.data
    info = await js.stream_info(STREAM)
    attempts = (
        ("stream.delete." + STREAM, other_js.delete_stream(STREAM)),
        ("stream.purge." + STREAM, other_js.purge_stream(STREAM)),
        ("stream.update." + STREAM, other_js.update_stream(info.config.evolve(max_age=1.0))),
        ("stream.create." + STREAM, other_js.add_stream(info.config)),
        ("stream.create.other", other_js.add_stream(name="other", subjects=["other.>"])),
        ("consumer.durable.create.%s.hoard" % STREAM, other_js.add_consumer(STREAM, durable_name="hoard")),
        ("consumer.create.%s.hoard" % STREAM, other_js.add_consumer(STREAM, name="hoard", durable_name="hoard")),
        ("consumer.delete.%s.%s" % (STREAM, subscription._consumer),  # pylint: disable=protected-access
         other_js.delete_consumer(STREAM, subscription._consumer)),  # pylint: disable=protected-access
    )
    for subject, attempt in attempts:
        with pytest.raises(nats.errors.TimeoutError):
            await asyncio.wait_for(attempt, 10)
    assert errors == ['nats: permissions violation for publish to "anycast_edge.fleet.pop1.ban.02"'] + [
        'nats: permissions violation for publish to "$js.api.%s"' % subject.lower() for subject, dummy in attempts], errors
    info = await js.stream_info(STREAM)
    assert info.state.messages == 2 and info.state.consumer_count == 1 and info.config.max_age == 3600.0
    await subscription.unsubscribe()
    await other.close()
    await client.close()

    # A wrong password, another POP's password, and no TLS are refused.
    (credentials / "nats-password").write_text("not-" + passwords["pop1"])
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await login(pop1, "pop1")
    (credentials / "nats-password").write_text(passwords["pop3"])
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await login(pop1, "pop1")
    (credentials / "nats-password").write_text(passwords["pop1"])
    # An agent that trusts another CA does not trust the servers.
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        await login(dataclasses.replace(pop1, tls_ca_file=certs["stranger_ca_file"]), "pop1")
