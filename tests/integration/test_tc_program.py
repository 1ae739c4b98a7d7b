"""tc_program on a veth that already carries other filters: ours comes and goes, theirs stay.

The other filters are made by the ``tc`` tool itself (a BPF filter loaded by iproute2, and a
u32 filter): what an operator or another product would have put there. This kernel has no
matchall or gact, so those two kinds are what "another filter" can be here.
"""

from __future__ import annotations

import os
import socket

from ansible_collections.anycast.edge.plugins.module_utils import _bpf

from helpers.netns import veth
from helpers.playbook import check_apply_again, run_tasks, task

TC = "anycast.edge.tc_program"
DEBIAN_PYTHON = "/usr/bin/python3"


def filters(netns, dev, direction):
    """`tc filter show` lines that describe a filter (not the chain heads)."""
    out = netns.exec("tc", "filter", "show", "dev", dev, direction).stdout
    return [line for line in out.splitlines() if "handle" in line or " fh " in line]


def count_seen(prog_id):
    """The tc_count fixture's counter (its one map) of the program with this id."""
    with _bpf.BpfProgram.from_id(prog_id) as program:
        (map_id,) = program.info().map_ids
    with _bpf.BpfMap.from_id(map_id) as counter:
        return int.from_bytes(counter.lookup(bytes(4)), "little")


def veth_with_other_filters(ns, fixture_object, dev):
    """``dev`` (with a peer) carrying a clsact qdisc, a bpf filter loaded by the tc tool and a
    u32 filter; returns (their `tc filter show` lines, their bpf program's id)."""
    veth(ns, dev, ns, dev + "p")
    ns.ip("addr", "add", "10.9.9.1/24", "dev", dev)
    ns.ip("neigh", "replace", "10.9.9.2", "lladdr", "02:00:00:00:09:02", "nud", "permanent", "dev", dev)
    ns.exec("tc", "qdisc", "add", "dev", dev, "clsact")
    ns.exec("tc", "filter", "add", "dev", dev, "egress", "bpf", "da", "obj", fixture_object("tc_count"), "sec", "tc")
    # Last in line: a u32 filter matching everything ends the walk, so it must come after
    # the bpf filters for the test to see those run.
    ns.exec("tc", "filter", "add", "dev", dev, "egress", "prio", "50000", "u32", "match", "u32", "0", "0",
            "classid", "1:1")
    theirs = filters(ns, dev, "egress")
    assert len(theirs) == 3  # the bpf filter, the u32 hash table and its entry
    their_prog_id = int([line for line in theirs if " bpf " in line][0].split(" id ")[1].split()[0])
    return theirs, their_prog_id


def test_attach_rerun_replace_and_remove_leave_other_filters_alone(fixture_object, pin_root, netns, tmp_path):
    ns = netns("tc")
    theirs, their_prog_id = veth_with_other_filters(ns, fixture_object, "t0")
    v1 = fixture_object("tc_count")
    v2 = fixture_object("tc_count", "TC_COUNT_STEP=2")
    args = {"iface": "t0", "direction": "egress", "object": v1, "program": "tc_count", "pin_root": pin_root}
    absent = {"iface": "t0", "direction": "egress", "pin_root": pin_root, "state": "absent"}
    run = run_tasks([
        task(TC, args, check=True, diff=True),
        task(TC, args, diff=True),
        task(TC, args),
        task(TC, dict(args, object=v2), diff=True),
        task(TC, dict(args, object=v2)),
    ], tmp_path / "present", netns=ns)
    check, attach, rerun, replace, rerun_v2 = run.results

    assert check["changed"] and not check.get("failed") and not check["clsact_created"], check
    assert check["prog_id"] is None and check["diff"]["before"]["filter"] is None

    assert attach["changed"] and not attach.get("failed"), attach
    assert attach["previous_prog_id"] is None, "check mode had added a filter"
    assert attach["filter_name"] == "anycast_edge:tc_count" and attach["tag"] == check["tag"]
    assert attach["diff"]["after"]["filter"] == {"priority": 174, "handle": 0xAE,
                                                 "name": "anycast_edge:tc_count", "tag": attach["tag"]}
    assert {f["kind"] for f in attach["other_filters"]} == {"u32", "bpf"}
    assert not rerun["changed"] and rerun["prog_id"] == attach["prog_id"], rerun

    assert replace["changed"] and replace["tag"] != attach["tag"], replace
    assert replace["previous_prog_id"] == attach["prog_id"] != replace["prog_id"]
    assert not rerun_v2["changed"], rerun_v2
    with _bpf.BpfProgram.from_pin(os.path.join(pin_root, "t0", "tc_egress")) as pinned:
        assert pinned.id == replace["prog_id"]

    now = filters(ns, "t0", "egress")
    ours = [line for line in now if "anycast_edge:tc_count" in line]
    assert len(ours) == 1 and "pref 174" in ours[0] and "handle 0xae" in ours[0] and "direct-action" in ours[0]
    assert " id %d " % replace["prog_id"] in ours[0]
    assert [line for line in now if "anycast_edge" not in line] == theirs
    # Both our filter and theirs run on every packet (ours returns TC_ACT_UNSPEC: go on).
    before = (count_seen(replace["prog_id"]), count_seen(their_prog_id))
    with ns.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for dummy in range(5):
        sock.sendto(b"x", ("10.9.9.2", 9))
    sock.close()
    after = (count_seen(replace["prog_id"]), count_seen(their_prog_id))
    assert after[0] - before[0] == 2 * 5 and after[1] - before[1] == 5  # step 2 in the v2 build

    gone = run_tasks(check_apply_again(TC, absent), tmp_path / "absent", netns=ns)
    check_absent, removed, removed_again = gone.results
    assert check_absent["changed"] and check_absent["diff"]["after"]["filter"] is None, check_absent
    assert removed["changed"] and not removed.get("failed"), removed
    assert removed["previous_prog_id"] == replace["prog_id"], "check mode had removed the filter"
    assert not removed_again["changed"] and not removed_again.get("failed"), removed_again
    assert filters(ns, "t0", "egress") == theirs
    assert "clsact" in ns.exec("tc", "qdisc", "show", "dev", "t0").stdout
    assert not os.path.exists(os.path.join(pin_root, "t0"))


def test_debian_python_with_pyroute2_0_7(fixture_object, pin_root, netns, tmp_path):
    """The POPs run modules on Debian's python3 with python3-pyroute2 (0.7), not the venv's 0.9."""
    ns = netns("tc")
    theirs = veth_with_other_filters(ns, fixture_object, "d0")[0]
    args = {"iface": "d0", "direction": "egress", "object": fixture_object("tc_count"), "program": "tc_count",
            "pin_root": pin_root}
    run = run_tasks([
        task(TC, args),
        task(TC, args),
        task(TC, dict(args, object=fixture_object("tc_count", "TC_COUNT_STEP=2"))),
        task(TC, dict(args, state="absent")),
    ], tmp_path / "run", netns=ns, python=DEBIAN_PYTHON)
    attach, rerun, replace, removed = run.results
    assert attach["changed"] and not attach.get("failed"), attach
    assert not rerun["changed"] and rerun["prog_id"] == attach["prog_id"], rerun
    assert replace["changed"] and replace["previous_prog_id"] == attach["prog_id"], replace
    assert removed["changed"] and removed["previous_prog_id"] == replace["prog_id"], removed
    assert filters(ns, "d0", "egress") == theirs


def test_clsact_is_added_only_when_missing_and_foreign_setups_are_refused(
        fixture_object, pin_root, netns, tmp_path):
    ns = netns("tc")
    veth(ns, "c0", ns, "c0p")   # no qdisc at all: we add clsact
    veth(ns, "i0", ns, "i0p")   # a plain ingress qdisc: ingress works, egress is refused
    ns.exec("tc", "qdisc", "add", "dev", "i0", "ingress")
    ns.exec("tc", "qdisc", "add", "dev", "c0p", "clsact")
    ns.exec("tc", "filter", "add", "dev", "c0p", "ingress", "prio", "174", "handle", "0xae", "bpf", "da",
            "obj", fixture_object("tc_count"), "sec", "tc")  # someone else's filter at our address
    obj = fixture_object("tc_count")
    base = {"object": obj, "program": "tc_count", "pin_root": pin_root}
    run = run_tasks([
        task(TC, dict(base, iface="c0", direction="ingress")),
        task(TC, dict(base, iface="c0", direction="egress")),
        task(TC, dict(base, iface="i0", direction="ingress")),
        task(TC, dict(base, iface="i0", direction="egress")),
        task(TC, dict(base, iface="c0p", direction="ingress")),
        task(TC, dict(base, iface="c0p", direction="ingress", priority=175)),
        task(TC, dict(base, iface="c0", direction="egress", program="nope")),
        task(TC, dict(base, iface="c0", direction="egress", object=fixture_object("xdp_pass"),
                      program="xdp_pass")),
        task(TC, {"iface": "c0", "direction": "ingress", "pin_root": pin_root, "state": "absent"}),
    ], tmp_path / "run", netns=ns)
    (c0_in, c0_out, i0_in, i0_out, foreign_slot, other_prio, bad_program, not_tc,
     c0_in_absent) = run.results

    assert c0_in["changed"] and c0_in["clsact_created"], c0_in
    assert c0_out["changed"] and not c0_out["clsact_created"], c0_out
    assert i0_in["changed"] and not i0_in["clsact_created"] and not i0_in.get("failed"), i0_in
    assert i0_out["failed"] and "'ingress' qdisc" in i0_out["msg"] and not i0_out["changed"], i0_out
    assert foreign_slot["failed"] and "did not make" in foreign_slot["msg"], foreign_slot
    assert other_prio["changed"] and not other_prio.get("failed"), other_prio
    assert bad_program["failed"] and "nope" in bad_program["msg"], bad_program
    assert not_tc["failed"] and "not a TC classifier" in not_tc["msg"], not_tc
    assert c0_in_absent["changed"], c0_in_absent

    qdiscs = ns.exec("tc", "qdisc", "show").stdout
    assert "qdisc ingress ffff: dev i0" in qdiscs and "qdisc clsact ffff: dev c0 " in qdiscs
    assert [line for line in filters(ns, "c0", "egress") if "anycast_edge:tc_count" in line]
    assert filters(ns, "c0", "ingress") == []
    assert len(filters(ns, "c0p", "ingress")) == 2   # theirs untouched, ours beside it


def test_one_set_of_maps_on_two_devices(fixture_object, pin_root, netns, tmp_path):
    """share_maps_of: the program on s1 uses s0's pinned maps (a backend with a link per POP)."""
    ns = netns("tcshare")
    for dev in ("s0", "s1"):
        veth(ns, dev, ns, dev + "p")
    obj = fixture_object("tc_count")
    owner = {"iface": "s0", "direction": "egress", "object": obj, "program": "tc_count", "pin_root": pin_root,
             "share_maps": "maps"}
    guest = dict(owner, iface="s1", share_maps_of="s0")
    run = run_tasks([
        task(TC, owner),
        task(TC, guest, check=True),
        task(TC, guest),
        task(TC, guest),
        task(TC, dict(guest, share_maps=None)),
    ], tmp_path / "share", netns=ns)
    attach_owner, check_guest, attach_guest, rerun_guest, no_share = run.results
    assert attach_owner["changed"] and not attach_owner.get("maps_reused"), attach_owner
    assert check_guest["changed"] and check_guest["prog_id"] is None, check_guest
    assert attach_guest["changed"] and attach_guest["maps_reused"] == ["tc_count_seen"], attach_guest
    assert not rerun_guest["changed"] and rerun_guest["prog_id"] == attach_guest["prog_id"], rerun_guest
    assert no_share["failed"] and "share_maps_of: 's0' needs share_maps" in no_share["msg"], no_share
    with _bpf.BpfProgram.from_id(attach_owner["prog_id"]) as first, \
            _bpf.BpfProgram.from_id(attach_guest["prog_id"]) as second:
        assert first.info().map_ids == second.info().map_ids
    remove_guest = run_tasks([task(TC, {"iface": "s1", "direction": "egress", "pin_root": pin_root, "state": "absent",
                                        "share_maps": "maps", "share_maps_of": "s0"})],
                             tmp_path / "remove", netns=ns).results[0]
    # Removing the guest leaves the owner's maps pinned (its program still uses them).
    assert remove_guest["changed"] and not remove_guest.get("failed"), remove_guest
    assert os.listdir(os.path.join(pin_root, "s0", "maps")) == ["tc_count_seen"]
    assert not os.path.exists(os.path.join(pin_root, "s1"))
