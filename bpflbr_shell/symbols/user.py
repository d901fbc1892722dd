"""User-space symbols and function signatures, per binary, so a process need not outlive its
events.

A trace's events are read (and symbolized) after the fact: a process that ran, hit the probe
and exited before the reader got to its first event is gone by then, and so is everything that
asks the process (``/proc/PID/maps``, drgn's ``set_pid``). So nothing here needs the process
once its addresses are placed:

* **Binaries hold the debug info.** One drgn ``Program`` per ELF file (:class:`BinaryImage`),
  the file added as an extra module at its link-time addresses: symbols, file:line and DWARF
  function types without any process. It is shared by every process that maps the file.
* **A process is its mappings**: runtime range -> (binary, delta), link address = runtime
  address - delta. They are read from ``/proc/PID/maps`` the first time a pid is seen
  (:meth:`UserSymbolizer.prepare`, a dict lookup after that; ``trace ... --pid`` does it at
  attach time) and read again, rate-limited, when an address falls outside all of them
  (``dlopen``, a reused pid).
* **When the process is already gone**, a uprobe event still places its own binary: the probe
  sits on known functions of a known file (:class:`ProbeSite`), and the event's ``func_ip`` is
  the runtime address of one of them, so ``func_ip`` minus the function's link-time address is
  the load bias. It must be page-aligned, which almost always leaves exactly one of the
  attached functions (an ambiguous one is left unplaced, not guessed). That gives the binary's
  executable range in that process: the probed function's name and DWARF argument names and
  types, and the stack frames inside that binary, resolve; frames in other libraries of a
  vanished process stay bare addresses.

The per-event cost is a dict lookup (and a set lookup for uprobe events); the work happens once
per process (reading its maps) and once per binary (opening it with drgn).
"""

from __future__ import annotations

import bisect
import os
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bpflbr_shell.kernel.values import VOID, Member, Signature, ValueType
from bpflbr_shell.symbols.kernel import USER_SPACE_END, Location

MAX_PROCESSES = 256
MAX_BINARIES = 64
MAX_CACHE = 1 << 16
PAGE = 4096
REREAD_INTERVAL = 0.1  # s: an address outside every mapping re-reads /proc/PID/maps this often
PT_LOAD, PF_X = 1, 1
VDSO = "[vdso]"
UNMAPPED = "unmapped"  # Location.kind of an address no mapping of the process covers


@dataclass(frozen=True, slots=True)
class ProbeSite:
    """Where a uprobe trace's probes sit: a binary and the functions attached in it."""

    binary: str
    functions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Segment:
    offset: int  # p_offset
    vaddr: int  # p_vaddr
    filesz: int
    memsz: int
    exec: bool


def load_segments(path: str) -> list[Segment]:
    """PT_LOAD program headers of an ELF file (either class, either byte order)."""
    with open(path, "rb") as f:
        ident = f.read(64)
        if len(ident) < 52 or ident[:4] != b"\x7fELF" or ident[4] not in (1, 2):
            raise ValueError(f"{path} is not an ELF file")
        is64, order = ident[4] == 2, "<" if ident[5] == 1 else ">"
        if is64:
            phoff, = struct.unpack_from(order + "Q", ident, 32)
            phentsize, phnum = struct.unpack_from(order + "HH", ident, 54)
            phdr = struct.Struct(order + "IIQQQQQQ")  # type flags offset vaddr paddr fsz msz al
        else:
            phoff, = struct.unpack_from(order + "I", ident, 28)
            phentsize, phnum = struct.unpack_from(order + "HH", ident, 42)
            phdr = struct.Struct(order + "IIIIIIII")  # type offset vaddr paddr fsz msz flags al
        if phentsize < phdr.size or phnum > 4096:
            raise ValueError(f"{path}: bad program header table")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    segs = []
    for i in range(len(table) // phentsize):
        v = phdr.unpack_from(table, i * phentsize)
        if is64:
            p_type, flags, off, vaddr, _, filesz, memsz, _ = v
        else:
            p_type, off, vaddr, _, filesz, memsz, flags, _ = v
        if p_type == PT_LOAD:
            segs.append(Segment(off, vaddr, filesz, memsz, bool(flags & PF_X)))
    if not segs:
        raise ValueError(f"{path} has no loadable segments")
    return segs


R_X86_64_IRELATIVE, EM_X86_64, SHT_RELA = 37, 62, 4


def irelative_slots(path: str) -> dict[int, list[int]]:
    """IFUNC resolver (link-time address) -> the GOT slots (link-time addresses) the dynamic
    loader fills with what it returned: the R_X86_64_IRELATIVE relocations of an x86-64 ELF
    file (their addend is the resolver). Empty for other machines and files."""
    with open(path, "rb") as f:
        hdr = f.read(64)
        if len(hdr) < 64 or hdr[:4] != b"\x7fELF" or hdr[4] != 2 or hdr[5] != 1:
            return {}
        machine, = struct.unpack_from("<H", hdr, 18)
        shoff, = struct.unpack_from("<Q", hdr, 40)
        shentsize, shnum = struct.unpack_from("<HH", hdr, 58)
        if machine != EM_X86_64 or shentsize < 64 or not 0 < shnum <= 4096:
            return {}
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        slots: dict[int, list[int]] = {}
        for i in range(len(table) // shentsize):
            sh_type, = struct.unpack_from("<I", table, i * shentsize + 4)
            off, size, _, _, _, entsize = struct.unpack_from("<QQIIQQ", table,
                                                             i * shentsize + 24)
            if sh_type != SHT_RELA or entsize != 24 or size > 1 << 26:
                continue
            f.seek(off)
            data = f.read(size)
            for r_offset, r_info, r_addend in struct.iter_unpack("<QQq", data[: size // 24 * 24]):
                if r_info & 0xFFFFFFFF == R_X86_64_IRELATIVE:
                    slots.setdefault(r_addend, []).append(r_offset)
    return slots


def value_type(t: Any) -> ValueType | None:
    """A drgn type as a :class:`ValueType`: typedefs and qualifiers resolved; ints, bools,
    enums and pointers have one, other types (structs by value, floats) None."""
    import drgn

    name = t.type_name() if hasattr(t, "type_name") else ""
    t = _unqualified(t)
    kind = t.kind
    if kind == drgn.TypeKind.VOID:
        return VOID
    if kind == drgn.TypeKind.INT:
        return ValueType(t.size, bool(t.is_signed), False, name)
    if kind == drgn.TypeKind.BOOL:
        return ValueType(t.size, False, False, name)
    if kind == drgn.TypeKind.ENUM:
        compatible = t.type  # None for an incomplete enum
        if compatible is None:
            return None
        return ValueType(drgn.sizeof(compatible), bool(compatible.is_signed), False, name)
    if kind == drgn.TypeKind.POINTER:
        target = _unqualified(t.type)
        pointee = (DwarfAggregate(target) if target.kind in (drgn.TypeKind.STRUCT,
                                                            drgn.TypeKind.UNION) else None)
        return ValueType(t.size, False, True, name, _is_char(t.type), pointee)
    return None


def _unqualified(t: Any) -> Any:
    """``t`` with its qualifiers and typedefs peeled off (drgn types)."""
    import drgn

    for _ in range(32):
        t = t.unqualified()
        if t.kind != drgn.TypeKind.TYPEDEF:
            break
        t = t.type
    return t


class DwarfAggregate:
    """A struct or union of user code's DWARF, as filters walk it (kernel.values.Aggregate):
    members by name, anonymous members' own included at their real offsets."""

    def __init__(self, t: Any) -> None:
        self.t = t

    @property
    def name(self) -> str:
        return str(self.t.type_name())

    @property
    def complete(self) -> bool:
        return bool(self.t.is_complete())

    def member(self, name: str) -> Member | None:
        return self._find(self.t, name, 0, 0) if self.complete else None

    def member_names(self) -> list[str]:
        out: list[str] = []
        self._names(self.t, out, 0)
        return out

    def _names(self, t: Any, out: list[str], depth: int) -> None:
        if depth > 8 or not t.is_complete():
            return
        for m in t.members:
            if m.name:
                out.append(m.name)
            else:
                self._names(_unqualified(m.type), out, depth + 1)

    def _find(self, t: Any, name: str, base_bits: int, depth: int) -> Member | None:
        import drgn

        if depth > 8 or not t.is_complete():
            return None
        for m in t.members:
            bits = base_bits + m.bit_offset
            if not m.name:
                inner = _unqualified(m.type)
                if inner.kind in (drgn.TypeKind.STRUCT, drgn.TypeKind.UNION):
                    found = self._find(inner, name, bits, depth + 1)
                    if found is not None:
                        return found
                continue
            if m.name != name:
                continue
            target = _unqualified(m.type)
            c_type = m.type.type_name()
            if target.kind in (drgn.TypeKind.STRUCT, drgn.TypeKind.UNION):
                return Member(name, bits // 8, None, c_type, embedded=DwarfAggregate(target))
            if target.kind == drgn.TypeKind.ARRAY:
                elem = _unqualified(target.type)
                chars = elem.kind == drgn.TypeKind.INT and elem.size == 1
                return Member(name, bits // 8, None, c_type,
                              char_array=(target.length or 0) if chars else 0)
            size = m.bit_field_size or 0
            return Member(name, bits // 8, value_type(m.type), c_type,
                          bit_shift=bits % 8 if size else 0, bit_size=size)
        return None


def _is_char(t: Any) -> bool:
    """Whether a pointee is a char type (through typedefs and qualifiers)."""
    import drgn

    t = _unqualified(t)
    return t.kind == drgn.TypeKind.INT and t.size == 1 and \
        t.name in ("char", "signed char", "unsigned char")


def signature_of(ftype: Any) -> Signature:
    """A drgn function type as a :class:`Signature` (a trailing '...' noted, not typed)."""
    params = tuple((p.name or f"arg{i}", value_type(p.type))
                   for i, p in enumerate(ftype.parameters))
    return Signature(params, value_type(ftype.type), bool(ftype.is_variadic))


class BinaryImage:
    """One ELF file's symbols and DWARF through drgn, at link-time addresses."""

    def __init__(self, path: str, file: str | None = None) -> None:
        self.path = path  # as the kernel names it (/proc/PID/maps, the uprobe's binary)
        self.file = file or path  # what we opened: /proc/PID/root/... in another namespace
        st = os.stat(self.file)
        self.identity = (st.st_dev, st.st_ino, st.st_mtime_ns)
        self.segments = load_segments(self.file)
        exe = [s for s in self.segments if s.exec] or self.segments
        self.text = (min(s.vaddr for s in exe), max(s.vaddr + s.memsz for s in exe))
        self._cache: dict[int, tuple[Any, ...] | None] = {}
        self._signatures: dict[str, Signature | None] = {}
        self._func_addrs: dict[str, list[int]] = {}
        self._preferred: dict[int, str] = {}  # link-time address -> the name to show
        self.notices: list[str] = []  # said once each, then taken by the symbolizer
        self.prog, self.bias = self._open(self.file)

    def _open(self, path: str) -> tuple[Any, int]:
        import logging

        import drgn

        logging.getLogger("drgn").setLevel(logging.ERROR)
        prog = drgn.Program(drgn.host_platform)
        module = prog.extra_module(path, 0, create=True)
        module.address_range = (min(s.vaddr for s in self.segments),
                                max(s.vaddr + s.memsz for s in self.segments))
        module.try_file(path)
        if module.wants_debug_file():  # stripped: /usr/lib/debug, debuglink, build id
            try:
                prog.load_module_debug_info(module)
            except (drgn.MissingDebugInfoError, OSError, ValueError):
                pass
        # drgn places the file at our range's start minus the file's own start: normally 0
        return prog, module.loaded_file_bias or 0

    def lookup(self, link_addr: int) -> tuple[Any, ...] | None:
        """(func, offset, file, line, col) of a link-time address, or None."""
        if link_addr in self._cache:
            return self._cache[link_addr]
        addr = link_addr + self.bias
        try:
            sym = self.prog.symbol(addr)
        except LookupError:
            result = None
        else:
            file = line = col = None
            try:
                # the innermost frame is the one executing (inlined callees come first)
                src = self.prog.source_location(addr)[0]
                file, line, col = src.filename, src.line, src.column
            except (LookupError, IndexError, ValueError):
                pass
            name = self._preferred.get(sym.address - self.bias, sym.name)
            result = (name, addr - sym.address, file, line, col)
        if len(self._cache) >= MAX_CACHE:
            self._cache.clear()
        self._cache[link_addr] = result
        return result

    def prefer(self, names: Any) -> None:
        """Name these functions so wherever one of their aliases would do: a trace of
        ``open64`` shows ``open64``, not drgn's pick at that address (``__open``)."""
        for name in names:
            for addr in self.function_addrs(name):
                self._preferred[addr] = name
                self._cache = {a: r for a, r in self._cache.items()
                               if r is None or a - r[1] != addr}

    def function_addrs(self, name: str) -> list[int]:
        """Link-time addresses of the function symbols called ``name``."""
        hit = self._func_addrs.get(name)
        if hit is None:
            try:
                hit = [s.address - self.bias for s in self.prog.symbols(name)]
            except (LookupError, ValueError):
                hit = []
            self._func_addrs[name] = hit
        return hit

    def signature(self, func: str) -> Signature | None:
        """Parameter names and types and the return type of ``func`` from DWARF (looked up
        once per address: ``getpid`` and ``__getpid`` are one function, one notice)."""
        if func not in self._signatures:
            addrs = tuple(sorted(set(self.function_addrs(func))))
            key = f"@{addrs}" if addrs else func
            if key not in self._signatures:
                self._signatures[key] = self._signature(func)
            self._signatures[func] = self._signatures[key]
        return self._signatures[func]

    def aliases(self, func: str) -> list[str]:
        """``func`` and the other function symbols at its address, globals first: libc's
        ``open64`` is ``__libc_open64`` in its DWARF, ``puts`` is ``_IO_puts``."""
        try:
            addrs = {s.address for s in self.prog.symbols(func)}
            syms = [s for a in addrs for s in self.prog.symbols(a) if s.address == a]
        except (LookupError, ValueError, OverflowError):
            return [func]
        import drgn

        order = {drgn.SymbolBinding.GLOBAL: 0, drgn.SymbolBinding.WEAK: 1}
        names = [s.name for s in sorted(syms, key=lambda s: order.get(s.binding, 2))]
        return [func] + [n for n in dict.fromkeys(names) if n != func]

    def _signature(self, func: str) -> Signature | None:
        if self.symbol_kind(func) == "ifunc":
            return None  # its aliases' DWARF is the resolver's: no prototype of the function
        for name in self.aliases(func):
            try:
                fn = self.prog.function(name)
            except LookupError:
                continue  # no DWARF under this name: try the next alias
            except Exception as exc:  # noqa: BLE001 - drgn could not read this DWARF
                return self._unreadable(func, exc)
            try:
                return signature_of(fn.type_)
            except Exception as exc:  # noqa: BLE001 - e.g. BadDataError: unknown type tag
                return self._unreadable(func, exc)
        return None

    def _unreadable(self, func: str, exc: Exception) -> Signature | None:
        """DWARF drgn cannot map (libc's assembly stubs: getpid's DW_TAG_unspecified_type):
        that one function's values stay raw, and the user is told once."""
        self.notices.append(f"{func} in {os.path.basename(self.path)}: its DWARF type is "
                            f"unreadable ({type(exc).__name__}: {exc}); showing raw registers")
        return None

    def symbol_kind(self, func: str) -> str | None:
        """'ifunc' for a GNU indirect function (STT_GNU_IFUNC), 'func', or None."""
        try:
            kinds = {s.kind.name.lower() for s in self.prog.symbols(func)}
        except (LookupError, ValueError):
            return None
        return "ifunc" if "ifunc" in kinds else "func" if "func" in kinds else None

    def functions_named(self, prefix: str) -> list[str]:
        """Names of function symbols starting with ``prefix`` (e.g. an IFUNC's candidates)."""
        try:
            return sorted({s.name for s in self.prog.symbols() if s.name.startswith(prefix)
                           and s.kind.name.lower() == "func"})
        except (LookupError, ValueError):
            return []


@dataclass(frozen=True, slots=True)
class Mapping:
    start: int
    end: int
    delta: int  # link-time address = runtime address - delta
    image: BinaryImage | None  # None: anonymous, [vdso], or a file we cannot open
    name: str = ""  # the mapped file's basename ([vdso], "" when anonymous)


@dataclass
class Process:
    mappings: list[Mapping] = field(default_factory=list)  # sorted by start, disjoint
    paths: set[str] = field(default_factory=set)  # binaries placed in this process
    tried_at: float = 0.0  # monotonic time /proc/PID/maps was last read (or tried)
    complete: bool = False  # mappings from /proc/PID/maps (not only placed from a probe)

    def find(self, addr: int) -> Mapping | None:
        i = bisect.bisect_right(self.mappings, addr, key=lambda m: m.start) - 1
        if i >= 0 and addr < self.mappings[i].end:
            return self.mappings[i]
        return None

    def add(self, m: Mapping) -> None:
        """Place ``m``, replacing what it overlaps (new objects: readers need no lock)."""
        mappings = [x for x in self.mappings if x.end <= m.start or x.start >= m.end]
        bisect.insort(mappings, m, key=lambda x: x.start)
        self.mappings = mappings
        self.paths = {x.image.path for x in mappings if x.image is not None}


class UserSymbolizer:
    def __init__(self) -> None:
        self._procs: dict[int, Process] = {}
        self._images: dict[str, BinaryImage | None] = {}
        self._vdso_image: BinaryImage | None = None
        self._cache: dict[tuple[int, int], Location] = {}
        self._lock = threading.RLock()
        self._preferred: dict[str, set[str]] = {}  # path -> names to show (see prefer)
        self.unavailable_reason: str | None = None

    # ---- processes ----------------------------------------------------------------------------
    def prepare(self, pid: int, func_ip: int = 0, site: ProbeSite | None = None) -> None:
        """Place ``pid``'s binaries now, while it may still run: its mappings, and for a uprobe
        event (``func_ip`` in ``site``'s binary) that binary even if the process is gone.
        Idempotent and cheap once done; never raises for a vanished process."""
        proc = self._procs.get(pid)
        if proc is not None and (site is None or site.binary in proc.paths):
            return
        if pid <= 0:
            return
        with self._lock:
            proc = self._process(pid)
            if site is not None and site.binary not in proc.paths:
                self._read_maps(pid, proc)
                if site.binary not in proc.paths and func_ip:
                    self._place_from_probe(proc, func_ip, site)

    def _process(self, pid: int) -> Process:
        proc = self._procs.get(pid)
        if proc is None:
            if len(self._procs) >= MAX_PROCESSES:
                self._procs.pop(next(iter(self._procs)))
            proc = self._procs[pid] = Process()
            self._read_maps(pid, proc)
        return proc

    def _read_maps(self, pid: int, proc: Process) -> bool:
        """(Re)read /proc/PID/maps into ``proc``; False when the process is gone."""
        now = time.monotonic()
        if proc.tried_at and now - proc.tried_at < REREAD_INTERVAL:
            return False
        proc.tried_at = now
        try:
            with open(f"/proc/{pid}/maps") as f:
                rows = f.read().splitlines()
        except OSError:
            return False
        mappings = []
        for row in rows:
            parts = row.split(maxsplit=5)
            if len(parts) < 5 or "x" not in parts[1]:
                continue  # code addresses only: stacks and probes are in executable mappings
            start, end = (int(x, 16) for x in parts[0].split("-"))
            path = parts[5] if len(parts) > 5 else ""
            mappings.append(self._mapping(pid, start, end, int(parts[2], 16), path))
        mappings.sort(key=lambda m: m.start)
        # the process's own word replaces what we had (placements from probes included)
        proc.mappings = mappings
        proc.complete = True
        proc.paths = {m.image.path for m in mappings if m.image is not None}
        return True

    def _mapping(self, pid: int, start: int, end: int, pgoff: int, path: str) -> Mapping:
        image = None
        name = os.path.basename(path.removesuffix(" (deleted)")) if path.startswith("/") \
            else path
        if path.startswith("/"):
            image = self._image(path, pid)
        elif path == "[vdso]":
            image = self._vdso(pid, start, end)
        if image is None:  # frames here read module+offset-in-file
            return Mapping(start, end, start - pgoff, None, name)
        # the PT_LOAD segment this file range comes from: file offset -> link-time address
        for seg in sorted(image.segments, key=lambda s: not s.exec):
            if seg.offset - seg.offset % PAGE <= pgoff < seg.offset + max(seg.filesz, 1):
                return Mapping(start, end, start - pgoff + seg.offset - seg.vaddr, image, name)
        return Mapping(start, end, start - pgoff, None, name)

    def _place_from_probe(self, proc: Process, func_ip: int, site: ProbeSite) -> None:
        """The process is gone (or never mapped what its event says): the probed function's
        runtime address minus its link-time address is the binary's load bias."""
        image = self._image(site.binary)
        if image is None:
            return
        biases = {func_ip - a for name in site.functions for a in image.function_addrs(name)}
        biases = {b for b in biases if b >= 0 and b % PAGE == 0}
        if len(biases) != 1:
            return  # none, or two attached functions it could be: do not guess
        (bias,) = biases
        lo, hi = image.text
        proc.add(Mapping(lo + bias, hi + bias, bias, image, os.path.basename(image.path)))

    # ---- binaries -----------------------------------------------------------------------------
    def _image(self, path: str, pid: int = 0) -> BinaryImage | None:
        if path.endswith(" (deleted)"):
            return None
        known = path in self._images
        image = self._images.get(path)
        if known:
            if image is None:
                return None
            try:
                st = os.stat(image.file)
            except OSError:
                return image  # gone from disk now; what we read still describes it
            if (st.st_dev, st.st_ino, st.st_mtime_ns) == image.identity:
                return image  # else rebuilt since: read it again
        with self._lock:
            if len(self._images) >= MAX_BINARIES:
                self._images.pop(next(iter(self._images)))
            try:
                import drgn  # noqa: F401
            except ImportError:
                self.unavailable_reason = "drgn is not installed (pip install drgn)"
                self._images[path] = None
                return None
            file = path
            if pid > 0 and not os.path.exists(path):
                file = f"/proc/{pid}/root{path}"  # another mount namespace (a container)
            try:
                image = BinaryImage(path, file)
                image.prefer(self._preferred.get(path, ()))
            except Exception as exc:  # unreadable, not ELF, drgn refused it: bare addresses
                self.unavailable_reason = f"cannot read {path} with drgn: {exc}"
                image = None
            self._images[path] = image
            return image

    def _vdso(self, pid: int, start: int, end: int) -> BinaryImage | None:
        """The vDSO (one image per kernel, in no file): copied once out of a live process
        into a memfd that drgn reads like any ELF file."""
        if self._vdso_image is not None:
            return self._vdso_image
        image = fd = None
        try:
            with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
                mem.seek(start)
                data = mem.read(end - start)
            fd = os.memfd_create("vdso")  # kept open while the image is used: its file
            os.write(fd, data)
            image = BinaryImage(VDSO, f"/proc/self/fd/{fd}")
        except Exception:  # the process is gone, or no memfd: vDSO frames stay bare
            if fd is not None:
                os.close(fd)
            return None  # tried again with the next process
        self._vdso_image = image  # not in _images: never evicted, its memfd never leaks
        return image

    # ---- queries ------------------------------------------------------------------------------
    def symbolize(self, pid: int, addr: int) -> Location:
        key = (pid, addr)
        loc = self._cache.get(key)
        if loc is not None:
            return loc
        with self._lock:
            proc = self._process(pid) if pid > 0 else None
            m = proc.find(addr) if proc is not None else None
            if m is None and proc is not None and self._read_maps(pid, proc):
                m = proc.find(addr)  # mapped since (dlopen), or the pid is another process
            found = m.image.lookup(addr - m.delta) if m is not None and m.image else None
        if found is None:  # not cached: the mapping may turn up later
            if m is not None and m.name:  # in a file without the symbol: module+offset
                return Location(addr, offset=addr - m.delta, module=m.name, kind="user")
            if addr >= USER_SPACE_END or (m is None and proc is not None and proc.complete):
                return Location(addr, kind=UNMAPPED)  # no code of the process is there
            return Location(addr, kind="user")
        func, offset, file, line, col = found
        loc = Location(addr, func=func, offset=offset, file=file, line=line, col=col,
                       kind="user")
        if len(self._cache) >= MAX_CACHE:
            self._cache.clear()
        self._cache[key] = loc
        return loc

    def signature(self, pid: int, func: str, addr: int = 0) -> Signature | None:
        """Parameter names and value types and the return type of ``func`` (DWARF), from the
        binary mapped at ``addr`` in ``pid``, else from the first binary of ``pid`` that has
        it; None when unknown."""
        with self._lock:
            proc = self._process(pid) if pid > 0 else None
            if proc is None:
                return None
            m = proc.find(addr) if addr else None
            images = [m.image] if m is not None and m.image is not None else \
                list({id(x.image): x.image for x in proc.mappings if x.image}.values())
            for image in images:
                sig = image.signature(func)
                if sig is not None:
                    return sig
        return None

    def take_notices(self) -> list[str]:
        """What the binaries had to say since the last call (each said once)."""
        with self._lock:
            out = []
            for image in [*self._images.values(), self._vdso_image]:
                if image is not None and image.notices:
                    out += image.notices
                    image.notices = []
            return out

    def prefer(self, path: str, names: Any) -> None:
        """Show the traced functions by the names the user gave (see BinaryImage.prefer):
        now if ``path`` is open, else when it is (a trace need not wait for its DWARF)."""
        with self._lock:
            self._preferred.setdefault(path, set()).update(names)
            image = self._images.get(path)
            if image is not None:
                image.prefer(names)
                self._cache.clear()

    def image(self, path: str, pid: int = 0) -> BinaryImage | None:
        """The drgn view of one binary (opened once, shared with symbolization)."""
        return self._image(path, pid)

    def load_bias(self, pid: int, path: str) -> int | None:
        """Runtime minus link-time address of ``path``'s code in ``pid`` (None: not mapped)."""
        with self._lock:
            proc = self._process(pid) if pid > 0 else None
            if proc is None:
                return None
            for m in proc.mappings:
                if m.image is not None and m.image.path == path:
                    return m.delta
        return None

    def ifunc_target(self, pid: int, path: str, func: str) -> str | None:
        """The implementation the dynamic loader chose for IFUNC ``func`` of ``path`` in
        ``pid``: the GOT slot of its IRELATIVE relocation, read through /proc/PID/mem (calls
        nothing in the process). None when the file has no such slot or ``pid`` does not map
        it."""
        image = self._image(path, pid)
        bias = self.load_bias(pid, path)
        if image is None or bias is None:
            return None
        try:
            resolvers = image.function_addrs(func)
            slots = irelative_slots(image.file)
        except (OSError, struct.error):
            return None
        names = set()
        for resolver in resolvers:
            for slot in slots.get(resolver, []):
                try:
                    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
                        mem.seek(slot + bias)
                        (value,) = struct.unpack("<Q", mem.read(8))
                except (OSError, struct.error, ValueError):
                    continue
                found = image.lookup(value - bias)
                if found is not None and found[1] == 0:
                    names.add(found[0])
        return names.pop() if len(names) == 1 else None

    def params(self, pid: int, func: str) -> list[str] | None:
        """Parameter names of ``func`` from DWARF, or None when unknown."""
        sig = self.signature(pid, func)
        return sig.names if sig is not None else None
