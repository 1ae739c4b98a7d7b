"""Does `--check --diff` of site.yml tell the truth? (issue 16: "reports exactly what a real run
then changes"), on the lab, after a converge.

For each step - a change of the inventory, then putting it back - site.yml runs twice with the
same extra vars: first with --check --diff, then for real with --diff. Every task's result on
every host (and every item of a loop) is read from the ansible.posix.json callback, and the two
runs must agree: the same (play, task, host, item) changed, each with the same diff. What the
change touches:

- a rule: a deny prefix more (edge_rules on the POPs);
- a service: a UDP service on a second address of the prefix (edge_rules and the agent's
  configuration and probe routes on the POPs, the address on lo, its policy routing rule and the
  mapper's maps on the backend);
- a sysctl: the backend's rp_filter (tc_mapper's ansible.posix.sysctl tasks).

Then the inventory's own values are put back the same way, and a last real run must change
nothing. Prints each step's changed tasks; exits 1 on any disagreement, naming it.

    .venv/bin/python lab/check_diff.py            # the lab must be up and converged
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import labctl  # noqa: E402  (lab/ is not a package)

SITE = "site.yml"


def inventory_all() -> dict:
    return yaml.safe_load((labctl.INVENTORY_DIR / "group_vars" / "all.yml").read_text())


def changed_vars() -> dict:
    """Extra vars that change one rule, add one service and change one sysctl."""
    inventory = inventory_all()
    filters = copy.deepcopy(inventory["anycast_edge_filters"])
    filters["deny"] = list(filters["deny"]) + ["203.0.113.0/24"]
    services = copy.deepcopy(inventory["anycast_edge_services"])
    services.append({"name": "check-diff-udp", "address": "198.51.100.11", "protocol": "udp",
                     "port": 27016, "backend": "backend"})
    return {"anycast_edge_filters": filters, "anycast_edge_services": services,
            "anycast_edge_mapper_rp_filter": 0}


def run_site(extra_vars: dict | None, check: bool, label: str) -> dict:
    """site.yml with --diff (and --check): the ansible.posix.json callback's document."""
    command = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(labctl.INVENTORY_DIR), SITE, "--diff"]
    if check:
        command.append("--check")
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="check-diff-", delete=False) as handle:
        json.dump(extra_vars or {}, handle)
    if extra_vars:
        command += ["-e", "@" + handle.name]
    env = labctl.ansible_environment()
    env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.posix.json"
    env.pop("ANSIBLE_CALLBACKS_ENABLED", None)  # profile_roles would print into the JSON
    started = time.monotonic()
    result = subprocess.run(command, cwd=labctl.REPO_DIR, env=env, capture_output=True, text=True, check=False)
    Path(handle.name).unlink()
    labctl.log(f"check_diff: {label}: site.yml{' --check' if check else ''} --diff: "
               f"{time.monotonic() - started:.0f} s, exit {result.returncode}")
    try:
        document = json.loads(result.stdout)
    except ValueError:
        raise labctl.LabError(f"{label}: no JSON from ansible-playbook (exit {result.returncode}):\n"
                              f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    if result.returncode != 0:
        failed = [key for key, outcome in outcomes(document).items() if outcome.get("failed")]
        raise labctl.LabError(f"{label}: ansible-playbook failed (exit {result.returncode}): {failed}\n"
                              f"{result.stderr[-3000:]}")
    return document


def plain_diff(diff) -> list:
    """A result's diff without what only names the run (the headers: temporary file names)."""
    diffs = diff if isinstance(diff, list) else [diff]
    return [{key: value for key, value in entry.items() if not key.endswith("_header")}
            for entry in diffs if entry]


def outcomes(document: dict) -> dict:
    """{(play, task, n, host, item): {changed, diff, failed}} of every task result, ``n`` counting
    the host's tasks of the same name in the play (roles share some names)."""
    found = {}
    for play in document.get("plays", []):
        play_name = play["play"]["name"]
        seen: dict[tuple[str, str], int] = {}
        for task in play["tasks"]:
            name = task["task"]["name"]
            for host, result in task["hosts"].items():
                seen[name, host] = nth = seen.get((name, host), 0) + 1
                items = result.get("results") if isinstance(result.get("results"), list) else None
                if items is None:
                    items = [dict(result, _check_diff_item=None)]
                for item in items:
                    label = item.get("_check_diff_item", item.get("_ansible_item_label", item.get("item")))
                    key = (play_name, name, nth, host, json.dumps(label, sort_keys=True, default=str))
                    found[key] = {"changed": bool(item.get("changed")), "diff": plain_diff(item.get("diff") or []),
                                  "failed": bool(item.get("failed"))}
    return found


def describe(key) -> str:
    play, task, nth, host, item = key
    return f"{host}: {task}{f' #{nth}' if nth > 1 else ''}{'' if item == 'null' else f' [{item}]'}"


def compare(label: str, checked: dict, real: dict) -> list[str]:
    """What --check --diff said and the real run did not, or the other way round."""
    problems = []
    said = {key for key, outcome in checked.items() if outcome["changed"]}
    did = {key for key, outcome in real.items() if outcome["changed"]}
    for key in sorted(said - did):
        problems.append(f"{label}: check mode said changed, the real run did not: {describe(key)}")
    for key in sorted(did - said):
        problems.append(f"{label}: the real run changed, check mode did not say so: {describe(key)}")
    for key in sorted(said & did):
        if checked[key]["diff"] != real[key]["diff"]:
            problems.append(f"{label}: the diffs differ: {describe(key)}\n  check: "
                            f"{json.dumps(checked[key]['diff'], sort_keys=True)[:1500]}\n  real:  "
                            f"{json.dumps(real[key]['diff'], sort_keys=True)[:1500]}")
    labctl.log(f"check_diff: {label}: {len(did)} changed in the real run, {len(said)} announced by check mode:")
    for key in sorted(said | did):
        mark = "=" if key in said and key in did and checked[key]["diff"] == real[key]["diff"] else "!"
        print(f"  {mark} {describe(key)}", flush=True)
    return problems


def step(label: str, extra_vars: dict | None) -> list[str]:
    checked = outcomes(run_site(extra_vars, check=True, label=label))
    real = outcomes(run_site(extra_vars, check=False, label=label))
    problems = compare(label, checked, real)
    if not any(outcome["changed"] for outcome in real.values()):
        problems.append(f"{label}: the real run changed nothing: the step tests nothing")
    return problems


def main() -> int:
    problems = step("change a rule, a service, a sysctl", changed_vars())
    problems += step("put the inventory back", None)
    last = outcomes(run_site(None, check=False, label="rerun"))
    problems += [f"rerun: changed again: {describe(key)}" for key, outcome in sorted(last.items()) if outcome["changed"]]
    for problem in problems:
        print("PROBLEM " + problem, flush=True)
    labctl.log(f"check_diff: {'agree' if not problems else f'{len(problems)} disagreement(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except labctl.LabError as error:
        print(f"check_diff: {error}", file=sys.stderr)
        sys.exit(2)
