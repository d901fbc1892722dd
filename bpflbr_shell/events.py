"""Decoding of the records our probes write into the ring buffer (see ``bpf/lbr_event.h``).

``RawEvent`` mirrors ``struct lbr_event`` byte for byte; :func:`decode` turns one ring-buffer
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
EV_ENTRY, EV_EXIT = 1, 2
NO_DURATION = (1 << 64) - 1  # an exit not paired with its entry (bpf/lbr_event.h)

# perf_branch_entry.type (enum perf_branch_sample_type_shift order in uapi perf_event.h)
BRANCH_TYPES = ("unknown", "cond", "uncond", "ind", "call", "ind_call", "ret", "syscall",
                "sysret", "cond_call", "cond_ret", "eret", "irq", "serror", "no_tx", "extend_abi")


class RawBranch(ctypes.Structure):
    _fields_ = [("from_", ctypes.c_uint64), ("to", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


@functools.cache
def raw_event_type(lbr_entries: int = LBR_ENTRIES) -> type[ctypes.Structure]:
    """The record layout for a probe compiled with ``-DLBR_ENTRIES=lbr_entries``."""
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
        ]

    return RawEvent


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

    @property
    def retval_signed(self) -> int | None:
        if self.retval is None:
            return None
        return self.retval - (1 << 64) if self.retval >= 1 << 63 else self.retval


# struct lbr_event up to the LBR array, and one perf_branch_entry
HEAD = struct.Struct("<QQQ6QQIIIIiiiI16s")
BRANCH = struct.Struct("<QQQ")
assert HEAD.size == 128


def decode_record(buf: memoryview | bytes, probe: str, nargs: int = MAX_ARGS
                  ) -> tuple[Event, int, int]:
    """Decode one record (a ring-buffer slice) with one struct call; the fast path."""
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
    return event, kstack, ustack


def decode(data: bytes | int, size: int | None, probe: str, nargs: int = MAX_ARGS,
           raw_type: type[ctypes.Structure] = RawEvent) -> tuple[Event, int, int]:
    """Decode one record; returns the event and its (kernel, user) stack ids for later lookup.

    ``data`` is either bytes or the raw pointer BCC's ring-buffer callback receives.
    """
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
