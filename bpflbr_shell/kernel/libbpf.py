"""ctypes bindings to the system libbpf (Debian's libbpf1 1.1.x) for the bpf(2) calls we need.

The one owner of the bpf(2)/libbpf constants, structs and prototypes: other modules import
them (features.py calls ``lib()``, never a prototype of its own). Only thin, typed wrappers
live here; decoding belongs to ``progs`` and ``btf``. libbpf 1.x returns ``-errno`` from its
low-level API, which :func:`check` turns into our error family. The library is opened on
first use, never at import time.
"""

from __future__ import annotations

import ctypes
import errno
import os
from functools import cache

from bpflbr_shell.errors import FeatureError, NotFoundError, PrivilegeError, UserError

LIBBPF_NAMES = ("libbpf.so.1", "/usr/lib/x86_64-linux-gnu/libbpf.so.1")

u32 = ctypes.c_uint32
u64 = ctypes.c_uint64

# program types, attach types and flags we load with (uapi linux/bpf.h), and the BTF kind we
# look functions up by (uapi linux/btf.h); tests/test_libbpf.py checks them against gcc
BPF_PROG_TYPE_KPROBE = 2
BPF_PROG_TYPE_TRACING = 26
BPF_TRACE_FENTRY = 24
BPF_TRACE_FEXIT = 25
BPF_TRACE_KPROBE_MULTI = 42
BPF_F_KPROBE_MULTI_RETURN = 1
BTF_KIND_FUNC = 12


class BpfProgInfo(ctypes.Structure):
    """``struct bpf_prog_info`` as in the 6.1 uapi header (232 bytes)."""

    _fields_ = [
        ("type", u32),
        ("id", u32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", u32),
        ("xlated_prog_len", u32),
        ("jited_prog_insns", u64),
        ("xlated_prog_insns", u64),
        ("load_time", u64),
        ("created_by_uid", u32),
        ("nr_map_ids", u32),
        ("map_ids", u64),
        ("name", ctypes.c_char * 16),
        ("ifindex", u32),
        ("gpl_flags", u32),  # bit 0: gpl_compatible
        ("netns_dev", u64),
        ("netns_ino", u64),
        ("nr_jited_ksyms", u32),
        ("nr_jited_func_lens", u32),
        ("jited_ksyms", u64),
        ("jited_func_lens", u64),
        ("btf_id", u32),
        ("func_info_rec_size", u32),
        ("func_info", u64),
        ("nr_func_info", u32),
        ("nr_line_info", u32),
        ("line_info", u64),
        ("jited_line_info", u64),
        ("nr_jited_line_info", u32),
        ("line_info_rec_size", u32),
        ("jited_line_info_rec_size", u32),
        ("nr_prog_tags", u32),
        ("prog_tags", u64),
        ("run_time_ns", u64),
        ("run_cnt", u64),
        ("recursion_misses", u64),
        ("verified_insns", u32),
        ("attach_btf_obj_id", u32),
        ("attach_btf_id", u32),
        ("_pad", u32),
    ]


class BpfBtfInfo(ctypes.Structure):
    """``struct bpf_btf_info``."""

    _fields_ = [
        ("btf", u64),
        ("btf_size", u32),
        ("id", u32),
        ("name", u64),
        ("name_len", u32),
        ("kernel_btf", u32),
    ]


class BpfLinkInfoTracing(ctypes.Structure):
    _fields_ = [("attach_type", u32), ("target_obj_id", u32), ("target_btf_id", u32)]


class BpfLinkInfo(ctypes.Structure):
    """``struct bpf_link_info`` head plus room for the largest union member we read."""

    _fields_ = [
        ("type", u32),
        ("id", u32),
        ("prog_id", u32),
        ("_pad", u32),
        ("tracing", BpfLinkInfoTracing),
        ("_rest", ctypes.c_uint8 * 64),
    ]


assert ctypes.sizeof(BpfProgInfo) == 232, ctypes.sizeof(BpfProgInfo)


class BpfProgLoadOpts(ctypes.Structure):
    """``struct bpf_prog_load_opts`` of libbpf 1.1.x (104 bytes)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("attempts", ctypes.c_int),
        ("expected_attach_type", ctypes.c_uint32),
        ("prog_btf_fd", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_ifindex", ctypes.c_uint32),
        ("kern_version", ctypes.c_uint32),
        ("attach_btf_id", ctypes.c_uint32),
        ("attach_prog_fd", ctypes.c_uint32),
        ("attach_btf_obj_fd", ctypes.c_uint32),
        ("fd_array", ctypes.c_void_p),
        ("func_info", ctypes.c_void_p),
        ("func_info_cnt", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("line_info", ctypes.c_void_p),
        ("line_info_cnt", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_char_p),
    ]


class KprobeMultiOpts(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint32),
        ("cnt", ctypes.c_uint32),
        ("syms", ctypes.POINTER(ctypes.c_char_p)),
        ("addrs", ctypes.c_void_p),
        ("cookies", ctypes.c_void_p),
    ]


class _LinkCreateUnion(ctypes.Union):
    _fields_ = [("kprobe_multi", KprobeMultiOpts), ("bpf_cookie", ctypes.c_uint64)]


class BpfLinkCreateOpts(ctypes.Structure):
    """``struct bpf_link_create_opts`` of libbpf 1.1.x (64 bytes)."""

    _anonymous_ = ("_u",)
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("flags", ctypes.c_uint32),
        ("iter_info", ctypes.c_void_p),
        ("iter_info_len", ctypes.c_uint32),
        ("target_btf_id", ctypes.c_uint32),
        ("_u", _LinkCreateUnion),
    ]


class BpfMapInfo(ctypes.Structure):
    """The head of ``struct bpf_map_info``: what it takes to create the same map again (the
    kernel fills only as much as we pass)."""

    _fields_ = [
        ("type", u32),
        ("id", u32),
        ("key_size", u32),
        ("value_size", u32),
        ("max_entries", u32),
        ("map_flags", u32),
        ("name", ctypes.c_char * 16),
    ]


class BpfMapCreateOpts(ctypes.Structure):
    """``struct bpf_map_create_opts`` of libbpf 1.1.x (48 bytes)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("btf_fd", u32),
        ("btf_key_type_id", u32),
        ("btf_value_type_id", u32),
        ("btf_vmlinux_value_type_id", u32),
        ("inner_map_fd", u32),
        ("map_flags", u32),
        ("map_extra", u64),
        ("numa_node", u32),
        ("map_ifindex", u32),
    ]


assert ctypes.sizeof(BpfProgLoadOpts) == 104
assert ctypes.sizeof(BpfMapCreateOpts) == 48
assert ctypes.sizeof(BpfLinkCreateOpts) == 64


Signatures = dict[str, tuple[object, list[object]]]


def open_libbpf(signatures: Signatures) -> ctypes.CDLL:
    """A new handle to the system libbpf with ``signatures`` (name: (restype, argtypes))
    declared. Each caller gets its own handle: ctypes handles do not share argtypes."""
    last: OSError | None = None
    for name in LIBBPF_NAMES:
        try:
            so = ctypes.CDLL(name, use_errno=True)
            break
        except OSError as exc:
            last = exc
    else:
        raise FeatureError(f"cannot load libbpf ({last})", "apt-get install libbpf1")
    for fname, (restype, argtypes) in signatures.items():
        fn = getattr(so, fname)
        fn.restype = restype
        fn.argtypes = argtypes
    return so


@cache
def lib() -> ctypes.CDLL:
    """The system libbpf, with the signatures of the calls we make declared once."""
    sigs: Signatures = {
        "bpf_prog_get_next_id": (ctypes.c_int, [u32, ctypes.POINTER(u32)]),
        "bpf_prog_get_fd_by_id": (ctypes.c_int, [u32]),
        "bpf_btf_get_fd_by_id": (ctypes.c_int, [u32]),
        "bpf_link_get_fd_by_id": (ctypes.c_int, [u32]),
        "bpf_obj_get_info_by_fd": (
            ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(u32)]
        ),
        "bpf_obj_get": (ctypes.c_int, [ctypes.c_char_p]),
        "bpf_enable_stats": (ctypes.c_int, [ctypes.c_int]),
        "bpf_prog_load": (ctypes.c_int, [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p,
                                         ctypes.c_void_p, ctypes.c_size_t,
                                         ctypes.POINTER(BpfProgLoadOpts)]),
        "bpf_link_create": (ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                           ctypes.POINTER(BpfLinkCreateOpts)]),
        "bpf_map_create": (ctypes.c_int, [ctypes.c_int, ctypes.c_char_p, u32, u32, u32,
                                          ctypes.POINTER(BpfMapCreateOpts)]),
        "bpf_map_lookup_elem": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]),
        "btf__load_vmlinux_btf": (ctypes.c_void_p, []),
        "btf__find_by_name_kind": (ctypes.c_int32, [ctypes.c_void_p, ctypes.c_char_p, u32]),
        "btf__free": (None, [ctypes.c_void_p]),
    }
    return open_libbpf(sigs)


def _raise_errno(err: int, what: str) -> None:
    if err in (errno.EPERM, errno.EACCES):
        raise PrivilegeError(
            f"{what}: permission denied",
            "needs CAP_SYS_ADMIN (or CAP_BPF + CAP_PERFMON); run as root",
        )
    if err == errno.ENOENT:
        raise NotFoundError(f"{what}: no such object (it may have been unloaded)")
    if err == errno.ENOSYS:
        raise FeatureError(f"{what}: the kernel has no bpf(2) syscall", "CONFIG_BPF_SYSCALL=y")
    raise UserError(f"{what}: {os.strerror(err)}")


def check(ret: int, what: str) -> int:
    """Return ``ret`` when it is a success, else raise the matching :class:`UserError`."""
    if ret < 0:
        _raise_errno(-ret if ret != -1 else (ctypes.get_errno() or errno.EINVAL), what)
    return ret


def next_ids(getter: str) -> list[int]:
    """All ids of one object kind, in ascending order."""
    fn = getattr(lib(), getter)
    ids: list[int] = []
    cur = u32(0)
    nxt = u32(0)
    while True:
        ret = fn(cur, ctypes.byref(nxt))
        if ret < 0:
            err = -ret if ret != -1 else ctypes.get_errno()
            if err == errno.ENOENT:
                return ids
            _raise_errno(err, "listing BPF objects")
        ids.append(nxt.value)
        cur.value = nxt.value


def prog_ids() -> list[int]:
    return next_ids("bpf_prog_get_next_id")


def prog_fd_by_id(prog_id: int) -> int:
    ret = lib().bpf_prog_get_fd_by_id(prog_id)
    if ret < 0 and -ret == errno.ENOENT:
        raise NotFoundError(f"no BPF program with id {prog_id}", "see 'show progs'")
    return check(ret, f"opening BPF program {prog_id}")


def btf_fd_by_id(btf_id: int) -> int:
    return check(lib().bpf_btf_get_fd_by_id(btf_id), f"opening BTF object {btf_id}")


def link_fd_by_id(link_id: int) -> int:
    return check(lib().bpf_link_get_fd_by_id(link_id), f"opening BPF link {link_id}")


def obj_get(path: str) -> int:
    """fd of a pinned object in bpffs."""
    ret = lib().bpf_obj_get(os.fsencode(path))
    if ret < 0 and -ret == errno.ENOENT:
        raise NotFoundError(f"nothing pinned at {path}", "is bpffs mounted at /sys/fs/bpf?")
    return check(ret, f"opening pinned object {path}")


def obj_info(fd: int, info: ctypes.Structure, what: str) -> int:
    """Fill ``info`` from the kernel; returns the length the kernel wrote."""
    length = u32(ctypes.sizeof(info))
    check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(length)), what)
    return length.value


def link_info(fd: int) -> BpfLinkInfo:
    info = BpfLinkInfo()
    obj_info(fd, info, "reading link info")
    return info


def enable_stats() -> int:
    """Turn on run_time_ns/run_cnt accounting; returns an fd that keeps it on until closed."""
    return check(lib().bpf_enable_stats(0), "enabling BPF run-time stats")  # BPF_STATS_RUN_TIME


LOG_SIZE = 1 << 20


def prog_load(prog_type: int, name: str, insns: bytes, *, expected_attach_type: int = 0,
              attach_btf_id: int = 0, attach_prog_fd: int = 0, attach_btf_obj_fd: int = 0,
              license: str = "GPL") -> int:
    """Load raw bytecode (as BCC's ``dump_func`` gives it, map fds in place); returns the fd.

    On failure the verifier's last lines go into the error, since that is what explains it.
    """
    log = ctypes.create_string_buffer(LOG_SIZE)
    opts = BpfProgLoadOpts(sz=ctypes.sizeof(BpfProgLoadOpts))
    opts.expected_attach_type = expected_attach_type
    opts.attach_btf_id = attach_btf_id
    opts.attach_prog_fd = attach_prog_fd
    opts.attach_btf_obj_fd = attach_btf_obj_fd  # a module function: its module's BTF object
    opts.log_level = 0
    buf = ctypes.create_string_buffer(insns, len(insns))
    ret = lib().bpf_prog_load(prog_type, name[:15].encode(), license.encode(), buf,
                              len(insns) // 8, ctypes.byref(opts))
    if ret >= 0:
        return ret
    # again with the verifier log on, only to explain the failure
    opts.log_level, opts.log_size, opts.log_buf = 1, LOG_SIZE, ctypes.cast(log, ctypes.c_char_p)
    again = lib().bpf_prog_load(prog_type, name[:15].encode(), license.encode(), buf,
                                len(insns) // 8, ctypes.byref(opts))
    if again >= 0:
        return again
    tail = [ln for ln in log.value.decode(errors="replace").splitlines() if ln.strip()][-3:]
    err = -ret if ret != -1 else ctypes.get_errno()
    what = f"loading {name}"
    if err in (errno.EPERM, errno.EACCES):
        raise PrivilegeError(
            f"{what}: the kernel refused (EPERM"
            + (": " + " | ".join(tail) if tail else ", empty verifier log: a policy such as "
               "lockdown or an LSM forbids this program type") + ")",
            "see 'show features' (tracing-prog); run as root on a kernel that allows it")
    raise UserError(f"{what}: {os.strerror(err)}" + (f": {' | '.join(tail)}" if tail else ""))


def link_create(prog_fd: int, target_fd: int, attach_type: int,
                opts: BpfLinkCreateOpts | None = None, what: str = "attaching") -> int:
    if opts is None:
        opts = BpfLinkCreateOpts(sz=ctypes.sizeof(BpfLinkCreateOpts))
    ret = lib().bpf_link_create(prog_fd, target_fd, attach_type, ctypes.byref(opts))
    if ret < 0 and -ret == errno.EOPNOTSUPP:
        raise FeatureError(f"{what}: not supported by this kernel (EOPNOTSUPP)",
                           "see 'show features'")
    return check(ret, what)


def map_info(fd: int) -> BpfMapInfo:
    info = BpfMapInfo()
    obj_info(fd, info, "reading map info")
    return info


def map_create(map_type: int, name: str, key_size: int, value_size: int, max_entries: int,
               flags: int = 0) -> int:
    """A new map without BTF (our probes never need map BTF); returns the fd."""
    opts = BpfMapCreateOpts(sz=ctypes.sizeof(BpfMapCreateOpts), map_flags=flags)
    return check(lib().bpf_map_create(map_type, name[:15].encode(), key_size, value_size,
                                      max_entries, ctypes.byref(opts)),
                 f"creating map {name}")


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value at ``key`` (``value_size`` bytes: for per-CPU maps, all CPUs'), or None
    when the key is absent."""
    kbuf = ctypes.create_string_buffer(key, len(key))
    vbuf = ctypes.create_string_buffer(value_size)
    ret = lib().bpf_map_lookup_elem(fd, kbuf, vbuf)
    if ret < 0 and (-ret if ret != -1 else ctypes.get_errno()) == errno.ENOENT:
        return None
    check(ret, "reading a map")
    return vbuf.raw
