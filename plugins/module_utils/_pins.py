# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# MIT License (see https://opensource.org/licenses/MIT)
"""Where the collection pins its BPF programs and maps, and how to open them again.

One layout, used by every module (xdp_program and tc_program write it; edge_rules and
edge_stats_info read it)::

    <pin_root>/<iface>/program            the XDP program attached to <iface>
    <pin_root>/<iface>/maps/<map name>    each map of that program, by its C name
    <pin_root>/<iface>/tc_<direction>     a TC program on <iface> (ingress or egress)

``pin_root`` defaults to ``/sys/fs/bpf/anycast_edge``.  Pins are what makes kernel state
addressable across module runs: a module process exits, the pins keep the maps alive and
let the next run (or the agent) find them by name.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import socket

from ansible_collections.anycast.edge.plugins.module_utils._bpf import (
    BpfError,
    BpfMap,
    BpfProgram,
    Closing,
    ensure_bpffs,
    is_bpffs,
    unpin,
    xdp_query,
)

DEFAULT_PIN_ROOT = "/sys/fs/bpf/anycast_edge"
SYSTEM_BPFFS = "/sys/fs/bpf"
TC_DIRECTIONS = ("ingress", "egress")
# A pin made beside its final path before it is renamed over it (bpffs reserves dots in names
# for itself, hence not ".next").
STAGING_SUFFIX = "_next"


class PinError(Exception):
    """A pin the caller needs is missing or does not belong to the program pinned beside it.

    The message says what is missing and what to run to create it.
    """


def pin_dir(pin_root, iface):
    """``<pin_root>/<iface>``: everything pinned for one interface."""
    if not iface or "/" in iface or iface in (".", ".."):
        # An interface name becomes a path component: refuse anything that would escape it.
        raise ValueError("invalid interface name for a pin path: %r" % (iface,))
    return os.path.join(pin_root, iface)


def maps_dir(pin_root, iface):
    """``<pin_root>/<iface>/maps``: the XDP program's maps."""
    return os.path.join(pin_dir(pin_root, iface), "maps")


def map_pin_path(pin_root, iface, map_name):
    """``<pin_root>/<iface>/maps/<map_name>``."""
    if not map_name or "/" in map_name or map_name in (".", ".."):
        raise ValueError("invalid map name for a pin path: %r" % (map_name,))
    return os.path.join(maps_dir(pin_root, iface), map_name)


def program_pin_path(pin_root, iface):
    """``<pin_root>/<iface>/program``: the XDP program attached to ``iface``."""
    return os.path.join(pin_dir(pin_root, iface), "program")


def tc_pin_path(pin_root, iface, direction):
    """``<pin_root>/<iface>/tc_<direction>``: our TC program on that hook."""
    if direction not in TC_DIRECTIONS:
        raise ValueError("TC direction must be one of %s, not %r"
                         % (", ".join(TC_DIRECTIONS), direction))
    return os.path.join(pin_dir(pin_root, iface), "tc_" + direction)


class StagedPins(object):
    """Pins staged beside their final paths, then moved into place together.

    ``stage(obj, path)`` pins a BpfMap or BpfProgram at ``<path>_next`` (replacing a staging
    pin an interrupted run left); ``commit()`` renames every staged pin over its path, so a
    reader opening a path finds the old object or the new one, never nothing; ``abort()``
    removes the staged pins and leaves the old ones as they were.  Stage everything that can
    fail (pinning, then the attach) before committing: after it only renames remain.
    """

    def __init__(self):
        self.paths = []

    def stage(self, bpf_object, path):
        staging = path + STAGING_SUFFIX
        unpin(staging)
        bpf_object.pin(staging)
        self.paths.append(path)

    def commit(self):
        for path in self.paths:
            os.rename(path + STAGING_SUFFIX, path)
        self.paths = []

    def abort(self):
        for path in self.paths:
            unpin(path + STAGING_SUFFIX)
        self.paths = []


def is_staging(name):
    """True for the name of a staging pin (``<name>_next``), which is not a map of its own."""
    return name.endswith(STAGING_SUFFIX)


def remove_empty_dirs(pin_root, iface):
    """Remove ``<pin_root>/<iface>/maps`` and ``<pin_root>/<iface>`` if nothing is left in them."""
    for path in (maps_dir(pin_root, iface), pin_dir(pin_root, iface)):
        try:
            os.rmdir(path)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY):
                raise


def under_system_bpffs(path):
    """True if ``path`` is ``/sys/fs/bpf`` or inside it (where a bpffs is expected)."""
    path = os.path.abspath(path)
    return path == SYSTEM_BPFFS or path.startswith(SYSTEM_BPFFS + "/")


def prepare_pin_root(pin_root, may_mount, check_mode):
    """Make sure pins can be read and made under ``pin_root``.

    Returns ``(usable, mounted)``: ``usable`` is True if ``pin_root`` is on a bpffs now;
    ``mounted`` is True if this call mounted one at ``/sys/fs/bpf`` (or, in check mode, would
    have).  A ``pin_root`` under ``/sys/fs/bpf`` gets a bpffs mounted there when
    ``may_mount`` (a fresh Debian boot has none); any other folder must already be on a
    bpffs, else PinError - mounting file systems on arbitrary folders is not a side effect
    a module should have.
    """
    if is_bpffs(pin_root):
        return True, False
    if not under_system_bpffs(pin_root):
        raise PinError("pin_root: %s is not on a bpf filesystem; mount one there "
                       "(mount -t bpf bpf DIR) or use a folder under %s" % (pin_root, SYSTEM_BPFFS))
    if not may_mount:
        return False, False
    if check_mode:
        return False, True
    try:
        return True, ensure_bpffs(SYSTEM_BPFFS)
    except BpfError as exc:
        raise PinError("pin_root: cannot mount a bpf filesystem at %s: %s" % (SYSTEM_BPFFS, exc))


class PinnedMaps(dict, Closing):
    """``{map name: BpfMap}`` opened from pins; ``close()`` (or ``with``) closes them all."""

    def close(self):
        for bpf_map in self.values():
            bpf_map.close()


def open_map_folder(folder):
    """Every map pinned in ``folder`` (a staging pin is not a map of its own), as PinnedMaps;
    empty when the folder does not exist."""
    opened = PinnedMaps()
    if not os.path.isdir(folder):
        return opened
    try:
        for name in sorted(os.listdir(folder)):
            if not is_staging(name):
                opened[name] = BpfMap.from_pin(os.path.join(folder, name))
    except BaseException:
        opened.close()
        raise
    return opened


def _open_pin(kind, path, missing, failed):
    """``kind.from_pin(path)`` (BpfMap or BpfProgram); PinError ``missing`` when nothing is pinned
    there, else ``failed: <why>``."""
    try:
        return kind.from_pin(path)
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            raise PinError(missing)
        raise PinError("%s: %s" % (failed, exc))


def open_pinned_maps(pin_root, iface, names, unpinned=None):
    """Open the maps ``names`` of the XDP program pinned for ``iface``.

    Returns a PinnedMaps.  Raises PinError, naming the interface and the path, when the
    program is not pinned (xdp_program has not run for this interface, or the bpffs was
    remounted), when a map pin is missing, or when a pinned map is not one the pinned
    program uses (a half-finished upgrade or a stray pin): writing rules into a map the
    running program does not read would be a silent no-op.

    ``unpinned`` (a list) is for check mode ahead of an upgrade, whose new program brings maps
    the running one lacks: a map with no pin is then left out of the result and its name
    appended to ``unpinned`` instead of raising. The other errors still raise.
    """
    program_path = program_pin_path(pin_root, iface)
    program = _open_pin(BpfProgram, program_path,
                        "no XDP program is pinned for interface %s (%s does not exist): "
                        "attach it with anycast.edge.xdp_program first" % (iface, program_path),
                        "cannot open the XDP program pinned for interface %s" % iface)
    try:
        program_map_ids = set(program.info().map_ids)
    finally:
        program.close()

    opened = PinnedMaps()
    try:
        for name in names:
            path = map_pin_path(pin_root, iface, name)
            if unpinned is not None and not os.path.exists(path):
                unpinned.append(name)
                continue
            bpf_map = opened[name] = _open_pin(
                BpfMap, path,
                "map %s of the XDP program on interface %s is not pinned (%s does not exist): "
                "rerun anycast.edge.xdp_program" % (name, iface, path),
                "cannot open map %s pinned at %s" % (name, path))
            if bpf_map.id not in program_map_ids:
                raise PinError("the map pinned at %s is not used by the program pinned at %s "
                               "(stale pin): rerun anycast.edge.xdp_program" % (path, program_path))
    except BaseException:
        opened.close()
        raise
    return opened


def pinned_program_attached(pin_root, iface):
    """True if the XDP program pinned for ``iface`` is the one attached to it (any mode).

    False is evidence (nothing attached, or another program). Raises PinError (no pin) or
    OSError / BpfError (no such interface, no permission) when it cannot tell: callers treat
    that as "unknown", never as "not attached".
    """
    attached = xdp_query(socket.if_nametoindex(iface))
    attached_ids = set([attached.prog_id, attached.drv_prog_id, attached.skb_prog_id, attached.hw_prog_id]) - set([0])
    if not attached_ids:
        return False
    try:
        program = BpfProgram.from_pin(program_pin_path(pin_root, iface))
    except BpfError as exc:
        raise PinError("cannot open the XDP program pinned for %s: %s" % (iface, exc))
    try:
        return program.id in attached_ids
    finally:
        program.close()
