"""uprobe/uretprobe tracing of user functions (``bpf/uprobe.c``), attached through BCC.

A :class:`UprobeTracer` owns everything it creates (the BCC object, uprobes, LBR perf fds) and
:meth:`UprobeTracer.close` releases all of it; the session guarantees close() runs on every
exit path.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bpflbr_shell.errors import NotFoundError, UsageError
from bpflbr_shell.symbols.user import ProbeSite
from bpflbr_shell.trace.events import MAX_ARGS, RET_STR, Event
from bpflbr_shell.trace.lbr import USER_SPACE, AddrRange
from bpflbr_shell.trace.probes import bccprog, elfsyms
from bpflbr_shell.trace.probes.base import (
    CaptureOptions,
    ProbeTracer,
    capture_options,
    kernel_filter_knobs,
)
from bpflbr_shell.trace.spec import PlanContext, TracePlan, TraceSpec

MAX_TARGETS = 256


@dataclass(frozen=True, slots=True)
class UserTarget:
    binary: str  # resolved path
    name: str
    offset: int  # file offset BCC reports (what attach_uprobe takes as addr)
    # a GNU indirect function (STT_GNU_IFUNC): a uprobe here sits on its resolver
    ifunc: bool = field(default=False, compare=False)


def split_target(text: str) -> tuple[str, str]:
    """``BINARY:SYMBOL_GLOB`` -> (binary, glob); the last ':' separates them."""
    binary, sep, glob = text.rpartition(":")
    if not sep or not binary or not glob:
        raise UsageError(f"bad uprobe target '{text}'",
                         "write BINARY:SYMBOL, e.g. /bin/bash:readline")
    return binary, glob


def resolve_binary(binary: str, pid: int = 0, notes: list[str] | None = None) -> str:
    """A path, a command on PATH, or a library name (``c`` -> libc.so.6).

    With ``pid`` the files that process maps come first (``/proc/PID/maps``; through
    ``/proc/PID/root`` when it lives in another mount namespace): another copy of the same
    library elsewhere on disk (a pyenv python's own libpython beside Debian's) would never
    fire for it. Without one, when several files fit the name, ``notes`` says which was
    chosen and what the others are."""
    notes = notes if notes is not None else []
    if pid > 0:
        mapped = mapped_files(pid)
        hits = [p for p in mapped if _names_file(binary, p, mapped[0] if mapped else "")]
        if hits:
            if len(hits) > 1:
                notes.append(f"{binary}: process {pid} maps {len(hits)} files that fit; "
                             f"using {hits[0]} (not {', '.join(hits[1:])})")
            return in_namespace_of(pid, hits[0])
    chosen = _resolve_here(binary)
    if pid > 0:
        notes.append(f"process {pid} does not map {chosen} (yet): its probes fire only "
                     "if the process loads that file")
    elif os.sep not in binary:
        others = [p for p in other_copies(binary) if p != chosen]
        if others:
            notes.append(f"{binary}: using {chosen}; other copies: {', '.join(others[:4])}"
                         + (" ..." if len(others) > 4 else "")
                         + " (give a full path, or --pid to use what that process maps)")
    return chosen


def _resolve_here(binary: str) -> str:
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


def mapped_files(pid: int) -> list[str]:
    """The files ``pid`` maps executable code from, its main executable first (the kernel's
    spelling: paths in the process's own mount namespace)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            rows = f.read().splitlines()
    except OSError:
        raise NotFoundError(f"no process {pid}",
                            "--pid takes the id of a running process") from None
    try:
        exe = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
    except OSError:
        exe = ""
    files = dict.fromkeys([exe] if exe else [])
    for row in rows:
        parts = row.split(maxsplit=5)
        if len(parts) == 6 and "x" in parts[1] and parts[5].startswith("/"):
            files[parts[5].removesuffix(" (deleted)")] = None
    return [f for f in files if f]


def _names_file(binary: str, path: str, exe: str) -> bool:
    """Whether ``binary`` as the user wrote it names ``path``: the same path (or realpath),
    the same file name, ``c`` or ``libc`` for libc.so.6, or a command for the process's
    executable (``python3`` for python3.11)."""
    if os.sep in binary:
        return path in (binary, os.path.realpath(binary))
    base = os.path.basename(path)
    if _lib_name_fits(binary, base):
        return True
    return path == exe and (base == binary or base.startswith(binary + "."))


def _lib_name_fits(name: str, base: str) -> bool:
    if base == name:
        return True
    stem = name if name.startswith("lib") else "lib" + name
    return base.startswith(stem + ".so") or base.startswith(stem + "-")


def in_namespace_of(pid: int, path: str) -> str:
    """``path`` as the process sees it, spelled so that we can open it: through
    ``/proc/PID/root`` when that is not the file our own ``path`` names (another mount
    namespace: a container, or a mount only the process sees)."""
    theirs = f"/proc/{pid}/root{path}"
    try:
        st_theirs = os.stat(theirs)
    except OSError:
        return path  # cannot look through: the kernel's spelling is what we have
    try:
        st_ours = os.stat(path)
    except OSError:
        return theirs
    same = (st_ours.st_dev, st_ours.st_ino) == (st_theirs.st_dev, st_theirs.st_ino)
    return path if same else theirs


def other_copies(binary: str, limit: int = 4096) -> list[str]:
    """Files besides the chosen one that ``binary`` could mean: commands of that name on PATH,
    and files of that library name that running processes map (ldconfig knows one copy;
    an interpreter built elsewhere links its own)."""
    found: dict[str, None] = {}
    for d in os.environ.get("PATH", "").split(os.pathsep):
        cand = os.path.join(d, binary) if d else ""
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            found[os.path.realpath(cand)] = None
    try:
        pids = [e for e in os.listdir("/proc") if e.isdigit()][:limit]
    except OSError:
        pids = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as f:
                for row in f:
                    path = row.rstrip("\n").split(maxsplit=5)[5:]
                    if path and path[0].startswith("/") and \
                            _lib_name_fits(binary, os.path.basename(path[0])):
                        found[path[0]] = None
        except OSError:
            continue  # gone, or not ours to read
    return list(found)


def resolve_targets(binary: str, glob: str, pid: int = 0,
                    notes: list[str] | None = None) -> list[UserTarget]:
    """Functions of ``binary`` matching ``glob`` (ELF symbol tables, via BCC); ``pid`` and
    ``notes`` as for :func:`resolve_binary`."""
    path = resolve_binary(binary, pid, notes)
    targets = _functions(path, glob)
    if not targets:
        raise NotFoundError(f"no function in {path} matches '{glob}'",
                            "check the name with: nm -D BINARY")
    if len(targets) > MAX_TARGETS:
        raise UsageError(f"'{glob}' matches {len(targets)} functions in {path}",
                         f"narrow the glob (limit {MAX_TARGETS})")
    return targets


def _functions(path: str, glob: str, regex: str | None = None) -> list[UserTarget]:
    """BCC's get_user_functions_and_addresses, read by elfsyms (no ``import bcc``)."""
    regex = regex or fnmatch.translate(glob)
    try:
        found = elfsyms.function_symbols_typed(path, regex)
    except (OSError, elfsyms.ElfError) as exc:
        raise NotFoundError(f"cannot read symbols of {path}: {exc}") from None
    ifuncs = {(n, a) for n, a, ifunc in found if ifunc}
    return sorted({UserTarget(path, n, a, (n, a) in ifuncs) for n, a, _ in found},
                  key=lambda t: (t.name, t.offset))


def resolve_ifuncs(targets: list[UserTarget], user_syms: Any, pid: int,
                   notes: list[str]) -> list[UserTarget]:
    """GNU indirect functions (``strlen``, ``time``) swapped for the implementation a process
    really runs: a uprobe on the IFUNC symbol sits on its resolver, which runs once at load,
    never per call. The implementation is read, calling nothing, from the GOT slot the
    dynamic loader filled for the resolver (an R_X86_64_IRELATIVE relocation) in ``pid``, or
    in this process when it maps the same file (same CPU, same choice). When none can be
    read, the resolver is traced and ``notes`` names the implementations to trace instead."""
    out: list[UserTarget] = []
    for t in targets:
        if not t.ifunc:  # the symbol table says so: no DWARF opened for the common case
            out.append(t)
            continue
        image = user_syms.image(t.binary)
        if image is None:
            out.append(t)
            continue
        impl, where = None, ""
        for proc in ([pid] if pid > 0 else []) + [os.getpid()]:
            impl = user_syms.ifunc_target(proc, t.binary, t.name)
            if impl:
                where = f"process {proc}" if proc != os.getpid() else \
                    "this shell's process (same file, same CPU)"
                break
        found = _functions(t.binary, "", f"^{re.escape(impl)}$") if impl else []
        if found:
            notes.append(f"{t.name} is an IFUNC: tracing {impl}, the implementation the "
                         f"dynamic loader chose in {where}")
            out.extend(found)
            continue
        others = image.functions_named(f"__{t.name}_")
        notes.append(f"{t.name} is an IFUNC: tracing its resolver, which runs once at load, "
                     "not per call"
                     + (f"; its implementations: {', '.join(others[:6])}"
                        f"{' ...' if len(others) > 6 else ''} -- trace BINARY:'__{t.name}_*'"
                        if others else ""))
        out.append(t)
    return sorted(set(out), key=lambda t: (t.name, t.offset))


STR_NAMES = {**{f"arg{i}": i for i in range(MAX_ARGS)}, "ret": RET_STR, "retval": RET_STR}


def parse_str_spec(text: str | None, retprobe: bool) -> int:
    """``--str ret,arg0`` as a STR_MASK (bit i: arg i, bit RET_STR: the return value)."""
    if not text:
        return 0
    mask = 0
    for word in text.split(","):
        bit = STR_NAMES.get(word.strip().lower())
        if bit is None:
            raise UsageError(f"--str: unknown value '{word.strip()[:20]}'",
                             "name ret or arg0..arg5, comma-separated")
        if bit == RET_STR and not retprobe:
            raise UsageError("--str ret needs a return value", "use trace uretprobe")
        mask |= 1 << bit
    return mask


def string_knobs(targets: list[UserTarget], user_syms: Any, asked: int, retprobe: bool,
                 notes: list[str], cache: Any = None) -> dict[str, int]:
    """STR_MASK/STR_COUNT for the probe: the args and retval the traced functions' DWARF
    types as ``char *`` (the same for every target, since one program serves them all),
    plus what ``--str`` asked for. ``cache`` (an objcache.ProbeCache) keeps what the DWARF
    said per file version: reading it costs more than the rest of a warm start."""
    masks = set()
    for name, binary in {(t.name, t.binary) for t in targets}:
        params, ret = char_pointers(binary, name, user_syms, cache)
        masks.add(params | (1 << RET_STR if retprobe and ret else 0))
    typed = masks.pop() if len(masks) == 1 else 0
    if masks:  # more than one
        notes.append("C strings not copied: the traced functions differ in which values are "
                     "char *; trace one, or say which with --str")
    mask = typed | asked
    if not retprobe:
        mask &= ~(1 << RET_STR)
    return {"STR_MASK": mask, "STR_COUNT": bin(mask).count("1")} if mask else {}


def char_pointers(binary: str, func: str, user_syms: Any, cache: Any = None,
                  ) -> tuple[int, bool]:
    """(bit i set: parameter i is a ``char *``, whether the return value is one) of ``func``
    in ``binary`` from its DWARF; (0, False) when unknown."""
    key = None
    if cache is not None:
        from bpflbr_shell.trace.probes.objcache import fact_key

        try:
            dbg = elfsyms.debug_file(binary)  # installing libc6-dbg changes the answer
        except (OSError, elfsyms.ElfError):
            dbg = None
        key = fact_key("char-pointers", [binary] + ([dbg] if dbg else []), func)
        fact = cache.load_fact(key) if key else None
        if fact is not None:
            params, ret = fact.get("params"), fact.get("ret")
            if isinstance(params, int) and 0 <= params < 1 << MAX_ARGS and \
                    isinstance(ret, bool):
                return params, ret
    image = user_syms.image(binary)
    sig = image.signature(func) if image is not None else None
    params, ret = 0, False
    if sig is not None:
        params = sum(1 << i for i, (_, vt) in enumerate(sig.params[:MAX_ARGS])
                     if vt is not None and vt.string)
        ret = sig.ret is not None and sig.ret.string
    if key is not None and image is not None:  # no drgn, no answer: nothing to keep
        cache.store_fact(key, {"params": params, "ret": bool(ret)})
    return params, bool(ret)


_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
PT_LOAD = 1


def file_offset(path: str, vaddr: int) -> int:
    """The file offset of link-time address ``vaddr`` (what the uprobe PMU takes): through the
    PT_LOAD segment holding it. Symbol values are addresses, and they equal offsets only when
    the segment's vaddr equals its offset (typical PIE text, not -no-pie executables)."""
    with open(path, "rb") as f:
        head = f.read(_EHDR.size)
        if len(head) < _EHDR.size or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return vaddr  # not a little-endian ELF64: leave it to the kernel to judge
        fields = _EHDR.unpack(head)
        phoff, phentsize, phnum = fields[5], fields[9], fields[10]
        if phentsize < _PHDR.size or phnum > 4096:
            return vaddr
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(min(phnum, len(table) // phentsize)):
        ptype, _flags, offset, seg_vaddr, _paddr, filesz, _memsz, _align = \
            _PHDR.unpack_from(table, i * phentsize)
        if ptype == PT_LOAD and seg_vaddr <= vaddr < seg_vaddr + filesz:
            return vaddr - seg_vaddr + offset
    raise NotFoundError(f"{path}: address {vaddr:#x} is in no loaded segment of the file",
                        "is it a function of this binary?")


class UprobeTracer(ProbeTracer):
    """One compiled probe program attached to a set of user functions."""

    kind = "uprobe"
    source = "uprobe.c"
    lbr_kernel, lbr_user = False, True  # the traced code runs in user space

    def __init__(self, targets: list[UserTarget], capture: CaptureOptions, retprobe: bool,
                 on_event: Callable[[Event, int, int], None], label: str) -> None:
        super().__init__(capture, on_event, label)
        self.targets = targets
        self.retprobe = retprobe
        self._attached: list[int] = []  # uprobe perf event fds
        binaries = {t.binary for t in targets}
        # where the probes sit: places the binary in a process that exits before its events
        # are read (usersyms: func_ip - the function's link-time address = the load bias)
        self.site = ProbeSite(binaries.pop(), tuple(sorted({t.name for t in targets}))) \
            if len(binaries) == 1 else None

    def knobs(self) -> dict[str, int]:
        return {"EMIT_ENTRY": int(not self.retprobe), "PAIR_EXIT": int(self.retprobe)}

    def attach(self) -> None:
        """One perf event of the uprobe PMU per target and direction, ref_ctr_offset 0 (BCC's
        Python binding passes a garbage one, and the kernel then refuses every other tracer's
        uprobe on the same function, and theirs ours); no tracefs entries to leave behind."""
        from bpflbr_shell.kernel import perf

        pid = self.capture.pid
        if pid > 0 and not os.path.isdir(f"/proc/{pid}"):
            raise NotFoundError(f"no process {pid}", "--pid takes the id of a running process")
        assert self.bpf is not None
        entry = self.bpf.load_func("on_entry")
        ret = self.bpf.load_func("on_return") if self.retprobe else -1
        for t in self.targets:
            path = os.fsencode(t.binary)
            what = f"cannot attach to {t.binary}:{t.name}"
            offset = file_offset(t.binary, t.offset)
            self._attached.append(perf.attach_probe("uprobe", path, offset, False, pid,
                                                    entry, what))
            if self.retprobe:
                self._attached.append(perf.attach_probe("uprobe", path, offset, True, pid,
                                                        ret, what))

    def detach(self) -> None:
        """Closing a uprobe's perf event takes it off (the kernel unregisters it)."""
        from bpflbr_shell.kernel import perf

        attached, self._attached = self._attached, []
        perf.close_all(reversed(attached))

    def keep_ranges(self) -> list[AddrRange]:
        return [USER_SPACE]


def plan(spec: TraceSpec, ctx: PlanContext) -> list[TracePlan]:
    """``uprobe``/``uretprobe BINARY:GLOB``: the functions (through /proc/PID/maps with a
    pid), IFUNCs swapped for their implementation, the C strings the DWARF types, and the
    names to show; the binary's DWARF itself is opened only after attaching (a warm start
    reads what it needs from the probe cache)."""
    from bpflbr_shell.kernel.selectors import check_glob
    from bpflbr_shell.trace.probes.objcache import default_cache

    retprobe = spec.kind == "uretprobe"
    if len(spec.targets) != 1:
        raise UsageError(f"{spec.kind} takes one BINARY:SYMBOL target")
    binary, glob = split_target(spec.targets[0])
    check_glob(glob, "function glob")
    asked = parse_str_spec(spec.option("str"), retprobe)
    notes, user_syms = ctx.notes, ctx.user_syms
    targets = resolve_targets(binary, glob, pid=spec.pid, notes=notes)
    targets = resolve_ifuncs(targets, user_syms, spec.pid, notes)
    cache = default_cache() if ctx.probe_cache is True else ctx.probe_cache
    extra = string_knobs(targets, user_syms, asked, retprobe, notes, cache)
    for path in {t.binary for t in targets}:  # open64's events say open64, not __open
        user_syms.prefer(path, [t.name for t in targets if t.binary == path])
    notes.extend(user_syms.take_notices())
    capture = capture_options(spec, ustack=True, kstack=spec.kstack)
    capture.extra = extra
    label = f"{spec.kind} {os.path.basename(targets[0].binary)}:{glob}"
    names = ", ".join(t.name for t in targets[:5]) + (" ..." if len(targets) > 5 else "")
    pid = spec.pid

    def attached() -> None:  # its mappings now: it may be gone before its first event is read
        if pid:
            user_syms.prepare(pid)

    return [TracePlan(
        make=lambda on_event: UprobeTracer(targets, capture, retprobe, on_event, label),
        spec_text=f"{spec.kind} {spec.targets[0]}" + (f" --pid {pid}" if pid else ""),
        summary=f"{spec.kind} on {len(targets)} function(s) of {targets[0].binary}: {names}",
        targets=[f"{t.binary}:{t.name}" for t in targets], attached=attached,
        requires="uprobes", returns=retprobe, prototype=_prototype(targets, user_syms),
        kernel_filter=kernel_filter_knobs(capture))]


def _prototype(targets: list[UserTarget], user_syms: Any) -> Callable[[], Any] | None:
    """The one traced function's DWARF prototype, read when a filter asks for it."""
    names = {(t.binary, t.name) for t in targets}
    if len(names) != 1:
        return None
    ((binary, name),) = names

    def read() -> Any:
        image = user_syms.image(binary)
        return image.signature(name) if image is not None else None

    return read
