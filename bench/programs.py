"""The programs the bench measures besides xdp_edge: the floor, the baseline, the restore harness.

- empty_drop (bench/empty_drop.c): `return XDP_DROP`, the floor.
- xdp-filter's IP program from Debian's xdp-tools, with one rule for the denied source: the
  baseline every ratio is taken against.
- frame_restore (bench/frame_restore.c): puts the original frame back before each repetition and
  tail-calls the program under test, for the paths that rewrite the packet.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from ansible_collections.anycast.edge.plugins.module_utils import _bpf
from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils._a2s_cookie import tai_offset_ns

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
BUILD_DIR = REPO_ROOT / "build" / "bench"

XDP_TOOLS_BPF_DIR = Path("/usr/lib/x86_64-linux-gnu/bpf")
# xdp-filter ships one object per (policy, feature set). "alw" is the *allow* policy: packets that
# match no rule pass, and a rule (here: this source address) drops what it matches. That is a deny
# list, the job our deny LPM does. (The "dny" objects are the *deny* policy: everything is dropped
# except what a rule matches; a rule there lets the packet pass.)
XDP_FILTER_DENY_RULE = XDP_TOOLS_BPF_DIR / "xdpfilt_alw_ip.o"
XDP_FILTER_DEFAULT_DENY = XDP_TOOLS_BPF_DIR / "xdpfilt_dny_ip.o"

# xdp-filter's map ABI (xdp-tools xdp-filter/common_kern_user.h and xdp_filt_prog.h, v1.3.1):
# filter_ipv4 is a per-CPU hash keyed by the raw network-order address; the u64 value holds
# MAP_FLAG_* bits in its low bits and counts hits from bit COUNTER_SHIFT up.
MAP_FLAG_SRC = 1 << 0
COUNTER_SHIFT = 6
# xdp_stats_map: per-CPU array indexed by XDP action, {packets, bytes} (xdp/xdp_stats_kern_user.h).
XDP_STATS = struct.Struct("<QQ")


@functools.lru_cache(maxsize=None)
def clang_flags() -> tuple:
    """clang's flags for a BPF object, from the Makefile (their one home, `make print-bpf-cflags`)."""
    done = subprocess.run(["make", "-s", "--no-print-directory", "print-bpf-cflags"], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=True)
    return tuple(shlex.split(done.stdout))


def compile_bench_program(name: str) -> Path:
    """bench/<name>.c -> build/bench/<name>.o (rebuilt when the source or a header of bpf/include
    or bench/ is newer)."""
    source = BENCH_DIR / (name + ".c")
    target = BUILD_DIR / (name + ".o")
    inputs = [source, *(REPO_ROOT / "bpf" / "include").glob("*.h"), *BENCH_DIR.glob("*.h")]
    if target.exists() and target.stat().st_mtime >= max(path.stat().st_mtime for path in inputs):
        return target
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    clang = os.environ.get("CLANG", "clang")
    subprocess.run([clang, *clang_flags(), "-c", str(source), "-o", str(target)], check=True)
    return target


def _percpu_u64(bpf_map, key: bytes) -> list:
    raw = bpf_map.lookup(key)
    return [struct.unpack_from("<Q", value)[0] for value in bpf_map.split_percpu(raw)] if raw else []


class EmptyDrop:
    """The floor: an XDP program that only returns XDP_DROP."""

    def __init__(self):
        self.obj = _bpf.BpfObject.open(compile_bench_program("empty_drop"))
        self.obj.load()
        self.prog = self.obj.program("empty_drop")

    def close(self):
        self.obj.close()


class FibLookupOnly:
    """bench/fib_lookup_only.c: one bpf_fib_lookup from ``saddr`` to ``daddr``, XDP_DROP on success."""

    def __init__(self, saddr: str, daddr: str):
        self.obj = _bpf.BpfObject.open(compile_bench_program("fib_lookup_only"))
        self.obj.load()
        self.prog = self.obj.program("fib_lookup_only")
        self.obj.map("fib_targets").update(bytes(4), socket.inet_aton(saddr) + socket.inet_aton(daddr))

    def close(self):
        self.obj.close()


class PathFloors:
    """bench/path_floors.c: forward_floor, a2s_floor, drop_floor and tcp_floor, filled like the bench POP
    (bench/scenario.py): its services, sources (the banned one banned, the verified one verified
    for the attacked service, the limited one with its entry), anycast prefix and A2S reply; the
    next hop's MACs given."""

    SOURCE = struct.Struct("<QI4xQQI4xQ")           # struct floor_source
    CONFIG = struct.Struct("<4s4x6s6s4xQQQq" + "QQ" * 4 + "Q")  # struct floor_config
    DST_ENTRY = struct.Struct("<Q")                 # struct floor_dst_entry

    def __init__(self, scenario, tunnel_addr: str, smac: str, dmac: str):
        self.obj = _bpf.BpfObject.open(compile_bench_program("path_floors"))
        self.obj.load()
        self.forward = self.obj.program("forward_floor")
        self.a2s = self.obj.program("a2s_floor")
        self.drop = self.obj.program("drop_floor")
        self.tcp = self.obj.program("tcp_floor")
        now = time.monotonic_ns()
        sources = self.obj.map("floor_sources")
        for client in (scenario.FORWARD_CLIENT, scenario.A2S_CLIENT, scenario.LIMITED_CLIENT):
            sources.update(socket.inet_aton(client), self.SOURCE.pack(0, 0, 0, 0, 0, 0))
        sources.update(socket.inet_aton(scenario.BANNED_CLIENT),
                       self.SOURCE.pack(now + 24 * 3600 * 10**9, 0, 0, 0, 0, 0))
        sources.update(socket.inet_aton(scenario.VERIFIED_CLIENT),
                       self.SOURCE.pack(0, 0, 0, 0, scenario.ATTACKED_ID, now))
        services = self.obj.map("floor_services")
        for (proto, address, port, service_id), settings in scenario.services():
            services.update(abi.pack_service_key(proto, address, port),
                            abi.pack_service_value(service_id, scenario.BACKEND, **settings))
        self.obj.map("floor_a2s_cache").update(struct.pack("<I", scenario.A2S_ID),
                                               abi.pack_a2s_cache_entry(scenario.a2s_info_reply(), now))
        filters = self.obj.map("floor_src_filter")
        network = int.from_bytes(socket.inet_aton(scenario.DENIED_PREFIX.split("/")[0]), "big")
        filters.update(struct.pack("<I", network >> 14),
                       abi.SRC_FILTER_ENTRY.pack(1 << ((network >> 8) & 63), 0, 0, 0))
        network = int.from_bytes(socket.inet_aton(scenario.ANYCAST_PREFIX.split("/")[0]), "big")
        if not scenario.ANYCAST_PREFIX.endswith("/24"):
            raise ValueError("the floor's anycast bitmap holds whole /24s: %s" % scenario.ANYCAST_PREFIX)
        self.obj.map("floor_dst_filter").update(struct.pack("<I", network >> 14),
                                                self.DST_ENTRY.pack(1 << ((network >> 8) & 63)))
        cookie_key = scenario.COOKIE_KEY
        self.obj.map("floor_config").update(struct.pack("<I", 0), self.CONFIG.pack(
            socket.inet_aton(tunnel_addr), bytes.fromhex(smac.replace(":", "")), bytes.fromhex(dmac.replace(":", "")),
            cookie_key[0], cookie_key[1], scenario.COOKIE_EPOCH_NS, tai_offset_ns(),   # as edge_rules writes it
            *([0, 0] * 4), scenario.VERIFIED_IDLE_NS))
        self.verdicts = self.obj.map("floor_verdicts")

    def verdict_check(self, reason: str):
        """(snapshot, check) for a Probe: the floors' counter of `reason` (an abi.REASONS name, as
        xdp_edge counts it) moved by exactly `repeat`, and no other (the four programs share the
        counters: a probe runs one of them at a time)."""

        def snapshot():
            return [sum(_percpu_u64(self.verdicts, struct.pack("<I", index))) for index in range(len(abi.REASONS))]

        def check(before, after, repeat):
            moved = {abi.REASONS[index]: a - b for index, (a, b) in enumerate(zip(after, before)) if a != b}
            if moved != {reason: repeat}:
                return "expected %d x %s, the floors counted %s" % (repeat, reason, moved)
            return None

        return snapshot, check

    def close(self):
        self.obj.close()


class RestoreHarness:
    """frame_restore in front of one target program, replaying one frame (see frame_restore.c)."""

    FRAME = struct.Struct("<II256s")  # struct bench_frame

    def __init__(self, target_prog, frame: bytes, head_growth: int):
        if len(frame) > 256:
            raise ValueError("frame of %d bytes is larger than the harness holds" % len(frame))
        self.obj = _bpf.BpfObject.open(compile_bench_program("frame_restore"))
        self.obj.load()
        self.prog = self.obj.program("frame_restore")
        self.obj.map("bench_frame").update(struct.pack("<I", 0), self.FRAME.pack(len(frame), head_growth, frame))
        # The kernel checks here that the target may be tail-called from frame_restore.
        self.obj.map("bench_target").update(struct.pack("<I", 0), struct.pack("<I", target_prog.fd))

    def close(self):
        self.obj.close()


class BpffsMount:
    """A private bpffs in a temporary folder (xdp-filter pins its maps by name); unmounted on close."""

    def __init__(self):
        self.path = tempfile.mkdtemp(prefix="anycast-edge-bench-bpffs-")
        if not _bpf.ensure_bpffs(self.path):
            raise RuntimeError("%s was already on a bpffs" % self.path)

    def close(self):
        subprocess.run(["umount", self.path], check=False)
        shutil.rmtree(self.path, ignore_errors=True)


class XdpFilter:
    """One of xdp-tools' xdp-filter objects, loaded as xdp-filter would, with one source rule."""

    def __init__(self, object_path: Path, bpffs: BpffsMount, source_rule: str):
        if not object_path.exists():
            raise FileNotFoundError("%s not found: install the Debian package xdp-tools" % object_path)
        pin_root = os.path.join(bpffs.path, object_path.stem)
        os.makedirs(pin_root)
        # Its maps are declared LIBBPF_PIN_BY_NAME: libbpf pins them under pin_root on load.
        self.obj = _bpf.BpfObject.open(object_path, pin_root_path=pin_root)
        self.obj.load()
        programs = self.obj.programs()
        if len(programs) != 1:
            raise RuntimeError("%s: expected one program, found %s" % (object_path, programs))
        self.prog = programs[0]
        self.rules = self.obj.map("filter_ipv4")
        self.stats = self.obj.map("xdp_stats_map")
        self.rule_key = socket.inet_aton(source_rule)
        ncpu = _bpf.num_possible_cpus()
        self.rules.update(self.rule_key, struct.pack("<Q", MAP_FLAG_SRC) * ncpu)

    def rule_hits(self) -> int:
        """How often the rule matched (xdp-filter counts hits in the value above COUNTER_SHIFT)."""
        return sum(value >> COUNTER_SHIFT for value in _percpu_u64(self.rules, self.rule_key))

    def action_packets(self, action: int) -> int:
        raw = self.stats.lookup(struct.pack("<I", action))
        return sum(XDP_STATS.unpack(value)[0] for value in self.stats.split_percpu(raw))

    def close(self):
        self.obj.close()
