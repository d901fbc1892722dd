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
from typing import TYPE_CHECKING, Any

from bpflbr_shell.errors import FeatureError, NotFoundError, UserError
from bpflbr_shell.kernel.values import Signature
from bpflbr_shell.symbols.kernel import USER_SPACE_END, Location
from bpflbr_shell.trace.events import Event
from bpflbr_shell.trace.spec import PlanContext, TracePlan, Tracer, TraceSpec

if TYPE_CHECKING:
    from bpflbr_shell.kernel.view import KernelView
    from bpflbr_shell.symbols.user import UserSymbolizer

__all__ = ["EventStore", "PrintQueue", "Session", "Trace", "Tracer", "install_cleanup"]


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
    spec: str  # as `trace list` shows it
    tracer: Tracer
    started_ns: int = field(default_factory=time.monotonic_ns)
    stopped_ns: int | None = None
    delivered: int = 0
    over_limit: int = 0  # read after --limit was reached: filtered
    unread: int = 0  # published but still in the rings when the stop's drain ended: dropped
    lost: int = 0  # read, but handling them failed (the error ended the trace): dropped
    rejected_user: int = 0  # read, and refused by a filter evaluated in user space
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
    asked: TraceSpec | None = None  # what session.trace() was given
    filter: Any = None  # trace.filter.Filter: this trace's and the session's, combined
    plan: TracePlan | None = field(default=None, repr=False)
    summary: str = ""  # what attaching said: "uretprobe on 1 function(s) of ...: getpid"
    session: Session | None = field(default=None, repr=False)

    def events(self) -> list[Event]:
        """This trace's events still in the session's store, oldest first."""
        if self.session is None:
            return []
        return [e for e in self.session.store.last() if e.trace_id == self.id]

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the trace has finished (limit, stop, its process gone); whether it has."""
        return self.finished.wait(timeout)

    def stop(self) -> bool:
        """Detach, drain and close (see :meth:`Session.stop`); whether it has finished."""
        if self.session is None:
            raise NotFoundError(f"trace {self.id} belongs to no session")
        return self.session.stop(self)

    def counters(self) -> dict[str, int]:
        """The books, live while running: ``hits == delivered + drops + filtered + pending``
        at every reading (``pending`` is 0 once stopped). Our own counts are read before the
        kernel's and the kernel's outcomes before its hits (base.py), so a reading taken while
        the probes fire never shows more outcomes than hits: pending is never negative."""
        with self.lock:
            if self.final is not None:
                return dict(self.final)
            ours = (self.delivered, self.over_limit, self.unread, self.lost)
            return account(snapshot_counters(self.tracer, self), *ours, self.not_printed,
                           self.rejected_user)

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
            not_printed: int, rejected_user: int = 0) -> dict[str, int]:
    """The kernel's counters and ours as one set of books (see :class:`Trace`)."""
    hits = kernel.get("hits", 0)
    drops = kernel.get("drops", 0) + unread + lost
    filtered = kernel.get("filtered", 0) + over_limit + rejected_user
    return {**kernel, "hits": hits, "delivered": delivered, "drops": drops,
            "filtered": filtered, "pending": hits - delivered - drops - filtered,
            "drops_ring_full": kernel.get("drops", 0), "drops_unread": unread,
            "drops_error": lost, "filtered_kernel": kernel.get("filtered", 0),
            # rejected in user space: by a filter, or read after --limit
            "filtered_user": rejected_user + over_limit, "over_limit": over_limit,
            "not_printed": not_printed}


def snapshot_counters(tracer: Any, trace: Trace | None = None) -> dict[str, int]:
    """The tracer's per-CPU counters summed, the bytes its rings carried, and bpf_stats of its
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


def _stderr_notice(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")


class Session:
    """Traces of one shell (or one script, or one py user): the trace pipeline from a
    :class:`TraceSpec` to stored, counted events. Hooks see every event after it is stored;
    ``notify`` hears what the user should know (a backend refused, a hook failed).

    ``kernel`` opens the kernel view on first use (the user-space kinds never need it)."""

    def __init__(self, store_capacity: int = 10000,
                 kernel: Callable[[], KernelView] | None = None,
                 notify: Callable[[str], None] | None = None) -> None:
        self.traces: dict[int, Trace] = {}
        self.store = EventStore(store_capacity)
        self.hooks: list[Callable[[Event], None]] = []
        # before the store: a gate returning False (exactly) drops the event (counted as
        # filtered in user space); extensions' @on_event hooks
        self.gates: list[Callable[[Event], object]] = []
        self._gates_failed: set[int] = set()
        self.notify = notify or _stderr_notice
        self._kernel_factory = kernel
        self._kernel: KernelView | None = None
        self._user_syms: UserSymbolizer | None = None
        # user functions' prototypes (DWARF), per (pid, function): looked up once
        self.params: dict[tuple[int, str], Signature | None] = {}
        self._stats_fd: int | None = None
        self.filters: dict[int, str] = {}  # `filter EXPR`: id -> text, for every trace
        self._next_filter = 1
        self._next_trace = 1
        self._lock = threading.RLock()
        _SESSIONS.add(self)

    # the views the pipeline enriches events with ----------------------------------------------
    @property
    def kernel(self) -> KernelView:
        if self._kernel is None:
            if self._kernel_factory is not None:
                self._kernel = self._kernel_factory()
            else:
                from bpflbr_shell.kernel.view import KernelView

                self._kernel = KernelView()
        return self._kernel

    @property
    def user_syms(self) -> UserSymbolizer:
        if self._user_syms is None:
            from bpflbr_shell.symbols.user import UserSymbolizer

            self._user_syms = UserSymbolizer()
        return self._user_syms

    def symbolize(self, event: Event | None, addr: int) -> Location:
        """An address of ``event`` (user ones in its process), as every renderer shows it."""
        if addr < USER_SPACE_END:
            if event is None:
                return Location(addr)  # a user address needs its process
            return self.user_syms.symbolize(event.pid, addr)
        try:
            from bpflbr_shell.symbols.kernel import kernel_symbolizer

            return kernel_symbolizer(self.kernel).symbolize(addr)
        except UserError:  # no kallsyms here (no root): bare addresses
            return Location(addr)

    def params_of(self, event: Event) -> Signature | None:
        """Parameter names and value types of the event's function: BTF (kernel and BPF
        targets) or DWARF (user); renderers present args and retval through them."""
        trace = self.traces.get(event.trace_id)
        if trace is not None:
            if event.func_ip in trace.params:
                return trace.params[event.func_ip]
            if trace.signature_of is not None:  # a kernel function: BTF, parsed when needed
                sig = trace.params[event.func_ip] = trace.signature_of(event.func)
                return sig
        return self.params.get((event.pid, event.func or ""))

    # the API: spec -> plans -> a running trace ------------------------------------------------
    def plan(self, spec: TraceSpec) -> tuple[list[TracePlan], list[str]]:
        """How ``spec`` would run (its kind's plans, in the order they are tried) and what
        planning found worth saying; nothing is attached."""
        from bpflbr_shell.trace.kinds import kind

        ctx = PlanContext(lambda: self.kernel, self.user_syms)
        plans = kind(spec.kind).planner()(spec, ctx)
        return plans, ctx.notes

    def trace(self, spec: TraceSpec, *, printq: bool = False,
              on_attached: Callable[[Trace], None] | None = None,
              on_end: Callable[[Trace], None] | None = None) -> Trace:
        """Plan ``spec``, attach the first plan that works (each refusal said through
        ``notify``), and start its reader. ``printq``: also queue events for a printer
        (``trace.printq``); ``on_attached`` runs once the probes are in, before anything
        else; ``on_end`` once the trace has finished (see :meth:`run_reader`)."""
        plans, notes = self.plan(spec)
        for note in notes:
            self.notify(note)
        reasons: list[str] = []
        for i, plan in enumerate(plans):
            try:
                trace = self.start(spec, plan, printq)
                break
            except UserError as exc:  # this kernel lacks or refuses the backend: the next
                missing = self._missing(plan)
                problem = missing.detail if missing is not None else exc.problem
                reasons.append(f"{plan.backend}: {problem}")
                if i == len(plans) - 1:
                    if len(reasons) > 1:
                        raise FeatureError(f"no backend can trace {spec.kind} targets here: "
                                           + "; ".join(reasons), "see 'show features'") from None
                    if missing is not None:
                        raise FeatureError(f"{plan.spec_text}: {missing.name} is not available "
                                           f"here ({missing.detail})",
                                           (f"{missing.fix}; " if missing.fix else "")
                                           + "see 'show features'") from None
                    raise
                self.notify(f"{plan.backend} unavailable ({problem}); trying the next backend")
        if on_attached is not None:
            on_attached(trace)
        if plan.attached is not None:
            plan.attached()
        self.run_reader(trace, on_end)
        return trace

    def _missing(self, plan: TracePlan) -> Any:
        """The plan's feature row when kernel/features.py says it is missing here (it alone
        says why), else None."""
        if not plan.requires:
            return None
        try:
            from bpflbr_shell.kernel import features

            (row,) = features.probe_features([plan.requires])
        except Exception:  # noqa: BLE001 - the attach error stands
            return None
        return None if row.available else row

    def start(self, spec: TraceSpec, plan: TracePlan, printq: bool = False) -> Trace:
        """Attach one plan (a failed start leaves nothing attached) and set its trace up:
        limit, prototypes, the LBR ranges to trim. Its reader is not started yet."""
        check = self.filter_for(spec, plan, kernel=True)  # before attaching: refusals, C
        self._enable_stats()
        trace = self.add(plan.spec_text, plan.make, self._deliver, self._after)
        trace.asked = spec
        trace.summary = plan.summary
        trace.params = dict(plan.params)
        trace.signature_of = plan.signature_of
        if not trace.tracer.lbr_off_reason and spec.lbr:
            from bpflbr_shell.trace.probes.ranges import tracer_ranges

            trace.tracer_ranges = tuple(tracer_ranges(trace.tracer.prog_fds(),
                                                      self.kernel.kallsyms))
            trace.keep_ranges = tuple(trace.tracer.keep_ranges())
        trace.limit = spec.limit
        trace.printq = PrintQueue() if printq else None
        trace.plan = plan
        trace.filter = check
        return trace

    # filters ----------------------------------------------------------------------------------
    def filter_for(self, spec: TraceSpec | None, plan: TracePlan | None,
                   kernel: bool = False) -> Any:
        """A trace's own filter (--if) and every session filter, as one Filter for user
        space (None: nothing left to check there), checked against what its events carry.
        ``kernel``: hand the plan's probe the terms the kernel can evaluate first (before
        attaching: they are compiled into the probe)."""
        texts = [t for t in [spec.filter if spec else None, *self.filters.values()] if t]
        if not texts:
            return None  # and the filter language is not even imported
        from bpflbr_shell.trace.filter import Scope, bind, has_members, parse, split_for_kernel

        scope = Scope(prototype=(plan.prototype if plan and plan.prototype
                                 else lambda: None),
                      has_retval=bool(plan and plan.returns), symbolize=self.symbolize,
                      event_signature=self.params_of,
                      strings=bool(spec and spec.kind in ("uprobe", "uretprobe")))
        text: str | None = " && ".join(f"({t})" for t in texts) if len(texts) > 1 \
            else texts[0]
        if kernel and plan is not None and plan.kernel_filter is not None and text:
            c, text = split_for_kernel(text, scope)
            if c is not None:
                plan.kernel_filter(c)
        elif text and has_members(parse(text)):
            bind(text, scope)  # refused, naming the member: only a probe reads members
        return bind(text, scope) if text else None

    def add_filter(self, text: str) -> tuple[int, list[Trace]]:
        """A session filter for every new trace and the running ones (re-bound now, in user
        space); its id and the running traces it applies to. A filter that does not fit a
        running trace is refused whole, naming the term."""
        from bpflbr_shell.trace.filter import parse

        parse(text)  # the syntax first; names are checked per trace, when bound
        running = [t for t in self.traces.values() if t.running]
        fid = self._next_filter
        self.filters[fid] = text
        try:
            bound = [(t, self.filter_for(t.asked, t.plan)) for t in running]
        except Exception:
            del self.filters[fid]
            raise
        self._next_filter += 1
        for t, f in bound:
            t.filter = f
        return fid, running

    def delete_filter(self, fid: int | None) -> list[int]:
        """Drop one session filter (None: all); the ids dropped. Running traces keep only
        what remains."""
        gone = list(self.filters) if fid is None else [fid]
        if fid is not None and fid not in self.filters:
            raise NotFoundError(f"no filter {fid}", "'filter' lists them")
        for g in gone:
            del self.filters[g]
        for t in self.traces.values():
            if t.running:
                t.filter = self.filter_for(t.asked, t.plan)
        return gone

    def _deliver(self, trace: Trace, event: Event, kstack: int, ustack: int) -> None:
        """Complete an event in the reader thread: stacks, its function's name (as asked for)
        and prototype; the session then stores and counts it."""
        tracer = trace.tracer
        event.kstack = tracer.stack(kstack)
        event.ustack = tracer.stack(ustack)
        if event.func_ip < USER_SPACE_END:
            user_syms = self.user_syms
            # now, while the traced process may still run; a uprobe's site places its binary
            # even when the process is already gone
            user_syms.prepare(event.pid, event.func_ip, getattr(tracer, "site", None))
            event.func = user_syms.symbolize(event.pid, event.func_ip).func
            key = (event.pid, event.func or "")
            if key not in self.params and event.func:
                self.params[key] = user_syms.signature(event.pid, event.func, event.func_ip)
                for note in user_syms.take_notices():  # e.g. DWARF drgn cannot read
                    self.notify(note)
        elif not event.func:  # a tracer may have named it (a kallsyms alias, as asked)
            event.func = self.symbolize(event, event.func_ip).func

    def _after(self, trace: Trace, event: Event) -> None:
        for hook in list(self.hooks):
            try:
                hook(event)
            except Exception as exc:  # a user's hook must not stop the trace
                self.notify(f"event hook {getattr(hook, '__name__', hook)} failed: {exc}")
        if trace.printq is not None:
            trace.printq.put(event)  # never waits: a full queue counts a line not printed

    def _gates_keep(self, event: Event) -> bool:
        for gate in list(self.gates):
            try:
                if gate(event) is False:
                    return False
            except Exception as exc:  # a user's hook must not stop the trace: keep the event
                if id(gate) not in self._gates_failed:  # said once, not once per event
                    self._gates_failed.add(id(gate))
                    self.notify(f"event hook {getattr(gate, '__name__', gate)} failed: "
                                f"{type(exc).__name__}: {exc} (events are kept)")
        return True

    def _enable_stats(self) -> None:
        """Run-time stats of our programs (bpf_stats) while traces run: a nicety, so a
        kernel that refuses leaves tracing as it is."""
        with _STATS_LOCK:
            if self._stats_fd is None:
                try:
                    from bpflbr_shell.kernel import libbpf

                    self._stats_fd = libbpf.enable_stats()
                except Exception:
                    self._stats_fd = None

    def release_stats(self) -> None:
        """Turn run-time stats off again once no trace runs (any thread may call it)."""
        with _STATS_LOCK:
            if self._stats_fd is not None and not any(t.running for t in self.traces.values()):
                fd, self._stats_fd = self._stats_fd, None
                os.close(fd)

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
            check = trace.filter
            if check is not None and not check.accepts(event):
                trace.rejected_user += 1
                return
            if self.gates and not self._gates_keep(event):
                trace.rejected_user += 1
                return
            self.store.add(event)
            trace.delivered += 1
            if after is not None:
                after(trace, event)
            if trace.limit_reached:
                trace.stop_flag.set()

        tracer = make_tracer(on_event)
        trace = Trace(trace_id, spec, tracer, session=self)
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
                             - trace.over_limit - trace.rejected_user)
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
            self.release_stats()  # the last trace to end turns run-time stats off

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
_STATS_LOCK = threading.Lock()
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
