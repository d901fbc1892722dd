"""What every probe kind shares: LBR perf events, compiling with knobs, the per-CPU ring reader,
stacks, counters, and a close() that releases everything on every path.

A subclass names its BPF source and implements :meth:`ProbeTracer.attach` (and
:meth:`ProbeTracer.detach` for what ``bpf.cleanup()`` does not undo, such as libbpf links).
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bpflbr_shell.errors import UserError
from bpflbr_shell.trace.events import LBR_ENTRIES, Event, decode_record, raw_event_type
from bpflbr_shell.trace.lbr import AddrRange
from bpflbr_shell.trace.probes import objcache
from bpflbr_shell.trace.probes.cpuring import CpuRings, ring_bytes, slots_for
from bpflbr_shell.trace.probes.progobj import ProbeObject
from bpflbr_shell.trace.spec import TraceSpec

STACK_CACHE = 4096
STATS = ("hits", "drops", "filtered", "missed_entry")  # bpf/lbr_event.h STAT_*


@dataclass(slots=True)
class CaptureOptions:
    """What a trace captures; the same for every probe kind."""

    lbr: bool = True
    branch_types: str = "any"
    ustack: bool = True
    kstack: bool = True
    # stacks are the LBR fallback: with LBR records they are taken only when asked for
    # (--stack/--kstack): the kernel stack walk is most of a probe's in-kernel cost
    stacks_with_lbr: bool = False
    pid: int = -1
    ringbuf_pages: int = 1024  # 4 MiB of event rings, shared among the CPUs
    extra: dict[str, Any] = field(default_factory=dict)  # ints; FILTER_EXPR: generated C


def capture_options(spec: TraceSpec, ustack: bool | None = None,
                    kstack: bool | None = None) -> CaptureOptions:
    """What a spec asks to capture. Kernel and BPF targets take kernel stacks always (the LBR
    fallback) and user stacks only with ``stack`` (symbolizing them means opening every
    traced process); a kind may say otherwise (``ustack``/``kstack``)."""
    return CaptureOptions(lbr=spec.lbr, branch_types=spec.branch_types,
                          ustack=spec.stack if ustack is None else ustack,
                          kstack=True if kstack is None else kstack, pid=spec.pid or -1,
                          stacks_with_lbr=spec.stack or spec.kstack,
                          ringbuf_pages=spec.ring_pages)


def kernel_filter_knobs(capture: CaptureOptions) -> Callable[[str], None]:
    """What a plan calls with a filter's generated C: the probe compiles it (FILTER_EXPR),
    reading comm first when the C compares it (FILTER_COMM)."""
    def give(c: str) -> None:
        from bpflbr_shell.trace.filter import uses_comm

        capture.extra["FILTER_EXPR"] = c
        capture.extra["FILTER_COMM"] = int(uses_comm(c))

    return give


def possible_cpus() -> int:
    """How many CPU ids the kernel may use (one event ring each): /sys's ``possible`` range."""
    from bpflbr_shell.kernel.perf import cpu_list

    return max(cpu_list("possible"), default=0) + 1


def stack_knobs(capture: CaptureOptions, lbr_on: bool) -> dict[str, int]:
    """Which stacks the probe takes: the asked-for ones when LBR is off (they are its
    fallback), only on request (``stacks_with_lbr``) when LBR records are captured."""
    stacks = not lbr_on or capture.stacks_with_lbr
    return {"CAPTURE_USTACK": int(capture.ustack and stacks),
            "CAPTURE_KSTACK": int(capture.kstack and stacks)}


class ProbeTracer:
    kind = "probe"
    source = ""
    lbr_kernel = True  # which privilege levels the LBR perf events record
    lbr_user = False

    def __init__(self, capture: CaptureOptions, on_event: Callable[[Event, int, int], None],
                 label: str) -> None:
        self.capture = capture
        self.on_event = on_event
        self.label = label
        self.bpf: ProbeObject | None = None
        self.reader: CpuRings | None = None
        self.lbr_fds: list[int] = []
        self.lbr_off_reason: str | None = None
        self.lbr_entries = 0
        self.bytes = 0
        self.lbr_errors = 0  # delivered events whose snapshot failed (LBR on)
        self.str_mask = 0
        self.handled = 0  # records handed to _handle (the reader thread's count)
        self.discarded = 0  # records given back unread at stop
        self._stacks: dict[int, list[int]] = {}
        self._detached = False
        self._closed = False

    # lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Compile, attach and map the event rings; on any failure release what was made."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        from bpflbr_shell.kernel import perf

        capture_lbr = self.capture.lbr
        if capture_lbr:
            try:
                self.lbr_fds = perf.open_lbr_events(self.capture.branch_types,
                                                    kernel=self.lbr_kernel, user=self.lbr_user)
            except UserError as exc:  # no PMU (FeatureError) or not allowed (PrivilegeError)
                capture_lbr = False
                self.lbr_off_reason = str(exc)
        self.lbr_entries = LBR_ENTRIES if capture_lbr else 0
        knobs = {
            "CAPTURE_LBR": int(capture_lbr), "LBR_ENTRIES": self.lbr_entries,
            **stack_knobs(self.capture, capture_lbr),
            # the pid filter, fixed per trace; never trace ourselves (our polling would feed
            # the trace), unless asked to by pid
            "FILTER_TGID": max(self.capture.pid, 0),
            "EXCLUDE_TGID": 0 if self.capture.pid == os.getpid() else os.getpid(),
            **self.knobs(), **self.capture.extra,
        }
        # the record's size follows the LBR_ENTRIES the program is really compiled with
        record = ctypes.sizeof(raw_event_type(knobs["LBR_ENTRIES"], knobs.get("STR_COUNT", 0)))
        self.str_mask = knobs.get("STR_MASK", 0)  # which C strings end each record
        nrings = possible_cpus()
        slots = slots_for(self.capture.ringbuf_pages * 4096, nrings, record)
        knobs.update(NR_RINGS=nrings, RING_SLOTS=slots, RING_BYTES=ring_bytes(slots, record))
        self.bpf = objcache.build_program(self.source, knobs)
        self.attach()
        self.reader = CpuRings(self.bpf.map_fd("rings"), nrings, slots, record)

    def knobs(self) -> dict[str, int]:
        """Compile-time knobs of the subclass (integers chosen by the tool)."""
        return {}

    def attach(self) -> None:
        raise NotImplementedError

    def detach(self) -> None:
        """Undo what ``bpf.cleanup()`` does not (links and fds we made through libbpf)."""

    def stop_probes(self) -> None:
        """Detach: the probes stop firing, while the rings, stacks and counters stay readable
        (the reader drains what the rings hold after this). Idempotent; any thread may call
        it while the reader thread reads (it touches attachments, never the maps)."""
        if self._detached:
            return
        self._detached = True
        from bpflbr_shell.kernel import perf

        try:
            self.detach()
        finally:
            try:
                if self.bpf is not None:
                    self.bpf.detach_events()
            finally:
                perf.close_all(self.lbr_fds)
                self.lbr_fds = []

    def close(self) -> None:
        """Detach, then free everything; safe to call twice and from signal paths. Only the
        trace's reader (or a caller when there is none) closes: the rings are unmapped."""
        if self._closed:
            return
        self._closed = True
        try:
            self.stop_probes()  # first, whatever else fails: the probes come off
        finally:
            reader, self.reader = self.reader, None
            try:
                if reader is not None:
                    reader.close()
            finally:
                bpf, self.bpf = self.bpf, None
                if bpf is not None:
                    bpf.cleanup()

    # events -----------------------------------------------------------------------------------
    def _handle(self, record: memoryview) -> None:
        self.handled += 1  # first: a record whose decoding fails is still accounted for
        event, kstack, ustack = decode_record(record, self.label, str_mask=self.str_mask)
        self.bytes += len(record)
        if event.lbr_ret < 0 and self.lbr_entries:
            self.lbr_errors += 1  # counted here: the probe's hot path stays short
        self.on_event(event, kstack, ustack)

    def poll(self, timeout_ms: int, budget_s: float | None = None) -> int:
        """Deliver ready events to ``on_event``; waits ``timeout_ms`` at most for the first
        (the rings are polled, there is no wakeup), then hands over what is there, for
        ``budget_s`` at most when given. Returns how many were handed over. Only the trace's
        one reader calls this."""
        if self.reader is None or self._closed:
            return 0
        self.reader.wait(timeout_ms)
        deadline = None if budget_s is None else time.monotonic() + budget_s
        return self.reader.drain(self._handle, deadline=deadline)

    def pending(self) -> int:
        """Published records not read yet."""
        return self.reader.pending() if self.reader is not None and not self._closed else 0

    def discard_pending(self) -> int:
        """Give back what the rings still hold, unread (the stop path, out of time); how
        many. The reader's call, after :meth:`stop_probes`."""
        if self.reader is None or self._closed:
            return 0
        n = self.reader.discard()
        self.discarded += n
        return n

    def stack(self, stack_id: int) -> list[int]:
        """Addresses of a captured stack. An id always names the same stack (the map is
        created without BPF_F_REUSE_STACKID: a colliding new stack gets -EEXIST instead), so
        ids are cached and a hot call site costs one map lookup, not one per event."""
        if stack_id < 0:
            return []
        cached = self._stacks.get(stack_id)
        if cached is None:
            if self.bpf is None:
                return []
            try:
                cached = self.bpf.stack_walk("stacks", stack_id)
            except (KeyError, OSError, UserError):
                return []
            if len(self._stacks) < STACK_CACHE:
                self._stacks[stack_id] = cached
        return list(cached)

    def counters(self) -> dict[str, int]:
        """The probes' counters summed over CPUs. The outcomes are read before ``hits``: a
        probe counts its hit before its outcome, so a reading taken while the probes fire
        never has more outcomes than hits (session.py relies on it)."""
        if self.bpf is None:
            return {}
        out = {name: self.bpf.percpu_sum("stats", i)
               for i, name in reversed(list(enumerate(STATS)))}
        out["lbr_errors"] = self.lbr_errors
        out["handled"] = self.handled
        out["discarded"] = self.discarded
        # what the probes published: the rings' own counters, exact and free to read
        out["submitted"] = self.reader.published() if self.reader is not None else 0
        return out

    def prog_fds(self) -> list[int]:
        """Our loaded programs (for bpf_stats and LBR trimming)."""
        if self.bpf is None:
            return []
        return self.bpf.prog_fds()

    def keep_ranges(self) -> list[AddrRange]:
        """Where the relevant branches are; empty keeps everything the tracer did not cause."""
        return []

    def target_gone(self) -> str | None:
        """``process P exited`` once a ``--pid`` trace's process is gone (bpftrace's -p ends
        then too), else None. One small /proc read per poll: a zombie (exited, not yet
        reaped by its parent) counts as gone."""
        pid = self.capture.pid
        if pid <= 0:
            return None
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rpartition(b")")[2].split(None, 1)[0]
        except (OSError, IndexError):
            return f"process {pid} exited"
        return f"process {pid} exited" if state in (b"Z", b"X") else None
