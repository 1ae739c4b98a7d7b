"""Random deny lists, as an operator's looks: what the edge_rules bench and tests converge."""

from __future__ import annotations

import random


def random_prefixes(count: int, seed: int, shortest: int = 12, avoid_first_octets=()) -> list:
    """`count` distinct random IPv4 CIDRs (/shortest../32, host bits clear), sorted as text; none
    whose first octet is in `avoid_first_octets` (e.g. clear of a test lab's own addresses)."""
    rnd = random.Random(seed)
    prefixes = set()
    while len(prefixes) < count:
        length = rnd.randint(shortest, 32)
        address = rnd.getrandbits(32) & (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF
        if address >> 24 in avoid_first_octets:
            continue
        prefixes.add("%d.%d.%d.%d/%d" % (address >> 24, address >> 16 & 255, address >> 8 & 255, address & 255,
                                         length))
    return sorted(prefixes)
