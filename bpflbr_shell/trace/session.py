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

from bpflbr_shell.errors import NotFoundError
from bpflbr_shell.kernel.values import Signature
from bpflbr_shell.trace.events import Event


class Tracer(Protocol):
    kind: str
    lbr_off_reason: str | None
    bytes: int

    def start(self) -> None: ...
    def poll(self, timeout_ms: int, budget_s: float | None = None) -> int: ...
    def pending(self) -> int: ...
    def discard_pending(self) -> int: ...
    def stop_probes(self) -> None: ...
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


# The reader's share of the interpreter: it hands events over in slices of READ_SLICE_S at most
# and, while the rings still hold more, rests READ_REST_S between slices, so the shell (and a
# printer) always get the GIL within a slice and a command answers at once under a flood.
READ_SLICE_S = 0.02
READ_REST_S = 0.01
POLL_WAIT_MS = 20  # the reader's wait for events, and so how soon it sees a stop
STOP_DRAIN_S = 0.1  # after detaching, the rings are read this long; the rest is counted
# a small backlog (a quiet trace whose reader is slow to start, as under emulation) is always
# delivered: it is read for up to this long; only a flood is cut at STOP_DRAIN_S
SMALL_BACKLOG, SMALL_BACKLOG_DRAIN_S = 256, 2.0
STOP_WAIT_S = 1.5  # how long stop() waits for the reader to finish (then it finishes alone)
PRINT_QUEUE = 1000  # events waiting to be printed; beyond that they are stored, not printed
SWITCH_INTERVAL_S = 0.001  # while traces run (Python's default is 5 ms)


class PrintQueue:
    """Events waiting for the printer. Bounded: a terminal slower than the events costs
    printed lines (counted in ``not_printed``), never events, and never blocks the reader."""

    def __init__(self, capacity: int = PRINT_QUEUE) -> None:
        self.capacity = capacity
        self.not_printed = 0
        self._events: deque[Event] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, event: Event) -> None:
        with self._cond:
            if len(self._events) >= self.capacity:
                self.not_printed += 1
                return
            self._events.append(event)
            self._cond.notify()

    def take(self, timeout: float) -> list[Event]:
        """What is queued now, waiting up to ``timeout`` for something; [] once closed and
        empty (then also at once)."""
        with self._cond:
            if not self._events and not self._closed:
                self._cond.wait(timeout)
            out = list(self._events)
            self._events.clear()
            return out

    def drop_all(self) -> int:
        """Forget what waits (Ctrl-C, trace stop: the user wants the prompt back)."""
        with self._cond:
            n = len(self._events)
            self._events.clear()
            self.not_printed += n
            return n

    def close(self) -> None:
        """No more events will come: a printer empties the queue and ends."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._events)


@dataclass
class Trace:
    """One trace and its books: every hit the probes counted ends up delivered (stored),
    dropped (ring full; unread when the stop's drain ran out of time; its handling failed) or
    filtered (--pid, unpairable returns, read after --limit); until the trace has stopped,
    the rest is pending (published or being written, not read yet). See :meth:`counters`."""

    id: int
    spec: str
    tracer: Any  # a Tracer
    started_ns: int = field(default_factory=time.monotonic_ns)
    stopped_ns: int | None = None
    delivered: int = 0
    over_limit: int = 0  # read after --limit was reached: filtered
    unread: int = 0  # published but still in the rings when the stop's drain ended: dropped
    lost: int = 0  # read, but handling them failed (the error ended the trace): dropped
    limit: int | None = None
    thread: threading.Thread | None = None  # the reader: the one thread that drains the rings
    stop_flag: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)  # final, closed
    final: dict[str, int] | None = None  # the books once detached, drained and closed
    error: BaseException | None = None  # what ended the reader, if anything did
    close_error: BaseException | None = None  # a failure while closing, for stop() to report
    end_reason: str | None = None  # e.g. "process P exited" (--pid)
    printq: PrintQueue | None = None  # events to print (None: --quiet)
    run_stats: tuple[int, int] = (0, 0)  # bpf_stats run_cnt, run_time_ns, last read
    lock: threading.Lock = field(default_factory=threading.Lock)  # counters vs. close
    tracer_ranges: tuple[Any, ...] = ()  # LBR trimming: the tracer's own code
    keep_ranges: tuple[Any, ...] = ()  # LBR trimming: the range of interest
    params: dict[int, Signature] = field(default_factory=dict)  # func_ip -> names and types
    # kernel targets: function name -> Signature, looked up once per function seen
    signature_of: Any = None

    def counters(self) -> dict[str, int]:
        """The books, live while running: ``hits == delivered + drops + filtered + pending``
        at every reading (``pending`` is 0 once stopped). Our own counts are read before the
        kernel's and the kernel's outcomes before its hits (base.py), so a reading taken while
        the probes fire never shows more outcomes than hits: pending is never negative."""
        with self.lock:
            if self.final is not None:
                return dict(self.final)
            ours = (self.delivered, self.over_limit, self.unread, self.lost)
            return account(snapshot_counters(self.tracer, self), *ours, self.not_printed)

    @property
    def not_printed(self) -> int:
        return self.printq.not_printed if self.printq is not None else 0

    @property
    def running(self) -> bool:
        return self.stopped_ns is None

    @property
    def limit_reached(self) -> bool:
        return self.limit is not None and self.delivered >= self.limit


def account(kernel: dict[str, int], delivered: int, over_limit: int, unread: int, lost: int,
            not_printed: int) -> dict[str, int]:
    """The kernel's counters and ours as one set of books (see :class:`Trace`)."""
    hits = kernel.get("hits", 0)
    drops = kernel.get("drops", 0) + unread + lost
    filtered = kernel.get("filtered", 0) + over_limit
    return {**kernel, "hits": hits, "delivered": delivered, "drops": drops,
            "filtered": filtered, "pending": hits - delivered - drops - filtered,
            "drops_ring_full": kernel.get("drops", 0), "drops_unread": unread,
            "drops_error": lost, "filtered_kernel": kernel.get("filtered", 0),
            "over_limit": over_limit, "not_printed": not_printed}


def snapshot_counters(tracer: Any, trace: Trace | None = None) -> dict[str, int]:
    """The tracer's per-CPU counters summed, its ring-buffer bytes, and bpf_stats of its
    programs (run_cnt/run_time_ns need ``kernel.bpf_stats_enabled``, which traces turn on).
    Detached programs may be closed already: then the trace's last reading stands."""
    out = dict(tracer.counters())
    out["bytes"] = tracer.bytes
    fds = tracer.prog_fds()
    if fds or trace is None:
        from bpflbr_shell.kernel.progs import read_raw_prog_info_fd

        run_cnt = run_ns = 0
        for fd in fds:
            raw = read_raw_prog_info_fd(fd, with_btf=False)
            run_cnt += raw.run_cnt
            run_ns += raw.run_time_ns
        if trace is not None:
            trace.run_stats = (run_cnt, run_ns)
    else:
        run_cnt, run_ns = trace.run_stats
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
            deliver: Callable[[Trace, Event, int, int], None],
            after: Callable[[Trace, Event], None] | None = None) -> Trace:
        """Create, start and register a trace; a failed start leaves nothing attached.

        Per event read: ``deliver`` completes it (symbols, stacks), then it is stored and
        counted, then ``after`` sees it (hooks, the print queue). Events read once --limit
        is reached are counted (over_limit), not delivered."""
        with self._lock:
            trace_id = self._next_trace
            self._next_trace += 1
        holder: dict[str, Trace] = {}

        def on_event(event: Event, kstack: int, ustack: int) -> None:
            trace = holder["trace"]
            if trace.limit_reached:
                trace.over_limit += 1
                return
            event.trace_id = trace.id
            deliver(trace, event, kstack, ustack)
            self.store.add(event)
            trace.delivered += 1
            if after is not None:
                after(trace, event)
            if trace.limit_reached:
                trace.stop_flag.set()

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

    def stop(self, trace: Trace, wait_s: float = STOP_WAIT_S) -> bool:
        """Detach at once, then let the trace's reader drain what the rings hold (bounded in
        time; the rest is counted as dropped) and close. One reader per ring, always: a
        running reader thread finishes the trace; this only drains when there is none.
        Returns whether the trace has finished (its books final) within ``wait_s``; a
        reader busy in a slow handler finishes on its own. Idempotent."""
        trace.stop_flag.set()
        try:
            trace.tracer.stop_probes()  # from here, whatever the reader is doing
        except Exception as exc:  # closing retries; report it once the trace has finished
            trace.close_error = trace.close_error or exc
        thread = trace.thread
        if thread is None or thread is threading.current_thread():
            self._finish(trace)  # no reader thread: the caller is the reader
        else:
            trace.finished.wait(wait_s)
        err, trace.close_error = trace.close_error, None
        if err is not None:
            raise err
        return trace.finished.is_set()

    def _finish(self, trace: Trace) -> None:
        """The reader's last act: detach (if not yet), drain for STOP_DRAIN_S, count what is
        left, take the final books, close. Runs once, in the reader thread (or in stop()
        when the trace has none)."""
        if trace.finished.is_set():
            return
        tracer = trace.tracer
        final: dict[str, int] = {}
        try:
            try:
                tracer.stop_probes()
            except Exception as exc:
                trace.close_error = trace.close_error or exc
            if trace.limit_reached:  # what follows the limit is not read, only counted
                trace.over_limit += tracer.discard_pending()
            elif trace.error is None:
                start = time.monotonic()
                deadline = start + STOP_DRAIN_S
                try:
                    while (left := tracer.pending()) and (
                            time.monotonic() < deadline or (
                                left <= SMALL_BACKLOG
                                and time.monotonic() < start + SMALL_BACKLOG_DRAIN_S)):
                        tracer.poll(0, max(0.0, deadline - time.monotonic()) or 0.05)
                        if trace.limit_reached:
                            trace.over_limit += tracer.discard_pending()
                except BaseException as exc:  # noqa: BLE001 - even Ctrl-C: books, then close
                    trace.error = trace.error or exc
            trace.unread += tracer.discard_pending()
            # a record read but not delivered or counted: its handling raised
            trace.lost = max(0, getattr(tracer, "handled", 0) - trace.delivered
                             - trace.over_limit)
            try:
                final = trace.counters()
            except Exception:  # the books stay as they were last read
                pass
        finally:
            with trace.lock:
                if trace.final is None:
                    trace.final = final
                try:
                    tracer.close()
                except Exception as exc:
                    trace.close_error = trace.close_error or exc
                finally:
                    if trace.stopped_ns is None:
                        trace.stopped_ns = time.monotonic_ns()
                    if trace.printq is not None:
                        trace.printq.close()
                    trace.finished.set()

    def delete(self, trace: Trace) -> None:
        self.stop(trace)
        with self._lock:
            self.traces.pop(trace.id, None)

    def stop_traces(self, traces: list[Trace], wait_s: float = STOP_WAIT_S) -> list[bool]:
        """Detach every one first, then wait for their readers (all within ``wait_s``);
        whether each has finished. The first failure is raised once all are stopped."""
        for trace in traces:
            trace.stop_flag.set()
            try:
                trace.tracer.stop_probes()
            except Exception as exc:  # keep detaching the others; stop() reports it
                trace.close_error = trace.close_error or exc
        deadline = time.monotonic() + wait_s
        finished, failure = [], None
        for trace in traces:
            try:
                finished.append(self.stop(trace, max(0.0, deadline - time.monotonic())))
            except Exception as exc:
                finished.append(trace.finished.is_set())
                failure = failure or exc
        if failure is not None:
            raise failure
        return finished

    def stop_all(self, wait_s: float = STOP_WAIT_S) -> None:
        try:
            self.stop_traces(list(self.traces.values()), wait_s)
        except Exception:  # exit paths: everything is detached; nothing to report to
            pass

    def run_reader(self, trace: Trace,
                   on_end: Callable[[Trace], None] | None = None) -> None:
        """Start the trace's one reader thread: it reads in bounded slices until stopped (or
        its ``--pid`` process is gone, or a handler raised), then finishes the trace
        (:meth:`_finish`) and calls ``on_end`` (trace.error / trace.end_reason say why)."""

        def loop() -> None:
            tracer = trace.tracer
            try:
                while not trace.stop_flag.is_set():
                    n = tracer.poll(POLL_WAIT_MS, READ_SLICE_S)
                    reason = target_gone(tracer)
                    if reason is not None:
                        trace.end_reason = reason
                        break
                    if n and tracer.pending():  # a backlog: give the shell its turn
                        trace.stop_flag.wait(READ_REST_S)
            except BaseException as exc:  # noqa: BLE001 - detach first, then report
                trace.error = exc
            finally:
                self._finish(trace)
                if on_end is not None:
                    on_end(trace)

        # a thread waiting for the GIL gets it after the switch interval: the shell's prompt,
        # which gives the GIL up at every read and write, waits that long each time
        if sys.getswitchinterval() > SWITCH_INTERVAL_S:
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        trace.thread = threading.Thread(target=loop, name=f"trace-{trace.id}", daemon=True)
        trace.thread.start()

    def run_background(self, trace: Trace, on_error: Callable[[BaseException], None],
                       on_end: Callable[[str], None] | None = None) -> None:
        """:meth:`run_reader` with the callbacks split: ``on_error`` when a handler raised,
        ``on_end`` when the ``--pid`` process exited."""

        def ended(t: Trace) -> None:
            if t.error is not None:
                on_error(t.error)
            elif t.end_reason is not None and on_end is not None:
                on_end(t.end_reason)

        self.run_reader(trace, ended)


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
