"""Two (or more) builds of xdp_edge timed side by side in one run (run as root).

    .venv/bin/python bench/compare.py BEFORE.o AFTER.o [--rounds 11] [--seconds 0.1]

What an optimisation's commit message gives as its before/after: each object is loaded into its
own copy of the bench POP (bench/scenario.py, each in its own namespace), and the drop paths,
the pass-through and the two forwards of every copy are timed interleaved with xdp-filter's
source-rule drop (the baseline), exactly as bench/run.py times them (every run checked to take
its path; the forwards behind the restore harness, its cost subtracted). Prints ns per packet
and the ratio to the baseline, per object. Build the "before" object from an older commit, e.g.

    git show main:bpf/xdp_edge.c > bpf/xdp_edge_before.c && \\
        clang $(make -s print-bpf-cflags) -c bpf/xdp_edge_before.c -o /tmp/before.o && rm bpf/xdp_edge_before.c
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.run import _pin_to_one_cpu, _say, run_as_root  # noqa: E402  pylint: disable=wrong-import-position

# (row, frame function of bench/scenario.py, XDP action, reason, rewrites the frame)
PATHS = (
    ("deny drop", "denied_frame", "DROP", "drop_deny", False),
    ("banned drop", "banned_frame", "DROP", "drop_banned", False),
    ("rate-limited drop", "limited_frame", "DROP", "drop_rate_limit", False),
    ("drop_unverified", "unverified_frame", "DROP", "drop_unverified", False),
    ("bad cookie drop", "bad_cookie_frame", "DROP", "drop_bad_cookie", False),
    ("pass-through (not ours)", "pass_frame", "PASS", "pass_not_ours", False),
    ("forward [1]", "forward_frame", "TX", "tx_forward", True),
    ("verified player's forward [1]", "verified_forward_frame", "TX", "tx_forward", True),
    ("SYN auth: spoofed RST drop", "spoofed_rst_frame", "DROP", "drop_tcp_unverified", False),
    ("SYN auth: out-of-state ACK drop", "out_of_state_frame", "DROP", "drop_tcp_unverified", False),
    ("SYN auth: verified player's TCP forward [1]", "verified_tcp_frame", "TX", "tx_forward", True),
)


def _compare(args) -> int:
    from ansible_collections.anycast.edge.plugins.module_utils import _bpf
    from harness import topology as topo
    from harness.edge_env import EdgeEnv

    from bench import measure, programs, scenario
    from bench.measure import Probe, corrected, median, paired_ratios, spread

    actions = {"DROP": _bpf.XDP_DROP, "PASS": _bpf.XDP_PASS, "TX": _bpf.XDP_TX}
    _pin_to_one_cpu()
    with contextlib.ExitStack() as cleanup:
        bpffs = programs.BpffsMount()
        cleanup.callback(bpffs.close)
        deny_rule = programs.XdpFilter(programs.XDP_FILTER_DENY_RULE, bpffs, scenario.DENIED_SOURCE)
        cleanup.callback(deny_rule.close)
        empty = programs.EmptyDrop()
        cleanup.callback(empty.close)
        envs = []
        for index, path in enumerate(args.objects):
            env = EdgeEnv.start(path, netns="aedge-compare-%d-%d" % (index, os.getpid()))
            cleanup.callback(env.stop)
            if envs and env.ifindex != envs[0].ifindex:
                raise measure.SetupError("the namespaces number their devices differently")
            scenario.build_pop(env)
            envs.append(env)

        def ctx(frame):
            return envs[0].xdp_ctx(topo.UPLINK, len(frame))

        def harness(prog, frame):
            restore = programs.RestoreHarness(prog, frame, scenario.IPIP_HEADER_LEN)
            cleanup.callback(restore.close)
            return restore.prog

        denied, forward = scenario.denied_frame(), scenario.forward_frame()
        base = Probe("baseline", deny_rule.prog, denied, ctx(denied), _bpf.XDP_DROP,
                     *measure.xdp_filter_check(deny_rule, _bpf.XDP_DROP, rule_matches=True))
        floor = Probe("floor", empty.prog, denied, ctx(denied), _bpf.XDP_DROP)
        harness_floor = Probe("harness floor", harness(empty.prog, forward), forward, ctx(forward), _bpf.XDP_DROP)
        rows = []
        for path, env in zip(args.objects, envs):
            for label, frame_of, action, reason, rewrites in PATHS:
                frame = getattr(scenario, frame_of)()
                result = env.run(frame)
                if (result.action, result.reason) != (action, reason):
                    raise measure.SetupError("%s, %s: %s/%s, expected %s/%s" % (
                        path, label, result.action, result.reason, action, reason))
                snapshot, check = measure.edge_reason_check(env, reason)
                prog = harness(env.prog, frame) if rewrites else env.prog
                rows.append((path, label, rewrites, Probe("%s: %s" % (path, label), prog, frame, ctx(frame),
                                                          actions[action], snapshot, check)))
        probes = [base, floor, harness_floor] + [probe for dummy, dummy, dummy, probe in rows]
        for probe in probes:
            probe.calibrate(args.seconds)
        _say("measuring %d cases x %d interleaved rounds ..." % (len(probes), args.rounds))
        measure.run_interleaved(probes, args.rounds)

        _say("baseline: xdp-filter, source rule drops: %.1f ns (%s)" % (median(base.samples), spread(base.samples)))
        _say("%-32s %s" % ("path", "  ".join("%22s" % Path(path).name for path in args.objects)))
        for label, dummy, dummy, dummy, dummy in PATHS:
            cells = []
            for path, row_label, rewrites, probe in rows:
                if row_label != label:
                    continue
                samples = corrected(probe, harness_floor, floor) if rewrites else probe.samples
                cells.append("%7.1f ns %7.2fx" % (median(samples), median(paired_ratios(samples, base.samples))))
            _say("%-32s %s" % (label, "  ".join("%22s" % cell for cell in cells)))
        _say("[1] timed behind frame_restore, its cost subtracted (bench/README.md, 'Rewriting paths')")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("objects", nargs="+", help="xdp_edge objects to compare (e.g. before and after)")
    parser.add_argument("--rounds", type=int, default=11, help="interleaved rounds; each figure is their median")
    parser.add_argument("--seconds", type=float, default=0.1, help="length of one timed run")
    return run_as_root("bench/compare.py", _compare, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
