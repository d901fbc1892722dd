"""LBR trimming and grouping: the one place that decides which branch records are relevant.

The hardware snapshot also holds the tracer's own branches (the trampoline or uprobe path, the
snapshot helper, our BPF program). They are dropped by address range; what remains can further
be restricted to a range of interest (a traced BPF program's JIT image, user space for uprobes).
When nothing survives, the caller shows everything and says so, as retsnoop does.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import NamedTuple

from bpflbr_shell.symbols.kernel import USER_SPACE_END
from bpflbr_shell.trace.events import Branch


@dataclass(frozen=True, slots=True)
class AddrRange:
    start: int
    end: int  # exclusive
    label: str = ""

    def __contains__(self, addr: int) -> bool:
        return self.start <= addr < self.end


USER_SPACE = AddrRange(0, USER_SPACE_END, "user space")
_new_tuple = tuple.__new__


class NumberedBranch(NamedTuple):  # a tuple, not a frozen dataclass: 32 per event
    # position in the snapshot, 0 = most recent (printed as [#NN]); the name shadows
    # tuple.index on purpose (mypy objects to that)
    index: int  # type: ignore[assignment]
    branch: Branch


@dataclass(slots=True)
class TrimResult:
    entries: list[NumberedBranch]  # oldest first
    total: int
    dropped_tracer: int = 0
    dropped_outside: int = 0
    showing_all: bool = False

    def notice(self) -> str | None:
        """One line saying what trimming did, or None when it did nothing."""
        if self.showing_all and self.total:
            return f"no relevant LBR entries, showing all {self.total}"
        parts = []
        if self.dropped_tracer:
            parts.append(f"{self.dropped_tracer} of the tracer's own")
        if self.dropped_outside:
            parts.append(f"{self.dropped_outside} outside the traced range")
        return f"dropped {' and '.join(parts)} ('set lbr-trim off' shows all)" if parts else None


class _Memo(dict):
    """address -> inside?; a miss bisects the merged ranges. Hits are one C-level dict lookup
    (``__missing__`` runs only for addresses not seen yet)."""

    LIMIT = 1 << 16

    def __init__(self, starts: array, ends: array) -> None:
        super().__init__()
        self.starts, self.ends = starts, ends

    def __missing__(self, addr: int) -> bool:
        i = bisect_right(self.starts, addr) - 1
        hit = i >= 0 and addr < self.ends[i]
        if len(self) >= self.LIMIT:
            self.clear()
        self[addr] = hit
        return hit


class RangeSet:
    """Membership in a set of address ranges: merged, bisected, and remembered per address
    (a trace sees the same few hundred code addresses in event after event)."""

    __slots__ = ("ranges", "memo")

    def __init__(self, ranges: Iterable[AddrRange]) -> None:
        self.ranges = tuple(ranges)
        merged: list[list[int]] = []
        for r in sorted(self.ranges, key=lambda r: r.start):
            if r.end <= r.start:
                continue
            if merged and r.start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], r.end)
            else:
                merged.append([r.start, r.end])
        self.memo = _Memo(array("Q", [m[0] for m in merged]), array("Q", [m[1] for m in merged]))

    def __contains__(self, addr: int) -> bool:
        return self.memo[addr]

    def __bool__(self) -> bool:
        return bool(self.memo.starts)


_RANGE_SETS: dict[int, RangeSet] = {}


def range_set(ranges: Sequence[AddrRange] | RangeSet) -> RangeSet:
    """A :class:`RangeSet` for ``ranges``; built once per tuple (traces keep theirs as tuples,
    so every event of a trace reuses one set and its memo). Lists are built afresh: they may
    change under us."""
    if isinstance(ranges, RangeSet):
        return ranges
    if not isinstance(ranges, tuple):
        return RangeSet(ranges)
    rs = _RANGE_SETS.get(id(ranges))
    if rs is None or rs.ranges is not ranges:
        if len(_RANGE_SETS) >= 256:
            _RANGE_SETS.clear()
        rs = _RANGE_SETS[id(ranges)] = RangeSet(ranges)
        rs.ranges = ranges  # identity check above; keeps the key's tuple alive
    return rs


def trim(branches: Sequence[Branch], tracer: Sequence[AddrRange] = (),
         keep: Sequence[AddrRange] = (), enabled: bool = True) -> TrimResult:
    """Drop the tracer's entries, then keep only those touching ``keep`` (if given).

    ``branches`` are most-recent-first, as ``bpf_get_branch_snapshot`` writes them.
    """
    # NumberedBranch(i, b) for each, all in C (no Python-level __new__)
    numbered = list(map(_new_tuple, repeat(NumberedBranch), enumerate(branches)))
    numbered.reverse()
    result = TrimResult(numbered, len(numbered))
    if not enabled or not numbered:
        return result
    ours = numbered
    if tracer:  # nb[1] is the Branch, [0]/[1] its src/dst: tuples all the way, for speed
        t = range_set(tracer).memo
        ours = [nb for nb in numbered if not (t[nb[1][0]] or t[nb[1][1]])]
    relevant = ours
    if keep:
        k = range_set(keep).memo
        relevant = [nb for nb in ours if k[nb[1][0]] or k[nb[1][1]]]
    if not relevant:
        result.showing_all = True
        return result
    result.entries = relevant
    result.dropped_tracer = len(numbered) - len(ours)
    result.dropped_outside = len(ours) - len(relevant)
    return result


class Endpoint(NamedTuple):
    """A branch end, symbolized: ``func+0xoff`` and an optional ``file:line``. A tuple (built
    once per address, read twice per row of every event); make one with :meth:`of`."""

    func: str | None
    where: str  # "func+0xoff" or "0xADDR"
    source: str  # "file:line[:col]" or ""
    paren: str = ""  # "(source)" or ""

    @classmethod
    def of(cls, func: str | None, where: str, source: str) -> Endpoint:
        return cls(func, where, source, _paren(source))


class LbrRow(NamedTuple):  # a tuple, not a frozen dataclass: one per row of every event
    index: int  # type: ignore[assignment]  # shadows tuple.index, as in NumberedBranch
    first_in_group: bool
    src: Endpoint
    dst: Endpoint


def group(entries: Sequence[NumberedBranch],
          endpoint: Callable[[int], Endpoint]) -> list[list[LbrRow]]:
    """Blocks of rows; a new block starts where ``src`` leaves the function ``dst`` entered."""
    blocks: list[list[LbrRow]] = []
    block: list[LbrRow] = []
    prev_func: str | None = None
    mk, row_t = _new_tuple, LbrRow  # LbrRow(...) without the Python-level __new__
    seen: dict[int, Endpoint] = {}  # an event repeats addresses (return thunks, loop heads)
    get = seen.get
    for index, (a, b, _flags) in entries:
        src = get(a)
        if src is None:
            src = seen[a] = endpoint(a)
        dst = get(b)
        if dst is None:
            dst = seen[b] = endpoint(b)
        func = src[0]
        if func is None or func != prev_func or not block:
            block = [mk(row_t, (index, True, src, dst))]
            blocks.append(block)
        else:
            block.append(mk(row_t, (index, False, src, dst)))
        prev_func = dst[0]
    return blocks


def render_blocks(blocks: Sequence[Sequence[LbrRow]], width: int = 2,
                  paint: Callable[[str, str], str] | None = None, indent: str = "") -> list[str]:
    """Lines in the seed's format, columns aligned per block, oldest first; each line starts
    with ``indent``."""
    lines: list[str] = []
    append = lines.append
    blank_tag = indent + " " * len(f"[#{0:0{width}d}] ")
    for block in blocks:
        # rows and endpoints are tuples: row[2] is src, row[3] dst; [1] where, [3] paren
        w_src = max([len(r[2][1]) for r in block])
        w_src_file = max([len(r[2][3]) for r in block])
        w_dst = max([len(r[3][1]) for r in block])
        for index, first, (_, src, _, src_file), (_, dst, _, dst_file) in block:
            tag = f"{indent}[#{index:0{width}d}] " if first else blank_tag
            src = src.ljust(w_src)
            if dst_file:  # pad only before a file column: no trailing blanks inside colour
                dst = dst.ljust(w_dst)
            if w_src_file:
                src_file = src_file.ljust(w_src_file)
            if paint:
                src, dst = paint(src, "func"), paint(dst, "func")
                src_file, dst_file = paint(src_file, "file"), paint(dst_file, "file")
            if w_src_file:
                append(f"{tag}{src} {src_file} -> {dst} {dst_file}".rstrip())
            else:
                append(f"{tag}{src} -> {dst} {dst_file}".rstrip())
    return lines


def _paren(source: str) -> str:
    return f"({source})" if source else ""
