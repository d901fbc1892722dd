"""The event-ring reader (probes/cpuring.py) over the layout the probes write
(bpf/lbr_event.h ``struct cpu_ring``), in an anonymous shared mapping: the producer side is
written here by hand, slot by slot, as the probe's stores do. Live tests drive the real probes
through the same reader (tests/test_trace_live.py, including a ring that overflows)."""

from __future__ import annotations

import ctypes
import mmap
import os
import struct

import pytest

from bpflbr_shell.trace.events import EV_EXIT, HEAD, decode_record, raw_event_type
from bpflbr_shell.trace.probes.cpuring import HEADER, CpuRings, ring_bytes

RECORD = ctypes.sizeof(raw_event_type(0))


class AnonRings(CpuRings):
    """CpuRings over an anonymous shared mapping (fd -1, see the fixture) instead of a map."""

    def publish(self, cpu: int, ts: int, arg: int) -> None:
        """What a probe does: fill the slot at prod, then advance prod."""
        base = cpu * self.stride
        prod, cons = struct.unpack_from("<QQ", self._map, base)
        assert prod - cons < self.slots
        off = base + HEADER + (prod % self.slots) * RECORD
        self._map[off : off + HEAD.size] = HEAD.pack(
            ts, 0, 0x1000, arg, 0, 0, 0, 0, 0, 7, 42, 42, cpu, EV_EXIT, -2, -2, -2, 0, b"t")
        struct.pack_into("<Q", self._map, base, prod + 1)


@pytest.fixture
def rings(monkeypatch: pytest.MonkeyPatch) -> AnonRings:
    real = mmap.mmap

    def anon(fd: int, size: int, *args: object, **kw: object) -> mmap.mmap:
        assert fd == -1
        return real(-1, size)

    monkeypatch.setattr(mmap, "mmap", anon)
    r = AnonRings(-1, 2, 8, RECORD)
    assert r.stride == (ring_bytes(8, RECORD) + 7) & ~7
    monkeypatch.setattr(mmap, "mmap", real)
    yield r
    r.close()


def drained(r: CpuRings, limit: int | None = None) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []

    def handle(rec: memoryview) -> None:
        ev, _, _ = decode_record(rec, "p", 1)
        out.append((ev.ts_ns, ev.cpu, ev.args[0]))

    r.drain(handle, limit)
    return out


def test_records_of_all_cpus_come_out_in_time_order(rings: AnonRings) -> None:
    for ts, cpu in ((10, 1), (11, 0), (12, 0), (13, 1), (14, 1), (15, 0)):
        rings.publish(cpu, ts, ts * 2)
    assert rings.pending() == 6 and rings.published() == 6
    got = drained(rings)
    assert [ts for ts, _, _ in got] == [10, 11, 12, 13, 14, 15]
    assert [(cpu, arg) for ts, cpu, arg in got] == [(1, 20), (0, 22), (0, 24), (1, 26),
                                                    (1, 28), (0, 30)]
    assert rings.pending() == 0 and drained(rings) == []


def test_a_limit_gives_back_only_what_was_handled(rings: AnonRings) -> None:
    for ts, cpu in ((1, 0), (2, 1), (3, 0), (4, 1)):
        rings.publish(cpu, ts, ts)
    assert [ts for ts, _, _ in drained(rings, limit=3)] == [1, 2, 3]
    assert rings.pending() == 1
    assert [ts for ts, _, _ in drained(rings)] == [4]


def test_slots_are_reused_after_wrapping(rings: AnonRings) -> None:
    seen = []
    for round_ in range(5):  # 5 x 6 records through 8-slot rings
        for i in range(6):
            rings.publish(i % 2, round_ * 100 + i, i)
        seen += [ts for ts, _, _ in drained(rings)]
    assert seen == [r * 100 + i for r in range(5) for i in range(6)]
    assert rings.published() == 30


def test_equal_timestamps_keep_each_cpus_slot_order(rings: AnonRings) -> None:
    for arg in range(6):  # one CPU, one timestamp: the order is the slots'
        rings.publish(0, 5, arg)
    rings.publish(1, 5, 99)
    got = [arg for _, cpu, arg in drained(rings) if cpu == 0]
    assert got == list(range(6))


def test_a_handler_that_raises_does_not_lose_the_records_after_it(rings: AnonRings) -> None:
    for ts in (1, 2, 3):
        rings.publish(0, ts, ts)

    def boom(rec: memoryview) -> None:
        raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError):
        rings.drain(boom)
    assert rings.pending() == 2  # the failing record is consumed, the rest wait
    assert [ts for ts, _, _ in drained(rings)] == [2, 3]


def test_wait_returns_at_once_when_something_is_pending(rings: AnonRings) -> None:
    assert rings.wait(0) is False
    rings.publish(1, 1, 1)
    assert rings.wait(1000) is True


def test_a_deadline_cuts_a_drain_short_and_keeps_the_rest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader works in bounded slices: a drain past its deadline hands out no more (it
    looks at the clock every CHECK_EVERY records), and what it did not hand out waits, in
    order."""
    import time

    from bpflbr_shell.trace.probes.cpuring import CHECK_EVERY

    real = mmap.mmap
    monkeypatch.setattr(mmap, "mmap", lambda fd, size, *a, **k: real(-1, size))
    big = AnonRings(-1, 2, 64, RECORD)
    monkeypatch.setattr(mmap, "mmap", real)
    try:
        for i in range(64):  # both CPUs' rings full
            big.publish(0, 2 * i, i)
            big.publish(1, 2 * i + 1, i)
        n = big.drain(lambda rec: None, deadline=time.monotonic())  # already due
        assert n == CHECK_EVERY < 128
        assert big.pending() == 128 - n and big.consumed() == n
        assert [ts for ts, _, _ in drained(big)] == list(range(n, 128))
        for i in range(40):
            big.publish(i % 2, 1000 + i, i)
        assert big.drain(lambda rec: None, deadline=time.monotonic() + 60) == 40
    finally:
        big.close()


def test_discard_gives_every_slot_back_and_counts_it(rings: AnonRings) -> None:
    for ts, cpu in ((1, 0), (2, 1), (3, 1)):
        rings.publish(cpu, ts, ts)
    assert drained(rings, limit=1) == [(1, 0, 1)]
    assert rings.discard() == 2
    assert rings.pending() == 0 and rings.consumed() == rings.published() == 3
    assert rings.discard() == 0
    rings.publish(0, 9, 9)  # the slots are the probes' again
    assert [ts for ts, _, _ in drained(rings)] == [9]


def test_cpu_lists_have_one_parser() -> None:
    """The kernel's CPU list syntax, parsed in one place for online and possible CPUs (ring
    count, LBR events); the running kernel's lists read back as what os and /proc say."""
    from bpflbr_shell.kernel.perf import cpu_list, online_cpus, parse_cpu_list
    from bpflbr_shell.trace.probes.base import possible_cpus

    assert parse_cpu_list("0-3,6\n") == [0, 1, 2, 3, 6]
    assert parse_cpu_list("0") == [0]
    with pytest.raises(ValueError):
        parse_cpu_list("0-x")
    assert online_cpus() == sorted(os.sched_getaffinity(0)) or \
        set(os.sched_getaffinity(0)) <= set(online_cpus())
    assert possible_cpus() == max(cpu_list("possible")) + 1 >= len(online_cpus())
