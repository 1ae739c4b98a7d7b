# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Hand-made bans: an operator's temporary ban (or its lift) of addresses and prefixes, written
into ``edge_sources`` the way XDP keeps its own bans (``ban_until_ns`` of the source's one entry).

One home for both writers: the ``edge_ban`` module (a POP without the agent's control socket)
and the agent (``anycast_edge_agent.control``: the same write, then published to the fleet).

- ``resolve`` checks a request and expands prefixes into addresses (``edge_sources`` is keyed
  by address: XDP's ban check is the lookup it already makes for every source); each problem
  names the variable path and the value.
- ``plan_ban`` / ``plan_lift`` say which addresses a write would change (pure); ``write_bans``
  / ``lift_bans`` write them. A ban never shortens a longer one already there (XDP's own, or
  an earlier hand-made one); a lift ends any ban of the address, whoever made it.

Times: a request carries its end as CLOCK_REALTIME (the same instant on every POP, as the
fleet's clocks agree); the map holds CLOCK_MONOTONIC, the clock XDP reads.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import time

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi

NS = 10 ** 9
# The most addresses one request may name (prefixes expanded): a /20. Each is one edge_sources
# entry (an LRU of EDGE_MAX_SOURCES), and a fleet-wide ban is one message per address, which
# the other POPs import within their per-POP burst (fleet_sync import_burst_per_pop, 5,000).
DEFAULT_MAX_ADDRESSES = 4096
# The longest hand-made ban: a week. (The fleet's bus carries a ban for at most its max_age_sec.)
MAX_DURATION_SEC = 7 * 86400
# A ban that already ends within this of the asked end is the same ban: the REALTIME -> MONOTONIC
# conversion reads two clocks, and a second run of the same request must change nothing.
SAME_END_SLACK_NS = NS


class BanRequestError(ValueError):
    """A request that cannot be done; ``problems`` lists each as 'path: value: why'."""

    def __init__(self, problems):
        ValueError.__init__(self, "; ".join(problems))
        self.problems = problems


def realtime_offset_ns():
    """CLOCK_REALTIME - CLOCK_MONOTONIC (the clock bpf_ktime_get_ns() reads), now."""
    return time.time_ns() - time.monotonic_ns()


def _show(value):
    return repr(value) if not isinstance(value, str) else "'%s'" % value


def resolve(addresses, variable="addresses", max_addresses=DEFAULT_MAX_ADDRESSES):
    """The sorted, distinct IPv4 addresses that ``addresses`` (a list of addresses and CIDR
    prefixes) names. Raises BanRequestError listing every problem, each with its path
    (``variable[index]``) and value."""
    problems = []
    if isinstance(addresses, str) or not isinstance(addresses, (list, tuple)):
        raise BanRequestError(["%s: %s: must be a list of IPv4 addresses or prefixes" % (variable, _show(addresses))])
    if not addresses:
        raise BanRequestError(["%s: []: names no address" % variable])
    found = set()
    for index, item in enumerate(addresses):
        path = "%s[%d]" % (variable, index)
        try:
            network = ipaddress.IPv4Network(str(item).strip(), strict=True)
        except ValueError as exc:
            reason = "has host bits set (%s)" % exc if "host bits" in str(exc) else "is not an IPv4 address or prefix"
            problems.append("%s: %s: %s" % (path, _show(item), reason))
            continue
        if network.is_multicast or network.is_loopback or network.is_unspecified or network.prefixlen < 8 \
                or network.network_address == ipaddress.IPv4Address("255.255.255.255"):
            problems.append("%s: %s: not a unicast source a ban could be about" % (path, _show(item)))
            continue
        if network.num_addresses > max_addresses:
            problems.append("%s: %s: %d addresses, more than the %d one request may ban (a /%d); split it or "
                            "put the prefix on the deny list (anycast_edge_filters.deny)"
                            % (path, _show(item), network.num_addresses, max_addresses,
                               32 - (max_addresses.bit_length() - 1)))
            continue
        found.update(str(address) for address in network)
    if not problems and len(found) > max_addresses:
        problems.append("%s: %d addresses in all, more than the %d one request may ban" % (variable, len(found),
                                                                                           max_addresses))
    if problems:
        raise BanRequestError(problems)
    return sorted(found, key=ipaddress.IPv4Address)


def check_duration(duration, variable="duration"):
    """``duration`` (seconds) as an int in 1..MAX_DURATION_SEC; BanRequestError naming it otherwise."""
    try:
        seconds = int(str(duration).strip()) if not isinstance(duration, bool) else None
    except ValueError:
        seconds = None
    if seconds is None or not 1 <= seconds <= MAX_DURATION_SEC:
        raise BanRequestError(["%s: %s: must be a whole number of seconds, 1 to %d (a week)"
                               % (variable, _show(duration), MAX_DURATION_SEC)])
    return seconds


def check_expires_at(expires_at, variable="expires_at", now=None, past_ok=False):
    """``expires_at`` (Unix time, seconds) as CLOCK_REALTIME ns: in the future (or, with
    ``past_ok``, the past: an end fixed on the controller may have passed by the time a POP
    runs), at most MAX_DURATION_SEC away; BanRequestError naming it otherwise."""
    now = time.time() if now is None else now
    try:
        seconds = float(str(expires_at).strip()) if not isinstance(expires_at, bool) else None
    except ValueError:
        seconds = None
    if seconds is None or not (past_ok or now < seconds) or seconds > now + MAX_DURATION_SEC:
        raise BanRequestError(["%s: %s: must be a Unix time (seconds) after now (%.0f) and within a week of it"
                               % (variable, _show(expires_at), now)])
    return int(seconds * NS)


def current_bans(sources_map, addresses):
    """{address: ban_until_ns (monotonic; 0 when the address has no entry)} of ``addresses``."""
    bans = {}
    for address in addresses:
        raw = sources_map.lookup(abi.ipv4(address))
        bans[address] = abi.SourceState.unpack(raw).ban_until_ns if raw is not None else 0
    return bans


def plan_ban(current, until_mono_ns):
    """The addresses of ``current`` ({address: ban_until_ns}) whose ban ends earlier than
    ``until_mono_ns`` (by more than SAME_END_SLACK_NS): those a ban until then changes."""
    return [address for address, until in current.items() if until < until_mono_ns - SAME_END_SLACK_NS]


def plan_lift(current, now_mono_ns):
    """The addresses of ``current`` banned now: those a lift changes."""
    return [address for address, until in current.items() if until > now_mono_ns]


def write_bans(sources_map, addresses, until_mono_ns):
    """Ban each address until ``until_mono_ns`` (monotonic), keeping the rest of its entry (its
    counters, its verified slots). An address without an entry gets one holding only the ban.
    Inverse: ``lift_bans``."""
    for address in addresses:
        key = abi.ipv4(address)
        raw = sources_map.lookup(key)
        state = abi.SourceState.unpack(raw) if raw is not None else abi.SourceState()
        # Read, then written whole: XDP's counts that land in between are lost (a few packets
        # of top-talker counters), never the ban.
        state.ban_until_ns = max(state.ban_until_ns, until_mono_ns)
        sources_map.update(key, state.pack())


def lift_bans(sources_map, addresses):
    """End the ban of each address (its entry stays, with its counters). Inverse: ``write_bans``."""
    for address in addresses:
        key = abi.ipv4(address)
        raw = sources_map.lookup(key)
        if raw is None:
            continue
        state = abi.SourceState.unpack(raw)
        state.ban_until_ns = 0
        sources_map.update(key, state.pack())
