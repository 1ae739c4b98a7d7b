"""plugins/module_utils/_bpf.py against the real kernel and libbpf 1.1.

The fixture programs (tests/bpf/fixtures_binding/*.c) are compiled into a temporary folder
at session start; every test loads its own copy, with its own pin folder on a bpffs mounted
in a temporary folder, so tests share no map state. XDP attachment is exercised on a veth
pair inside a throw-away network namespace. Needs root.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _bpf
from harness import namespace

FIXTURES = Path(__file__).resolve().parent / "fixtures_binding"

# Map key/value layouts of tiny_xdp.c (checked against its BTF in test_btf_layout_*).
LPM_KEY = struct.Struct("<I4s")          # prefixlen, address bytes (network order)
DENY_VALUE = struct.Struct("<II")        # rule_id, reserved
REFLECT_KEY = struct.Struct("<HBB")      # port (network order, packed as raw bytes), proto, pad
REFLECT_VALUE = struct.Struct("<QII")    # hits, flags, pad
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("0200000000fe")


# --- packets ------------------------------------------------------------------------------

def _ipv4_checksum(header: bytes) -> int:
    total = sum(struct.unpack("!%dH" % (len(header) // 2), header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(src: str, dst: str, dport: int, sport: int = 40000, payload: bytes = b"ping",
              src_mac: bytes = MAC_A, dst_mac: bytes = MAC_B) -> bytes:
    """Ethernet + IPv4 + UDP, checksums right (UDP checksum 0 = none, legal for IPv4)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, socket.IPPROTO_UDP,
                         0, socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", _ipv4_checksum(header)) + header[12:]
    return dst_mac + src_mac + b"\x08\x00" + header + udp


def lpm_key(cidr: str) -> bytes:
    address, prefixlen = cidr.split("/")
    return LPM_KEY.pack(int(prefixlen), socket.inet_aton(address))


def reflect_key(port: int) -> bytes:
    return REFLECT_KEY.pack(socket.htons(port), socket.IPPROTO_UDP, 0)


# --- fixtures -----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def objects(tmp_path_factory, bpf_cflags) -> dict:
    """Compile the fixture programs with the Makefile's flags; {stem: path of the .o}."""
    out_dir = tmp_path_factory.mktemp("bpf-binding-objects")
    compiled = {}
    for source in sorted(FIXTURES.glob("*.c")):
        target = out_dir / (source.stem + ".o")
        subprocess.run(["clang", *bpf_cflags, "-c", str(source), "-o", str(target)],
                       check=True, capture_output=True, text=True)
        compiled[source.stem] = target
    return compiled


@pytest.fixture(scope="session")
def bpffs_root():
    """A private bpffs mounted on a temporary folder (the host's /sys/fs/bpf is left alone)."""
    mount_point = tempfile.mkdtemp(prefix="bpf-binding-fs-")
    subprocess.run(["mount", "-t", "bpf", "bpf", mount_point], check=True)
    try:
        yield Path(mount_point)
    finally:
        subprocess.run(["umount", mount_point], check=False)
        os.rmdir(mount_point)


@pytest.fixture
def pin_dir(bpffs_root) -> Path:
    """A fresh folder on the test bpffs for this test's pins."""
    path = bpffs_root / uuid.uuid4().hex[:12]
    path.mkdir()
    return path


@pytest.fixture
def tiny(objects, pin_dir):
    """tiny_xdp.o opened and loaded, pinning its by-name maps under pin_dir."""
    with _bpf.BpfObject.open(objects["tiny_xdp"], pin_root_path=pin_dir) as obj:
        obj.load()
        yield obj


# --- struct layouts -----------------------------------------------------------------------

LAYOUT_PROBE = r"""
#include <stddef.h>
#include <stdio.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#define S(t) printf(#t " size %zu\n", sizeof(struct t))
#define O(t, f) printf(#t " " #f " %zu\n", offsetof(struct t, f))
int main(void)
{
    S(bpf_object_open_opts); O(bpf_object_open_opts, pin_root_path);
    O(bpf_object_open_opts, kernel_log_level);
    S(bpf_test_run_opts); O(bpf_test_run_opts, ctx_in); O(bpf_test_run_opts, retval);
    O(bpf_test_run_opts, duration); O(bpf_test_run_opts, batch_size);
    S(bpf_map_batch_opts); O(bpf_map_batch_opts, flags);
    S(bpf_xdp_attach_opts); O(bpf_xdp_attach_opts, old_prog_fd);
    S(bpf_xdp_query_opts); O(bpf_xdp_query_opts, skb_prog_id); O(bpf_xdp_query_opts, attach_mode);
    S(bpf_map_info); O(bpf_map_info, btf_id); O(bpf_map_info, map_extra);
    S(bpf_prog_info); O(bpf_prog_info, name); O(bpf_prog_info, btf_id);
    O(bpf_prog_info, run_cnt); O(bpf_prog_info, attach_btf_id);
    return 0;
}
"""

CTYPES_OF = {
    "bpf_object_open_opts": _bpf._OpenOpts,
    "bpf_test_run_opts": _bpf._TestRunOpts,
    "bpf_map_batch_opts": _bpf._BatchOpts,
    "bpf_xdp_attach_opts": _bpf._XdpAttachOpts,
    "bpf_xdp_query_opts": _bpf._XdpQueryOpts,
    "bpf_map_info": _bpf._BpfMapInfo,
    "bpf_prog_info": _bpf._BpfProgInfo,
}


def test_ctypes_struct_layouts_match_the_installed_headers(tmp_path):
    """Every struct the binding hands to libbpf has the size and field offsets of the C one."""
    source = tmp_path / "probe.c"
    source.write_text(LAYOUT_PROBE)
    subprocess.run(["clang", "-o", str(tmp_path / "probe"), str(source)], check=True,
                   capture_output=True, text=True)
    lines = subprocess.run([str(tmp_path / "probe")], check=True, capture_output=True,
                           text=True).stdout.splitlines()
    assert len(lines) == 23
    for line in lines:
        struct_name, field, value = line.split()
        ctype = CTYPES_OF[struct_name]
        if field == "size":
            assert ctypes.sizeof(ctype) == int(value), struct_name
        else:
            assert getattr(ctype, field).offset == int(value), (struct_name, field)


# --- objects ------------------------------------------------------------------------------

def test_open_describes_programs_and_maps_before_load(objects):
    with _bpf.BpfObject.open(objects["tiny_xdp"]) as obj:
        assert obj.name == "tiny_xdp"
        assert not obj.loaded
        assert [p.name for p in obj.programs()] == ["xdp_filter", "xdp_grow", "xdp_pass_all"]
        assert obj.program("xdp_filter").section == "xdp"
        assert [m.name for m in obj.maps()] == [
            "deny_v4", "reflect_ports", "verdicts", "egress_ports", "learned_state"]
        deny = obj.map("deny_v4")
        # Before load the definition comes from the ELF file.
        assert (deny.type, deny.key_size, deny.value_size, deny.max_entries, deny.flags) == (
            _bpf.BPF_MAP_TYPE_LPM_TRIE, 8, 8, 64, 1)
        assert obj.map("verdicts").is_percpu
        with pytest.raises(_bpf.BpfError) as not_loaded:
            deny.fd  # pylint: disable=pointless-statement
        assert not_loaded.value.errno == errno.EBADF
        assert "not loaded" in str(not_loaded.value)


def test_lookups_of_unknown_names_and_closed_objects_fail_clearly(objects):
    obj = _bpf.BpfObject.open(objects["tiny_xdp"])
    with pytest.raises(_bpf.BpfError) as no_prog:
        obj.program("xdp_missing")
    assert no_prog.value.errno == errno.ENOENT
    assert "xdp_missing" in str(no_prog.value) and "tiny_xdp.o" in str(no_prog.value)
    with pytest.raises(_bpf.BpfError) as no_map:
        obj.map("no_such_map")
    assert no_map.value.errno == errno.ENOENT
    deny = obj.map("deny_v4")
    obj.close()
    assert obj.closed
    with pytest.raises(_bpf.BpfError) as closed:
        deny.lookup(lpm_key("10.0.0.0/8"))
    assert closed.value.errno == errno.EBADF
    obj.close()  # closing twice is harmless


def test_open_of_a_missing_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.o"
    with pytest.raises(_bpf.BpfError) as exc:
        _bpf.BpfObject.open(missing)
    assert exc.value.errno == errno.ENOENT
    assert isinstance(exc.value, OSError)
    assert str(missing) in str(exc.value)


def test_verifier_rejection_puts_the_verifier_log_in_the_error(objects):
    with _bpf.BpfObject.open(objects["verifier_reject"]) as obj:
        with pytest.raises(_bpf.BpfError) as exc:
            obj.load()
    error = exc.value
    assert error.errno == errno.EACCES
    assert error.operation == "load BPF object"
    text = str(error)
    assert "verifier_reject.o" in text
    assert "xdp_unchecked_read" in text
    # The verifier's own reason, from the log libbpf printed through our callback.
    assert "invalid access to packet" in text
    assert any("invalid access to packet" in line for line in error.log)


# --- maps: single elements ----------------------------------------------------------------

def test_hash_map_update_lookup_delete_and_iterate(tiny):
    ports = tiny.map("reflect_ports")
    assert ports.info().max_entries == 1024
    assert ports.lookup(reflect_key(27015)) is None

    ports.update(reflect_key(27015), REFLECT_VALUE.pack(5, 1, 0))
    ports.update(reflect_key(27016), REFLECT_VALUE.pack(6, 0, 0))
    assert REFLECT_VALUE.unpack(ports.lookup(reflect_key(27015))) == (5, 1, 0)

    with pytest.raises(_bpf.BpfError) as exists:
        ports.update(reflect_key(27015), REFLECT_VALUE.pack(9, 9, 0), _bpf.BPF_NOEXIST)
    assert exists.value.errno == errno.EEXIST
    assert "reflect_ports" in str(exists.value)
    with pytest.raises(_bpf.BpfError) as absent:
        ports.update(reflect_key(1), REFLECT_VALUE.pack(1, 1, 0), _bpf.BPF_EXIST)
    assert absent.value.errno == errno.ENOENT
    assert REFLECT_VALUE.unpack(ports.lookup(reflect_key(27015))) == (5, 1, 0)

    assert set(ports.keys()) == {reflect_key(27015), reflect_key(27016)}
    assert dict(ports.items()) == {reflect_key(27015): REFLECT_VALUE.pack(5, 1, 0),
                                   reflect_key(27016): REFLECT_VALUE.pack(6, 0, 0)}

    assert ports.delete(reflect_key(27015)) is True
    assert ports.delete(reflect_key(27015)) is False
    assert list(ports.keys()) == [reflect_key(27016)]

    with pytest.raises(ValueError):
        ports.lookup(b"\x00\x01")
    with pytest.raises(ValueError):
        ports.update(reflect_key(1), b"short")


def test_lpm_trie_lookup_is_longest_prefix_match(tiny):
    deny = tiny.map("deny_v4")
    deny.update(lpm_key("192.0.2.0/24"), DENY_VALUE.pack(24, 0))
    deny.update(lpm_key("192.0.2.128/25"), DENY_VALUE.pack(25, 0))
    assert DENY_VALUE.unpack(deny.lookup(lpm_key("192.0.2.1/32")))[0] == 24
    assert DENY_VALUE.unpack(deny.lookup(lpm_key("192.0.2.200/32")))[0] == 25
    assert deny.lookup(lpm_key("198.51.100.1/32")) is None
    assert set(deny.keys()) == {lpm_key("192.0.2.0/24"), lpm_key("192.0.2.128/25")}


# --- maps: batches ------------------------------------------------------------------------

def test_hash_batch_update_lookup_delete(tiny):
    ports = tiny.map("reflect_ports")
    keys = [reflect_key(20000 + i) for i in range(300)]
    values = [REFLECT_VALUE.pack(i, i % 3, 0) for i in range(300)]
    assert ports.update_batch(keys, values) == 300
    assert ports.lookup(keys[123]) == values[123]

    # chunk_size=1 forces many resumed calls and at least one hash bucket holding more
    # entries than the chunk (ENOSPC, answered by a bigger chunk).
    for chunk_size in (1, 7, 1024):
        assert dict(ports.lookup_batch(chunk_size=chunk_size)) == dict(zip(keys, values))

    # Absent keys in the middle are skipped, not fatal.
    to_delete = keys[:50] + [reflect_key(1), reflect_key(2)] + keys[50:100]
    assert ports.delete_batch(to_delete) == 100
    assert set(ports.keys()) == set(keys[100:])
    # The kernel batch path was used throughout: no fallback was recorded.
    assert not ports._batch_unsupported  # pylint: disable=protected-access

    with pytest.raises(ValueError):
        ports.update_batch(keys[:2], values[:1])


def test_hash_batch_update_honours_element_flags(tiny):
    ports = tiny.map("reflect_ports")
    ports.update(reflect_key(5), REFLECT_VALUE.pack(1, 0, 0))
    with pytest.raises(_bpf.BpfError) as exc:
        ports.update_batch([reflect_key(4), reflect_key(5)],
                           [REFLECT_VALUE.pack(2, 0, 0)] * 2, flags=_bpf.BPF_NOEXIST)
    assert exc.value.errno == errno.EEXIST
    assert "1 of 2 done" in str(exc.value)
    # In order: the new key went in, the existing one was left as it was.
    assert REFLECT_VALUE.unpack(ports.lookup(reflect_key(4)))[0] == 2
    assert REFLECT_VALUE.unpack(ports.lookup(reflect_key(5)))[0] == 1


def test_lpm_trie_batch_operations(tiny):
    deny = tiny.map("deny_v4")
    cidrs = ["10.%d.0.0/16" % i for i in range(40)] + ["203.0.113.7/32"]
    keys = [lpm_key(c) for c in cidrs]
    values = [DENY_VALUE.pack(i, 0) for i in range(len(cidrs))]
    assert deny.update_batch(keys, values) == len(keys)
    assert dict(deny.lookup_batch(chunk_size=16)) == dict(zip(keys, values))
    assert deny.delete_batch(keys[:10]) == 10
    assert sorted(key for key, dummy in deny.lookup_batch()) == sorted(keys[10:])


def test_batch_ops_fall_back_per_element_where_the_kernel_has_none(tiny):
    """Devmaps have no batch syscalls: the binding does the same work element by element."""
    egress = tiny.map("egress_ports")
    count = _bpf._u32(1)  # pylint: disable=protected-access
    raw = _bpf._lib().bpf_map_lookup_batch(  # pylint: disable=protected-access
        egress.fd, None, ctypes.create_string_buffer(8), ctypes.create_string_buffer(4),
        ctypes.create_string_buffer(4), ctypes.byref(count), None)
    assert -raw in (errno.EOPNOTSUPP, _bpf.ENOTSUPP, errno.EINVAL)

    loopback = socket.if_nametoindex("lo")
    keys = [U32.pack(0), U32.pack(2)]
    assert egress.update_batch(keys, [U32.pack(loopback)] * 2) == 2
    assert egress.lookup(U32.pack(2)) == U32.pack(loopback)
    # Empty devmap slots are skipped, as the kernel batch lookup would.
    assert egress.lookup_batch() == [(U32.pack(0), U32.pack(loopback)),
                                     (U32.pack(2), U32.pack(loopback))]
    assert egress.delete_batch([U32.pack(0)]) == 1
    assert egress.lookup_batch() == [(U32.pack(2), U32.pack(loopback))]
    assert egress._batch_unsupported == {"update", "lookup", "delete"}  # pylint: disable=protected-access


# --- per-CPU maps -------------------------------------------------------------------------

def test_percpu_values_have_one_slot_per_possible_cpu(tiny):
    verdicts = tiny.map("verdicts")
    ncpu = _bpf.num_possible_cpus()
    assert ncpu >= 1
    assert verdicts.value_buffer_size == 8 * ncpu
    key = U32.pack(_bpf.XDP_TX)
    assert len(verdicts.lookup(key)) == 8 * ncpu
    assert verdicts.lookup_percpu(key) == [U64.pack(0)] * ncpu

    verdicts.update_percpu(key, [U64.pack(100 + cpu) for cpu in range(ncpu)])
    assert [U64.unpack(v)[0] for v in verdicts.lookup_percpu(key)] == [100 + c for c in range(ncpu)]
    batch = dict(verdicts.lookup_batch())
    assert len(batch) == 8
    assert verdicts.split_percpu(batch[key]) == verdicts.lookup_percpu(key)

    with pytest.raises(ValueError):
        verdicts.update_percpu(key, [U64.pack(1)] * (ncpu + 1))
    with pytest.raises(ValueError):
        verdicts.update(key, U64.pack(1))  # one CPU's worth is not a per-CPU value
    with pytest.raises(_bpf.BpfError):
        tiny.map("reflect_ports").lookup_percpu(reflect_key(1))


def test_sum_percpu_sums_each_word_over_the_cpus_entry_by_entry(tiny, edge):
    """The one reader of per-CPU counters (edge_stats_info, the exporter): each of the value's
    first words summed over every possible CPU, per entry, in the order of the buffers given."""
    ncpu = _bpf.num_possible_cpus()
    stats = edge.maps["edge_service_stats"]            # per-CPU array of struct service_counter
    stats.update_percpu(U32.pack(1), [struct.pack("<QQQQ", 1, 10 + cpu, 100, 1000 * cpu) for cpu in range(ncpu)])
    stats.update_percpu(U32.pack(3), [struct.pack("<QQQQ", 2, 0, 0, 5)] * ncpu)
    entries = stats.lookup_batch()
    assert len(entries) == stats.max_entries
    sums = dict(zip((key for key, dummy in entries), zip(*stats.sum_percpu([value for dummy, value in entries], 4))))
    assert sums[U32.pack(1)] == (ncpu, 10 * ncpu + sum(range(ncpu)), 100 * ncpu, 1000 * sum(range(ncpu)))
    assert sums[U32.pack(3)] == (2 * ncpu, 0, 0, 5 * ncpu)
    assert sums[U32.pack(2)] == (0, 0, 0, 0)
    assert stats.sum_percpu([stats.lookup(U32.pack(1))], 2) == [[ncpu], [10 * ncpu + sum(range(ncpu))]]
    assert stats.sum_percpu([], 4) == [[], [], [], []]
    verdicts = tiny.map("verdicts")                    # a one-word value
    verdicts.update_percpu(U32.pack(_bpf.XDP_TX), [U64.pack(7)] * ncpu)
    assert verdicts.sum_percpu([verdicts.lookup(U32.pack(_bpf.XDP_TX))], 1) == [[7 * ncpu]]


# --- test_run -----------------------------------------------------------------------------

def verdict_total(obj, verdict: int) -> int:
    return sum(U64.unpack(v)[0] for v in obj.map("verdicts").lookup_percpu(U32.pack(verdict)))


def test_test_run_verdicts_follow_the_maps(tiny):
    prog = tiny.program("xdp_filter")
    tiny.map("deny_v4").update(lpm_key("198.51.100.0/24"), DENY_VALUE.pack(1, 0))
    tiny.map("reflect_ports").update(reflect_key(27015), REFLECT_VALUE.pack(0, 0, 0))

    denied = udp_frame("198.51.100.9", "192.0.2.1", 27015)
    result = prog.test_run(denied)
    assert result.retval == _bpf.XDP_DROP
    assert result.data_out == denied

    reflected = udp_frame("203.0.113.5", "192.0.2.1", 27015)
    result = prog.test_run(reflected)
    assert result.retval == _bpf.XDP_TX
    # The program swapped the MAC addresses and nothing else.
    assert result.data_out == MAC_A + MAC_B + reflected[12:]
    assert REFLECT_VALUE.unpack(tiny.map("reflect_ports").lookup(reflect_key(27015)))[0] == 1

    other_port = udp_frame("203.0.113.5", "192.0.2.1", 53)
    assert prog.test_run(other_port).retval == _bpf.XDP_PASS
    arp = MAC_B + MAC_A + b"\x08\x06" + bytes(28)
    assert prog.test_run(arp).retval == _bpf.XDP_PASS

    assert verdict_total(tiny, _bpf.XDP_DROP) == 1
    assert verdict_total(tiny, _bpf.XDP_TX) == 1
    assert verdict_total(tiny, _bpf.XDP_PASS) == 2


def test_test_run_repeat_runs_the_program_that_many_times(tiny):
    result = tiny.program("xdp_filter").test_run(udp_frame("203.0.113.5", "192.0.2.1", 9),
                                                 repeat=250)
    assert result.retval == _bpf.XDP_PASS
    assert verdict_total(tiny, _bpf.XDP_PASS) == 250
    assert result.duration_ns > 0


def test_test_run_returns_a_packet_the_program_grew(tiny):
    frame = udp_frame("203.0.113.5", "192.0.2.1", 9)
    grow = tiny.program("xdp_grow")
    result = grow.test_run(frame)
    assert result.retval == _bpf.XDP_PASS
    assert result.data_out == frame + bytes.fromhex("deadbeef")

    with pytest.raises(_bpf.BpfError) as too_small:
        grow.test_run(frame, data_size_out=len(frame))
    assert too_small.value.errno == errno.ENOSPC
    assert "data_size_out" in str(too_small.value)


def test_test_run_passes_the_xdp_context(tiny):
    frame = udp_frame("203.0.113.5", "192.0.2.1", 9)
    loopback = socket.if_nametoindex("lo")
    result = tiny.program("xdp_pass_all").test_run(
        frame, ctx_in=_bpf.xdp_md(len(frame), ingress_ifindex=loopback))
    data, data_end, data_meta, ingress, rx_queue, egress = struct.unpack("<6I", result.ctx_out)
    assert (data_end - data, data_meta, ingress, rx_queue, egress) == (len(frame), 0, loopback, 0, 0)

    with pytest.raises(_bpf.BpfError) as bad_ctx:  # data_end must equal the packet length
        tiny.program("xdp_pass_all").test_run(frame, ctx_in=_bpf.xdp_md(len(frame) + 1))
    assert bad_ctx.value.errno == errno.EINVAL


# --- program and map info -----------------------------------------------------------------

def test_program_info_names_its_maps_and_is_found_by_id(objects, tiny, bpffs_root):
    prog = tiny.program("xdp_filter")
    info = prog.info()
    assert info.name == "xdp_filter"
    assert info.type == _bpf.BPF_PROG_TYPE_XDP
    assert len(info.tag) == 16 and int(info.tag, 16) >= 0
    used = {tiny.map(name).id for name in ("deny_v4", "reflect_ports", "verdicts")}
    assert set(info.map_ids) == used
    assert _bpf.prog_info_by_id(info.id) == info
    assert prog.id == info.id and prog.tag == info.tag
    assert _bpf.map_info_by_id(tiny.map("deny_v4").id) == tiny.map("deny_v4").info()

    with _bpf.BpfProgram.from_id(info.id) as same:
        assert same.name == "xdp_filter"
        assert same.test_run(udp_frame("203.0.113.5", "192.0.2.1", 9)).retval == _bpf.XDP_PASS

    # Same instructions and map layout: a second load has a new id but the same tag.
    second_pins = bpffs_root / uuid.uuid4().hex[:12]
    with _bpf.BpfObject.open(objects["tiny_xdp"], pin_root_path=second_pins) as again:
        again.load()
        other = again.program("xdp_filter").info()
    assert other.id != info.id
    assert other.tag == info.tag


# --- pins ---------------------------------------------------------------------------------

def test_pinned_map_and_program_outlive_their_object(objects, pin_dir):
    map_pin = pin_dir / "maps" / "reflect_ports"
    prog_pin = pin_dir / "progs" / "xdp_filter"
    with _bpf.BpfObject.open(objects["tiny_xdp"], pin_root_path=pin_dir) as obj:
        obj.load()
        ports = obj.map("reflect_ports")
        ports.pin(map_pin)          # parent folders are created
        obj.program("xdp_filter").pin(prog_pin)
        map_id, prog_id = ports.id, obj.program("xdp_filter").id
        ports.update(reflect_key(27015), REFLECT_VALUE.pack(0, 0, 0))
        with pytest.raises(_bpf.BpfError) as twice:
            ports.pin(map_pin)
        assert twice.value.errno == errno.EEXIST

    with _bpf.BpfMap.from_pin(map_pin) as ports, _bpf.BpfProgram.from_pin(prog_pin) as prog:
        assert ports.id == map_id and prog.id == prog_id
        assert ports.name == "reflect_ports" and prog.name == "xdp_filter"
        assert (ports.type, ports.key_size, ports.value_size) == (_bpf.BPF_MAP_TYPE_HASH, 4, 16)
        # The program still uses the pinned map: a packet counts into it.
        assert prog.test_run(udp_frame("203.0.113.5", "192.0.2.1", 27015)).retval == _bpf.XDP_TX
        assert REFLECT_VALUE.unpack(ports.lookup(reflect_key(27015)))[0] == 1
        # Writes through another fd of the same map are seen.
        fd = _bpf.bpf_obj_get(map_pin)
        try:
            with _bpf.BpfMap.from_fd(fd) as other:
                other.delete(reflect_key(27015))
        finally:
            os.close(fd)
        assert ports.lookup(reflect_key(27015)) is None

    with pytest.raises(_bpf.BpfError) as not_a_map:
        _bpf.BpfMap.from_pin(prog_pin)
    assert not_a_map.value.errno == errno.EINVAL and "BPF prog" in str(not_a_map.value)
    with pytest.raises(_bpf.BpfError) as not_a_prog:
        _bpf.BpfProgram.from_pin(map_pin)
    assert not_a_prog.value.errno == errno.EINVAL and "BPF map" in str(not_a_prog.value)
    assert _bpf.unpin(map_pin) is True
    assert _bpf.unpin(map_pin) is False
    _bpf.unpin(prog_pin)
    with pytest.raises(_bpf.BpfError) as gone:
        _bpf.bpf_obj_get(map_pin)
    assert gone.value.errno == errno.ENOENT


def test_pin_by_name_maps_are_reused_with_their_entries(objects, pin_dir):
    with _bpf.BpfObject.open(objects["tiny_xdp"], pin_root_path=pin_dir) as first:
        first.load()
        learned = first.map("learned_state")
        learned.update(U32.pack(7), U64.pack(77))
        learned_id = learned.id
        unpinned_id = first.map("reflect_ports").id
    assert (pin_dir / "learned_state").exists()
    assert not (pin_dir / "reflect_ports").exists()  # only LIBBPF_PIN_BY_NAME maps are pinned

    with _bpf.BpfObject.open(objects["tiny_xdp"], pin_root_path=pin_dir) as second:
        second.load()
        assert second.map("learned_state").id == learned_id
        assert second.map("learned_state").lookup(U32.pack(7)) == U64.pack(77)
        assert second.map("reflect_ports").id != unpinned_id


def test_reuse_fd_shares_a_map_and_refuses_an_incompatible_one(objects, tiny, bpffs_root):
    ports = tiny.map("reflect_ports")
    ports.update(reflect_key(1), REFLECT_VALUE.pack(11, 0, 0))
    with _bpf.BpfObject.open(objects["tiny_xdp"],
                             pin_root_path=bpffs_root / uuid.uuid4().hex[:12]) as upgrade:
        with pytest.raises(_bpf.BpfError) as incompatible:
            upgrade.map("reflect_ports").reuse_fd(tiny.map("deny_v4").fd)
        assert incompatible.value.errno == errno.EINVAL
        assert "key_size 8 != 4" in str(incompatible.value)

        upgrade.map("reflect_ports").reuse_fd(ports.fd)
        upgrade.load()
        assert upgrade.map("reflect_ports").id == ports.id
        frame = udp_frame("203.0.113.5", "192.0.2.1", 1)
        assert upgrade.program("xdp_filter").test_run(frame).retval == _bpf.XDP_TX
    assert REFLECT_VALUE.unpack(ports.lookup(reflect_key(1)))[0] == 12


def test_reuse_pin_before_load(objects, tiny, pin_dir, bpffs_root):
    tiny.map("deny_v4").pin(pin_dir / "deny_v4")
    tiny.map("deny_v4").update(lpm_key("198.51.100.0/24"), DENY_VALUE.pack(3, 0))
    with _bpf.BpfObject.open(objects["tiny_xdp"],
                             pin_root_path=bpffs_root / uuid.uuid4().hex[:12]) as upgrade:
        upgrade.map("deny_v4").reuse_pin(pin_dir / "deny_v4")
        upgrade.load()
        result = upgrade.program("xdp_filter").test_run(udp_frame("198.51.100.1", "192.0.2.1", 9))
        assert result.retval == _bpf.XDP_DROP


# --- BTF ----------------------------------------------------------------------------------

def test_btf_layout_of_object_maps(tiny):
    deny = tiny.map("deny_v4").btf_layout()
    assert deny["key"].type_name == "struct lpm_v4_key"
    assert deny["key"].kind == "struct" and deny["key"].size == 8
    assert [(m.name, m.offset, m.size, m.type_name) for m in deny["key"].members] == [
        ("prefixlen", 0, 4, "__u32"), ("addr", 4, 4, "__u8[4]")]
    assert deny["value"].type_name == "struct deny_value"

    reflect = tiny.map("reflect_ports").btf_layout()
    assert [(m.name, m.offset, m.size) for m in reflect["key"].members] == [
        ("port", 0, 2), ("proto", 2, 1), ("pad", 3, 1)]
    assert reflect["value"].member("flags") == _bpf.BtfMember("flags", 8, 4, "__u32", 64, 0)
    assert reflect["value"].size == REFLECT_VALUE.size
    with pytest.raises(KeyError):
        reflect["value"].member("nope")

    verdicts = tiny.map("verdicts").btf_layout()
    assert verdicts["key"] == _bpf.BtfLayout("__u32", "int", 4, [])
    assert verdicts["value"] == _bpf.BtfLayout("__u64", "int", 8, [])

    assert tiny.btf_type("reflect_value") == reflect["value"]
    with pytest.raises(_bpf.BpfError):
        tiny.btf_type("no_such_type")


def test_btf_layout_of_a_pinned_map_comes_from_the_kernel(tiny, pin_dir):
    tiny.map("deny_v4").pin(pin_dir / "deny")
    with _bpf.BpfMap.from_pin(pin_dir / "deny") as pinned:
        assert pinned.btf_layout() == tiny.map("deny_v4").btf_layout()


# --- bpffs --------------------------------------------------------------------------------

def test_ensure_bpffs_mounts_only_where_needed(bpffs_root, tmp_path):
    assert _bpf.ensure_bpffs(bpffs_root) is False
    inside = bpffs_root / uuid.uuid4().hex[:12] / "anycast_edge"
    assert _bpf.ensure_bpffs(inside) is False       # created inside the existing bpffs
    assert inside.is_dir()
    assert _bpf._mount_fstype_of(str(inside)) == "bpf"  # pylint: disable=protected-access

    fresh = tmp_path / "fs"
    assert _bpf._mount_fstype_of(str(fresh)) != "bpf"  # pylint: disable=protected-access
    assert _bpf.ensure_bpffs(fresh) is True
    try:
        assert _bpf._mount_fstype_of(str(fresh)) == "bpf"  # pylint: disable=protected-access
        assert _bpf.ensure_bpffs(fresh) is False
        assert oct(os.stat(fresh).st_mode & 0o777) == oct(0o700)
    finally:
        subprocess.run(["umount", str(fresh)], check=True)


# --- XDP attachment -----------------------------------------------------------------------

@pytest.fixture
def veth_netns():
    """A fresh namespace holding an up veth pair veth0/veth1; removed afterwards."""
    name = "bpfbind-" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "add", "veth0", "type", "veth",
                        "peer", "name", "veth1"], check=True)
        for dev in ("veth0", "veth1"):
            subprocess.run(["ip", "-n", name, "link", "set", dev, "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_xdp_attach_query_replace_detach(tiny, veth_netns):
    filter_prog = tiny.program("xdp_filter")
    pass_prog = tiny.program("xdp_pass_all")
    grow_prog = tiny.program("xdp_grow")
    with namespace.inside(veth_netns):
        ifindex = socket.if_nametoindex("veth0")
        nothing = _bpf.xdp_query(ifindex)
        assert (nothing.prog_id, nothing.mode) == (0, "none")

        _bpf.xdp_attach(ifindex, filter_prog.fd, _bpf.XDP_FLAGS_DRV_MODE)
        attached = _bpf.xdp_query(ifindex)
        assert (attached.prog_id, attached.drv_prog_id, attached.mode) == (
            filter_prog.id, filter_prog.id, "drv")
        assert _bpf.prog_info_by_id(attached.prog_id).tag == filter_prog.tag

        # "Only if nothing is attached" refuses.
        with pytest.raises(_bpf.BpfError) as busy:
            _bpf.xdp_attach(ifindex, pass_prog.fd,
                            _bpf.XDP_FLAGS_DRV_MODE | _bpf.XDP_FLAGS_UPDATE_IF_NOEXIST)
        assert busy.value.errno == errno.EBUSY
        # An atomic replace naming the wrong current program refuses and changes nothing.
        with pytest.raises(_bpf.BpfError) as wrong_old:
            _bpf.xdp_attach(ifindex, pass_prog.fd, _bpf.XDP_FLAGS_DRV_MODE,
                            old_prog_fd=grow_prog.fd)
        assert wrong_old.value.errno == errno.EEXIST
        assert "ifindex %d" % ifindex in str(wrong_old.value)
        assert _bpf.xdp_query(ifindex).prog_id == filter_prog.id

        _bpf.xdp_attach(ifindex, pass_prog.fd, _bpf.XDP_FLAGS_DRV_MODE,
                        old_prog_fd=filter_prog.fd)
        assert _bpf.xdp_query(ifindex).prog_id == pass_prog.id

        # Detaching "our" program when another one is attached leaves it alone.
        with pytest.raises(_bpf.BpfError) as not_ours:
            _bpf.xdp_detach(ifindex, _bpf.XDP_FLAGS_DRV_MODE, old_prog_fd=filter_prog.fd)
        assert not_ours.value.errno == errno.EEXIST
        assert _bpf.xdp_query(ifindex).prog_id == pass_prog.id

        _bpf.xdp_detach(ifindex, _bpf.XDP_FLAGS_DRV_MODE, old_prog_fd=pass_prog.fd)
        assert _bpf.xdp_query(ifindex).prog_id == 0

        # Generic (skb) mode on the peer.
        peer = socket.if_nametoindex("veth1")
        _bpf.xdp_attach(peer, filter_prog.fd, _bpf.XDP_FLAGS_SKB_MODE)
        generic = _bpf.xdp_query(peer)
        assert (generic.skb_prog_id, generic.drv_prog_id, generic.mode) == (
            filter_prog.id, 0, "skb")
        _bpf.xdp_detach(peer, _bpf.XDP_FLAGS_SKB_MODE)
        assert _bpf.xdp_query(peer).prog_id == 0


def test_an_attached_program_outlives_the_process_objects(objects, pin_dir, veth_netns):
    """What a module relies on: attach, close everything, and the program stays in place."""
    with _bpf.BpfObject.open(objects["tiny_xdp"], pin_root_path=pin_dir) as obj:
        obj.load()
        prog_id = obj.program("xdp_pass_all").id
        with namespace.inside(veth_netns):
            _bpf.xdp_attach(socket.if_nametoindex("veth0"), obj.program("xdp_pass_all").fd,
                            _bpf.XDP_FLAGS_DRV_MODE)
    with namespace.inside(veth_netns):
        ifindex = socket.if_nametoindex("veth0")
        assert _bpf.xdp_query(ifindex).prog_id == prog_id
        assert _bpf.prog_info_by_id(prog_id).name == "xdp_pass_all"
        with _bpf.BpfProgram.from_id(prog_id) as attached:
            _bpf.xdp_detach(ifindex, _bpf.XDP_FLAGS_DRV_MODE, old_prog_fd=attached.fd)
        assert _bpf.xdp_query(ifindex).prog_id == 0
