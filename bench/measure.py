"""Timing with BPF_PROG_TEST_RUN, with proof that every timed repetition took the intended path.

A Probe is one program + one frame + the counters that prove what happened. Every timed run is
checked, not only a warm-up: the verdict must be the expected one and the counters must have
moved by exactly `repeat` in the expected place (xdp_edge: one reason counter; xdp-filter: its
rule's hit counter and its per-action statistics). A setup mistake (a packet that takes another
path after the first repetition, a rule that does not match) stops the bench with SetupError
instead of printing a fast figure for the wrong work.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable, Optional

from ansible_collections.anycast.edge.plugins.module_utils import _bpf

XDP_ACTION_NAMES = {_bpf.XDP_ABORTED: "ABORTED", _bpf.XDP_DROP: "DROP", _bpf.XDP_PASS: "PASS",
                    _bpf.XDP_TX: "TX", _bpf.XDP_REDIRECT: "REDIRECT"}

MIN_REPEAT = 100_000
MAX_REPEAT = 50_000_000
CALIBRATION_REPEAT = 50_000


class SetupError(RuntimeError):
    """A case does not do what it claims to: its figure would be meaningless."""


@dataclass
class Probe:
    name: str
    prog: object                      # _bpf.BpfProgram
    frame: bytes
    ctx: Optional[bytes]              # struct xdp_md (ingress device) or None
    expected_action: int
    snapshot: Callable[[], object] = lambda: None
    # check(before, after, repeat) -> None if the counters prove `repeat` runs of the right path,
    # else a sentence saying what happened instead.
    check: Callable[[object, object, int], Optional[str]] = lambda before, after, repeat: None
    repeat: int = 0
    samples: list = field(default_factory=list)

    def run(self, repeat: int):
        before = self.snapshot()
        result = self.prog.test_run(self.frame, repeat=repeat, ctx_in=self.ctx)
        after = self.snapshot()
        if result.retval != self.expected_action:
            raise SetupError("%s: verdict %s, expected %s" % (
                self.name, XDP_ACTION_NAMES.get(result.retval, result.retval),
                XDP_ACTION_NAMES[self.expected_action]))
        problem = self.check(before, after, repeat)
        if problem:
            raise SetupError("%s: %s" % (self.name, problem))
        return result

    def calibrate(self, seconds_per_run: float) -> int:
        """Pick the repeat count that makes one timed run last about `seconds_per_run`."""
        ns = max(self.run(CALIBRATION_REPEAT).duration_ns, 1)
        self.repeat = int(min(MAX_REPEAT, max(MIN_REPEAT, seconds_per_run * 1e9 / ns)))
        return self.repeat

    def measure(self) -> int:
        duration = self.run(self.repeat).duration_ns
        self.samples.append(duration)
        return duration


def edge_reason_check(env, reason: str):
    """(snapshot, check) proving that every repetition was counted under `reason` and only there."""

    def check(before, after, repeat):
        moved = {name: after.get(name, (0, 0))[0] - before.get(name, (0, 0))[0]
                 for name in set(before) | set(after)}
        moved = {name: count for name, count in moved.items() if count}
        if moved != {reason: repeat}:
            return "expected %d x %s, the reason counters moved by %s" % (repeat, reason, moved)
        return None

    return env.reason_counts, check


def xdp_filter_check(xdp_filter, action: int, rule_matches: bool):
    """(snapshot, check) for xdp-filter: its action statistics, and whether its rule matched."""

    def snapshot():
        return xdp_filter.action_packets(action), xdp_filter.rule_hits()

    def check(before, after, repeat):
        actions, hits = after[0] - before[0], after[1] - before[1]
        if actions != repeat:
            return "xdp_stats_map counted %d x %s for %d runs" % (actions, XDP_ACTION_NAMES[action], repeat)
        wanted_hits = repeat if rule_matches else 0
        if hits != wanted_hits:
            return "its rule matched %d times, expected %d" % (hits, wanted_hits)
        return None

    return snapshot, check


def run_interleaved(probes, rounds: int, progress=None) -> None:
    """Measure every probe once per round, rotating the order each round, so that whatever the
    machine does meanwhile (other tenants, frequency changes) falls on all of them alike."""
    for round_index in range(rounds):
        shift = round_index % len(probes)
        for probe in probes[shift:] + probes[:shift]:
            probe.measure()
        if progress:
            progress(round_index + 1, rounds)


def median(values) -> float:
    return float(statistics.median(values))


def spread(values) -> str:
    return "%d-%d" % (min(values), max(values))


def corrected(via_harness: Probe, harness_floor: Probe, floor: Probe) -> list:
    """Per round: what the program under test costs, from timings through frame_restore.

    harness + target  -  harness + empty drop  +  empty drop alone  =  target alone.
    Taken round by round (the three ran back to back), then the caller takes the median.
    """
    return [t - h + f for t, h, f in zip(via_harness.samples, harness_floor.samples, floor.samples)]


def paired_ratios(values, baseline_values) -> list:
    return [v / b for v, b in zip(values, baseline_values)]
