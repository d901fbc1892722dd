"""uprobe/uretprobe tracing of user functions (``bpf/uprobe.c``), attached through BCC.

A :class:`UprobeTracer` owns everything it creates (the BCC object, uprobes, LBR perf fds) and
:meth:`UprobeTracer.close` releases all of it; the session guarantees close() runs on every
exit path.
"""

from __future__ import annotations

import ctypes
import errno
import fnmatch
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import FeatureError, NotFoundError, UsageError, UserError
from ..events import LBR_ENTRIES, Event, decode_record, raw_event_type
from ..lbr import USER_SPACE, AddrRange
from . import bccprog
from .ringbuf import RingBufReader

MAX_TARGETS = 256
STACK_CACHE = 4096
STATS = ("hits", "drops", "filtered", "lbr_errors", "missed_entry", "submitted")


@dataclass(frozen=True, slots=True)
class UserTarget:
    binary: str  # resolved path
    name: str
    offset: int  # file offset BCC reports (what attach_uprobe takes as addr)


@dataclass(slots=True)
class UprobeOptions:
    retprobe: bool = True
    pid: int = -1
    lbr: bool = True
    ustack: bool = True
    kstack: bool = False  # a uprobe's kernel stack is only the trap path: off unless asked
    branch_types: str = "any"
    ringbuf_pages: int = 1024  # 4 MiB: ~100 ms of a busy target at the 100 ms drain period
    extra: dict[str, int] = field(default_factory=dict)


def split_target(text: str) -> tuple[str, str]:
    """``BINARY:SYMBOL_GLOB`` -> (binary, glob); the last ':' separates them."""
    binary, sep, glob = text.rpartition(":")
    if not sep or not binary or not glob:
        raise UsageError(f"bad uprobe target '{text}'",
                         "write BINARY:SYMBOL, e.g. /bin/bash:readline")
    return binary, glob


def resolve_binary(binary: str) -> str:
    """A path, a command on PATH, or a library name (``c`` -> libc.so.6)."""
    if os.sep in binary:
        if not os.path.isfile(binary):
            raise NotFoundError(f"no such binary: {binary}")
        return os.path.realpath(binary)
    found = shutil.which(binary)
    if found:
        return os.path.realpath(found)
    bcc = bccprog.import_bcc()
    lib = bcc.BPF.find_library(binary.removeprefix("lib").split(".so")[0].encode())
    if lib:
        return os.path.realpath(lib.decode())
    raise NotFoundError(f"cannot find binary or library '{binary}'", "give a full path")


def resolve_targets(binary: str, glob: str) -> list[UserTarget]:
    """Functions of ``binary`` matching ``glob`` (ELF symbol tables, via BCC)."""
    path = resolve_binary(binary)
    bcc = bccprog.import_bcc()
    regex = fnmatch.translate(glob)
    try:
        found = bcc.BPF.get_user_functions_and_addresses(path.encode(), regex.encode())
    except Exception as exc:
        raise NotFoundError(f"cannot read symbols of {path}: {exc}") from None
    targets = sorted({UserTarget(path, n.decode(), a) for n, a in found},
                     key=lambda t: (t.name, t.offset))
    if not targets:
        raise NotFoundError(f"no function in {path} matches '{glob}'",
                            "check the name with: nm -D BINARY")
    if len(targets) > MAX_TARGETS:
        raise UsageError(f"'{glob}' matches {len(targets)} functions in {path}",
                         f"narrow the glob (limit {MAX_TARGETS})")
    return targets


class UprobeTracer:
    """One compiled probe program attached to a set of user functions."""

    kind = "uprobe"

    def __init__(self, targets: list[UserTarget], opts: UprobeOptions,
                 on_event: Callable[[Event, int, int], None], label: str) -> None:
        self.targets = targets
        self.opts = opts
        self.on_event = on_event
        self.label = label
        self.bpf: Any = None
        self.lbr_fds: list[int] = []
        self.lbr_off_reason: str | None = None
        self._attached: list[tuple[str, int, bool]] = []
        self.lbr_entries = 0
        self._raw_type = raw_event_type(0)
        self._stacks: dict[int, list[int]] = {}
        self.reader: RingBufReader | None = None
        self._closed = False
        self.bytes = 0

    # lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        from ..kernel import perf

        capture_lbr = self.opts.lbr
        if capture_lbr:
            try:
                self.lbr_fds = perf.open_lbr_events(self.opts.branch_types, kernel=False,
                                                    user=True)
            except UserError as exc:  # no PMU (FeatureError) or not allowed (PrivilegeError)
                capture_lbr = False
                self.lbr_off_reason = str(exc)
        bccprog.ensure_tracefs()
        self.lbr_entries = LBR_ENTRIES if capture_lbr else 0
        self._raw_type = raw_event_type(self.lbr_entries)
        knobs = {
            "CAPTURE_LBR": int(capture_lbr), "CAPTURE_USTACK": int(self.opts.ustack),
            "CAPTURE_KSTACK": int(self.opts.kstack),
            "EMIT_ENTRY": int(not self.opts.retprobe), "LBR_ENTRIES": self.lbr_entries,
            "RINGBUF_PAGES": self.opts.ringbuf_pages,
            "WAKEUP_EVERY": wakeup_every(self.opts.ringbuf_pages, self._raw_type),
            **self.opts.extra,
        }
        self.bpf = bccprog.compile_program("uprobe.c", knobs)
        if self.opts.pid > 0:
            cfg = self.bpf["config"]
            value = cfg.Leaf()
            value.tgid = self.opts.pid
            cfg[ctypes.c_int(0)] = value
        for t in self.targets:
            try:
                self.bpf.attach_uprobe(name=t.binary.encode(), addr=t.offset,
                                       fn_name=b"on_entry", pid=self.opts.pid)
                self._attached.append((t.binary, t.offset, False))
                if self.opts.retprobe:
                    self.bpf.attach_uretprobe(name=t.binary.encode(), addr=t.offset,
                                              fn_name=b"on_return", pid=self.opts.pid)
                    self._attached.append((t.binary, t.offset, True))
            except Exception as exc:  # BCC raises bare Exception for load and attach failures
                raise FeatureError(f"cannot attach to {t.binary}:{t.name}: {exc}",
                                   "see 'show features' (uprobes, bcc)") from None
        self.reader = RingBufReader(self.bpf["events"].map_fd, self.opts.ringbuf_pages * 4096)

    def _handle(self, record: memoryview) -> None:
        event, kstack, ustack = decode_record(record, self.label)
        self.bytes += len(record)
        self.on_event(event, kstack, ustack)

    def poll(self, timeout_ms: int) -> None:
        """Deliver ready events to ``on_event``; returns after ``timeout_ms`` at most.

        Events are submitted without a wakeup most of the time (bpf/lbr_event.h:
        WAKEUP_EVERY), so the ring is drained after every wait, signalled or not."""
        if self.reader is not None and not self._closed:
            self.reader.wait(timeout_ms)
            self.reader.drain(self._handle)

    def close(self) -> None:
        """Detach and free everything; safe to call twice and from signal paths."""
        if self._closed:
            return
        self._closed = True
        from ..kernel import perf

        reader, self.reader = self.reader, None
        if reader is not None:
            reader.close()
        bpf, self.bpf = self.bpf, None
        if bpf is not None:
            for binary, offset, ret in reversed(self._attached):
                try:
                    if ret:
                        bpf.detach_uretprobe(name=binary.encode(), addr=offset, pid=self.opts.pid)
                    else:
                        bpf.detach_uprobe(name=binary.encode(), addr=offset, pid=self.opts.pid)
                except Exception:
                    pass  # cleanup() below closes the perf fds regardless
            self._attached.clear()
            bpf.cleanup()
        perf.close_all(self.lbr_fds)
        self.lbr_fds = []

    # facts for rendering and stats -----------------------------------------------------------
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
                cached = [a for a in self.bpf["stacks"].walk(stack_id) if a]
            except (KeyError, OSError):
                return []
            if len(self._stacks) < STACK_CACHE:
                self._stacks[stack_id] = cached
        return list(cached)

    def counters(self) -> dict[str, int]:
        if self.bpf is None:
            return {}
        table = self.bpf["stats"]
        return {name: int(table.sum(ctypes.c_int(i)).value) for i, name in enumerate(STATS)}

    def prog_fds(self) -> list[int]:
        if self.bpf is None:
            return []
        return [fn.fd for fn in self.bpf.funcs.values()]

    def tracer_ranges(self) -> list[AddrRange]:
        """Kernel code the LBR records on our own path; user targets keep user space only."""
        return []

    def keep_ranges(self) -> list[AddrRange]:
        return [USER_SPACE]


def wakeup_every(ringbuf_pages: int, raw_type: type[ctypes.Structure]) -> int:
    """Events per CPU between forced wakeups: a reader woken when each CPU has filled about an
    eighth of the ring drains it long before it overflows, and a busy target pays one wakeup
    (an IPI, costly in a VM) per hundreds of events instead of one per event."""
    record = ctypes.sizeof(raw_type) + 8  # ring-buffer record header
    cpus = os.cpu_count() or 1
    return max(1, ringbuf_pages * 4096 // record // (8 * cpus))


def errno_name(code: int) -> str:
    return errno.errorcode.get(-code, str(code)) if code < 0 else str(code)
