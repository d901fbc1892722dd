"""The one symbolizer: any address (BPF JIT code, vmlinux, module) -> :class:`Location`.

BPF addresses are resolved from prog info first, because it is exact (JIT ranges from
``jited_ksyms`` + ``jited_func_lens``, lines from ``jited_line_info`` + ``line_info``) where
kallsyms only knows where a ``[bpf]`` symbol starts. Everything else goes to the kallsyms index,
and kernel file:line to a pluggable resolver (drgn DWARF when available). Results are cached per
address: LBR and stack rendering ask for the same few thousand addresses again and again.

No privileged work happens here; callers hand in a built index and prog infos.
"""

from __future__ import annotations

import threading
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: a trace's start-up does not pay for these imports
    from bpflbr_shell.kernel.kallsyms import KallsymsIndex
    from bpflbr_shell.kernel.model import ProgInfo, SubProg
    from bpflbr_shell.kernel.view import KernelView

USER_SPACE_END = 0x0000_8000_0000_0000  # x86-64: canonical user addresses lie below

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

    def to_json(self) -> dict[str, object]:
        """The one JSON shape of a location (events' LBR rows and stacks, disassembly
        targets, ``show ksym ADDR``)."""
        return {"addr": self.addr, "func": self.func, "offset": self.offset, "file": self.file,
                "line": self.line, "col": self.col, "kind": self.kind, "module": self.module}

    def __str__(self) -> str:
        return self.format()


@dataclass(slots=True)
class _BpfRange:
    """One JITed subprogram, with its line starts as an array for bisect."""

    prog: ProgInfo
    sub: SubProg
    line_addrs: array  # array('Q') of LineInfo.addr, ascending, jited lines only
    lines: list  # the LineInfo records matching line_addrs


@dataclass(frozen=True, slots=True)
class _Table:
    """The registered JIT ranges, swapped in whole: a reader takes ``self._table`` once and
    sees one consistent version, however the shell adds and removes programs meanwhile."""

    starts: array  # array('Q'): ascending subprog start addresses
    ends: array  # matching end addresses (exclusive)
    ranges: tuple[_BpfRange, ...]

    def find(self, addr: int) -> _BpfRange | None:
        i = bisect_right(self.starts, addr) - 1
        return self.ranges[i] if i >= 0 and addr < self.ends[i] else None


_EMPTY = _Table(array("Q"), array("Q"), ())


class Symbolizer:
    """Turns addresses into :class:`Location`; see the module docstring for the order.

    Safe for readers in background threads (a trace's reader) while another thread adds or
    removes programs: writers take a lock and publish a new :class:`_Table` in one
    assignment; readers take no lock, and a Location resolved from a table that was replaced
    meanwhile is returned but not cached."""

    CACHE_LIMIT = 1 << 20
    """Entries kept before the cache is dropped wholesale (cheap, and code is finite)."""

    def __init__(self, kallsyms: KallsymsIndex | None, progs: Iterable[ProgInfo] = ()) -> None:
        self.kallsyms = kallsyms
        self._line_resolver: LineResolver | None = None
        self._table = _EMPTY
        self._write = threading.Lock()  # writers only
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
        with self._write:
            keep = [r for r in self._table.ranges if r.prog.id != prog.id]
            for sub in prog.subprogs:
                if not sub.addr or sub.size <= 0:
                    continue  # not JITed: nothing executes at an address
                jited = [li for li in sub.lines if li.addr]
                jited.sort(key=lambda li: li.addr)
                start, end = sub.addr, sub.addr + sub.size
                keep = [r for r in keep if r.sub.addr + r.sub.size <= start or r.sub.addr >= end]
                keep.append(_BpfRange(prog, sub, array("Q", [li.addr for li in jited]), jited))
            self._publish(keep)

    def remove_prog(self, prog_id: int) -> None:
        """Forget a program (unloaded); its addresses fall back to kallsyms."""
        with self._write:
            if any(r.prog.id == prog_id for r in self._table.ranges):
                self._publish([r for r in self._table.ranges if r.prog.id != prog_id])

    def _publish(self, ranges: list[_BpfRange]) -> None:
        ranges.sort(key=lambda r: r.sub.addr)
        self._table = _Table(array("Q", [r.sub.addr for r in ranges]),
                             array("Q", [r.sub.addr + r.sub.size for r in ranges]),
                             tuple(ranges))
        self._forget()

    @property
    def progs(self) -> list[ProgInfo]:
        """Registered programs, each once, in address order of their first subprogram."""
        seen: dict[int, ProgInfo] = {}
        for r in self._table.ranges:
            seen.setdefault(r.prog.id, r.prog)
        return list(seen.values())

    def _forget(self) -> None:
        """Drop every cached Location. Callers that keep values derived from them per address
        (rendered LBR endpoints) watch ``generation`` to know when to drop theirs."""
        self.generation += 1  # first: a resolve in flight sees it changed and does not cache
        self._cache = {}

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
        r = self._table.find(addr)
        return (r.prog, r.sub) if r is not None else None

    def _resolve(self, addr: int) -> Location:
        generation, cache, table = self.generation, self._cache, self._table
        loc = self._resolve_bpf(table, addr) or self._resolve_kallsyms(table, addr) or \
            Location(addr)
        if len(cache) >= self.CACHE_LIMIT:
            self._forget()
        elif generation == self.generation and table is self._table:
            cache[addr] = loc  # resolved from the table still in force
        return loc

    @staticmethod
    def _resolve_bpf(table: _Table, addr: int) -> Location | None:
        r = table.find(addr)
        if r is None:
            return None
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

    def _resolve_kallsyms(self, table: _Table, addr: int) -> Location | None:
        if self.kallsyms is None:
            return None
        sym = self.kallsyms.lookup(addr)
        if sym is None:
            return None
        if sym.module == "bpf":
            i = bisect_right(table.starts, sym.addr) - 1
            if i >= 0 and table.starts[i] == sym.addr:
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


def kernel_symbolizer(view: KernelView) -> Symbolizer:
    """The session's kernel symbolizer: made once per kernel view from its kallsyms and the
    programs it has read, then kept current as the view reads programs or finds them gone."""
    for w in view.watchers:
        if isinstance(w, Symbolizer):
            return w
    sym = Symbolizer(view.kallsyms, view.known_progs())
    view.watchers.append(sym)
    return sym
