"""Inventory validation of the fleet sync's NATS cluster (anycast_edge_fleet_sync and the
anycast_edge_nats_* variables; plugins/module_utils/_inventory.py, _check_fleet_sync).

Each case starts from the valid inventory of test_inventory.py with the fleet sync on and every
POP's NATS settings given, breaks it, and states the exact problem lines: the variable path, the
value (never a secret's), why.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.anycast.edge.plugins.module_utils import _inventory
from test_inventory import EXAMPLE, VALID_BACKENDS, VALID_POPS, VALID_VARS, run_validation_play

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "agent"))
from anycast_edge_agent import config as agent_config  # noqa: E402  pylint: disable=wrong-import-position
from anycast_edge_agent import fleet_sync  # noqa: E402  pylint: disable=wrong-import-position

CERT = "-----BEGIN CERTIFICATE-----\nMIIBbjCCARWgAwIBAgIUYYP+Sg2SfRYVqHAp36Nz1WMsrws=\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n"
PASSWORDS = {"pop-ams1": "ams1-secret-password-0123", "pop-fra1": "fra1-secret-password-4567"}
ADDRESSES = {"pop-ams1": "192.0.2.1", "pop-fra1": "192.0.2.2"}


def fleet_inventory():
    variables, pops, backends = copy.deepcopy((VALID_VARS, VALID_POPS, VALID_BACKENDS))
    variables.update(anycast_edge_fleet_sync=True, anycast_edge_nats_tls_ca=CERT)
    for host in pops:
        pops[host].update(ansible_host=ADDRESSES[host], anycast_edge_nats_password=PASSWORDS[host],
                          anycast_edge_nats_tls_cert=CERT, anycast_edge_nats_tls_key=KEY)
    return variables, pops, backends


def check(variables=None, pops=None):
    """(problems, normalized fleet_sync) of the fleet inventory with ``variables`` and
    ``pops`` ({host: {var: value or None to delete}}) changed."""
    inventory = fleet_inventory()
    inventory[0].update(variables or {})
    for host, changes in (pops or {}).items():
        for name, value in changes.items():
            if value is None:
                inventory[1][host].pop(name, None)
            else:
                inventory[1][host][name] = value
    problems, normalized = _inventory.check(*inventory)
    return problems, normalized.get("fleet_sync")


def test_off_by_default_and_then_nothing_of_nats_is_needed():
    problems, normalized = _inventory.check(*copy.deepcopy((VALID_VARS, VALID_POPS, VALID_BACKENDS)))
    assert problems == [] and normalized["fleet_sync"] == {"enabled": False}
    assert check({"anycast_edge_fleet_sync": False, "anycast_edge_nats_tls_ca": "junk"}) == ([], {"enabled": False})


def test_on_resolves_each_pops_address_and_subject_token_and_the_agents_options():
    problems, fleet = check(pops={"pop-fra1": {"anycast_edge_nats_address": "192.0.2.22"}})
    assert problems == []
    assert fleet == {"enabled": True,
                     "pops": {"pop-ams1": {"address": "192.0.2.1", "origin": "pop-ams1"},
                              "pop-fra1": {"address": "192.0.2.22", "origin": "pop-fra1"}},
                     # replicas: one per server at most (two POPs)
                     "options": {"replicas": 2, "stream": "ANYCAST_EDGE_FLEET"}}
    problems, fleet = check({"anycast_edge_fleet_sync_options": {
        "import_rate_per_pop": 50.5, "import_burst_per_pop": 100, "import_max_entries_per_pop": "2000",
        "replicas": 1, "max_age_sec": 600, "stream": "FLEET2", "kinds": ["ban"],
        "punch_scan_interval_sec": 0.5, "sources_scan_interval_sec": 2}})
    assert problems == []
    assert fleet["options"] == {"import_rate_per_pop": 50.5, "import_burst_per_pop": 100,
                                "import_max_entries_per_pop": 2000, "replicas": 1, "max_age_sec": 600,
                                "stream": "FLEET2", "kinds": ["ban"], "punch_scan_interval_sec": 0.5,
                                "sources_scan_interval_sec": 2}


CASES = [
    ("not a boolean", {"anycast_edge_fleet_sync": "yes"}, None,
     ["anycast_edge_fleet_sync: yes is not a boolean (true or false)"]),
    ("nothing of NATS given", {"anycast_edge_nats_tls_ca": ""},
     {host: {"anycast_edge_nats_password": None, "anycast_edge_nats_tls_cert": None, "anycast_edge_nats_tls_key": None,
             "ansible_host": None} for host in PASSWORDS},
     ["anycast_edge_nats_tls_ca: is required with anycast_edge_fleet_sync: the PEM of the CA that signs every "
      "POP's NATS certificate (routes and clients are verified against it)"]
     + [line % host for host in sorted(PASSWORDS) for line in (
         "hostvars['%s'].ansible_host: None is not an IPv4 address: the POP's NATS server listens and routes on "
         "anycast_edge_nats_address (default: ansible_host), which must be one",
         "hostvars['%s'].anycast_edge_nats_password: is required with anycast_edge_fleet_sync (this POP's NATS "
         "login; vault it)",
         "hostvars['%s'].anycast_edge_nats_tls_cert: is required with anycast_edge_fleet_sync (the PEM of this "
         "POP's NATS certificate, signed by anycast_edge_nats_tls_ca, naming its NATS address)",
         "hostvars['%s'].anycast_edge_nats_tls_key: is required with anycast_edge_fleet_sync (the PEM of this "
         "POP's NATS private key; vault it)")]),
    ("addresses: a name, loopback, anycast, twice", None,
     {"pop-ams1": {"ansible_host": "pop-ams1.example.net"}, "pop-fra1": {"anycast_edge_nats_address": "127.0.0.1"}},
     ["hostvars['pop-ams1'].ansible_host: pop-ams1.example.net is not an IPv4 address: the POP's NATS server "
      "listens and routes on anycast_edge_nats_address (default: ansible_host), which must be one",
      "hostvars['pop-fra1'].anycast_edge_nats_address: 127.0.0.1 is a loopback address: the other POPs' NATS "
      "servers cannot route to it"]),
    ("an anycast NATS address, another POP's", None,
     {"pop-ams1": {"anycast_edge_nats_address": "198.51.100.9"}, "pop-fra1": {"ansible_host": "192.0.2.1"},
      },
     ["hostvars['pop-ams1'].anycast_edge_nats_address: 198.51.100.9 is inside an anycast prefix; the NATS "
      "cluster runs over the management network"]),
    ("the same address twice", None, {"pop-fra1": {"anycast_edge_nats_address": "192.0.2.1"}},
     ["hostvars['pop-fra1'].anycast_edge_nats_address: 192.0.2.1 is also the NATS address of pop-ams1"]),
    ("secrets that are wrong are not shown", None,
     {"pop-ams1": {"anycast_edge_nats_password": "short-secret"},
      "pop-fra1": {"anycast_edge_nats_password": " padded-secret-password ", "anycast_edge_nats_tls_key": "key-secret",
                   "anycast_edge_nats_tls_cert": "not a certificate"}},
     ["hostvars['pop-ams1'].anycast_edge_nats_password: (not shown) must be a string of at least 16 characters, "
      "without control characters or surrounding spaces",
      "hostvars['pop-fra1'].anycast_edge_nats_password: (not shown) must be a string of at least 16 characters, "
      "without control characters or surrounding spaces",
      "hostvars['pop-fra1'].anycast_edge_nats_tls_cert: is not a PEM certificate (-----BEGIN CERTIFICATE----- ...)",
      "hostvars['pop-fra1'].anycast_edge_nats_tls_key: (not shown) is not a PEM private key "
      "(-----BEGIN PRIVATE KEY----- ...)"]),
    ("an encrypted key (nats-server cannot read it) and a CA that is a key", {"anycast_edge_nats_tls_ca": KEY},
     {"pop-ams1": {"anycast_edge_nats_tls_key": KEY.replace("PRIVATE", "ENCRYPTED PRIVATE")}},
     ["anycast_edge_nats_tls_ca: is not a PEM certificate (-----BEGIN CERTIFICATE----- ...)",
      "hostvars['pop-ams1'].anycast_edge_nats_tls_key: (not shown) is not a PEM private key "
      "(-----BEGIN PRIVATE KEY----- ...)"]),
    ("ports", {"anycast_edge_nats_client_port": 70000, "anycast_edge_nats_cluster_port": "4222",
               "anycast_edge_nats_monitor_port": 6222}, None,
     ["anycast_edge_nats_client_port: 70000 is out of range (1..65535)"]),
    ("two services on one port", {"anycast_edge_nats_client_port": 4222, "anycast_edge_nats_cluster_port": 4222}, None,
     ["anycast_edge_nats_cluster_port: 4222 is also anycast_edge_nats_client_port"]),
    ("options", {"anycast_edge_fleet_sync_options": {
        "replicas": 3, "import_rate_per_pop": 0, "import_burst_per_pop": -1, "kinds": ["punch", "everything"],
        "stream": "a.b", "max_age_sec": True, "password": "x"}}, None,
     ["anycast_edge_fleet_sync_options.password: unknown setting (known: %s)" % ", ".join(_inventory.FLEET_SYNC_OPTION_KEYS),
      "anycast_edge_fleet_sync_options.max_age_sec: True is not a number > 0",
      "anycast_edge_fleet_sync_options.import_rate_per_pop: 0 is not a number > 0",
      "anycast_edge_fleet_sync_options.import_burst_per_pop: -1 must be > 0",
      "anycast_edge_fleet_sync_options.replicas: 3 is more than the 2 POP(s) of group pops (one server each)",
      "anycast_edge_fleet_sync_options.stream: a.b is not a JetStream stream name ([A-Za-z0-9_-]+)",
      "anycast_edge_fleet_sync_options.kinds: ['punch', 'everything'] is not a list of punch, ban, verified"]),
]


@pytest.mark.parametrize("variables, pops, expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_each_rule(variables, pops, expected):
    assert check(variables, pops)[0] == expected


def test_a_pop_name_that_is_no_nats_user_is_a_problem():
    variables, pops, backends = fleet_inventory()
    pops["pop ams1"] = pops.pop("pop-ams1")
    problems = _inventory.validate(variables, pops, backends)
    assert problems == ["groups['pops']: pop ams1 cannot be a NATS user and subject token (the fleet sync's "
                        "origin): use [A-Za-z0-9_.-] in the POP's inventory name"]


def test_the_nats_secrets_are_masked_and_the_nats_address_is_a_control_plane_source():
    variables, pops, backends = fleet_inventory()
    assert set(PASSWORDS.values()) | {KEY} <= set(_inventory.secrets(pops))
    pops["pop-fra1"]["anycast_edge_nats_address"] = "192.0.2.22"
    problems, normalized = _inventory.check(variables, pops, backends)
    assert problems == []
    assert {"address": "192.0.2.22/32", "reason": "NATS address of POP pop-fra1 (anycast_edge_nats_address)"} \
        in normalized["control_plane"]["pop-ams1"]


def test_the_options_and_defaults_are_the_agents():
    """One home each: the options inventory may set are the agent's fleet_sync settings less the
    connection the roles render; the default stream and the subject token are the agent's."""
    fields = set(field.name for field in dataclasses.fields(agent_config.FleetSyncConfig))
    connection = {"servers", "user", "password", "password_file", "tls_ca_file", "tls_cert_file", "tls_key_file"}
    assert set(_inventory.FLEET_SYNC_OPTION_KEYS) == fields - connection
    assert _inventory.FLEET_SYNC_DEFAULT_STREAM == agent_config.FleetSyncConfig.stream
    assert _inventory.FLEET_SYNC_KINDS == agent_config.FLEET_KINDS
    for name in ("pop1", "pop-b.example", "a.b.c"):
        assert _inventory.nats_subject_token(name) == fleet_sync.origin_token(name)


def test_the_role_collects_the_nats_variables():
    role_vars = yaml.safe_load((EXAMPLE.parents[1] / "roles" / "validate_inventory" / "vars" / "main.yml").read_text())
    assert set(_inventory.NATS_SECRET_VARS) | {"anycast_edge_nats_address", "anycast_edge_nats_tls_cert"} <= \
        set(role_vars["validate_inventory_pop_vars"])


def test_a_broken_fleet_sync_stops_the_play_without_showing_a_secret(tmp_path):
    inventory = tmp_path / "inventory"
    shutil.copytree(EXAMPLE, inventory)
    all_vars = yaml.safe_load((inventory / "group_vars" / "all.yml").read_text())
    all_vars.update(anycast_edge_fleet_sync=True, anycast_edge_nats_tls_ca=CERT)
    (inventory / "group_vars" / "all.yml").write_text(yaml.safe_dump(all_vars))
    pops = yaml.safe_load((inventory / "hosts.yml").read_text())["all"]["children"]["pops"]["hosts"]
    for index, host in enumerate(sorted(pops)):
        path = inventory / "host_vars" / (host + ".yml")
        host_vars = yaml.safe_load(path.read_text()) if path.exists() else {}
        host_vars.update(anycast_edge_nats_address="192.0.2.%d" % (100 + index), anycast_edge_nats_tls_cert=CERT,
                         anycast_edge_nats_tls_key=KEY, anycast_edge_nats_password="Good-NATS-Secret-%d" % index)
        path.write_text(yaml.safe_dump(host_vars))
    first = sorted(pops)[0]
    host_vars = yaml.safe_load((inventory / "host_vars" / (first + ".yml")).read_text())
    host_vars.update(anycast_edge_nats_password="Hunter2-short", anycast_edge_nats_tls_key="Hunter3-not-a-key")
    (inventory / "host_vars" / (first + ".yml")).write_text(yaml.safe_dump(host_vars))

    proc = run_validation_play(inventory, tmp_path, "-vvv")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "the anycast.edge inventory has 2 problems:" in proc.stdout, output
    assert "hostvars['%s'].anycast_edge_nats_password: (not shown) must be a string" % first in proc.stdout
    assert "hostvars['%s'].anycast_edge_nats_tls_key: (not shown) is not a PEM private key" % first in proc.stdout
    for secret in ["Hunter2-short", "Hunter3-not-a-key", KEY.splitlines()[1]] + \
            ["Good-NATS-Secret-%d" % index for index in range(len(pops))]:
        assert secret not in output, secret
    assert not list(tmp_path.glob("*.json"))


def lab_ca():
    return yaml.safe_load((EXAMPLE.parent / "lab" / "group_vars" / "pops.yml").read_text())["anycast_edge_nats_tls_ca"]


def test_the_pinned_fingerprint_is_the_lab_cas():
    assert _inventory.pem_certificate_sha256s(lab_ca()) == [_inventory.LAB_NATS_CA_SHA256]


def test_the_lab_ca_is_refused_outside_the_lab():
    """The lab's certificates and keys are public: a fleet trusting its CA admits anybody."""
    problems = check({"anycast_edge_nats_tls_ca": lab_ca()})[0]
    assert problems == ["anycast_edge_nats_tls_ca: is the VM lab's CA, whose certificates and keys are public in this "
                        "collection's repository: anybody could join this fleet's NATS cluster with them. Make your own "
                        "CA and certificates (roles/nats_fleet/README.md); only the lab's inventory sets "
                        "anycast_edge_lab_inventory: true"]
    # ... also inside a bundle of several CAs, and when the flag is not a real boolean
    problems = check({"anycast_edge_nats_tls_ca": CERT + lab_ca(), "anycast_edge_lab_inventory": "yes"})[0]
    assert problems[0] == "anycast_edge_lab_inventory: yes is not a boolean (true or false)"
    assert problems[1].startswith("anycast_edge_nats_tls_ca: is the VM lab's CA")
    # the control: the lab says it is the lab; another CA needs no flag
    assert check({"anycast_edge_nats_tls_ca": lab_ca(), "anycast_edge_lab_inventory": True})[0] == []
    assert check({"anycast_edge_lab_inventory": False})[0] == []


def test_the_lab_inventory_without_its_flag_is_refused(tmp_path):
    inventory = tmp_path / "inventory"
    shutil.copytree(EXAMPLE.parent / "lab", inventory)
    all_vars = inventory / "group_vars" / "all.yml"
    all_vars.write_text(all_vars.read_text().replace("anycast_edge_lab_inventory: true\n", ""))
    proc = run_validation_play(inventory, tmp_path)
    assert proc.returncode != 0
    assert "anycast_edge_nats_tls_ca: is the VM lab's CA" in proc.stdout + proc.stderr
    assert not list(tmp_path.glob("*.json"))
