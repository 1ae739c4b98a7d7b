"""Kernel state is changed by modules, not by shell tasks (DESIGN.md): a module compares, reports
`changed` only on a difference and tells the truth in check mode; a `command:` does neither.

Every task of every role and playbook is read (blocks included); a command, shell or raw task
may not run a program that changes the kernel's state (sysctl, ip, tc, bpftool ...). The test of
the test shows that the sysctl and ip tasks the roles had before would have been caught.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SHELL_MODULES = ("command", "shell", "raw", "ansible.builtin.command", "ansible.builtin.shell",
                 "ansible.builtin.raw", "ansible.legacy.command", "ansible.legacy.shell")
# Programs that change kernel state (links, addresses, routes, rules, qdiscs, BPF, settings,
# modules, mounts, firewall).
KERNEL_TOOLS = {"sysctl", "ip", "tc", "bpftool", "modprobe", "rmmod", "insmod", "mount", "umount",
                "iptables", "ip6tables", "nft", "ethtool", "ifup", "ifdown", "xdp-loader", "xdp-filter",
                "wg", "wireguard-go"}


def tasks_in(entries):
    """Every task in a task list, blocks (block/rescue/always) walked."""
    for entry in entries or []:
        if not isinstance(entry, dict):
            continue
        if any(key in entry for key in ("block", "rescue", "always")):
            for key in ("block", "rescue", "always"):
                yield from tasks_in(entry.get(key))
        else:
            yield entry


def task_files():
    files = sorted(ROOT.glob("roles/*/tasks/*.yml")) + sorted(ROOT.glob("roles/*/handlers/*.yml"))
    for playbook in sorted(ROOT.glob("playbooks/*.yml")):
        files.append(playbook)
    return files


def tasks_of(path):
    loaded = yaml.safe_load(path.read_text()) or []
    if path.parent.name == "playbooks":
        for play in loaded:
            for key in ("pre_tasks", "tasks", "post_tasks", "handlers"):
                yield from tasks_in(play.get(key))
    else:
        yield from tasks_in(loaded)


def programs_run(task):
    """The program names a command/shell/raw task runs (each of a shell line's commands)."""
    for module in SHELL_MODULES:
        if module not in task:
            continue
        args = task[module]
        if isinstance(args, dict):
            if "argv" in args:
                return [str(args["argv"][0])]
            args = args.get("cmd", "")
        # A shell line may chain commands; each one's first word is a program.
        return [words.split()[0] for words in re.split(r"[;&|()\n]+|\$\(", str(args)) if words.split()]
    return []


def kernel_changing(task):
    return sorted(set(Path(program).name for program in programs_run(task)) & KERNEL_TOOLS)


def test_no_command_or_shell_task_changes_kernel_state():
    offenders = []
    for path in task_files():
        for task in tasks_of(path):
            tools = kernel_changing(task)
            if tools:
                offenders.append("%s: %r runs %s" % (path.relative_to(ROOT), task.get("name"), ", ".join(tools)))
    assert offenders == [], "use a module (ansible.posix.sysctl, anycast.edge.ip_routing ...):\n" + "\n".join(offenders)


def test_the_roles_are_read():
    names = [task.get("name") for path in task_files() for task in tasks_of(path)]
    assert len(names) > 50
    assert "Set the kernel settings the data plane needs" in names  # a task of roles/xdp_edge


@pytest.mark.parametrize("task", [
    {"name": "Set them", "ansible.builtin.command": {"argv": ["sysctl", "-w", "net.ipv4.conf.all.forwarding=1"]}},
    {"name": "Route", "ansible.builtin.command": {"cmd": "ip -4 route replace 198.51.100.10/32 dev ae-x proto 242"}},
    {"name": "Rule", "ansible.builtin.shell": "set -e; /sbin/ip rule add from 198.51.100.10 lookup 4242"},
    {"name": "Pipe", "shell": "echo 1 | tc qdisc add dev eth0 clsact"},
])
def test_the_tasks_the_roles_had_are_caught(task):
    assert kernel_changing(task)


def test_other_commands_pass():
    tar = {"ansible.builtin.command": {"argv": ["tar", "--create", "--file=agent.tar"]}}
    assert kernel_changing(tar) == [] and kernel_changing({"ansible.builtin.copy": {"dest": "/x"}}) == []
