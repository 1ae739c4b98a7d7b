"""Watch, at the lab's upstream router, the route one BGP neighbour gives for a prefix.

Run on the host (it talks to the upstream BIRD's control socket). Polls ``birdc show route
<prefix> protocol <neighbour> all`` every --interval seconds until it has seen the route for
--settle seconds after its first appearance, or --duration runs out; prints one JSON object:
every change seen (seconds since the start, the communities or null for no route) and the
first route's communities. verify (tasks/drain.yml) starts it before undrain.yml, so the very
first announcement that returns the POP is what is judged.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time


def route_communities(socket_path: str, prefix: str, protocol: str) -> list[str] | None:
    out = subprocess.run(["birdc", "-s", socket_path, "show", "route", prefix, "protocol", protocol, "all"],
                         capture_output=True, text=True, check=False).stdout
    if prefix not in out:
        return None
    match = re.search(r"BGP\.community:\s*(.*)", out)
    return sorted("%s:%s" % pair for pair in re.findall(r"\((\d+),\s*(\d+)\)", match.group(1))) if match else []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--protocol", required=True, help="the upstream's BGP protocol of that neighbour")
    parser.add_argument("--duration", type=float, default=300)
    parser.add_argument("--settle", type=float, default=5, help="seconds to keep watching after the route is back")
    parser.add_argument("--interval", type=float, default=0.1)
    args = parser.parse_args(argv)
    started = time.monotonic()
    changes: list[tuple[float, list[str] | None]] = []
    back_at = None
    while time.monotonic() - started < args.duration:
        seen = route_communities(args.socket, args.prefix, args.protocol)
        now = time.monotonic() - started
        if not changes or changes[-1][1] != seen:
            changes.append((round(now, 2), seen))
        # The watch starts on a withdrawn POP: the route's first appearance is the return.
        if seen is not None and back_at is None and changes[0][1] is None:
            back_at = now
        if back_at is not None and now - back_at >= args.settle:
            break
        time.sleep(args.interval)
    announced = [communities for at, communities in changes[1:] if communities is not None]
    json.dump({"changes": changes, "first_route": announced[0] if announced else None,
               "returned_after_sec": round(back_at, 2) if back_at is not None else None}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
