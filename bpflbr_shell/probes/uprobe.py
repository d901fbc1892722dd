"""uprobe/uretprobe tracing of user functions (``bpf/uprobe.c``), attached through BCC.

A :class:`UprobeTracer` owns everything it creates (the BCC object, uprobes, LBR perf fds) and
:meth:`UprobeTracer.close` releases all of it; the session guarantees close() runs on every
exit path.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import FeatureError, NotFoundError, UsageError
from ..events import Event
from ..lbr import USER_SPACE, AddrRange
from ..usersyms import ProbeSite
from . import bccprog
from .base import CaptureOptions, ProbeTracer

MAX_TARGETS = 256


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
    stacks_with_lbr: bool = False  # see CaptureOptions
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


class UprobeTracer(ProbeTracer):
    """One compiled probe program attached to a set of user functions."""

    kind = "uprobe"
    source = "uprobe.c"
    lbr_kernel, lbr_user = False, True  # the traced code runs in user space

    def __init__(self, targets: list[UserTarget], opts: UprobeOptions,
                 on_event: Callable[[Event, int, int], None], label: str) -> None:
        super().__init__(CaptureOptions(
            lbr=opts.lbr, branch_types=opts.branch_types, ustack=opts.ustack,
            kstack=opts.kstack, pid=opts.pid, ringbuf_pages=opts.ringbuf_pages,
            stacks_with_lbr=opts.stacks_with_lbr, extra=opts.extra), on_event, label)
        self.targets = targets
        self.opts = opts
        self._attached: list[tuple[str, int, bool]] = []
        binaries = {t.binary for t in targets}
        # where the probes sit: places the binary in a process that exits before its events
        # are read (usersyms: func_ip - the function's link-time address = the load bias)
        self.site = ProbeSite(binaries.pop(), tuple(sorted({t.name for t in targets}))) \
            if len(binaries) == 1 else None

    def knobs(self) -> dict[str, int]:
        return {"EMIT_ENTRY": int(not self.opts.retprobe), "PAIR_EXIT": int(self.opts.retprobe)}

    def attach(self) -> None:
        bccprog.ensure_tracefs()  # BCC's uprobe detach path reads uprobe_events
        pid = self.capture.pid
        if pid > 0 and not os.path.isdir(f"/proc/{pid}"):
            # else BCC prints "probe entry may not exist" and fails with a bare Exception
            raise NotFoundError(f"no process {pid}", "--pid takes the id of a running process")
        for t in self.targets:
            try:
                self.bpf.attach_uprobe(name=t.binary.encode(), addr=t.offset,
                                       fn_name=b"on_entry", pid=pid)
                self._attached.append((t.binary, t.offset, False))
                if self.opts.retprobe:
                    self.bpf.attach_uretprobe(name=t.binary.encode(), addr=t.offset,
                                              fn_name=b"on_return", pid=pid)
                    self._attached.append((t.binary, t.offset, True))
            except Exception as exc:  # BCC raises bare Exception for load and attach failures
                raise FeatureError(f"cannot attach to {t.binary}:{t.name}: {exc}",
                                   "see 'show features' (uprobes, bcc)") from None

    def detach(self) -> None:
        pid = self.capture.pid
        for binary, offset, ret in reversed(self._attached):
            try:
                if ret:
                    self.bpf.detach_uretprobe(name=binary.encode(), addr=offset, pid=pid)
                else:
                    self.bpf.detach_uprobe(name=binary.encode(), addr=offset, pid=pid)
            except Exception:
                pass  # bpf.cleanup() closes the perf fds regardless
        self._attached.clear()

    def keep_ranges(self) -> list[AddrRange]:
        return [USER_SPACE]
