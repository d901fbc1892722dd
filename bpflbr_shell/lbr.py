"""LBR trimming and grouping: the one place that decides which branch records are relevant.

The hardware snapshot also holds the tracer's own branches (the trampoline or uprobe path, the
snapshot helper, our BPF program). They are dropped by address range; what remains can further
be restricted to a range of interest (a traced BPF program's JIT image, user space for uprobes).
When nothing survives, the caller shows everything and says so, as retsnoop does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .events import Branch

USER_SPACE_END = 0x0000_8000_0000_0000  # x86-64: canonical user addresses lie below


@dataclass(frozen=True, slots=True)
class AddrRange:
    start: int
    end: int  # exclusive
    label: str = ""

    def __contains__(self, addr: int) -> bool:
        return self.start <= addr < self.end


USER_SPACE = AddrRange(0, USER_SPACE_END, "user space")


@dataclass(frozen=True, slots=True)
class NumberedBranch:
    index: int  # position in the snapshot, 0 = most recent (printed as [#NN])
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


def _inside(addr: int, ranges: Sequence[AddrRange]) -> bool:
    return any(addr in r for r in ranges)


def trim(branches: Sequence[Branch], tracer: Sequence[AddrRange] = (),
         keep: Sequence[AddrRange] = (), enabled: bool = True) -> TrimResult:
    """Drop the tracer's entries, then keep only those touching ``keep`` (if given).

    ``branches`` are most-recent-first, as ``bpf_get_branch_snapshot`` writes them.
    """
    numbered = [NumberedBranch(i, b) for i, b in enumerate(branches)]
    numbered.reverse()
    result = TrimResult(numbered, len(numbered))
    if not enabled or not numbered:
        return result
    ours = [nb for nb in numbered
            if not (_inside(nb.branch.src, tracer) or _inside(nb.branch.dst, tracer))]
    relevant = ours
    if keep:
        relevant = [nb for nb in ours
                    if _inside(nb.branch.src, keep) or _inside(nb.branch.dst, keep)]
    if not relevant:
        result.showing_all = True
        return result
    result.entries = relevant
    result.dropped_tracer = len(numbered) - len(ours)
    result.dropped_outside = len(ours) - len(relevant)
    return result


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A branch end, symbolized: ``func+0xoff`` and an optional ``file:line``."""

    func: str | None
    where: str  # "func+0xoff" or "0xADDR"
    source: str  # "file:line[:col]" or ""


@dataclass(frozen=True, slots=True)
class LbrRow:
    index: int
    first_in_group: bool
    src: Endpoint
    dst: Endpoint


def group(entries: Sequence[NumberedBranch],
          endpoint: Callable[[int], Endpoint]) -> list[list[LbrRow]]:
    """Blocks of rows; a new block starts where ``src`` leaves the function ``dst`` entered."""
    blocks: list[list[LbrRow]] = []
    prev_dst: Endpoint | None = None
    for nb in entries:
        src, dst = endpoint(nb.branch.src), endpoint(nb.branch.dst)
        new = prev_dst is None or src.func is None or src.func != prev_dst.func
        row = LbrRow(nb.index, new, src, dst)
        if new:
            blocks.append([row])
        else:
            blocks[-1].append(row)
        prev_dst = dst
    return blocks


def render_blocks(blocks: Sequence[Sequence[LbrRow]], width: int = 2,
                  paint: Callable[[str, str], str] | None = None) -> list[str]:
    """Lines in the seed's format, columns aligned per block, oldest first."""
    lines: list[str] = []
    tag_width = len(f"[#{0:0{width}d}] ")
    for block in blocks:
        w_src = max(len(r.src.where) for r in block)
        w_src_file = max(len(_paren(r.src.source)) for r in block)
        w_dst = max(len(r.dst.where) for r in block)
        any_dst_file = any(r.dst.source for r in block)
        for r in block:
            tag = f"[#{r.index:0{width}d}] " if r.first_in_group else " " * tag_width
            src, src_file = r.src.where.ljust(w_src), _paren(r.src.source).ljust(w_src_file)
            dst, dst_file = r.dst.where, _paren(r.dst.source)
            if any_dst_file:
                dst = dst.ljust(w_dst)
            if paint:
                src, dst = paint(src, "func"), paint(dst, "func")
                src_file, dst_file = paint(src_file, "file"), paint(dst_file, "file")
            left = f"{src} {src_file}" if w_src_file else src
            lines.append(f"{tag}{left} -> {dst} {dst_file}".rstrip())
    return lines


def _paren(source: str) -> str:
    return f"({source})" if source else ""
