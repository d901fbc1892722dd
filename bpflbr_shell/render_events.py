"""Text and JSON views of trace events: header, args/retval, LBR block or stacks.

Symbolization is passed in (kernel :class:`Symbolizer`, :class:`UserSymbolizer`), so the same
code renders live events and, later, recorded ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import lbr as lbrmod
from .events import Event
from .lbr import AddrRange, Endpoint
from .render import CYAN, DIM, GREEN, YELLOW, paint
from .symbols import Location

MONO_TO_EPOCH = time.time() - time.monotonic()


@dataclass
class RenderOptions:
    color: bool = False
    lbr_trim: bool = True
    show_kstack: bool = False
    show_ustack: bool = True
    tracer_ranges: tuple[AddrRange, ...] = ()
    keep_ranges: tuple[AddrRange, ...] = ()


Symbolize = Callable[[Event, int], Location]


def format_duration(ns: int) -> str:
    if ns < 10_000:
        return f"{ns} ns"
    if ns < 10_000_000:
        return f"{ns / 1000:.1f} us"
    if ns < 10_000_000_000:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e9:.2f} s"


def format_ts(ts_ns: int) -> str:
    epoch = MONO_TO_EPOCH + ts_ns / 1e9
    return time.strftime("%H:%M:%S", time.localtime(epoch)) + f".{int(epoch * 1e6) % 1_000_000:06d}"


def format_call(event: Event, params: list[str] | None) -> str:
    func = event.func or f"{event.func_ip:#x}"
    if params is None:
        args = ", ".join(f"{a:#x}" for a in event.args)
    else:
        args = ", ".join(f"{name}={event.args[i]:#x}" for i, name in enumerate(params[:6]))
    call = f"{func}({args})"
    if event.retval is not None:
        ret = event.retval_signed
        call += f" = {ret}" + (f" ({event.retval:#x})" if ret is not None and ret > 9 else "")
    return call


def _endpoint(loc: Location) -> Endpoint:
    where = f"{loc.func}+{loc.offset:#x}" if loc.func else f"{loc.addr:#x}"
    source = ""
    if loc.file and loc.line:
        source = f"{short(loc.file)}:{loc.line}"
    return Endpoint(loc.func, where, source)


def short(path: str) -> str:
    """Keep the last two path components: enough to recognise a file, short enough to align."""
    parts = path.split("/")
    return "/".join(parts[-2:]) if len(parts) > 2 else path


def render_event(event: Event, symbolize: Symbolize, opts: RenderOptions,
                 params: list[str] | None = None) -> str:
    c = opts.color
    head = (f"{paint(f'#{event.id}', YELLOW, c)} {event.probe}  "
            f"pid {event.pid}/{event.tid} {event.comm}  cpu {event.cpu}  {format_ts(event.ts_ns)}")
    lines = [head, "   " + paint(format_call(event, params), GREEN, c)
             + (f"  took {format_duration(event.duration_ns)}"
                if event.duration_ns is not None else "")]
    if event.lbr:
        result = lbrmod.trim(event.lbr, opts.tracer_ranges, opts.keep_ranges, opts.lbr_trim)
        blocks = lbrmod.group(result.entries, lambda a: _endpoint(symbolize(event, a)))
        notice = result.notice()
        if notice:
            lines.append("   " + paint(f"LBR: {notice}", DIM, c))
        painter = (lambda text, kind: paint(text, CYAN if kind == "func" else DIM, True)) \
            if c else None
        lines += ["   " + ln for ln in lbrmod.render_blocks(blocks, paint=painter)]
    if event.ustack and (opts.show_ustack or not event.lbr):
        lines.append("   user stack:")
        lines += [f"     {symbolize(event, a).format()}" for a in event.ustack]
    if event.kstack and opts.show_kstack:
        lines.append("   kernel stack:")
        lines += [f"     {symbolize(event, a).format()}" for a in event.kstack]
    return "\n".join(lines)


def location_json(loc: Location) -> dict[str, Any]:
    return {"addr": loc.addr, "func": loc.func, "offset": loc.offset, "file": loc.file,
            "line": loc.line, "col": loc.col, "kind": loc.kind}


def event_to_json(event: Event, symbolize: Symbolize, opts: RenderOptions,
                  params: list[str] | None = None) -> dict[str, Any]:
    result = lbrmod.trim(event.lbr, opts.tracer_ranges, opts.keep_ranges, opts.lbr_trim)
    return {
        "id": event.id, "probe": event.probe, "kind": event.kind, "ts_ns": event.ts_ns,
        "pid": event.pid, "tid": event.tid, "cpu": event.cpu, "comm": event.comm,
        "func": event.func, "func_ip": event.func_ip,
        "args": dict(zip(params, event.args, strict=False)) if params else event.args,
        "retval": event.retval_signed, "duration_ns": event.duration_ns,
        "lbr_ret": event.lbr_ret,
        "lbr": [{"index": nb.index, "from": location_json(symbolize(event, nb.branch.src)),
                 "to": location_json(symbolize(event, nb.branch.dst)),
                 "mispred": nb.branch.mispred} for nb in result.entries],
        "lbr_dropped": result.dropped_tracer + result.dropped_outside,
        "ustack": [location_json(symbolize(event, a)) for a in event.ustack],
        "kstack": [location_json(symbolize(event, a)) for a in event.kstack],
    }
