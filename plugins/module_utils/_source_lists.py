# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""The deny and allow lists as the XDP program reads them: a bit per /24, a bitmap per partly listed /24.

An LPM trie lookup walks one node per branching point on the way to the address, so it costs more
as the list grows (docs/data-plane.md has the figures measured). The program reads instead
(bpf/include/edge_abi.h has the C side):

    edge_src_filter   2^18 entries of four 64-bit words: deny_all, deny_some, allow_all, allow_some.
                      Bit (n % 64) of entry (n // 64) stands for the /24 number n (address >> 8).
                      "all": a prefix of /24 or shorter covers the whole /24.
                      "some": prefixes longer than /24 cover part of it: see edge_src_hosts.
    edge_src_hosts    (n, list) -> the /24's 256 addresses as a 256-bit bitmap.

That is one array lookup for every packet and one hash lookup for a source in a partly listed /24:
the same cost for one prefix as for a million. This module derives both from the exact prefixes;
pure Python, no kernel access (edge_rules writes what it returns, the tests and the bench too).

The same geometry, one word per entry, says which destinations are not ours (not_ours_plane):

    edge_dst_pass     2^18 64-bit words; bit (n % 64) of word (n // 64) set: no address of the
                      /24 number n is ours (no anycast prefix, no service covers any of it), so
                      XDP passes a packet to it to the kernel after one array lookup.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from array import array

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi

DENY = 0    # enum edge_src_list
ALLOW = 1

# The geometry is the C side's (edge_abi.h), checked against the object by tests/bpf/test_abi.py.
FILTER_ENTRIES = abi.SRC_FILTER_ENTRIES
NETS_PER_ENTRY = abi.SRC_NETS_PER_ENTRY
ENTRY_SIZE = abi.SRC_FILTER_ENTRY.size   # struct src_filter_entry: four u64 words
FILTER_SIZE = FILTER_ENTRIES * ENTRY_SIZE
_PLANE_SIZE = (1 << 24) // 8         # a bit per /24: 2 MiB
_INTERLEAVE_BLOCK = 1 << 16          # derive() copies a plane into the filter a block at a time
_HOSTS_ALL_ONES = (1 << 256) - 1
_WORD_ALL_ONES = (1 << 64) - 1
_FULL_BYTES = {}


def _full(count):
    """count bytes of 0xff (cached: the same few sizes come up again and again)."""
    run = _FULL_BYTES.get(count)
    if run is None:
        run = _FULL_BYTES[count] = b"\xff" * count
    return run


def _clear_bits(plane, first, count):
    """Clear bits first..first+count-1 of a bitmap (count a power of two, first a multiple of it)."""
    if count >= 8:
        plane[first >> 3:(first + count) >> 3] = bytes(count >> 3)
    else:
        plane[first >> 3] &= ~(((1 << count) - 1) << (first & 7)) & 0xFF


def nets_touched(address, length):
    """(first /24 number, how many) of the /24s a prefix touches (address: host-order int): a
    prefix longer than /24 touches its one /24."""
    return address >> 8, 1 << (24 - length) if length <= 24 else 1


def not_ours_plane(prefixes):
    """edge_dst_pass whole (_PLANE_SIZE bytes, as the kernel keeps it: word i little-endian at
    i * 8, the plane's bit n being bit n % 64 of word n // 64): every bit set but those of the /24s
    any of `prefixes` touches ((address, length) as derive takes them; a prefix longer than /24
    clears its one /24: the rest of that /24 still asks the services and the anycast prefixes)."""
    plane = bytearray(_full(_PLANE_SIZE))
    for address, length in prefixes:
        _clear_bits(plane, *nets_touched(address, length))
    return bytes(plane)


# The bits of its /24 a prefix longer than /24 covers: _LONG_SPANS[length][last octet].
_LONG_SPANS = dict((length, [((1 << (1 << (32 - length))) - 1) << last for last in range(256)])
                   for length in range(25, 33))
# A prefix of /24 or shorter covers 2^(24 - length) /24s: whole bytes of a plane from /21 up,
# _SHORT_BITS[length] (the low bits of one byte, shifted into place) for /22 to /24.
_SHORT_BITS = {22: 0x0F, 23: 0x03, 24: 0x01}


def _list_planes(prefixes, whole, some):
    """Set the "all" bits of one list in `whole`, its "some" bits in `some` (bytearrays of
    _PLANE_SIZE) and return its hosts bitmaps {/24 number: 256-bit int} (see derive). One pass
    over the prefixes with the per-prefix work inlined: a million prefixes are derived on every
    run."""
    partial = {}
    get = partial.get
    spans = _LONG_SPANS
    short_bits = _SHORT_BITS
    for address, length in prefixes:
        if length > 24:
            net24 = address >> 8
            partial[net24] = get(net24, 0) | spans[length][address & 0xFF]
        elif length > 21:
            first = address >> 8
            whole[first >> 3] |= short_bits[length] << (first & 7)
        else:
            first = address >> 11
            whole[first:first + (1 << (21 - length))] = _full(1 << (21 - length))
    hosts = {}
    for net24, bits in partial.items():
        byte, bit = net24 >> 3, 1 << (net24 & 7)
        if whole[byte] & bit:
            continue
        if bits == _HOSTS_ALL_ONES:
            whole[byte] |= bit
        else:
            some[byte] |= bit
            hosts[net24] = bits
    return hosts


def derive(deny, allow):
    """(filter, hosts) for the prefixes of two lists, each an iterable of (address, length) with the
    address an integer in host order and its host bits clear.

    filter: the whole edge_src_filter, FILTER_SIZE bytes as the kernel keeps them (entry i at
            i * 32: deny_all, deny_some, allow_all, allow_some, little-endian u64s).
    hosts:  {(/24 number, DENY or ALLOW): 256-bit int}, only for /24s whose "some" bit is set.
    A /24 that is covered whole is "all" and has no hosts bitmap, whatever longer prefixes it holds;
    a /24 whose longer prefixes add up to all 256 addresses becomes "all" too.
    The bits are set in bytearrays (one per word of the entry, a bit per /24), whole bytes at a
    time for prefixes of /21 and shorter, so that a million prefixes take a fraction of a second.
    """
    planes = [bytearray(_PLANE_SIZE) for dummy in range(4)]
    hosts = {}
    for list_id, prefixes in ((DENY, deny), (ALLOW, allow)):
        list_hosts = _list_planes(prefixes, planes[2 * list_id], planes[2 * list_id + 1])
        hosts.update(((net24, list_id), bits) for net24, bits in list_hosts.items())
    # Interleave the four planes word by word: entry i = word i of each plane (a plane's bit n is
    # bit n % 64 of its little-endian word n // 64, exactly the entry's layout). A block of a plane
    # that is all zero is left out (the filter starts all zero): the lists of a POP leave most of
    # the 2 MiB of each plane zero.
    words = memoryview(bytearray(FILTER_SIZE)).cast("Q")
    zero = bytes(_INTERLEAVE_BLOCK)
    for index, plane in enumerate(planes):
        for start in range(0, _PLANE_SIZE, _INTERLEAVE_BLOCK):
            block = plane[start:start + _INTERLEAVE_BLOCK]
            if block != zero:
                first = 4 * (start // 8) + index
                words[first:first + 4 * (len(block) // 8):4] = memoryview(block).cast("Q")
    return words.tobytes(), hosts


def entry_words(filter_bytes, index):
    """The four words of entry `index` of a filter (derive's first result)."""
    return tuple(array("Q", filter_bytes[index * ENTRY_SIZE:(index + 1) * ENTRY_SIZE]))


def host_words(bits):
    """A 256-bit hosts bitmap as the four 64-bit words of struct src_hosts_value."""
    return tuple((bits >> (64 * word)) & _WORD_ALL_ONES for word in range(4))


def is_listed(filter_bytes, hosts, address, list_id):
    """Whether `address` (host-order int) is in a list, read the way the XDP program reads it
    (the unit tests compare this with the prefixes themselves)."""
    net24 = address >> 8
    words = entry_words(filter_bytes, net24 // NETS_PER_ENTRY)
    bit = 1 << (net24 % NETS_PER_ENTRY)
    if words[2 * list_id] & bit:
        return True
    if words[2 * list_id + 1] & bit:
        return bool((hosts.get((net24, list_id), 0) >> (address & 0xFF)) & 1)
    return False
