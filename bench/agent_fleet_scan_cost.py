"""What the fleet sync's scans for news cost with full maps (run as root).

    .venv/bin/python bench/agent_fleet_scan_cost.py [--players 262144] [--bans 262144] [--punches 262144]
                                                    [--scans 10]

Loads build/xdp_edge.o, fills edge_sources with --players verified players (one verified slot
each) and --bans banned sources (together at most 524,288, the map's size) and edge_punches
with --punches live punches, pins the maps in a private bpffs like xdp_program does, and runs the
agent's real FleetSync scans (no bus: the scans only fill its outbox). Reports the process CPU
time of the first scan of each map (everything is news) and the median of --scans later ones
(nothing new: the steady state, what runs every punch_scan_interval_sec / sources_scan_interval_sec).
"""

from __future__ import annotations

import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# pylint: disable=wrong-import-position
from bench import agent_exporter_cost as base  # noqa: E402  (puts agent/ and the collection on sys.path)

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi  # noqa: E402
from anycast_edge_agent.config import FleetSyncConfig  # noqa: E402
from anycast_edge_agent.fleet_sync import FleetSync  # noqa: E402
from anycast_edge_agent.maps import EdgeMaps  # noqa: E402

IFACE = base.IFACE
SERVICE_ID = 1


def fill_players(sources_map, count: int) -> None:
    active = time.monotonic_ns()
    keys = [struct.pack("!I", 0x0E000000 + index) for index in range(count)]  # 14.0.0.0 + index
    values = [abi.SourceState(last_seen_ns=active, packets=100, byte_count=8000,
                              verified=[(SERVICE_ID, 1, active)]).pack()] * count
    for start in range(0, count, 16384):
        sources_map.update_batch(keys[start:start + 16384], values[start:start + 16384])


def client_address(index: int) -> str:
    """The index-th of 13.0.0.0/8's addresses, a distinct client per punch."""
    return "13.%d.%d.%d" % (index >> 16, (index >> 8) & 255, index & 255)


def fill_punches(punches_map, count: int) -> None:
    """Live punches, their last reply now (not in the future: a scan reads what is newer than the last)."""
    now = time.monotonic_ns()
    keys = [abi.pack_punch_key("udp", "198.51.100.10", 27015, client_address(index), 27005) for index in range(count)]
    values = [abi.PUNCH_VALUE.pack(now)] * count
    for start in range(0, count, 16384):
        punches_map.update_batch(keys[start:start + 16384], values[start:start + 16384])


def cpu_of(call) -> float:
    started = time.process_time()
    call()
    return time.process_time() - started


def main() -> int:
    args = base.arguments(__doc__, players=262_144, scans=10)
    if not base.is_root("agent_fleet_scan_cost"):
        return 1
    with base.pinned_edge_program() as (obj, pin_root):
        maps = {bpf_map.name: bpf_map for bpf_map in obj.maps()}
        maps["edge_config"].update(abi.U32.pack(0), abi.pack_config("10.0.0.1", ban_sec=3600,
                                                                    punch_idle_ns=3600 * 10**9))
        maps["edge_services"].update(abi.pack_service_key("udp", "198.51.100.10", 27015),
                                     abi.pack_service_value(SERVICE_ID, "10.1.0.10"))
        fill_players(maps["edge_sources"], args.players)
        base.fill_bans_and_punches(maps["edge_sources"], maps["edge_punches"], args.bans, 0)
        fill_punches(maps["edge_punches"], args.punches)
        sync = FleetSync(FleetSyncConfig(servers=["nats://127.0.0.1:4222"]), "bench", EdgeMaps(pin_root, IFACE))
        first_punches = cpu_of(sync.scan_punches)
        first_sources = cpu_of(sync.scan_sources)
        queued = len(sync.outbox)
        punches = statistics.median(cpu_of(sync.scan_punches) for dummy in range(args.scans))
        sources = statistics.median(cpu_of(sync.scan_sources) for dummy in range(args.scans))
    print("fleet sync scans, CPU seconds (%d punches; %d verified players + %d bans in edge_sources):"
          % (args.punches, args.players, args.bans))
    print("  edge_punches: first scan %.3f (all news), then %.3f per scan" % (first_punches, punches))
    print("  edge_sources: first scan %.3f (all news), then %.3f per scan" % (first_sources, sources))
    print("  entries queued by the first scans: %d" % queued)
    return 0


if __name__ == "__main__":
    sys.exit(main())
