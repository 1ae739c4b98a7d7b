"""The agent's view of the XDP program's pinned maps (``<pin_root>/<iface>/maps/<name>``).

Maps are opened afresh for every use (a refresh, a scrape): opening a pin is one syscall, and it
means the agent always talks to the maps of the program pinned *now*. xdp_program replaces pins
when an upgrade changes a map's layout; a long-lived file descriptor would keep writing into the
old, detached map without any error.
"""

from __future__ import annotations

import time

from ansible_collections.anycast.edge.plugins.module_utils import _edge_abi as abi
from ansible_collections.anycast.edge.plugins.module_utils._pins import (
    PinError,
    open_pinned_maps,
    pinned_program_attached,
)

__all__ = ["PinError", "EdgeMaps", "dataplane_attached"]


class EdgeMaps:
    """Opens the pinned maps of the program on ``iface`` under ``pin_root``."""

    def __init__(self, pin_root: str, iface: str):
        self.pin_root = pin_root
        self.iface = iface

    def open(self, *names: str):
        """A PinnedMaps (context manager) of ``names``; PinError if the program or a map is not pinned."""
        return open_pinned_maps(self.pin_root, self.iface, names)

    def write_a2s_cache(self, service_id: int, payload: bytes, updated_ns: int | None = None,
                        kind: str = "info") -> None:
        """Store an A2S reply (the whole UDP payload) as a service's cache entry of ``kind``
        (_edge_abi.A2S_KINDS: "info", "player", "rules").

        One map update replaces the whole entry, so the XDP program never serves half of it.
        ``updated_ns`` is CLOCK_MONOTONIC, the clock bpf_ktime_get_ns() reads.
        """
        entry = abi.pack_a2s_cache_entry(payload, time.monotonic_ns() if updated_ns is None else updated_ns)
        with self.open("edge_a2s_cache") as maps:
            maps["edge_a2s_cache"].update(abi.pack_a2s_cache_key(service_id, kind), entry)

    def read_a2s_cache(self, service_id: int, kind: str = "info"):
        """(updated_ns, payload) of a service's cache entry of ``kind``, or None."""
        with self.open("edge_a2s_cache") as maps:
            raw = maps["edge_a2s_cache"].lookup(abi.pack_a2s_cache_key(service_id, kind))
        if raw is None:
            return None
        updated_ns, length, dummy, payload = abi.A2S_CACHE_ENTRY.unpack(raw)
        return updated_ns, payload[:length]


def dataplane_attached(pin_root: str, iface: str) -> bool:
    """True if the program pinned for ``iface`` is the one attached to it (XDP, any mode).

    False is evidence (nothing attached, or another program). Raises PinError / OSError /
    BpfError when the agent cannot tell (no pin, no such interface, no permission): the caller
    treats that as "unknown", never as "down". (_pins.pinned_program_attached, which
    edge_status_info reads too.)
    """
    return pinned_program_attached(pin_root, iface)
