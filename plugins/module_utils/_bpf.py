# -*- coding: utf-8 -*-
# Copyright: contributors to anycast.edge
# MIT License (see https://opensource.org/licenses/MIT)
"""The collection's one binding to libbpf (``libbpf.so.1``, via ctypes).

Everything that touches BPF objects, maps, programs, pins or XDP attachments
goes through this file, so that the rest of the collection never declares a
libbpf prototype or a kernel struct layout of its own.  It is written against
libbpf 1.1 (Debian 12); the struct layouts below are copied field by field from
``/usr/include/bpf/{bpf,libbpf}.h`` and ``linux/bpf.h`` of that version.

Overview::

    obj = BpfObject.open("xdp_edge.o", pin_root_path="/sys/fs/bpf/anycast_edge")
    obj.load()                          # verifier log is in the BpfError text
    prog = obj.program("xdp_edge")
    deny = obj.map("deny_v4")
    deny.update(key_bytes, value_bytes)
    prog.test_run(packet).retval        # BPF_PROG_TEST_RUN
    xdp_attach(ifindex, prog.fd, XDP_FLAGS_DRV_MODE, old_prog_fd=old.fd)

Keys and values are raw ``bytes``; callers pack them with ``struct`` using the
layout that ``BpfMap.btf_layout()`` reads from the object's BTF, so a map's
layout is defined once, in C.

Errors are raised as ``BpfError`` (an ``OSError``): ``errno`` is the kernel's
or libbpf's error number, the text names the operation and the object or map,
and for ``open``/``load`` it ends with what libbpf printed (verifier log
included).

Only the Python 3 standard library is used: this file runs on the POPs, as an
Ansible module_utils, where libbpf is installed but nothing else is.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import errno
import functools
import mmap
import operator
import os
import threading

# ---------------------------------------------------------------------------
# Constants (values from linux/bpf.h and linux/if_link.h)
# ---------------------------------------------------------------------------

#: Map update flags (``bpf_map_update_elem``).
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
BPF_F_LOCK = 4
BPF_F_MMAPABLE = 1 << 10

#: XDP attach flags.
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3
XDP_FLAGS_REPLACE = 1 << 4

#: ``XdpQuery.attach_mode`` values.
XDP_ATTACHED_NONE = 0
XDP_ATTACHED_DRV = 1
XDP_ATTACHED_SKB = 2
XDP_ATTACHED_HW = 3
XDP_ATTACHED_MULTI = 4

#: ``BPF_PROG_TEST_RUN`` flag: run an XDP program on live frames (kernel >= 5.18), whose
#: verdicts the kernel carries out (``run_live_frames``).
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
#: The largest batch of live frames the kernel takes (``TEST_XDP_MAX_BATCH``).
TEST_XDP_MAX_BATCH = 256

#: XDP verdicts (``TestRunResult.retval`` of an XDP program).
XDP_ABORTED = 0
XDP_DROP = 1
XDP_PASS = 2
XDP_TX = 3
XDP_REDIRECT = 4

#: TC verdicts (``TestRunResult.retval`` of a sched_cls program).
TC_ACT_OK = 0
TC_ACT_SHOT = 2

#: Program types (``ProgInfo.type``).
BPF_PROG_TYPE_SOCKET_FILTER = 1
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_PROG_TYPE_SCHED_ACT = 4
BPF_PROG_TYPE_XDP = 6

#: Map types (``MapInfo.type``, ``BpfMap.type``).
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PROG_ARRAY = 3
BPF_MAP_TYPE_PERF_EVENT_ARRAY = 4
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_MAP_TYPE_DEVMAP = 14
BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE = 21
BPF_MAP_TYPE_DEVMAP_HASH = 25
BPF_MAP_TYPE_RINGBUF = 27

#: Map types whose values exist once per possible CPU: lookups return (and
#: updates take) ``round_up(value_size, 8) * num_possible_cpus()`` bytes.
PERCPU_MAP_TYPES = frozenset((
    BPF_MAP_TYPE_PERCPU_HASH,
    BPF_MAP_TYPE_PERCPU_ARRAY,
    BPF_MAP_TYPE_LRU_PERCPU_HASH,
    BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE,
))

#: The kernel's internal "not supported" errno (not in Python's errno module).
#: The batch syscalls of map types without batch ops return it.
ENOTSUPP = 524

_BPF_OBJ_NAME_LEN = 16
_BPF_TAG_SIZE = 8
_LIBBPF_ERRNO_START = 4000
_LIBBPF_PRINT_WARN = 0
_LIBBPF_PRINT_INFO = 1
# Exception texts keep at most this much of libbpf's log (the verifier's
# reason is at the end of its log, so the tail is kept); ``BpfError.log``
# keeps all of it.
_LOG_TEXT_LIMIT = 32 * 1024

# BTF kinds (linux/btf.h).
_BTF_KIND_NAMES = {
    0: "unknown", 1: "int", 2: "ptr", 3: "array", 4: "struct", 5: "union",
    6: "enum", 7: "fwd", 8: "typedef", 9: "volatile", 10: "const",
    11: "restrict", 12: "func", 13: "func_proto", 14: "var", 15: "datasec",
    16: "float", 17: "decl_tag", 18: "type_tag", 19: "enum64",
}
_BTF_KIND_INT = 1
_BTF_KIND_PTR = 2
_BTF_KIND_ARRAY = 3
_BTF_KIND_STRUCT = 4
_BTF_KIND_UNION = 5
_BTF_KIND_ENUM = 6
_BTF_KIND_FWD = 7
_BTF_KIND_TYPEDEF = 8
_BTF_KIND_FLOAT = 16
_BTF_KIND_ENUM64 = 19
_BTF_QUALIFIER_KINDS = {9: "volatile", 10: "const", 11: "restrict", 18: ""}


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

def _strerror(err):
    """Text for a kernel errno or a libbpf-specific error number."""
    if err == ENOTSUPP:
        return "Operation not supported (ENOTSUPP)"
    if err >= _LIBBPF_ERRNO_START and _LIB is not None:
        buf = ctypes.create_string_buffer(256)
        _LIB.libbpf_strerror(err, buf, len(buf))
        return buf.value.decode("utf-8", "replace")
    return os.strerror(err)


class BpfError(OSError):
    """A BPF operation failed.

    Attributes:
        errno: the error number (kernel errno, ``ENOTSUPP`` = 524, or a
            libbpf error number >= 4000).
        operation: what was being done, e.g. ``"load BPF object"``.
        target: the object file, map, program or path it was done to.
        detail: extra explanation added by this binding, or None.
        log: list of the lines libbpf printed during the operation (warnings
            and info: the verifier log of a rejected program is here).
    """

    def __init__(self, err, operation, target=None, detail=None, log=None):
        self.operation = operation
        self.target = target
        self.detail = detail
        self.log = list(log or ())
        text = operation
        if target is not None:
            text += " " + str(target)
        text += ": " + _strerror(err)
        if detail:
            text += " (" + detail + ")"
        if self.log:
            log_text = "".join(self.log)
            if len(log_text) > _LOG_TEXT_LIMIT:
                log_text = "[... %d bytes cut ...]\n%s" % (
                    len(log_text) - _LOG_TEXT_LIMIT, log_text[-_LOG_TEXT_LIMIT:])
            text += "\n--- libbpf log ---\n" + log_text.rstrip("\n")
        super(BpfError, self).__init__(err, text)


# ---------------------------------------------------------------------------
# ctypes layouts of the libbpf / kernel structs used here (libbpf 1.1)
# ---------------------------------------------------------------------------

_u8 = ctypes.c_uint8
_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64
_size_t = ctypes.c_size_t
_vp = ctypes.c_void_p


class _OpenOpts(ctypes.Structure):
    """struct bpf_object_open_opts (libbpf.h)."""

    _fields_ = [
        ("sz", _size_t),
        ("object_name", ctypes.c_char_p),
        ("relaxed_maps", ctypes.c_bool),
        ("pin_root_path", ctypes.c_char_p),
        ("_removed_attach_prog_fd", _u32),
        ("kconfig", ctypes.c_char_p),
        ("btf_custom_path", ctypes.c_char_p),
        ("kernel_log_buf", _vp),
        ("kernel_log_size", _size_t),
        ("kernel_log_level", _u32),
    ]


class _TestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts (bpf.h)."""

    _fields_ = [
        ("sz", _size_t),
        ("data_in", _vp),
        ("data_out", _vp),
        ("data_size_in", _u32),
        ("data_size_out", _u32),
        ("ctx_in", _vp),
        ("ctx_out", _vp),
        ("ctx_size_in", _u32),
        ("ctx_size_out", _u32),
        ("retval", _u32),
        ("repeat", ctypes.c_int),
        ("duration", _u32),
        ("flags", _u32),
        ("cpu", _u32),
        ("batch_size", _u32),
    ]


class _BatchOpts(ctypes.Structure):
    """struct bpf_map_batch_opts (bpf.h)."""

    _fields_ = [("sz", _size_t), ("elem_flags", _u64), ("flags", _u64)]


class _XdpAttachOpts(ctypes.Structure):
    """struct bpf_xdp_attach_opts (libbpf.h)."""

    _fields_ = [("sz", _size_t), ("old_prog_fd", ctypes.c_int)]


class _XdpQueryOpts(ctypes.Structure):
    """struct bpf_xdp_query_opts (libbpf.h)."""

    _fields_ = [
        ("sz", _size_t),
        ("prog_id", _u32),
        ("drv_prog_id", _u32),
        ("hw_prog_id", _u32),
        ("skb_prog_id", _u32),
        ("attach_mode", _u8),
    ]


class _BpfMapInfo(ctypes.Structure):
    """struct bpf_map_info (linux/bpf.h)."""

    _fields_ = [
        ("type", _u32),
        ("id", _u32),
        ("key_size", _u32),
        ("value_size", _u32),
        ("max_entries", _u32),
        ("map_flags", _u32),
        ("name", ctypes.c_char * _BPF_OBJ_NAME_LEN),
        ("ifindex", _u32),
        ("btf_vmlinux_value_type_id", _u32),
        ("netns_dev", _u64),
        ("netns_ino", _u64),
        ("btf_id", _u32),
        ("btf_key_type_id", _u32),
        ("btf_value_type_id", _u32),
        ("_pad", _u32),
        ("map_extra", _u64),
    ]


class _BpfProgInfo(ctypes.Structure):
    """struct bpf_prog_info (linux/bpf.h)."""

    _fields_ = [
        ("type", _u32),
        ("id", _u32),
        ("tag", _u8 * _BPF_TAG_SIZE),
        ("jited_prog_len", _u32),
        ("xlated_prog_len", _u32),
        ("jited_prog_insns", _u64),
        ("xlated_prog_insns", _u64),
        ("load_time", _u64),
        ("created_by_uid", _u32),
        ("nr_map_ids", _u32),
        ("map_ids", _u64),
        ("name", ctypes.c_char * _BPF_OBJ_NAME_LEN),
        ("ifindex", _u32),
        ("gpl_compatible_bits", _u32),
        ("netns_dev", _u64),
        ("netns_ino", _u64),
        ("nr_jited_ksyms", _u32),
        ("nr_jited_func_lens", _u32),
        ("jited_ksyms", _u64),
        ("jited_func_lens", _u64),
        ("btf_id", _u32),
        ("func_info_rec_size", _u32),
        ("func_info", _u64),
        ("nr_func_info", _u32),
        ("nr_line_info", _u32),
        ("line_info", _u64),
        ("jited_line_info", _u64),
        ("nr_jited_line_info", _u32),
        ("line_info_rec_size", _u32),
        ("jited_line_info_rec_size", _u32),
        ("nr_prog_tags", _u32),
        ("prog_tags", _u64),
        ("run_time_ns", _u64),
        ("run_cnt", _u64),
        ("recursion_misses", _u64),
        ("verified_insns", _u32),
        ("attach_btf_obj_id", _u32),
        ("attach_btf_id", _u32),
        ("_pad", _u32),
    ]


class _BtfTypeRaw(ctypes.Structure):
    """struct btf_type (linux/btf.h); kind-specific records follow it."""

    _fields_ = [("name_off", _u32), ("info", _u32), ("size_or_type", _u32)]


class _BtfMemberRaw(ctypes.Structure):
    """struct btf_member: follows a struct/union btf_type, vlen times."""

    _fields_ = [("name_off", _u32), ("type", _u32), ("offset", _u32)]


class _BtfArrayRaw(ctypes.Structure):
    """struct btf_array: follows an array btf_type."""

    _fields_ = [("type", _u32), ("index_type", _u32), ("nelems", _u32)]


# The libbpf print callback: int (*)(enum libbpf_print_level, const char *, va_list)
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, _vp)

# (name, restype, argtypes) of every libbpf function this file calls.
_PROTOTYPES = (
    ("libbpf_set_print", _vp, [_PRINT_FN]),
    ("libbpf_strerror", ctypes.c_int, [ctypes.c_int, ctypes.c_char_p, _size_t]),
    ("libbpf_num_possible_cpus", ctypes.c_int, []),
    ("bpf_object__open_file", _vp, [ctypes.c_char_p, ctypes.POINTER(_OpenOpts)]),
    ("bpf_object__load", ctypes.c_int, [_vp]),
    ("bpf_object__close", None, [_vp]),
    ("bpf_object__name", ctypes.c_char_p, [_vp]),
    ("bpf_object__btf", _vp, [_vp]),
    ("bpf_object__find_program_by_name", _vp, [_vp, ctypes.c_char_p]),
    ("bpf_object__next_program", _vp, [_vp, _vp]),
    ("bpf_object__find_map_by_name", _vp, [_vp, ctypes.c_char_p]),
    ("bpf_object__next_map", _vp, [_vp, _vp]),
    ("bpf_program__name", ctypes.c_char_p, [_vp]),
    ("bpf_program__section_name", ctypes.c_char_p, [_vp]),
    ("bpf_program__fd", ctypes.c_int, [_vp]),
    ("bpf_map__name", ctypes.c_char_p, [_vp]),
    ("bpf_map__fd", ctypes.c_int, [_vp]),
    ("bpf_map__reuse_fd", ctypes.c_int, [_vp, ctypes.c_int]),
    ("bpf_map__type", ctypes.c_int, [_vp]),
    ("bpf_map__key_size", _u32, [_vp]),
    ("bpf_map__value_size", _u32, [_vp]),
    ("bpf_map__max_entries", _u32, [_vp]),
    ("bpf_map__map_flags", _u32, [_vp]),
    ("bpf_map__btf_key_type_id", _u32, [_vp]),
    ("bpf_map__btf_value_type_id", _u32, [_vp]),
    ("bpf_map__is_internal", ctypes.c_bool, [_vp]),
    ("bpf_map_lookup_elem", ctypes.c_int, [ctypes.c_int, _vp, _vp]),
    ("bpf_map_update_elem", ctypes.c_int, [ctypes.c_int, _vp, _vp, _u64]),
    ("bpf_map_delete_elem", ctypes.c_int, [ctypes.c_int, _vp]),
    ("bpf_map_get_next_key", ctypes.c_int, [ctypes.c_int, _vp, _vp]),
    ("bpf_map_update_batch", ctypes.c_int,
     [ctypes.c_int, _vp, _vp, ctypes.POINTER(_u32), ctypes.POINTER(_BatchOpts)]),
    ("bpf_map_lookup_batch", ctypes.c_int,
     [ctypes.c_int, _vp, _vp, _vp, _vp, ctypes.POINTER(_u32), ctypes.POINTER(_BatchOpts)]),
    ("bpf_map_delete_batch", ctypes.c_int,
     [ctypes.c_int, _vp, ctypes.POINTER(_u32), ctypes.POINTER(_BatchOpts)]),
    ("bpf_obj_pin", ctypes.c_int, [ctypes.c_int, ctypes.c_char_p]),
    ("bpf_obj_get", ctypes.c_int, [ctypes.c_char_p]),
    # bpf_{prog,map}_get_info_by_fd only exist from libbpf 1.2 on.
    ("bpf_obj_get_info_by_fd", ctypes.c_int, [ctypes.c_int, _vp, ctypes.POINTER(_u32)]),
    ("bpf_prog_get_fd_by_id", ctypes.c_int, [_u32]),
    ("bpf_map_get_fd_by_id", ctypes.c_int, [_u32]),
    ("bpf_prog_test_run_opts", ctypes.c_int, [ctypes.c_int, ctypes.POINTER(_TestRunOpts)]),
    ("bpf_xdp_attach", ctypes.c_int,
     [ctypes.c_int, ctypes.c_int, _u32, ctypes.POINTER(_XdpAttachOpts)]),
    ("bpf_xdp_detach", ctypes.c_int, [ctypes.c_int, _u32, ctypes.POINTER(_XdpAttachOpts)]),
    ("bpf_xdp_query", ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_XdpQueryOpts)]),
    ("btf__load_from_kernel_by_id", _vp, [_u32]),
    ("btf__free", None, [_vp]),
    ("btf__type_by_id", _vp, [_vp, _u32]),
    ("btf__name_by_offset", ctypes.c_char_p, [_vp, _u32]),
    ("btf__resolve_size", ctypes.c_int64, [_vp, _u32]),
    ("btf__resolve_type", ctypes.c_int, [_vp, _u32]),
    ("btf__find_by_name_kind", ctypes.c_int32, [_vp, ctypes.c_char_p, _u32]),
    ("btf__find_by_name", ctypes.c_int32, [_vp, ctypes.c_char_p]),
)

LIBBPF_SONAME = "libbpf.so.1"

_LIB = None
_LIBC = None
_LIB_LOCK = threading.Lock()


# ---------------------------------------------------------------------------
# libbpf's log: captured per operation so errors can quote it
# ---------------------------------------------------------------------------

# One list per operation currently capturing (operations may nest).
_LOG_SINKS = []
_LOG_LOCK = threading.RLock()

# va_list is an array type on x86_64 and a >16-byte struct on aarch64: in both
# ABIs the callback receives a pointer, and a va_list can be copied with a
# plain memcpy (that is what va_copy does there).  Copying lets us measure the
# message with one vsnprintf and format it with a second.  Elsewhere we format
# once into a fixed buffer.
_VA_LIST_SIZE = {"x86_64": 24, "amd64": 24, "aarch64": 32, "arm64": 32}.get(
    os.uname()[4].lower())
_FALLBACK_MESSAGE_SIZE = 64 * 1024


def _format_va_list(fmt, va_list):
    if _VA_LIST_SIZE:
        copy = (_u64 * (_VA_LIST_SIZE // 8))()
        ctypes.memmove(copy, va_list, _VA_LIST_SIZE)
        needed = _LIBC.vsnprintf(None, 0, fmt, ctypes.cast(copy, _vp))
        size = max(needed, 0) + 1
    else:
        size = _FALLBACK_MESSAGE_SIZE
    buf = ctypes.create_string_buffer(size)
    _LIBC.vsnprintf(buf, size, fmt, va_list)
    return buf.value.decode("utf-8", "replace")


def _on_libbpf_print(level, fmt, va_list):
    # Debug chatter is dropped unformatted; warnings and info go to every
    # active capture.  Nothing may escape a ctypes callback.
    try:
        if level > _LIBBPF_PRINT_INFO or not _LOG_SINKS:
            return 0
        message = _format_va_list(fmt, va_list)
        for sink in _LOG_SINKS:
            sink.append(message)
    except Exception:  # pylint: disable=broad-except
        pass
    return 0


# Kept at module level: libbpf holds the raw pointer for the process's life.
_PRINT_CALLBACK = _PRINT_FN(_on_libbpf_print)


class _LibbpfLog(object):
    """Context manager: collect libbpf's messages while the block runs."""

    def __enter__(self):
        _LOG_LOCK.acquire()
        self.lines = []
        _LOG_SINKS.append(self.lines)
        return self.lines

    def __exit__(self, *exc):
        _LOG_SINKS.remove(self.lines)
        _LOG_LOCK.release()
        return False


def _lib():
    """Load libbpf once, declare the prototypes, install the print callback."""
    global _LIB, _LIBC  # pylint: disable=global-statement
    if _LIB is not None:
        return _LIB
    with _LIB_LOCK:
        if _LIB is None:
            try:
                lib = ctypes.CDLL(LIBBPF_SONAME, use_errno=True)
            except OSError as exc:
                raise BpfError(errno.ENOENT, "load shared library", LIBBPF_SONAME,
                               detail="%s; install the libbpf1 package" % exc)
            for name, restype, argtypes in _PROTOTYPES:
                func = getattr(lib, name)
                func.restype = restype
                func.argtypes = argtypes
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.vsnprintf.restype = ctypes.c_int
            libc.vsnprintf.argtypes = [ctypes.c_char_p, _size_t, ctypes.c_char_p, _vp]
            libc.mount.restype = ctypes.c_int
            libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                   ctypes.c_ulong, ctypes.c_char_p]
            _LIBC = libc
            lib.libbpf_set_print(_PRINT_CALLBACK)
            _LIB = lib
    return _LIB


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------

def _fspath(path):
    return os.fsencode(os.fspath(path))


def _check(ret, operation, target=None, log=None):
    """Raise BpfError for a negative libbpf return (libbpf 1.x returns -errno)."""
    if ret < 0:
        raise BpfError(-ret, operation, target, log=log)
    return ret


def _check_ptr(ptr, operation, target=None, log=None):
    """Raise BpfError for a NULL pointer return (errno says why)."""
    if not ptr:
        raise BpfError(ctypes.get_errno() or errno.EINVAL, operation, target, log=log)
    return ptr


def _decode(raw):
    return raw.decode("utf-8", "replace") if raw is not None else None


def _round_up8(size):
    return (size + 7) & ~7


_POSSIBLE_CPUS = None


def num_possible_cpus():
    """Number of possible CPUs: how many slots a per-CPU map value has."""
    global _POSSIBLE_CPUS  # pylint: disable=global-statement
    if _POSSIBLE_CPUS is None:
        _POSSIBLE_CPUS = _check(_lib().libbpf_num_possible_cpus(), "count possible CPUs")
    return _POSSIBLE_CPUS


# ---------------------------------------------------------------------------
# Info records
# ---------------------------------------------------------------------------

MapInfo = collections.namedtuple("MapInfo", [
    "id", "name", "type", "key_size", "value_size", "max_entries", "flags",
    "btf_id", "btf_key_type_id", "btf_value_type_id",
])
MapInfo.__doc__ = """What the kernel reports for a map (bpf_obj_get_info_by_fd).

``name`` is the kernel's copy: at most 15 characters."""

ProgInfo = collections.namedtuple("ProgInfo", [
    "id", "name", "tag", "type", "map_ids", "btf_id", "load_time_ns",
])
ProgInfo.__doc__ = """What the kernel reports for a program.

``tag`` is the kernel's 8-byte program tag as 16 hex digits (the same for the
same instructions and maps layout, so two loads of one object share it);
``map_ids`` the ids of the maps the program uses; ``name`` at most 15
characters; ``load_time_ns`` nanoseconds since boot."""

TestRunResult = collections.namedtuple("TestRunResult", [
    "retval", "data_out", "duration_ns", "ctx_out",
])
TestRunResult.__doc__ = """Outcome of BpfProgram.test_run: the program's return
value (XDP verdict), the packet as the program left it, the average run time
per repetition in ns, and the output context (bytes) or None."""


class XdpQuery(collections.namedtuple("XdpQuery", [
        "prog_id", "drv_prog_id", "hw_prog_id", "skb_prog_id", "attach_mode"])):
    """Which XDP programs are attached to an interface (0 = none)."""

    __slots__ = ()

    @property
    def attached_id(self):
        """The id of the XDP program that runs on the interface, whatever its mode (0: none)."""
        return self.drv_prog_id or self.skb_prog_id or self.hw_prog_id

    _MODE_NAMES = {
        XDP_ATTACHED_NONE: "none", XDP_ATTACHED_DRV: "drv", XDP_ATTACHED_SKB: "skb",
        XDP_ATTACHED_HW: "hw", XDP_ATTACHED_MULTI: "multi",
    }

    @property
    def mode(self):
        """``attach_mode`` as a word: none, drv, skb, hw or multi."""
        return self._MODE_NAMES.get(self.attach_mode, str(self.attach_mode))


BtfMember = collections.namedtuple("BtfMember", [
    "name", "offset", "size", "type_name", "bit_offset", "bit_size",
])
BtfMember.__doc__ = """One member of a struct/union read from BTF.

``offset`` and ``size`` are in bytes (``size`` of the member's type);
``bit_offset`` is the exact offset in bits and ``bit_size`` is non-zero only
for bitfields."""


class BtfLayout(collections.namedtuple("BtfLayout", ["type_name", "kind", "size", "members"])):
    """A type read from BTF: ``type_name`` as declared (``"struct lpm_v4_key"``,
    ``"__u32"``), ``kind`` of the type behind typedefs and qualifiers
    (``"struct"``, ``"int"``, ``"array"`` ...), ``size`` in bytes, and for
    structs and unions the ``members`` (list of BtfMember) in order."""

    __slots__ = ()

    def member(self, name):
        """The BtfMember called ``name``; KeyError if there is none."""
        for member in self.members:
            if member.name == name:
                return member
        raise KeyError("%s has no member %r" % (self.type_name, name))


def _obj_info(fd, info, operation, target):
    length = _u32(ctypes.sizeof(info))
    _check(_lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(length)),
           operation, target)
    return info


def map_info(fd):
    """MapInfo of the map behind ``fd``."""
    raw = _obj_info(fd, _BpfMapInfo(), "get map info of fd", fd)
    return MapInfo(
        id=raw.id, name=_decode(raw.name), type=raw.type, key_size=raw.key_size,
        value_size=raw.value_size, max_entries=raw.max_entries, flags=raw.map_flags,
        btf_id=raw.btf_id, btf_key_type_id=raw.btf_key_type_id,
        btf_value_type_id=raw.btf_value_type_id,
    )


def prog_info(fd):
    """ProgInfo of the program behind ``fd``."""
    raw = _obj_info(fd, _BpfProgInfo(), "get program info of fd", fd)
    map_ids = []
    if raw.nr_map_ids:
        # Second call with a buffer for the map ids; the kernel fills only
        # the fields whose pointers are set.
        count = raw.nr_map_ids
        ids = (_u32 * count)()
        again = _BpfProgInfo()
        again.nr_map_ids = count
        again.map_ids = ctypes.addressof(ids)
        _obj_info(fd, again, "get map ids of program fd", fd)
        map_ids = list(ids[:min(count, again.nr_map_ids)])
    return ProgInfo(
        id=raw.id, name=_decode(raw.name), tag=bytes(bytearray(raw.tag)).hex(),
        type=raw.type, map_ids=map_ids, btf_id=raw.btf_id, load_time_ns=raw.load_time,
    )


def _info_by_id(object_id, fd_by_id, what, info):
    """``info(fd)`` of the BPF object with id ``object_id``, opened by libbpf's ``fd_by_id`` for
    the time of the call."""
    fd = _check(getattr(_lib(), fd_by_id)(object_id), "open %s by id" % what, object_id)
    try:
        return info(fd)
    finally:
        os.close(fd)


def prog_info_by_id(prog_id):
    """ProgInfo of the loaded program with id ``prog_id`` (e.g. from xdp_query)."""
    return _info_by_id(prog_id, "bpf_prog_get_fd_by_id", "program", prog_info)


def map_info_by_id(map_id):
    """MapInfo of the map with id ``map_id`` (e.g. from ProgInfo.map_ids)."""
    return _info_by_id(map_id, "bpf_map_get_fd_by_id", "map", map_info)


# ---------------------------------------------------------------------------
# Pins and bpffs
# ---------------------------------------------------------------------------

def bpf_obj_get(path):
    """Open the pinned map/program/link at ``path``; returns a new fd the
    caller must ``os.close``."""
    return _check(_lib().bpf_obj_get(_fspath(path)), "open pinned object", os.fspath(path))


def _pin_fd(fd, path, what):
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent and not os.path.isdir(parent):
        os.makedirs(parent, mode=0o700)
    _check(_lib().bpf_obj_pin(fd, _fspath(path)), "pin " + what, path)


def unpin(path):
    """Remove the pin at ``path``; the object lives on while other fds,
    pins or attachments hold it.  Returns False if there was no pin."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _unescape_mount_field(field):
    # /proc/self/mounts escapes space, tab, newline and backslash as \ooo.
    out = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mount_fstype_of(path):
    """Filesystem type of the mount that contains ``path`` (longest prefix)."""
    path = os.path.realpath(path)
    best, best_type = "", None
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) < 3:
                continue
            mount_point = _unescape_mount_field(fields[1])
            prefix = mount_point.rstrip("/") + "/"
            if (path == mount_point or path.startswith(prefix) or mount_point == "/") \
                    and len(mount_point) >= len(best):
                best, best_type = mount_point, fields[2]
    return best_type


def is_bpffs(path):
    """True if ``path`` is on a bpf filesystem (pins can be made there).

    A path that does not exist yet counts as being where it would be made:
    on the mount that holds its nearest existing parent.  The collection's one
    bpffs check (pin roots, ``ensure_bpffs``).
    """
    return _mount_fstype_of(os.fspath(path)) == "bpf"


def ensure_bpffs(path="/sys/fs/bpf", mode=0o700):
    """Make sure ``path`` is on a bpf filesystem, mounting one there if not.

    A path inside an existing bpffs (e.g. ``/sys/fs/bpf/anycast_edge``) counts
    as mounted.  Returns True if this call mounted it, False if it already was.
    """
    path = os.fspath(path)
    if is_bpffs(path):
        # Already on a bpffs; a missing directory is created inside it.
        if not os.path.isdir(path):
            os.makedirs(path, mode=mode)
        return False
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o755)
    _lib()
    options = ("mode=%o" % mode).encode()
    if _LIBC.mount(b"bpf", _fspath(path), b"bpf", 0, options) != 0:
        raise BpfError(ctypes.get_errno(), "mount bpffs at", path)
    return True


# ---------------------------------------------------------------------------
# XDP attachment
# ---------------------------------------------------------------------------

def _xdp_attach_opts(old_prog_fd):
    opts = _XdpAttachOpts(sz=ctypes.sizeof(_XdpAttachOpts))
    # libbpf 1.1 reads old_prog_fd == 0 as "not given", so an old program
    # whose fd happens to be 0 cannot be named (fd 0 is stdin in practice).
    if old_prog_fd is not None:
        opts.old_prog_fd = old_prog_fd
    return opts


def xdp_attach(ifindex, prog_fd, flags=0, old_prog_fd=None):
    """Attach the XDP program ``prog_fd`` to interface ``ifindex``.

    ``flags`` picks the mode (``XDP_FLAGS_DRV_MODE``, ``XDP_FLAGS_SKB_MODE``;
    0 lets the kernel choose) and may add ``XDP_FLAGS_UPDATE_IF_NOEXIST``.
    With ``old_prog_fd`` the swap is atomic and conditional
    (``XDP_FLAGS_REPLACE``): it fails with EEXIST if the program attached now
    is not ``old_prog_fd``, and there is no moment without a program.
    """
    if old_prog_fd is not None:
        flags |= XDP_FLAGS_REPLACE
    opts = _xdp_attach_opts(old_prog_fd)
    with _LibbpfLog() as log:
        ret = _lib().bpf_xdp_attach(ifindex, prog_fd, flags, ctypes.byref(opts))
    _check(ret, "attach XDP program to ifindex", ifindex, log=log)


def xdp_detach(ifindex, flags=0, old_prog_fd=None):
    """Detach the XDP program from ``ifindex`` (in the mode ``flags`` says).

    With ``old_prog_fd`` only that program is detached (EEXIST if another
    one is attached), so a module never removes a program it does not own.
    """
    if old_prog_fd is not None:
        flags |= XDP_FLAGS_REPLACE
    opts = _xdp_attach_opts(old_prog_fd)
    with _LibbpfLog() as log:
        ret = _lib().bpf_xdp_detach(ifindex, flags, ctypes.byref(opts))
    _check(ret, "detach XDP program from ifindex", ifindex, log=log)


def xdp_query(ifindex, flags=0):
    """XdpQuery for ``ifindex``: attached program ids per mode and the mode."""
    opts = _XdpQueryOpts(sz=ctypes.sizeof(_XdpQueryOpts))
    _check(_lib().bpf_xdp_query(ifindex, flags, ctypes.byref(opts)),
           "query XDP programs of ifindex", ifindex)
    return XdpQuery(opts.prog_id, opts.drv_prog_id, opts.hw_prog_id, opts.skb_prog_id,
                    opts.attach_mode)


def xdp_md(data_len, ingress_ifindex=0, rx_queue_index=0):
    """A ``struct xdp_md`` for ``BpfProgram.test_run(ctx_in=...)``.

    The kernel wants ``data = 0`` and ``data_end = len(packet)``; an
    ``ingress_ifindex`` must name a device in the caller's network namespace
    and ``rx_queue_index`` one of its receive queues.
    """
    return bytes((_u32 * 6)(0, data_len, 0, ingress_ifindex, rx_queue_index, 0))


# ---------------------------------------------------------------------------
# BTF
# ---------------------------------------------------------------------------

def _btf_type(btf, type_id):
    ptr = _lib().btf__type_by_id(btf, type_id)
    if not ptr:
        raise BpfError(errno.ENOENT, "find BTF type id", type_id)
    return ptr, _BtfTypeRaw.from_address(ptr)


def _btf_kind(raw):
    return (raw.info >> 24) & 0x1f


def _btf_name(btf, raw):
    return _decode(_lib().btf__name_by_offset(btf, raw.name_off)) or ""


def _btf_type_name(btf, type_id, depth=0):
    """C-like name of a BTF type: ``__u32``, ``struct key``, ``__u8[4]``."""
    if type_id == 0:
        return "void"
    if depth > 32:
        return "?"
    ptr, raw = _btf_type(btf, type_id)
    kind = _btf_kind(raw)
    name = _btf_name(btf, raw)
    if kind in (_BTF_KIND_INT, _BTF_KIND_FLOAT, _BTF_KIND_TYPEDEF):
        return name
    if kind in (_BTF_KIND_STRUCT, _BTF_KIND_UNION, _BTF_KIND_ENUM, _BTF_KIND_ENUM64,
                _BTF_KIND_FWD):
        keyword = {_BTF_KIND_UNION: "union", _BTF_KIND_ENUM: "enum",
                   _BTF_KIND_ENUM64: "enum"}.get(kind, "struct")
        if kind == _BTF_KIND_FWD and raw.info >> 31:
            keyword = "union"
        return "%s %s" % (keyword, name or "(anon)")
    if kind == _BTF_KIND_PTR:
        return _btf_type_name(btf, raw.size_or_type, depth + 1) + " *"
    if kind == _BTF_KIND_ARRAY:
        array = _BtfArrayRaw.from_address(ptr + ctypes.sizeof(_BtfTypeRaw))
        return "%s[%d]" % (_btf_type_name(btf, array.type, depth + 1), array.nelems)
    if kind in _BTF_QUALIFIER_KINDS:
        inner = _btf_type_name(btf, raw.size_or_type, depth + 1)
        qualifier = _BTF_QUALIFIER_KINDS[kind]
        return "%s %s" % (qualifier, inner) if qualifier else inner
    return name or _BTF_KIND_NAMES.get(kind, "?")


def _btf_layout(btf, type_id):
    """BtfLayout of BTF type ``type_id`` (None for id 0)."""
    if not type_id:
        return None
    lib = _lib()
    type_name = _btf_type_name(btf, type_id)
    resolved_id = _check(lib.btf__resolve_type(btf, type_id), "resolve BTF type", type_name)
    size = _check(lib.btf__resolve_size(btf, type_id), "size BTF type", type_name)
    ptr, raw = _btf_type(btf, resolved_id)
    kind = _btf_kind(raw)
    members = []
    if kind in (_BTF_KIND_STRUCT, _BTF_KIND_UNION):
        vlen = raw.info & 0xffff
        has_bitfields = bool(raw.info >> 31)
        records = (_BtfMemberRaw * vlen).from_address(ptr + ctypes.sizeof(_BtfTypeRaw))
        for record in records:
            if has_bitfields:
                bit_offset, bit_size = record.offset & 0xffffff, record.offset >> 24
            else:
                bit_offset, bit_size = record.offset, 0
            members.append(BtfMember(
                name=_decode(lib.btf__name_by_offset(btf, record.name_off)) or "",
                offset=bit_offset // 8,
                size=_check(lib.btf__resolve_size(btf, record.type), "size BTF member of",
                            type_name),
                type_name=_btf_type_name(btf, record.type),
                bit_offset=bit_offset,
                bit_size=bit_size,
            ))
    return BtfLayout(type_name, _BTF_KIND_NAMES.get(kind, str(kind)), size, members)


# ---------------------------------------------------------------------------
# Maps and programs
# ---------------------------------------------------------------------------

def _bpf_fd_kind(fd):
    """"map", "prog", "link" ... for a BPF fd, "other" for any other fd, None
    if /proc cannot tell."""
    try:
        target = os.readlink("/proc/self/fd/%d" % fd)
    except OSError:
        return None
    if target.startswith("anon_inode:bpf-"):
        return target[len("anon_inode:bpf-"):]
    return "other"


class Closing(object):
    """What holds kernel or libbpf resources: released by ``close()``, at the
    end of a ``with`` block, or (as a last resort) when garbage-collected."""

    def close(self):
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            self.close()
        except Exception:  # pylint: disable=broad-except
            pass


class _FdHolder(Closing):
    """Base of BpfMap/BpfProgram: an fd owned either by a BpfObject (its
    libbpf handle) or by this instance (opened from a pin, an id or a dup)."""

    _owned_fd = None
    _noun = None          # "map" or "program", in its errors
    _libbpf_fd = None     # libbpf's getters of a member of an object: its fd, its name
    _libbpf_name = None

    def _live_ptr(self):
        raise NotImplementedError

    def info(self):
        raise NotImplementedError

    @property
    def name(self):
        """Full name for members of an object (a program's function name); the kernel's (<= 15
        chars) otherwise."""
        ptr = self._live_ptr()
        if ptr is not None:
            return _decode(getattr(_lib(), self._libbpf_name)(ptr))
        return self.info().name

    @property
    def fd(self):
        """The map's or program's fd (BpfError EBADF before its object is loaded)."""
        ptr = self._live_ptr()
        if ptr is None:
            if self._owned_fd is None:
                raise BpfError(errno.EBADF, "use " + self._noun, detail="closed")
            return self._owned_fd
        fd = getattr(_lib(), self._libbpf_fd)(ptr)
        if fd < 0:
            raise BpfError(errno.EBADF, "use " + self._noun, self.name,
                           detail="object not loaded yet")
        return fd

    def close(self):
        """Close the fd this instance owns (no-op for object members: they
        close with their BpfObject)."""
        fd, self._owned_fd = self._owned_fd, None
        if fd is not None:
            os.close(fd)


def _map_attribute(info_field, libbpf_getter, doc):
    """A BpfMap property: what libbpf says before the map is loaded, the kernel's map info after
    (BpfMap._attr)."""
    return property(lambda bpf_map: bpf_map._attr(info_field, libbpf_getter), doc=doc)


class BpfMap(_FdHolder):
    """A BPF map: a member of a BpfObject, or opened from a pin, an fd or an id.

    Keys and values are ``bytes`` of exactly ``key_size`` and
    ``value_buffer_size`` bytes (ValueError otherwise).  For per-CPU maps a
    value buffer holds every possible CPU's value, each padded to 8 bytes: see
    ``lookup_percpu``/``update_percpu``/``split_percpu``.
    """

    def __init__(self, owner=None, map_ptr=None, fd=None):
        """Use BpfObject.map(), from_pin(), from_fd() or from_id() instead."""
        self._owner = owner
        self._map_ptr = map_ptr
        self._owned_fd = fd
        self._info = None
        self._batch_unsupported = set()

    _noun = "map"
    _libbpf_fd = "bpf_map__fd"
    _libbpf_name = "bpf_map__name"

    # -- construction -----------------------------------------------------

    @classmethod
    def from_pin(cls, path):
        """Open the map pinned at ``path`` (the instance owns the new fd)."""
        return cls(fd=bpf_obj_get(path))._checked_is_map(path)

    @classmethod
    def from_fd(cls, fd):
        """Wrap a duplicate of ``fd``; the caller keeps (and closes) ``fd``."""
        return cls(fd=os.dup(fd))._checked_is_map(fd)

    @classmethod
    def from_id(cls, map_id):
        """Open the map with kernel id ``map_id``."""
        fd = _check(_lib().bpf_map_get_fd_by_id(map_id), "open map by id", map_id)
        return cls(fd=fd)

    def _checked_is_map(self, origin):
        # bpf_obj_get_info_by_fd answers for any BPF fd (a program's info
        # would be read as a map's), so ask /proc what the fd is.
        kind = _bpf_fd_kind(self._owned_fd)
        if kind not in ("map", None):
            self.close()
            raise BpfError(errno.EINVAL, "open map", origin, detail="it is a BPF " + kind)
        return self

    # -- identity ---------------------------------------------------------

    def _live_ptr(self):
        if self._map_ptr is None:
            return None
        if self._owner is None or self._owner.closed:
            raise BpfError(errno.EBADF, "use map", self._map_ptr,
                           detail="its BpfObject is closed")
        return self._map_ptr

    def _has_fd(self):
        ptr = self._live_ptr()
        return self._owned_fd is not None if ptr is None else _lib().bpf_map__fd(ptr) >= 0

    def info(self):
        """MapInfo from the kernel (cached: the fields never change)."""
        if self._info is None:
            self._info = map_info(self.fd)
        return self._info

    def _attr(self, info_field, libbpf_getter):
        # Before load only libbpf knows the definition; afterwards (and for
        # maps opened from a pin) the kernel is the authority.
        ptr = self._live_ptr()
        if ptr is not None and not self._has_fd():
            return getattr(_lib(), libbpf_getter)(ptr)
        return getattr(self.info(), info_field)

    @property
    def id(self):
        """Kernel map id."""
        return self.info().id

    type = _map_attribute("type", "bpf_map__type", "Map type (``BPF_MAP_TYPE_*``).")
    key_size = _map_attribute("key_size", "bpf_map__key_size", "Size of one key.")
    value_size = _map_attribute("value_size", "bpf_map__value_size",
                                "Size of one value (one CPU's value for per-CPU maps).")
    max_entries = _map_attribute("max_entries", "bpf_map__max_entries", "How many entries the map holds at most.")
    flags = _map_attribute("flags", "bpf_map__map_flags", "Map flags (``BPF_F_*``, e.g. BPF_F_NO_PREALLOC = 1).")

    @property
    def is_percpu(self):
        return self.type in PERCPU_MAP_TYPES

    @property
    def value_buffer_size(self):
        """Bytes of a value as lookups return it and updates take it."""
        if self.is_percpu:
            return _round_up8(self.value_size) * num_possible_cpus()
        return self.value_size

    def __repr__(self):
        try:
            return "<BpfMap %s>" % self.name
        except BpfError:
            return "<BpfMap (closed)>"

    # -- setup before load ------------------------------------------------

    def reuse_fd(self, fd, check_compatible=True):
        """Make the object use the existing map ``fd`` instead of creating
        this map at load (keeps its entries across a program upgrade).

        Call before ``BpfObject.load()``.  libbpf duplicates ``fd``; the
        caller still owns it.  With ``check_compatible`` the existing map
        must match this definition (type, key/value size, max_entries,
        flags) — libbpf 1.1 itself does not check on this path.
        """
        ptr = self._live_ptr()
        if ptr is None:
            raise BpfError(errno.EINVAL, "reuse fd for map", detail="not an object's map")
        if check_compatible:
            existing = map_info(fd)
            lib = _lib()
            wanted = MapInfo(
                id=existing.id, name=existing.name, type=lib.bpf_map__type(ptr),
                key_size=lib.bpf_map__key_size(ptr), value_size=lib.bpf_map__value_size(ptr),
                max_entries=lib.bpf_map__max_entries(ptr), flags=lib.bpf_map__map_flags(ptr),
                btf_id=existing.btf_id, btf_key_type_id=existing.btf_key_type_id,
                btf_value_type_id=existing.btf_value_type_id,
            )
            fields = ("type", "key_size", "value_size", "max_entries", "flags")
            diffs = ["%s %s != %s" % (f, getattr(existing, f), getattr(wanted, f))
                     for f in fields if getattr(existing, f) != getattr(wanted, f)]
            if diffs:
                raise BpfError(errno.EINVAL, "reuse fd for map", self.name,
                               detail="incompatible existing map: " + ", ".join(diffs))
        with _LibbpfLog() as log:
            ret = _lib().bpf_map__reuse_fd(ptr, fd)
        _check(ret, "reuse fd for map", self.name, log=log)
        self._info = None

    def reuse_pin(self, path, check_compatible=True):
        """``reuse_fd`` with the map pinned at ``path``."""
        fd = bpf_obj_get(path)
        try:
            self.reuse_fd(fd, check_compatible=check_compatible)
        finally:
            os.close(fd)

    # -- pinning ----------------------------------------------------------

    def pin(self, path):
        """Pin the map at ``path`` (on a bpffs; parent directories are
        created).  EEXIST if something is pinned there already."""
        _pin_fd(self.fd, path, "map " + self.name)

    # -- element access ---------------------------------------------------

    def _key_buf(self, key):
        key = bytes(key)
        if len(key) != self.key_size:
            raise ValueError("map %s: key is %d bytes, the map's keys are %d"
                             % (self.name, len(key), self.key_size))
        return ctypes.create_string_buffer(key, len(key))

    def _value_buf(self, value):
        value = bytes(value)
        if len(value) != self.value_buffer_size:
            raise ValueError("map %s: value is %d bytes, the map's values are %d%s"
                             % (self.name, len(value), self.value_buffer_size,
                                " (per-CPU: use update_percpu)" if self.is_percpu else ""))
        return ctypes.create_string_buffer(value, len(value))

    def lookup(self, key):
        """The value stored under ``key`` (bytes), or None if there is none.

        For per-CPU maps: all CPUs' values in one buffer (``split_percpu``).
        """
        key_buf = self._key_buf(key)
        value_buf = ctypes.create_string_buffer(self.value_buffer_size)
        ret = _lib().bpf_map_lookup_elem(self.fd, key_buf, value_buf)
        if ret == -errno.ENOENT:
            return None
        _check(ret, "lookup in map", self.name)
        return value_buf.raw

    def update(self, key, value, flags=BPF_ANY):
        """Store ``value`` under ``key``.

        ``flags``: BPF_ANY (create or replace), BPF_NOEXIST (EEXIST if
        present), BPF_EXIST (ENOENT if absent).
        """
        ret = _lib().bpf_map_update_elem(self.fd, self._key_buf(key), self._value_buf(value),
                                         flags)
        _check(ret, "update map", self.name)

    def delete(self, key):
        """Delete ``key``; False if it was not there."""
        ret = _lib().bpf_map_delete_elem(self.fd, self._key_buf(key))
        if ret == -errno.ENOENT:
            return False
        _check(ret, "delete from map", self.name)
        return True

    def keys(self):
        """Iterate over the keys (bpf_map_get_next_key).

        Entries added or deleted meanwhile may or may not be seen; a hash
        map iteration whose current key is deleted restarts from the first.
        """
        lib = _lib()
        fd = self.fd
        size = self.key_size
        current = None
        following = ctypes.create_string_buffer(size)
        while True:
            ret = lib.bpf_map_get_next_key(fd, current, following)
            if ret == -errno.ENOENT:
                return
            _check(ret, "iterate keys of map", self.name)
            yield following.raw
            current = ctypes.create_string_buffer(following.raw, size)

    def items(self):
        """Iterate over ``(key, value)`` pairs with per-element syscalls."""
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:  # deleted since get_next_key saw it
                yield key, value

    # -- per-CPU values ---------------------------------------------------

    def split_percpu(self, value_buffer):
        """Split a per-CPU value buffer into one ``value_size`` bytes per CPU."""
        stride = _round_up8(self.value_size)
        size = self.value_size
        return [bytes(value_buffer[i:i + size]) for i in range(0, len(value_buffer), stride)]

    def sum_percpu(self, value_buffers, words):
        """Per-CPU value buffers (one per entry, as ``lookup_batch`` gives them) -> for each of the
        value's first ``words`` 64-bit words, the list of its sums over the CPUs, entry by entry.

        The one reader of per-CPU counters (edge_stats_info, the agent's exporter): done on one
        memoryview of all entries at once (strided slices summed with map(add)), not entry by
        entry; with 100,000 entries the difference is most of an exporter scrape's cost."""
        if not value_buffers:
            return [[] for dummy in range(words)]
        per_cpu_words = _round_up8(self.value_size) // 8
        entry_words = len(value_buffers[0]) // 8
        all_words = memoryview(b"".join(value_buffers)).cast("Q")
        sums = []
        for index in range(words):
            columns = [all_words[cpu_start + index::entry_words] for cpu_start in range(0, entry_words, per_cpu_words)]
            sums.append(list(functools.reduce(lambda a, b: map(operator.add, a, b), columns)))
        return sums

    def lookup_percpu(self, key):
        """Per-CPU map: list of each possible CPU's value (None if absent)."""
        if not self.is_percpu:
            raise BpfError(errno.EINVAL, "per-CPU lookup in map", self.name,
                           detail="not a per-CPU map")
        raw = self.lookup(key)
        return None if raw is None else self.split_percpu(raw)

    def update_percpu(self, key, values, flags=BPF_ANY):
        """Per-CPU map: store ``values[cpu]`` (``value_size`` bytes each, one
        per possible CPU) under ``key``."""
        if not self.is_percpu:
            raise BpfError(errno.EINVAL, "per-CPU update of map", self.name,
                           detail="not a per-CPU map")
        if len(values) != num_possible_cpus():
            raise ValueError("map %s: %d per-CPU values given, %d CPUs possible"
                             % (self.name, len(values), num_possible_cpus()))
        stride = _round_up8(self.value_size)
        parts = []
        for value in values:
            value = bytes(value)
            if len(value) != self.value_size:
                raise ValueError("map %s: per-CPU value is %d bytes, expected %d"
                                 % (self.name, len(value), self.value_size))
            parts.append(value + b"\0" * (stride - len(value)))
        self.update(key, b"".join(parts), flags)

    # -- batch operations -------------------------------------------------

    def _batch_opts(self, elem_flags=0):
        return _BatchOpts(sz=ctypes.sizeof(_BatchOpts), elem_flags=elem_flags, flags=0)

    def _batch_falls_back(self, operation, err, count_out, count_in):
        """True if ``err`` from a batch syscall means "this map type (or
        kernel) has no batch operation", so per-element syscalls must do the
        work.  Nothing was processed in that case."""
        if err in (errno.EOPNOTSUPP, ENOTSUPP):
            # The kernel refuses before touching anything (and leaves
            # ``count`` as it was): remember, so later calls skip the try.
            self._batch_unsupported.add(operation)
            return True
        # EINVAL is what a kernel without the batch commands returns.  It
        # can also be a genuine per-element failure, but then the
        # per-element retry fails the same way and reports it.
        return err == errno.EINVAL and count_out in (0, count_in)

    def _check_sizes(self, keys, values=None):
        """ValueError, as _key_buf and _value_buf raise it, if a key (or value) has not the map's
        size: checked on the lengths at once (a million keys in milliseconds), the first one at
        fault then named by the per-element check."""
        if set(map(len, keys)) - {self.key_size}:
            for key in keys:
                self._key_buf(key)
        if values is not None and set(map(len, values)) - {self.value_buffer_size}:
            for value in values:
                self._value_buf(value)

    def update_batch(self, keys, values, flags=BPF_ANY):
        """Store ``values[i]`` under ``keys[i]``; returns the count.

        One syscall where the kernel can: its batch update takes only
        BPF_ANY (or BPF_F_LOCK), so other ``flags`` (BPF_NOEXIST, BPF_EXIST)
        and map types without batch ops go element by element.  A failure
        says how many elements were stored before it.
        """
        keys = list(map(bytes, keys))
        values = list(map(bytes, values))
        if len(keys) != len(values):
            raise ValueError("update_batch: %d keys but %d values" % (len(keys), len(values)))
        if not keys:
            return 0
        self._check_sizes(keys, values)
        if "update" not in self._batch_unsupported and not flags & ~BPF_F_LOCK:
            keys_buf = ctypes.create_string_buffer(b"".join(keys), len(keys) * self.key_size)
            values_buf = ctypes.create_string_buffer(
                b"".join(values), len(values) * self.value_buffer_size)
            count = _u32(len(keys))
            opts = self._batch_opts(flags)
            ret = _lib().bpf_map_update_batch(self.fd, keys_buf, values_buf,
                                              ctypes.byref(count), ctypes.byref(opts))
            if ret >= 0:
                return len(keys)
            if not self._batch_falls_back("update", -ret, count.value, len(keys)):
                raise BpfError(-ret, "batch update of map", self.name,
                               detail="%d of %d done" % (count.value, len(keys)))
        for done, (key, value) in enumerate(zip(keys, values)):
            try:
                self.update(key, value, flags)
            except BpfError as exc:
                raise BpfError(exc.errno, "batch update of map", self.name,
                               detail="%d of %d done" % (done, len(keys)))
        return len(keys)

    def delete_batch(self, keys):
        """Delete ``keys`` (absent ones are skipped); returns how many were
        deleted.  One syscall where the map type supports it."""
        keys = list(map(bytes, keys))
        self._check_sizes(keys)
        deleted = 0
        remaining = keys
        while remaining and "delete" not in self._batch_unsupported:
            keys_buf = ctypes.create_string_buffer(b"".join(remaining),
                                                   len(remaining) * self.key_size)
            count = _u32(len(remaining))
            ret = _lib().bpf_map_delete_batch(self.fd, keys_buf, ctypes.byref(count),
                                              ctypes.byref(self._batch_opts()))
            if ret >= 0:
                return deleted + len(remaining)
            err = -ret
            if err == errno.ENOENT and count.value < len(remaining):
                # The kernel stops at the first absent key: count the ones
                # before it, skip it, carry on with the rest.
                deleted += count.value
                remaining = remaining[count.value + 1:]
                continue
            if self._batch_falls_back("delete", err, count.value, len(remaining)):
                break
            raise BpfError(err, "batch delete from map", self.name,
                           detail="%d of %d done" % (deleted + count.value, len(keys)))
        for key in remaining:
            if self.delete(key):
                deleted += 1
        return deleted

    def _array_mmap(self, writable):
        if self.type != BPF_MAP_TYPE_ARRAY or not self.flags & BPF_F_MMAPABLE:
            raise BpfError(errno.EINVAL, "map the values of", self.name,
                           detail="not an array map created with BPF_F_MMAPABLE")
        size = self.max_entries * self.value_size
        length = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        try:
            return mmap.mmap(self.fd, length, mmap.MAP_SHARED, prot), size
        except OSError as exc:
            raise BpfError(exc.errno or errno.EIO, "map the values of", self.name)

    def array_write(self, values_by_index):
        """Write ``(index, value)`` pairs into an array map created with BPF_F_MMAPABLE, in place
        through one mmap: no syscall per element (262,144 entries in tens of milliseconds). Each
        value is stored with a plain memory copy: a reader sees each byte old or new, so the
        layout must make that safe (edge_src_filter: every bit stands alone). Returns the count."""
        view, size = self._array_mmap(writable=True)
        value_size = self.value_size
        max_entries = self.max_entries
        count = 0
        try:
            for index, value in values_by_index:
                if len(value) != value_size or not 0 <= index < max_entries:
                    raise ValueError("map %s: value %d of %d bytes, expected index < %d and %d bytes"
                                     % (self.name, index, len(value), max_entries, value_size))
                view[index * value_size:(index + 1) * value_size] = value
                count += 1
        finally:
            view.close()
        return count

    def array_bytes(self):
        """Every value of an array map created with BPF_F_MMAPABLE, as one bytes object
        (value i at i * value_size; value sizes are multiples of 8 here). One mmap and one
        copy: 8 MiB read in milliseconds, where element lookups would take seconds."""
        view, size = self._array_mmap(writable=False)
        try:
            return view[:size]
        finally:
            view.close()

    def lookup_batch(self, chunk_size=1024):
        """All ``(key, value)`` pairs, read ``chunk_size`` at a time with
        bpf_map_lookup_batch, or per element where the map type has no batch
        lookup (e.g. LPM tries on many kernels).  Per-CPU values are whole
        buffers (``split_percpu``)."""
        if "lookup" not in self._batch_unsupported:
            results = self._lookup_batch(chunk_size)
            if results is not None:
                return results
        return list(self.items())

    def _lookup_batch(self, chunk_size):
        """All entries via bpf_map_lookup_batch; None if the map type has no
        batch lookup."""
        key_size = self.key_size
        value_size = self.value_buffer_size
        results = []
        chunks = self.lookup_batch_chunks(chunk_size)
        if chunks is None:
            return None
        for count, keys_raw, values_raw in chunks:
            results.extend(zip([keys_raw[offset:offset + key_size] for offset in range(0, count * key_size, key_size)],
                               [values_raw[offset:offset + value_size]
                                for offset in range(0, count * value_size, value_size)]))
        return results

    def lookup_batch_chunks(self, chunk_size=1024):
        """All entries as ``[(count, keys, values)]``: each chunk's keys and values
        as one bytes object each (``count`` keys of ``key_size`` bytes, values of
        ``value_buffer_size``), for readers that slice or cast them themselves
        rather than pay for a bytes object per entry.  None if the map type has
        no batch lookup."""
        if "lookup" in self._batch_unsupported:
            return None
        lib = _lib()
        fd = self.fd
        key_size = self.key_size
        value_size = self.value_buffer_size
        chunk = max(1, min(chunk_size, self.max_entries or 1))
        # The resume token is opaque: a bucket index (u32) for hash maps, a
        # key for array-like maps.
        token_size = max(key_size, 8)
        token_in = ctypes.create_string_buffer(token_size)
        token_out = ctypes.create_string_buffer(token_size)
        started = False
        chunks = []
        read = 0
        opts = self._batch_opts()
        while True:
            keys_buf = ctypes.create_string_buffer(key_size * chunk)
            values_buf = ctypes.create_string_buffer(value_size * chunk)
            count = _u32(chunk)
            ret = lib.bpf_map_lookup_batch(fd, token_in if started else None, token_out,
                                           keys_buf, values_buf, ctypes.byref(count),
                                           ctypes.byref(opts))
            err = -ret if ret < 0 else 0
            if err == errno.ENOSPC and count.value == 0:
                # A hash bucket holds more entries than fit in one chunk.
                chunk *= 2
                continue
            if err and err != errno.ENOENT:
                if not started and self._batch_falls_back("lookup", err, count.value, chunk):
                    return None
                raise BpfError(err, "batch lookup in map", self.name,
                               detail="after %d entries" % read)
            if count.value:
                chunks.append((count.value, keys_buf.raw[:key_size * count.value],
                               values_buf.raw[:value_size * count.value]))
                read += count.value
            if err == errno.ENOENT:  # no more entries
                return chunks
            ctypes.memmove(token_in, token_out, token_size)
            started = True

    # -- BTF ----------------------------------------------------------------

    def btf_layout(self):
        """The key and value types of the map as declared in C, from BTF.

        Returns ``{"key": BtfLayout | None, "value": BtfLayout | None}``
        (None where the map has no BTF type for it, e.g. the key of a
        ``.bss`` map).  Object maps read the object's BTF; maps opened from a
        pin, fd or id read the BTF the kernel keeps for them.  BpfError
        ENODATA if the map was created without BTF.
        """
        ptr = self._live_ptr()
        lib = _lib()
        if ptr is not None:
            btf = lib.bpf_object__btf(self._owner.handle)
            if not btf:
                raise BpfError(errno.ENODATA, "read BTF of map", self.name,
                               detail="object has no BTF (compile with -g)")
            return {"key": _btf_layout(btf, lib.bpf_map__btf_key_type_id(ptr)),
                    "value": _btf_layout(btf, lib.bpf_map__btf_value_type_id(ptr))}
        info = self.info()
        if not info.btf_id:
            raise BpfError(errno.ENODATA, "read BTF of map", self.name,
                           detail="map was created without BTF")
        btf = _check_ptr(lib.btf__load_from_kernel_by_id(info.btf_id),
                         "load kernel BTF of map", self.name)
        try:
            return {"key": _btf_layout(btf, info.btf_key_type_id),
                    "value": _btf_layout(btf, info.btf_value_type_id)}
        finally:
            lib.btf__free(btf)


class BpfProgram(_FdHolder):
    """A BPF program: a member of a BpfObject, or opened from a pin, fd or id."""

    def __init__(self, owner=None, prog_ptr=None, fd=None):
        """Use BpfObject.program(), from_pin(), from_fd() or from_id() instead."""
        self._owner = owner
        self._prog_ptr = prog_ptr
        self._owned_fd = fd

    _noun = "program"
    _libbpf_fd = "bpf_program__fd"
    _libbpf_name = "bpf_program__name"

    @classmethod
    def from_pin(cls, path):
        """Open the program pinned at ``path`` (the instance owns the fd)."""
        prog = cls(fd=bpf_obj_get(path))
        kind = _bpf_fd_kind(prog._owned_fd)
        if kind not in ("prog", None):
            prog.close()
            raise BpfError(errno.EINVAL, "open program", os.fspath(path),
                           detail="it is a BPF " + kind)
        return prog

    @classmethod
    def from_fd(cls, fd):
        """Wrap a duplicate of ``fd``; the caller keeps (and closes) ``fd``."""
        return cls(fd=os.dup(fd))

    @classmethod
    def from_id(cls, prog_id):
        """Open the loaded program with kernel id ``prog_id``."""
        return cls(fd=_check(_lib().bpf_prog_get_fd_by_id(prog_id),
                             "open program by id", prog_id))

    def _live_ptr(self):
        if self._prog_ptr is None:
            return None
        if self._owner is None or self._owner.closed:
            raise BpfError(errno.EBADF, "use program", detail="its BpfObject is closed")
        return self._prog_ptr

    @property
    def section(self):
        """ELF section (``"xdp"``, ``"tc"`` ...) for object programs, else None."""
        ptr = self._live_ptr()
        return _decode(_lib().bpf_program__section_name(ptr)) if ptr is not None else None

    def info(self):
        """ProgInfo from the kernel (not cached: map_ids may change)."""
        return prog_info(self.fd)

    @property
    def id(self):
        """Kernel program id."""
        return self.info().id

    @property
    def tag(self):
        """Kernel program tag, 16 hex digits."""
        return self.info().tag

    def __repr__(self):
        try:
            return "<BpfProgram %s>" % self.name
        except BpfError:
            return "<BpfProgram (closed)>"

    def pin(self, path):
        """Pin the program at ``path`` (parent directories are created)."""
        _pin_fd(self.fd, path, "program " + self.name)

    def test_run(self, data, repeat=1, data_size_out=None, ctx_in=None, ctx_size_out=None):
        """Run the program once (or ``repeat`` times) on ``data``
        (BPF_PROG_TEST_RUN) and return a TestRunResult.

        ``data_size_out`` bounds the output packet; the default (at least
        4096) leaves room for packets grown by bpf_xdp_adjust_head/tail.  An
        output larger than that fails with ENOSPC.  XDP needs at least 14
        bytes of data.  ``ctx_in`` is the input context as bytes (for XDP:
        ``xdp_md(len(data), ingress_ifindex=...)``); the output context comes
        back in ``ctx_out`` (``ctx_size_out`` defaults to ``len(ctx_in)``).
        """
        data = bytes(data)
        if data_size_out is None:
            data_size_out = max(4096, len(data) + 512)
        data_in = ctypes.create_string_buffer(data, max(len(data), 1))
        data_out = ctypes.create_string_buffer(data_size_out)
        opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts))
        opts.data_in = ctypes.addressof(data_in)
        opts.data_size_in = len(data)
        opts.data_out = ctypes.addressof(data_out)
        opts.data_size_out = data_size_out
        opts.repeat = repeat
        ctx_in_buf = ctx_out_buf = None
        if ctx_in is not None:
            ctx_in = bytes(ctx_in)
            ctx_in_buf = ctypes.create_string_buffer(ctx_in, len(ctx_in))
            opts.ctx_in = ctypes.addressof(ctx_in_buf)
            opts.ctx_size_in = len(ctx_in)
            if ctx_size_out is None:
                ctx_size_out = len(ctx_in)
        if ctx_size_out:
            ctx_out_buf = ctypes.create_string_buffer(ctx_size_out)
            opts.ctx_out = ctypes.addressof(ctx_out_buf)
            opts.ctx_size_out = ctx_size_out
        ret = _lib().bpf_prog_test_run_opts(self.fd, ctypes.byref(opts))
        if ret == -errno.ENOSPC:
            raise BpfError(errno.ENOSPC, "test run of program", self.name,
                           detail="output larger than data_size_out=%d" % data_size_out)
        _check(ret, "test run of program", self.name)
        ctx_out = ctx_out_buf.raw[:opts.ctx_size_out] if ctx_out_buf is not None else None
        return TestRunResult(opts.retval, data_out.raw[:opts.data_size_out], opts.duration,
                             ctx_out)

    def run_live_frames(self, data, repeat, ctx_in, batch_size=0):
        """Run this XDP program ``repeat`` times on live copies of ``data``
        (BPF_PROG_TEST_RUN with ``BPF_F_TEST_XDP_LIVE_FRAMES``): the kernel
        carries out each verdict as if the frame had arrived on the device
        ``ctx_in`` names (``xdp_md(len(data), ingress_ifindex=...)``): XDP_TX
        sends it out of that device, a redirect to its target, XDP_PASS into
        the stack.  Nothing comes back but errors of the setup; ``batch_size``
        frames are sent at a time (0: the kernel's 64, at most
        ``TEST_XDP_MAX_BATCH``).  Documentation/bpf/bpf_prog_run.rst.
        """
        data = bytes(data)
        ctx_in = bytes(ctx_in)
        data_in = ctypes.create_string_buffer(data, max(len(data), 1))
        ctx_in_buf = ctypes.create_string_buffer(ctx_in, len(ctx_in))
        opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts))
        opts.data_in = ctypes.addressof(data_in)
        opts.data_size_in = len(data)
        opts.ctx_in = ctypes.addressof(ctx_in_buf)
        opts.ctx_size_in = len(ctx_in)
        opts.repeat = repeat
        opts.flags = BPF_F_TEST_XDP_LIVE_FRAMES
        opts.batch_size = batch_size
        _check(_lib().bpf_prog_test_run_opts(self.fd, ctypes.byref(opts)), "live-frame test run of program",
               self.name)


# ---------------------------------------------------------------------------
# Objects
# ---------------------------------------------------------------------------

class BpfObject(Closing):
    """A compiled BPF ELF object (``clang -target bpf``) opened with libbpf.

    ``open`` parses it, ``load`` creates its maps and verifies and loads its
    programs; ``close`` releases everything not pinned or attached.  Use as a
    context manager.  Maps and programs obtained from it are valid while it
    is open.
    """

    def __init__(self, handle, path, pin_root_path=None):
        """Use BpfObject.open()."""
        self._handle = handle
        self.path = path
        self.pin_root_path = pin_root_path
        self.loaded = False
        self._programs = {}
        self._maps = {}

    @classmethod
    def open(cls, path, pin_root_path=None, object_name=None):
        """Open the object file at ``path`` (bpf_object__open_file).

        ``pin_root_path``: maps declared with ``LIBBPF_PIN_BY_NAME`` are pinned
        at ``<pin_root_path>/<map name>`` on load, or, if a compatible map is
        pinned there already, reused with its entries (libbpf refuses an
        incompatible one and load fails with EINVAL).  Without it libbpf 1.1
        uses ``/sys/fs/bpf`` for such maps, and load fails with EINVAL if that
        is not a mounted bpffs (see ``ensure_bpffs``).
        """
        lib = _lib()
        path = os.fspath(path)
        opts = _OpenOpts(sz=ctypes.sizeof(_OpenOpts))
        if pin_root_path is not None:
            opts.pin_root_path = _fspath(pin_root_path)
        if object_name is not None:
            opts.object_name = object_name.encode()
        with _LibbpfLog() as log:
            handle = lib.bpf_object__open_file(_fspath(path), ctypes.byref(opts))
            err = ctypes.get_errno()
        if not handle:
            raise BpfError(err or errno.EINVAL, "open BPF object", path, log=log)
        return cls(handle, path, os.fspath(pin_root_path) if pin_root_path else None)

    @property
    def closed(self):
        return self._handle is None

    @property
    def handle(self):
        """The libbpf ``struct bpf_object *`` (BpfError EBADF once closed)."""
        if self._handle is None:
            raise BpfError(errno.EBADF, "use BPF object", self.path, detail="closed")
        return self._handle

    @property
    def name(self):
        return _decode(_lib().bpf_object__name(self.handle))

    def load(self):
        """Create the maps, verify and load the programs (bpf_object__load).

        On failure the BpfError text ends with libbpf's log, which holds the
        verifier's explanation for a rejected program.
        """
        with _LibbpfLog() as log:
            ret = _lib().bpf_object__load(self.handle)
        _check(ret, "load BPF object", self.path, log=log)
        self.loaded = True
        return self

    def program(self, name):
        """The BpfProgram for the C function ``name`` (BpfError ENOENT)."""
        if name not in self._programs:
            ptr = _lib().bpf_object__find_program_by_name(self.handle, name.encode())
            if not ptr:
                raise BpfError(errno.ENOENT, "find program", name,
                               detail="not in " + self.path)
            self._programs[name] = BpfProgram(owner=self, prog_ptr=ptr)
        return self._programs[name]

    def programs(self):
        """All programs of the object, in ELF order."""
        lib = _lib()
        ptr = lib.bpf_object__next_program(self.handle, None)
        found = []
        while ptr:
            found.append(self.program(_decode(lib.bpf_program__name(ptr))))
            ptr = lib.bpf_object__next_program(self.handle, ptr)
        return found

    def map(self, name):
        """The BpfMap called ``name`` in the C source (BpfError ENOENT)."""
        if name not in self._maps:
            ptr = _lib().bpf_object__find_map_by_name(self.handle, name.encode())
            if not ptr:
                raise BpfError(errno.ENOENT, "find map", name, detail="not in " + self.path)
            self._maps[name] = BpfMap(owner=self, map_ptr=ptr)
        return self._maps[name]

    def maps(self, include_internal=False):
        """All maps of the object; ``include_internal`` adds the ones libbpf
        makes for ``.rodata``/``.data``/``.bss``."""
        lib = _lib()
        ptr = lib.bpf_object__next_map(self.handle, None)
        found = []
        while ptr:
            if include_internal or not lib.bpf_map__is_internal(ptr):
                found.append(self.map(_decode(lib.bpf_map__name(ptr))))
            ptr = lib.bpf_object__next_map(self.handle, ptr)
        return found

    def btf_type(self, name):
        """BtfLayout of the struct (or, failing that, any type) called
        ``name`` in the object's BTF (BpfError ENOENT)."""
        lib = _lib()
        btf = lib.bpf_object__btf(self.handle)
        if not btf:
            raise BpfError(errno.ENODATA, "read BTF of", self.path,
                           detail="object has no BTF (compile with -g)")
        type_id = lib.btf__find_by_name_kind(btf, name.encode(), _BTF_KIND_STRUCT)
        if type_id < 0:
            type_id = lib.btf__find_by_name(btf, name.encode())
        if type_id < 0:
            raise BpfError(errno.ENOENT, "find BTF type", name, detail="not in " + self.path)
        return _btf_layout(btf, type_id)

    def close(self):
        """Release the object: unpinned maps and unattached programs go away."""
        handle, self._handle = self._handle, None
        if handle is not None and _LIB is not None:
            _LIB.bpf_object__close(handle)

    def __repr__(self):
        return "<BpfObject %s%s>" % (self.path, " (closed)" if self.closed else "")
