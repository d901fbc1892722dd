"""session.py without the kernel: the print queue that keeps a slow terminal from holding up
the reader, and how the kernel's counters and the reader's own make one set of books. The
live side (real probes, floods, stop) is tests/test_session_live.py."""

from __future__ import annotations

import threading
import time

from bpflbr_shell.trace.events import Event
from bpflbr_shell.trace.session import PrintQueue, account


def event(n: int) -> Event:
    return Event(probe="p", kind="exit", ts_ns=n, pid=1, tid=1, cpu=0, comm="t",
                 func_ip=0x1000, args=[n, 0, 0, 0, 0, 0], retval=0, duration_ns=None,
                 lbr_ret=-95)


def test_a_full_print_queue_counts_instead_of_waiting() -> None:
    q = PrintQueue(capacity=3)
    t0 = time.monotonic()
    for n in range(10):
        q.put(event(n))
    assert time.monotonic() - t0 < 0.5  # never blocks the reader
    assert len(q) == 3 and q.not_printed == 7
    assert [e.ts_ns for e in q.take(0)] == [0, 1, 2]  # the oldest are kept, in order
    q.put(event(10))
    assert q.drop_all() == 1 and q.not_printed == 8 and len(q) == 0


def test_take_waits_for_events_and_returns_at_once_when_closed() -> None:
    q = PrintQueue()
    threading.Timer(0.05, q.put, (event(1),)).start()
    assert [e.ts_ns for e in q.take(5)] == [1]
    t0 = time.monotonic()
    assert q.take(0.05) == []  # nothing came: the timeout
    q.close()
    assert q.take(5) == [] and time.monotonic() - t0 < 1  # closed: no wait
    assert q.closed


def test_books_put_our_counts_beside_the_kernels() -> None:
    kernel = {"hits": 100, "drops": 10, "filtered": 5, "missed_entry": 0}
    running = account(kernel, delivered=60, over_limit=0, unread=0, lost=0, not_printed=7)
    assert running["pending"] == 25  # in the rings or being read
    assert running["hits"] == running["delivered"] + running["drops"] + running["filtered"] \
        + running["pending"]
    stopped = account(kernel, delivered=70, over_limit=3, unread=11, lost=1, not_printed=7)
    assert (stopped["drops"], stopped["filtered"], stopped["pending"]) == (22, 8, 0)
    assert (stopped["drops_ring_full"], stopped["drops_unread"], stopped["drops_error"],
            stopped["filtered_kernel"], stopped["over_limit"], stopped["not_printed"]) == \
        (10, 11, 1, 5, 3, 7)
