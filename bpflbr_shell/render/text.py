"""Text and JSON views of kernel records: tables, program details, symbols.

Pure functions from records to strings/dicts, so the shell, recordings and tests share them.
JSON keys follow ``bpftool prog show --json`` where the same fact exists there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only
    from bpflbr_shell.kernel.model import ProgInfo, SubProg

#: The one colour table (SGR parameters by name): text, events, disassembly and the shell's
#: warning and error labels all paint with it.
SGR = {
    "bold": "1", "dim": "2", "underline": "4", "red": "31", "green": "32", "yellow": "33",
    "blue": "34", "magenta": "35", "cyan": "36", "gray": "90",
}


def sgr(*styles: str) -> str:
    """The escape sequence that turns ``styles`` on (``sgr("bold", "yellow")``)."""
    return f"\x1b[{';'.join(SGR[s] for s in styles)}m"


RESET = "\x1b[0m"
BOLD, DIM, CYAN, GREEN, YELLOW, RED = (sgr("bold"), sgr("dim"), sgr("cyan"), sgr("green"),
                                       sgr("yellow"), sgr("red"))


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r"}


def _escape_char(ch: str, backslash: bool) -> str:
    if ch == "\\":
        return "\\\\" if backslash else ch
    if ch.isprintable() or ch == "\t":
        return ch
    named = _NAMED_ESCAPES.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 \
        else f"\\U{code:08x}"


def safe(text: str, backslash: bool = True) -> str:
    """Text from the traced world (comm, which any process sets; symbol, file and BTF names;
    strings read from memory; user input echoed in errors) made harmless for a terminal.

    Every character that is not printable (``str.isprintable``: C0/C1 controls such as ESC
    and newline, format characters such as bidi overrides, line separators, lone surrogates
    from undecodable bytes) becomes a Python-style escape (``\\x1b``, ``\\n``, ``\\u202e``),
    except a tab, which moves the cursor and nothing else (BPF source lines hold tabs);
    a backslash is doubled so the result reads back unambiguously (``backslash=False``
    keeps it, for messages that already quote text). Printable text, UTF-8 names included,
    is returned as is, and cheaply: this runs on every rendered event. JSON output does not
    use it: the JSON encoder escapes by itself and must stay exact.
    """
    if (text.isprintable() or text.replace("\t", " ").isprintable()) \
            and (not backslash or "\\" not in text):
        return text
    return "".join([_escape_char(ch, backslash) for ch in text])


def safe_line(text: str) -> str:
    """:func:`safe` for a message that is already one of ours (quotes, backslashes kept)."""
    return safe(text, backslash=False)


def paint(text: str, style: str, color: bool) -> str:
    return f"{style}{text}{RESET}" if color and text else text


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], color: bool = False,
          right: Iterable[int] = ()) -> str:
    """Aligned columns; ``right`` lists column indexes to right-align (numbers). Cells are
    escaped (:func:`safe`): prog, map and symbol names come from whoever loaded them."""
    cells = [[safe(str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    right_cols = set(right)

    def fmt(row: Sequence[str]) -> str:
        parts = [c.rjust(widths[i]) if i in right_cols else c.ljust(widths[i])
                 for i, c in enumerate(row)]
        return "  ".join(parts).rstrip()

    lines = [paint(fmt(headers), BOLD, color)]
    lines += [fmt(row) for row in cells]
    return "\n".join(lines)


def short_file(path: str) -> str:
    """A file name as listings, LBR rows and stacks spell it: relative paths (kernel
    ``arch/x86/kernel/rethook.c``, ``examples/lbrdemo.bpf.c``) stay whole, absolute ones
    (BCC's ``/virtual/main.c``, a user binary's DWARF) shrink to their basename. Keeping only
    the last two components turned ``arch/x86/kernel/rethook.c`` into a ``kernel/rethook.c``
    that does not exist. The full path stays in the JSON."""
    return os.path.basename(path) if path.startswith("/") else path


def format_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def avg_ns(prog: ProgInfo) -> str:
    return str(prog.run_time_ns // prog.run_cnt) if prog.run_cnt else "-"


# programs ------------------------------------------------------------------------------------
def progs_table(progs: Sequence[ProgInfo], color: bool = False) -> str:
    if not progs:
        return "no BPF programs loaded"
    rows = [
        (p.id, p.type_name, p.func_name, p.tag, p.xlated_len, p.jited_len or "-",
         ",".join(map(str, p.map_ids)) or "-", p.btf_id or "-", len(p.subprogs),
         p.run_cnt, avg_ns(p), format_time(p.load_time_epoch))
        for p in progs
    ]
    headers = ("ID", "TYPE", "NAME", "TAG", "XLATED", "JITED", "MAPS", "BTF", "FUNCS",
               "RUN_CNT", "AVG_NS", "LOADED")
    return table(headers, rows, color, right=(0, 4, 5, 7, 8, 9, 10))


def subprog_to_json(sp: SubProg) -> dict[str, Any]:
    return {
        "index": sp.index, "name": sp.name, "ksym": sp.ksym, "addr": sp.addr, "size": sp.size,
        "insn_off": sp.insn_off, "btf_type_id": sp.btf_type_id, "prototype": sp.prototype,
        "lines": [
            {"addr": li.addr, "insn_off": li.insn_off, "file": li.file, "line": li.line,
             "col": li.col, "text": li.text}
            for li in sp.lines
        ],
    }


def prog_to_json(p: ProgInfo, detail: bool = False,
                 pids: Sequence[tuple[int, str]] | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": p.id, "type": p.type_name, "name": p.name, "func_name": p.func_name, "tag": p.tag,
        "gpl_compatible": p.gpl, "loaded_at": int(p.load_time_epoch), "uid": p.uid,
        "bytes_xlated": p.xlated_len, "jited": p.jited, "bytes_jited": p.jited_len,
        "map_ids": list(p.map_ids), "btf_id": p.btf_id, "run_time_ns": p.run_time_ns,
        "run_cnt": p.run_cnt, "recursion_misses": p.recursion_misses,
        "verified_insns": p.verified_insns,
    }
    if detail:
        d["subprogs"] = [subprog_to_json(sp) for sp in p.subprogs]
        if p.attach_btf_id:
            d["attach_btf_obj_id"], d["attach_btf_id"] = p.attach_btf_obj_id, p.attach_btf_id
        if pids is not None:
            d["pids"] = [{"pid": pid, "comm": comm} for pid, comm in pids]
    return d


def prog_detail(p: ProgInfo, color: bool = False, pids: Sequence[tuple[int, str]] = (),
                stats_enabled: bool | None = None) -> str:
    """Everything we know about one program, for ``show prog``."""
    out: list[str] = []
    title = f"prog {p.id}  {p.type_name}  {safe(p.func_name)}"
    if p.func_name != p.name:
        title += f"  (kernel name {safe(p.name)})"
    out.append(paint(title, BOLD, color))

    def field(key: str, value: object) -> None:
        out.append(f"  {key:<13}{value}")

    field("tag", p.tag)
    field("loaded", f"{format_time(p.load_time_epoch)}  by uid {p.uid}")
    field("size", f"xlated {p.xlated_len} B, jited {p.jited_len} B"
          + (f", verified {p.verified_insns} insns" if p.verified_insns else ""))
    field("maps", ", ".join(map(str, p.map_ids)) or "none")
    field("btf", p.btf_id or "none (no BTF: no function names or line info)")
    field("gpl", "yes" if p.gpl else "no")
    run = f"{p.run_cnt} runs, {p.run_time_ns} ns total, avg {avg_ns(p)} ns"
    if stats_enabled is False and not p.run_cnt:
        # the sysctl may be off while some process holds stats on through BPF_ENABLE_STATS
        run += "  (bpf_stats off: 'sysctl kernel.bpf_stats_enabled=1' to count)"
    if p.recursion_misses:
        run += f", {p.recursion_misses} recursion misses"
    field("run", run)
    if p.attach_btf_id:
        field("attach btf", f"obj {p.attach_btf_obj_id} type {p.attach_btf_id}")
    if pids:
        field("held by", ", ".join(f"{safe(comm)}({pid})" for pid, comm in pids))
    if not p.jited:
        field("jit", "not JITed (interpreter): no image, no JIT line info")
    field("functions", len(p.subprogs))
    for sp in p.subprogs:
        out.append("")
        head = f"  [{sp.index}] {safe(sp.ksym)}  {sp.addr:#x}  {sp.size} B"
        out.append(paint(head, CYAN, color))
        if sp.prototype:
            out.append(f"      {safe(sp.prototype)}")
        for li in sp.lines:
            where = f"{safe(short_file(li.file))}:{li.line}:{li.col}" if li.line else "(no line)"
            text = f"  {safe(li.text, backslash=False)}" if li.text else ""
            out.append(f"      +{li.addr - sp.addr:<#6x} insn {li.insn_off:<5} {where}{text}")
    return "\n".join(out)


def bpf_stats_enabled() -> bool | None:
    try:
        with open("/proc/sys/kernel/bpf_stats_enabled") as f:
            return f.read().strip() == "1"
    except OSError:
        return None
