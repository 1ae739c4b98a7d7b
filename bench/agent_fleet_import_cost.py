"""What the fleet sync's import caps cost an origin POP at its cap (no root, no bus).

    .venv/bin/python bench/agent_fleet_import_cost.py [--live 50000] [--refusals 1000]

An origin that keeps publishing once it has --live entries alive here (import_max_entries_per_pop)
is refused at its whole import rate (import_rate_per_pop, 1,000 a second by default): the agent's
real ImportCaps is filled to its cap and asked --refusals times for room. Reports the process CPU
time per refusal and what that makes of a second of refusals at the default rate.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# pylint: disable=wrong-import-position
# Imported for what it does on import: puts agent/ and the collection on sys.path.
from bench import agent_exporter_cost  # noqa: E402,F401  pylint: disable=unused-import

from anycast_edge_agent.config import FleetSyncConfig  # noqa: E402
from anycast_edge_agent.fleet_sync import NS, ImportCaps  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", type=int, default=FleetSyncConfig.import_max_entries_per_pop)
    parser.add_argument("--refusals", type=int, default=1000)
    args = parser.parse_args()
    rate = FleetSyncConfig.import_rate_per_pop
    caps = ImportCaps(rate, FleetSyncConfig.import_burst_per_pop, args.live)
    now = time.time_ns()
    for index in range(args.live):
        caps.admit("pop1", ("punch", index.to_bytes(13, "little")), now + 3600 * NS + index)
    started = time.process_time()
    refused = sum(not caps.has_room("pop1", ("punch", b"new" + index.to_bytes(10, "little")), now)
                  for index in range(args.refusals))
    per_refusal = (time.process_time() - started) / args.refusals
    assert refused == args.refusals
    print("import caps at %d live entries: %.1f us of CPU per refusal, %.3f CPU s per second of refusals "
          "at %g entries/s" % (args.live, per_refusal * 1e6, per_refusal * rate, rate))


if __name__ == "__main__":
    main()
