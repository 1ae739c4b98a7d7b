"""What one Prometheus scrape of the POP agent costs with 100,000 tracked players (run as root).

    .venv/bin/python bench/agent_exporter_cost.py [--clients 100000] [--scrapes 20]

Loads build/xdp_edge.o, fills its per-CPU LRU client map (edge_client_stats) with --clients
players (every CPU's slot non-zero, as on a busy POP), pins the maps in a private bpffs like
xdp_program does, and runs the agent's real collector + text rendering (what an HTTP scrape
does) --scrapes times, changing a tenth of the players' counters between scrapes so the top-N
deltas have work to do. Reports the process CPU time of one scrape and what that is as a share
of one core at a 1 s scrape interval.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "agent"))


def collections_root() -> str:
    """A folder holding ansible_collections/anycast/edge -> this checkout (as the tests make it)."""
    folder = tempfile.mkdtemp(prefix="anycast-edge-bench-")
    namespace = Path(folder, "ansible_collections", "anycast")
    namespace.mkdir(parents=True)
    (namespace / "edge").symlink_to(REPO_ROOT, target_is_directory=True)
    return folder


sys.path.insert(0, collections_root())

# pylint: disable=wrong-import-position
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from ansible_collections.anycast.edge.plugins.module_utils import _bpf, _pins  # noqa: E402
from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi  # noqa: E402
from anycast_edge_agent.exporter import EdgeCollector  # noqa: E402
from anycast_edge_agent.maps import EdgeMaps  # noqa: E402

IFACE = "bench0"


def fill_clients(bpf_map, count: int, bump: int = 0, every: int = 1) -> None:
    ncpu = _bpf.num_possible_cpus()
    keys, values = [], []
    for index in range(0, count, every):
        keys.append(struct.pack("!I", 0x0B000000 + index))  # 11.0.0.0 + index
        packets = 1 + index % 1000 + bump
        values.append(b"".join(abi.CLIENT_COUNTER.pack(packets + cpu, (packets + cpu) * 80, 10**9)
                               for cpu in range(ncpu)))
    for start in range(0, len(keys), 16384):
        bpf_map.update_batch(keys[start:start + 16384], values[start:start + 16384])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--scrapes", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("agent_exporter_cost: needs root (BPF)", file=sys.stderr)
        return 1
    subprocess.run(["make", "--no-print-directory", "build/xdp_edge.o"], cwd=REPO_ROOT, check=True)
    pin_root = tempfile.mkdtemp(prefix="anycast-edge-bench-pins-")
    subprocess.run(["mount", "-t", "bpf", "bpf", pin_root], check=True)
    try:
        with _bpf.BpfObject.open(str(REPO_ROOT / "build" / "xdp_edge.o")) as obj:
            obj.load()
            os.makedirs(_pins.maps_dir(pin_root, IFACE))
            obj.program("xdp_edge").pin(_pins.program_pin_path(pin_root, IFACE))
            for bpf_map in obj.maps():
                bpf_map.pin(_pins.map_pin_path(pin_root, IFACE, bpf_map.name))
            clients = obj.map("edge_client_stats")
            fill_clients(clients, args.clients)
            registry = CollectorRegistry()
            registry.register(EdgeCollector(EdgeMaps(pin_root, IFACE), top_clients=10))
            generate_latest(registry)  # the first scrape has no previous reading: not timed
            cpu_times, wall_times = [], []
            for scrape in range(args.scrapes):
                fill_clients(clients, args.clients, bump=scrape + 1, every=10)
                cpu_start, wall_start = time.process_time(), time.monotonic()
                text = generate_latest(registry).decode()
                cpu_times.append(time.process_time() - cpu_start)
                wall_times.append(time.monotonic() - wall_start)
            light = CollectorRegistry()
            light_collector = EdgeCollector(EdgeMaps(pin_root, IFACE), top_clients=10, clients_interval_sec=3600)
            light.register(light_collector)
            generate_latest(light)
            light_times = []
            for scrape in range(args.scrapes):
                cpu_start = time.process_time()
                generate_latest(light)
                light_times.append(time.process_time() - cpu_start)
            tracked = [line for line in text.splitlines() if line.startswith("anycast_edge_clients_tracked ")]
    finally:
        subprocess.run(["umount", "-l", pin_root], check=False)
    cpu = statistics.median(cpu_times)
    print("clients tracked: %s (CPUs: %d)" % (tracked[0].split()[1] if tracked else "?", _bpf.num_possible_cpus()))
    print("one scrape: %.1f ms CPU (median of %d; min %.1f, max %.1f), %.1f ms wall"
          % (cpu * 1e3, len(cpu_times), min(cpu_times) * 1e3, max(cpu_times) * 1e3, statistics.median(wall_times) * 1e3))
    print("at a 1 s scrape interval, clients read every scrape: %.1f %% of one core" % (cpu * 100))
    # The agent's default reads the client map every top_clients_interval_sec (10 s) and the small
    # maps every scrape: amortised cost = full scrape once + (interval - 1) light scrapes.
    light = statistics.median(light_times)
    print("light scrape (client ranking reused): %.1f ms CPU" % (light * 1e3))
    print("at a 1 s scrape interval, clients read every 10 s (the default): %.1f %% of one core"
          % ((cpu + 9 * light) / 10 * 100))
    return 0


if __name__ == "__main__":
    sys.exit(main())
