# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""The deny and allow lists as the XDP program reads them: a bit per /24, a bitmap per partly listed /24.

An LPM trie lookup walks one node per branching point on the way to the address, so it costs more
as the list grows (measured: a deny drop 42 ns with one prefix, 138 ns with a million). The program
reads instead (bpf/include/edge_abi.h has the C side):

    edge_src_filter   2^18 entries of four 64-bit words: deny_all, deny_some, allow_all, allow_some.
                      Bit (n % 64) of entry (n // 64) stands for the /24 number n (address >> 8).
                      "all": a prefix of /24 or shorter covers the whole /24.
                      "some": prefixes longer than /24 cover part of it: see edge_src_hosts.
    edge_src_hosts    (n, list) -> the /24's 256 addresses as a 256-bit bitmap.

That is one array lookup for every packet and one hash lookup for a source in a partly listed /24:
the same cost for one prefix as for a million. This module derives both from the exact prefixes;
pure Python, no kernel access (edge_rules writes what it returns, the tests and the bench too).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DENY = 0    # enum edge_src_list
ALLOW = 1

FILTER_ENTRIES = 1 << 18
NETS_PER_ENTRY = 64
_WORD_ALL_ONES = (1 << 64) - 1
_HOSTS_ALL_ONES = (1 << 256) - 1


def derive(deny, allow):
    """(entries, hosts) for the prefixes of two lists, each an iterable of (address, length) with
    the address an integer in host order and its host bits clear.

    entries: {entry index: [deny_all, deny_some, allow_all, allow_some]}, only entries with a bit set.
    hosts:   {(/24 number, DENY or ALLOW): 256-bit int}, only for /24s whose "some" bit is set.
    A /24 that is covered whole is "all" and has no hosts bitmap, whatever longer prefixes it holds;
    a /24 whose longer prefixes add up to all 256 addresses becomes "all" too.
    """
    entries = {}
    partial = {}
    for list_id, prefixes in ((DENY, deny), (ALLOW, allow)):
        all_word = 2 * list_id
        for address, length in prefixes:
            if length > 24:
                key = (address >> 8, list_id)
                span = ((1 << (1 << (32 - length))) - 1) << (address & 0xFF)
                partial[key] = partial.get(key, 0) | span
                continue
            first = address >> 8
            count = 1 << (24 - length)
            if count >= NETS_PER_ENTRY:
                # Whole entries: a /18 is one, a /8 1,024.
                for index in range(first // NETS_PER_ENTRY, (first + count) // NETS_PER_ENTRY):
                    entry = entries.get(index)
                    if entry is None:
                        entries[index] = entry = [0, 0, 0, 0]
                    entry[all_word] = _WORD_ALL_ONES
            else:
                index = first // NETS_PER_ENTRY
                entry = entries.get(index)
                if entry is None:
                    entries[index] = entry = [0, 0, 0, 0]
                entry[all_word] |= ((1 << count) - 1) << (first % NETS_PER_ENTRY)
    hosts = {}
    for (net24, list_id), bits in partial.items():
        index, bit = net24 // NETS_PER_ENTRY, 1 << (net24 % NETS_PER_ENTRY)
        entry = entries.get(index)
        if entry is not None and entry[2 * list_id] & bit:
            continue
        if entry is None:
            entries[index] = entry = [0, 0, 0, 0]
        if bits == _HOSTS_ALL_ONES:
            entry[2 * list_id] |= bit
        else:
            entry[2 * list_id + 1] |= bit
            hosts[(net24, list_id)] = bits
    return entries, hosts


def host_words(bits):
    """A 256-bit hosts bitmap as the four 64-bit words of struct src_hosts_value."""
    return tuple((bits >> (64 * word)) & _WORD_ALL_ONES for word in range(4))


def is_listed(entries, hosts, address, list_id):
    """Whether `address` (host-order int) is in a list, read the way the XDP program reads it
    (the unit tests compare this with the prefixes themselves)."""
    net24 = address >> 8
    entry = entries.get(net24 // NETS_PER_ENTRY)
    if entry is None:
        return False
    bit = 1 << (net24 % NETS_PER_ENTRY)
    if entry[2 * list_id] & bit:
        return True
    if entry[2 * list_id + 1] & bit:
        return bool((hosts.get((net24, list_id), 0) >> (address & 0xFF)) & 1)
    return False
