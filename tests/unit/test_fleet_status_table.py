"""The fleet's status table (plugins/filter/fleet_status.py): one row per POP from
edge_status_info's results, what each column says for each state, and "?" for what could not be
read. The module and the playbook against a POP in a namespace: tests/integration/test_fleet_status.py."""

from __future__ import annotations

import re

from ansible_collections.anycast.edge.plugins.filter.fleet_status import fleet_status_table


def status(**fields):
    base = dict(announced=True, announce_protocol="up", bgp_established=["transit1", "transit2"], attached=True,
                attack=[{"id": 17, "name": "cs2", "under_attack": False}, {"id": 18, "name": "tf2", "under_attack": False}],
                pps_in=1520.4, pps_out=1490.0,
                top_drops=[{"reason": "drop_banned", "pps": 10200.0}, {"reason": "drop_rate_limit", "pps": 42.2}],
                nats={"routes": 2, "peers": ["pop2", "pop3"]}, errors={})
    base.update(fields)
    return base


def rows(table):
    """The cells of each line (columns are two or more spaces apart; no cell holds two)."""
    return [re.split(r"\s{2,}", line.strip()) for line in table]


def test_one_row_per_pop_sorted_under_a_header_and_a_rule():
    table = fleet_status_table({"pop2": status(), "pop1": status()})
    assert rows(table)[0] == ["POP", "announced", "XDP", "attack", "pps in", "pps out", "top drops (pps)", "NATS peers"]
    assert set(table[1]) == {"-", " "}
    assert [row[0] for row in rows(table)[2:]] == ["pop1", "pop2"]
    assert [cell.strip() for cell in rows(table)[2]] == [
        "pop1", "yes (2 BGP)", "attached", "calm", "1520", "1490", "drop_banned 10200, drop_rate_limit 42",
        "2: pop2, pop3"]
    assert len(table[1]) == max(len(line) for line in table)     # the rule is as wide as the table


def test_each_state_in_words():
    cells = [cell.strip() for cell in rows(fleet_status_table({"pop1": status(
        announced=False, announce_protocol="down", attached=False,
        attack=[{"id": 17, "name": "cs2", "under_attack": True}, {"id": 18, "name": "tf2", "under_attack": True}],
        top_drops=[], nats={"routes": 0, "peers": []})}))[2]]
    assert cells == ["pop1", "no (announce down)", "NOT attached", "ATTACK: cs2, tf2", "1520", "1490", "-", "0"]
    lost_sessions = status(announced=False, bgp_established=[])
    cells = [cell.strip() for cell in rows(fleet_status_table({"pop1": lost_sessions}))[2]]
    assert cells[1] == "no (0 BGP up)"


def test_what_could_not_be_read_is_a_question_mark_and_a_lost_pop_says_so():
    unknown = status(announced=None, announce_protocol=None, bgp_established=None, attached=None, attack=None,
                     pps_in=None, pps_out=None, top_drops=None, nats=None,
                     errors={"bird": "no socket", "maps": "no pins", "nats": "refused"})
    no_nats = status(nats=None)
    table = rows(fleet_status_table({"pop1": unknown, "pop2": no_nats, "pop3": {"unreachable": True},
                                     "pop4": {"failed": True, "msg": "boom"}}))
    assert [cell.strip() for cell in table[2]] == ["pop1"] + ["?"] * 7
    assert table[3][-1].strip() == "-"                # no monitoring URL given: not asked
    assert [cell.strip() for cell in table[4]] == ["pop3", "unreachable"] + ["?"] * 6
    assert [cell.strip() for cell in table[5]] == ["pop4", "failed"] + ["?"] * 6
