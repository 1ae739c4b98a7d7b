"""Packets per second on real frames, against the kernel's own path (run as root: `make bench`).

    .venv/bin/python bench/pps.py [--rounds 5] [--seconds 1.0] [--json PATH]

A generator in one network namespace sends real frames out of a veth into the POP's namespace,
where build/xdp_edge.o runs in native mode on the peer veth, filled as bench/scenario.py's POP;
what arrives is counted at the receiver (xdp_edge's own reason counters, an nftables rule's
counter) or at the far side (bench/pps_count.c on the veth a forward or an answer leaves by),
over a fixed time. The same frames then meet the kernel's own path in the same POP namespace,
in the same run: an nftables drop rule (prerouting, source match) and plain IP forwarding.

    [ns world]  gen0 (= topology's up0p) ---veth--- up0  [ns pop]  xdp_edge (native), or nothing
                    pps_gen: live frames, XDP_TX out of gen0;     + nft prerouting drop
                    pps_count: the answers that come back        route 198.51.100.0/24, 10.1.0.10
                back0 (= bk0p) ---veth--- bk0                          via 10.2.0.10 on bk0
                    pps_count: what the POP forwarded

The generator is pps_gen (bench/pps_gen.c) run by BPF_PROG_TEST_RUN with
BPF_F_TEST_XDP_LIVE_FRAMES (what xdp-trafficgen uses underneath): the kernel turns its XDP_TX
into a redirect out of gen0, so each repetition is a frame received by up0's NAPI. CPUs (2 on
this machine): the generator's thread on one; up0's NAPI made threaded (its sysfs `threaded`
knob) and its kernel thread pinned to the other, so the receiving side - veth receive, XDP or
the kernel's stack, and what the POP sends on (the far side's veth receive runs there too, in
the same softirq, the same for every forward) - has one CPU of its own. up0 has GRO on, so that
with no XDP program it still receives redirected frames (a veth needs NAPI for them).

Every figure is checked: each case's frames are counted under exactly its reason (xdp_edge's
reason counters move for that reason only, or the nftables counter, or the far side's counter),
and the far side's last frame is the expected one (IPIP from the POP's tunnel address, the plain
forwarded datagram, the challenge). A case that does not take its path ends the bench (exit 1).
The figures are a receiver's packet rate on veths (no NIC, no DMA, no interrupts), on a shared
2-core VM: compare them within one run; bench/README.md, 'Packets per second'.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import glob
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.run import _say, run_as_root  # noqa: E402  pylint: disable=wrong-import-position

# The goals: xdp_edge's packet rate over the kernel's for the same frames.
GOALS = {"drop": 5.0, "forward": 3.0}
WORLD_GEN, WORLD_BACK = "gen0", "back0"    # the generator's veth, the backend side's veth
SIDE_NEXT_HOP = "10.2.0.10"                # topology's neighbour on bk0 (static MAC)
NFT_TABLE = "aedge_pps"
# Frames per live test run: long enough that the syscall's own cost vanishes, short enough to
# stop close to the wanted time.
RUN_FRAMES = 200_000
BATCH = 64
# How long the packet socket may take no frame at all (ENOBUFS on every send) before send() gives up.
SOCKET_STALL_SEC = 10


@dataclass
class Case:
    """One row: a frame, what receives it in the POP, where it is counted."""
    name: str
    frame_of: str                  # a function of bench/scenario.py
    path: str                      # "xdp" (xdp_edge attached), "floor" (the empty drop), "nft_drop", "kernel_forward"
    counted: str                   # an xdp_edge reason, "nft", "back" (far side), "gen" (answers), "received"
    kind: str                      # "drop" or "forward": which kernel row its ratio is taken to ("" none)
    ns_per_packet: list = field(default_factory=list)   # the POP's CPU time per frame received, per round
    seen: list = field(default_factory=list)            # frames counted per second
    offered: list = field(default_factory=list)         # frames the generator sent per second


KERNEL_DROP, KERNEL_FORWARD = "kernel: nftables prerouting drop", "kernel: IP forward (plain, no IPIP) [2]"
CASES = (
    Case("floor: XDP_DROP alone (the veth's receive)", "denied_frame", "floor", "received", ""),
    Case("deny drop", "denied_frame", "xdp", "drop_deny", "drop"),
    Case("unverified drop (under attack)", "unverified_frame", "xdp", "drop_unverified", "drop"),
    Case("rate-limited drop", "limited_frame", "xdp", "drop_rate_limit", "drop"),
    Case("verified player's forward (IPIP out of bk0)", "verified_forward_frame", "xdp", "back", "forward"),
    Case("A2S challenge (answer out of up0)", "a2s_challenge_frame", "xdp", "gen", "forward"),
    Case(KERNEL_DROP, "denied_frame", "nft_drop", "nft", "drop"),
    Case(KERNEL_FORWARD, "forward_frame", "kernel_forward", "back", "forward"),
)
KERNEL_ROWS = {"drop": KERNEL_DROP, "forward": KERNEL_FORWARD}
# What xdp_edge counts a frame under on its way to the far side's counter.
SENDING_REASONS = {"back": "tx_forward", "gen": "tx_a2s_challenge"}


def _run(*argv, stdin=None):
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(argv), (done.stderr or done.stdout).strip()))
    return done.stdout


def _napi_threads() -> dict:
    """{pid: name} of the kernel's NAPI threads (named napi/<device>-<napi id>)."""
    threads = {}
    for comm in glob.glob("/proc/[0-9]*/comm"):
        try:
            with open(comm) as handle:
                name = handle.read().strip()
        except OSError:
            continue
        if name.startswith("napi/"):
            threads[int(comm.split("/")[2])] = name
    return threads


class Counter:
    """bench/pps_count.c attached (native) to one veth of the world: frames received there, and
    the last one's first bytes."""

    def __init__(self, compile_bench_program, ifindex: int):
        from ansible_collections.anycast.edge.plugins.module_utils import _bpf

        self.obj = _bpf.BpfObject.open(compile_bench_program("pps_count"))
        self.obj.load()
        self.ifindex = ifindex
        _bpf.xdp_attach(ifindex, self.obj.program("pps_count").fd, _bpf.XDP_FLAGS_DRV_MODE)
        self.received_map = self.obj.map("pps_received")
        self.last_map = self.obj.map("pps_last_frame")

    def received(self) -> int:
        raw = self.received_map.lookup(bytes(4))
        return sum(struct.unpack_from("<Q", value)[0] for value in self.received_map.split_percpu(raw))

    def last_frame(self) -> bytes:
        raw = self.last_map.lookup(bytes(4))
        length = struct.unpack_from("<I", raw)[0]
        return raw[4:4 + length]

    def close(self):
        # Stays attached: deleting the world namespace removes the device. (Detaching from here, the
        # POP's namespace, would name another device: an ifindex is only unique in its namespace.)
        self.obj.close()


class WorldNamespace:
    """The world's named namespace (`ip netns add`): the generator's and the backend side's veth
    ends; deleted with everything in it."""

    def __init__(self, name: str):
        self.name = name
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        _run("ip", "netns", "add", name)
        self.ip("link", "set", "lo", "up")

    def ip(self, *args: str) -> str:
        return _run("ip", "-n", self.name, *args)

    def exec(self, *argv: str) -> str:
        return _run("ip", "netns", "exec", self.name, *argv)

    def entered(self):
        """A block run (by this thread) inside the namespace."""
        from harness import namespace

        return namespace.inside(self.name)

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, check=False)


class PpsWorld:
    """The POP namespace (harness.edge_env's EdgeEnv, filled as bench/scenario.py's POP), the world
    namespace holding the far ends of its veths, the generator and the counters."""

    def __init__(self, object_path: str, label: str):
        from ansible_collections.anycast.edge.plugins.module_utils import _bpf
        from harness import topology as topo
        from harness.edge_env import EdgeEnv

        from bench import programs, scenario

        self._bpf, self.topo, self.scenario = _bpf, topo, scenario
        self._closers = []
        self.env = EdgeEnv.start(object_path, netns="aedge-pps-%s-%d" % (label, os.getpid()))
        self._closers.append(self.env.stop)
        self.world = WorldNamespace("aedge-pps-world-%s-%d" % (label, os.getpid()))
        self._closers.append(self.world.delete)
        try:
            self._build(programs)
        except BaseException:
            self.close()
            raise

    def _build(self, programs) -> None:
        topo, scenario, world, _bpf = self.topo, self.scenario, self.world, self._bpf
        scenario.build_pop(self.env)
        # No stray frame (IPv6 neighbour discovery, MLD) may reach a counter: none is ours.
        for namespace in (["ip", "netns", "exec", self.env.netns], ["ip", "netns", "exec", world.name]):
            _run(*namespace, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                 "net.ipv6.conf.default.disable_ipv6=1")
        for pop_end, world_end in ((topo.UPLINK, WORLD_GEN), (topo.SIDE, WORLD_BACK)):
            _run("ip", "link", "set", pop_end + "p", "netns", world.name)
            world.ip("link", "set", pop_end + "p", "name", world_end)
            world.exec("sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % world_end)
            world.ip("link", "set", world_end, "up")
        # The forward's backend is reached over the second veth: xdp_edge's FIB lookup answers
        # bk0, and it redirects there through the devmap; the kernel's forward takes the same way.
        _run("ip", "route", "add", scenario.BACKEND + "/32", "via", SIDE_NEXT_HOP, "dev", topo.SIDE)
        _run("ip", "route", "add", scenario.ANYCAST_PREFIX, "via", SIDE_NEXT_HOP, "dev", topo.SIDE)
        self.env.add_tx_port(topo.SIDE)
        pop_exec = ["ip", "netns", "exec", self.env.netns]
        _run(*pop_exec, "ethtool", "-K", topo.UPLINK, "gro", "on")
        with self.world.entered():
            self.gen_ifindex = socket.if_nametoindex(WORLD_GEN)
            back_ifindex = socket.if_nametoindex(WORLD_BACK)
            self.gen_counter = Counter(programs.compile_bench_program, self.gen_ifindex)
            self._closers.append(self.gen_counter.close)
            self.back_counter = Counter(programs.compile_bench_program, back_ifindex)
            self._closers.append(self.back_counter.close)
        self.generator = _bpf.BpfObject.open(programs.compile_bench_program("pps_gen"))
        self.generator.load()
        self._closers.append(self.generator.close)
        self.gen_prog = self.generator.program("pps_gen")
        self.floor = programs.EmptyDrop()
        self._closers.append(self.floor.close)
        # Every receiving veth's NAPI in kernel threads of their own, which can be pinned: up0's
        # (the POP's work: its CPU time is the figure), and the far side's (made after GRO is on,
        # and after the counters are attached: NAPI exists only then).
        self.napi_threads = self._threaded_napi(pop_exec, topo.UPLINK)
        world_exec = ["ip", "netns", "exec", world.name]
        self.far_napi_threads = self._threaded_napi(world_exec, WORLD_GEN) + self._threaded_napi(world_exec, WORLD_BACK)
        self.attached = None
        self.nft_loaded = False
        # What sends: live frames, unless this kernel refuses them (_live_refused).
        self.generator_method = "live frames (BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES)"
        self.packet_socket = None
        self._closers.append(lambda: self.packet_socket is not None and self.packet_socket.close())

    @staticmethod
    def _threaded_napi(namespace_exec, device: str) -> list:
        before = _napi_threads()
        _run(*namespace_exec, "sh", "-c", "echo 1 > /sys/class/net/%s/threaded" % device)
        threads = sorted(pid for pid, name in _napi_threads().items()
                         if pid not in before and name.startswith("napi/%s-" % device))
        if not threads:
            raise RuntimeError("no NAPI thread appeared for %s" % device)
        return threads

    # ---- the POP's configurations --------------------------------------------------------

    def use(self, path: str) -> None:
        """xdp_edge attached (native), the empty drop (floor), or the kernel alone (with the nftables
        rule for nft_drop)."""
        programs = {"xdp": self.env.prog, "floor": self.floor.prog}
        want_prog, want_nft = programs.get(path), path == "nft_drop"
        uplink = self.env.ifindex[self.topo.UPLINK]
        if want_prog is not self.attached:
            if want_prog is not None:
                self._bpf.xdp_attach(uplink, want_prog.fd, self._bpf.XDP_FLAGS_DRV_MODE)
            else:
                self._bpf.xdp_detach(uplink, self._bpf.XDP_FLAGS_DRV_MODE)
            self.attached = want_prog
            if self.packet_socket is not None:
                self._packet_socket_to_napi()
        if want_nft != self.nft_loaded:
            if want_nft:
                _run("nft", "-f", "-", stdin=(
                    "table ip %s {\n chain prerouting {\n  type filter hook prerouting priority raw; policy accept;\n"
                    "  ip saddr %s counter drop\n }\n}\n" % (NFT_TABLE, self.scenario.DENIED_PREFIX)))
            else:
                _run("nft", "delete", "table", "ip", NFT_TABLE)
            self.nft_loaded = want_nft

    def nft_dropped(self) -> int:
        out = _run("nft", "list", "chain", "ip", NFT_TABLE, "prerouting")
        return int(out.split(" counter packets ", 1)[1].split()[0])

    def napi_cpu_ns(self) -> int:
        """CPU time up0's NAPI thread has had: all the POP's work on received frames (/proc/PID/schedstat)."""
        total = 0
        for pid in self.napi_threads:
            with open("/proc/%d/schedstat" % pid) as schedstat:
                total += int(schedstat.read().split()[0])
        return total

    def uplink_received(self) -> int:
        """Frames up0 received (its rx_packets: XDP's frames included)."""
        with open("/proc/%d/net/dev" % os.getpid()) as table:
            for line in table:
                name, dummy, fields = line.partition(":")
                if name.strip() == self.topo.UPLINK:
                    return int(fields.split()[1])
        raise RuntimeError("%s not in /proc/net/dev" % self.topo.UPLINK)

    def counts(self) -> dict:
        counts = {"back": self.back_counter.received(), "gen": self.gen_counter.received(),
                  "received": self.uplink_received(), "cpu_ns": self.napi_cpu_ns()}
        counts.update({reason: packets for reason, (packets, dummy) in self.env.reason_counts().items()})
        if self.nft_loaded:
            counts["nft"] = self.nft_dropped()
        return counts

    # ---- the generator -------------------------------------------------------------------------

    def _live_input(self, frame: bytes):
        """(input, xdp_md) of the generator's test run: the frame in its map, the input one byte
        longer (bench/pps_gen.c says why)."""
        frame_map = self.generator.map("pps_frame")   # struct pps_frame: a u32 length, PPS_FRAME_MAX bytes
        frame_map.update(bytes(4), struct.pack("<I%ds" % (frame_map.value_size - 4), len(frame), frame))
        data = frame + b"\0"
        return data, self._bpf.xdp_md(len(data), ingress_ifindex=self.gen_ifindex)

    def _live_refused(self, error, live_frame: bytes, ctx: bytes) -> bool:
        """True (and from now on the packet socket sends) if `error` is the kernel refusing live
        frames altogether. Some kernels do: 6.18.44-fc answers EPERM to every live-frame test run,
        even of a program that only returns XDP_DROP, with no device named, as root with every
        capability that matters here. The refusal comes before any frame is sent. A missing
        permission (no CAP_BPF, CAP_NET_ADMIN...) is EPERM too, but it refuses the same program's
        plain test run as well: then this is no refusal of live frames, and the error stands."""
        if self.packet_socket is not None or error.errno != errno.EPERM:
            return False
        try:
            self.gen_prog.test_run(live_frame, ctx_in=ctx)
        except self._bpf.BpfError:
            return False
        self._packet_socket_to_napi()
        with self.world.entered():
            self.packet_socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        self.packet_socket.bind((WORLD_GEN, 0))
        self.generator_method = "AF_PACKET socket on %s (this kernel refuses live frames: %s)" % (WORLD_GEN, error)
        return True

    def _packet_socket_to_napi(self) -> None:
        """A veth hands its peer's NAPI (whose CPU time is the figure) only skbs it could aggregate,
        and only on a receive queue that has one: with TSO off on the sender every skb qualifies,
        and with one transmit queue every skb takes queue 0 (a socket's hash picked either of two).
        Else the kernel-only cases' frames went to the backlog of whatever CPU sent them, and up0's
        NAPI thread showed no work for them. Again after each attach or detach on up0: the kernel
        takes TSO off the peer while XDP is on and gives it back after."""
        self.world.exec("ethtool", "-K", WORLD_GEN, "tso", "off")
        self.world.exec("ethtool", "-L", WORLD_GEN, "tx", "1")

    def send(self, frame: bytes, frames: int) -> None:
        """`frames` frames out of gen0: live frames (rounded up to whole runs of the generator), or,
        where the kernel refuses those, one packet socket send each."""
        if self.packet_socket is None:
            live_frame, ctx = self._live_input(frame)
            with self.world.entered():
                try:
                    while frames > 0:
                        repeat = min(frames, RUN_FRAMES)
                        self.gen_prog.run_live_frames(live_frame, repeat, ctx, batch_size=BATCH)
                        frames -= repeat
                    return
                except self._bpf.BpfError as error:
                    if not self._live_refused(error, live_frame, ctx):
                        raise
        # A queue that never drains (every send ENOBUFS) ends the bench instead of hanging it.
        stalled_since = None
        while frames > 0:
            taken = self._socket_send(frame, frames)
            frames -= taken
            if taken:
                stalled_since = None
            elif stalled_since is None:
                stalled_since = time.monotonic()
            elif time.monotonic() - stalled_since > SOCKET_STALL_SEC:
                raise RuntimeError("%s took no frame for %d s (ENOBUFS on every send): its transmit queue does "
                                   "not drain" % (WORLD_GEN, SOCKET_STALL_SEC))

    def send_for(self, frame: bytes, seconds: float):
        """Send for about `seconds`; returns (frames sent, seconds it took)."""
        sent = 0
        started = time.monotonic()
        if self.packet_socket is None:
            live_frame, ctx = self._live_input(frame)
            with self.world.entered():
                try:
                    while time.monotonic() - started < seconds:
                        self.gen_prog.run_live_frames(live_frame, RUN_FRAMES, ctx, batch_size=BATCH)
                        sent += RUN_FRAMES
                    return sent, time.monotonic() - started
                except self._bpf.BpfError as error:
                    if not self._live_refused(error, live_frame, ctx):
                        raise
        while time.monotonic() - started < seconds:
            sent += self._socket_send(frame, 1000)
        return sent, time.monotonic() - started

    def _socket_send(self, frame: bytes, frames: int) -> int:
        """Up to `frames` sends on the packet socket; the number the kernel took. A full transmit
        queue answers ENOBUFS (the receiver is behind): that frame is not counted as sent and the
        CPU is given up once, so the receiver can catch up."""
        taken = 0
        send = self.packet_socket.send
        for dummy in range(frames):
            try:
                send(frame)
                taken += 1
            except OSError as error:
                if error.errno != errno.ENOBUFS:
                    raise
                time.sleep(0)
        return taken

    def close(self) -> None:
        while self._closers:
            closer = self._closers.pop()
            with contextlib.suppress(Exception):
                closer()


def _moved(before: dict, after: dict) -> dict:
    return {key: after.get(key, 0) - before.get(key, 0) for key in set(before) | set(after)
            if after.get(key, 0) != before.get(key, 0)}


def check_last_frame(world, case: Case, frame: bytes):
    """None if the far side's last frame is what the case sends on, else what it is instead."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    scenario, topo = world.scenario, world.topo
    counter = {"back": world.back_counter, "gen": world.gen_counter}.get(case.counted)
    if counter is None:
        return None
    seen = Ether(counter.last_frame())
    sent = Ether(frame)
    if case.path == "xdp" and case.counted == "back":
        ok = (IP in seen and seen[IP].proto == 4 and seen[IP].src == topo.POP_TUNNEL_ADDR
              and seen[IP].dst == scenario.BACKEND and bytes(seen[IP].payload)[12:16] == socket.inet_aton(sent[IP].src))
    elif case.path == "kernel_forward":
        ok = IP in seen and UDP in seen and seen[IP].src == sent[IP].src and seen[IP].ttl == sent[IP].ttl - 1
    else:   # the challenge, back to the client out of up0
        ok = (IP in seen and UDP in seen and seen[IP].dst == sent[IP].src and seen[IP].src == sent[IP].dst
              and bytes(seen[UDP].payload)[:5] == b"\xff\xff\xff\xffA")
    return None if ok else "the last frame out was %s" % seen.summary()


@dataclass
class Measured:
    counted: int         # frames counted where the case's frames end
    received: int        # frames up0 received
    cpu_ns: int          # CPU time up0's NAPI thread had meanwhile
    sent: int            # frames the generator sent
    seconds: float       # how long it sent


def measure_case(world, case: Case, seconds: float = 0.0, frames: int = 0) -> Measured:
    """Configure the POP for the case, send, and prove where every frame the POP received went.

    With `frames`, sends exactly that many (the test); else for about `seconds` (the bench)."""
    from bench.measure import SetupError

    world.use(case.path)
    frame = getattr(world.scenario, case.frame_of)()
    before = world.counts()
    if frames:
        started = time.monotonic()
        world.send(frame, frames)
        sent, took = frames, time.monotonic() - started
    else:
        sent, took = world.send_for(frame, seconds)
    time.sleep(0.05)     # the last batches leave the rings
    moved = _moved(before, world.counts())
    received, cpu_ns = moved.pop("received", 0), moved.pop("cpu_ns", 0)
    counted = received if case.counted == "received" else moved.get(case.counted, 0)
    # Every frame the POP received is counted on the case's path, and nothing else moved; a
    # forward or an answer also reached the far side (all of them, but for a full ring there).
    expected = dict(moved) if case.counted == "received" else {case.counted: received}
    if case.counted in SENDING_REASONS:
        expected = {case.counted: counted, SENDING_REASONS[case.counted]: received} if case.path == "xdp" else \
            {case.counted: counted}
    if not received or not counted or moved != expected:
        raise SetupError("%s: %d frames received, expected them counted as %s, the counters moved by %s "
                         "(%d frames sent)" % (case.name, received, case.counted, moved, sent))
    problem = check_last_frame(world, case, frame)
    if problem:
        raise SetupError("%s: %s" % (case.name, problem))
    return Measured(counted, received, cpu_ns, sent, took)


# Real-time priorities (SCHED_FIFO) while the bench runs, under the kernel-test lock: on a machine
# other tenants load, a normal thread gets what the scheduler leaves it. The receiver must have its
# CPU, and the generator must offer more than the receiver can take, or the receiver idles between
# frames and its time per frame counts its wake-ups. On the generator's CPU the far side's NAPI
# threads come first (they drain what the POP sends, then sleep). The kernel's real-time throttling
# (sched_rt_runtime_us) still leaves other tasks 5% of each CPU.
RECEIVER_PRIORITY, FAR_SIDE_PRIORITY, GENERATOR_PRIORITY = 50, 45, 40


def _pin(world, gen_cpu: int, rx_cpu: int) -> None:
    """up0's NAPI thread on one CPU; the generator (this thread) and the far side's NAPI threads on
    the other; all at real-time priority. Undone by _unpin."""
    for pid in world.napi_threads:
        os.sched_setaffinity(pid, {rx_cpu})
        os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(RECEIVER_PRIORITY))
    for pid in world.far_napi_threads:
        os.sched_setaffinity(pid, {gen_cpu})
        os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(FAR_SIDE_PRIORITY))
    os.sched_setaffinity(0, {gen_cpu})
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(GENERATOR_PRIORITY))


def _unpin(cpus) -> None:
    """This thread back to a normal one on every CPU (the NAPI threads go with their namespaces)."""
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    os.sched_setaffinity(0, cpus)


def _bench(args) -> int:
    from bench.measure import SetupError

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SetupError("the pps bench needs 2 CPUs (generator, receiver): %s" % cpus)
    rx_cpu, gen_cpu = cpus[0], cpus[1]
    results = {"rounds": args.rounds, "seconds_per_run": args.seconds, "generator_cpu": gen_cpu,
               "receiver_cpu": rx_cpu, "cases": {}}
    world = PpsWorld(args.object, "bench")
    try:
        _pin(world, gen_cpu, rx_cpu)
        for case in CASES:          # warm-up, and every path checked once before timing
            measure_case(world, case, frames=20_000)
        _say()
        _say("packets per second on real frames: %d cases x %d interleaved rounds of %.1f s ..." % (
            len(CASES), args.rounds, args.seconds))
        for round_index in range(args.rounds):
            shift = round_index % len(CASES)
            for case in CASES[shift:] + CASES[:shift]:
                got = measure_case(world, case, seconds=args.seconds)
                case.ns_per_packet.append(got.cpu_ns / got.received)
                case.seen.append(got.counted / got.seconds)
                case.offered.append(got.sent / got.seconds)
        results["generator"] = world.generator_method
    finally:
        _unpin(cpus)
        world.close()
    _print_table(results)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)
    return 0


def _print_table(results) -> None:
    by_name = {case.name: case for case in CASES}
    floor = statistics.median(CASES[0].ns_per_packet)
    _say()
    _say("%-46s %7s %11s %8s %9s %7s %7s %9s %6s %s" % (
        "case (bench/pps.py) [1]", "ns/pkt", "min-max", "Mpps/CPU", "over floor", "seen", "offered",
        "vs kernel", "goal", ""))
    for case in CASES:
        ns = statistics.median(case.ns_per_packet)
        ratio = goal = verdict = ""
        if case.path == "xdp":
            kernel = by_name[KERNEL_ROWS[case.kind]]
            ratios = [base / edge for edge, base in zip(case.ns_per_packet, kernel.ns_per_packet)]
            ratio = "%.2fx" % statistics.median(ratios)
            goal = ">=%.0fx" % GOALS[case.kind]
            verdict = "PASS" if statistics.median(ratios) >= GOALS[case.kind] else "MISS"
        _say("%-46s %7.0f %11s %8.2f %9.0f %6.2fM %6.2fM %9s %6s %s" % (
            case.name, ns, "%.0f-%.0f" % (min(case.ns_per_packet), max(case.ns_per_packet)), 1e3 / ns,
            ns - floor, statistics.median(case.seen) / 1e6, statistics.median(case.offered) / 1e6, ratio, goal,
            verdict))
        results["cases"][case.name] = {"ns_per_packet": case.ns_per_packet, "seen_pps": case.seen,
                                       "offered_pps": case.offered}
    _say("[1] ns/pkt: the CPU time up0's NAPI thread had (/proc/PID/schedstat) over the frames up0 received:")
    _say("    all the POP's work per frame - the veth's receive, the program or the kernel's stack, and the")
    _say("    send on. Mpps/CPU = 1000 / ns/pkt: what one such CPU does; the ratio to the kernel is taken")
    _say("    round by round on it (drops against the nftables drop, the forward and the answer against the")
    _say("    kernel's forward). 'over floor': minus the empty XDP_DROP's row, the figure to set beside the")
    _say("    TEST_RUN table's. seen: frames counted per second (the nftables rule's counter, xdp_edge's reason")
    _say("    counter, or the far side's); offered: what the generator sent (a full ring drops the rest).")
    _say("    The receiving CPU is shared with other tenants here: seen is what it got, ns/pkt what it costs.")
    _say("[2] this host's kernel has no ipip module: the kernel's forward is plain IP forwarding from up0")
    _say("    to bk0 (a route and a neighbour), which is less work than an IPIP forward would be.")
    _say("    CPUs: up0's NAPI thread on CPU %d (SCHED_FIFO %d); the far side's NAPI threads (SCHED_FIFO %d) and" % (
        results["receiver_cpu"], RECEIVER_PRIORITY, FAR_SIDE_PRIORITY))
    _say("    the generator (SCHED_FIFO %d) on CPU %d." % (GENERATOR_PRIORITY, results["generator_cpu"]))
    _say("    Generator: %s." % results["generator"])
    if not results["generator"].startswith("live frames"):
        _say("    A packet socket offers far fewer frames than live frames: the receiver idles between them,")
        _say("    and its ns/pkt then counts its wake-ups too. Compare such rows only with each other.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; each figure is their median")
    parser.add_argument("--seconds", type=float, default=1.0, help="how long each case sends per round")
    parser.add_argument("--object", default=str(Path(__file__).resolve().parent.parent / "build" / "xdp_edge.o"))
    parser.add_argument("--json", metavar="PATH", help="also write every sample to PATH")
    return run_as_root("bench/pps.py", _bench, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
