"""A BPF ring-buffer reader that needs no per-record callback from C.

BCC (and libbpf) hand each record to Python through a ctypes callback, about a microsecond of
overhead per event before any work. This reader maps the ring itself (the kernel's documented
layout: a writable consumer page, then a read-only producer page and the data area mapped
twice so a record never wraps) and walks committed records in a plain Python loop, handing out
``memoryview`` slices. Waiting is an epoll on the map fd, which the kernel signals on wakeups.
"""

from __future__ import annotations

import mmap
import select
import struct
from collections.abc import Callable

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HDR_SIZE = 8
_U32 = struct.Struct("<I")


class RingBufReader:
    def __init__(self, map_fd: int, size: int) -> None:
        if size & (size - 1):
            raise ValueError("ring buffer size must be a power of two")
        page = mmap.PAGESIZE
        self.size = size
        self.mask = size - 1
        self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED,
                                   mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._producer = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                                   offset=page)
        self._data = memoryview(self._producer)[page:]
        # The positions are read and written as whole 8-byte words (a memoryview item is one
        # memcpy). Not struct.pack_into: it zero-fills the field before writing it, and a
        # producer that reads consumer_pos == 0 once the ring has wrapped sees it as full and
        # drops the event; byte-wise reads could also tear a moving producer_pos.
        self._cons_pos = memoryview(self._consumer).cast("Q")
        self._prod_pos = memoryview(self._producer)[:page].cast("Q")
        self._epoll = select.epoll()
        self._epoll.register(map_fd, select.EPOLLIN)
        self._page = page

    def wait(self, timeout_ms: int) -> bool:
        """Block until the kernel signals data (or the timeout); True when signalled."""
        return bool(self._epoll.poll(timeout_ms / 1000))

    def drain(self, handle: Callable[[memoryview], None], limit: int | None = None) -> int:
        """Hand every committed record to ``handle``; returns how many were handled."""
        cons_pos = self._cons_pos
        cons = cons_pos[0]
        prod = self._prod_pos[0]
        data, mask, done = self._data, self.mask, 0
        while cons < prod and (limit is None or done < limit):
            off = cons & mask
            length = _U32.unpack_from(data, off)[0]
            if length & BUSY_BIT:
                break  # reserved but not yet submitted: records after it must wait too
            size = length & ~(BUSY_BIT | DISCARD_BIT)
            if not length & DISCARD_BIT:
                record = data[off + HDR_SIZE : off + HDR_SIZE + size]
                try:
                    handle(record)
                finally:
                    # a record still referenced (by the traceback of a handler that raised)
                    # would keep the mapping exported, and close() would fail
                    record.release()
                done += 1
            cons += (HDR_SIZE + size + 7) & ~7
            cons_pos[0] = cons  # give the space back as we go
        return done

    def close(self) -> None:
        self._epoll.close()
        self._cons_pos.release()
        self._prod_pos.release()
        self._data.release()
        self._producer.close()
        self._consumer.close()
