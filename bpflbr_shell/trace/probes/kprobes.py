"""Kernel functions: which ones can be traced, and kprobe.multi / single-kprobe tracers.

kprobe.multi (one link for every matched function) is the default; fentry
(:mod:`.tracing`) and single kprobes are the fallbacks for kernels without fprobe. Only
functions ftrace can patch are offered: ``available_filter_functions`` minus the kprobe
blacklist, module functions tagged with their module. ftrace lists one name per address, so a
kallsyms alias (``__x64_sys_getpid`` is ``__do_sys_getpid``) is traced under the name it lists,
and the user is told; what a glob matches in kallsyms but cannot be traced is counted and said.
"""

from __future__ import annotations

import ctypes
import fnmatch
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bpflbr_shell.errors import FeatureError, NotFoundError, PrivilegeError, UsageError
from bpflbr_shell.kernel import libbpf
from bpflbr_shell.trace.events import Event
from bpflbr_shell.trace.probes.base import (
    CaptureOptions,
    ProbeTracer,
    capture_options,
    kernel_filter_knobs,
)
from bpflbr_shell.trace.probes.bccprog import CapturedStderr, ensure_tracefs
from bpflbr_shell.trace.spec import OnEvent, PlanContext, TracePlan, TraceSpec

if TYPE_CHECKING:
    from bpflbr_shell.kernel.kallsyms import KallsymsIndex

TRACEFS = "/sys/kernel/tracing"
BLACKLIST = "/sys/kernel/debug/kprobes/blacklist"
MAX_FUNCS = 20000
NOT_LISTED = "not in available_filter_functions (ftrace cannot patch them)"
BLACKLISTED = "on the kprobe blacklist"
SHOWN = 3  # names quoted per notice


@dataclass(frozen=True, slots=True)
class KFunc:
    name: str
    module: str | None = None
    # traced through a kallsyms alias: the name that was asked for, and the shared address
    asked: str | None = field(default=None, compare=False)
    addr: int = field(default=0, compare=False)

    def __str__(self) -> str:
        return f"{self.name} [{self.module}]" if self.module else self.name


@dataclass(slots=True)
class Traceable:
    funcs: list[KFunc]
    source: str  # where the list came from, for --dry-run and errors
    blocked: frozenset[str] = frozenset()  # on the kprobe blacklist (not in funcs)
    from_kallsyms: bool = False  # the fallback list: kallsyms itself, nothing to resolve


def parse_filter_functions(text: str) -> list[KFunc]:
    """``available_filter_functions`` lines: ``name`` or ``name [module]``."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#"):  # '#': a fixture's provenance header
            continue
        module = parts[1].strip("[]") if len(parts) > 1 else None
        out.append(KFunc(parts[0], module))
    return out


def parse_blacklist(text: str) -> set[str]:
    """kprobes blacklist lines: ``0xstart-0xend<TAB>name`` (name may carry ``[module]``)."""
    names = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#"):
            names.add(parts[1])
    return names


def traceable_from_text(filter_functions: str, blacklist: str, source: str) -> Traceable:
    """The traceable list from the two files' text (the live files, or recorded ones)."""
    blocked = parse_blacklist(blacklist)
    funcs = parse_filter_functions(filter_functions)
    return Traceable([k for k in funcs if k.name not in blocked], source, frozenset(blocked))


def traceable_functions(kallsyms: KallsymsIndex | None = None) -> Traceable:
    """Functions kprobes/fentry can attach to on this kernel."""
    try:
        with open(BLACKLIST) as f:
            blacklist = f.read()
    except OSError:
        blacklist = ""
    try:
        ensure_tracefs()
        with open(f"{TRACEFS}/available_filter_functions") as f:
            return traceable_from_text(f.read(), blacklist,
                                       f"{TRACEFS}/available_filter_functions")
    except (OSError, FeatureError) as exc:
        if kallsyms is None:
            raise FeatureError(f"cannot read the traceable function list ({exc})",
                               "mount tracefs; run as root") from None
        # kallsyms text symbols, for --dry-run on kernels that hide the ftrace list
        blocked = parse_blacklist(blacklist)
        funcs = [KFunc(s.name, s.module) for s in kallsyms
                 if s.type in "tT" and s.module != "bpf" and s.name not in blocked]
        return Traceable(funcs, f"kallsyms text symbols (available_filter_functions "
                         f"unreadable: {exc})", frozenset(blocked), from_kallsyms=True)


@dataclass(slots=True)
class Resolution:
    """What globs resolved to: the functions to attach, the kallsyms aliases traced under
    ftrace's name for their address, and what matched in kallsyms but cannot be traced."""

    funcs: list[KFunc]
    matched: int = 0  # distinct kallsyms (or list) names the globs matched
    aliases: list[KFunc] = field(default_factory=list)  # .asked -> .name
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> names

    def notices(self) -> list[str]:
        """One line per fact the user should know before the events come."""
        out = []
        if len(self.aliases) == 1:
            k = self.aliases[0]
            out.append(f"{k.asked} is traced as {k.name} (same address)")
        elif self.aliases:
            more = len(self.aliases) - SHOWN
            out.append(f"{len(self.aliases)} functions are traced as the name ftrace lists at "
                       "their address: "
                       + ", ".join(f"{k.asked} as {k.name}" for k in self.aliases[:SHOWN])
                       + (f" (and {more} more)" if more > 0 else ""))
        nskipped = sum(len(v) for v in self.skipped.values())
        if nskipped:
            parts = []
            for reason, names in self.skipped.items():
                shown = ", ".join(names[:SHOWN]) + (", ..." if len(names) > SHOWN else "")
                parts.append(f"{len(names)} {reason}: {shown}")
            out.append(f"{nskipped} of {self.matched} matching functions skipped: "
                       + "; ".join(parts))
        return out


def _is_entry_point(name: str) -> bool:
    """kallsyms text names that are no function of their own: ``__pfx_`` padding before a
    function, and ``.cold`` parts split off one (their function is listed on its own)."""
    return not name.startswith("__pfx_") and ".cold" not in name


def resolve_functions(globs: Iterable[str], traceable: Traceable,
                      kallsyms: Any | None = None) -> Resolution:
    """Distinct functions matching any glob, sorted by name. With ``kallsyms``, a matching
    kallsyms name ftrace does not list is traced through the listed name at its address
    (same module), or counted as skipped with the reason."""
    # each glob once, all of them in one pattern: a line repeating a glob a thousand times
    # cost a thousand passes over every traceable function (fuzzing found 114 s)
    globs = list(dict.fromkeys(globs))
    wanted = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs))
    listed = {k.name: k for k in traceable.funcs}
    seen: dict[str, KFunc] = {}
    for k in traceable.funcs:
        if k.name not in seen and wanted.match(k.name):
            seen[k.name] = k
    matched = set(seen)
    aliases: list[KFunc] = []
    skipped: dict[str, list[str]] = {}
    if kallsyms is not None and not traceable.from_kallsyms:
        for g in globs:
            for sym in kallsyms.symbols_matching(g):
                name = sym.name
                if name in matched or sym.module == "bpf" or not _is_entry_point(name):
                    continue
                matched.add(name)
                if name in traceable.blocked:
                    skipped.setdefault(BLACKLISTED, []).append(name)
                    continue
                alias = next((a for a in kallsyms.at_address(sym.addr)
                              if a.name in listed and a.module == sym.module), None)
                if alias is None:
                    skipped.setdefault(NOT_LISTED, []).append(name)
                    continue
                k = KFunc(alias.name, listed[alias.name].module, asked=name, addr=sym.addr)
                aliases.append(k)
                seen.setdefault(alias.name, k)
    if not seen:
        why = "; ".join(f"{len(v)} {r}: {', '.join(sorted(v)[:SHOWN])}"
                        for r, v in skipped.items())
        raise NotFoundError(f"no traceable kernel function matches {' '.join(globs)}"
                            + (f" ({why})" if why else ""),
                            f"the list comes from {traceable.source.split(' (')[0]}")
    if len(seen) > MAX_FUNCS:
        raise UsageError(f"{len(seen)} functions match", f"narrow the glob (limit {MAX_FUNCS})")
    for names in skipped.values():
        names.sort()
    return Resolution(sorted(seen.values(), key=lambda k: k.name), len(matched),
                      sorted(aliases, key=lambda k: k.asked or ""), skipped)


_GLOB_CHARS = frozenset("*?[")


def resolve_exact(names: list[str]) -> Resolution | None:
    """Exact function names (no glob), found straight in the text of the ftrace list: what
    :func:`resolve_functions` gives for names ftrace lists, without parsing the whole list
    and kallsyms (most of a warm start's time under emulation). None when a name is a glob,
    is not listed under that name (an alias: the full resolution handles it) or is on the
    kprobe blacklist."""
    if not names or any(_GLOB_CHARS & set(n) for n in names):
        return None
    try:
        ensure_tracefs()
        with open(f"{TRACEFS}/available_filter_functions") as f:
            text = f.read()
        with open(BLACKLIST) as f:
            blocked = parse_blacklist(f.read())
    except (OSError, FeatureError):
        return None
    wanted = set(names)
    if wanted & blocked:
        return None
    found: dict[str, KFunc] = {}
    pattern = re.compile(r"^(" + "|".join(map(re.escape, sorted(wanted)))
                         + r")(?:[ \t]+\[([^\]\s]+)\])?[ \t]*$", re.M)
    for m in pattern.finditer(text):
        found.setdefault(m.group(1), KFunc(m.group(1), m.group(2)))
    if set(found) != wanted:
        return None
    return Resolution(sorted(found.values(), key=lambda k: k.name), len(found))


def match_functions(globs: Iterable[str], traceable: Traceable) -> list[KFunc]:
    """Distinct functions matching any glob, sorted by name (ftrace's names only)."""
    return resolve_functions(globs, traceable).funcs


def event_namer(funcs: list[KFunc], exits_lack_args: bool,
                on_event: Callable[[Event, int, int], None]) -> Callable[[Event, int, int], None]:
    """``on_event`` with events of alias-traced functions named as the user asked (kallsyms
    has several names at that address, and would pick any), and, when ``exits_lack_args``
    (a return probe takes the arguments from its paired entry), no arguments on an exit whose
    entry was not seen (it entered before the entry probe was attached): zeros would lie."""
    names = {k.addr: k.asked for k in funcs if k.asked and k.addr}

    def handle(event: Event, kstack: int, ustack: int) -> None:
        if names:
            event.func = names.get(event.func_ip, event.func)
        if exits_lack_args and event.kind == "exit" and event.duration_ns is None:
            event.args = []
        on_event(event, kstack, ustack)

    return handle


class KprobeTracer(ProbeTracer):
    """kprobe.multi (``backend="multi"``: one link per direction for all functions, loaded
    through libbpf) or one BCC kprobe per function (``backend="kprobe"``)."""

    kind = "kprobe"
    source = "kprobe.c"
    lbr_kernel, lbr_user = True, False

    def __init__(self, funcs: list[KFunc], backend: str, capture: CaptureOptions, exit: bool,
                 on_event: Callable[[Event, int, int], None], label: str) -> None:
        super().__init__(capture, event_namer(funcs, exit, on_event), label)
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
        """The return probe first: an entry is stashed only once its exit will be seen. In
        the other order a call entering between the two attachments was counted and never
        delivered; now such a call's exit is delivered, without its entry's arguments and
        duration. Both multi programs are loaded before either link is made, so that window
        is one link's making, not a verification too (about 0.1 s under emulation)."""
        if self.backend == "multi":
            loaded = []
            if self.exit:
                loaded.append((self._load_multi("on_kretprobe"), libbpf.BPF_F_KPROBE_MULTI_RETURN))
            loaded.append((self._load_multi("on_kprobe"), 0))
            for fd, flags in loaded:
                self._link_multi(fd, flags)
            return
        for k in self.funcs:
            captured = CapturedStderr()
            assert self.bpf is not None  # compiled by start() before attach()
            try:
                with captured:
                    if self.exit:
                        self.bpf.attach_kretprobe(event=k.name.encode(),
                                                  fn_name=b"on_kretprobe")
                    self.bpf.attach_kprobe(event=k.name.encode(), fn_name=b"on_kprobe")
            except Exception as exc:  # BCC raises bare Exception
                why = captured.first_error() or str(exc)
                raise FeatureError(f"cannot attach a kprobe to {k.name}: {why}",
                                   "see 'show features' (kprobes)") from None

    def _load_multi(self, fn_name: str) -> int:
        assert self.bpf is not None
        insns = self.bpf.dump_func(fn_name.encode())
        fd = libbpf.prog_load(libbpf.BPF_PROG_TYPE_KPROBE, f"bpflbr_{fn_name[3:]}", insns,
                              expected_attach_type=libbpf.BPF_TRACE_KPROBE_MULTI)
        self._fds.append(fd)
        return fd

    def _link_multi(self, fd: int, flags: int) -> None:
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
        from bpflbr_shell.kernel.perf import close_all

        close_all([*self._links, *self._fds])
        self._links, self._fds = [], []

    def prog_fds(self) -> list[int]:
        if self.backend == "multi":
            return list(self._fds)
        return super().prog_fds()


# the kfunc planner ------------------------------------------------------------------------------
def plan(spec: TraceSpec, ctx: PlanContext) -> list[TracePlan]:
    """``kfunc GLOB...``: the traceable functions the globs match (kallsyms aliases resolved
    to the name ftrace lists, skips counted in ``ctx.notes``), and one plan per backend to
    try, in order: kprobe.multi, fentry, single kprobes (or the one asked for)."""
    from bpflbr_shell.kernel.btf import KernelBtfs
    from bpflbr_shell.kernel.selectors import check_glob

    kernel = ctx.kernel()
    asked = [check_glob(g, "function glob") for g in spec.targets]
    source = f"{TRACEFS}/available_filter_functions"
    found = resolve_exact(asked)
    if found is None:  # globs, aliases, blacklisted names: the whole list and kallsyms
        traceable = traceable_functions(kernel.kallsyms)
        found = resolve_functions(asked, traceable, kernel.kallsyms)
        source = traceable.source
    funcs = found.funcs
    ctx.notes.extend(found.notices())
    exit_ = bool(spec.option("exit"))
    capture = capture_options(spec)
    globs = " ".join(spec.targets)
    label = f"kfunc {globs}"
    base = f"trace kfunc {globs}" + (" --exit" if exit_ else "")
    btfs = once(lambda: KernelBtfs(kernel.vmlinux_btf))  # parsed when first needed
    signature_of = kernel_signatures(btfs, funcs)
    listed = [f"{k}" + (f" (asked as {k.asked})" if k.asked else "") for k in funcs]
    shown = ", ".join(map(str, funcs[:5])) + (" ..." if len(funcs) > 5 else "")

    def make_for(backend: str) -> Callable[[OnEvent], Any]:
        # built when tried: a backend's refusal (no BTF for fentry) sends the session on
        return lambda on_event: tracer_factory(backend, funcs, capture, exit_, label,
                                               btfs)(on_event)

    def attached() -> None:
        # the events' function names come from kallsyms: parsed beside the first events'
        # wait, not before attaching (exact names need no kallsyms to be found)
        def warm() -> None:
            try:
                kernel.kallsyms  # noqa: B018 - the parse is the point
            except Exception:  # noqa: BLE001 - the reader meets the same error and says it
                pass

        threading.Thread(target=warm, name="kallsyms", daemon=True).start()

    return [TracePlan(make=make_for(b), spec_text=f"{base} --backend {b}",
                      summary=f"{b} on {len(funcs)} kernel function(s): {shown}", backend=b,
                      targets=listed, source=source, signature_of=signature_of,
                      attached=attached, requires=BACKEND_FEATURES[b], returns=exit_,
                      prototype=(lambda: signature_of(funcs[0].asked or funcs[0].name))
                      if len(funcs) == 1 else None,
                      kernel_filter=kernel_filter_knobs(capture))
            for b in plan_backends(spec.option("backend", "auto"))]


def once(make: Callable[[], Any]) -> Callable[[], Any]:
    """``make()`` run once, the first caller's thread doing it and the others waiting (the
    printer and the shell may both render an event first)."""
    lock = threading.Lock()
    box: list[Any] = []

    def get() -> Any:
        with lock:
            if not box:
                box.append(make())
            return box[0]

    return get


BACKEND_FEATURES = {"multi": "kprobe-multi", "fentry": "tracing-prog", "kprobe": "kprobes"}


def plan_backends(choice: str) -> list[str]:
    return ["multi", "fentry", "kprobe"] if choice == "auto" else [choice]


def kernel_signatures(btfs: Callable[[], Any], funcs: list[KFunc],
                      ) -> Callable[[str | None], Any]:
    """Prototypes of the traced kernel functions from BTF (a module's own BTF for module
    functions), for typed args and retval. Events name a function as it was asked for; an
    alias's prototype is that of the name ftrace lists at its address."""
    by_name = {k.asked or k.name: k for k in funcs}

    def signature_of(name: str | None) -> Any:
        if not name:
            return None
        k = by_name.get(name)
        if k is None:
            return btfs().signature(name, None)
        return btfs().signature(k.name, k.module) or btfs().signature(name, k.module)

    return signature_of


def tracer_factory(backend: str, funcs: list[KFunc], capture: CaptureOptions, exit_: bool,
                   label: str, btfs_of: Callable[[], Any]) -> Callable[[OnEvent], Any]:
    """The tracer maker for one backend; fentry needs a BTF prototype per function (a
    module's from its own BTF object) and refuses when none has one."""
    from bpflbr_shell.trace.probes.tracing import (
        TracingTarget,
        TracingTracer,
        kernel_btf_obj_id,
    )

    if backend == "fentry":
        btfs = btfs_of()
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
