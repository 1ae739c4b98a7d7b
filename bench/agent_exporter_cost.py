"""What one Prometheus scrape of the POP agent costs with 100,000 tracked players, 262,144 banned
sources and a full punch map (run as root).

    .venv/bin/python bench/agent_exporter_cost.py [--clients 100000] [--bans 262144] [--punches 262144]
                                                  [--scrapes 20] [--burst 8]

Loads build/xdp_edge.o, fills its per-source LRU map (edge_sources) with --clients players and
--bans banned sources, and the punch map with --punches entries (what an attack leaves behind), pins the maps in a private bpffs like
xdp_program does, and runs the agent's real collector + text rendering (what an HTTP scrape
does) --scrapes times, changing a tenth of the players' counters between scrapes so the top-N
deltas have work to do. Reports the process CPU time of:

* one scrape that walks every map (cache periods 0: what every scrape cost before the cache);
* a light scrape (the per-entry maps' families reused: sources with their bans, punches) and the amortised cost at the agent's
  default periods;
* a burst of --burst scrapes at the same instant over HTTP (the agent's own server), with the
  default periods: the per-entry maps are walked once for the whole burst.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[0:0] = [str(REPO_ROOT / "agent"), str(REPO_ROOT)]

# pylint: disable=wrong-import-position
from harness import collection  # noqa: E402

atexit.register(collection.remove, collection.use())
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from ansible_collections.anycast.edge.plugins.module_utils import _bpf, _pins  # noqa: E402
from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi  # noqa: E402
from anycast_edge_agent.config import Config  # noqa: E402
from anycast_edge_agent.exporter import EdgeCollector, serve  # noqa: E402
from anycast_edge_agent.maps import EdgeMaps  # noqa: E402

IFACE = "bench0"


def fill_clients(bpf_map, count: int, bump: int = 0, every: int = 1) -> None:
    keys, values = [], []
    for index in range(0, count, every):
        keys.append(struct.pack("!I", 0x0B000000 + index))  # 11.0.0.0 + index
        packets = 1 + index % 1000 + bump
        values.append(abi.SourceState(last_seen_ns=10**9, packets=packets, byte_count=packets * 80).pack())
    for start in range(0, len(keys), 16384):
        bpf_map.update_batch(keys[start:start + 16384], values[start:start + 16384])


def fill_bans_and_punches(sources_map, punches_map, bans: int, punches: int) -> None:
    until = time.monotonic_ns() + 3600 * 10**9
    keys = [struct.pack("!I", 0x0C000000 + index) for index in range(bans)]  # 12.0.0.0 + index
    values = [abi.SourceState(ban_until_ns=until, last_seen_ns=10**9, packets=100, byte_count=8000).pack()] * bans
    for start in range(0, bans, 16384):
        sources_map.update_batch(keys[start:start + 16384], values[start:start + 16384])
    keys = [abi.pack_punch_key("udp", "198.51.100.10", 27015, socket.inet_ntoa(struct.pack("!I", 0x0D000000 + index)),
                               1024 + index % 60000) for index in range(punches)]
    values = [abi.PUNCH_VALUE.pack(until)] * punches
    for start in range(0, punches, 16384):
        punches_map.update_batch(keys[start:start + 16384], values[start:start + 16384])


def burst_cpu(registry, scrapes: int) -> float:
    """CPU seconds of ``scrapes`` HTTP scrapes released at once against the agent's server."""
    server, thread = serve(registry, "127.0.0.1", 0)
    url = "http://127.0.0.1:%d/metrics" % server.server_address[1]
    barrier = threading.Barrier(scrapes + 1)

    def scrape():
        barrier.wait()
        with urllib.request.urlopen(url, timeout=60) as response:
            response.read()

    try:
        scrapers = [threading.Thread(target=scrape) for dummy in range(scrapes)]
        for scraper in scrapers:
            scraper.start()
        cpu_start = time.process_time()
        barrier.wait()
        for scraper in scrapers:
            scraper.join()
        return time.process_time() - cpu_start
    finally:
        server.shutdown()
        thread.join()


def median_scrape_cpu(pin_root, scrapes: int, clients_every: float, state_every: float) -> float:
    registry = CollectorRegistry()
    registry.register(EdgeCollector(EdgeMaps(pin_root, IFACE), top_clients=10, clients_interval_sec=clients_every,
                                    state_interval_sec=state_every))
    generate_latest(registry)  # the first scrape fills the caches: not timed
    times = []
    for dummy in range(scrapes):
        cpu_start = time.process_time()
        generate_latest(registry)
        times.append(time.process_time() - cpu_start)
    return statistics.median(times)


def arguments(doc: str, **counts: int) -> argparse.Namespace:
    """The command line of an agent bench: the integer options ``counts`` ({name: default}), and
    --bans and --punches (262,144 each by default: edge_sources' bans and edge_punches full)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for name, default in dict(counts, bans=262_144, punches=262_144).items():
        parser.add_argument("--" + name, type=int, default=default)
    return parser.parse_args()


def is_root(tool: str) -> bool:
    """True when run as root; else says that ``tool`` needs it."""
    if os.geteuid() != 0:
        print("%s: needs root (BPF)" % tool, file=sys.stderr)
        return False
    return True


@contextlib.contextmanager
def pinned_edge_program():
    """build/xdp_edge.o made up to date and loaded, its program and maps pinned for IFACE in a
    private bpffs as xdp_program pins them: yields (the object, the bpffs folder), unmounted and
    removed afterwards."""
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
            yield obj, pin_root
    finally:
        subprocess.run(["umount", "-l", pin_root], check=False)
        os.rmdir(pin_root)


def main() -> int:
    args = arguments(__doc__, clients=100_000, scrapes=20, burst=8)
    if not is_root("agent_exporter_cost"):
        return 1
    with pinned_edge_program() as (obj, pin_root):
        clients = obj.map("edge_sources")
        fill_clients(clients, args.clients)
        fill_bans_and_punches(clients, obj.map("edge_punches"), args.bans, args.punches)
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
        # One family group walked every scrape, the other reused: what each walk costs alone.
        light_times = median_scrape_cpu(pin_root, args.scrapes, clients_every=3600, state_every=3600)
        clients_only = median_scrape_cpu(pin_root, args.scrapes, clients_every=0, state_every=3600)
        state_only = median_scrape_cpu(pin_root, args.scrapes, clients_every=3600, state_every=0)
        tracked = [line for line in text.splitlines() if line.startswith("anycast_edge_clients_tracked ")]
        bursty = CollectorRegistry()
        bursty.register(EdgeCollector(EdgeMaps(pin_root, IFACE), top_clients=10,
                                      clients_interval_sec=Config.top_clients_interval_sec,
                                      state_interval_sec=Config.state_maps_interval_sec))
        burst = burst_cpu(bursty, args.burst)
    cpu = statistics.median(cpu_times)
    print("clients tracked: %s, bans %d, punches %d (CPUs: %d)" % (
        tracked[0].split()[1] if tracked else "?", args.bans, args.punches, _bpf.num_possible_cpus()))
    print("one scrape walking every map: %.1f ms CPU (median of %d; min %.1f, max %.1f), %.1f ms wall"
          % (cpu * 1e3, len(cpu_times), min(cpu_times) * 1e3, max(cpu_times) * 1e3, statistics.median(wall_times) * 1e3))
    print("at a 1 s scrape interval, every map walked every scrape: %.1f %% of one core" % (cpu * 100))
    light = light_times
    print("light scrape (per-entry maps' families reused): %.1f ms CPU; source walk (players, bans) +%.1f ms, "
          "punch/cache walk +%.1f ms"
          % (light * 1e3, (clients_only - light) * 1e3, (state_only - light) * 1e3))
    # At the defaults each walk happens once per its period; the small maps every scrape.
    amortised = (light + (clients_only - light) / Config.top_clients_interval_sec
                 + (state_only - light) / Config.state_maps_interval_sec)
    print("at a 1 s scrape interval, with the default periods (sources %g s, punches %g s): %.1f ms a scrape, "
          "%.1f %% of one core (%.1fx less)"
          % (Config.top_clients_interval_sec, Config.state_maps_interval_sec, amortised * 1e3, amortised * 100,
             cpu / amortised))
    print("a burst of %d simultaneous HTTP scrapes (default periods, caches cold): %.1f ms CPU in all, %.1f ms a scrape"
          % (args.burst, burst * 1e3, burst / args.burst * 1e3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
