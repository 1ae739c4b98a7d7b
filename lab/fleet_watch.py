"""Time a fleet-wide ban's arrival in every POP's map, on one clock (verify's check 15).

Two halves, standard library only:

- ``watch``, on each POP (copied there by the check; run with the agent's PYTHONPATH): polls the
  XDP program's ``edge_sources`` entry of one address every few milliseconds through the
  product's own pinned-map helpers, and the moment the address is banned (``ban_until_ns`` ahead
  of CLOCK_MONOTONIC) or no longer banned, sends a datagram saying so to the host. It says
  "ready" to the same address once its first lookup is done, so that the ban starts only after
  both POPs are watching. With ``--changes N`` it goes on watching for N changes, banned and
  lifted in turn, each datagram numbered.
- ``listen``, in the upstream's namespace on the host: takes those datagrams (each POP's reach
  the namespace over its own uplink), writes ``--ready-file`` when every POP is watching, and
  prints one JSON line: the host's CLOCK_MONOTONIC second each POP saw the change, and each
  POP's delay after the first one that saw it. With ``--follow`` it prints a line for each
  datagram's first copy instead (pop, event, number, arrival second), for ``rounds``.

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

    def say(event: str, number: int) -> None:
        # Three copies a few ms apart: a datagram lost on a busy link must not fail the check.
        for dummy in range(3):
            report.sendto(("%s %s %d" % (args.pop, event, number)).encode(), destination)
            time.sleep(0.005)

    # The changes to wait for, in order: --event first, then the other one, in turn.
    events = [EVENTS[(EVENTS.index(args.event) + index) % 2] for index in range(args.changes)]
    deadline = time.monotonic() + args.timeout
    with open_pinned_maps(args.pin_root, args.iface, ("edge_sources",)) as maps:
        sources = maps["edge_sources"]
        ready_sent = False
        polls = 0
        while time.monotonic() < deadline:
            raw = sources.lookup(key)
            banned = raw is not None and abi.SourceState.unpack(raw).ban_until_ns > time.monotonic_ns()
            polls += 1
            if banned == (events[0] == "banned"):
                say(events.pop(0), args.changes - len(events))
                if not events:
                    print(json.dumps({"pop": args.pop, "event": args.event, "changes": args.changes, "polls": polls}))
                    return 0
                continue
            if not ready_sent:
                say("ready", 0)
                ready_sent = True
            time.sleep(args.interval)
    print(json.dumps({"pop": args.pop, "event": args.event, "polls": polls, "timeout": True,
                      "changes_seen": args.changes - len(events)}))
    return 1


def listen(args: argparse.Namespace) -> int:
    pops = args.pops.split(",")
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("0.0.0.0", args.port))
    ready: dict[str, float] = {}
    seen: dict[str, float] = {}
    followed: set[tuple[str, str, str]] = set()
    deadline = time.monotonic() + args.timeout
    while len(seen) < len(pops) and time.monotonic() < deadline:
        server.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data, dummy = server.recvfrom(256)
        except socket.timeout:
            break
        arrived = time.monotonic()
        pop, event, number = (data.decode(errors="replace").split() + ["", "", ""])[:3]
        if pop not in pops:
            continue
        if args.follow:
            if (pop, event, number) not in followed:
                followed.add((pop, event, number))
                print(json.dumps({"pop": pop, "event": event, "number": int(number or 0), "at": arrived}), flush=True)
            continue
        if event == "ready" and pop not in ready:
            ready[pop] = arrived
            if len(ready) == len(pops) and args.ready_file:
                with open(args.ready_file, "w") as marker:
                    marker.write("ready\n")
        elif event == args.event and pop not in seen:
            seen[pop] = arrived
    if args.follow:
        return 0
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
# Run on the first POP by its own python3 for the whole of `rounds`: each line on its stdin is a
# request to the agent (what anycast.edge.edge_ban sends there), each line it prints the answer.
ASK_AGENT = (
    "import json, socket, sys\n"
    "for request in sys.stdin:\n"
    "    try:\n"
    "        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
    "        conn.connect(%r)\n"
    "        conn.sendall(request.strip().encode() + b'\\n')\n"
    "        conn.shutdown(socket.SHUT_WR)\n"
    "        answer = json.loads(conn.makefile().read())\n"
    "        conn.close()\n"
    "    except Exception as error:\n"
    "        answer = {'ok': False, 'error': repr(error)}\n"
    "    print(json.dumps(answer), flush=True)\n" % CONTROL_SOCKET)


def _lines_into(stream, into: "queue.Queue[str | None]") -> None:
    """Put each line of a child's output into a queue (None at its end), on a thread of its own."""
    for line in stream:
        into.put(line)
    into.put(None)


def rounds(args: argparse.Namespace) -> int:
    """On the host: --rounds times, ban the address at the first POP through its agent's control
    socket (the request anycast.edge.edge_ban makes there), then lift it, each timed at every POP
    as `watch`/`listen` do; one JSON line of every round's delays.

    The listener, a watcher on each POP (watching for all the changes, in turn) and the first
    POP's asker are started once for all the rounds: starting them over SSH for each change took
    most of the check's time on the emulated CPUs. Each change still starts only once both POPs
    are watching, is asked of the agent only after the one before it reached both POPs, and is
    timed on the host's clock by the datagrams' arrival, as before."""
    import queue
    import shlex
    import subprocess
    import threading

    pops = args.pops.split(",")
    here = os.path.dirname(os.path.abspath(__file__))
    labctl = [sys.executable, os.path.join(here, "labctl.py"), "ssh"]
    changes = 2 * args.rounds
    # Every change of the run, at most --timeout each, and the start.
    lifetime = args.timeout * (changes + 1)
    heard: "queue.Queue[str | None]" = queue.Queue()
    answers: "queue.Queue[str | None]" = queue.Queue()
    listener = subprocess.Popen(
        ["ip", "netns", "exec", args.netns, sys.executable, os.path.abspath(__file__), "listen", "--follow",
         "--pops", args.pops, "--event", "banned", "--port", str(args.port), "--timeout", str(lifetime)],
        stdout=subprocess.PIPE, text=True)
    threading.Thread(target=_lines_into, args=(listener.stdout, heard), daemon=True).start()
    watchers = []
    for pop, report in zip(pops, args.reports.split(",")):
        # ssh hands the remote shell one string: the code and the request are quoted for it.
        with open(os.path.abspath(__file__)) as script:
            watchers.append(subprocess.Popen(
                labctl + [pop, "env", "PYTHONPATH=" + args.agent_path, "python3", "-", "watch", "--pop", pop,
                          "--address", args.address, "--event", "banned", "--changes", str(changes),
                          "--iface", args.iface, "--pin-root", args.pin_root, "--report", report,
                          "--port", str(args.port), "--timeout", str(lifetime)],
                stdin=script, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    asker = subprocess.Popen(labctl + [pops[0], "python3", "-u", "-c", shlex.quote(ASK_AGENT)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    threading.Thread(target=_lines_into, args=(asker.stdout, answers), daemon=True).start()

    arrivals: dict[tuple[str, int], dict[str, float]] = {}

    def wait_for(event: str, number: int, deadline: float) -> dict[str, float]:
        """The arrival second of each POP's report of change `number` (0: ready), until all POPs
        said it or the deadline."""
        while len(arrivals.get((event, number), {})) < len(pops) and time.monotonic() < deadline:
            try:
                line = heard.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            said = json.loads(line)
            arrivals.setdefault((said["event"], said["number"]), {})[said["pop"]] = said["at"]
        return arrivals.get((event, number), {})

    results = []
    try:
        ready = wait_for("ready", 0, time.monotonic() + args.timeout)
        number = 0
        for index in range(args.rounds):
            for event, action in (("banned", "ban"), ("lifted", "unban")):
                number += 1
                request = {"action": action, "addresses": [args.address], "check": False}
                if action == "ban":
                    request["expires_ns"] = (int(time.time()) + args.ban_sec) * 10**9
                asked_rc, asked_err = 1, "the asker on %s is gone" % pops[0]
                if asker.poll() is None:
                    asker.stdin.write(json.dumps(request) + "\n")
                    asker.stdin.flush()
                    seen = wait_for(event, number, time.monotonic() + args.timeout)
                    try:
                        answer = answers.get(timeout=args.timeout)
                    except queue.Empty:
                        answer = None
                    try:
                        answer = json.loads(answer) if answer else {"error": "no answer from the agent"}
                    except ValueError:
                        answer = {"error": answer}
                    asked_rc, asked_err = (0, "") if answer.get("ok") else (1, str(answer.get("error"))[-300:])
                else:
                    seen = {}
                first = min(seen.values()) if seen else None
                results.append({
                    "event": event,
                    "seen_at": seen,
                    "delay_sec": {pop: round(at - first, 4) for pop, at in seen.items()},
                    "first": min(seen, key=seen.get) if seen else None,
                    "missing": sorted(set(pops) - set(seen)),
                    "not_ready": sorted(set(pops) - set(ready)),
                    "round": index + 1, "asked_rc": asked_rc, "asked_err": asked_err,
                })
    finally:
        if asker.poll() is None:
            asker.stdin.close()
        for child in [asker, *watchers, listener]:
            try:
                child.wait(timeout=args.timeout if child is not listener else 0.1)
            except subprocess.TimeoutExpired:
                child.terminate()
                child.wait()
    delays = [max(change["delay_sec"].values() or [None]) for change in results
              if not change["missing"] and change["first"] == pops[0]]
    said = {pop: watcher.stdout.read()[-300:] for pop, watcher in zip(pops, watchers)}
    print(json.dumps({"rounds": results, "delays_sec": delays, "watchers": said,
                      "complete": len(results) == changes and len(delays) == len(results)}, sort_keys=True))
    return 0 if len(results) == changes and len(delays) == len(results) else 1


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
    watcher.add_argument("--changes", type=int, default=1,
                         help="how many changes to report, --event first and then the other in turn")
    listener = commands.add_parser("listen", help="on the host: when did each POP see the change")
    listener.add_argument("--pops", required=True, help="comma-separated POP names")
    listener.add_argument("--event", choices=EVENTS, required=True)
    listener.add_argument("--port", type=int, required=True)
    listener.add_argument("--ready-file", help="written once every POP is watching")
    listener.add_argument("--timeout", type=float, default=120.0)
    listener.add_argument("--follow", action="store_true",
                          help="print each POP's every datagram (pop, event, number, arrival) as a JSON line until --timeout")
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
