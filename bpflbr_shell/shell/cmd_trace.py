"""``trace ...``, ``show events|event|stats``: running probes and looking at what they saw.

The session (probes, store, cleanup) lives in :mod:`bpflbr_shell.trace.session`; this module only
turns command lines into tracers and events into output.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bpflbr_shell.errors import UsageError
from bpflbr_shell.kernel.selectors import check_glob
from bpflbr_shell.kernel.values import Signature
from bpflbr_shell.render.events import (
    EndpointMap,
    RenderOptions,
    event_json,
    event_to_json,
    render_event,
)
from bpflbr_shell.render.text import table
from bpflbr_shell.shell.cmd_show import complete_ksym, complete_prog
from bpflbr_shell.shell.context import Context, parse_bool, register_setting
from bpflbr_shell.shell.registry import argument, command, int_range
from bpflbr_shell.symbols.kernel import USER_SPACE_END, Location, kernel_symbolizer
from bpflbr_shell.trace.events import Event
from bpflbr_shell.trace.session import (
    STOP_DRAIN_S,
    PrintQueue,
    Session,
    Trace,
    install_cleanup,
)

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
                 "ind_jump, call_stack (comma-separated)", _branch_types)
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


_STATS_LOCK = threading.Lock()


@dataclass
class Runtime:
    """Per-shell tracing state hung on ``ctx.state``."""

    session: Session = field(default_factory=Session)
    user_syms: Any = None
    lbr_notice_given: bool = False
    stats_fd: int | None = None
    params: dict[tuple[int, str], Signature | None] = field(default_factory=dict)
    # rendered LBR endpoints of kernel addresses, valid for one kernel symbolizer generation
    endpoints: EndpointMap | None = None
    endpoints_of: tuple[Any, int] | None = None

    def close_stats(self) -> None:
        # a background trace's reader thread may call this as the shell does: one closes
        with _STATS_LOCK:
            if self.stats_fd is not None and \
                    not any(t.running for t in self.session.traces.values()):
                fd, self.stats_fd = self.stats_fd, None
                os.close(fd)


def runtime(ctx: Context) -> Runtime:
    rt = ctx.state.get("trace")
    if rt is None:
        from bpflbr_shell.symbols.user import UserSymbolizer

        install_cleanup()
        rt = Runtime(Session(ctx.settings["event-store"]), UserSymbolizer())
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


def symbolizer_for(ctx: Context, rt: Runtime) -> Any:
    kernel_sym = None

    def symbolize(event: Event, addr: int) -> Location:
        nonlocal kernel_sym
        if addr < USER_SPACE_END:
            return rt.user_syms.symbolize(event.pid, addr)
        if kernel_sym is None:
            try:
                kernel_sym = kernel_symbolizer(ctx.kernel)
            except Exception:
                return Location(addr)
        return kernel_sym.symbolize(addr)

    return symbolize


def endpoint_map(ctx: Context, rt: Runtime, symbolize: Any) -> EndpointMap | None:
    """The shell's persistent :class:`EndpointMap`, emptied whenever the kernel symbolizer
    changes or drops its Locations (programs loaded or unloaded)."""
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


def params_of(rt: Runtime, event: Event) -> Signature | None:
    """Parameter names and value types of the event's function: BTF (kernel/BPF targets) or
    DWARF (user); renderers present args and retval through them."""
    trace = rt.session.traces.get(event.trace_id)
    if trace is not None and event.func_ip in trace.params:
        return trace.params[event.func_ip]
    return rt.params.get((event.pid, event.func or ""))


def print_event(ctx: Context, rt: Runtime, event: Event, as_json: bool,
                opts: RenderOptions) -> None:
    opts = options_for(rt, event, opts)
    params = params_of(rt, event)
    symbolize = symbolizer_for(ctx, rt)
    if as_json:
        ctx.print(event_json(event, symbolize, opts, params))
    else:
        ctx.print(render_event(event, symbolize, opts, params,
                               endpoint_map(ctx, rt, symbolize) if event.lbr else None))


def _enable_stats(rt: Runtime) -> None:
    if rt.stats_fd is None:
        try:
            from bpflbr_shell.kernel import libbpf

            rt.stats_fd = libbpf.enable_stats()
        except Exception:
            rt.stats_fd = None  # run-time stats are a nicety; tracing goes on without them


def run_trace(ctx: Context, args: argparse.Namespace, spec: str, summary: str,
              make: Callable[[Any], Any], params: dict[int, Signature] | None = None,
              signature_of: Callable[[str | None], Signature | None] | None = None,
              attached: Callable[[], None] | None = None) -> None:
    """Start a tracer, then stream its events (foreground) or leave it running (``--bg``).
    ``attached`` runs once the probes are in, before events are read: work that need not
    delay the first possible event (the events wait in the rings meanwhile).

    Every path out of here (limit, duration, Ctrl-C, an exception) detaches a foreground
    trace; background ones detach on ``trace stop``, shell exit or SIGTERM (session.py).
    """
    rt = runtime(ctx)
    session = rt.session
    ropts = render_options(ctx, {"kstack": args.kstack, "stack": args.stack})
    _enable_stats(rt)
    kernel_sym = None

    def deliver(trace: Trace, event: Event, kstack: int, ustack: int) -> None:
        """Complete an event in the reader thread (the session then stores and counts it)."""
        nonlocal kernel_sym
        tracer = trace.tracer
        event.kstack = tracer.stack(kstack)
        event.ustack = tracer.stack(ustack)
        if event.func_ip < USER_SPACE_END:
            # now, while the traced process may still run; a uprobe's site places its binary
            # even when the process is already gone
            rt.user_syms.prepare(event.pid, event.func_ip, getattr(tracer, "site", None))
            event.func = rt.user_syms.symbolize(event.pid, event.func_ip).func
            key = (event.pid, event.func or "")
            if key not in rt.params and event.func:
                rt.params[key] = rt.user_syms.signature(event.pid, event.func, event.func_ip)
                for note in rt.user_syms.take_notices():  # e.g. DWARF drgn cannot read
                    ctx.warn(note)
        else:
            if kernel_sym is None:
                kernel_sym = kernel_symbolizer(ctx.kernel)
            # a tracer may have named it already (a kallsyms alias, as the user asked for it)
            event.func = event.func or kernel_sym.symbolize(event.func_ip).func
            if trace.signature_of is not None and event.func_ip not in trace.params:
                trace.params[event.func_ip] = trace.signature_of(event.func)

    def after(trace: Trace, event: Event) -> None:
        for hook in list(session.hooks):
            try:
                hook(event)
            except Exception as exc:  # a user's hook must not stop the trace
                ctx.warn(f"event hook {getattr(hook, '__name__', hook)} failed: {exc}")
        if trace.printq is not None:
            trace.printq.put(event)  # never waits: a full queue counts a line not printed

    def show(events: list[Event]) -> None:
        for event in events:
            print_event(ctx, rt, event, args.json, ropts)
        if events:
            ctx.flush()  # a pipe (| tee, | jq) sees events as they come, not at exit

    trace = session.add(spec, make, deliver, after)
    trace.params = dict(params or {})
    trace.signature_of = signature_of
    if not trace.tracer.lbr_off_reason and args.lbr:
        from bpflbr_shell.trace.probes.ranges import tracer_ranges

        trace.tracer_ranges = tuple(tracer_ranges(trace.tracer.prog_fds(), ctx.kernel.kallsyms))
        trace.keep_ranges = tuple(trace.tracer.keep_ranges())
    trace.limit = args.limit
    trace.printq = None if args.quiet else PrintQueue()
    ctx.status(f"trace {trace.id}: {summary}")
    if attached is not None:
        attached()
    reason = trace.tracer.lbr_off_reason
    if args.lbr and reason and not rt.lbr_notice_given:
        rt.lbr_notice_given = True
        ctx.warn(f"LBR off: {lbr_off_brief(reason)}; showing stacks instead "
                 "('show features' says why)")
    if args.bg:
        def ended(t: Trace) -> None:  # in the reader thread, once the trace has finished
            if t.error is not None and not isinstance(t.error, KeyboardInterrupt):
                ctx.error_line(f"trace {t.id}: {t.error}")
            elif t.end_reason is not None:  # --pid: the process exited
                ctx.status(f"trace {t.id}: {t.end_reason}; stopped: {t.delivered} events")
                report_books(ctx, t)
            rt.close_stats()  # a dead trace no longer needs run-time stats

        if trace.printq is not None:
            start_printer(trace, show)
        session.run_reader(trace, ended)
        ctx.status(f"trace {trace.id} runs in the background ('trace stop {trace.id}' ends it)")
        return
    # foreground: the reader has its own thread; this one prints, so a slow terminal never
    # holds the reader up and Ctrl-C lands here, not inside an event's handling
    deadline = time.monotonic() + args.duration if args.duration else None
    interrupted = False
    session.run_reader(trace)
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
            rt.close_stats()
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


def kernel_capture_options(ctx: Context, args: argparse.Namespace) -> Any:
    """Kernel and BPF targets: kernel stacks always (the LBR fallback); user stacks only with
    --stack, since symbolizing them means opening every traced process with drgn."""
    from bpflbr_shell.trace.probes.base import CaptureOptions

    return CaptureOptions(lbr=args.lbr, branch_types=ctx.settings["lbr-branch-types"],
                          ustack=args.stack, kstack=True, pid=args.pid or -1,
                          stacks_with_lbr=args.stack or args.kstack,
                          ringbuf_pages=ring_pages(ctx))


# trace uprobe / uretprobe ----------------------------------------------------------------------
def _trace_user(ctx: Context, args: argparse.Namespace, retprobe: bool) -> None:
    from bpflbr_shell.trace.probes.uprobe import (
        UprobeOptions,
        UprobeTracer,
        parse_str_spec,
        resolve_ifuncs,
        resolve_targets,
        split_target,
        string_knobs,
    )

    rt = runtime(ctx)
    binary, glob = split_target(args.target)
    check_glob(glob, "function glob")
    asked = parse_str_spec(args.str, retprobe)
    notes: list[str] = []  # which file, which IFUNC implementation, which strings
    targets = resolve_targets(binary, glob, pid=args.pid or 0, notes=notes)
    targets = resolve_ifuncs(targets, rt.user_syms, args.pid or 0, notes)
    from bpflbr_shell.trace.probes.objcache import default_cache

    extra = string_knobs(targets, rt.user_syms, asked, retprobe, notes, default_cache())
    for path in {t.binary for t in targets}:  # open64's events say open64, not __open
        rt.user_syms.prefer(path, [t.name for t in targets if t.binary == path])
    for note in notes + rt.user_syms.take_notices():
        ctx.warn(note)
    kind = "uretprobe" if retprobe else "uprobe"
    opts = UprobeOptions(retprobe=retprobe, pid=args.pid or -1, lbr=args.lbr,
                         kstack=args.kstack, branch_types=ctx.settings["lbr-branch-types"],
                         stacks_with_lbr=args.stack or args.kstack, extra=extra,
                         ringbuf_pages=ring_pages(ctx))
    label = f"{kind} {os.path.basename(targets[0].binary)}:{glob}"
    names = ", ".join(t.name for t in targets[:5]) + (" ..." if len(targets) > 5 else "")
    spec = f"{kind} {args.target}" + (f" --pid {args.pid}" if args.pid else "")
    pid = args.pid

    def attached() -> None:  # its mappings now: it may be gone before its first event is read
        if pid:
            rt.user_syms.prepare(pid)

    run_trace(ctx, args, spec,
              f"{kind} on {len(targets)} function(s) of {targets[0].binary}: {names}",
              lambda on_event: UprobeTracer(targets, opts, on_event, label), attached=attached)


def _common_trace_args(cmd: Any) -> Any:
    """Options every ``trace`` kind takes (applied after the kind's own positionals)."""
    for spec in (
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
    ):
        cmd = spec(cmd)
    return cmd


_USER_TARGET = argument("target", metavar="BINARY:SYMBOL",
                        help="binary (path, command or library) and a function glob, "
                             "e.g. /usr/bin/bash:readline or c:getpid")
_USER_STRINGS = argument("--str", metavar="WHICH", default=None,
                         help="copy these values as C strings (62 bytes at most, escaped): "
                              "ret, arg0..arg5, comma-separated; DWARF-typed char * args "
                              "and retvals are copied without it")


@command("trace uretprobe", help="trace returns of user functions (retval, args, duration)")
@_USER_TARGET
@_USER_STRINGS
@_common_trace_args
def cmd_trace_uretprobe(ctx: Context, args: argparse.Namespace) -> None:
    _trace_user(ctx, args, retprobe=True)


@command("trace uprobe", help="trace calls of user functions (args)")
@_USER_TARGET
@_USER_STRINGS
@_common_trace_args
def cmd_trace_uprobe(ctx: Context, args: argparse.Namespace) -> None:
    _trace_user(ctx, args, retprobe=False)


# trace prog ------------------------------------------------------------------------------------
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


def split_prog_target(text: str) -> tuple[str, str | None]:
    """``SEL[:FUNC]``: a trailing ``:NAME`` that is not a selector kind names a function."""
    head, sep, tail = text.rpartition(":")
    if sep and head and head not in ("id", "i", "name", "n", "tag", "t", "pinned", "p", "pid") \
            and not tail.startswith("/"):
        return head, tail
    return text, None


@command("trace prog", help="fentry/fexit on BPF programs: args, retval and LBR inside them")
@argument("target", metavar="SEL[:FUNC]", completer=complete_prog_target,
          help="program selector, optionally :subprogram (default: the main function)")
@argument("--entry", action="store_true", help="fentry: events on entry (args)")
@argument("--exit", action="store_true", help="fexit: events on return (args, retval; default)")
@argument("--both", action="store_true", help="fentry and fexit (durations on exit)")
@_common_trace_args
def cmd_trace_prog(ctx: Context, args: argparse.Namespace) -> None:
    from bpflbr_shell.trace.probes.tracing import TracingTracer, prog_target

    sel, func = split_prog_target(args.target)
    kernel = ctx.kernel
    progs = kernel.select(sel)
    kernel.progs()  # every program in the symbolizer, so LBR addresses get their lines
    targets = [prog_target(p, func) for p in progs]
    entry = args.entry or args.both
    exit_ = args.exit or args.both or not args.entry
    what = "fentry+fexit" if entry and exit_ else "fentry" if entry else "fexit"
    names = ", ".join(f"{t.name} (prog {t.prog_id})" for t in targets[:5])
    capture = kernel_capture_options(ctx, args)
    label = f"{what} {args.target}"
    run_trace(ctx, args, f"trace prog {args.target} --{what.replace('+', ' --')}",
              f"{what} on {len(targets)} BPF function(s): {names}",
              lambda on_event: TracingTracer(targets, capture, entry, exit_, on_event, label),
              params={t.addr: t.signature or Signature.from_names(t.params) for t in targets})


# trace kfunc -----------------------------------------------------------------------------------
BACKENDS = ("auto", "multi", "fentry", "kprobe")


@command("trace kfunc", help="kernel functions: kprobe.multi (default), fentry or kprobes")
@argument("globs", nargs="+", metavar="GLOB", completer=complete_ksym,
          help="kernel function names or globs, e.g. 'tcp_v4_*'")
@argument("--backend", choices=BACKENDS, default="auto",
          help="auto: kprobe.multi, else fentry, else single kprobes")
@argument("--exit", action="store_true",
          help="events on return (retval; duration except with the fentry backend)")
@argument("--dry-run", action="store_true", help="list what would be attached, and how")
@_common_trace_args
def cmd_trace_kfunc(ctx: Context, args: argparse.Namespace) -> None:
    from bpflbr_shell.errors import FeatureError, UserError
    from bpflbr_shell.trace.probes import kprobes

    kernel = ctx.kernel
    traceable = kprobes.traceable_functions(kernel.kallsyms)
    found = kprobes.resolve_functions([check_glob(g, "function glob") for g in args.globs],
                                      traceable, kernel.kallsyms)
    funcs = found.funcs
    backends = plan_backends(args.backend)
    for note in found.notices():
        ctx.warn(note)
    if args.dry_run:
        ctx.print(f"{len(funcs)} function(s) from {traceable.source}; backend "
                  f"{'/'.join(backends)} ({'return' if args.exit else 'entry'} events)")
        for k in funcs:
            ctx.print(f"  {k}" + (f" (asked as {k.asked})" if k.asked else ""))
        return
    capture = kernel_capture_options(ctx, args)
    label = f"kfunc {' '.join(args.globs)}"
    spec = f"trace kfunc {' '.join(args.globs)}" + (" --exit" if args.exit else "")
    btfs = kernel_btfs(kernel)
    reasons: list[str] = []
    for backend in backends:
        try:
            make = kfunc_tracer_factory(backend, funcs, capture, args.exit, label, btfs)
            run_trace(ctx, args, f"{spec} --backend {backend}",
                      f"{backend} on {len(funcs)} kernel function(s): "
                      + ", ".join(map(str, funcs[:5])) + (" ..." if len(funcs) > 5 else ""),
                      make, signature_of=kernel_signatures(btfs, funcs))
            return
        except UserError as exc:  # this kernel lacks or refuses the backend: try the next
            reasons.append(f"{backend}: {exc.problem}")
            if backend == backends[-1]:
                if len(reasons) > 1:
                    raise FeatureError("no backend can trace kernel functions here: "
                                       + "; ".join(reasons), "see 'show features'") from None
                raise
            ctx.warn(f"{backend} unavailable ({exc.problem}); trying the next backend")


def kernel_btfs(kernel: Any) -> Any:
    """vmlinux BTF (parsed once per session) and the modules' on top of it, per trace."""
    from bpflbr_shell.kernel.btf import KernelBtfs

    return KernelBtfs(kernel.vmlinux_btf)


def kernel_signatures(btfs: Any, funcs: list[Any]) -> Callable[[str | None], Signature | None]:
    """Prototypes of the traced kernel functions from BTF (a module's own BTF for module
    functions), for typed args and retval. Events name a function as it was asked for; an
    alias's prototype is that of the name ftrace lists at its address."""
    by_name = {k.asked or k.name: k for k in funcs}

    def signature_of(name: str | None) -> Signature | None:
        if not name:
            return None
        k = by_name.get(name)
        if k is None:
            return btfs.signature(name, None)
        return btfs.signature(k.name, k.module) or btfs.signature(name, k.module)

    return signature_of


def plan_backends(choice: str) -> list[str]:
    return ["multi", "fentry", "kprobe"] if choice == "auto" else [choice]


def kfunc_tracer_factory(backend: str, funcs: list[Any], capture: Any, exit_: bool,
                         label: str, btfs: Any) -> Callable[[Any], Any]:
    from bpflbr_shell.errors import FeatureError, UsageError
    from bpflbr_shell.trace.probes.kprobes import KprobeTracer, event_namer
    from bpflbr_shell.trace.probes.tracing import TracingTarget, TracingTracer, kernel_btf_obj_id

    if backend == "fentry":
        if btfs.vmlinux is None:
            raise FeatureError("the kernel has no BTF (/sys/kernel/btf/vmlinux)",
                               "fentry needs CONFIG_DEBUG_INFO_BTF=y; use kprobes")
        targets, no_btf = [], []
        obj_ids: dict[str, int] = {}
        for k in funcs:
            # by the listed name, else by the name asked for (BTF may know one of the two)
            found = btfs.func(k.name, k.module) or (k.asked and btfs.func(k.asked, k.module))
            sig = found[0].func_signature(found[1]) if found else None
            if not found or sig is None:
                no_btf.append(k)
                continue
            obj_id = 0
            if k.module:  # a module function is named in its module's BTF object
                if k.module not in obj_ids:
                    obj_ids[k.module] = kernel_btf_obj_id(k.module)
                obj_id = obj_ids[k.module]
                if not obj_id:
                    no_btf.append(k)
                    continue
            targets.append(TracingTarget(found[0].func_name(found[1]) or k.name, found[1],
                                         tuple(n for n, _ in sig.params), btf_obj_id=obj_id,
                                         signature=sig))
        if not targets:
            where = f"/sys/kernel/btf/{no_btf[0].module}" if no_btf and no_btf[0].module \
                else "vmlinux BTF"
            raise UsageError(f"none of the functions has a BTF prototype ({no_btf[0]}: not in "
                             f"{where})", "use --backend multi or kprobe")
        return lambda on_event: TracingTracer(targets, capture, not exit_, exit_,
                                              event_namer(funcs, False, on_event), label)
    return lambda on_event: KprobeTracer(funcs, backend, capture, exit_, on_event, label)


@command("trace list", help="list traces, running and stopped")
def cmd_trace_list(ctx: Context, args: argparse.Namespace) -> None:
    rt = runtime(ctx)
    traces = list(rt.session.traces.values())
    if not traces:
        ctx.print("no traces")
        return
    ctx.print(table(("ID", "STATE", "EVENTS", "SPEC"),
                    ((t.id, "running" if t.running else "stopped", t.delivered, t.spec)
                     for t in traces), ctx.use_color(), right=(0, 2)))


@command("trace stop", help="stop one trace (or all): detach its probes, keep its events")
@argument("id", nargs="?", type=int_range(1, None, "a trace id"),
          help="trace id (default: all)")
def cmd_trace_stop(ctx: Context, args: argparse.Namespace) -> None:
    rt = runtime(ctx)
    traces = [rt.session.get(args.id)] if args.id else list(rt.session.traces.values())
    running = [t for t in traces if t.running]
    try:
        finished = rt.session.stop_traces(traces)
    finally:
        rt.close_stats()
    for t, done in zip(traces, finished, strict=True):
        if not done:
            ctx.status(f"trace {t.id}: detached; its reader is finishing a slow event "
                       "handler ('show stats' has the final numbers once it is done)")
        elif t in running:
            report_books(ctx, t)
    ctx.print(f"stopped {len(traces)} trace(s)")


@command("trace delete", help="stop and forget a trace")
@argument("id", type=int_range(1, None, "a trace id"), help="trace id")
def cmd_trace_delete(ctx: Context, args: argparse.Namespace) -> None:
    rt = runtime(ctx)
    rt.session.delete(rt.session.get(args.id))
    rt.close_stats()


# show events / event / stats -------------------------------------------------------------------
@command("show events", help="the last N stored events (default 20)")
@argument("n", nargs="?", type=int_range(1, None, "a number of events"), default=20,
          help="how many")
def cmd_show_events(ctx: Context, args: argparse.Namespace) -> None:
    rt = runtime(ctx)
    events = rt.session.store.last(args.n)
    opts = render_options(ctx)
    if args.json:
        write_events_json(ctx, rt, events, opts)
        return
    if not events:
        ctx.print("no events stored")
    for e in events:
        print_event(ctx, rt, e, False, opts)


def write_events_json(ctx: Context, rt: Runtime, events: list[Event],
                      opts: RenderOptions) -> None:
    """A JSON array written one event at a time, each as ``trace --json`` prints it (the
    same :func:`event_json` text): building the whole document first took 1.9 GB for a large
    store and was OOM-killed."""
    symbolize = symbolizer_for(ctx, rt)
    out = ctx.stdout
    sep = "[\n"
    for e in events:
        out.write(sep + event_json(e, symbolize, options_for(rt, e, opts), params_of(rt, e)))
        sep = ",\n"
    out.write("\n]\n" if events else "[]\n")


@command("show event", help="one stored event in full")
@argument("id", type=int_range(1, None, "an event id"), help="event id (#N)")
@argument("--kstack", action="store_true", help="also show the kernel stack")
def cmd_show_event(ctx: Context, args: argparse.Namespace) -> None:
    rt = runtime(ctx)
    event = rt.session.store.get(args.id)
    opts = render_options(ctx, {"kstack": args.kstack})
    if args.json:
        symbolize = symbolizer_for(ctx, rt)
        ctx.print_json(event_to_json(event, symbolize, options_for(rt, event, opts),
                                     params_of(rt, event)))
    else:
        print_event(ctx, rt, event, False, opts)


@command("show stats", help="per trace: hits = events + drops + filtered (+ pending), "
         "bytes, in-kernel time per event")
def cmd_show_stats(ctx: Context, args: argparse.Namespace) -> None:
    rt = runtime(ctx)
    rows = []
    for t in rt.session.traces.values():
        c = t.counters()
        per = c.get("run_time_ns", 0) // c["run_cnt"] if c.get("run_cnt") else None
        rows.append({"id": t.id, "spec": t.spec, "running": t.running, **c,
                     "ns_per_run": per})
    if args.json:
        ctx.print_json(rows)
        return
    if not rows:
        ctx.print("no traces")
        return
    ctx.print(table(
        ("ID", "HITS", "EVENTS", "DROPS", "FILTERED", "PENDING", "LBR_ERR", "BYTES", "NS/RUN",
         "SPEC"),
        ((r["id"], r.get("hits", "-"), r["delivered"], r.get("drops", "-"),
          r.get("filtered", "-"), r.get("pending", "-"), r.get("lbr_errors", "-"),
          r.get("bytes", "-"), r["ns_per_run"] if r["ns_per_run"] is not None else "-",
          r["spec"]) for r in rows),
        ctx.use_color(), right=range(9)))
    ctx.print("HITS = EVENTS + DROPS + FILTERED + PENDING (read, or being written, not read yet)")
    for t, r in zip(rt.session.traces.values(), rows, strict=False):
        for note in book_notes(t, r):
            ctx.print(note)
