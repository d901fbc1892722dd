"""The reader side of the probes' per-CPU event rings (``struct cpu_ring`` in
``bpf/lbr_event.h``).

A probe publishes an event with plain stores into its CPU's ring, in an mmap-able array map:
no ring-buffer helper, no lock and no wakeup per event (under emulation a BPF ring-buffer
reserve and submit alone cost most of what a whole empty fexit program adds). The price is on
this side: there is no wakeup, so :meth:`CpuRings.wait` polls the rings' counters, and events
of different CPUs are merged back into time order here.

Layout per CPU: a 64-byte header (``prod``, written by the probe; ``cons``, written here;
``busy``, the probe's nesting guard), then ``slots`` fixed-size records. Slots ``[cons, prod)``
are published; a slot is handed out as a ``memoryview`` and given back (``cons`` advanced) once
its handler returns. x86 keeps stores in order, and the probe writes ``prod`` after the slot,
so a slot below ``prod`` is complete when we read it.

One thread reads a trace's rings (session.py): ``cons`` has one writer, and no record is
handed out twice. :meth:`CpuRings.drain` takes a deadline so the reader works in bounded
slices; what a stop could not read in time is given back unread by :meth:`CpuRings.discard`,
which says how many (they are counted as dropped, not lost from the books).
"""

from __future__ import annotations

import heapq
import mmap
import struct
import time
from collections.abc import Callable, Iterator

HEADER = 64
POLL_S = 0.01  # how often wait() looks at the counters
CHECK_EVERY = 16  # a deadline-bound drain looks at the clock every this many records
_TS = struct.Struct("<Q")  # every record starts with its timestamp


def slots_for(total_bytes: int, ncpus: int, record: int, minimum: int = 16,
              maximum_bytes: int = 4 << 20) -> int:
    """Slots per CPU ring: a power of two sharing ``total_bytes`` among ``ncpus`` rings, at
    least ``minimum``, each ring (a map value) at most ``maximum_bytes`` (the kernel's cap on
    an array map's value size)."""
    want = max(minimum, total_bytes // max(ncpus, 1) // record)
    cap = max(1, (maximum_bytes - HEADER) // record)
    n = 1
    while n * 2 <= min(want, cap):
        n *= 2
    return n


def ring_bytes(slots: int, record: int) -> int:
    """The size of one CPU's ring (one map value): header and slots."""
    return HEADER + slots * record


class CpuRings:
    def __init__(self, map_fd: int, nrings: int, slots: int, record: int) -> None:
        if slots & (slots - 1):
            raise ValueError("slots per ring must be a power of two")
        self.nrings, self.slots, self.record = nrings, slots, record
        self.stride = (ring_bytes(slots, record) + 7) & ~7  # array values are 8-aligned
        size = self.stride * nrings
        size = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
        self._map = mmap.mmap(map_fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._view = memoryview(self._map)
        # counters as whole 8-byte words: one load or store each, never torn
        self._words = self._view.cast("Q")
        self._prod = [(i * self.stride) // 8 for i in range(nrings)]

    def published(self) -> int:
        """Events the probes have published so far, over every CPU."""
        w = self._words
        return sum(w[p] for p in self._prod)

    def consumed(self) -> int:
        """Records handed to the reader's handler (or discarded), over every CPU."""
        w = self._words
        return sum(w[p + 1] for p in self._prod)

    def pending(self) -> int:
        w = self._words
        return sum(w[p] - w[p + 1] for p in self._prod)

    def discard(self) -> int:
        """Give every published slot back unread; returns how many (the stop path counts
        them as dropped once its time to drain is up)."""
        w = self._words
        n = 0
        for p in self._prod:
            prod, cons = w[p], w[p + 1]
            if prod > cons:
                n += prod - cons
                w[p + 1] = prod
        return n

    def wait(self, timeout_ms: int) -> bool:
        """Until some ring holds events, or ``timeout_ms``; True when there are events."""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            if self.pending():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(POLL_S, left))

    def _stream(self, cpu: int, cons: int, prod: int) -> Iterator[tuple[int, int, int, int]]:
        """One CPU's published records, lazily: a drain cut short by its deadline has
        looked only at what it handed out."""
        view, record, mask = self._view, self.record, self.slots - 1
        base, p = cpu * self.stride + HEADER, self._prod[cpu]
        for i in range(cons, prod):
            off = base + (i & mask) * record
            yield _TS.unpack_from(view, off)[0], i, off, p

    def drain(self, handle: Callable[[memoryview], None], limit: int | None = None,
              deadline: float | None = None) -> int:
        """Hand published records to ``handle``, oldest first across CPUs (each CPU's
        records are in time order; they are merged by timestamp, ties kept in slot order),
        until none is left, ``limit`` were handled or ``time.monotonic()`` passes
        ``deadline``; returns how many."""
        w, view, record = self._words, self._view, self.record
        streams = []
        for cpu, p in enumerate(self._prod):
            prod, cons = w[p], w[p + 1]
            if prod > cons:
                streams.append(self._stream(cpu, cons, prod))
        if not streams:
            return 0
        merged = streams[0] if len(streams) == 1 else heapq.merge(*streams)
        done = 0
        clock = time.monotonic
        for _ts, _seq, off, p in merged:
            if limit is not None and done >= limit:
                break
            if deadline is not None and done & (CHECK_EVERY - 1) == 0 and done \
                    and clock() >= deadline:
                break
            rec = view[off : off + record]
            try:
                handle(rec)
            finally:
                # a record still referenced (by the traceback of a handler that raised) would
                # keep the mapping exported, and close() would fail
                rec.release()
                w[p + 1] += 1  # this CPU's next record; its slot is the probe's again
            done += 1
        return done

    def close(self) -> None:
        self._words.release()
        self._view.release()
        self._map.close()
