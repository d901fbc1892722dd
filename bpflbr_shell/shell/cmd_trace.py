"""``trace ...``, ``show events|event|stats``: running probes and looking at what they saw.

The session (probes, store, cleanup) lives in :mod:`bpflbr_shell.session`; this module only
turns command lines into tracers and events into output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from bpflbr_shell.errors import UsageError
from bpflbr_shell.events import Event
from bpflbr_shell.lbr import USER_SPACE_END
from bpflbr_shell.render import table
from bpflbr_shell.render_events import RenderOptions, event_to_json, render_event
from bpflbr_shell.session import Session, Trace, install_cleanup
from bpflbr_shell.shell.context import Context, parse_bool, register_setting
from bpflbr_shell.shell.registry import argument, command
from bpflbr_shell.symbols import Location

register_setting("lbr-trim", True, "drop the tracer's own LBR entries (off: show all)",
                 parse_bool)
register_setting("lbr-branch-types", "any",
                 "LBR branch filter: any, any_call, any_return, cond, call, ind_call, "
                 "ind_jump, call_stack (comma-separated)")
register_setting("event-store", 10000, "events kept in memory for 'show events'", int)


@dataclass
class Runtime:
    """Per-shell tracing state hung on ``ctx.state``."""

    session: Session = field(default_factory=Session)
    user_syms: Any = None
    lbr_notice_given: bool = False
    stats_fd: int | None = None
    params: dict[tuple[int, str], list[str] | None] = field(default_factory=dict)

    def close_stats(self) -> None:
        if self.stats_fd is not None and not any(t.running for t in self.session.traces.values()):
            os.close(self.stats_fd)
            self.stats_fd = None


def runtime(ctx: Context) -> Runtime:
    rt = ctx.state.get("trace")
    if rt is None:
        from bpflbr_shell.usersyms import UserSymbolizer

        install_cleanup()
        rt = Runtime(Session(ctx.settings["event-store"]), UserSymbolizer())
        ctx.state["trace"] = rt
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
                kernel_sym = ctx.kernel.symbolizer
            except Exception:
                return Location(addr)
        return kernel_sym.symbolize(addr)

    return symbolize


def render_options(ctx: Context, trace_opts: dict[str, Any] | None = None) -> RenderOptions:
    opts = trace_opts or {}
    return RenderOptions(color=ctx.use_color(), lbr_trim=ctx.settings["lbr-trim"],
                         show_kstack=opts.get("kstack", False))


def options_for(rt: Runtime, event: Event, opts: RenderOptions) -> RenderOptions:
    """``opts`` with the LBR ranges of the trace that produced ``event``."""
    trace = rt.session.traces.get(event.trace_id)
    if trace is None or not event.lbr:
        return opts
    return dataclasses.replace(opts, tracer_ranges=trace.tracer_ranges,
                               keep_ranges=trace.keep_ranges)


def print_event(ctx: Context, rt: Runtime, event: Event, as_json: bool,
                opts: RenderOptions) -> None:
    opts = options_for(rt, event, opts)
    params = rt.params.get((event.pid, event.func or ""))
    symbolize = symbolizer_for(ctx, rt)
    if as_json:
        ctx.print(json.dumps(event_to_json(event, symbolize, opts, params), sort_keys=True))
    else:
        ctx.print(render_event(event, symbolize, opts, params))


# trace uprobe / uretprobe ----------------------------------------------------------------------
def _trace_user(ctx: Context, args: argparse.Namespace, retprobe: bool) -> None:
    from bpflbr_shell.probes.uprobe import (
        UprobeOptions,
        UprobeTracer,
        resolve_targets,
        split_target,
    )

    rt = runtime(ctx)
    binary, glob = split_target(args.target)
    targets = resolve_targets(binary, glob)
    kind = "uretprobe" if retprobe else "uprobe"
    opts = UprobeOptions(retprobe=retprobe, pid=args.pid or -1, lbr=args.lbr,
                         kstack=args.kstack, branch_types=ctx.settings["lbr-branch-types"])
    label = f"{kind} {os.path.basename(targets[0].binary)}:{glob}"
    ropts = render_options(ctx, {"kstack": args.kstack})
    session = rt.session
    if rt.stats_fd is None:
        try:
            from bpflbr_shell.kernel import libbpf

            rt.stats_fd = libbpf.enable_stats()
        except Exception:
            rt.stats_fd = None  # run-time stats are a nicety; tracing goes on without them

    def deliver(trace: Trace, event: Event, kstack: int, ustack: int) -> None:
        if trace.stop_flag.is_set():
            return
        tracer = trace.tracer
        event.trace_id = trace.id
        event.kstack = tracer.stack(kstack)
        event.ustack = tracer.stack(ustack)
        rt.user_syms.prepare(event.pid)
        loc = rt.user_syms.symbolize(event.pid, event.func_ip)
        event.func = loc.func
        key = (event.pid, event.func or "")
        if key not in rt.params and event.func:
            rt.params[key] = rt.user_syms.params(event.pid, event.func)
        session.store.add(event)
        trace.delivered += 1
        for hook in list(session.hooks):
            try:
                hook(event)
            except Exception as exc:  # a user's hook must not stop the trace
                ctx.warn(f"event hook {getattr(hook, '__name__', hook)} failed: {exc}")
        if not args.quiet:
            print_event(ctx, rt, event, args.json, ropts)
        if trace.limit is not None and trace.delivered >= trace.limit:
            trace.stop_flag.set()

    def make(on_event: Any) -> UprobeTracer:
        return UprobeTracer(targets, opts, on_event, label)

    trace = session.add(args.target, make, deliver)
    if not trace.tracer.lbr_off_reason and args.lbr:
        from bpflbr_shell.probes.ranges import tracer_ranges

        trace.tracer_ranges = tuple(tracer_ranges(trace.tracer.prog_fds(), ctx.kernel.kallsyms))
        trace.keep_ranges = tuple(trace.tracer.keep_ranges())
    trace.spec = f"{kind} {args.target}" + (f" --pid {args.pid}" if args.pid else "")
    trace.limit = args.limit
    names = ", ".join(t.name for t in targets[:5]) + (" ..." if len(targets) > 5 else "")
    ctx.print(f"trace {trace.id}: {kind} on {len(targets)} function(s) of "
              f"{targets[0].binary}: {names}")
    reason = trace.tracer.lbr_off_reason
    if args.lbr and reason and not rt.lbr_notice_given:
        rt.lbr_notice_given = True
        ctx.warn(f"LBR off: {reason}; showing stack traces instead")
    if args.bg:
        session.run_background(trace, lambda exc: ctx.error_line(f"trace {trace.id}: {exc}"))
        ctx.print(f"trace {trace.id} runs in the background ('trace stop {trace.id}' ends it)")
        return
    deadline = time.monotonic() + args.duration if args.duration else None
    try:
        while not trace.stop_flag.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            trace.tracer.poll(100)
    except KeyboardInterrupt:
        ctx.print("^C")
    finally:
        session.stop(trace)
        rt.close_stats()
    ctx.print(f"trace {trace.id} stopped: {trace.delivered} events")


def _trace_args(cmd: Any) -> Any:
    for spec in (
        argument("target", metavar="BINARY:SYMBOL", help="binary (path, command or library) "
                 "and a function glob, e.g. /usr/bin/bash:readline or c:getpid"),
        argument("--pid", type=int, default=0, help="only this process (in-kernel filter)"),
        argument("--lbr", action=argparse.BooleanOptionalAction, default=True,
                 help="capture the last branch records (default on; falls back to stacks)"),
        argument("--stack", action="store_true", help="always show the user stack"),
        argument("--kstack", action="store_true", help="also show the kernel stack"),
        argument("--limit", type=int, default=None, help="stop after N events"),
        argument("--duration", type=parse_duration, default=None,
                 help="stop after this long (5s, 500ms, 2m)"),
        argument("--bg", action="store_true", help="run in the background"),
        argument("--json", action="store_true", help="one JSON object per event"),
        argument("--quiet", action="store_true", help="store events without printing them"),
    ):
        cmd = spec(cmd)
    return cmd


@command("trace uretprobe", help="trace returns of user functions (retval, args, duration)")
@_trace_args
def cmd_trace_uretprobe(ctx: Context, args: argparse.Namespace) -> None:
    _trace_user(ctx, args, retprobe=True)


@command("trace uprobe", help="trace calls of user functions (args)")
@_trace_args
def cmd_trace_uprobe(ctx: Context, args: argparse.Namespace) -> None:
    _trace_user(ctx, args, retprobe=False)


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
@argument("id", nargs="?", type=int, help="trace id (default: all)")
def cmd_trace_stop(ctx: Context, args: argparse.Namespace) -> None:
    rt = runtime(ctx)
    traces = [rt.session.get(args.id)] if args.id else list(rt.session.traces.values())
    for t in traces:
        rt.session.stop(t)
    rt.close_stats()
    ctx.print(f"stopped {len(traces)} trace(s)")


@command("trace delete", help="stop and forget a trace")
@argument("id", type=int, help="trace id")
def cmd_trace_delete(ctx: Context, args: argparse.Namespace) -> None:
    rt = runtime(ctx)
    rt.session.delete(rt.session.get(args.id))
    rt.close_stats()


# show events / event / stats -------------------------------------------------------------------
@command("show events", help="the last N stored events (default 20)")
@argument("n", nargs="?", type=int, default=20, help="how many")
def cmd_show_events(ctx: Context, args: argparse.Namespace) -> None:
    rt = runtime(ctx)
    events = rt.session.store.last(args.n)
    opts = render_options(ctx)
    if args.json:
        symbolize = symbolizer_for(ctx, rt)
        ctx.print_json([event_to_json(e, symbolize, options_for(rt, e, opts),
                                      rt.params.get((e.pid, e.func or ""))) for e in events])
        return
    if not events:
        ctx.print("no events stored")
    for e in events:
        print_event(ctx, rt, e, False, opts)


@command("show event", help="one stored event in full")
@argument("id", type=int, help="event id (#N)")
@argument("--kstack", action="store_true", help="also show the kernel stack")
def cmd_show_event(ctx: Context, args: argparse.Namespace) -> None:
    rt = runtime(ctx)
    event = rt.session.store.get(args.id)
    opts = render_options(ctx, {"kstack": args.kstack})
    if args.json:
        symbolize = symbolizer_for(ctx, rt)
        ctx.print_json(event_to_json(event, symbolize, options_for(rt, event, opts),
                                     rt.params.get((event.pid, event.func or ""))))
    else:
        print_event(ctx, rt, event, False, opts)


@command("show stats", help="per trace: hits, drops, bytes, in-kernel time per event")
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
        ("ID", "HITS", "EVENTS", "DROPS", "FILTERED", "LBR_ERR", "BYTES", "NS/RUN", "SPEC"),
        ((r["id"], r.get("hits", "-"), r["delivered"], r.get("drops", "-"),
          r.get("filtered", "-"), r.get("lbr_errors", "-"), r.get("bytes", "-"),
          r["ns_per_run"] if r["ns_per_run"] is not None else "-", r["spec"]) for r in rows),
        ctx.use_color(), right=range(8)))
