"""ip_routing through real ansible-playbook in a network namespace, under both pyroute2 versions
the module must support: 0.9 (the venv's Python) and 0.7 (Debian's python3-pyroute2).

What the kernel shows (``ip -j``) is what is asserted: our entries come, change and go; entries
somebody else made - an address without our label, a route of another protocol, a rule at
another priority, even in our own table - are never touched; check mode reports exactly what a
real run then does; a second run changes nothing; a failure leaves the host as it was.
"""

from __future__ import annotations

import json
import sys

import pytest

from helpers.netns import veth
from helpers.playbook import run_tasks, task

ROUTING = "anycast.edge.ip_routing"
INTERPRETERS = [pytest.param(sys.executable, id="pyroute2-0.9-venv"),
                pytest.param("/usr/bin/python3", id="pyroute2-0.7-debian")]
LABEL = "lo:anycast"
PROTO = 242
TABLE = PRIORITY = 4242


def addresses(ns, dev="lo"):
    """(address/len, label) of the IPv4 addresses on ``dev``."""
    (entry,) = json.loads(ns.ip("-4", "-j", "addr", "show", "dev", dev).stdout)
    return sorted("%s/%d %s" % (info["local"], info["prefixlen"], info.get("label", ""))
                  for info in entry["addr_info"])


def routes(ns, table):
    shown = ns.ip("-4", "-j", "route", "show", "table", str(table), check=False)
    if shown.returncode != 0 and "table does not exist" in shown.stderr:
        return []  # a table with no route was never made
    return sorted("%s dev %s proto %s%s" % (route["dst"], route["dev"], route.get("protocol"),
                                            " src " + route["prefsrc"] if "prefsrc" in route else "")
                  for route in json.loads(shown.stdout))


def rules(ns):
    return sorted("%s from %s lookup %s" % (rule["priority"], rule["src"], rule["table"])
                  for rule in json.loads(ns.ip("-4", "-j", "rule", "show").stdout)
                  if rule["priority"] not in (0, 32766, 32767))


def args(services, pop_device):
    """What the tc_mapper role asks: services' addresses on lo, replies by policy routing."""
    return {"addresses": [{"address": address, "dev": "lo"} for address in services],
            "address_label": LABEL,
            "routes": [{"dst": "default", "dev": pop_device, "table": TABLE}] if pop_device else [],
            "route_protocol": PROTO,
            "rules": [{"src": address, "table": TABLE} for address in services],
            "rule_priority": PRIORITY}


@pytest.mark.parametrize("python", INTERPRETERS)
def test_converges_ours_and_leaves_the_rest(netns, tmp_path, python):
    ns = netns("routing")
    veth(ns, "pop1", ns, "pop1p")
    veth(ns, "pop2", ns, "pop2p")
    # Somebody else's: an unlabelled address on lo, a route of another protocol in our table, a
    # rule at another priority looking our table up, a route of another protocol in main.
    ns.ip("addr", "add", "203.0.113.7/32", "dev", "lo")
    ns.ip("route", "add", "192.0.2.0/24", "dev", "pop2", "table", str(TABLE), "proto", "static")
    ns.ip("rule", "add", "from", "203.0.113.7", "lookup", str(TABLE), "priority", "100")
    others = (addresses(ns), rules(ns))

    first = args(["198.51.100.10", "198.51.100.11"], "pop1")
    # A removed service, the default POP moved to pop2.
    second = args(["198.51.100.11"], "pop2")
    run = run_tasks([
        task(ROUTING, first, check=True, diff=True),
        task(ROUTING, first, diff=True),
        task(ROUTING, first),
        task(ROUTING, second, check=True),
        task(ROUTING, second),
        task(ROUTING, second),
    ], tmp_path, netns=ns, python=python)
    check, made, again, check_second, changed, changed_again = run.results

    assert check["changed"] and not check.get("failed"), check
    assert made["changed"] and made["added"] == check["added"] and made["removed"] == [] == check["removed"], made
    assert made["added"] == ["198.51.100.10/32 dev lo", "198.51.100.11/32 dev lo", "default dev pop1 table 4242",
                             "from 198.51.100.10/32 lookup 4242 priority 4242",
                             "from 198.51.100.11/32 lookup 4242 priority 4242"], made
    assert made["diff"]["before"] == "" and made["diff"]["after"].count("\n") == 5, made["diff"]
    assert not again["changed"] and again["added"] == [] == again["removed"], again

    assert check_second["changed"] and check_second["added"] == changed["added"] == ["default dev pop2 table 4242"]
    assert check_second["removed"] == changed["removed"] == [
        "from 198.51.100.10/32 lookup 4242 priority 4242", "default dev pop1 table 4242",
        "198.51.100.10/32 dev lo"], changed
    assert not changed_again["changed"], changed_again

    assert addresses(ns) == ["127.0.0.1/8 lo", "198.51.100.11/32 lo:anycast", "203.0.113.7/32 lo"]
    assert routes(ns, TABLE) == ["192.0.2.0/24 dev pop2 proto static", "default dev pop2 proto 242"]
    assert rules(ns) == ["100 from 203.0.113.7 lookup 4242", "4242 from 198.51.100.11 lookup 4242"]

    # Everything of ours goes when inventory declares nothing; theirs stays.
    gone = run_tasks([task(ROUTING, args([], None)), task(ROUTING, args([], None))], tmp_path / "gone", netns=ns,
                     python=python)
    assert gone.results[0]["changed"] and not gone.results[1]["changed"], gone.results
    assert (addresses(ns), rules(ns)) == others
    assert routes(ns, TABLE) == ["192.0.2.0/24 dev pop2 proto static"]


def test_a_failure_undoes_what_the_run_made(netns, tmp_path):
    ns = netns("routing-fail")
    veth(ns, "pop1", ns, "pop1p")
    wanted = args(["198.51.100.10"], "pop1")
    # The route's device does not exist: the address added before it must go again.
    broken = dict(wanted, routes=[{"dst": "default", "dev": "nosuchdev0", "table": TABLE}])
    (failed,) = run_tasks([task(ROUTING, broken)], tmp_path / "broken", netns=ns).results
    assert failed["failed"] and not failed["changed"], failed
    assert "nosuchdev0" in failed["msg"] and "default dev nosuchdev0 table 4242" in failed["msg"], failed
    assert addresses(ns) == ["127.0.0.1/8 lo"] and rules(ns) == [] and routes(ns, TABLE) == []

    run = run_tasks([
        task(ROUTING, dict(wanted, routes=[{"dst": "10.0.0.1/24", "dev": "pop1"}])),
        task(ROUTING, {"addresses": [{"address": "198.51.100.10", "dev": "lo"}]}),
    ], tmp_path / "bad", netns=ns)
    bad_dst, no_label = run.results
    assert bad_dst["failed"] and "routes[0].dst: '10.0.0.1/24'" in bad_dst["msg"], bad_dst
    assert no_label["failed"] and "addresses: needs address_label" in no_label["msg"], no_label
    assert addresses(ns) == ["127.0.0.1/8 lo"]
