"""Text and JSON views of trace events: header, args/retval, LBR block or stacks.

Symbolization is passed in (kernel :class:`Symbolizer`, :class:`UserSymbolizer`), so the same
code renders live events and, later, recorded ones.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _encode_str
from typing import Any

from bpflbr_shell.kernel.values import Signature, ValueType, as_signature, format_str
from bpflbr_shell.render.text import CYAN, DIM, GREEN, YELLOW, paint, safe, short_file
from bpflbr_shell.symbols.kernel import USER_SPACE_END, Location
from bpflbr_shell.symbols.user import UNMAPPED
from bpflbr_shell.trace import lbr as lbrmod
from bpflbr_shell.trace.events import RET_STR, CapturedStr, Event
from bpflbr_shell.trace.kstack import tracer_frames
from bpflbr_shell.trace.lbr import AddrRange, Endpoint


@dataclass
class RenderOptions:
    color: bool = False
    lbr_trim: bool = True
    show_kstack: bool = False
    show_ustack: bool = True
    tracer_ranges: tuple[AddrRange, ...] = ()
    keep_ranges: tuple[AddrRange, ...] = ()


Symbolize = Callable[[Event | None, int], Location]  # None: a kernel address, no process


def format_duration(ns: int) -> str:
    if ns < 10_000:
        return f"{ns} ns"
    if ns < 10_000_000:
        return f"{ns / 1000:.1f} us"
    if ns < 10_000_000_000:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e9:.2f} s"


def format_ts(ts_ns: int) -> str:
    # the offset is taken now, not once at import: the wall clock can step (NTP, a paused VM)
    # while CLOCK_MONOTONIC, which bpf_ktime_get_ns() reads, does not
    epoch = time.time() - time.monotonic() + ts_ns / 1e9
    return time.strftime("%H:%M:%S", time.localtime(epoch)) + f".{int(epoch * 1e6) % 1_000_000:06d}"


def format_call(event: Event, params: Signature | Sequence[str] | None) -> str:
    """``func(a=1, p=0x7ffd...) = -1``: values presented through the signature's types when
    known (signed ints in decimal, pointers in hex), raw registers in hex when not."""
    func = safe(event.func) if event.func else f"{event.func_ip:#x}"
    sig = as_signature(params)
    strs = dict(event.strings)
    if sig is None:  # no prototype: the six argument registers, not six arguments
        args = ("raw regs: " + ", ".join(_arg_text(None, raw, strs.get(i))
                                         for i, raw in enumerate(event.args))) \
            if event.args else ""
    else:
        args = ", ".join([f"{name}={_arg_text(vt, raw, strs.get(i))}" for i, ((name, vt), raw)
                          in enumerate(zip(sig.params[:6], event.args, strict=False))]
                         + (["..."] if sig.variadic else []))
    call = f"{func}({args})"
    if event.retval is not None:
        ret_type = sig.ret if sig is not None else None
        if ret_type is not None and (ret_type.pointer or ret_type.integer):
            return call + " = " + _arg_text(ret_type, event.retval, strs.get(RET_STR))
        if RET_STR in strs:
            return call + " = " + _arg_text(None, event.retval, strs[RET_STR])
        ret = retval_of(event, sig)  # untyped: the signed register, and in hex
        call += f" = {ret}" + (f" ({ret:#x})" if ret is not None and ret > 9 else "")
    return call


def _arg_text(vtype: ValueType | None, raw: int, captured: CapturedStr | None = None) -> str:
    """One value: its captured C string (escaped, bounded), else through its type (integers
    in decimal, pointers in hex), else the raw register in hex."""
    if captured is not None:
        return string_text(raw, captured)
    return vtype.format(vtype.present(raw)) if vtype is not None else f"{raw:#x}"


def string_text(raw: int, captured: CapturedStr) -> str:
    """``"text"`` (``"text"...`` when cut at the bound), ``NULL``, or the pointer and why it
    could not be read."""
    if captured.ret > 0:
        return format_str(captured.shown, captured.truncated)
    if raw == 0:
        return "NULL"
    return f"{raw:#x} (unreadable: error {-captured.ret})"


def strings_of(event: Event, sig: Signature | None) -> dict[str, Any]:
    """JSON ``strings``: value name (the param's, ``argN`` untyped, ``retval``) -> the captured
    text (``null`` for NULL or unreadable) and whether it was cut at the bound."""
    names = sig.names if sig is not None else []
    out: dict[str, Any] = {}
    for i, cap in event.strings:
        name = "retval" if i == RET_STR else names[i] if i < len(names) else f"arg{i}"
        out[name] = {"text": cap.shown.decode("utf-8", "backslashreplace") if cap.ret > 0
                     else None, "truncated": cap.truncated, "ret": cap.ret}
    return out


def args_of(event: Event, sig: Signature | None) -> list[int] | dict[str, int]:
    """JSON ``args``: name -> presented value with a signature, the raw list without one."""
    return sig.args(event.args) if sig is not None and sig.params else event.args


def retval_of(event: Event, sig: Signature | None) -> int | None:
    """JSON ``retval``: presented through the return type; untyped, the signed register."""
    if event.retval is None:
        return None
    return sig.retval(event.retval) if sig is not None else event.retval_signed


def _endpoint(loc: Location) -> Endpoint:
    where = f"{safe(loc.func)}+{loc.offset:#x}" if loc.func else f"{loc.addr:#x}"
    source = ""
    if loc.file and loc.line:
        source = f"{safe(short_file(loc.file))}:{loc.line}"
    return Endpoint.of(loc.func, where, source)


_ENDPOINTS: dict[int, tuple[Location, Endpoint]] = {}
_ENDPOINTS_LIMIT = 1 << 16


def endpoint_of(loc: Location) -> Endpoint:
    """:func:`_endpoint`, remembered per Location object: symbolizers cache their Locations, so
    an LBR row's strings are built once per address, not once per event."""
    hit = _ENDPOINTS.get(id(loc))
    if hit is not None and hit[0] is loc:
        return hit[1]
    ep = _endpoint(loc)
    if len(_ENDPOINTS) >= _ENDPOINTS_LIMIT:
        _ENDPOINTS.clear()
    _ENDPOINTS[id(loc)] = (loc, ep)  # holding loc keeps its id from being reused
    return ep


class EndpointMap(dict):
    """address -> :class:`Endpoint` for rendering LBR rows. Kernel addresses are remembered
    across events (a trace sees the same few hundred code addresses in event after event, and a
    hit is then one C-level dict probe); user addresses depend on the process and are resolved
    for the current ``event`` only. Whoever keeps one across events must ``clear()`` it when
    the kernel symbolizer behind ``symbolize`` drops its Locations (``Symbolizer.generation``).
    ``lock`` is held while an event is rendered through it: background traces render from
    their own threads, and ``event`` is per render.
    """

    __slots__ = ("symbolize", "event", "lock")

    def __init__(self, symbolize: Symbolize, event: Event | None = None) -> None:
        super().__init__()
        self.symbolize, self.event = symbolize, event
        self.lock = threading.Lock()

    def __missing__(self, addr: int) -> Endpoint:
        ep = endpoint_of(self.symbolize(self.event, addr))
        if addr >= USER_SPACE_END:
            if len(self) >= _ENDPOINTS_LIMIT:
                self.clear()
            self[addr] = ep
        return ep


def render_event(event: Event, symbolize: Symbolize, opts: RenderOptions,
                 params: Signature | Sequence[str] | None = None,
                 endpoints: EndpointMap | None = None) -> str:
    """The event as text. ``endpoints``, kept by the caller across events of one symbolizer,
    saves resolving the same kernel addresses event after event; without it they are
    resolved once per event."""
    c = opts.color
    head = (f"{paint(f'#{event.id}', YELLOW, c)} {event.probe}  "
            f"pid {event.pid}/{event.tid} {safe(event.comm)}  cpu {event.cpu}  "
            f"{format_ts(event.ts_ns)}")
    lines = [head, "   " + paint(format_call(event, params), GREEN, c)
             + (f"  took {format_duration(event.duration_ns)}"
                if event.duration_ns is not None else "")]
    if event.lbr:
        result = lbrmod.trim(event.lbr, opts.tracer_ranges, opts.keep_ranges, opts.lbr_trim)
        if endpoints is None:
            endpoints = EndpointMap(symbolize, event)
        with endpoints.lock:
            endpoints.symbolize, endpoints.event = symbolize, event
            blocks = lbrmod.group(result.entries, endpoints.__getitem__)
        notice = result.notice()
        if notice:
            lines.append("   " + paint(f"LBR: {notice}", DIM, c))
        painter = (lambda text, kind: paint(text, CYAN if kind == "func" else DIM, True)) \
            if c else None
        lines += lbrmod.render_blocks(blocks, paint=painter, indent="   ")
    if event.ustack and (opts.show_ustack or not event.lbr):
        lines.append("   user stack:")
        frames, cut = user_frames(event, symbolize)
        lines += [f"     {safe(frame_text(loc))}" for loc in frames]
        if cut:
            lines.append(f"     ({cut} more: not in any mapping of the process)")
    if event.kstack and opts.show_kstack:
        frames, hidden = kernel_frames(event, symbolize, opts.lbr_trim)
        lines.append("   kernel stack:" + (f" ({hidden} tracer frame{'s' * (hidden > 1)} "
                                          "hidden; 'set lbr-trim off' shows them)"
                                          if hidden else ""))
        lines += [f"     {safe(loc.format())}" for loc in frames]
    return "\n".join(lines)


def user_frames(event: Event, symbolize: Symbolize) -> tuple[list[Location], int]:
    """The user stack's frames up to the first address no mapping of the process holds (a
    frame-pointer walk through code built without frame pointers reads data as return
    addresses, e.g. 0x336e6f687479702f), and how many were cut there."""
    frames: list[Location] = []
    for n, addr in enumerate(event.ustack):
        loc = symbolize(event, addr)
        if loc.kind == UNMAPPED or addr >= USER_SPACE_END:
            return frames, len(event.ustack) - n
        frames.append(loc)
    return frames, 0


def kernel_frames(event: Event, symbolize: Symbolize, trim: bool) -> tuple[list[Location], int]:
    """The kernel stack's frames without the tracer's own above the traced function (with
    ``trim``, as LBR trimming: ``set lbr-trim off`` keeps them), and how many were hidden."""
    frames = [symbolize(event, a) for a in event.kstack]
    if not trim or not frames:
        return frames, 0
    hidden = tracer_frames(frames, symbolize(event, event.func_ip) if event.func_ip else None)
    return frames[hidden:], hidden


def frame_text(loc: Location) -> str:
    """A stack frame: ``func+0xoff (file:line)``; ``module+0xoff`` (the mapped file and the
    link-time address in it, what addr2line -e takes) when the file has no symbol there."""
    if loc.func is None and loc.module and loc.kind == "user":
        return f"{loc.module}+{loc.offset:#x}"
    return loc.format()


def location_json(loc: Location) -> dict[str, Any]:
    return loc.to_json()


def event_to_json(event: Event, symbolize: Symbolize, opts: RenderOptions,
                  params: Signature | Sequence[str] | None = None) -> dict[str, Any]:
    """The event as JSON data; ``args``/``retval`` are presented through the signature's
    types (an ``int`` of -1 is -1, not 4294967295), raw without one."""
    result = lbrmod.trim(event.lbr, opts.tracer_ranges, opts.keep_ranges, opts.lbr_trim)
    sig = as_signature(params)
    kstack, kstack_hidden = kernel_frames(event, symbolize, opts.lbr_trim)
    return {
        "id": event.id, "probe": event.probe, "kind": event.kind, "ts_ns": event.ts_ns,
        "pid": event.pid, "tid": event.tid, "cpu": event.cpu, "comm": event.comm,
        "func": event.func, "func_ip": event.func_ip,
        "args": args_of(event, sig), "retval": retval_of(event, sig),
        "duration_ns": event.duration_ns,
        "lbr_ret": event.lbr_ret,
        "lbr": [{"index": nb.index, "from": location_json(symbolize(event, nb.branch.src)),
                 "to": location_json(symbolize(event, nb.branch.dst)),
                 "mispred": nb.branch.mispred} for nb in result.entries],
        "lbr_dropped": result.dropped_tracer + result.dropped_outside,
        "ustack": [location_json(loc) for loc in user_frames(event, symbolize)[0]],
        "kstack": [location_json(loc) for loc in kstack],
        "kstack_hidden": kstack_hidden,
        **({"strings": strings_of(event, sig)} if event.strings else {}),
    }


# ---- the JSON text, fast ------------------------------------------------------------------------
# json.dumps of a 32-entry event's dict costs ~50 us, most of it re-encoding the same few hundred
# locations in event after event. event_json() encodes each Location once (remembered per object,
# as endpoint_of does) and joins the pieces; the text is exactly json.dumps(event_to_json(...)).

_LOC_TEXT: dict[int, list] = {}  # id(loc) -> [loc, sorted text, unsorted text]
_EVENT_KEYS = ("id", "probe", "kind", "ts_ns", "pid", "tid", "cpu", "comm", "func", "func_ip",
               "args", "retval", "duration_ns", "lbr_ret", "lbr", "lbr_dropped", "ustack",
               "kstack", "kstack_hidden")  # event_to_json's order
_KEY_TEXT = {k: json.dumps(k) for k in _EVENT_KEYS}
_KEY_TEXT["strings"] = json.dumps("strings")  # only events that carry captured strings
_SORTED_KEYS = tuple(sorted(_EVENT_KEYS))
_SORTED_KEYS_STR = tuple(sorted((*_EVENT_KEYS, "strings")))


def _location_text(loc: Location, sort_keys: bool) -> str:
    hit = _LOC_TEXT.get(id(loc))
    if hit is None or hit[0] is not loc:
        if len(_LOC_TEXT) >= _ENDPOINTS_LIMIT:
            _LOC_TEXT.clear()
        hit = _LOC_TEXT[id(loc)] = [loc, None, None]  # holding loc keeps its id from reuse
    text = hit[1 if sort_keys else 2]
    if text is None:
        text = hit[1 if sort_keys else 2] = json.dumps(location_json(loc), sort_keys=sort_keys)
    return text


def _value_text(v: Any, sort_keys: bool) -> str:
    """json.dumps(v) for the scalars and lists of an event header, without its overhead."""
    if v is None:
        return "null"
    t = type(v)
    if t is int:
        return int.__repr__(v)
    if t is str:
        return _encode_str(v)
    if t is list and all(type(x) is int for x in v):
        return "[" + ", ".join(map(int.__repr__, v)) + "]"
    return json.dumps(v, sort_keys=sort_keys)


def event_json(event: Event, symbolize: Symbolize, opts: RenderOptions,
               params: Signature | Sequence[str] | None = None, sort_keys: bool = True) -> str:
    """``json.dumps(event_to_json(event, ...), sort_keys=sort_keys)``, the same text, faster."""
    result = lbrmod.trim(event.lbr, opts.tracer_ranges, opts.keep_ranges, opts.lbr_trim)
    sig = as_signature(params)
    kstack, kstack_hidden = kernel_frames(event, symbolize, opts.lbr_trim)
    loc = _location_text
    if sort_keys:
        rows = [f'{{"from": {loc(symbolize(event, b.src), True)}, "index": {i}, "mispred": '
                f'{"true" if b.mispred else "false"}, "to": {loc(symbolize(event, b.dst), True)}}}'
                for i, b in result.entries]
    else:
        rows = [f'{{"index": {i}, "from": {loc(symbolize(event, b.src), False)}, '
                f'"to": {loc(symbolize(event, b.dst), False)}, '
                f'"mispred": {"true" if b.mispred else "false"}}}'
                for i, b in result.entries]
    val = _value_text
    parts = {
        "id": val(event.id, sort_keys), "probe": val(event.probe, sort_keys),
        "kind": val(event.kind, sort_keys), "ts_ns": val(event.ts_ns, sort_keys),
        "pid": val(event.pid, sort_keys), "tid": val(event.tid, sort_keys),
        "cpu": val(event.cpu, sort_keys), "comm": val(event.comm, sort_keys),
        "func": val(event.func, sort_keys), "func_ip": val(event.func_ip, sort_keys),
        "args": val(args_of(event, sig), sort_keys),
        "retval": val(retval_of(event, sig), sort_keys),
        "duration_ns": val(event.duration_ns, sort_keys),
        "lbr_ret": val(event.lbr_ret, sort_keys),
        "lbr": "[" + ", ".join(rows) + "]",
        "lbr_dropped": val(result.dropped_tracer + result.dropped_outside, sort_keys),
        "ustack": "[" + ", ".join(loc(frame, sort_keys)
                                  for frame in user_frames(event, symbolize)[0]) + "]",
        "kstack": "[" + ", ".join(loc(frame, sort_keys) for frame in kstack) + "]",
        "kstack_hidden": val(kstack_hidden, sort_keys),
    }
    keys = _SORTED_KEYS if sort_keys else _EVENT_KEYS
    if event.strings:
        parts["strings"] = json.dumps(strings_of(event, sig), sort_keys=sort_keys)
        keys = _SORTED_KEYS_STR if sort_keys else (*_EVENT_KEYS, "strings")
    return "{" + ", ".join([f"{_KEY_TEXT[k]}: {parts[k]}" for k in keys]) + "}"
