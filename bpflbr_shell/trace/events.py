"""Decoding of the records our probes write into the per-CPU rings (``bpf/lbr_event.h``).

``RawEvent`` mirrors ``struct lbr_event`` byte for byte; :func:`decode` turns one ring slot's
record into an :class:`Event` with plain Python values. Symbolization happens later, on demand,
so the hot path stays a ctypes copy and a few attribute reads.
"""

from __future__ import annotations

import ctypes
import functools
import struct
from dataclasses import dataclass, field
from itertools import repeat
from typing import NamedTuple

LBR_ENTRIES = 32
MAX_ARGS = 6
STR_LEN = 64  # bytes of one captured C string, its NUL included (bpf/lbr_event.h)
STR_SHOWN = STR_LEN - 2  # shown at most: a copy longer than this was cut at the bound
RET_STR = MAX_ARGS  # bit of STR_MASK (and strings index) that is the return value
EV_ENTRY, EV_EXIT = 1, 2
NO_DURATION = (1 << 64) - 1  # an exit not paired with its entry (bpf/lbr_event.h)

# perf_branch_entry.type (enum perf_branch_sample_type_shift order in uapi perf_event.h)
BRANCH_TYPES = ("unknown", "cond", "uncond", "ind", "call", "ind_call", "ret", "syscall",
                "sysret", "cond_call", "cond_ret", "eret", "irq", "serror", "no_tx", "extend_abi")


class RawBranch(ctypes.Structure):
    _fields_ = [("from_", ctypes.c_uint64), ("to", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class RawStr(ctypes.Structure):
    """struct user_str: bpf_probe_read_user_str()'s result (bytes with the NUL, 0 for a NULL
    pointer, -errno) and the bytes."""
    _fields_ = [("ret", ctypes.c_int64), ("buf", ctypes.c_char * STR_LEN)]


@functools.cache
def raw_event_type(lbr_entries: int = LBR_ENTRIES, str_count: int = 0
                   ) -> type[ctypes.Structure]:
    """The record layout for a probe compiled with ``-DLBR_ENTRIES=lbr_entries`` and
    ``-DSTR_COUNT=str_count``."""
    class RawEvent(ctypes.Structure):
        _fields_ = [
            ("ts_ns", ctypes.c_uint64),
            ("duration_ns", ctypes.c_uint64),
            ("func_ip", ctypes.c_uint64),
            ("args", ctypes.c_uint64 * MAX_ARGS),
            ("retval", ctypes.c_uint64),
            ("pid", ctypes.c_uint32),
            ("tid", ctypes.c_uint32),
            ("cpu", ctypes.c_uint32),
            ("kind", ctypes.c_uint32),
            ("kstack_id", ctypes.c_int32),
            ("ustack_id", ctypes.c_int32),
            ("lbr_ret", ctypes.c_int32),
            ("nr_lbr", ctypes.c_uint32),
            ("comm", ctypes.c_char * 16),
            ("lbr", RawBranch * lbr_entries),
            *([("str", RawStr * str_count)] if str_count else []),
        ]

    return RawEvent


def str_indexes(str_mask: int) -> list[int]:
    """Which values a STR_MASK captures, in slot order: args 0-5, then RET_STR."""
    return [i for i in range(MAX_ARGS + 1) if str_mask >> i & 1]


class CapturedStr(NamedTuple):
    """A C string the probe copied (at most STR_LEN - 1 bytes): ``ret`` as the helper
    returned it (> 0: bytes copied with the NUL; 0: a NULL pointer, not read; < 0: -errno)."""

    ret: int
    data: bytes

    @property
    def truncated(self) -> bool:
        return len(self.data) > STR_SHOWN

    @property
    def shown(self) -> bytes:
        return self.data[:STR_SHOWN]


RawEvent = raw_event_type()


class Branch(NamedTuple):
    """One LBR record: a taken branch from ``src`` to ``dst``, with the hardware's flag word.

    A tuple built straight from the record's three words: every event creates 32 of these, and
    decoding the flags eagerly cost more than all the rest of decoding. ``mispred``, ``cycles``
    and ``type`` read the word when asked (perf_branch_entry: mispred:1 predicted:1 in_tx:1
    abort:1 cycles:16 type:4 ...)."""

    src: int
    dst: int
    flags: int = 0

    @property
    def mispred(self) -> bool:
        return bool(self[2] & 1)

    @property
    def cycles(self) -> int:
        return (self[2] >> 4) & 0xFFFF

    @property
    def type(self) -> str:
        return BRANCH_TYPES[(self[2] >> 20) & 0xF]

    @classmethod
    def from_raw(cls, src: int, dst: int, flags: int) -> Branch:
        return _new_tuple(cls, (src, dst, flags))


_new_tuple = tuple.__new__


@dataclass(slots=True)
class Event:
    """One decoded probe hit. ``lbr`` is most-recent-first, as the hardware reports it."""

    probe: str
    kind: str  # "entry" or "exit"
    ts_ns: int
    pid: int
    tid: int
    cpu: int
    comm: str
    func_ip: int
    args: list[int]
    retval: int | None
    duration_ns: int | None
    lbr_ret: int  # bytes of LBR written, or -errno from bpf_get_branch_snapshot
    lbr: list[Branch] = field(default_factory=list)
    kstack: list[int] = field(default_factory=list)
    ustack: list[int] = field(default_factory=list)
    func: str | None = None  # symbol of func_ip, filled by the trace
    id: int = 0  # assigned by the event store
    trace_id: int = 0  # the trace that produced it
    # C strings the probe copied: (arg index or RET_STR, what it read); () when none asked
    strings: tuple[tuple[int, CapturedStr], ...] = ()

    @property
    def retval_signed(self) -> int | None:
        if self.retval is None:
            return None
        return self.retval - (1 << 64) if self.retval >= 1 << 63 else self.retval


# struct lbr_event up to the LBR array, and one perf_branch_entry
HEAD = struct.Struct("<QQQ6QQIIIIiiiI16s")
BRANCH = struct.Struct("<QQQ")
STR = struct.Struct(f"<q{STR_LEN}s")
assert HEAD.size == 128 and STR.size == ctypes.sizeof(RawStr)


def decode_strings(buf: memoryview | bytes, str_mask: int) -> tuple[tuple[int, CapturedStr], ...]:
    """The captured strings at the record's end (``struct user_str str[STR_COUNT]``)."""
    which = str_indexes(str_mask)
    off = len(buf) - len(which) * STR.size
    out = []
    for k, i in enumerate(which):
        ret, data = STR.unpack_from(buf, off + k * STR.size)
        out.append((i, CapturedStr(ret, data[: ret - 1] if ret > 0 else b"")))
    return tuple(out)


def decode_record(buf: memoryview | bytes, probe: str, nargs: int = MAX_ARGS,
                  str_mask: int = 0) -> tuple[Event, int, int]:
    """Decode one record (a ring slot) with one struct call; the fast path.
    ``str_mask``: the STR_MASK the probe was compiled with (its strings end the record)."""
    (ts, dur, func_ip, a0, a1, a2, a3, a4, a5, retval, pid, tid, cpu, kind, kstack, ustack,
     lbr_ret, nr_lbr, comm) = HEAD.unpack_from(buf, 0)
    is_exit = kind == EV_EXIT
    lbr: list[Branch] = []
    if nr_lbr:
        n = min(nr_lbr, (len(buf) - HEAD.size) // BRANCH.size)
        # Branch.from_raw on every (from, to, flags) triple, all in C
        lbr = list(map(_new_tuple, repeat(Branch, n), BRANCH.iter_unpack(
            memoryview(buf)[HEAD.size : HEAD.size + n * BRANCH.size])))
    event = Event(probe, "exit" if is_exit else "entry", ts, pid, tid, cpu,
                  comm.split(b"\0", 1)[0].decode("utf-8", "replace"), func_ip,
                  [a0, a1, a2, a3, a4, a5][:nargs], retval if is_exit else None,
                  dur if is_exit and dur != NO_DURATION else None, lbr_ret, lbr)
    if str_mask:
        event.strings = decode_strings(buf, str_mask)
    return event, kstack, ustack


def decode(data: bytes | int, size: int | None, probe: str, nargs: int = MAX_ARGS,
           raw_type: type[ctypes.Structure] = RawEvent) -> tuple[Event, int, int]:
    """Decode one record field by field through the ctypes layout (the slow, by-name path:
    tests hold :func:`decode_record`'s one-call format against it); returns the event and its
    (kernel, user) stack ids. ``data`` is bytes or the address of a record in memory."""
    if isinstance(data, int):
        raw = raw_type.from_address(data)  # valid only inside the callback: copy out below
    else:
        raw = raw_type.from_buffer_copy(data)
    is_exit = raw.kind == EV_EXIT
    lbr: list[Branch] = []
    if raw.nr_lbr:
        lbr = [Branch.from_raw(b.from_, b.to, b.flags) for b in raw.lbr[: raw.nr_lbr]]
    event = Event(
        probe=probe,
        kind="exit" if is_exit else "entry",
        ts_ns=raw.ts_ns,
        pid=raw.pid,
        tid=raw.tid,
        cpu=raw.cpu,
        comm=raw.comm.decode("utf-8", "replace"),
        func_ip=raw.func_ip,
        args=list(raw.args[:nargs]),
        retval=raw.retval if is_exit else None,
        duration_ns=raw.duration_ns if is_exit and raw.duration_ns != NO_DURATION else None,
        lbr_ret=raw.lbr_ret,
        lbr=lbr,
    )
    return event, raw.kstack_id, raw.ustack_id
