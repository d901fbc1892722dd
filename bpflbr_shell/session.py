"""What is being traced now: traces, the event store, counters, and guaranteed cleanup.

Every tracer registered here is closed on ``trace stop``, shell exit, SIGTERM and exceptions
(:func:`install_cleanup` wires atexit and SIGTERM), so no probe outlives the shell.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import NotFoundError
from .events import Event
from .values import Signature


class Tracer(Protocol):
    kind: str
    lbr_off_reason: str | None
    bytes: int

    def start(self) -> None: ...
    def poll(self, timeout_ms: int) -> None: ...
    def close(self) -> None: ...
    def counters(self) -> dict[str, int]: ...
    def prog_fds(self) -> list[int]: ...
    def stack(self, stack_id: int) -> list[int]: ...


class EventStore:
    """The last ``capacity`` events, with ids that keep counting when old ones fall out."""

    def __init__(self, capacity: int = 10000) -> None:
        self._events: deque[Event] = deque(maxlen=capacity)
        self._next_id = 1
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return self._events.maxlen or 0

    def resize(self, capacity: int) -> None:
        with self._lock:
            self._events = deque(self._events, maxlen=max(1, capacity))

    def add(self, event: Event) -> Event:
        with self._lock:
            event.id = self._next_id
            self._next_id += 1
            self._events.append(event)
        return event

    def get(self, event_id: int) -> Event:
        with self._lock:
            if self._events and self._events[0].id <= event_id <= self._events[-1].id:
                return self._events[event_id - self._events[0].id]
        raise NotFoundError(f"no event #{event_id} in the store",
                            "see 'show events'; 'set event-store N' keeps more")

    def last(self, n: int | None = None) -> list[Event]:
        with self._lock:
            events = list(self._events)
        return events if n is None else events[-n:] if n > 0 else []

    def clear(self) -> None:
        with self._lock:
            self._events.clear()

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.last())


@dataclass
class Trace:
    id: int
    spec: str
    tracer: Any  # a Tracer
    started_ns: int = field(default_factory=time.monotonic_ns)
    stopped_ns: int | None = None
    delivered: int = 0
    limit: int | None = None
    thread: threading.Thread | None = None
    stop_flag: threading.Event = field(default_factory=threading.Event)
    final: dict[str, int] | None = None  # counters read just before detaching
    tracer_ranges: tuple[Any, ...] = ()  # LBR trimming: the tracer's own code
    keep_ranges: tuple[Any, ...] = ()  # LBR trimming: the range of interest
    params: dict[int, Signature] = field(default_factory=dict)  # func_ip -> names and types
    # kernel targets: function name -> Signature, looked up once per function seen
    signature_of: Any = None

    def counters(self) -> dict[str, int]:
        """In-kernel counters (hits, drops, ...) plus our own; live while running."""
        live = self.final if self.final is not None else snapshot_counters(self.tracer)
        return {**live, "delivered": self.delivered}

    @property
    def running(self) -> bool:
        return self.stopped_ns is None


def snapshot_counters(tracer: Any) -> dict[str, int]:
    """The tracer's per-CPU counters summed, its ring-buffer bytes, and bpf_stats of its
    programs (run_cnt/run_time_ns need ``kernel.bpf_stats_enabled``, which traces turn on)."""
    out = dict(tracer.counters())
    out["bytes"] = tracer.bytes
    run_cnt = run_ns = 0
    for fd in tracer.prog_fds():
        from .kernel.progs import read_raw_prog_info_fd

        raw = read_raw_prog_info_fd(fd, with_btf=False)
        run_cnt += raw.run_cnt
        run_ns += raw.run_time_ns
    out["run_cnt"], out["run_time_ns"] = run_cnt, run_ns
    return out


class Session:
    """Traces of one shell; hooks see every event after it is stored."""

    def __init__(self, store_capacity: int = 10000) -> None:
        self.traces: dict[int, Trace] = {}
        self.store = EventStore(store_capacity)
        self.hooks: list[Callable[[Event], None]] = []
        self._next_trace = 1
        self._lock = threading.RLock()
        _SESSIONS.add(self)

    def add(self, spec: str, make_tracer: Callable[[Callable[..., None]], Any],
            deliver: Callable[[Trace, Event, int, int], None]) -> Trace:
        """Create, start and register a trace; a failed start leaves nothing attached."""
        with self._lock:
            trace_id = self._next_trace
            self._next_trace += 1
        holder: dict[str, Trace] = {}

        def on_event(event: Event, kstack: int, ustack: int) -> None:
            deliver(holder["trace"], event, kstack, ustack)

        tracer = make_tracer(on_event)
        trace = Trace(trace_id, spec, tracer)
        holder["trace"] = trace
        tracer.start()  # closes itself on failure
        with self._lock:
            self.traces[trace_id] = trace
        return trace

    def get(self, trace_id: int) -> Trace:
        try:
            return self.traces[trace_id]
        except KeyError:
            raise NotFoundError(f"no trace {trace_id}", "see 'trace list'") from None

    def stop(self, trace: Trace) -> None:
        """Stop polling, then detach; idempotent."""
        trace.stop_flag.set()
        thread = trace.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        if trace.final is None:
            try:
                # what the kernel wrote before we stopped is part of the trace: deliver it
                trace.tracer.poll(0)
            except BaseException:  # noqa: BLE001 - even Ctrl-C: detaching comes first
                pass
            try:
                trace.final = snapshot_counters(trace.tracer)
            except Exception:
                trace.final = {}
        trace.tracer.close()
        if trace.stopped_ns is None:
            trace.stopped_ns = time.monotonic_ns()

    def delete(self, trace: Trace) -> None:
        self.stop(trace)
        with self._lock:
            self.traces.pop(trace.id, None)

    def stop_all(self) -> None:
        for trace in list(self.traces.values()):
            try:
                self.stop(trace)
            except Exception:  # keep detaching the others
                pass

    def run_background(self, trace: Trace, on_error: Callable[[BaseException], None],
                       on_end: Callable[[str], None] | None = None) -> None:
        """Poll in a thread until stopped; a trace whose target is gone (``--pid`` and the
        process exited) stops itself and tells ``on_end`` why."""
        def loop() -> None:
            try:
                while not trace.stop_flag.is_set():
                    trace.tracer.poll(100)
                    reason = target_gone(trace.tracer)
                    if reason is not None:
                        self.stop(trace)  # drains what the rings hold, then detaches
                        if on_end is not None:
                            on_end(reason)
                        return
            except BaseException as exc:  # detach first (never leave it attached), then report
                try:
                    trace.tracer.close()
                finally:
                    trace.stopped_ns = time.monotonic_ns()
                    on_error(exc)

        trace.thread = threading.Thread(target=loop, name=f"trace-{trace.id}", daemon=True)
        trace.thread.start()


def target_gone(tracer: Any) -> str | None:
    """Why a trace has nothing left to see (``process P exited``), or None; the poll loops
    (foreground and background) ask after each poll."""
    check = getattr(tracer, "target_gone", None)
    return check() if check is not None else None


_SESSIONS: weakref.WeakSet[Session] = weakref.WeakSet()
_installed = False


def stop_everything() -> None:
    """Detach every probe of every session (atexit and SIGTERM path)."""
    for session in list(_SESSIONS):
        session.stop_all()


def install_cleanup() -> None:
    """atexit + SIGTERM/SIGHUP -> detach everything, then exit with 128+signo."""
    global _installed
    if _installed:
        return
    _installed = True
    atexit.register(stop_everything)

    def on_signal(signo: int, _frame: Any) -> None:
        stop_everything()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(128 + signo)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, on_signal)
