"""``anycast-edge top``: the operators' terminal view of the POPs, on the controller.

Reads either the POPs' agent exporters directly (``--exporter pop1=http://10.0.0.1:9591/metrics``,
repeatable) or a Prometheus server that scrapes them (``--prometheus http://prom:9090``; POPs are
told apart by the ``pop`` label edge_monitoring puts on each target, else by ``instance``), and
shows per POP:

* packets and bits per second in (every packet the XDP program saw) and out (to players);
* drops per second by reason;
* the top players (the exporter's ranking by traffic since its previous read of the source map);
* the A2S cache: answers from the cache and challenges sent per second. The data plane counts no
  "A2S forwarded to the server" event, so the hit rate shown is cached answers per challenge: a
  player's query costs one challenge and, when the cache is fresh, one cached answer — 100 %
  means every challenged query was answered at the POP;
* whether the POP announces, its XDP program is attached, and each backend is up.

Rates are the difference of two readings of the counters divided by the time between them
(the exporter's read time, or the samples' own timestamps from Prometheus), so they are exact
over the interval. The screen is redrawn every ``--interval`` seconds (plain ANSI, no curses);
``--once`` prints one screen after two readings and exits, ``--json`` prints the numbers instead.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from .tls import client_ssl_context

PREFIX = "anycast_edge_"
CLEAR = "\x1b[H\x1b[2J"


@dataclass
class Reading:
    """The anycast_edge_* samples of one POP at one time: {(name, sorted labels): value}."""

    pop: str
    at: float
    samples: dict = field(default_factory=dict)
    error: str = ""

    def select(self, name: str, **match) -> list:
        """[(labels dict, value)] of the samples called ``name`` whose labels include ``match``."""
        found = []
        for (sample_name, labels), value in self.samples.items():
            if sample_name == name:
                label_map = dict(labels)
                if all(label_map.get(key) == wanted for key, wanted in match.items()):
                    found.append((label_map, value))
        return found

    def total(self, name: str, **match) -> float:
        return sum(value for dummy, value in self.select(name, **match))


# ---- reading ------------------------------------------------------------------------------

def parse_exposition(text: str) -> dict:
    """Prometheus text format -> {(sample name, sorted label items): value} (anycast_edge_* only)."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(PREFIX):
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def read_exporter(pop: str, url: str, timeout: float, ssl_context=None) -> Reading:
    started = time.time()
    try:
        # nosec: operator-given URL
        with urllib.request.urlopen(url, timeout=timeout, context=ssl_context) as response:
            text = response.read().decode("utf-8")
    except (OSError, ValueError) as exc:
        return Reading(pop, started, error="%s: %s" % (url, exc))
    return Reading(pop, started, parse_exposition(text))


def read_prometheus(base_url: str, timeout: float) -> list:
    """One Reading per POP from the latest samples a Prometheus server holds."""
    query = urllib.parse.urlencode({"query": '{__name__=~"%s.+"}' % PREFIX})
    with urllib.request.urlopen("%s/api/v1/query?%s" % (base_url.rstrip("/"), query), timeout=timeout) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise ValueError("Prometheus: %s" % body.get("error", body))
    readings = {}
    for item in body["data"]["result"]:
        labels = dict(item["metric"])
        name = labels.pop("__name__")
        pop = labels.pop("pop", None) or labels.get("instance", "?")
        labels.pop("instance", None)
        labels.pop("job", None)
        timestamp, value = float(item["value"][0]), float(item["value"][1])
        reading = readings.setdefault(pop, Reading(pop, 0.0))
        reading.at = max(reading.at, timestamp)
        reading.samples[(name, tuple(sorted(labels.items())))] = value
    return [readings[pop] for pop in sorted(readings)]


# ---- what is shown ------------------------------------------------------------------------

def summarize(previous: Reading | None, current: Reading, top: int = 5) -> dict:
    """The numbers of one POP's screen section: totals from ``current``, rates from the
    difference with ``previous`` (None: no rates yet)."""
    if current.error:
        return {"pop": current.pop, "error": current.error}
    seconds = (current.at - previous.at) if previous is not None and not previous.error else 0.0

    def rate(name, **match):
        if seconds <= 0:
            return None
        # A counter that went down was reset (maps recreated): count from zero, like rate().
        now, before = current.total(name, **match), previous.total(name, **match)
        return (now - before if now >= before else now) / seconds

    drops = {}
    for labels, value in current.select(PREFIX + "packets_total", verdict="drop"):
        drops[labels["reason"]] = {"total": value, "per_sec": rate(PREFIX + "packets_total", reason=labels["reason"])}
    hits = current.total(PREFIX + "a2s_cache_hits_total")
    challenges = current.total(PREFIX + "a2s_challenges_sent_total")
    hits_rate = rate(PREFIX + "a2s_cache_hits_total")
    challenges_rate = rate(PREFIX + "a2s_challenges_sent_total")
    if challenges_rate:
        hit_ratio = hits_rate / challenges_rate
    else:
        hit_ratio = hits / challenges if challenges else None
    # By kind (info, player, rules): what the POP answered, from anycast_edge_a2s_answers_total.
    by_kind = {}
    for labels, dummy in current.select(PREFIX + "a2s_answers_total"):
        kind, answer = labels["kind"], labels["answer"]
        by_kind.setdefault(kind, {})[answer] = {
            "total": current.total(PREFIX + "a2s_answers_total", kind=kind, answer=answer),
            "per_sec": rate(PREFIX + "a2s_answers_total", kind=kind, answer=answer)}
    rules = []
    for labels, value in current.select(PREFIX + "payload_rule_packets_total"):
        rules.append({"rule": int(labels["rule"]), "match": labels["match"], "packets": value,
                      "per_sec": rate(PREFIX + "payload_rule_packets_total", rule=labels["rule"], match=labels["match"])})
    players = sorted(((int(labels["rank"]), labels["client"], value)
                      for labels, value in current.select(PREFIX + "top_client_packets")))[:top]
    player_bytes = {labels["client"]: value for labels, value in current.select(PREFIX + "top_client_bytes")}
    flags = {}
    for key, name in (("announced", "announced"), ("dataplane_attached", "dataplane_attached"),
                      ("maps_readable", "maps_readable")):
        values = [value for dummy, value in current.select(PREFIX + name)]
        flags[key] = None if not values or math.isnan(values[0]) else bool(values[0])  # NaN: not known
    return {
        "pop": current.pop,
        "interval_sec": seconds,
        "in": {"packets": current.total(PREFIX + "packets_total"), "bytes": current.total(PREFIX + "bytes_total"),
               "pps": rate(PREFIX + "packets_total"), "bps": _bits(rate(PREFIX + "bytes_total"))},
        "out": {"packets": current.total(PREFIX + "service_packets_total", direction="out"),
                "bytes": current.total(PREFIX + "service_bytes_total", direction="out"),
                "pps": rate(PREFIX + "service_packets_total", direction="out"),
                "bps": _bits(rate(PREFIX + "service_bytes_total", direction="out"))},
        "drops": dict(sorted(drops.items())),
        # The payload rules by position, with what each matched (a rule edited since the previous
        # reading is a new series: its rate starts from its own count).
        "payload_rules": sorted(rules, key=lambda rule: rule["rule"]),
        "a2s": {"cached": hits, "challenges": challenges, "cached_per_sec": hits_rate,
                "challenges_per_sec": challenges_rate, "hit_ratio": hit_ratio,
                "entries": current.total(PREFIX + "a2s_cache_entries"), "by_kind": dict(sorted(by_kind.items()))},
        "top_players": [{"rank": rank, "client": client, "packets": packets, "bytes": player_bytes.get(client, 0)}
                        for rank, client, packets in players],
        "clients_tracked": current.total(PREFIX + "clients_tracked"),
        "bans_active": current.total(PREFIX + "bans_active"),
        "backends": {"%s/%s" % (labels.get("service", ""), labels.get("backend", "")): _state(value)
                     for labels, value in current.select(PREFIX + "backend_up")},
        **flags,
    }


def _bits(byte_rate):
    return None if byte_rate is None else byte_rate * 8


def _state(value):
    if math.isnan(value):
        return "unknown"
    return "up" if value else "down"


def _si(value, unit=""):
    if value is None:
        return "-"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return "%.1f %s%s" % (value / factor, prefix, unit)
    return ("%.0f %s" % (value, unit) if value == int(value) else "%.1f %s" % (value, unit)).rstrip()


def _yes_no(value, yes, no):
    return "?" if value is None else (yes if value else no)


def render(summaries: list, source: str) -> str:
    lines = ["anycast-edge top — %s — %s" % (source, time.strftime("%H:%M:%S"))]
    for pop in summaries:
        lines.append("")
        if "error" in pop:
            lines.append("%s: cannot read: %s" % (pop["pop"], pop["error"]))
            continue
        lines.append("%s  %s  %s  %s" % (
            pop["pop"], _yes_no(pop["announced"], "announced", "WITHDRAWN"),
            _yes_no(pop["dataplane_attached"], "xdp attached", "XDP NOT ATTACHED"),
            _yes_no(pop["maps_readable"], "maps ok", "MAPS UNREADABLE")))
        for direction in ("in", "out"):
            numbers = pop[direction]
            lines.append("  %-4s %12s  %14s   total %d packets, %d bytes" % (
                direction, _si(numbers["pps"], "pps"), _si(numbers["bps"], "bit/s"),
                numbers["packets"], numbers["bytes"]))
        if pop["drops"]:
            drops = ["%s %s (total %d)" % (reason, _si(item["per_sec"], "/s"), item["total"])
                     for reason, item in pop["drops"].items() if item["total"]]
            lines.append("  drops: " + ", ".join(drops))
        for rule in pop.get("payload_rules", []):
            lines.append("  rule %-3d %10s  %10d hits   %s"
                         % (rule["rule"], _si(rule["per_sec"], "/s"), rule["packets"], rule["match"]))
        a2s = pop["a2s"]
        ratio = "-" if a2s["hit_ratio"] is None else "%.0f %%" % (100 * a2s["hit_ratio"])
        lines.append("  a2s cache: %s cached, %s challenges, cached per challenge %s (totals %d / %d), %d entries"
                     % (_si(a2s["cached_per_sec"], "/s"), _si(a2s["challenges_per_sec"], "/s"), ratio,
                        a2s["cached"], a2s["challenges"], a2s["entries"]))
        kinds = ["%s %s cached / %s challenges / %s bad cookie" % (
            kind, *(_si(answers.get(answer, {}).get("per_sec"), "/s") for answer in ("cached", "challenge", "bad_cookie")))
            for kind, answers in a2s["by_kind"].items() if any(item["total"] for item in answers.values())]
        if kinds:
            lines.append("  a2s by kind: " + "; ".join(kinds))
        lines.append("  players tracked %d, bans active %d" % (pop["clients_tracked"], pop["bans_active"]))
        for player in pop["top_players"]:
            lines.append("    #%d %-15s %10d packets %12d bytes"
                         % (player["rank"], player["client"], player["packets"], player["bytes"]))
        if pop["backends"]:
            lines.append("  backends: " + ", ".join("%s %s" % item for item in sorted(pop["backends"].items())))
    return "\n".join(lines) + "\n"


# ---- the command --------------------------------------------------------------------------

def parse_exporter(text: str) -> tuple:
    """'pop1=http://10.0.0.1:9591/metrics' -> ('pop1', url); a bare URL is named by its host:port."""
    name, sep, url = text.partition("=")
    if not sep or "://" in name:
        url = text
        name = urllib.parse.urlsplit(text).netloc
    if not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError("%r: expected NAME=http://HOST:PORT/metrics" % text)
    return name, url


def take_readings(args) -> list:
    if args.prometheus:
        return read_prometheus(args.prometheus, args.timeout)
    context = None
    if any(url.startswith("https://") for dummy, url in args.exporter):
        context = client_ssl_context(args.cacert or "", args.cert or "", args.key or "")
    return [read_exporter(name, url, args.timeout, context) for name, url in args.exporter]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="anycast-edge top", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--exporter", action="append", type=parse_exporter, metavar="NAME=URL",
                        help="a POP's agent exporter (repeat for each POP)")
    source.add_argument("--prometheus", metavar="URL", help="a Prometheus server scraping the POPs")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between readings (default 2)")
    parser.add_argument("--top", type=int, default=5, help="players shown per POP (default 5)")
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--once", action="store_true", help="two readings, one screen, exit")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON (with --once)")
    parser.add_argument("--cacert", help="CA bundle that verifies exporters served over https (default: the system's)")
    parser.add_argument("--cert", help="client certificate, for exporters that require one")
    parser.add_argument("--key", help="key of the client certificate")
    args = parser.parse_args(argv)
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")
    label = args.prometheus or ", ".join(name for name, dummy in args.exporter)
    previous = {}
    try:
        readings = take_readings(args)
        while True:
            previous = {reading.pop: reading for reading in readings}
            time.sleep(args.interval)
            readings = take_readings(args)
            summaries = [summarize(previous.get(reading.pop), reading, args.top) for reading in readings]
            if args.json:
                print(json.dumps(summaries, indent=2, sort_keys=True))
            else:
                sys.stdout.write(("" if args.once else CLEAR) + render(summaries, label))
            sys.stdout.flush()
            if args.once:
                return 0 if all("error" not in item for item in summaries) else 1
    except KeyboardInterrupt:
        return 0
    except (OSError, ValueError) as exc:
        print("anycast-edge top: %s" % exc, file=sys.stderr)
        return 1


def cli(argv=None) -> int:
    """``anycast-edge <command>``: only ``top`` so far."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "top":
        print("usage: anycast-edge top [--exporter NAME=URL ... | --prometheus URL] [--once] [--json]",
              file=sys.stderr)
        return 2
    return main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
