"""What `playbooks/rules.yml` costs the controller with a large deny list (run as root:
.venv/bin/python bench/rules_playbook.py [--prefixes 100000]).

bench/rules_sync.py times the edge_rules module alone on the POP; this runs the whole playbook
as an operator does - validate_inventory on the controller, then the xdp_edge role's rule tasks
for one POP - so it counts what Ansible itself spends carrying the rules (templating them into
facts and arguments, shipping them to the POP, echoing them back). The POP is this machine
inside a network namespace (ansible_connection=local), its pins on a private bpffs; the program
is attached once by the role, then rules.yml is timed:

  1. a no-op rerun with N deny prefixes (nothing changes on the POP),
  2. a change of 10 of them (5 removed, 5 added).

Each figure: the wall time of ansible-playbook, the CPU time of its whole process tree (user +
system, as wait4 reports it: the controller's workers and the module's process), and the
largest resident set of one process in it. The bench reports; it exits 1 only when a run does
not do what it claims (a no-op that changes something, a change that is not one).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
from bench.rules_sync import deny_prefixes  # noqa: E402  pylint: disable=wrong-import-position
from harness import collection  # noqa: E402  pylint: disable=wrong-import-position

VENV_BIN = Path(sys.executable).parent
ATTACH_PLAY = [{"name": "Attach the POP's program and apply its rules", "hosts": "pops", "gather_facts": False,
                "roles": ["anycast.edge.validate_inventory", "anycast.edge.xdp_edge"]}]


# The inventory's own addresses: a deny prefix covering one is refused by validate_inventory.
INVENTORY_NETWORKS = [ipaddress.ip_network(cidr) for cidr in ("10.0.0.0/8", "100.64.0.0/10", "198.51.100.0/24")]


def bench_denies(count):
    """`count` random deny prefixes (rules_sync's), none covering an address of the inventory."""
    prefixes = []
    for cidr in deny_prefixes(count * 2, seed=1):
        if not any(ipaddress.ip_network(cidr).overlaps(network) for network in INVENTORY_NETWORKS):
            prefixes.append(cidr)
    return prefixes[:count]


def netns_ip(namespace, *args):
    subprocess.run(["ip", "-n", namespace] + list(args), check=True)


def make_pop(namespace):
    """One POP uplink (up0, 10.0.0.1/24) with a default route, in its own namespace."""
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    netns_ip(namespace, "link", "add", "up0", "type", "veth", "peer", "name", "up0p")
    netns_ip(namespace, "addr", "add", "10.0.0.1/24", "dev", "up0")
    netns_ip(namespace, "link", "set", "up0", "up")
    netns_ip(namespace, "link", "set", "up0p", "up")
    netns_ip(namespace, "neigh", "replace", "10.0.0.254", "lladdr", "02:00:00:00:00:fe", "nud", "permanent",
             "dev", "up0")
    netns_ip(namespace, "route", "add", "default", "via", "10.0.0.254")


# One POP (this machine, in the namespace) and one backend; the deny list and the paths are added.
INVENTORY = """
all:
  vars:
    anycast_edge_asn: 64500
    anycast_edge_prefixes: [198.51.100.0/24]
    anycast_edge_services:
      - {name: game, address: 198.51.100.10, protocol: udp, port: 27015, backend: game1, a2s_cache: true}
    anycast_edge_manage_packages: false
    anycast_edge_sysctl_persist: false
  children:
    pops:
      hosts:
        pop1: {ansible_connection: local, anycast_edge_uplink: up0, anycast_edge_tunnel_address: 10.0.0.1}
    backends:
      hosts:
        game1: {anycast_edge_tunnel_address: 10.1.0.10, anycast_edge_uplink: eth0}
"""


def write_inventory(workdir, pin_root, deny):
    data = yaml.safe_load(INVENTORY)
    data["all"]["vars"].update(
        anycast_edge_filters={"deny": deny, "allow": ["100.64.0.0/10"]}, anycast_edge_bpf_pin_root=pin_root,
        anycast_edge_controller_build_dir=str(workdir / "controller-build"),
        anycast_edge_object_dir=str(workdir / "pop-objects"), ansible_python_interpreter=sys.executable)
    path = workdir / "inventory.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def play(namespace, tree, inventory, playbook):
    """Run ansible-playbook in the namespace: (changed count of pop1, wall s, CPU s, max RSS MiB)."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_COLLECTIONS_PATH=str(tree),
               PATH="%s:%s" % (VENV_BIN, os.environ.get("PATH", "")))
    started = time.monotonic()
    proc = subprocess.Popen(["ip", "netns", "exec", namespace, str(VENV_BIN / "ansible-playbook"), "-i",
                             str(inventory), str(playbook)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, text=True)
    output = proc.stdout.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    recap = re.search(r"^pop1\s*:.*?changed=(\d+).*?failed=(\d+)", output, re.M)
    if status != 0 or not recap or recap.group(2) != "0":
        raise SystemExit("rules_playbook: %s failed:\n%s" % (playbook, output))
    return int(recap.group(1)), wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--prefixes", type=int, default=100_000, help="deny prefixes (default 100,000)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("rules_playbook: run as root (network namespace, BPF, bpffs mount)")
    if not (REPO_ROOT / "build" / "xdp_edge.o").exists():
        raise SystemExit("rules_playbook: build/xdp_edge.o missing: make bpf-objects")
    tree = collection.use()
    workdir = Path(tempfile.mkdtemp(prefix="anycast-edge-rules-playbook-"))
    bpffs = workdir / "bpffs"
    bpffs.mkdir()
    namespace = "anycast-rpb-%s" % uuid.uuid4().hex[:6]
    subprocess.run(["mount", "-t", "bpf", "bpf", str(bpffs)], check=True)
    try:
        make_pop(namespace)
        deny = bench_denies(args.prefixes)
        inventory = write_inventory(workdir, str(bpffs), deny)
        attach = workdir / "attach.yml"
        attach.write_text(yaml.safe_dump(ATTACH_PLAY))
        rules = REPO_ROOT / "playbooks" / "rules.yml"
        print("rules_playbook: %d deny prefixes, %d CPUs, load %.1f" % (len(deny), os.cpu_count(), os.getloadavg()[0]),
              flush=True)
        figures = {"attach (first run)": play(namespace, tree, inventory, attach)}
        figures["rules.yml no-op"] = play(namespace, tree, inventory, rules)
        if figures["rules.yml no-op"][0] != 0:
            raise SystemExit("rules_playbook: the no-op rerun changed %d tasks" % figures["rules.yml no-op"][0])
        inventory = write_inventory(workdir, str(bpffs), deny[5:] + ["198.18.0.%d/32" % index for index in range(5)])
        figures["rules.yml 10 changed"] = play(namespace, tree, inventory, rules)
        if figures["rules.yml 10 changed"][0] < 1:
            raise SystemExit("rules_playbook: the change of 10 prefixes changed nothing")
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)
        subprocess.run(["umount", str(bpffs)], check=False)
        shutil.rmtree(workdir, ignore_errors=True)
        collection.remove(tree)
    print("  %-22s %8s %8s %12s" % ("", "wall s", "CPU s", "max RSS MiB"))
    for name, (_changed, wall, cpu, rss) in figures.items():
        print("  %-22s %8.1f %8.1f %12.0f" % (name, wall, cpu, rss))
    return 0


if __name__ == "__main__":
    sys.exit(main())
