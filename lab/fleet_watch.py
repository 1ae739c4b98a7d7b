"""Time a fleet-wide ban's arrival in every POP's map, on one clock (verify's check 15).

Two halves, standard library only:

- ``watch``, on each POP (copied there by the check; run with the agent's PYTHONPATH): polls the
  XDP program's ``edge_sources`` entry of one address every few milliseconds through the
  product's own pinned-map helpers, and the moment the address is banned (``ban_until_ns`` ahead
  of CLOCK_MONOTONIC) or no longer banned, sends a datagram saying so to the host. It says
  "ready" to the same address once its first lookup is done, so that the ban starts only after
  both POPs are watching.
- ``listen``, in the upstream's namespace on the host: takes those datagrams (each POP's reach
  the namespace over its own uplink), writes ``--ready-file`` when every POP is watching, and
  prints one JSON line: the host's CLOCK_MONOTONIC second each POP saw the change, and each
  POP's delay after the first one that saw it.

Why the host's clock: the VMs' clocks are set from the emulated RTC at boot (whole seconds) and
nothing keeps them in step, so times read on two POPs cannot be subtracted. A datagram on a
point-to-point link to the host adds well under a millisecond under a loaded emulated CPU's
scheduling (the same for both POPs), which is what the delays carry as error, with the poll
interval.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

# The datagram: "<pop> <event>", event "ready", "banned" or "lifted".
EVENTS = ("banned", "lifted")


def watch(args: argparse.Namespace) -> int:
    # Imported here: only the POP has the agent's module_utils on its path.
    from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
    from ansible_collections.anycast.edge.plugins.module_utils._pins import open_pinned_maps

    key = abi.ipv4(args.address)
    report = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    destination = (args.report, args.port)

    def say(event: str) -> None:
        # Three copies a few ms apart: a datagram lost on a busy link must not fail the check.
        for dummy in range(3):
            report.sendto(("%s %s" % (args.pop, event)).encode(), destination)
            time.sleep(0.005)

    deadline = time.monotonic() + args.timeout
    with open_pinned_maps(args.pin_root, args.iface, ("edge_sources",)) as maps:
        sources = maps["edge_sources"]
        ready_sent = False
        polls = 0
        while time.monotonic() < deadline:
            raw = sources.lookup(key)
            banned = raw is not None and abi.SourceState.unpack(raw).ban_until_ns > time.monotonic_ns()
            polls += 1
            if banned == (args.event == "banned"):
                say(args.event)
                print(json.dumps({"pop": args.pop, "event": args.event, "polls": polls}))
                return 0
            if not ready_sent:
                say("ready")
                ready_sent = True
            time.sleep(args.interval)
    print(json.dumps({"pop": args.pop, "event": args.event, "polls": polls, "timeout": True}))
    return 1


def listen(args: argparse.Namespace) -> int:
    pops = args.pops.split(",")
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("0.0.0.0", args.port))
    ready: dict[str, float] = {}
    seen: dict[str, float] = {}
    deadline = time.monotonic() + args.timeout
    while len(seen) < len(pops) and time.monotonic() < deadline:
        server.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data, dummy = server.recvfrom(256)
        except socket.timeout:
            break
        arrived = time.monotonic()
        pop, dummy, event = data.decode(errors="replace").partition(" ")
        if pop not in pops:
            continue
        if event == "ready" and pop not in ready:
            ready[pop] = arrived
            if len(ready) == len(pops) and args.ready_file:
                with open(args.ready_file, "w") as marker:
                    marker.write("ready\n")
        elif event == args.event and pop not in seen:
            seen[pop] = arrived
    first = min(seen.values()) if seen else None
    print(json.dumps({
        "event": args.event,
        "seen_at": seen,
        "delay_sec": {pop: round(at - first, 4) for pop, at in seen.items()},
        "first": min(seen, key=seen.get) if seen else None,
        "missing": sorted(set(pops) - set(seen)),
        "not_ready": sorted(set(pops) - set(ready)),
    }, sort_keys=True))
    return 0 if len(seen) == len(pops) else 1


CONTROL_SOCKET = "/run/anycast-edge-agent/control.sock"
# Sent to the agent on the POP by its own python3 (what anycast.edge.edge_ban does there).
ASK_AGENT = (
    "import json, socket, sys\n"
    "conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
    "conn.connect(%r)\n"
    "conn.sendall(sys.argv[1].encode() + b'\\n')\n"
    "conn.shutdown(socket.SHUT_WR)\n"
    "answer = json.loads(conn.makefile().read())\n"
    "sys.exit(0 if answer.get('ok') else answer.get('error') or 1)\n" % CONTROL_SOCKET)


def rounds(args: argparse.Namespace) -> int:
    """On the host: --rounds times, ban the address at the first POP through its agent's control
    socket (the request anycast.edge.edge_ban makes there), then lift it, each timed at every POP
    as above; one JSON line of every round's delays."""
    import shlex
    import subprocess
    import tempfile

    pops = args.pops.split(",")
    here = os.path.dirname(os.path.abspath(__file__))
    labctl = [sys.executable, os.path.join(here, "labctl.py"), "ssh"]
    results = []
    for index in range(args.rounds):
        for event, action in (("banned", "ban"), ("lifted", "unban")):
            # ssh hands the remote shell one string: the code and the request are quoted for it.
            with tempfile.TemporaryDirectory() as folder:
                ready = os.path.join(folder, "ready")
                listener = subprocess.Popen(
                    ["ip", "netns", "exec", args.netns, sys.executable, os.path.abspath(__file__), "listen",
                     "--pops", args.pops, "--event", event, "--port", str(args.port), "--ready-file", ready,
                     "--timeout", str(args.timeout)], stdout=subprocess.PIPE, text=True)
                watchers = []
                for pop, report in zip(pops, args.reports.split(",")):
                    with open(os.path.abspath(__file__)) as script:
                        watchers.append(subprocess.Popen(
                            labctl + [pop, "env", "PYTHONPATH=" + args.agent_path, "python3", "-", "watch", "--pop", pop,
                                      "--address", args.address, "--event", event, "--iface", args.iface,
                                      "--pin-root", args.pin_root, "--report", report, "--port", str(args.port),
                                      "--timeout", str(args.timeout)],
                            stdin=script, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                deadline = time.monotonic() + args.timeout
                while not os.path.exists(ready) and listener.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.1)
                request = {"action": action, "addresses": [args.address], "check": False}
                if action == "ban":
                    request["expires_ns"] = (int(time.time()) + args.ban_sec) * 10**9
                asked = subprocess.run(labctl + [pops[0], "python3", "-c", shlex.quote(ASK_AGENT), shlex.quote(json.dumps(request))],
                                       capture_output=True, text=True, check=False)
                out, dummy = listener.communicate(timeout=args.timeout + 30)
                for watcher in watchers:
                    watcher.wait(timeout=args.timeout + 30)
                try:
                    heard = json.loads(out)
                except ValueError:
                    heard = {"listener": out}
                heard.update(round=index + 1, asked_rc=asked.returncode, asked_err=asked.stderr[-300:])
                results.append(heard)
    delays = [max(heard.get("delay_sec", {}).values() or [None]) for heard in results
              if not heard.get("missing") and heard.get("first") == pops[0]]
    print(json.dumps({"rounds": results, "delays_sec": delays, "complete": len(delays) == len(results)},
                     sort_keys=True))
    return 0 if len(delays) == len(results) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    watcher = commands.add_parser("watch", help="on a POP: report when ADDRESS is banned or lifted in its map")
    watcher.add_argument("--pop", required=True, help="this POP's name, as the listener knows it")
    watcher.add_argument("--address", required=True)
    watcher.add_argument("--event", choices=EVENTS, required=True)
    watcher.add_argument("--iface", required=True, help="the uplink (the program's pin folder)")
    watcher.add_argument("--pin-root", required=True)
    watcher.add_argument("--report", required=True, help="the listener's address (the upstream's side of the uplink)")
    watcher.add_argument("--port", type=int, required=True)
    # 20 ms: fine enough for a bound of a second, and light on a POP's one emulated CPU, which the
    # agent that imports the change needs (a 5 ms loop took a third of it).
    watcher.add_argument("--interval", type=float, default=0.02, help="seconds between lookups")
    watcher.add_argument("--timeout", type=float, default=120.0)
    listener = commands.add_parser("listen", help="on the host: when did each POP see the change")
    listener.add_argument("--pops", required=True, help="comma-separated POP names")
    listener.add_argument("--event", choices=EVENTS, required=True)
    listener.add_argument("--port", type=int, required=True)
    listener.add_argument("--ready-file", help="written once every POP is watching")
    listener.add_argument("--timeout", type=float, default=120.0)
    rounder = commands.add_parser("rounds", help="on the host: ban and lift at the first POP's agent, timed")
    rounder.add_argument("--pops", required=True, help="comma-separated POP names, the one to ban at first")
    rounder.add_argument("--reports", required=True, help="the listener's address as each POP reaches it, same order")
    rounder.add_argument("--netns", required=True, help="the upstream's namespace (the listener's)")
    rounder.add_argument("--address", required=True)
    rounder.add_argument("--rounds", type=int, default=3)
    rounder.add_argument("--ban-sec", type=int, default=300)
    rounder.add_argument("--iface", required=True)
    rounder.add_argument("--pin-root", required=True)
    rounder.add_argument("--agent-path", required=True, help="the agent's PYTHONPATH on the POPs")
    rounder.add_argument("--port", type=int, required=True)
    rounder.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    return {"watch": watch, "listen": listen, "rounds": rounds}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
