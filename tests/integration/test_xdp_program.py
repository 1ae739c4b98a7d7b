"""xdp_program against real XDP attachments, pins and traffic in network namespaces.

The modules run through real ansible-playbook (``ip netns exec <pop> ansible-playbook``), so
``changed``, check mode and diff are asserted as an operator sees them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

from ansible_collections.anycast.edge.plugins.module_utils import _bpf
from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils._loader import LoadRecords
from ansible_collections.anycast.edge.plugins.module_utils._pins import open_pinned_maps

from helpers import edge_lab as topo
from helpers.netns import veth
from helpers.playbook import check_apply_again, run_tasks, task
from helpers.traffic import Capture, UdpSender

XDP = "anycast.edge.xdp_program"
ALLOWED, DENIED = 1, 2

# Learned state the program (or an operator) wrote before an upgrade; it must survive it.
BANNED = "198.18.0.7"
PUNCH = ("udp", "198.51.100.10", 27015, "192.0.2.99", 40000)
A2S_REPLY = b"\xff\xff\xff\xffIcached-info-reply"


def attached(netns, dev):
    """(prog id, mode) of the XDP program on ``dev`` in ``netns``; (0, "none") if none."""
    with netns.entered():
        query = _bpf.xdp_query(socket.if_nametoindex(dev))
    return query.prog_id, query.mode


def pinned_map_ids(pin_root, iface):
    folder = os.path.join(pin_root, iface, "maps")
    ids = {}
    for name in os.listdir(folder):
        with _bpf.BpfMap.from_pin(os.path.join(folder, name)) as bpf_map:
            ids[name] = bpf_map.id
    return ids


def write_learned_state(pin_root):
    with open_pinned_maps(pin_root, topo.POP_IFACE, ["edge_sources", "edge_punches", "edge_a2s_cache"]) as maps:
        maps["edge_sources"].update(abi.ipv4(BANNED), abi.SourceState(ban_until_ns=2 ** 62).pack())
        maps["edge_punches"].update(abi.pack_punch_key(*PUNCH), abi.PUNCH_VALUE.pack(123456789))
        maps["edge_a2s_cache"].update(abi.U32.pack(topo.SERVICE_ID), abi.pack_a2s_cache_entry(A2S_REPLY, 42))


def read_learned_state(pin_root):
    names = ["edge_sources", "edge_punches", "edge_a2s_cache", "edge_deny_v4", "edge_services"]
    with open_pinned_maps(pin_root, topo.POP_IFACE, names) as maps:
        return {
            "ban": maps["edge_sources"].lookup(abi.ipv4(BANNED)),
            "punch": maps["edge_punches"].lookup(abi.pack_punch_key(*PUNCH)),
            "a2s": maps["edge_a2s_cache"].lookup(abi.U32.pack(topo.SERVICE_ID)),
            "deny": maps["edge_deny_v4"].lookup(abi.pack_lpm_v4(topo.DENY_CIDR)),
            "service": maps["edge_services"].lookup(abi.pack_service_key(*topo.SERVICE)),
        }


def test_attach_rerun_upgrade_without_a_gap_then_detach(edge_lab, pin_root, tmp_path, repo_root):
    pop = edge_lab.pop
    objects = tmp_path / "objects"
    # The upgrade is a rebuild with other code: -O3 gives other instructions (another tag)
    # for the same source, as a compiler or source change would.
    v1, v2 = str(objects / "v1/xdp_edge.o"), str(objects / "v2/xdp_edge.o")
    args = {"iface": topo.POP_IFACE, "object": v1, "pin_root": pin_root}

    # -- build both, attach: check mode first (nothing happens), then for real, then no-ops --
    first = run_tasks([
        task("anycast.edge.bpf_object", {"src": str(repo_root / "bpf/xdp_edge.c"), "dest": v1}),
        task("anycast.edge.bpf_object", {"src": str(repo_root / "bpf/xdp_edge.c"), "dest": v2,
                                         "extra_cflags": ["-O3"]}),
        task(XDP, args, check=True, diff=True),
        task(XDP, args, diff=True),
        task(XDP, args),
        task(XDP, args, check=True),
    ], tmp_path / "attach", netns=pop)
    build = first.results[:2]
    assert not build[0].get("failed") and not build[1].get("failed"), first.output
    assert build[0]["path"] == v1 and build[1]["path"] == v2
    check, attach, rerun, check_rerun = first.results[2:]
    assert check["changed"] and not check.get("failed"), check
    assert check["prog_id"] is None and check["mode"] == "native"
    assert check["diff"]["before"]["tag"] is None and check["diff"]["after"]["tag"] == check["tag"]

    assert attach["changed"] and not attach.get("failed"), attach
    # Check mode before it had attached and pinned nothing.
    assert attach["previous_prog_id"] is None and attach["maps_reused"] == []
    assert attach["mode"] == "native" and attach["mode_fallback"] is None
    assert attach["tag"] == check["tag"]
    assert sorted(attach["maps_created"]) == sorted(build[0]["maps"]) and attach["maps_reused"] == []
    assert attach["diff"]["after"]["pinned_maps"] == sorted(build[0]["maps"])
    assert attached(pop, topo.POP_IFACE) == (attach["prog_id"], "drv")
    assert os.path.exists(os.path.join(pin_root, topo.POP_IFACE, "program"))

    for result in (rerun, check_rerun):
        assert not result["changed"] and not result.get("failed"), result
        assert result["prog_id"] == attach["prog_id"] and result["tag"] == attach["tag"]
        # The running program was loaded from this very object: its tag is known, no load.
        assert result["loaded"] is False, result
    assert check["loaded"] is True and attach["loaded"] is True

    # -- rules and learned state, then traffic through the upgrade -------------------------
    edge_lab.write_rules(pin_root)
    write_learned_state(pin_root)
    before = read_learned_state(pin_root)
    ids_before = pinned_map_ids(pin_root, topo.POP_IFACE)

    capture = Capture(edge_lab.world, topo.WORLD_IFACE).start()
    destination = (topo.SERVICE[1], topo.SERVICE[2])
    allowed = UdpSender(edge_lab.world, ALLOWED, topo.ALLOWED_PLAYER, destination).start()
    denied = UdpSender(edge_lab.world, DENIED, topo.DENIED_PLAYER, destination).start()
    try:
        capture.wait_for(ALLOWED, 200)
        upgrade_started = time.monotonic()
        upgrade = run_tasks([
            task(XDP, dict(args, object=v2), diff=True),
            task(XDP, dict(args, object=v2)),
        ], tmp_path / "upgrade", netns=pop)
        upgrade_ended = time.monotonic()
        # Keep sending a little while on the new program.
        time.sleep(0.3)
    finally:
        sent_allowed = allowed.stop()
        sent_denied = denied.stop()
        seen = capture.stop()

    replaced, unchanged = upgrade.results
    assert replaced["changed"] and not replaced.get("failed"), replaced
    assert replaced["tag"] != attach["tag"] and replaced["previous_tag"] == attach["tag"]
    assert replaced["previous_prog_id"] == attach["prog_id"] != replaced["prog_id"]
    assert replaced["maps_created"] == [] and sorted(replaced["maps_reused"]) == sorted(build[1]["maps"])
    assert replaced["diff"]["before"]["tag"] == attach["tag"]
    assert replaced["diff"]["after"]["tag"] == replaced["tag"]
    assert not unchanged["changed"] and unchanged["prog_id"] == replaced["prog_id"], unchanged
    assert replaced["loaded"] is True and unchanged["loaded"] is False
    assert attached(pop, topo.POP_IFACE) == (replaced["prog_id"], "drv")

    # Every datagram of the allowed player, from the first the capture saw to the last one
    # sent, came back encapsulated: none lost, none passed to the kernel unencapsulated.
    forwarded = sorted(set(seen.encapsulated.get(ALLOWED, ())))
    first_seen = forwarded[0]
    missing = sorted(set(range(first_seen, sent_allowed)) - set(forwarded))
    assert not missing, "%d of %d datagrams lost during the upgrade (%.1f s), e.g. %s" % (
        len(missing), sent_allowed - first_seen, upgrade_ended - upgrade_started, missing[:10])
    assert sent_allowed - first_seen > 1000, "too little traffic to show continuity"
    assert seen.plain.get(ALLOWED, []) == [], "datagrams passed the POP without a program"
    assert seen.outer == {(topo.POP_ADDRESS, topo.BACKEND)}
    # The denied player was never let through, in any form, while it kept sending.
    assert sent_denied > 1000
    assert seen.encapsulated.get(DENIED, []) == [] and seen.plain.get(DENIED, []) == []

    # Same maps (same kernel ids), same entries: bans, punches, cache, rules all survived.
    assert pinned_map_ids(pin_root, topo.POP_IFACE) == ids_before
    after = read_learned_state(pin_root)
    assert after == before and all(value is not None for value in after.values())

    # -- detach ----------------------------------------------------------------------------
    absent_args = {"iface": topo.POP_IFACE, "pin_root": pin_root, "state": "absent"}
    detach = run_tasks(check_apply_again(XDP, absent_args), tmp_path / "detach", netns=pop)
    check_absent, absent, absent_again = detach.results
    assert check_absent["changed"] and check_absent["diff"]["after"]["tag"] is None, check_absent
    assert absent["changed"] and not absent.get("failed"), absent
    # Check mode before it had detached nothing.
    assert absent["previous_prog_id"] == replaced["prog_id"]
    assert absent["diff"]["before"]["tag"] == replaced["tag"] and absent["diff"]["after"]["tag"] is None
    assert sorted(absent["maps_removed"]) == sorted(build[1]["maps"])
    assert attached(pop, topo.POP_IFACE) == (0, "none")
    assert not os.path.exists(os.path.join(pin_root, topo.POP_IFACE))
    assert not absent_again["changed"] and not absent_again.get("failed"), absent_again


def test_auto_mode_falls_back_to_generic_and_failures_keep_the_running_program(
        xdp_edge_object, fixture_object, pin_root, netns, tmp_path):
    pop = netns("pop")
    veth(pop, "tx0", pop, "tx0p")  # a second device for the devmap
    # The loopback device has no native XDP: auto must say so and use generic.
    args = {"iface": "lo", "object": xdp_edge_object, "pin_root": pin_root}
    run = run_tasks([
        task(XDP, args),
        task(XDP, args),
        task(XDP, dict(args, mode="native")),
        task(XDP, dict(args, object=fixture_object("xdp_reject"))),
        task(XDP, dict(args, tx_devices=["nosuchdev0"])),
        task(XDP, dict(args, tx_devices=["tx0"]), diff=True),
        task(XDP, dict(args, tx_devices=["tx0"])),
        task(XDP, dict(args, tx_devices=[]), check=True),
        task(XDP, dict(args, iface="nosuchdev0")),
        task(XDP, dict(args, pin_root=str(tmp_path))),
        task(XDP, dict(args, program="no_such_program")),
    ], tmp_path / "run", netns=pop)
    (auto, rerun, native, rejected, bad_tx, tx_added, tx_rerun, tx_check, bad_iface, not_bpffs,
     bad_program) = run.results

    assert auto["changed"] and auto["mode"] == "generic", auto
    assert "native XDP refused by the driver of lo" in auto["mode_fallback"]
    assert not rerun["changed"] and rerun["mode"] == "generic", rerun

    # Explicit native on a device without it: fails, names the reason, keeps the program.
    assert native["failed"] and not native["changed"], native
    assert "does not support XDP in native mode" in native["msg"]
    assert "previous program stays attached" in native["msg"]
    # A program the verifier rejects: fails with the verifier's log, nothing changes.
    assert rejected["failed"] and not rejected["changed"], rejected
    assert "nothing was changed" in rejected["msg"] and "invalid access to packet" in rejected["msg"]
    assert bad_tx["failed"] and "tx_devices" in bad_tx["msg"] and "nosuchdev0" in bad_tx["msg"]
    assert attached(pop, "lo") == (auto["prog_id"], "skb")
    program_pin = os.path.join(pin_root, "lo", "program")
    with _bpf.BpfProgram.from_pin(program_pin) as pinned:
        assert pinned.id == auto["prog_id"]

    # tx_devices: the device map follows the list, without touching the program.
    assert tx_added["changed"] and tx_added["tx_devices"] == ["tx0"], tx_added
    assert tx_added["prog_id"] == auto["prog_id"]
    assert tx_added["diff"]["before"]["tx_devices"] == [] and tx_added["diff"]["after"]["tx_devices"] == ["tx0"]
    with pop.entered():
        tx0 = socket.if_nametoindex("tx0")
    with open_pinned_maps(pin_root, "lo", ["edge_tx_ports"]) as maps:
        assert [abi.U32.unpack(key)[0] for key in maps["edge_tx_ports"].keys()] == [tx0]
        assert not tx_rerun["changed"], tx_rerun
        assert tx_check["changed"] and tx_check["tx_devices"] == []
        assert len(list(maps["edge_tx_ports"].keys())) == 1, "check mode emptied the device map"

    assert bad_iface["failed"] and "iface" in bad_iface["msg"] and "nosuchdev0" in bad_iface["msg"]
    assert not_bpffs["failed"] and "not on a bpf filesystem" in not_bpffs["msg"], not_bpffs
    assert bad_program["failed"] and "no_such_program" in bad_program["msg"] and "xdp_edge" in bad_program["msg"]


def test_only_maps_whose_layout_changed_are_recreated(fixture_object, pin_root, netns, tmp_path):
    pop = netns("pop")
    veth(pop, "lay0", pop, "lay0p")
    original = fixture_object("xdp_layout")
    grown = fixture_object("xdp_layout", "GROWN_MAX_ENTRIES=32")
    shrunk = fixture_object("xdp_layout", "GROWN_MAX_ENTRIES=32", "WITHOUT_EXTRA")
    args = {"iface": "lay0", "program": "xdp_layout", "pin_root": pin_root}

    first = run_tasks([task(XDP, dict(args, object=original))], tmp_path / "first", netns=pop)
    assert first[0]["changed"] and not first[0].get("failed"), first[0]
    with open_pinned_maps(pin_root, "lay0", ["kept", "grown", "extra"]) as maps:
        for name in ("kept", "grown", "extra"):
            maps[name].update(abi.U32.pack(0), b"\x07" * 8)
    ids_before = pinned_map_ids(pin_root, "lay0")

    run = run_tasks([
        task(XDP, dict(args, object=grown), diff=True),
        task(XDP, dict(args, object=grown)),
        task(XDP, dict(args, object=shrunk)),
        task(XDP, dict(args, object=shrunk)),
    ], tmp_path / "run", netns=pop)
    regrown, rerun, without_extra, rerun_without_extra = run.results
    # Same code, same tag - but one map's max_entries changed: that map alone is new (empty).
    assert regrown["changed"] and regrown["tag"] == first[0]["tag"], regrown
    assert regrown["maps_created"] == ["grown"] and sorted(regrown["maps_reused"]) == ["extra", "kept"]
    assert any("map grown changed layout" in warning for warning in regrown.get("warnings", []))
    assert not rerun["changed"], rerun
    assert without_extra["changed"] and without_extra["maps_removed"] == ["extra"], without_extra
    # A map the new object no longer has (as edge_bans when edge_sources replaced it): its pin is
    # removed once the new program runs, and a rerun finds nothing to do.
    assert not rerun_without_extra["changed"], rerun_without_extra

    ids_after = pinned_map_ids(pin_root, "lay0")
    assert set(ids_after) == {"kept", "grown"}
    assert ids_after["kept"] == ids_before["kept"] and ids_after["grown"] != ids_before["grown"]
    with open_pinned_maps(pin_root, "lay0", ["kept", "grown"]) as maps:
        assert maps["kept"].lookup(abi.U32.pack(0)) == b"\x07" * 8
        assert maps["grown"].lookup(abi.U32.pack(0)) is None
        assert maps["grown"].max_entries == 32


def test_bpffs_is_mounted_at_sys_fs_bpf_when_missing(xdp_edge_object, netns, tmp_path):
    """``ip netns exec`` gives the play its own mount namespace with a fresh /sys: no bpffs at
    /sys/fs/bpf there, and whatever the module mounts dies with the play, never the host's."""
    pop = netns("pop")
    veth(pop, "m0", pop, "m0p")
    args = {"iface": "m0", "object": xdp_edge_object, "pin_root": "/sys/fs/bpf/anycast_edge_test"}
    run = run_tasks([
        task(XDP, args, check=True),
        task(XDP, args),
        task(XDP, args),
        task("ansible.builtin.command", {"argv": ["ls", "/sys/fs/bpf/anycast_edge_test/m0"]}),
        task(XDP, dict(args, state="absent")),
    ], tmp_path / "run", netns=pop)
    check, attach, rerun, listing, absent = run.results
    assert check["changed"] and check["bpffs_mounted"], check
    assert attach["changed"] and attach["bpffs_mounted"] and not attach.get("failed"), attach
    assert not rerun["changed"] and not rerun["bpffs_mounted"], rerun
    assert listing["stdout"].split() == ["maps", "program"]
    assert absent["changed"] and not absent.get("failed"), absent
    assert attached(pop, "m0") == (0, "none")


def test_the_same_program_on_a_second_device(xdp_edge_object, fixture_object, pin_root, netns, tmp_path):
    """also_on: an underlay NIC runs the uplink's very program (one id, one set of maps)."""
    pop = netns("also")
    for dev in ("up0", "ul0"):
        veth(pop, dev, pop, dev + "p")
    args = {"iface": "up0", "object": xdp_edge_object, "pin_root": pin_root, "also_on": ["ul0"],
            "tx_devices": ["up0", "ul0"]}
    absent = {"iface": "up0", "pin_root": pin_root, "state": "absent", "also_on": ["ul0"]}
    run = run_tasks([
        task(XDP, args, check=True),
        task(XDP, args),
        task(XDP, args),
        task(XDP, dict(args, also_on=["up0"])),
        task(XDP, dict(args, also_on=["nosuchdev0"])),
    ], tmp_path / "present", netns=pop)
    check, first, rerun, itself, missing = run.results
    assert check["changed"] and check["also_on"] == {"ul0": None}, check
    assert first["changed"] and first["also_on"] == {"ul0": first["prog_id"]}, first
    assert not rerun["changed"] and rerun["also_on"] == {"ul0": first["prog_id"]}, rerun
    assert itself["failed"] and "also_on: up0 is iface itself" in itself["msg"], itself
    assert missing["failed"] and "'nosuchdev0'" in missing["msg"], missing
    assert attached(pop, "ul0") == attached(pop, "up0") == (first["prog_id"], "drv")

    # Somebody else's program on the second device is replaced (with a warning) by ours.
    pop.ip("link", "set", "dev", "ul0", "xdp", "off")
    pop.ip("link", "set", "dev", "ul0", "xdpgeneric", "obj", fixture_object("xdp_pass"), "sec", "xdp")
    gone = run_tasks([task(XDP, args), task(XDP, absent), task(XDP, absent)], tmp_path / "absent", netns=pop)
    retaken, removed, removed_again = gone.results
    assert retaken["changed"] and retaken["also_on"] == {"ul0": first["prog_id"]}, retaken
    assert any("did not attach" in warning for warning in retaken.get("warnings", [])), retaken
    assert removed["changed"] and removed["also_on"] == {"ul0": None}, removed
    assert not removed_again["changed"], removed_again
    assert attached(pop, "ul0") == attached(pop, "up0") == (0, "none")


def test_a_rerun_loads_only_an_object_it_has_not_recorded(xdp_edge_object, pin_root, netns, tmp_path):
    """The record that spares a rerun the load (the verifier takes 25-30 s on the lab's emulated
    CPU) is trusted for the very bytes the running program came from, and only while its tag is the
    running program's: other bytes, a forged record or a lost one mean a load, as before it."""
    pop = netns("record")
    veth(pop, "up0", pop, "up0p")
    same_bytes, other_bytes = tmp_path / "copy/xdp_edge.o", tmp_path / "stripped/xdp_edge.o"
    same_bytes.parent.mkdir()
    other_bytes.parent.mkdir()
    same_bytes.write_bytes(open(xdp_edge_object, "rb").read())
    # The same instructions (the same tag) in other bytes: without the debug sections' line info.
    subprocess.run(["llvm-strip", "--strip-debug", "-o", str(other_bytes), xdp_edge_object], check=True)
    args = {"iface": "up0", "object": xdp_edge_object, "pin_root": pin_root}
    first = run_tasks([task(XDP, args), task(XDP, args), task(XDP, dict(args, object=str(same_bytes)))],
                      tmp_path / "first", netns=pop)
    attach, rerun, copied = first.results
    assert attach["changed"] and attach["loaded"] is True, attach
    record = LoadRecords().path(attach["prog_id"])
    assert json.load(open(record))["tag"] == attach["tag"]
    for result in (rerun, copied):
        assert not result["changed"] and result["loaded"] is False, result

    # Other bytes: loaded and compared (the same tag: nothing to change), then recorded for them.
    stripped = run_tasks([task(XDP, dict(args, object=str(other_bytes)))] * 2, tmp_path / "other", netns=pop)
    for result, loaded in zip(stripped.results, (True, False)):
        assert not result["changed"] and result["prog_id"] == attach["prog_id"], result
        assert result["loaded"] is loaded, result

    # A record that claims another tag, or none at all: loaded, and nothing changes.
    with open(record) as handle:
        forged = dict(json.load(handle), tag="0123456789abcdef")
    with open(record, "w") as handle:
        json.dump(forged, handle)
    after_forgery = run_tasks([task(XDP, dict(args, object=str(other_bytes)))], tmp_path / "forged", netns=pop)
    os.unlink(record)
    after_loss = run_tasks([task(XDP, args, check=True), task(XDP, args)], tmp_path / "lost", netns=pop)
    for result in after_forgery.results + after_loss.results:
        assert not result["changed"] and result["loaded"] is True and result["prog_id"] == attach["prog_id"], result
    # Once the module has compared the running program with an object, it records it (not in check mode).
    assert json.load(open(record))["tag"] == attach["tag"]

    # A record never stands for a program that is gone.
    run_tasks([task(XDP, {"iface": "up0", "pin_root": pin_root, "state": "absent"}),
               task(XDP, {**args, "iface": "up0"})], tmp_path / "again", netns=pop)
    assert not os.path.exists(record)


def flagged_tunnel_ifindexes(pin_root, iface):
    with open_pinned_maps(pin_root, iface, ["edge_tunnel_ifaces"]) as maps:
        values, stride = maps["edge_tunnel_ifaces"].array_bytes(), maps["edge_tunnel_ifaces"].value_size
    return {index for index in range(len(values) // stride)
            if abi.IFACE_VALUE.unpack_from(values, index * stride)[0] & abi.IFACE_F_IPIP}


def own_addresses(pin_root, iface):
    with open_pinned_maps(pin_root, iface, ["edge_own_addrs"]) as maps:
        return set(abi.unpack_own_addrs(maps["edge_own_addrs"].lookup(abi.U32.pack(0))))


def test_the_return_paths_devices_and_the_pops_own_addresses(xdp_edge_object, pin_root, netns, tmp_path):
    """edge_tunnel_ifaces flags the devices that carry IPIP (also_on, else iface, or tunnel_devices);
    edge_own_addrs holds the addresses on the POP's interfaces. Converged, check mode and diff."""
    pop = netns("trust")
    for dev in ("up0", "ul0"):
        veth(pop, dev, pop, dev + "p")
    pop.ip("addr", "add", "10.0.0.1/24", "dev", "up0")
    pop.ip("addr", "add", "10.20.0.1/24", "dev", "ul0")
    with pop.entered():
        up0, ul0 = socket.if_nametoindex("up0"), socket.if_nametoindex("ul0")
    lo_addresses = {"127.0.0.1"} if pop.ip("-4", "-o", "addr", "show", "dev", "lo").stdout.strip() else set()
    args = {"iface": "up0", "object": xdp_edge_object, "pin_root": pin_root, "also_on": ["ul0"]}
    run = run_tasks([
        task(XDP, args),
        task(XDP, args),
        task(XDP, dict(args, tunnel_devices=["up0"]), check=True, diff=True),
        task(XDP, dict(args, tunnel_devices=["nosuch0"])),
        task(XDP, dict(args, tunnel_devices=["up0p"])),
    ], tmp_path / "underlay", netns=pop)
    first, rerun, check, missing, not_running = run.results
    assert first["changed"] and first["tunnel_devices"] == ["ul0"], first
    assert set(first["own_addresses"]) == {"10.0.0.1", "10.20.0.1"} | lo_addresses, first
    assert not rerun["changed"], rerun
    assert check["changed"] and check["tunnel_devices"] == ["up0"], check
    assert check["diff"]["before"]["tunnel_devices"] == ["ul0"], check
    assert missing["failed"] and "tunnel_devices: no interface named 'nosuch0'" in missing["msg"], missing
    assert not_running["failed"] and "tunnel_devices: up0p does not run the program" in not_running["msg"]
    assert flagged_tunnel_ifindexes(pin_root, "up0") == {ul0}, "check mode or a failure wrote the map"
    assert own_addresses(pin_root, "up0") == {"10.0.0.1", "10.20.0.1"} | lo_addresses

    # No underlay: the uplink alone; a new address on the POP is its own at the next run.
    pop.ip("addr", "add", "192.0.2.7/32", "dev", "up0")
    run = run_tasks([task(XDP, dict(args, also_on=[])), task(XDP, dict(args, also_on=[]))],
                    tmp_path / "uplink", netns=pop)
    moved, again = run.results
    assert moved["changed"] and moved["tunnel_devices"] == ["up0"], moved
    assert not again["changed"], again
    assert flagged_tunnel_ifindexes(pin_root, "up0") == {up0}
    assert own_addresses(pin_root, "up0") == {"10.0.0.1", "10.20.0.1", "192.0.2.7"} | lo_addresses
