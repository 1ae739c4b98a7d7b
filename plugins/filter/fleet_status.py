# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# MIT License (see https://opensource.org/licenses/MIT)
"""Filter ``anycast.edge.fleet_status_table``: the fleet's state as one text table, one row per POP.

Input: {POP name: the result of anycast.edge.edge_status_info for it} (a POP that failed or was
unreachable: its failed result, shown as such). Output: the table's lines (a list of strings:
``debug`` prints a list one line per line).

Columns: POP, announced (BIRD: the announcing protocol up and a BGP session Established),
XDP (the pinned program attached), attack (the services in attack mode, or "calm"), pps in and
pps out (players' packets to the services and replies, per second), top drops (reason and
packets per second), NATS (routes to other servers, and their names). A value that could not be
read is "?"; the reasons are in each POP's result (``errors``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

HEADER = ("POP", "announced", "XDP", "attack", "pps in", "pps out", "top drops (pps)", "NATS peers")
UNKNOWN = "?"


def _announced(status):
    if status.get("announced") is None:
        return UNKNOWN
    if status["announced"]:
        return "yes (%d BGP)" % len(status.get("bgp_established") or [])
    if status.get("announce_protocol") != "up":
        return "no (%s %s)" % ("announce", status.get("announce_protocol") or "missing")
    return "no (0 BGP up)"


def _attached(status):
    if status.get("attached") is None:
        return UNKNOWN
    return "attached" if status["attached"] else "NOT attached"


def _attack(status):
    if status.get("attack") is None:
        return UNKNOWN
    under = [service["name"] for service in status["attack"] if service["under_attack"]]
    return "ATTACK: " + ", ".join(under) if under else "calm"


def _rate(value):
    return UNKNOWN if value is None else "%.0f" % value


def _drops(status):
    if status.get("top_drops") is None:
        return UNKNOWN
    return ", ".join("%s %.0f" % (drop["reason"], drop["pps"]) for drop in status["top_drops"]) or "-"


def _nats(status):
    if status.get("nats") is None:
        return UNKNOWN if "nats" in (status.get("errors") or {}) else "-"
    peers = status["nats"]["peers"]
    return "%d%s" % (status["nats"]["routes"], (": " + ", ".join(peers)) if peers else "")


def status_row(pop, status):
    """One POP's cells."""
    if not isinstance(status, dict) or status.get("failed") or status.get("unreachable"):
        reason = "unreachable" if isinstance(status, dict) and status.get("unreachable") else "failed"
        return [pop, reason] + [UNKNOWN] * (len(HEADER) - 2)
    return [pop, _announced(status), _attached(status), _attack(status), _rate(status.get("pps_in")),
            _rate(status.get("pps_out")), _drops(status), _nats(status)]


def fleet_status_table(statuses):
    """The table's lines: a header, a rule, one row per POP (sorted by name)."""
    rows = [list(HEADER)] + [status_row(pop, statuses[pop]) for pop in sorted(statuses)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return lines


class FilterModule(object):
    """anycast.edge fleet status filters."""

    def filters(self):
        return {"fleet_status_table": fleet_status_table}
