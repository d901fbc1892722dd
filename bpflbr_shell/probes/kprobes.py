"""Kernel functions: which ones can be traced, and kprobe.multi / single-kprobe tracers.

kprobe.multi (one link for every matched function) is the default; fentry
(:mod:`.tracing`) and single kprobes are the fallbacks for kernels without fprobe. Only
functions ftrace can patch are offered: ``available_filter_functions`` minus the kprobe
blacklist, module functions tagged with their module.
"""

from __future__ import annotations

import ctypes
import fnmatch
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import FeatureError, NotFoundError, PrivilegeError, UsageError
from ..events import Event
from ..kernel import libbpf
from .base import CaptureOptions, ProbeTracer
from .bccprog import CapturedStderr, ensure_tracefs

TRACEFS = "/sys/kernel/tracing"
BLACKLIST = "/sys/kernel/debug/kprobes/blacklist"
MAX_FUNCS = 20000


@dataclass(frozen=True, slots=True)
class KFunc:
    name: str
    module: str | None = None

    def __str__(self) -> str:
        return f"{self.name} [{self.module}]" if self.module else self.name


@dataclass(slots=True)
class Traceable:
    funcs: list[KFunc]
    source: str  # where the list came from, for --dry-run and errors


def parse_filter_functions(text: str) -> list[KFunc]:
    """``available_filter_functions`` lines: ``name`` or ``name [module]``."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        module = parts[1].strip("[]") if len(parts) > 1 else None
        out.append(KFunc(parts[0], module))
    return out


def parse_blacklist(text: str) -> set[str]:
    """kprobes blacklist lines: ``0xstart-0xend<TAB>name`` (name may carry ``[module]``)."""
    names = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            names.add(parts[1])
    return names


def traceable_functions(kallsyms: object | None = None) -> Traceable:
    """Functions kprobes/fentry can attach to on this kernel."""
    try:
        ensure_tracefs()
        with open(f"{TRACEFS}/available_filter_functions") as f:
            funcs = parse_filter_functions(f.read())
        source = f"{TRACEFS}/available_filter_functions"
    except (OSError, FeatureError) as exc:
        if kallsyms is None:
            raise FeatureError(f"cannot read the traceable function list ({exc})",
                               "mount tracefs; run as root") from None
        # kallsyms text symbols, for --dry-run on kernels that hide the ftrace list
        funcs = [KFunc(s.name, s.module) for s in kallsyms  # type: ignore[attr-defined]
                 if s.type in "tT" and s.module != "bpf"]
        source = f"kallsyms text symbols (available_filter_functions unreadable: {exc})"
    try:
        with open(BLACKLIST) as f:
            blocked = parse_blacklist(f.read())
    except OSError:
        blocked = set()
    return Traceable([k for k in funcs if k.name not in blocked], source)


def match_functions(globs: Iterable[str], traceable: Traceable) -> list[KFunc]:
    """Distinct functions matching any glob, sorted by name."""
    globs = list(globs)
    seen: dict[str, KFunc] = {}
    for k in traceable.funcs:
        if k.name not in seen and any(fnmatch.fnmatchcase(k.name, g) for g in globs):
            seen[k.name] = k
    if not seen:
        raise NotFoundError(f"no traceable kernel function matches {' '.join(globs)}",
                            f"the list comes from {traceable.source.split(' (')[0]}")
    if len(seen) > MAX_FUNCS:
        raise UsageError(f"{len(seen)} functions match", f"narrow the glob (limit {MAX_FUNCS})")
    return sorted(seen.values(), key=lambda k: k.name)


class KprobeTracer(ProbeTracer):
    """kprobe.multi (``backend="multi"``: one link per direction for all functions, loaded
    through libbpf) or one BCC kprobe per function (``backend="kprobe"``)."""

    kind = "kprobe"
    source = "kprobe.c"
    lbr_kernel, lbr_user = True, False

    def __init__(self, funcs: list[KFunc], backend: str, capture: CaptureOptions, exit: bool,
                 on_event: Callable[[Event, int, int], None], label: str) -> None:
        super().__init__(capture, on_event, label)
        if backend not in ("multi", "kprobe"):
            raise ValueError(backend)
        self.funcs = funcs
        self.backend = backend
        self.exit = exit
        self._fds: list[int] = []
        self._links: list[int] = []

    def knobs(self) -> dict[str, int]:
        return {"EMIT_ENTRY": int(not self.exit), "PAIR_EXIT": int(self.exit)}

    def attach(self) -> None:
        if self.backend == "multi":
            self._attach_multi("on_kprobe", 0)
            if self.exit:
                self._attach_multi("on_kretprobe", libbpf.BPF_F_KPROBE_MULTI_RETURN)
            return
        for k in self.funcs:
            captured = CapturedStderr()
            try:
                with captured:
                    self.bpf.attach_kprobe(event=k.name.encode(), fn_name=b"on_kprobe")
                    if self.exit:
                        self.bpf.attach_kretprobe(event=k.name.encode(),
                                                  fn_name=b"on_kretprobe")
            except Exception as exc:  # BCC raises bare Exception
                why = captured.first_error() or str(exc)
                raise FeatureError(f"cannot attach a kprobe to {k.name}: {why}",
                                   "see 'show features' (kprobes)") from None

    def _attach_multi(self, fn_name: str, flags: int) -> None:
        insns = self.bpf.dump_func(fn_name.encode())
        fd = libbpf.prog_load(libbpf.BPF_PROG_TYPE_KPROBE, f"bpflbr_{fn_name[3:]}", insns,
                              expected_attach_type=libbpf.BPF_TRACE_KPROBE_MULTI)
        self._fds.append(fd)
        names = [k.name.encode() for k in self.funcs]
        syms = (ctypes.c_char_p * len(names))(*names)
        opts = libbpf.BpfLinkCreateOpts(sz=ctypes.sizeof(libbpf.BpfLinkCreateOpts))
        opts.kprobe_multi.flags = flags
        opts.kprobe_multi.cnt = len(names)
        opts.kprobe_multi.syms = syms
        what = f"kprobe.multi on {len(names)} functions"
        try:
            self._links.append(libbpf.link_create(fd, 0, libbpf.BPF_TRACE_KPROBE_MULTI, opts,
                                                  what=what))
        except PrivilegeError:
            raise
        except FeatureError:
            raise FeatureError(f"{what}: this kernel has no kprobe.multi (CONFIG_FPROBE)",
                               "use --backend fentry or --backend kprobe") from None

    def detach(self) -> None:
        for fd in [*self._links, *self._fds]:
            try:
                os.close(fd)
            except OSError:
                pass
        self._links, self._fds = [], []

    def prog_fds(self) -> list[int]:
        if self.backend == "multi":
            return list(self._fds)
        return super().prog_fds()
