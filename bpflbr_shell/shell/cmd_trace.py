"""``trace ...``, ``show events|event|stats``: running probes and looking at what they saw.

The session (probes, store, cleanup) lives in :mod:`bpflbr_shell.trace.session`; this module only
turns command lines into tracers and events into output.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bpflbr_shell.errors import UsageError
from bpflbr_shell.shell.cmd_show import complete_ksym, complete_prog
from bpflbr_shell.shell.context import Context, parse_bool, register_setting
from bpflbr_shell.shell.registry import argument, command, int_range
from bpflbr_shell.symbols.kernel import kernel_symbolizer
from bpflbr_shell.trace.events import Event
from bpflbr_shell.trace.kinds import KINDS, ProbeKind
from bpflbr_shell.trace.session import (
    STOP_DRAIN_S,
    Session,
    Trace,
    install_cleanup,
)
from bpflbr_shell.trace.spec import TraceSpec

if TYPE_CHECKING:  # the renderers load with the first event or listing, not at start-up
    from bpflbr_shell.render.events import EndpointMap, RenderOptions
    from bpflbr_shell.render.present import EventStream, Table, Text

register_setting("lbr-trim", True, "drop the tracer's own LBR entries (off: show all)",
                 parse_bool)


def _branch_types(text: str) -> str:
    """Checked when set, not at the next trace (UsageError names the valid kinds)."""
    from bpflbr_shell.kernel.perf import parse_branch_types

    parse_branch_types(text)
    return text


MAX_EVENT_STORE = 10_000_000


def _store_size(text: str) -> int:
    try:
        return int_range(1, MAX_EVENT_STORE, "a number of events")(text)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(str(exc)) from None


register_setting("lbr-branch-types", "any",
                 "LBR branch filter: any, any_call, any_return, cond, call, ind_call, "
                 "ind_jump, call_stack (comma-separated)", _branch_types,
                 values=("any", "any_call", "any_return", "cond", "call", "ind_call",
                         "ind_jump", "call_stack", "abort_tx", "in_tx", "no_tx"))
register_setting("event-store", 10000, "events kept in memory for 'show events'", _store_size)

RING_MAX_PER_CPU = 4 << 20  # the kernel's cap on one array map value: one CPU's ring


def _ring_size(text: str) -> int:
    """``4M``, ``512K`` or bytes: the event rings' total size, shared among the CPUs."""
    m = re.fullmatch(r"(\d{1,7})([KkMm]?)", text.strip())
    if not m:
        raise ValueError(f"bad ring size '{text}' (e.g. 4M, 512K)")
    size = int(m.group(1)) << {"": 0, "k": 10, "m": 20}[m.group(2).lower()]
    from bpflbr_shell.trace.probes.base import possible_cpus

    most = RING_MAX_PER_CPU * possible_cpus()
    if not 4096 <= size <= most:
        raise ValueError(f"ring size {text} out of range (4K to {most >> 20}M: 4M per CPU)")
    return size


register_setting("event-ring", 4 << 20, "event ring size, all CPUs (4M; more holds longer "
                 "bursts before events are dropped)", _ring_size)


def ring_pages(ctx: Context) -> int:
    return max(1, ctx.settings["event-ring"] // 4096)


@dataclass
class Runtime:
    """The shell's tracing state on ``ctx.state``: the session (the trace pipeline) and
    what only the terminal needs."""

    session: Session = field(default_factory=Session)
    lbr_notice_given: bool = False
    # rendered LBR endpoints of kernel addresses, valid for one kernel symbolizer generation
    endpoints: EndpointMap | None = None
    endpoints_of: tuple[Any, int] | None = None


def runtime(ctx: Context) -> Runtime:
    rt = ctx.state.get("trace")
    if rt is None:
        install_cleanup()
        rt = Runtime(Session(ctx.settings["event-store"], kernel=lambda: ctx.kernel,
                             notify=ctx.warn))
        ctx.state["trace"] = rt
    if rt.session.store.capacity != ctx.settings["event-store"]:  # 'set event-store N'
        rt.session.store.resize(ctx.settings["event-store"])
    return rt


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text.strip())
    if not m:
        raise UsageError(f"bad duration '{text}'", "e.g. 500ms, 5s, 2m")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    return float(m.group(1)) * scale


def endpoint_map(ctx: Context, rt: Runtime, symbolize: Any) -> EndpointMap | None:
    """The shell's persistent :class:`EndpointMap`, emptied whenever the kernel symbolizer
    changes or drops its Locations (programs loaded or unloaded)."""
    from bpflbr_shell.render.events import EndpointMap

    try:
        ksym = kernel_symbolizer(ctx.kernel)
    except Exception:
        return None  # render_event resolves per event; the symbolize closure says why
    if rt.endpoints is None or rt.endpoints_of is None or rt.endpoints_of[0] is not ksym \
            or rt.endpoints_of[1] != ksym.generation:
        rt.endpoints = EndpointMap(symbolize)
        rt.endpoints_of = (ksym, ksym.generation)
    return rt.endpoints


def render_options(ctx: Context, trace_opts: dict[str, Any] | None = None) -> RenderOptions:
    from bpflbr_shell.render.events import RenderOptions

    opts = trace_opts or {}
    return RenderOptions(color=ctx.use_color(), lbr_trim=ctx.settings["lbr-trim"],
                         show_kstack=opts.get("kstack", False),
                         show_ustack=opts.get("stack", False))


def options_for(rt: Runtime, event: Event, opts: RenderOptions) -> RenderOptions:
    """``opts`` with the LBR ranges of the trace that produced ``event``."""
    trace = rt.session.traces.get(event.trace_id)
    if trace is None or not event.lbr:
        return opts
    return dataclasses.replace(opts, tracer_ranges=trace.tracer_ranges,
                               keep_ranges=trace.keep_ranges)


def print_event(ctx: Context, rt: Runtime, event: Event, as_json: bool,
                opts: RenderOptions) -> None:
    from bpflbr_shell.render.events import event_json, render_event

    session = rt.session
    opts = options_for(rt, event, opts)
    params = session.params_of(event)
    if as_json:
        ctx.print(event_json(event, session.symbolize, opts, params))
    else:
        ctx.print(render_event(event, session.symbolize, opts, params,
                               endpoint_map(ctx, rt, session.symbolize) if event.lbr else None))


def run_trace(ctx: Context, args: argparse.Namespace, spec: TraceSpec) -> None:
    """Start a trace through the session, then stream its events (foreground) or leave it
    running (``--bg``).

    Every path out of here (limit, duration, Ctrl-C, an exception) detaches a foreground
    trace; background ones detach on ``trace stop``, shell exit or SIGTERM (session.py).
    """
    rt = runtime(ctx)
    session = rt.session
    ropts: list[RenderOptions] = []  # made with the first event: not before attaching

    def show(events: list[Event]) -> None:
        for event in events:
            if not ropts:
                ropts.append(render_options(ctx, {"kstack": args.kstack, "stack": args.stack}))
            print_event(ctx, rt, event, args.json, ropts[0])
        if events:
            ctx.flush()  # a pipe (| tee, | jq) sees events as they come, not at exit

    def attached(trace: Trace) -> None:  # the probes are in: the first possible event
        ctx.status(f"trace {trace.id}: {trace.summary}")
        reason = trace.tracer.lbr_off_reason
        if args.lbr and reason and not rt.lbr_notice_given:
            rt.lbr_notice_given = True
            ctx.warn(f"LBR off: {lbr_off_brief(reason)}; showing stacks instead "
                     "('show features' says why)")

    def ended(t: Trace) -> None:  # a background trace, in its reader thread, once finished
        if t.error is not None and not isinstance(t.error, KeyboardInterrupt):
            ctx.error_line(f"trace {t.id}: {t.error}")
        elif t.end_reason is not None:  # --pid: the process exited
            ctx.status(f"trace {t.id}: {t.end_reason}; stopped: {t.delivered} events")
            report_books(ctx, t)

    trace = session.trace(spec, printq=not args.quiet, on_attached=attached,
                          on_end=ended if args.bg else None)
    if args.bg:
        if trace.printq is not None:
            start_printer(trace, show)
        ctx.status(f"trace {trace.id} runs in the background ('trace stop {trace.id}' ends it)")
        return
    # foreground: the reader has its own thread; this one prints, so a slow terminal never
    # holds the reader up and Ctrl-C lands here, not inside an event's handling
    deadline = time.monotonic() + args.duration if args.duration else None
    interrupted = False
    try:
        while not trace.finished.is_set() or trace.printq is not None and len(trace.printq):
            if deadline is not None and time.monotonic() >= deadline:
                break
            if trace.printq is not None:
                show(trace.printq.take(0.05))
            else:
                trace.finished.wait(0.05)
    except KeyboardInterrupt:
        ctx.status("^C")
        interrupted = True
    finally:
        try:
            session.stop(trace)
        finally:
            if trace.printq is not None and (interrupted or trace.error is not None):
                trace.printq.drop_all()
    if trace.printq is not None:
        show(trace.printq.take(0))  # what the stop's drain delivered (the queue's bound)
    if trace.error is not None and not isinstance(trace.error, KeyboardInterrupt):
        raise trace.error
    if isinstance(trace.error, KeyboardInterrupt) and not interrupted:
        ctx.status("^C")
    if trace.end_reason is not None:
        ctx.status(f"trace {trace.id}: {trace.end_reason}")
    ctx.status(f"trace {trace.id} stopped: {trace.delivered} events")
    if trace.error is None:  # after a failure the books are in 'show stats'
        report_books(ctx, trace)


PRINT_SLICE_S = 0.02  # a background printer renders this long at most, then rests as long


def start_printer(trace: Trace, show: Callable[[list[Event]], None]) -> None:
    """A background trace's printer thread: it prints what the queue holds in bounded slices
    (its GIL share stays bounded too) until the trace has finished and the queue is empty."""
    q = trace.printq
    assert q is not None

    def loop() -> None:
        while True:
            batch = q.take(0.2)
            t0 = time.monotonic()
            for i, event in enumerate(batch):
                show([event])
                if time.monotonic() - t0 >= PRINT_SLICE_S and i + 1 < len(batch):
                    time.sleep(PRINT_SLICE_S)
                    t0 = time.monotonic()
            if q.closed and not len(q):
                return

    threading.Thread(target=loop, name=f"trace-{trace.id}-print", daemon=True).start()


def book_notes(trace: Trace, c: dict[str, Any]) -> list[str]:
    """What the books say the user should know: events lost and why, with the fix."""
    notes = []
    if c.get("drops_ring_full"):
        notes.append(f"trace {trace.id}: {c['drops_ring_full']} events dropped (ring full: the "
                     "probes outran the reader); fix: a larger ring ('set event-ring 8M'), a "
                     "filter (--pid, a narrower glob) or --limit")
    if c.get("drops_unread"):
        notes.append(f"trace {trace.id}: {c['drops_unread']} events dropped (still in the rings "
                     f"when the trace stopped; a stop reads them for {STOP_DRAIN_S:g}s at most)")
    if c.get("drops_error"):
        notes.append(f"trace {trace.id}: {c['drops_error']} events dropped (their handling "
                     "failed)")
    if c.get("not_printed"):
        notes.append(f"trace {trace.id}: {c['not_printed']} events not printed (terminal too "
                     "slow); all are stored: 'show events' (the store keeps the last "
                     "'event-store' events)")
    if not trace.running and c.get("pending"):
        notes.append(f"trace {trace.id}: {c['pending']} hits unaccounted for (a bug: please "
                     "report it with 'show stats --json')")
    return notes


def report_books(ctx: Context, trace: Trace) -> None:
    for note in book_notes(trace, trace.counters()):
        ctx.warn(note)


_LBR_OFF_BRIEF = {"ENOENT": "no LBR hardware", "ENODEV": "no LBR hardware",
                  "EOPNOTSUPP": "no LBR hardware", "EBUSY": "LBR busy",
                  "EACCES": "not permitted", "EPERM": "not permitted",
                  "EINVAL": "branch filter refused"}


def lbr_off_brief(reason: str) -> str:
    """A few words for the one-line LBR-off notice; the full why and fix are in
    'show features' (the long reason, printed per trace, buried the events under it)."""
    m = re.search(r"\b(E[A-Z]{2,})\b", reason)
    if m is None:
        return "unavailable"
    return f"{_LBR_OFF_BRIEF.get(m.group(1), 'unavailable')} ({m.group(1)})"


def _common_trace_args(cmd: Any) -> Any:
    """Options every ``trace`` kind takes, in this order (each @argument goes first)."""
    for spec in reversed((
        argument("--pid", type=int_range(1, 1 << 22, "a pid"), default=0,
                 help="only this process (in-kernel filter)"),
        argument("--lbr", action=argparse.BooleanOptionalAction, default=True,
                 help="capture the last branch records (default on; falls back to stacks)"),
        argument("--stack", action="store_true",
                 help="show stacks even when LBR records are there"),
        argument("--kstack", action="store_true", help="also show the kernel stack"),
        argument("--limit", type=int_range(1, None, "a number of events"), default=None,
                 help="stop after N events"),
        argument("--duration", type=parse_duration, default=None,
                 help="stop after this long (5s, 500ms, 2m)"),
        argument("--bg", action="store_true", help="run in the background"),
        argument("--json", action="store_true", help="one JSON object per event"),
        argument("--quiet", action="store_true", help="store events without printing them"),
        argument("--if", dest="filter", metavar="EXPR", default=None,
                 help="keep only the events this filter accepts, beside the session's "
                      "('help filter' has the language); quote it"),
    )):
        cmd = spec(cmd)
    return cmd


def complete_prog_target(ctx: Context, prefix: str) -> list[tuple[str, str]]:
    out = list(complete_prog(ctx, prefix))
    if ":" in prefix:  # SEL:FUNC -> the selected program's functions
        sel = prefix.rsplit(":", 1)[0]
        try:
            for p in ctx.kernel.select(sel):
                out += [(f"{sel}:{sp.name}", f"prog {p.id}") for sp in p.subprogs]
        except Exception:
            pass
    return out


TARGET_COMPLETERS: dict[str, Callable[[Context, str], Any] | None] = {
    "prog": complete_prog_target, "ksym": complete_ksym, "user": None}


def trace_spec(ctx: Context, kind: ProbeKind, args: argparse.Namespace) -> TraceSpec:
    """The session's spec from a ``trace KIND`` command line and the shell's settings."""
    targets = args.targets if kind.target.many else [args.targets]
    return TraceSpec(kind.name, tuple(targets), pid=args.pid or 0, lbr=args.lbr,
                     stack=args.stack, kstack=args.kstack, limit=args.limit,
                     options={o.name: getattr(args, o.name) for o in kind.options},
                     branch_types=ctx.settings["lbr-branch-types"],
                     ring_bytes=ctx.settings["event-ring"], filter=args.filter)


def dry_run(ctx: Context, rt: Runtime, spec: TraceSpec) -> Text:
    """What ``spec`` would attach, and how; nothing is attached."""
    from bpflbr_shell.render.present import Text

    plans, notes = rt.session.plan(spec)
    for note in notes:
        ctx.warn(note)
    first = plans[0]
    events = "return" if spec.option("exit") else "entry"
    backends = [p.backend for p in plans]
    head = (f"{len(first.targets)} function(s) from {first.source}; backend "
            f"{'/'.join(backends)} ({events} events)")
    return Text("\n".join([head, *(f"  {t}" for t in first.targets)]),
                data={"functions": first.targets, "source": first.source,
                      "backends": backends, "events": events})


def _kind_options(kind: ProbeKind) -> Callable[[argparse.ArgumentParser], None]:
    """The kind's own options, mutually exclusive where they share a group."""
    def build(parser: argparse.ArgumentParser) -> None:
        groups: dict[str, Any] = {}
        for o in kind.options:
            where: Any = parser
            if o.group:
                if o.group not in groups:
                    groups[o.group] = parser.add_mutually_exclusive_group()
                where = groups[o.group]
            flag = "--" + o.name.replace("_", "-")
            if o.flag:
                where.add_argument(flag, dest=o.name, action="store_true", help=o.help)
            else:
                where.add_argument(flag, dest=o.name, default=o.default, help=o.help,
                                   metavar=o.metavar, choices=o.choices or None)
    return build


def _trace_command(kind: ProbeKind) -> None:
    def run(ctx: Context, args: argparse.Namespace) -> Text | None:
        spec = trace_spec(ctx, kind, args)
        if spec.option("dry_run"):
            return dry_run(ctx, runtime(ctx), spec)
        run_trace(ctx, args, spec)  # streams the events itself, as they come
        return None

    run.__name__ = run.__qualname__ = f"cmd_trace_{kind.name}"
    run.__doc__ = kind.help
    completer = TARGET_COMPLETERS.get(kind.target.complete)
    cmd = argument("targets", metavar=kind.target.metavar,
                   nargs="+" if kind.target.many else None, completer=completer,
                   help=kind.target.help)(_common_trace_args(run))
    command(f"trace {kind.name}", help=kind.help, build=_kind_options(kind),
            category="tracing", requires=kind.requires, precheck=False)(cmd)


for _kind in KINDS:  # one command per row of the probe-kind table
    _trace_command(_kind)


@command("trace list", help="list traces, running and stopped", category="tracing")
def cmd_trace_list(ctx: Context, args: argparse.Namespace) -> Table:
    from bpflbr_shell.render.present import Table

    rows = [{"id": t.id, "state": "running" if t.running else "stopped", "events": t.delivered,
             "spec": t.spec} for t in runtime(ctx).session.traces.values()]
    return Table(("ID", "STATE", "EVENTS", "SPEC"), ("id", "state", "events", "spec"), rows,
                 right=(0, 2), empty="no traces")


@command("trace stop", help="stop one trace (or all): detach its probes, keep its events",
         category="tracing")
@argument("id", nargs="?", type=int_range(1, None, "a trace id"),
          help="trace id (default: all)")
def cmd_trace_stop(ctx: Context, args: argparse.Namespace) -> Text:
    from bpflbr_shell.render.present import Text

    rt = runtime(ctx)
    traces = [rt.session.get(args.id)] if args.id else list(rt.session.traces.values())
    running = [t for t in traces if t.running]
    finished = rt.session.stop_traces(traces)
    for t, done in zip(traces, finished, strict=True):
        if not done:
            ctx.status(f"trace {t.id}: detached; its reader is finishing a slow event "
                       "handler ('show stats' has the final numbers once it is done)")
        elif t in running:
            report_books(ctx, t)
    return Text(f"stopped {len(traces)} trace(s)", data={"stopped": [t.id for t in traces]})


@command("trace delete", help="stop and forget a trace", category="tracing")
@argument("id", type=int_range(1, None, "a trace id"), help="trace id")
def cmd_trace_delete(ctx: Context, args: argparse.Namespace) -> None:
    rt = runtime(ctx)
    rt.session.delete(rt.session.get(args.id))


# show events / event / stats -------------------------------------------------------------------
def event_stream(ctx: Context, rt: Runtime, events: list[Event], opts: RenderOptions,
                 one: bool = False) -> EventStream:
    """Stored events for the presenter: each rendered (text) or encoded (the fast JSON
    encoder ``trace --json`` uses) when written, never all at once."""
    from bpflbr_shell.render.events import event_json, render_event
    from bpflbr_shell.render.present import EventStream

    session = rt.session

    def text_of(e: Event) -> str:
        o = options_for(rt, e, opts)
        return render_event(e, session.symbolize, o, session.params_of(e),
                            endpoint_map(ctx, rt, session.symbolize) if e.lbr else None)

    def json_of(e: Event) -> str:
        return event_json(e, session.symbolize, options_for(rt, e, opts), session.params_of(e))

    return EventStream(events, text_of, json_of, one=one)


@command("show events", help="the last N stored events (default 20)", category="events")
@argument("n", nargs="?", type=int_range(1, None, "a number of events"), default=20,
          help="how many")
def cmd_show_events(ctx: Context, args: argparse.Namespace) -> EventStream:
    rt = runtime(ctx)
    return event_stream(ctx, rt, rt.session.store.last(args.n), render_options(ctx))


@command("show event", help="one stored event in full", category="events")
@argument("id", type=int_range(1, None, "an event id"), help="event id (#N)")
@argument("--kstack", action="store_true", help="also show the kernel stack")
def cmd_show_event(ctx: Context, args: argparse.Namespace) -> EventStream:
    rt = runtime(ctx)
    event = rt.session.store.get(args.id)
    return event_stream(ctx, rt, [event], render_options(ctx, {"kstack": args.kstack}),
                        one=True)


STATS_KEYS = ("id", "hits", "delivered", "drops", "filtered", "pending", "filtered_kernel",
              "filtered_user", "lbr_errors", "bytes", "ns_per_run", "spec")


@command("show stats", help="per trace: hits = events + drops + filtered (+ pending), "
         "bytes, in-kernel time per event", category="events")
def cmd_show_stats(ctx: Context, args: argparse.Namespace) -> Table:
    from bpflbr_shell.render.present import Table

    rt = runtime(ctx)
    rows, notes = [], []
    for t in rt.session.traces.values():
        c = t.counters()
        per = c.get("run_time_ns", 0) // c["run_cnt"] if c.get("run_cnt") else None
        row = {"id": t.id, "spec": t.spec, "running": t.running, **c, "ns_per_run": per}
        rows.append(row)
        notes += book_notes(t, row)
    return Table(("ID", "HITS", "EVENTS", "DROPS", "FILTERED", "PENDING", "IN_KERNEL",
                  "IN_USER", "LBR_ERR", "BYTES", "NS/RUN", "SPEC"), STATS_KEYS, rows,
                 right=range(11), empty="no traces",
                 footer=["HITS = EVENTS + DROPS + FILTERED + PENDING; FILTERED = IN_KERNEL "
                         "(--pid, unpaired returns) + IN_USER (filters, past --limit); pending: "
                         "read, or being written, not read yet", *notes])


# filter ---------------------------------------------------------------------------------------
FILTER_HELP = """filter                    list the session's filters
filter EXPR               keep only events EXPR accepts, in every trace (new and running)
filter delete ID          drop one;  filter clear: drop all
trace KIND ... --if EXPR  one trace's own filter, beside the session's

EXPR: pid, tid, cpu, comm ('bash*': a glob), retval, duration (10us, 2ms), arg0..arg5 and the
prototype's argument names, struct members through them (skb->len, file->f_path.dentry,
typed by BTF or DWARF), errors (retval in [-4095, -1], or NULL or an ERR_PTR from a pointer
function), lbr has GLOB / lbr ! has GLOB (the LBR passes through a matching function), numbers
in any base, strings, == != < <= > >=, & | ^ << >> + -, ! ~, && ||, parentheses.
Where: each top-level && term the kernel evaluates exactly as user space would is compiled
into the probe and runs after the LBR snapshot: integers, pid, tid, cpu, typed args and
retval, duration, members (read in the kernel only: a NULL pointer reads as 0), comm and
char * strings compared with an exact string or a prefix ('abc*'). Other globs, arithmetic and
lbr has run in user space on decoded events; a member term that cannot go whole is refused.
A filter added while traces run applies to them in user space (members: new traces only).
'show stats' counts both (IN_KERNEL, IN_USER)."""


@command("filter", help="keep only the events an expression accepts ('help filter')",
         raw=True, category="events", description=FILTER_HELP)
def cmd_filter(ctx: Context, args: argparse.Namespace) -> Table | None:
    from bpflbr_shell.render.present import Table
    from bpflbr_shell.trace.filter import parse, unparse

    session = runtime(ctx).session
    text = args.text.strip()
    words = text.split()
    if not text:
        rows = [{"id": fid, "filter": unparse(parse(t))} for fid, t in session.filters.items()]
        return Table(("ID", "FILTER"), ("id", "filter"), rows, right=(0,), empty="no filters")
    if words == ["clear"]:
        gone = session.delete_filter(None)
        ctx.status(f"{len(gone)} filter(s) dropped")
        return None
    if words[0] == "delete":
        if len(words) != 2 or not words[1].isdigit() or len(words[1]) > 9:
            raise UsageError("filter delete takes one filter id", "'filter' lists them")
        session.delete_filter(int(words[1]))
        return None
    fid, running = session.add_filter(text)
    where = (f"; applied to running trace(s) {', '.join(str(t.id) for t in running)} in "
             "user space" if running else "")
    ctx.status(f"filter {fid}: {unparse(parse(text))} (every new trace{where})")
    return None
