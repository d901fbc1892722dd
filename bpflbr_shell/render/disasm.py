"""x86-64 disassembly of BPF JIT images, per subprogram, annotated with source and symbols.

Why it is built this way:

- capstone is the decoder; it is imported inside :func:`disassemble_prog` so that importing this
  module (the shell does at start-up) costs nothing and never fails where capstone is missing.
- capstone's ``disasm`` stops at the first byte sequence it cannot decode. A listing that
  silently ends early would hide exactly the bytes someone is investigating, so decoding resumes
  one byte later and the skipped bytes become ``(bad)`` pseudo-instructions; every subprogram's
  decoded length is checked to equal its JIT length.
- Annotations come from the two owners of those facts: source lines from the prog info
  (:class:`~bpflbr_shell.kernel.model.LineInfo`), addresses from the symbolizer. This module only
  decides *which* addresses are worth asking about (branch targets, RIP-relative operands,
  immediates that look like kernel addresses) and how to show the answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from bpflbr_shell.errors import FeatureError, KernelDataError, NotFoundError, PrivilegeError
from bpflbr_shell.kernel.model import LineInfo, ProgInfo, SubProg
from bpflbr_shell.render.text import RESET, safe, sgr, short_file

if TYPE_CHECKING:
    from bpflbr_shell.symbols.kernel import Location

KERNEL_ADDR_MIN = 0xFFFF_8000_0000_0000
"""Lowest canonical kernel-half address on x86-64: immediates below it are plain numbers."""

SYNTAXES = ("att", "intel")


class SymbolizerLike(Protocol):
    """What disassembly needs from :class:`bpflbr_shell.symbols.kernel.Symbolizer`."""

    def symbolize(self, addr: int) -> Location | None: ...


@dataclass(slots=True)
class DisasmInsn:
    """One decoded instruction (or one undecodable byte, ``mnemonic == "(bad)"``)."""

    addr: int
    offset: int  # from the start of the subprogram
    bytes: bytes
    mnemonic: str
    op_str: str
    target: int | None = None  # call/jmp/jcc with an immediate target
    target_loc: Location | None = None  # symbolized target; None inside this function
    line: LineInfo | None = None  # the source line whose code starts here (last record wins)
    lines: tuple[LineInfo, ...] = ()  # every line record that starts inside this instruction
    ref: int | None = None  # RIP-relative or immediate kernel address operand
    ref_loc: Location | None = None  # its symbol, when it has one

    @property
    def size(self) -> int:
        return len(self.bytes)

    @property
    def bad(self) -> bool:
        return self.mnemonic == "(bad)"


@dataclass(slots=True)
class DisasmFunc:
    """The listing of one JITed subprogram."""

    subprog: SubProg
    insns: list[DisasmInsn] = field(default_factory=list)
    bad_bytes: int = 0

    def local_offset(self, addr: int | None) -> int | None:
        """Offset of ``addr`` in this function, or None when it points elsewhere."""
        if addr is None or not self.subprog.addr <= addr < self.subprog.end:
            return None
        return addr - self.subprog.addr


# ---- decoding -------------------------------------------------------------------------------


def select_subprogs(prog: ProgInfo, func: str | int | None) -> list[SubProg]:
    """The subprograms ``func`` names: BTF name, ksym name or index (``None`` = all)."""
    return list(prog.subprogs) if func is None else [prog.subprog(func)]


def _check_jited(prog: ProgInfo) -> None:
    if not prog.jited:
        raise FeatureError(
            f"prog {prog.id} ({prog.name}) is not JITed",
            "JIT disabled: sysctl net.core.bpf_jit_enable=1",
        )
    if len(prog.jited_image) != prog.jited_len or not any(sp.addr for sp in prog.subprogs):
        # The kernel zeroes the image and symbol addresses for readers it will not trust.
        raise PrivilegeError(
            f"prog {prog.id}: the kernel withheld its JIT image",
            "run as root with kernel.kptr_restrict=0",
        )


def _decoder(syntax: str) -> Any:
    try:
        import capstone
    except ImportError as exc:  # pragma: no cover - a broken install, not a user mistake
        raise FeatureError("capstone is not installed", "pip install 'capstone>=5,<6'") from exc
    if syntax not in SYNTAXES:
        raise NotFoundError(f"unknown syntax {syntax!r} (available: {', '.join(SYNTAXES)})")
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    cs.detail = True
    cs.syntax = capstone.CS_OPT_SYNTAX_ATT if syntax == "att" else capstone.CS_OPT_SYNTAX_INTEL
    return cs


def decode_bytes(cs: Any, code: bytes, addr: int) -> list[tuple[Any | None, int, bytes]]:
    """Decode every byte of ``code``: ``(capstone insn or None, address, bytes)`` rows.

    ``None`` rows are single bytes capstone could not decode; decoding resumes right after them.
    """
    out: list[tuple[Any | None, int, bytes]] = []
    pos = 0
    while pos < len(code):
        for insn in cs.disasm(code[pos:], addr + pos):
            out.append((insn, insn.address, bytes(insn.bytes)))
            pos += insn.size
        if pos < len(code):  # capstone stopped at a byte it cannot decode
            out.append((None, addr + pos, code[pos : pos + 1]))
            pos += 1
    return out


def _branch_target(insn: Any) -> int | None:
    """Immediate target of call/jmp/jcc/loop, None for indirect branches and other insns."""
    from capstone import CS_GRP_CALL, CS_GRP_JUMP
    from capstone.x86 import X86_OP_IMM

    if not (insn.group(CS_GRP_CALL) or insn.group(CS_GRP_JUMP)):
        return None
    ops = insn.operands
    if len(ops) == 1 and ops[0].type == X86_OP_IMM:
        return ops[0].imm & 0xFFFF_FFFF_FFFF_FFFF
    return None


def _kernel_ref(insn: Any) -> int | None:
    """A kernel address the instruction names: RIP-relative memory or a 64-bit-looking imm."""
    from capstone.x86 import X86_OP_IMM, X86_OP_MEM, X86_REG_RIP

    for op in insn.operands:
        if op.type == X86_OP_MEM and op.mem.base == X86_REG_RIP:
            return (insn.address + insn.size + op.mem.disp) & 0xFFFF_FFFF_FFFF_FFFF
        if op.type == X86_OP_IMM:
            imm = op.imm & 0xFFFF_FFFF_FFFF_FFFF
            if imm >= KERNEL_ADDR_MIN:
                return imm
    return None


_ATT_DECIMAL_IMM = re.compile(r"\$(\d{19,20})\b")


def _fix_op_str(op_str: str) -> str:
    """capstone 5 prints AT&T ``movabs`` immediates with the top bit set in unsigned decimal
    (``$18446612686410698752``); kernel pointers are only recognisable in hex."""
    return _ATT_DECIMAL_IMM.sub(lambda m: f"${int(m.group(1)):#x}", op_str)


def _resolved(loc: Location | None) -> Location | None:
    return loc if loc is not None and getattr(loc, "func", None) else None


def disassemble_subprog(
    prog: ProgInfo, sp: SubProg, symbolizer: SymbolizerLike | None, cs: Any
) -> DisasmFunc:
    """Decode one subprogram and attach line records, branch targets and address operands."""
    code = prog.image_of(sp)
    if len(code) != sp.size:
        raise KernelDataError(
            f"prog {prog.id}: {sp.ksym} is {sp.size} bytes but the image holds {len(code)}"
        )
    fn = DisasmFunc(subprog=sp)
    for insn, addr, raw in decode_bytes(cs, code, sp.addr):
        if insn is None:
            fn.insns.append(DisasmInsn(addr, addr - sp.addr, raw, "(bad)", ""))
            fn.bad_bytes += len(raw)
            continue
        di = DisasmInsn(addr, addr - sp.addr, raw, insn.mnemonic, _fix_op_str(insn.op_str))
        di.target = _branch_target(insn)
        if di.target is not None:
            if fn.local_offset(di.target) is None and symbolizer is not None:
                di.target_loc = _resolved(symbolizer.symbolize(di.target))
        else:
            di.ref = _kernel_ref(insn)
            if di.ref is not None and symbolizer is not None:
                di.ref_loc = _resolved(symbolizer.symbolize(di.ref))
        fn.insns.append(di)
    decoded = sum(i.size for i in fn.insns)
    if decoded != sp.size:  # decode_bytes guarantees this; a failure is a bug, say so loudly
        raise AssertionError(f"{sp.ksym}: decoded {decoded} of {sp.size} bytes")
    _attach_lines(fn)
    return fn


def _attach_lines(fn: DisasmFunc) -> None:
    """Give each line record to the instruction whose bytes contain its address."""
    insns = fn.insns
    i = 0
    for li in sorted(fn.subprog.lines, key=lambda r: (r.addr, r.insn_off)):
        while i + 1 < len(insns) and insns[i + 1].addr <= li.addr:
            i += 1
        if not insns or not insns[i].addr <= li.addr < insns[i].addr + insns[i].size:
            continue  # outside this function: decode_prog_info already refuses that
        insns[i].lines += (li,)
        insns[i].line = li


def disassemble_prog(
    prog: ProgInfo,
    symbolizer: SymbolizerLike | None,
    syntax: str = "att",
    func: str | int | None = None,
) -> list[DisasmFunc]:
    """Disassemble every (or the selected) JITed subprogram of ``prog``.

    Raises :class:`FeatureError` when the program is not JITed, :class:`NotFoundError` for an
    unknown ``func`` or ``syntax``.
    """
    sps = select_subprogs(prog, func)
    _check_jited(prog)
    cs = _decoder(syntax)
    return [disassemble_subprog(prog, sp, symbolizer, cs) for sp in sps]


# ---- rendering ------------------------------------------------------------------------------

_STYLE = {
    "header": sgr("bold", "yellow"),  # function names
    "source": sgr("green"),  # source lines
    "offset": sgr("dim"),  # addresses and offsets
    "mnemonic": sgr("bold"),
    "comment": sgr("cyan"),  # symbol annotations
    "bad": sgr("bold", "red"),
}
_MNEMONIC_MIN = 6  # "call   ": the familiar objdump/gdb gap
_OPERAND_MAX = 44  # beyond this, comments stop aligning rather than drifting far right


def _where(file: str | None, line: int | None, col: int | None = None) -> str:
    if not file:
        return ""
    out = safe(short_file(file))
    if line:
        out += f":{line}"
        if col:
            out += f":{col}"
    return out


def format_location(loc: Location) -> str:
    """``func+0xoff [module] (file:line:col)`` with a shortened file name."""
    out = f"{safe(loc.func or hex(loc.addr))}+{loc.offset:#x}"
    module = getattr(loc, "module", None)
    if module and module not in ("bpf", "vmlinux"):
        out += f" [{safe(module)}]"
    where = _where(getattr(loc, "file", None), getattr(loc, "line", None),
                   getattr(loc, "col", None))
    return f"{out} ({where})" if where else out


def _source_comment(li: LineInfo) -> str:
    return f"; {safe(li.text, backslash=False)}  ({_where(li.file, li.line, li.col)})"


def _operand_text(fn: DisasmFunc, insn: DisasmInsn) -> str:
    local = fn.local_offset(insn.target)
    return f"{insn.op_str} <+{local}>" if local is not None else insn.op_str


def _comment(insn: DisasmInsn) -> str:
    if insn.bad:
        return f"; byte {insn.bytes.hex()} does not decode"
    if insn.target_loc is not None:
        return "; " + format_location(insn.target_loc)
    if insn.ref_loc is not None:
        return "; " + format_location(insn.ref_loc)
    return ""


def _header(sp: SubProg) -> tuple[str, str]:
    """(label, comment) of a function header: ksym name; prototype and first source line."""
    parts = []
    if sp.prototype:
        parts.append(safe(sp.prototype))
    first = next((li for li in sp.lines if li.line), None)
    if first is not None:
        parts.append(f"[{_where(first.file, first.line)}]")
    return f"{safe(sp.ksym)}:", ("; " + "  ".join(parts)) if parts else ""


def render_disasm_text(funcs: list[DisasmFunc], color: bool = False) -> str:
    """The annotated listing, one block per function.

    Column widths are computed over all the functions shown, so blocks line up with each other;
    the symbol comments start in one column (operands longer than ``_OPERAND_MAX`` push their
    own comment right instead of pushing every comment right).
    """

    def paint(kind: str, text: str) -> str:
        return f"{_STYLE[kind]}{text}{RESET}" if color and text else text

    every = [i for fn in funcs for i in fn.insns]
    w_hex = max((len(f"{i.offset:x}") for i in every), default=1)
    w_dec = max((len(f"<+{i.offset}>") for i in every), default=4)
    w_mn = max([_MNEMONIC_MIN] + [len(i.mnemonic) for i in every])
    rows = [[(i, _operand_text(fn, i), _comment(i)) for i in fn.insns] for fn in funcs]
    w_op = min(_OPERAND_MAX, max((len(op) for r in rows for _, op, c in r if c), default=0))
    comment_col = 2 + w_hex + 1 + 2 + w_dec + 2 + w_mn + 1 + w_op + 2

    blocks: list[str] = []
    for fn, fn_rows in zip(funcs, rows, strict=True):
        label, head_comment = _header(fn.subprog)
        out = [paint("header", label)]
        if head_comment:
            out[0] += " " * max(1, comment_col - len(label)) + paint("comment", head_comment)
        last_src: tuple[str, int, int, str] | None = None
        for insn, op, comment in fn_rows:
            for li in insn.lines:
                key = (li.file, li.line, li.col, li.text)
                if li.line == 0 or key == last_src:
                    continue  # line 0 = "no source" records (BCC emits them, empty text)
                last_src = key
                out.append(paint("source", _source_comment(li)))
            row = (
                "  "
                + paint("offset", f"{insn.offset:>{w_hex}x}:")
                + "  "
                + paint("offset", f"{f'<+{insn.offset}>':<{w_dec}}")
                + "  "
                + paint("bad" if insn.bad else "mnemonic", insn.mnemonic)
            )
            if op or comment:
                row += " " * (w_mn + 1 - len(insn.mnemonic)) + op
            if comment:
                row += " " * max(1, w_op + 2 - len(op)) + paint("comment", comment)
            out.append(row)
        blocks.append("\n".join(out))
    return "\n\n".join(blocks) + ("\n" if blocks else "")


def _loc_json(loc: Location | None) -> dict[str, Any] | None:
    return loc.to_json() if loc is not None else None


def _line_json(li: LineInfo) -> dict[str, Any]:
    return {"insn_off": li.insn_off, "file": li.file, "line": li.line, "col": li.col,
            "text": li.text}


def disasm_to_json(funcs: list[DisasmFunc]) -> list[dict[str, Any]]:
    """Plain data for ``--json`` and recordings: full file paths, addresses as integers."""
    out = []
    for fn in funcs:
        sp = fn.subprog
        out.append({
            "index": sp.index,
            "name": sp.name,
            "ksym": sp.ksym,
            "addr": sp.addr,
            "size": sp.size,
            "prototype": sp.prototype,
            "bad_bytes": fn.bad_bytes,
            "insns": [
                {
                    "addr": i.addr,
                    "offset": i.offset,
                    "bytes": i.bytes.hex(),
                    "mnemonic": i.mnemonic,
                    "op_str": i.op_str,
                    "target": i.target,
                    "target_offset": fn.local_offset(i.target),
                    "target_sym": _loc_json(i.target_loc),
                    "ref": i.ref,
                    "ref_sym": _loc_json(i.ref_loc),
                    "lines": [_line_json(li) for li in i.lines],
                }
                for i in fn.insns
            ],
        })
    return out
