"""Rule-sync benchmark of the edge_rules module (run as root: .venv/bin/python bench/rules_sync.py).

Loads build/xdp_edge.o, pins the program and its maps on a private bpffs (mounted on a temporary
folder; the host's /sys/fs/bpf is left alone) in the layout xdp_program makes, and runs the real
edge_rules module on them - as its own process, the way Ansible starts it on a POP - to measure,
for 100,000 and for 1,000,000 deny prefixes (--prefixes gives other sizes):

  1. converging them into empty maps        (issue targets: <= 2 s at 100,000, <= 5 s at 1,000,000)
  2. a no-op rerun with those entries       (issue target: <= 1 s at either size, changed: false)
  3. a change of 10 entries among them      (only those 10 written)

The rules reach the module as a rules file (its rules_file option), as the xdp_edge role gives
them. Times are the module's own `elapsed_ms` (from the start of its main() - argument parsing
and reading the rules file included - to its result), so Ansible's controller overhead is not counted; its `cpu_ms` (the
CPU time of the same span, which a busy machine hardly changes) and the process's wall time
(Python start-up and imports included) are printed next to it, with the load average. Each figure is the median
of --rounds runs; every run gets fresh, empty maps for (1). Writes are the counts the module
reports, checked against the maps' content.

The bench reports; it does not fail on a missed target. It exits 1 if a run does not do the
work it claims (wrong write count, maps not holding the wanted prefixes, a no-op that changes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Issue 18's targets by size: (converge into empty maps, no-op rerun), ms.
TARGETS_MS = {100_000: (2000, 1000), 1_000_000: (5000, 1000)}
IFACE = "uplink0"
MODULE = "ansible_collections.anycast.edge.plugins.modules.edge_rules"

# A small, realistic rule set around the big deny list.
BASE_RULES = {
    "tunnel_address": "10.0.0.1",
    "anycast_prefixes": ["198.51.100.0/24"],
    "backends": ["10.1.0.10"],
    "services": [
        {"name": "cs2-main", "address": "198.51.100.10", "protocol": "udp", "port": 27015,
         "backend_address": "10.1.0.10", "a2s_cache": True},
        {"name": "ping", "address": "198.51.100.10", "protocol": "icmp", "backend_address": "10.1.0.10"},
    ],
    "allow": ["192.0.2.0/28"],
    "rate_limits": {"udp": {"packets_per_sec": 400}},
}


def deny_prefixes(count, seed):
    """`count` distinct random CIDRs (/12../32, host bits clear), as an operator's list looks."""
    from harness.prefixes import random_prefixes  # pylint: disable=import-outside-toplevel
    return random_prefixes(count, seed, shortest=12)


class Pop:
    """The program and its maps pinned under <bpffs>/<uuid>/uplink0/ (fresh, empty maps)."""

    def __init__(self, bpf, object_path, bpffs):
        self.pin_root = bpffs / uuid.uuid4().hex[:12]
        self.obj = bpf.BpfObject.open(object_path)
        self.obj.load()
        self.obj.program("xdp_edge").pin(str(self.pin_root / IFACE / "program"))
        for bpf_map in self.obj.maps():
            bpf_map.pin(str(self.pin_root / IFACE / "maps" / bpf_map.name))

    def deny_entries(self):
        return len(self.obj.map("edge_deny_v4").lookup_batch(chunk_size=8192))

    def close(self):
        shutil.rmtree(self.pin_root, ignore_errors=True)
        self.obj.close()


def run_module(tree, workdir, pop, rules):
    """One run of edge_rules as its own process (Ansible's direct-invocation path: the args
    file holds ANSIBLE_MODULE_ARGS), the rules in a rules file as the xdp_edge role gives them
    (rendered here, before the clock starts, as the controller renders it). Returns (result,
    process wall ms)."""
    from ansible_collections.anycast.edge.plugins.module_utils import _rules  # pylint: disable=import-outside-toplevel

    rules_path = workdir / ("rules-%s.json" % uuid.uuid4().hex[:8])
    rules_path.write_text(_rules.render_rules_file(rules))
    args_path = workdir / ("args-%s.json" % uuid.uuid4().hex[:8])
    args_path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(
        tunnel_address=rules["tunnel_address"], rules_file=str(rules_path), pin_root=str(pop.pin_root), iface=IFACE)}))
    env = dict(os.environ, PYTHONPATH=str(tree))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", MODULE, str(args_path)], capture_output=True, text=True,
                          env=env, check=False, cwd=str(workdir))
    wall_ms = (time.monotonic() - started) * 1000.0
    args_path.unlink()
    rules_path.unlink()
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        raise SystemExit("edge_rules printed no result:\n%s%s" % (proc.stdout, proc.stderr))
    if result.get("failed"):
        raise SystemExit("edge_rules failed: %s" % result.get("msg"))
    return result, wall_ms


def record_writes(result):
    """Writes to the rule maps themselves: the result's total less those to the lists derived
    from the deny/allow prefixes (edge_src_filter, edge_src_hosts)."""
    return sum(step["count"] for step in result["steps"] if step["map"] not in ("edge_src_filter", "edge_src_hosts"))


def check(condition, what):
    if not condition:
        raise SystemExit("rules_sync: %s" % what)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--prefixes", type=int, nargs="+", default=sorted(TARGETS_MS),
                        help="deny list sizes, each measured on its own (default 100,000 and 1,000,000)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per figure; each figure is their median")
    parser.add_argument("--object", default=str(REPO_ROOT / "build" / "xdp_edge.o"))
    parser.add_argument("--json", metavar="PATH", help="also write the figures and every sample to PATH")
    return parser.parse_args(argv)


def measure(bpf, tree, workdir, bpffs, args, count):
    """{case: [sample]} of --rounds rounds of the three runs with `count` deny prefixes."""
    samples = {"converge": [], "noop": [], "change10": []}
    deny = deny_prefixes(count, seed=1)
    edited = deny[5:] + ["198.18.0.%d/32" % index for index in range(5)]   # 5 removed, 5 added
    rules = dict(BASE_RULES, deny=deny)
    print("rules_sync: %d deny prefixes, %d rounds, %d CPUs, kernel %s"
          % (len(deny), args.rounds, os.cpu_count(), os.uname().release), flush=True)
    for round_number in range(args.rounds):
        pop = Pop(bpf, args.object, bpffs)
        try:
            converged, converge_wall = run_module(tree, workdir, pop, rules)
            check(converged["maps"]["edge_deny_v4"]["added"] == len(deny), "converge did not add every prefix")
            check(pop.deny_entries() == len(deny), "the deny map does not hold every prefix")
            noop, noop_wall = run_module(tree, workdir, pop, rules)
            check(noop["changed"] is False and noop["writes"] == 0, "the no-op rerun changed something")
            changed, change_wall = run_module(tree, workdir, pop, dict(rules, deny=edited))
            check(changed["maps"]["edge_deny_v4"] == {"added": 5, "changed": 0, "removed": 5},
                  "the 10-entry change was not 5 added + 5 removed")
            check(pop.deny_entries() == len(edited), "the deny map does not hold the edited list")
            check(record_writes(changed) == 10, "the 10-entry change made %d writes to the rule maps"
                  % record_writes(changed))
        finally:
            pop.close()
        for case, result, wall in (("converge", converged, converge_wall), ("noop", noop, noop_wall),
                                   ("change10", changed, change_wall)):
            samples[case].append({"ms": result["elapsed_ms"], "cpu_ms": result["cpu_ms"], "wall_ms": wall,
                                  "writes": record_writes(result),
                                  "derived_writes": result["writes"] - record_writes(result),
                                  "phases": result["timing_ms"],
                                  "loadavg": os.getloadavg()[0]})
        print("  round %d: converge %.0f ms, no-op %.0f ms, 10 changes %.0f ms (%d + %d writes), load %.1f"
              % (round_number + 1, converged["elapsed_ms"], noop["elapsed_ms"], changed["elapsed_ms"],
                 record_writes(changed), changed["writes"] - record_writes(changed), os.getloadavg()[0]),
              flush=True)
    return samples


def report(count, samples, rounds):
    """Print the table of one size; returns its figures."""
    def median(case, field="ms"):
        return statistics.median(sample[field] for sample in samples[case])

    def phases(case):
        names = samples[case][0]["phases"]
        return ", ".join("%s %.0f" % (name, statistics.median(s["phases"][name] for s in samples[case]))
                         for name in names)

    def target(case, ms):
        limit = TARGETS_MS.get(count, (None, None))[case == "noop"]
        return "(no target)" if limit is None else "<= %d ms: %s" % (limit, "met" if ms <= limit else "MISSED")

    figures = {
        "prefixes": count,
        "converge_ms": median("converge"),
        "noop_ms": median("noop"),
        "change10_ms": median("change10"),
        "change10_writes": samples["change10"][0]["writes"],
        "change10_derived_writes": samples["change10"][0]["derived_writes"],
        "converge_cpu_ms": median("converge", "cpu_ms"),
        "noop_cpu_ms": median("noop", "cpu_ms"),
        "change10_cpu_ms": median("change10", "cpu_ms"),
        "loadavg": statistics.median(s["loadavg"] for case in samples for s in samples[case]),
    }
    print()
    print("edge_rules with %d deny prefixes, median of %d (load average %.1f on %d CPUs)"
          % (count, rounds, figures["loadavg"], os.cpu_count()))
    print("  %-25s %9s %9s %10s  %s" % ("", "elapsed", "cpu", "process", "target"))
    print("  %-25s %6.0f ms %6.0f ms %7.0f ms  %s" % (
        "converge into empty maps", figures["converge_ms"], figures["converge_cpu_ms"],
        median("converge", "wall_ms"), target("converge", figures["converge_ms"])))
    print("  %-25s %6.0f ms %6.0f ms %7.0f ms  %s" % (
        "no-op rerun", figures["noop_ms"], figures["noop_cpu_ms"], median("noop", "wall_ms"),
        target("noop", figures["noop_ms"])))
    print("  %-25s %6.0f ms %6.0f ms %7.0f ms  %d prefixes written (target: 10), and %d entries of the"
          " lists XDP reads" % ("change 10 entries", figures["change10_ms"], figures["change10_cpu_ms"],
                                median("change10", "wall_ms"), figures["change10_writes"],
                                figures["change10_derived_writes"]))
    print("  phases, ms (elapsed): converge %s; no-op %s; change %s"
          % (phases("converge"), phases("noop"), phases("change10")))
    return figures


def main(argv=None):
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("rules_sync: run as root (BPF maps, bpffs mount)")
    sys.path.insert(0, str(REPO_ROOT))
    from harness import collection  # pylint: disable=import-outside-toplevel
    tree = collection.use()
    from ansible_collections.anycast.edge.plugins.module_utils import _bpf  # pylint: disable=import-outside-toplevel

    workdir = Path(tempfile.mkdtemp(prefix="anycast-edge-rules-bench-work-"))
    bpffs = Path(tempfile.mkdtemp(prefix="anycast-edge-rules-bench-bpffs-"))
    subprocess.run(["mount", "-t", "bpf", "bpf", str(bpffs)], check=True)
    samples = {}
    try:
        for count in args.prefixes:
            samples[count] = measure(_bpf, tree, workdir, bpffs, args, count)
    finally:
        subprocess.run(["umount", str(bpffs)], check=False)
        os.rmdir(bpffs)
        shutil.rmtree(workdir, ignore_errors=True)
        collection.remove(tree)

    figures = [report(count, samples[count], args.rounds) for count in args.prefixes]
    if args.json:
        Path(args.json).write_text(json.dumps({"figures": figures, "samples": dict(
            (str(count), samples[count]) for count in args.prefixes)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
