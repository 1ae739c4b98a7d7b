"""ipip_tunnel and the ipip_tunnels role through real ansible-playbook, in network namespaces.

This host's kernel has no ipip, so what can run here is run here: the failure when the kernel
lacks ipip (it must say so and name `modprobe ipip`, and leave nothing behind), check mode, the
refusal to touch links that are not ours, pruning, and the role's derivation through real
hostvars. Each module test runs under both pyroute2 versions the module must support: 0.9 (the
venv's Python) and 0.7 (Debian's python3-pyroute2 under /usr/bin/python3). Real tunnels are
exercised in the VM lab.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from ansible_collections.anycast.edge.plugins.filter import ipip_tunnels

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

VENV_BIN = Path(sys.executable).parent
DEBIAN_PYTHON = "/usr/bin/python3"


INTERPRETERS = [pytest.param(sys.executable, id="pyroute2-0.9-venv"),
                # make setup installs python3-pyroute2: a missing one fails the test, loudly.
                pytest.param(DEBIAN_PYTHON, id="pyroute2-0.7-debian")]

KERNEL_HAS_IPIP = os.path.isdir("/sys/module/ipip")


def sh(*argv):
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, "%s: %s" % (" ".join(argv), done.stderr)
    return done.stdout


@pytest.fixture
def namespace():
    name = "aedge-ipip-%s" % uuid.uuid4().hex[:6]
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def links(namespace):
    """name -> `ip -j -d link` entry of every link in the namespace."""
    return dict((entry["ifname"], entry)
                for entry in json.loads(sh("ip", "-n", namespace, "-j", "-d", "link", "show")))


def play(namespace, workdir, tasks, python=None, inventory="localhost,", limit=None,
         extra_args=()):
    """Run one play (hosts: all) in the namespace; return ({host: registered results}, output)."""
    workdir.mkdir(parents=True, exist_ok=True)
    registered = []
    body = []
    for index, task in enumerate(tasks):
        task = dict(task)
        if "ansible.builtin.include_role" not in task:
            task.setdefault("register", "step_%d" % index)
            task.setdefault("ignore_errors", True)
            registered.append(task["register"])
        body.append(task)
    body.append({"name": "Save the results", "ansible.builtin.copy": {
        "dest": str(workdir / "results-{{ inventory_hostname }}.json"), "mode": "0600",
        "content": "{{ [%s] | to_json }}" % ", ".join(registered)},
        "check_mode": False, "diff": False})
    playbook = workdir / "playbook.yml"
    playbook.write_text(yaml.safe_dump([{"name": "ipip test", "hosts": "all",
                                         "gather_facts": False, "tasks": body}], sort_keys=False))
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0",
               ANSIBLE_LOCAL_TEMP=str(workdir / "tmp"), ANSIBLE_REMOTE_TEMP=str(workdir / "tmp"),
               PATH="%s:%s" % (VENV_BIN, os.environ.get("PATH", "")))
    argv = ["ip", "netns", "exec", namespace, str(VENV_BIN / "ansible-playbook"),
            "-i", inventory, "-c", "local",
            "-e", "ansible_python_interpreter=%s" % (python or sys.executable)]
    if limit:
        argv += ["--limit", limit]
    argv += list(extra_args) + [str(playbook)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    output = done.stdout + done.stderr
    saved = dict((path.name[len("results-"):-len(".json")], json.loads(path.read_text()))
                 for path in workdir.glob("results-*.json"))
    assert done.returncode == 0 and saved, output
    return saved, output


TUNNEL = {"name": "ae-test1", "local": "192.0.2.1", "remote": "198.51.100.20", "ttl": 64,
          "addresses": ["100.64.0.0/31"], "description": "peer game1"}


@pytest.mark.skipif(KERNEL_HAS_IPIP, reason="this kernel has ipip; the error path cannot happen")
@pytest.mark.parametrize("python", INTERPRETERS)
def test_kernel_without_ipip_fails_clearly_and_leaves_nothing(namespace, tmp_path, python):
    before = links(namespace)
    results, dummy = play(namespace, tmp_path, [
        {"anycast.edge.ipip_tunnel": TUNNEL, "diff": True},
        {"anycast.edge.ipip_tunnel": {"name": "ae-ext", "external": True}},
    ], python=python)
    results = results["localhost"]
    for result in results:
        assert result["failed"] is True and result["changed"] is False
        assert "the kernel lacks ipip" in result["msg"]
        assert "modprobe ipip" in result["msg"]
    assert results[0]["msg"].startswith("create ae-test1: the kernel lacks ipip")
    assert links(namespace) == before


@pytest.mark.skipif(KERNEL_HAS_IPIP, reason="this kernel has ipip; no warning to expect")
@pytest.mark.parametrize("python", INTERPRETERS)
def test_check_mode_predicts_the_tunnel_warns_and_changes_nothing(namespace, tmp_path, python):
    before = links(namespace)
    results, output = play(namespace, tmp_path, [
        {"anycast.edge.ipip_tunnel": TUNNEL, "check_mode": True, "diff": True},
    ], python=python)
    result = results["localhost"][0]
    assert result["changed"] is True and not result.get("failed")
    assert result["actions"] == ["create ae-test1", "add address 100.64.0.0/31 to ae-test1"]
    assert result["diff"]["before"] == {}
    assert result["diff"]["after"] == {
        "name": "ae-test1", "kind": "ipip", "ours": True, "description": "peer game1",
        "local": "192.0.2.1", "remote": "198.51.100.20", "ttl": 64, "mtu": None,
        "admin_state": "up", "external": False, "addresses": ["100.64.0.0/31"]}
    assert "[WARNING]: this kernel has no ipip" in output and "creating ae-test1 will fail" in output
    assert "modprobe ipip" in output
    assert links(namespace) == before


@pytest.mark.parametrize("python", INTERPRETERS)
def test_links_that_are_not_ours_are_left_alone(namespace, tmp_path, python):
    # A veth named like our tunnels and even carrying our alias: not an ipip link, not ours.
    sh("ip", "-n", namespace, "link", "add", "ae-test1", "type", "veth", "peer", "name", "peer0")
    sh("ip", "-n", namespace, "link", "set", "ae-test1", "alias", "anycast.edge")
    sh("ip", "-n", namespace, "addr", "add", "10.9.9.1/30", "dev", "ae-test1")
    before = links(namespace)
    results, dummy = play(namespace, tmp_path, [
        {"anycast.edge.ipip_tunnel": TUNNEL},
        {"anycast.edge.ipip_tunnel": {"name": "ae-test1", "state": "absent"}},
        {"anycast.edge.ipip_tunnel": {"state": "pruned", "keep": []}, "diff": True},
        {"anycast.edge.ipip_tunnel": {"name": "ae-none", "state": "absent"}},
        {"anycast.edge.ipip_tunnel": {"name": "ae-too-long-for-linux"}},
    ], python=python)
    results = results["localhost"]
    for result in results[:2]:
        assert result["failed"] is True and result["changed"] is False
        assert result["msg"] == ("name: ae-test1 already exists and is a veth link; it is left "
                                 "alone - pick another name or remove it yourself")
    assert results[2]["changed"] is False and results[2]["removed"] == []
    assert results[2]["diff"] == {"before": {}, "after": {}}
    assert results[3]["changed"] is False and not results[3].get("failed")
    assert results[4]["failed"] is True
    assert "name: 'ae-too-long-for-linux' is not a Linux interface name" in results[4]["msg"]
    assert links(namespace) == before


INVENTORY = {
    "all": {
        "vars": {"ansible_connection": "local", "anycast_edge_tunnel_pool": "100.64.8.0/24"},
        "children": {
            "pops": {"hosts": {"pop-a": {"anycast_edge_tunnel_address": "192.0.2.1"},
                               "pop-b": {"anycast_edge_tunnel_address": "192.0.2.2"}}},
            "backends": {"hosts": {"game1": {"anycast_edge_tunnel_address": "198.51.100.10"},
                                   "game2": {"anycast_edge_tunnel_address": "198.51.100.11"}}},
        },
    },
}


@pytest.mark.skipif(KERNEL_HAS_IPIP, reason="check mode here is expected to warn about ipip")
def test_role_in_check_mode_derives_both_ends_from_hostvars(namespace, tmp_path):
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump(INVENTORY))
    tasks = [
        {"name": "Tunnels", "ansible.builtin.include_role": {"name": "anycast.edge.ipip_tunnels"}},
        {"name": "What the role derived", "ansible.builtin.debug": {"var": "ipip_tunnels_wanted"},
         "register": "wanted"},
    ]
    results, output = play(namespace, tmp_path, tasks, inventory=str(inventory),
                           limit="pop-b,game1", extra_args=["--check", "--diff"])
    assert set(results) == {"pop-b", "game1"}
    # pairs sorted: (pop-a,game1)=0 (pop-a,game2)=1 (pop-b,game1)=2 (pop-b,game2)=3, a /31 each
    # of 100.64.8.0/24; the POP has the even address, the backend the odd one.
    derived = dict((host, [(t["peer"], t["local"], t["remote"], t["address"], t["peer_address"])
                           for t in results[host][0]["ipip_tunnels_wanted"]])
                   for host in results)
    assert derived == {
        "pop-b": [("game1", "192.0.2.2", "198.51.100.10", "100.64.8.4/31", "100.64.8.5"),
                  ("game2", "192.0.2.2", "198.51.100.11", "100.64.8.6/31", "100.64.8.7")],
        "game1": [("pop-a", "198.51.100.10", "192.0.2.1", "100.64.8.1/31", "100.64.8.0"),
                  ("pop-b", "198.51.100.10", "192.0.2.2", "100.64.8.5/31", "100.64.8.4")],
    }
    names = dict((host, [t["name"] for t in results[host][0]["ipip_tunnels_wanted"]])
                 for host in results)
    assert names == {"pop-b": [ipip_tunnels.tunnel_name("game1"), ipip_tunnels.tunnel_name("game2")],
                     "game1": [ipip_tunnels.tunnel_name("pop-a"), ipip_tunnels.tunnel_name("pop-b")]}
    # Check mode: each host would create its two tunnels (the loop task is changed, the diff
    # shows them), prunes nothing, fails nothing, and warns that this kernel lacks ipip.
    recap = dict((line.split()[0], line) for line in output.splitlines()
                 if line.startswith(("pop-b ", "game1 ")) and "ok=" in line)
    for host in ("pop-b", "game1"):
        assert "changed=2" in recap[host] and "failed=0" in recap[host]  # the loop + the save
    for name in names["pop-b"] + names["game1"]:
        assert "creating %s will fail" % name in output
    assert '"description": "peer game1"' in output and '"description": "peer pop-a"' in output
    assert links(namespace) == {"lo": links(namespace)["lo"]}
