"""Run tasks through the real ``ansible-playbook``, as an operator would, and get their results.

Every task is registered and has ``ignore_errors`` so that a failing task (which several tests
want) does not stop the play; a last task writes all registered results as JSON, which is what
the tests assert on: ``changed``, ``failed``, ``msg``, ``diff`` and the modules' return values,
exactly as Ansible reports them (check mode and diff mode included).

Playbooks run on ``localhost`` with ``ansible_connection=local`` and the venv's Python as the
modules' interpreter, started with ``ip netns exec NS`` when a namespace is given, so kernel
state (links, XDP, tc) is the namespace's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

VENV_BIN = Path(sys.executable).parent


class PlaybookRun:
    """The outcome of one ansible-playbook run: one result dict per task, in order."""

    def __init__(self, results: list, output: str, seconds: float):
        self.results = results
        self.output = output
        self.seconds = seconds

    def __getitem__(self, index):
        return self.results[index]

    def __len__(self):
        return len(self.results)


def recap_counts(output: str) -> dict:
    """{host: {"ok": n, "changed": n, "failed": n, ...}} from the PLAY RECAP of ansible-playbook's
    ``output`` (the default callback's lines ``host : ok=1 changed=0 ...``)."""
    counts = {}
    recap = output.split("PLAY RECAP", 1)[1] if "PLAY RECAP" in output else ""
    for line in recap.splitlines():
        host, colon, fields = line.partition(":")
        if colon and "ok=" in fields:
            counts[host.strip()] = dict((key, int(value)) for key, value in re.findall(r"(\w+)=(\d+)", fields))
    return counts


def changed_by_host(output: str, hosts) -> dict:
    """{host: its changed count} from the PLAY RECAP of ansible-playbook's ``output``; each of
    ``hosts`` must be there with failed=0."""
    counts = recap_counts(output)
    changed = {}
    for host in hosts:
        assert host in counts and counts[host]["failed"] == 0, output
        changed[host] = counts[host]["changed"]
    return changed


def bpf_role_vars(tmp_path: Path, pin_root: str, object_dir: str) -> dict:
    """The inventory variables with which a BPF role (xdp_edge, tc_mapper) converges inside a
    test: its pins under ``pin_root``, the objects shipped under ``tmp_path`` (the host's in
    ``object_dir``), no package installed, no sysctl persisted, modules run by this venv. The
    controller's build folder is the pytest session's (beside every test's tmp_path), as an
    operator's controller keeps one: each object is compiled by the first test that needs it, and
    bpf_object rebuilds it whenever a source, header or clang changes (its stamp)."""
    return {
        "anycast_edge_bpf_pin_root": pin_root,
        "anycast_edge_controller_build_dir": str(tmp_path.parent / "controller-build"),
        "anycast_edge_object_dir": str(tmp_path / object_dir),
        "anycast_edge_manage_packages": False,
        "anycast_edge_sysctl_persist": False,
        "ansible_python_interpreter": sys.executable,
    }


def task(module: str, args: dict | None = None, check: bool = False, diff: bool = False,
         **keywords) -> dict:
    """One task: ``module`` (FQCN) with ``args``; ``check``/``diff`` set the task keywords."""
    body = {"name": "%s %s" % (module, json.dumps(args or {}, sort_keys=True))[:200],
            module: args or {}}
    if check:
        body["check_mode"] = True
    if diff:
        body["diff"] = True
    body.update(keywords)
    return body


def check_apply_again(module: str, args: dict) -> list:
    """The three tasks by which a module shows it tells the truth: a check run with its diff, the
    real run with its diff, and a rerun (which must change nothing)."""
    return [task(module, args, check=True, diff=True), task(module, args, diff=True), task(module, args)]


def run_tasks(tasks: list, workdir: Path, netns=None, python: str | None = None,
              extra_env: dict | None = None, timeout: float = 300) -> PlaybookRun:
    """Run ``tasks`` in one play on localhost and return their results.

    ``netns`` (a NetNs) runs the whole play inside that network namespace. ``python`` is the
    modules' interpreter (default: this venv's). A run where Ansible itself fails (syntax,
    an unreachable host) raises with its output; failed tasks do not.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    results_path = workdir / "results.json"
    if results_path.exists():
        results_path.unlink()
    play_tasks = []
    names = []
    for index, body in enumerate(tasks):
        body = dict(body)
        name = "step_%d" % index
        body.setdefault("register", name)
        body.setdefault("ignore_errors", True)
        names.append(body["register"])
        play_tasks.append(body)
    play_tasks.append({
        "name": "Save the registered results for the test",
        "ansible.builtin.copy": {
            "dest": str(results_path),
            "content": "{{ [%s] | to_json }}" % ", ".join(names),
            "mode": "0600",
        },
        "check_mode": False,
        "diff": False,
    })
    playbook = [{"name": "integration test", "hosts": "localhost", "gather_facts": False,
                 "tasks": play_tasks}]
    playbook_path = workdir / "playbook.yml"
    playbook_path.write_text(yaml.safe_dump(playbook, sort_keys=False))

    started = time.monotonic()
    done = run_playbook(playbook_path, workdir, netns=netns, python=python, extra_env=extra_env, timeout=timeout)
    seconds = time.monotonic() - started
    output = done.stdout + done.stderr
    if done.returncode != 0 or not results_path.exists():
        raise AssertionError("ansible-playbook failed (rc %d):\n%s" % (done.returncode, output))
    return PlaybookRun(json.loads(results_path.read_text()), output, seconds)


def run_playbook(playbook_path: Path, workdir: Path, *args: str, netns=None, python: str | None = None,
                 extra_env: dict | None = None, timeout: float = 300, cwd: Path | None = None):
    """ansible-playbook ``playbook_path`` (with ``args``) on localhost over the local connection,
    the modules run by ``python`` (default: this venv's), Ansible's temporary files under
    ``workdir``, in ``netns`` when given; the CompletedProcess, whatever its return code."""
    env = dict(os.environ)
    env.update({
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_LOCAL_TEMP": str(workdir / "tmp"),
        "ANSIBLE_REMOTE_TEMP": str(workdir / "tmp"),
        "PATH": "%s:%s" % (VENV_BIN, env.get("PATH", "")),
    })
    env.update(extra_env or {})
    argv = [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local",
            "-e", "ansible_python_interpreter=%s" % (python or sys.executable),
            str(playbook_path), *args]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns.name] + argv
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False,
                          cwd=None if cwd is None else str(cwd))
