# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Reading a pcapng stream block by block (the format xdpdump writes): enough to count the
packets as they come and stop a capture at a packet count. Blocks are copied whole; nothing is
decoded but the block type and length (pcapng's section header tells the byte order), and the
interface descriptions' names, which ``name_interfaces`` prefixes (each POP's xdpdump names its
interfaces alike: ``eth1:xdp_edge()@fentry``; merged, they must say which POP they are)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import struct

SECTION_HEADER = 0x0A0D0D0A
INTERFACE_DESCRIPTION = 0x00000001
ENHANCED_PACKET = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D
OPTION_END = 0
OPTION_IF_NAME = 2


class PcapngError(ValueError):
    """Not a pcapng stream (or a broken one)."""


class BlockReader(object):
    """Feed bytes as they come (``feed``); complete blocks come out as (type, raw bytes)."""

    def __init__(self):
        self._buffer = b""
        self._order = None     # "<" or ">" once the section header was read

    def feed(self, data):
        # One pass with a read position, the rest kept once at the end: cutting each block off the
        # front of the buffer copied the rest per block (a flood's capture took quadratic time).
        buffer = self._buffer + data if self._buffer else data
        position, blocks = 0, []
        while len(buffer) - position >= 12:
            head = buffer[position:position + 12]
            if self._order is None or head[:4] == struct.pack("<I", SECTION_HEADER):
                magic = struct.unpack("<I", head[8:12])[0]
                if struct.unpack("<I", head[:4])[0] != SECTION_HEADER:
                    raise PcapngError("the stream does not start with a pcapng section header")
                if magic == BYTE_ORDER_MAGIC:
                    self._order = "<"
                elif magic == struct.unpack(">I", struct.pack("<I", BYTE_ORDER_MAGIC))[0]:
                    self._order = ">"
                else:
                    raise PcapngError("bad byte-order magic %#x" % magic)
            block_type, length = struct.unpack(self._order + "II", head[:8])
            if length < 12 or length % 4:
                raise PcapngError("block of type %#x has a bad length %d" % (block_type, length))
            if len(buffer) - position < length:
                break
            blocks.append((block_type, buffer[position:position + length]))
            position += length
        self._buffer = buffer[position:]
        return blocks

    @property
    def pending(self):
        """Bytes of a block not complete yet."""
        return len(self._buffer)


def _options(order, data):
    """[(code, value)] of a block's options, up to opt_endofopt."""
    options, position = [], 0
    while position + 4 <= len(data):
        code, length = struct.unpack(order + "HH", data[position:position + 4])
        if code == OPTION_END:
            break
        if position + 4 + length > len(data):
            raise PcapngError("option %d runs past its block" % code)
        options.append((code, data[position + 4:position + 4 + length]))
        position += 4 + length + (-length % 4)
    return options


def _block(order, block_type, body):
    length = 12 + len(body)
    return struct.pack(order + "II", block_type, length) + body + struct.pack(order + "I", length)


def name_interfaces(data, prefix):
    """``data`` (a whole pcapng stream) with every interface's name (if_name) prefixed by
    ``prefix`` + ':' - an interface without a name gets ``prefix``. Other blocks and options stay
    byte for byte."""
    reader = BlockReader()
    blocks = reader.feed(data)
    if reader.pending:
        raise PcapngError("the stream ends inside a block (%d bytes left)" % reader.pending)
    out, order = [], "<"
    for block_type, raw in blocks:
        if block_type == SECTION_HEADER:
            order = "<" if raw[8:12] == struct.pack("<I", BYTE_ORDER_MAGIC) else ">"
        if block_type != INTERFACE_DESCRIPTION:
            out.append(raw)
            continue
        length = len(raw)
        if length < 12 + 8:
            raise PcapngError("an interface description of %d bytes is shorter than its fixed fields" % length)
        fixed, options = raw[8:16], _options(order, raw[16:length - 4])
        names = [value for code, value in options if code == OPTION_IF_NAME]
        name = prefix.encode() + (b":" + names[0].rstrip(b"\0") if names else b"")
        body = fixed
        for code, value in [(OPTION_IF_NAME, name)] + [option for option in options if option[0] != OPTION_IF_NAME]:
            body += struct.pack(order + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)
        body += struct.pack(order + "HH", OPTION_END, 0)
        out.append(_block(order, INTERFACE_DESCRIPTION, body))
    return b"".join(out)


SIMPLE_PACKET = 0x00000003
INTERFACE_STATISTICS = 0x00000005
OPTION_IF_TSRESOL = 9
# The fixed fields before a block's options: link type, reserved, snaplen; interface id and
# timestamp (and the lengths of a packet's data, which the merge does not read).
MIN_BODY = {INTERFACE_DESCRIPTION: 8, ENHANCED_PACKET: 12, INTERFACE_STATISTICS: 12}


def _blocks_of_one_section(data):
    """(byte order, [(type, raw)]) of a whole stream of one section."""
    reader = BlockReader()
    blocks = reader.feed(data)
    if reader.pending:
        raise PcapngError("the stream ends inside a block (%d bytes left)" % reader.pending)
    if not blocks or blocks[0][0] != SECTION_HEADER:
        raise PcapngError("the stream does not start with a pcapng section header")
    if any(block_type == SECTION_HEADER for block_type, dummy in blocks[1:]):
        raise PcapngError("more than one section: not merged")
    if any(block_type == SIMPLE_PACKET for block_type, dummy in blocks):
        raise PcapngError("simple packet blocks (no interface id): not merged")
    return ("<" if blocks[0][1][8:12] == struct.pack("<I", BYTE_ORDER_MAGIC) else ">"), blocks


def _nanoseconds_per_unit(order, idb):
    """An interface's timestamp unit in nanoseconds (if_tsresol; microseconds without it)."""
    for code, value in _options(order, idb[16:len(idb) - 4]):
        if code == OPTION_IF_TSRESOL and value:
            exponent = ord(value[:1])
            if exponent & 0x80:
                return 1e9 / (2 ** (exponent & 0x7F))
            return 10.0 ** (9 - exponent)
    return 1000.0


def merge(streams):
    """One pcapng stream of ``streams`` (whole streams of one section each, one byte order): the
    first one's section header, every stream's interfaces in turn (their ids shifted past the
    earlier streams'), the packets of all ordered by time (stable), then the interface statistics.
    Blocks are copied byte for byte but for the interface ids - unlike mergecap 4.0 (Debian 12),
    which writes the packets' verdict option (epb_verdict, what xdpdump's exit records carry)
    under the queue option's code, and its output is then refused as damaged."""
    section, interfaces, packets, statistics, others = None, [], [], [], []
    first_order = None
    for number, data in enumerate(streams):
        order, blocks = _blocks_of_one_section(data)
        if first_order is None:
            first_order, section = order, blocks[0][1]
        elif order != first_order:
            raise PcapngError("stream %d is in the other byte order: not merged" % number)
        shift, units = len(interfaces), []
        for block_type, raw in blocks[1:]:
            body = raw[8:len(raw) - 4]
            if block_type in (INTERFACE_DESCRIPTION, ENHANCED_PACKET, INTERFACE_STATISTICS) and len(body) < MIN_BODY[block_type]:
                raise PcapngError("stream %d: a block of type %#x is %d bytes, shorter than its fixed fields"
                                  % (number, block_type, len(raw)))
            if block_type == INTERFACE_DESCRIPTION:
                interfaces.append(raw)
                units.append(_nanoseconds_per_unit(order, raw))
            elif block_type in (ENHANCED_PACKET, INTERFACE_STATISTICS):
                interface_id, high, low = struct.unpack(order + "III", body[:12])
                if interface_id >= len(units):
                    raise PcapngError("stream %d: a block names interface %d, which is not described before it"
                                      % (number, interface_id))
                moved = _block(order, block_type, struct.pack(order + "I", interface_id + shift) + body[4:])
                when = ((high << 32) | low) * units[interface_id]
                (packets if block_type == ENHANCED_PACKET else statistics).append((when, len(packets) + len(statistics), moved))
            else:
                others.append(raw)
    if section is None:
        raise PcapngError("nothing to merge")
    return b"".join([section] + interfaces + others + [raw for dummy, dummy2, raw in sorted(packets)]
                    + [raw for dummy, dummy2, raw in statistics])
