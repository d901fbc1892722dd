"""The one symbolizer: any address (BPF JIT code, vmlinux, module) -> :class:`Location`.

BPF addresses are resolved from prog info first, because it is exact (JIT ranges from
``jited_ksyms`` + ``jited_func_lens``, lines from ``jited_line_info`` + ``line_info``) where
kallsyms only knows where a ``[bpf]`` symbol starts. Everything else goes to the kallsyms index,
and kernel file:line to a pluggable resolver (drgn DWARF when available). Results are cached per
address: LBR and stack rendering ask for the same few thousand addresses again and again.

No privileged work happens here; callers hand in a built index and prog infos.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: a trace's start-up does not pay for these imports
    from .kernel.kallsyms import KallsymsIndex
    from .kernel.model import ProgInfo, SubProg

LineResolver = Callable[[int], "tuple[str, int, int] | None"]
"""addr -> (file, line, col) for kernel/module code; col 0 when unknown."""

KINDS = ("bpf", "kernel", "module", "unknown")


@dataclass(frozen=True, slots=True)
class Location:
    """Where an address is: function + offset, and source position where known."""

    addr: int
    func: str | None = None  # kallsyms spelling: bpf_prog_<tag>_<name> for BPF
    offset: int = 0
    module: str | None = None  # None for vmlinux, "bpf" for BPF code, else the module name
    file: str | None = None
    line: int | None = None
    col: int | None = None
    text: str | None = None  # the source line, when the compiler recorded it (BPF line info)
    kind: str = "unknown"  # one of KINDS
    prog_id: int | None = None  # the BPF program, when resolved from its prog info

    def format(self) -> str:
        """``func+0xoff (file:line:col)``; ``[module]`` after module code; ``0xADDR`` alone when
        nothing is known."""
        if self.func is None:
            return f"{self.addr:#x}"
        out = f"{self.func}+{self.offset:#x}"
        if self.kind == "module" and self.module:
            out += f" [{self.module}]"
        if self.file is not None and self.line:
            pos = f"{self.file}:{self.line}"
            if self.col:
                pos += f":{self.col}"
            out += f" ({pos})"
        return out

    def __str__(self) -> str:
        return self.format()


@dataclass(slots=True)
class _BpfRange:
    """One JITed subprogram, with its line starts as an array for bisect."""

    prog: ProgInfo
    sub: SubProg
    line_addrs: array  # array('Q') of LineInfo.addr, ascending, jited lines only
    lines: list  # the LineInfo records matching line_addrs


class Symbolizer:
    """Turns addresses into :class:`Location`; see the module docstring for the order."""

    CACHE_LIMIT = 1 << 20
    """Entries kept before the cache is dropped wholesale (cheap, and code is finite)."""

    def __init__(self, kallsyms: KallsymsIndex | None, progs: Iterable[ProgInfo] = ()) -> None:
        self.kallsyms = kallsyms
        self._line_resolver: LineResolver | None = None
        self._starts = array("Q")  # ascending subprog start addresses
        self._ends = array("Q")  # matching end addresses (exclusive)
        self._ranges: list[_BpfRange] = []
        self._cache: dict[int, Location] = {}
        self.generation = 0  # bumped whenever cached Locations are dropped (see _forget)
        for p in progs:
            self.add_prog(p)

    # ---- configuration ------------------------------------------------------------------

    @property
    def line_resolver(self) -> LineResolver | None:
        """Kernel file:line source (drgn DWARF, later); setting it drops cached results."""
        return self._line_resolver

    @line_resolver.setter
    def line_resolver(self, fn: LineResolver | None) -> None:
        self._line_resolver = fn
        self._forget()

    def add_prog(self, prog: ProgInfo) -> None:
        """Register a program's JIT ranges. A range overlapping an older one replaces it: the
        kernel reuses JIT memory after an unload, and the newest prog info is the truth."""
        self.remove_prog(prog.id)
        for sub in prog.subprogs:
            if not sub.addr or sub.size <= 0:
                continue  # not JITed: nothing executes at an address
            jited = [li for li in sub.lines if li.addr]
            jited.sort(key=lambda li: li.addr)
            rng = _BpfRange(prog, sub, array("Q", [li.addr for li in jited]), jited)
            start, end = sub.addr, sub.addr + sub.size
            keep = [
                r for r in self._ranges if r.sub.addr + r.sub.size <= start or r.sub.addr >= end
            ]
            keep.append(rng)
            keep.sort(key=lambda r: r.sub.addr)
            self._set_ranges(keep)
        self._forget()

    def remove_prog(self, prog_id: int) -> None:
        """Forget a program (unloaded); its addresses fall back to kallsyms."""
        if any(r.prog.id == prog_id for r in self._ranges):
            self._set_ranges([r for r in self._ranges if r.prog.id != prog_id])
            self._forget()

    def _set_ranges(self, ranges: list[_BpfRange]) -> None:
        self._ranges = ranges
        self._starts = array("Q", [r.sub.addr for r in ranges])
        self._ends = array("Q", [r.sub.addr + r.sub.size for r in ranges])

    @property
    def progs(self) -> list[ProgInfo]:
        """Registered programs, each once, in address order of their first subprogram."""
        seen: dict[int, ProgInfo] = {}
        for r in self._ranges:
            seen.setdefault(r.prog.id, r.prog)
        return list(seen.values())

    def _forget(self) -> None:
        """Drop every cached Location. Callers that keep values derived from them per address
        (rendered LBR endpoints) watch ``generation`` to know when to drop theirs."""
        self._cache.clear()
        self.generation += 1

    # ---- lookups ------------------------------------------------------------------------

    def symbolize(self, addr: int) -> Location:
        """The location of one address (cached)."""
        loc = self._cache.get(addr)
        if loc is None:
            loc = self._resolve(addr)
        return loc

    def symbolize_many(self, addrs: Iterable[int]) -> list[Location]:
        """Locations for many addresses; warm lookups are one dict probe each."""
        get = self._cache.get
        resolve = self._resolve
        return [get(a) or resolve(a) for a in addrs]

    def bpf_range(self, addr: int) -> tuple[ProgInfo, SubProg] | None:
        """The registered program and subprogram whose JIT code contains ``addr``."""
        i = bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < self._ends[i]:
            r = self._ranges[i]
            return r.prog, r.sub
        return None

    def _resolve(self, addr: int) -> Location:
        loc = self._resolve_bpf(addr) or self._resolve_kallsyms(addr) or Location(addr)
        if len(self._cache) >= self.CACHE_LIMIT:
            self._forget()
        self._cache[addr] = loc
        return loc

    def _resolve_bpf(self, addr: int) -> Location | None:
        i = bisect_right(self._starts, addr) - 1
        if i < 0 or addr >= self._ends[i]:
            return None
        r = self._ranges[i]
        sub = r.sub
        file = text = None
        line = col = None
        j = bisect_right(r.line_addrs, addr) - 1
        if j >= 0:
            li = r.lines[j]
            file, line, col, text = li.file, li.line, li.col, li.text
        return Location(
            addr=addr, func=sub.ksym, offset=addr - sub.addr, module="bpf", file=file,
            line=line, col=col, text=text, kind="bpf", prog_id=r.prog.id,
        )

    def _resolve_kallsyms(self, addr: int) -> Location | None:
        if self.kallsyms is None:
            return None
        sym = self.kallsyms.lookup(addr)
        if sym is None:
            return None
        if sym.module == "bpf":
            i = bisect_right(self._starts, sym.addr) - 1
            if i >= 0 and self._starts[i] == sym.addr:
                return None  # past the exact end of a prog we know: kallsyms only guesses sizes
            # a [bpf] symbol (trampoline, or a prog we have no info for): no lines to offer
            return Location(addr, sym.name, addr - sym.addr, "bpf", kind="bpf")
        kind = "kernel" if sym.module is None else "module"
        file = line = col = None
        if self._line_resolver is not None:
            pos = self._line_resolver(addr)
            if pos is not None:
                file, line, col = pos
        return Location(addr, sym.name, addr - sym.addr, sym.module, file, line, col, kind=kind)
