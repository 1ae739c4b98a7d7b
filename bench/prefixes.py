"""A large random deny list: many IPv4 prefixes of mixed length, none covering a test source.

Lengths are drawn the way big block lists look (mostly /24 and /32, some /16-/23, a handful of
/8-/15: a list with hundreds of /8s would deny most of the internet), with a fixed seed, so every
run loads the same list.
"""

from __future__ import annotations

import ipaddress
import random
import time

# prefix length -> weight
LENGTH_WEIGHTS = {length: 0.01 / 8 for length in range(8, 16)}          # /8-/15: 0.01% in all
LENGTH_WEIGHTS.update({length: 24.99 / 8 for length in range(16, 24)})  # /16-/23: 25%
LENGTH_WEIGHTS[24] = 35.0
LENGTH_WEIGHTS.update({length: 10.0 / 7 for length in range(25, 32)})   # /25-/31: 10%
LENGTH_WEIGHTS[32] = 30.0


def random_prefixes(count: int, avoid_addresses, seed: int = 20240607):
    """`count` distinct (prefix_length, network_as_int) none of which contains an avoided address."""
    rng = random.Random(seed)
    avoid = [int(ipaddress.IPv4Address(address)) for address in avoid_addresses]
    # For each prefix length, the networks of that length that hold an avoided address.
    forbidden = {32 - length: {address >> (32 - length) for address in avoid} for length in LENGTH_WEIGHTS}
    lengths = list(LENGTH_WEIGHTS)
    weights = [LENGTH_WEIGHTS[length] for length in lengths]
    found = set()
    started = time.monotonic()
    while len(found) < count:
        for length in rng.choices(lengths, weights, k=min(65536, 2 * (count - len(found)))):
            shift = 32 - length
            network = rng.getrandbits(32) >> shift << shift
            if network >> shift in forbidden[shift]:
                continue
            found.add((length, network))
            if len(found) == count:
                break
        if time.monotonic() - started > 120:
            raise RuntimeError("could not draw %d distinct prefixes" % count)
    return sorted(found)
