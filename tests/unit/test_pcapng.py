"""module_utils/_pcapng.py: a pcapng stream read block by block as it grows (how xdp_capture
counts the packets xdpdump writes, to stop at a packet count), in either byte order, fed in
pieces of any size; a stream that is not pcapng is refused. Real xdpdump captures: the lab
(xdpdump needs BPF tracing programs, which this host's kernel does not offer)."""

from __future__ import annotations

import random
import struct

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _pcapng


def block(order, block_type, body):
    body += b"\0" * (-len(body) % 4)
    length = 12 + len(body)
    return struct.pack(order + "II", block_type, length) + body + struct.pack(order + "I", length)


def stream(order, packets):
    shb = block(order, _pcapng.SECTION_HEADER, struct.pack(order + "IHHq", _pcapng.BYTE_ORDER_MAGIC, 1, 0, -1))
    idb = block(order, _pcapng.INTERFACE_DESCRIPTION, struct.pack(order + "HHI", 1, 0, 0))
    epbs = [block(order, _pcapng.ENHANCED_PACKET, struct.pack(order + "IIIII", 0, 0, 0, len(data), len(data)) + data)
            for data in packets]
    return shb + idb + b"".join(epbs)


@pytest.mark.parametrize("order", ["<", ">"])
def test_blocks_come_out_whole_however_the_stream_is_cut(order):
    packets = [bytes(random.randrange(256) for dummy in range(size)) for size in (1, 60, 61, 62, 63, 1514)]
    data = stream(order, packets)
    reader = _pcapng.BlockReader()
    types = []
    position = 0
    while position < len(data):
        step = random.randrange(1, 200)
        types += [block_type for block_type, dummy in reader.feed(data[position:position + step])]
        position += step
    assert types == [_pcapng.SECTION_HEADER, _pcapng.INTERFACE_DESCRIPTION] + [_pcapng.ENHANCED_PACKET] * len(packets)
    assert reader.pending == 0


def test_what_is_not_pcapng_is_refused():
    with pytest.raises(_pcapng.PcapngError):
        _pcapng.BlockReader().feed(b"\xd4\xc3\xb2\xa1" + b"\0" * 20)     # a classic pcap file
    bad = bytearray(stream("<", [b"x"]))
    bad[8:12] = b"\0\0\0\0"
    with pytest.raises(_pcapng.PcapngError):
        _pcapng.BlockReader().feed(bytes(bad))


def interface(order, name=None, extra=b""):
    options = b""
    if name is not None:
        options += struct.pack(order + "HH", _pcapng.OPTION_IF_NAME, len(name)) + name + b"\0" * (-len(name) % 4)
    options += extra + struct.pack(order + "HH", 0, 0)
    return block(order, _pcapng.INTERFACE_DESCRIPTION, struct.pack(order + "HHI", 1, 0, 262144) + options)


@pytest.mark.parametrize("order", ["<", ">"])
def test_interfaces_are_named_after_the_pop_and_nothing_else_changes(order):
    # What two xdpdumps on two POPs both write: eth1:xdp_edge()@fentry and @fexit; merged,
    # only the prefix tells the POPs apart.
    shb = block(order, _pcapng.SECTION_HEADER, struct.pack(order + "IHHq", _pcapng.BYTE_ORDER_MAGIC, 1, 0, -1))
    tsresol = struct.pack(order + "HH", 9, 1) + b"\x09\0\0\0"       # if_tsresol, kept
    epb = block(order, _pcapng.ENHANCED_PACKET, struct.pack(order + "IIIII", 1, 0, 0, 3, 3) + b"abc")
    data = (shb + interface(order, b"eth1:xdp_edge()@fentry", tsresol) + interface(order, b"eth1:xdp_edge()@fexit")
            + interface(order) + epb)
    named = _pcapng.name_interfaces(data, "pop1")
    blocks = _pcapng.BlockReader().feed(named)
    assert [raw for block_type, raw in blocks if block_type != _pcapng.INTERFACE_DESCRIPTION] == [shb, epb]
    assert [raw for block_type, raw in blocks if block_type == _pcapng.INTERFACE_DESCRIPTION] == [
        interface(order, b"pop1:eth1:xdp_edge()@fentry", tsresol), interface(order, b"pop1:eth1:xdp_edge()@fexit"),
        interface(order, b"pop1")]
    with pytest.raises(_pcapng.PcapngError):
        _pcapng.name_interfaces(data[:-2], "pop1")


def capture(order, name, packets):
    """One POP's file: a section, its two interfaces (ns timestamps, as xdpdump's), and packets
    [(interface id, time in ns, bytes)]."""
    shb = block(order, _pcapng.SECTION_HEADER, struct.pack(order + "IHHq", _pcapng.BYTE_ORDER_MAGIC, 1, 0, -1))
    tsresol = struct.pack(order + "HH", _pcapng.OPTION_IF_TSRESOL, 1) + b"\x09\0\0\0"
    idbs = interface(order, name + b"@fentry", tsresol) + interface(order, name + b"@fexit", tsresol)
    verdict = struct.pack(order + "HH", 7, 9) + b"\x02" + struct.pack(order + "q", 1) + b"\0\0\0"   # epb_verdict
    epbs = [block(order, _pcapng.ENHANCED_PACKET, struct.pack(order + "IIIII", interface_id, when >> 32, when & 0xFFFFFFFF,
                                                              len(data), len(data)) + data + b"\0" * (-len(data) % 4)
                  + (verdict if interface_id else b"") + struct.pack(order + "HH", 0, 0))
            for interface_id, when, data in packets]
    return shb + idbs + b"".join(epbs)


def test_merged_by_time_each_interface_kept_and_every_packet_byte_for_byte_but_its_interface_id():
    pop1 = capture("<", b"pop1:eth1", [(0, 1_000, b"a1"), (1, 1_500, b"a1"), (0, 5_000_000_000, b"a2"), (1, 5_000_000_100, b"a2")])
    pop2 = capture("<", b"pop2:eth1", [(0, 2_000, b"b1"), (1, 2_500, b"b1"), (0, 4_999_999_999, b"b2"), (1, 6_000_000_000, b"b2")])
    merged = _pcapng.BlockReader().feed(_pcapng.merge([pop1, pop2]))
    assert merged[0][1] == _pcapng.BlockReader().feed(pop1)[0][1]
    assert [raw for block_type, raw in merged if block_type == _pcapng.INTERFACE_DESCRIPTION] == [
        raw for data in (pop1, pop2) for block_type, raw in _pcapng.BlockReader().feed(data)
        if block_type == _pcapng.INTERFACE_DESCRIPTION]
    packets = [raw for block_type, raw in merged if block_type == _pcapng.ENHANCED_PACKET]
    # (interface id in the merged file, payload): pop2's interfaces are 2 and 3, times interleave.
    assert [(struct.unpack("<I", raw[8:12])[0], raw[28:30]) for raw in packets] == [
        (0, b"a1"), (1, b"a1"), (2, b"b1"), (3, b"b1"), (2, b"b2"), (0, b"a2"), (1, b"a2"), (3, b"b2")]
    originals = {raw[12:]: raw for data in (pop1, pop2) for block_type, raw in _pcapng.BlockReader().feed(data)
                 if block_type == _pcapng.ENHANCED_PACKET}
    assert all(raw[12:] in originals and originals[raw[12:]][:8] == raw[:8] for raw in packets)   # verdicts and all


def test_what_cannot_be_merged_is_refused():
    pop1 = capture("<", b"pop1:eth1", [(0, 1, b"a")])
    with pytest.raises(_pcapng.PcapngError, match="other byte order"):
        _pcapng.merge([pop1, capture(">", b"pop2:eth1", [(0, 1, b"b")])])
    with pytest.raises(_pcapng.PcapngError, match="more than one section"):
        _pcapng.merge([pop1 + pop1])
    with pytest.raises(_pcapng.PcapngError, match="ends inside a block"):
        _pcapng.merge([pop1[:-3]])
    with pytest.raises(_pcapng.PcapngError, match="interface 5"):
        _pcapng.merge([capture("<", b"pop1:eth1", [(5, 1, b"a")])])
    with pytest.raises(_pcapng.PcapngError, match="nothing to merge"):
        _pcapng.merge([])


@pytest.mark.parametrize("short", [_pcapng.ENHANCED_PACKET, _pcapng.INTERFACE_STATISTICS, _pcapng.INTERFACE_DESCRIPTION])
def test_a_block_shorter_than_its_fixed_fields_is_refused_not_a_crash(short):
    """A packet or statistics block of 12 bytes (no interface id, no timestamp) or an interface
    description without its link type: a clean PcapngError, never struct.error (a traceback)."""
    shb = block("<", _pcapng.SECTION_HEADER, struct.pack("<IHHq", _pcapng.BYTE_ORDER_MAGIC, 1, 0, -1))
    data = shb + (interface("<", b"eth1") if short != _pcapng.INTERFACE_DESCRIPTION else b"") + block("<", short, b"")
    with pytest.raises(_pcapng.PcapngError, match="shorter than its fixed fields"):
        _pcapng.merge([data])
    if short == _pcapng.INTERFACE_DESCRIPTION:
        with pytest.raises(_pcapng.PcapngError, match="shorter than its fixed fields"):
            _pcapng.name_interfaces(data, "pop1")


def test_a_long_capture_is_read_in_one_pass():
    """The reader keeps a position instead of cutting each block off its buffer: fed whole, a
    capture of 50,000 packets comes out block for block, and what is left waits for the next feed."""
    data = stream("<", [b"x" * 60] * 50000)
    reader = _pcapng.BlockReader()
    blocks = reader.feed(data + data[:7])
    assert len(blocks) == 2 + 50000 and blocks[-1][1] == data[-len(blocks[-1][1]):]
    assert reader.pending == 7
