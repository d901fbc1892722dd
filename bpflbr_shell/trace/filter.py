"""The filter language: ``pid == 42 && comm == 'bash*'``, ``retval < 0 || duration > 2ms``,
``errors``, ``lbr has 'tcp_*'``. One grammar for ``filter EXPR`` and ``trace ... --if EXPR``.

Text is parsed into our own AST (:class:`Node` subclasses, frozen dataclasses); :func:`unparse`
prints an AST so that parsing the print gives the same AST; :func:`bind` checks names against
what a trace's events carry and returns a :class:`Filter` whose ``accepts(event)`` evaluates
the AST with closures built from it (nothing the user typed is ever executed or reaches
generated code as text). Errors point at the column.

Grammar, lowest precedence first (C's, except that ``&``, ``|`` and ``^`` bind tighter than
comparisons: ``flags & 0x800 == 0x800`` means what it says)::

    expr    := or
    or      := and ('||' and)*
    and     := cmp ('&&' cmp)*
    cmp     := bits (('=='|'!='|'<'|'<='|'>'|'>=') bits)?
    bits    := shift (('&'|'|'|'^') shift)*
    shift   := sum (('<<'|'>>') sum)*
    sum     := unary (('+'|'-') unary)*
    unary   := ('!'|'-'|'~') unary | primary      (as in C: !pid == 0 is (!pid) == 0)
    primary := INT | DURATION | STRING | NAME (('->' | '.') NAME)* | '(' expr ')'
             | 'lbr' ['!'] 'has' (STRING | NAME)

Struct members (``skb->len``, ``file->f_path.dentry``) are typed by the prototype's BTF (DWARF
for user code) and read only in the kernel, where the probe runs: a term with a member that
the kernel cannot evaluate whole is refused, naming it. So are string comparisons on a
kernel function's ``char *`` arguments (the events carry no copy of them).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from dataclasses import field as dc_field
from typing import Any

from bpflbr_shell.errors import UsageError

MAX_FILTER = 1024  # characters: an expression longer than any real one is refused
MAX_DEPTH = 64  # nesting: deep enough for anyone, shallow enough for the stack
ERRNO_MAX = 4095

FIELDS = ("pid", "tid", "comm", "cpu", "retval", "duration")
DURATION_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}


class FilterError(UsageError):
    """A parse or type error: ``column`` in ``text`` is where it is."""

    def __init__(self, problem: str, text: str, column: int, fix: str | None = None) -> None:
        super().__init__(f"filter: {problem} (column {column + 1})", fix)
        self.text, self.column = text, column
        self.caret = (text, column)  # the runner prints the text and a caret under it


# the AST -----------------------------------------------------------------------------------------
class Node:
    """An expression node; subclasses are frozen dataclasses (comparable, hashable)."""


@dataclass(frozen=True, slots=True)
class Num(Node):
    value: int


@dataclass(frozen=True, slots=True)
class Dur(Node):
    ns: int
    unit: str  # as written: 10us prints back as 10us


@dataclass(frozen=True, slots=True)
class Str(Node):
    value: str


@dataclass(frozen=True, slots=True)
class Name(Node):
    name: str
    column: int = field(default=-1, compare=False)  # where it was written, for errors


@dataclass(frozen=True, slots=True)
class Member(Node):
    base: Node
    field: str
    arrow: bool = True  # base->field; False: base.field (a struct member by value)
    column: int = dc_field(default=-1, compare=False)  # where the member's name was written


@dataclass(frozen=True, slots=True)
class Unary(Node):
    op: str  # '!', '-', '~'
    operand: Node


@dataclass(frozen=True, slots=True)
class Binary(Node):
    op: str
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class LbrHas(Node):
    glob: str
    negate: bool = False


# lexing and parsing ------------------------------------------------------------------------------
_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<num>0[xX][0-9a-fA-F]+|0[bB][01]+|0[oO][0-7]+|\d+)(?P<unit>ns|us|ms|s)?(?![\w])
  | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>->|==|!=|<=|>=|<<|>>|&&|\|\||[-+~!<>&|^().])
""", re.VERBOSE)
_CMP = ("==", "!=", "<", "<=", ">", ">=")
_BITS = ("&", "|", "^")


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # num, dur, str, name, op, end
    text: str
    pos: int
    value: Any = None


def _tokens(text: str) -> list[_Tok]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise FilterError(f"unexpected character {text[pos]!r}", text, pos,
                              "see 'help filter' for the syntax")
        kind = m.lastgroup
        if kind == "unit":  # the unit group only ever follows num
            kind = "num"
        if kind == "num":
            raw = m.group("num")
            value = int(raw, 0) if not (raw.startswith("0") and raw[1:].isdigit()) \
                else int(raw, 10)
            unit = m.group("unit")
            if unit:
                out.append(_Tok("dur", m.group(0), pos, (value * DURATION_UNITS[unit], unit)))
            else:
                out.append(_Tok("num", raw, pos, value))
        elif kind == "str":
            body = m.group("str")[1:-1]
            out.append(_Tok("str", m.group("str"), pos,
                            re.sub(r"\\(.)", r"\1", body)))
        elif kind == "name":
            out.append(_Tok("name", m.group("name"), pos))
        elif kind == "op":
            out.append(_Tok("op", m.group("op"), pos))
        pos = m.end()
    out.append(_Tok("end", "", len(text)))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def error(self, what: str, tok: _Tok | None = None) -> FilterError:
        tok = tok or self.tok
        got = "the end" if tok.kind == "end" else repr(tok.text)
        return FilterError(f"expected {what}, got {got}", self.text, tok.pos,
                           "see 'help filter' for the syntax")

    def parse(self) -> Node:
        node = self.expr()
        if self.tok.kind != "end":
            raise self.error("an operator (&&, ||, ==, ...) or the end")
        return node

    def expr(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FilterError(f"nested more than {MAX_DEPTH} deep", self.text, self.tok.pos)
        try:
            return self.binary(0)
        finally:
            self.depth -= 1

    _LEVELS: tuple[tuple[str, ...], ...] = (("||",), ("&&",), _CMP, _BITS, ("<<", ">>"),
                                            ("+", "-"))

    def binary(self, level: int) -> Node:
        if level == 2:  # comparisons: one per level, not chained
            left = self.binary(3)
            if self.tok.kind == "op" and self.tok.text in _CMP:
                op = self.take().text
                return Binary(op, left, self.binary(3))
            return left
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.tok.kind == "op" and self.tok.text in self._LEVELS[level]:
            op = self.take().text
            left = Binary(op, left, self.binary(level + 1))
        return left

    def unary(self) -> Node:
        t = self.tok
        if t.kind == "op" and t.text in ("!", "-", "~"):
            self.take()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise FilterError(f"nested more than {MAX_DEPTH} deep", self.text, t.pos)
            try:
                return Unary(t.text, self.unary())
            finally:
                self.depth -= 1
        return self.primary()

    def primary(self) -> Node:
        t = self.take()
        if t.kind == "num":
            return Num(t.value)
        if t.kind == "dur":
            return Dur(*t.value)
        if t.kind == "str":
            return Str(t.value)
        if t.kind == "op" and t.text == "(":
            inner = self.expr()
            if self.tok.kind != "op" or self.tok.text != ")":
                raise self.error("')'")
            self.take()
            return inner
        if t.kind == "name":
            if t.text == "lbr" and (self.tok.text in ("has", "!")):
                negate = self.tok.text == "!"
                if negate:
                    self.take()
                if self.tok.kind != "name" or self.tok.text != "has":
                    raise self.error("'has' after 'lbr !'")
                self.take()
                g = self.take()
                if g.kind not in ("str", "name"):
                    raise self.error("a function glob after 'lbr has'", g)
                return LbrHas(g.value if g.kind == "str" else g.text, negate)
            node: Node = Name(t.text, t.pos)
            while self.tok.kind == "op" and self.tok.text in ("->", "."):
                arrow = self.take().text == "->"
                f = self.take()
                if f.kind != "name":
                    raise self.error(f"a member name after '{'->' if arrow else '.'}'", f)
                node = Member(node, f.text, arrow, f.pos)
            return node
        raise self.error("a value (a number, a name, a string or '(')", t)


def parse(text: str) -> Node:
    """The AST of ``text``; :class:`FilterError` (a UsageError) naming the column."""
    if len(text) > MAX_FILTER:
        raise UsageError(f"filter too long ({len(text)} characters; at most {MAX_FILTER})",
                         "shorten it")
    if not text.strip():
        raise FilterError("an empty filter", text, 0, "e.g. filter pid == 42")
    return _Parser(text).parse()


def _quote(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def unparse(node: Node) -> str:
    """Canonical text of ``node``, fully parenthesized: ``parse(unparse(n)) == n``."""
    if isinstance(node, Num):
        return str(node.value) if node.value >= 0 else f"({node.value})"
    if isinstance(node, Dur):
        return f"{node.ns // DURATION_UNITS[node.unit]}{node.unit}"
    if isinstance(node, Str):
        return _quote(node.value)
    if isinstance(node, Name):
        return node.name
    if isinstance(node, Member):
        return f"{unparse(node.base)}{'->' if node.arrow else '.'}{node.field}"
    if isinstance(node, Unary):
        return f"{node.op}({unparse(node.operand)})"
    if isinstance(node, Binary):
        return f"({unparse(node.left)} {node.op} {unparse(node.right)})"
    if isinstance(node, LbrHas):
        return f"(lbr {'! ' if node.negate else ''}has {_quote(node.glob)})"
    raise TypeError(type(node).__name__)


# binding: names checked, the AST turned into closures ---------------------------------------------
@dataclass
class Scope:
    """What the traced events carry: parameter names (from BTF/DWARF prototypes, for every
    traced function alike; None when unknown; asked only when a filter names one), whether
    there is a return value, and the symbolizer ``lbr has`` needs."""

    prototype: Callable[[], Any] = lambda: None  # a kernel.values.Signature, or None
    has_retval: bool = True
    symbolize: Callable[[Any, int], Any] | None = None
    # each event's prototype (BTF/DWARF): values compare as the C code sees them (a failed
    # open is -1, not 4294967295); None: raw registers, the return value as signed 64-bit
    event_signature: Callable[[Any], Any] | None = None
    # the events carry copies of their char * arguments (uprobes do): string compares on
    # them can run in user space too; otherwise only in the kernel
    strings: bool = False

    def params_of(self) -> list[str] | None:
        sig = self.prototype()
        return [n for n, _ in sig.params] if sig is not None else None

    def pointer_return(self) -> bool:
        sig = self.prototype()
        return bool(sig is not None and sig.ret is not None and sig.ret.pointer)


@dataclass
class Filter:
    """A bound filter: its text, AST, and the closure that accepts or rejects an event."""

    text: str
    ast: Node
    accepts: Callable[[Any], bool]

    def __str__(self) -> str:
        return unparse(self.ast)


Value = Callable[[Any], Any]


def bind(text: str, scope: Scope) -> Filter:
    """Parse and check ``text`` against ``scope``; FilterError names the term that does not
    fit (an unknown name, with the closest known one; a member, which needs kernel BTF)."""
    ast = parse(text)
    test = _compile(ast, scope, text)
    return Filter(text, ast, lambda event: bool(test(event)))


def has_members(node: Node) -> bool:
    """Whether ``node`` reads a struct member (only a probe can: see split_for_kernel)."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, Member):
            return True
        if isinstance(n, Unary):
            stack.append(n.operand)
        elif isinstance(n, Binary):
            stack += [n.left, n.right]
    return False


def _names(params: Sequence[str] | None) -> list[str]:
    return [*FIELDS, "errors", *(f"arg{i}" for i in range(6)), *(params or ())]


def _compile(node: Node, scope: Scope, text: str) -> Value:  # noqa: C901 - one case per node
    if isinstance(node, Num):
        v = node.value
        return lambda e: v
    if isinstance(node, Dur):
        ns = node.ns
        return lambda e: ns
    if isinstance(node, Str):
        s = node.value
        return lambda e: s
    if isinstance(node, LbrHas):
        return _lbr_has(node, scope)
    if isinstance(node, Name):
        return _name(node, scope, text)
    if isinstance(node, Member):
        raise FilterError(f"'{unparse(node)}': struct members are read in the kernel, by the "
                          "probe, and this filter is evaluated in user space", text,
                          max(node.column, 0),
                          "give it to a new trace (trace ... --if, or filter before tracing)")
    if isinstance(node, Unary):
        inner = _compile(node.operand, scope, text)
        if node.op == "!":
            return lambda e: not inner(e)
        if node.op == "-":
            return lambda e: -_int(inner(e))
        return lambda e: ~_int(inner(e))
    if isinstance(node, Binary):
        return _binary(node, scope, text)
    raise TypeError(type(node).__name__)


def _int(v: Any) -> int:
    if v is None:
        return 0
    if isinstance(v, str):
        raise TypeError("a string where a number is needed")
    return int(v)


def _name(node: Name, scope: Scope, text: str) -> Value:
    name = node.name
    if name in ("pid", "tid", "cpu"):
        return lambda e: getattr(e, name)
    if name == "comm":
        return lambda e: e.comm
    if name == "retval":
        if not scope.has_retval:
            raise FilterError("'retval': these events are entries, with no return value",
                              text, node.column, "trace the returns (uretprobe, --exit)")
        sig_of = scope.event_signature

        def retval(e: Any) -> int | None:
            if e.retval is None:
                return None
            sig = sig_of(e) if sig_of is not None else None
            return sig.retval(e.retval) if sig is not None else e.retval_signed

        return retval
    if name == "duration":
        if not scope.has_retval:
            raise FilterError("'duration': entry events have no duration", text, node.column,
                              "trace the returns (uretprobe, --exit, --both)")
        return lambda e: e.duration_ns
    if name == "errors":
        if not scope.has_retval:
            raise FilterError("'errors': entry events have no return value", text, node.column,
                              "trace the returns (uretprobe, --exit)")
        pointer = scope.pointer_return()  # `errors`: NULL or an ERR_PTR from a pointer
        value = _name(Name("retval"), scope, text)

        def errors(e: Any) -> bool:
            r = value(e)
            if r is None:
                return False
            if pointer:
                r = r - (1 << 64) if r >= 1 << 63 else r
            return -ERRNO_MAX <= r <= -1 or (pointer and r == 0)

        return errors
    m = re.fullmatch(r"arg([0-5])", name)
    if m:
        return _arg(int(m.group(1)), scope.event_signature)
    params = scope.params_of()
    if params is not None and name in params:
        i = list(params).index(name)
        if i < 6:
            return _arg(i, scope.event_signature)
    known = _names(params)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(known[:14])}"
    if params is None and not close:
        hint = "the traced function has no prototype here: use arg0..arg5"
    raise FilterError(f"unknown name '{name}'", text, node.column, hint)


def _arg(i: int, sig_of: Callable[[Any], Any] | None) -> Value:
    """Argument ``i`` of an event: the C string the probe copied, or the value as its
    prototype types it (raw register without one)."""
    def value(e: Any) -> Any:
        for k, s in getattr(e, "strings", ()) or ():
            if k == i:
                return s.data.decode("utf-8", "replace")
        args = e.args or []
        if i >= len(args):
            return None
        sig = sig_of(e) if sig_of is not None else None
        if sig is not None and i < len(sig.params) and sig.params[i][1] is not None:
            return sig.params[i][1].present(args[i])
        return args[i]

    return value


def _lbr_has(node: LbrHas, scope: Scope) -> Value:
    pattern = re.compile(fnmatch.translate(node.glob))
    symbolize = scope.symbolize
    negate = node.negate

    def has(e: Any) -> bool:
        found = False
        if symbolize is not None:
            for b in e.lbr or ():
                for addr in (b.src, b.dst):
                    func = symbolize(e, addr).func
                    if func and pattern.match(func):
                        found = True
                        break
                if found:
                    break
        return found != negate

    return has


_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": lambda a, b: _int(a) + _int(b), "-": lambda a, b: _int(a) - _int(b),
    "<<": lambda a, b: _int(a) << min(_int(b), 64), ">>": lambda a, b: _int(a) >> _int(b),
    "&": lambda a, b: _int(a) & _int(b), "|": lambda a, b: _int(a) | _int(b),
    "^": lambda a, b: _int(a) ^ _int(b),
}


def _binary(node: Binary, scope: Scope, text: str) -> Value:
    left, right = _compile(node.left, scope, text), _compile(node.right, scope, text)
    op = node.op
    if op == "&&":
        return lambda e: bool(left(e)) and bool(right(e))
    if op == "||":
        return lambda e: bool(left(e)) or bool(right(e))
    if op in _CMP:
        strings = isinstance(node.left, Str) or isinstance(node.right, Str)
        if strings:
            if op not in ("==", "!="):
                raise FilterError(f"'{op}' between strings: only == and != (globs)", text, 0)
            return _string_compare(left, right, op == "!=", isinstance(node.right, Str))
        cmp = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
               "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
               ">=": lambda a, b: a >= b}[op]

        def compare(e: Any) -> bool:
            a, b = left(e), right(e)
            if a is None or b is None or isinstance(a, str) or isinstance(b, str):
                return False  # a value this event does not carry: the test fails
            return bool(cmp(a, b))

        return compare
    fn = _OPS[op]

    def arith(e: Any) -> Any:
        a, b = left(e), right(e)
        return None if a is None or b is None else fn(a, b)

    return arith


def _string_compare(left: Value, right: Value, negate: bool, glob_right: bool) -> Value:
    """``comm == 'ba*'``: the string literal is a glob over the other side's text."""
    cache: dict[str, re.Pattern[str]] = {}

    def test(e: Any) -> bool:
        a, b = left(e), right(e)
        value, glob = (a, b) if glob_right else (b, a)
        if not isinstance(value, str) or not isinstance(glob, str):
            return negate
        pat = cache.get(glob)
        if pat is None:
            pat = cache[glob] = re.compile(fnmatch.translate(glob))
        return bool(pat.match(value)) != negate

    return test


# the part the kernel evaluates ------------------------------------------------------------------
class _NotKernel(Exception):
    """This term is evaluated in user space."""


_S64_MAX = (1 << 63) - 1
_U64_MAX = (1 << 64) - 1
MAX_KERNEL_STR = 64  # bytes of a string literal the kernel compares (an exact one or a prefix)
COMM_LEN = 16  # TASK_COMM_LEN: 15 bytes and the NUL


@dataclass(frozen=True)
class _C:
    """Generated C for one node: its text, whether its value is unsigned 64-bit (u64: sizes,
    pointers, raw registers) or fits a signed one (s64), what must hold for it to be known
    (``ex``: an exit, so a return value; ``dk``: a duration), and its value when a literal."""

    code: str
    unsigned: bool = False
    needs: frozenset[str] = frozenset()
    literal: int | None = None


def _known(c: _C) -> str:
    """``c`` in a boolean context: false when a value it needs is unknown (as in user space,
    where a test on a value the event does not carry fails)."""
    if not c.needs:
        return c.code
    return "(" + " && ".join([*sorted(c.needs), f"({c.code})"]) + ")"


def _typed(var: str, vt: Any) -> _C:
    """``var`` (a 64-bit register or read) as the C code sees it: ints up to 4 bytes and
    signed 8-byte ones as s64, unsigned 8-byte ones and pointers as u64."""
    if vt is None:
        return _C(f"((u64){var})", unsigned=True)  # raw, as user space shows it
    if getattr(vt, "pointer", False):
        return _C(f"((u64){var})", unsigned=True)
    if not getattr(vt, "integer", False):
        raise _NotKernel
    if vt.size == 8:
        return _C(f"((s64){var})") if vt.signed else _C(f"((u64){var})", unsigned=True)
    return _C(f"((s64)({'s' if vt.signed else 'u'}{vt.size * 8}){var})")


def _num(value: int) -> _C:
    if value > _U64_MAX:
        raise _NotKernel
    if value > _S64_MAX:
        return _C(f"{value}ULL", unsigned=True, literal=value)
    return _C(f"{value}LL", literal=value)


@dataclass
class _Place:
    """Where a member lives: read through the pointer value ``ptr`` (C) at ``offset`` bytes,
    what it is (``member``), and how the user wrote it (for messages)."""

    ptr: _C
    offset: int
    member: Any  # kernel.values.Member
    written: str


class _Kernel:
    """The C of a filter's kernel part, built from the AST alone: integers, our own names
    (see bpf/probe_common.h: rejected()) and offsets read from BTF or DWARF."""

    def __init__(self, scope: Scope, text: str) -> None:
        self.scope, self.text = scope, text
        self.comm = False

    def bool(self, node: Node) -> str:
        return _known(self.value(node))

    def value(self, node: Node) -> _C:  # noqa: C901 - one case per node
        if isinstance(node, Num):
            return _num(node.value)
        if isinstance(node, Dur):
            return _num(node.ns)
        if isinstance(node, Name):
            return self.name(node)
        if isinstance(node, Member):
            return self.read(self.place(node))
        if isinstance(node, Unary):
            if node.op == "!":
                return _C(f"!{self.bool(node.operand)}")
            inner = self.value(node.operand)
            if node.op != "-" or inner.unsigned:
                raise _NotKernel  # ~ and negated u64: their Python values need no C width
            return _C(f"-({inner.code})", needs=inner.needs,
                      literal=-inner.literal if inner.literal is not None else None)
        if isinstance(node, Binary):
            if node.op in ("&&", "||"):
                return _C(f"({self.bool(node.left)} {node.op} {self.bool(node.right)})")
            if node.op in ("==", "!=") and any(isinstance(n, Str) for n in (node.left,
                                                                           node.right)):
                return _C(self.string(node))
            if node.op in _CMP:
                return self.compare(node)
            if node.op in _BITS:
                return self.bits(node)
        raise _NotKernel  # arithmetic, shifts, other strings, lbr has: user space

    def name(self, node: Name) -> _C:
        _name(node, self.scope, self.text)  # an unknown name is refused, with its column
        name = node.name
        if name in ("pid", "tid", "cpu"):
            return _C(f"((s64){name})")
        if name == "duration":
            return _C("((s64)dur)", needs=frozenset({"dk"}))
        sig = self.scope.prototype()
        if name in ("retval", "errors"):
            ret = sig.ret if sig is not None else None
            pointer = bool(ret is not None and ret.pointer)
            r = _typed("retval", ret) if ret is not None and (pointer or ret.integer) \
                else _C("((s64)retval)")  # untyped: the signed register, as in user space
            if name == "retval":
                return _C(r.code, r.unsigned, frozenset({"ex"}))
            s = "((s64)retval)" if pointer else r.code  # ERR_PTR: a pointer's errno
            errno = f"(({s} >= -{ERRNO_MAX}LL) && ({s} <= -1LL))"
            if pointer:
                errno = f"({errno} || ((u64)retval == 0ULL))"
            elif r.unsigned:
                return _C("0LL")  # an unsigned return value is never a negative errno
            return _C(errno, needs=frozenset({"ex"}))
        index = self.arg_index(name)
        if index is None:
            raise _NotKernel
        vt = sig.params[index][1] if sig is not None and index < len(sig.params) else None
        return _typed(f"a{index}", vt)

    def arg_index(self, name: str) -> int | None:
        m = re.fullmatch(r"arg([0-5])", name)
        if m:
            return int(m.group(1))
        sig = self.scope.prototype()
        names = [n for n, _ in sig.params] if sig is not None else []
        return names.index(name) if name in names[:6] else None

    def pointer(self, node: Node) -> tuple[_C, Any, str]:
        """A pointer value a member is read through: (its C, its ValueType, as written)."""
        written = unparse(node)
        if isinstance(node, Name):
            _name(node, self.scope, self.text)
            sig = self.scope.prototype()
            index = self.arg_index(node.name)
            if node.name == "retval" and sig is not None and sig.ret is not None:
                vt, c = sig.ret, _C("((u64)retval)", True, frozenset({"ex"}))
            elif index is not None and sig is not None and index < len(sig.params):
                vt, c = sig.params[index][1], _C(f"((u64)a{index})", True)
            else:
                raise FilterError(f"'{written}' has no type here, so it has no members",
                                  self.text, max(node.column, 0),
                                  "members need the traced function's prototype (BTF or "
                                  "DWARF): trace one function that has one")
            return c, vt, written
        if isinstance(node, Member):
            place = self.place(node)
            return self.read(place), place.member.vtype, written
        raise FilterError(f"'{written}' is not a pointer to a struct", self.text, 0)

    def place(self, node: Member) -> _Place:
        if node.arrow:
            ptr, vt, written = self.pointer(node.base)
            agg = getattr(vt, "pointee", None) if vt is not None else None
            if agg is None:
                what = getattr(vt, "name", "") or "not a pointer"
                raise FilterError(f"'{written}' is {_article(what)}, not a pointer to a struct",
                                  self.text, max(node.column - 2, 0),
                                  "'->' follows a pointer to a struct or union")
            offset = 0
        else:
            if not isinstance(node.base, Member):
                raise FilterError(f"'{unparse(node.base)}' is not a struct", self.text,
                                  max(node.column - 1, 0),
                                  "'.' follows a struct member held by value "
                                  "(file->f_path.dentry); use '->' through a pointer")
            outer = self.place(node.base)
            agg = outer.member.embedded
            if agg is None:
                raise FilterError(f"'{outer.written}' is {_article(outer.member.c_type)}, "
                                  "not a struct", self.text, max(node.column - 1, 0),
                                  "'.' follows a struct member held by value; use '->' "
                                  "through a pointer")
            ptr, offset = outer.ptr, outer.offset + outer.member.offset
        if not agg.complete:
            raise FilterError(f"{agg.name} is only declared here: its members are unknown",
                              self.text, max(node.column, 0), "filter on another term")
        member = agg.member(node.field)
        if member is None:
            close = difflib.get_close_matches(node.field, agg.member_names(), n=1)
            hint = f"did you mean {close[0]}?" if close else \
                f"its members: {', '.join(agg.member_names()[:12])}"
            raise FilterError(f"{agg.name} has no member {node.field}", self.text,
                              max(node.column, 0), hint)
        return _Place(ptr, offset, member, unparse(node))

    def read(self, place: _Place) -> _C:
        """The member's value: read from memory where the probe runs (kernel or user memory
        by the address; a NULL pointer or a failed read reads as 0)."""
        m = place.member
        if m.embedded is not None or m.char_array:
            what = "a struct" if m.embedded is not None else "a char array"
            raise FilterError(f"'{place.written}' is {what} ({m.c_type}): "
                              + ("name one of its members with '.'" if m.embedded is not None
                                 else "compare it with a string"), self.text, 0)
        vt = m.vtype
        if vt is None or not (vt.pointer or vt.integer):
            raise FilterError(f"'{place.written}' ({m.c_type}) is not an integer or a pointer",
                              self.text, 0, "filter on an integer member")
        offset = place.offset + m.offset
        if m.bit_size:
            nbytes = (m.bit_shift + m.bit_size + 7) // 8
            raw = (f"((bpflbr_rd({place.ptr.code}, {offset}ULL, {nbytes}ULL) >> "
                   f"{m.bit_shift}LL) & {(1 << m.bit_size) - 1}ULL)")
            if vt.signed:
                shift = 64 - m.bit_size
                return _C(f"(((s64)({raw} << {shift}LL)) >> {shift}LL)", needs=place.ptr.needs)
            return _C(f"((s64){raw})", needs=place.ptr.needs)
        c = _typed(f"bpflbr_rd({place.ptr.code}, {offset}ULL, {vt.size}ULL)", vt)
        return _C(c.code, c.unsigned, place.ptr.needs)

    def compare(self, node: Binary) -> _C:
        left, right = self.value(node.left), self.value(node.right)
        needs = left.needs | right.needs
        op = node.op
        if left.unsigned or right.unsigned:
            for a, b, flipped in ((left, right, False), (right, left, True)):
                if a.unsigned and b.literal is not None and b.literal < 0:
                    # a u64 against a negative number: decided by the types alone
                    bigger = {"==": False, "!=": True, "<": False, "<=": False, ">": True,
                              ">=": True}[_flip(op) if flipped else op]
                    return _C(f"({_known(_C('1LL', needs=needs))} && {int(bigger)}LL)"
                              if needs else f"{int(bigger)}LL")
            if not all(c.unsigned or (c.literal is not None and c.literal >= 0)
                       for c in (left, right)):
                raise _NotKernel  # u64 against a signed value: exact only in user space
            code = f"((u64){left.code} {op} (u64){right.code})"
        else:
            code = f"({left.code} {op} {right.code})"
        return _C(_known(_C(code, needs=needs)))

    def bits(self, node: Binary) -> _C:
        left, right = self.value(node.left), self.value(node.right)
        needs = left.needs | right.needs
        if left.unsigned or right.unsigned:
            if not all(c.unsigned or (c.literal is not None and c.literal >= 0)
                       for c in (left, right)):
                raise _NotKernel
            return _C(f"((u64){left.code} {node.op} (u64){right.code})", True, needs)
        return _C(f"({left.code} {node.op} {right.code})", needs=needs)

    def string(self, node: Binary) -> str:
        """``comm``, a ``char *`` argument or member, or a char array member against an
        exact string or a prefix (``'ngi*'``): integers (the literal's bytes as 64-bit
        words) are all that reaches the C."""
        (lit,) = [n for n in (node.left, node.right) if isinstance(n, Str)]
        (other,) = [n for n in (node.left, node.right) if not isinstance(n, Str)] or [lit]
        prefix = lit.value.endswith("*")
        body = lit.value.removesuffix("*")
        if any(c in body for c in "*?[") or other is lit:
            raise _NotKernel  # a glob beyond a prefix: fnmatch, in user space
        data = body.encode()
        if isinstance(other, Name) and other.name == "comm":
            if len(data) >= COMM_LEN:
                raise _NotKernel
            self.comm = True
            test = _words_test(data, prefix, lambda k: f"c{k}")
            return f"({test})" if node.op == "==" else f"!({test})"
        addr = self.string_address(other)
        if addr is None or len(data) > MAX_KERNEL_STR:
            raise _NotKernel
        test = _words_test(data, prefix, lambda k: f"bpflbr_strw({addr.code}, {8 * k}ULL)")
        known = _known(_C(f"({addr.code} != 0ULL) && {test}", needs=addr.needs))
        return f"({known})" if node.op == "==" else f"!({known})"

    def string_address(self, node: Node) -> _C | None:
        """Where the characters of a string-typed value are (None: not a string here)."""
        if isinstance(node, Member):
            place = self.place(node)
            m = place.member
            if m.char_array:
                base = place.ptr
                return _C(f"({base.code} ? {base.code} + {place.offset + m.offset}ULL : 0ULL)",
                          True, base.needs)
            if m.vtype is not None and m.vtype.string:
                return self.read(place)
            return None
        if isinstance(node, Name):
            index = self.arg_index(node.name)
            sig = self.scope.prototype()
            if index is None or sig is None or index >= len(sig.params):
                return None
            vt = sig.params[index][1]
            if vt is None or not vt.string:
                return None
            _name(node, self.scope, self.text)
            return _C(f"((u64)a{index})", True)
        return None


def _flip(op: str) -> str:
    return {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(op, op)


def _article(what: str) -> str:
    return f"an {what}" if what[:1] in "aeiou" else f"a {what}"


def _words_test(data: bytes, prefix: bool, word: Callable[[int], str]) -> str:
    """The C test that the bytes at ``word(0)``, ``word(1)``... (8-byte little-endian words)
    start with ``data`` (``prefix``), or are ``data`` and a NUL: each word masked to the bytes
    that count; ``&&`` reads a word only when the ones before it matched."""
    full = data if prefix else data + b"\0"
    if not full:
        return "1LL"
    nwords = (len(full) + 7) // 8
    padded = full.ljust(8 * nwords, b"\0")
    mask = (b"\xff" * len(full)).ljust(8 * nwords, b"\0")
    terms = []
    for k in range(nwords):
        m = int.from_bytes(mask[8 * k:8 * k + 8], "little")
        v = int.from_bytes(padded[8 * k:8 * k + 8], "little")
        if m:
            terms.append(f"(({word(k)} & {m}ULL) == {v}ULL)")
    return " && ".join(terms) if terms else "1LL"


def uses_comm(c: str) -> bool:
    """Whether generated C reads comm (the probe then reads it before the filter)."""
    return re.search(r"\bc[01]\b", c) is not None


def _conjuncts(node: Node) -> list[Node]:
    if isinstance(node, Binary) and node.op == "&&":
        return _conjuncts(node.left) + _conjuncts(node.right)
    return [node]


def _kernel_only(node: Node, scope: Scope) -> str | None:
    """The text of a term inside ``node`` that only the kernel can evaluate (a member; a
    string compare on an argument the events carry no copy of), or None."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, Member):
            return unparse(n)
        if isinstance(n, Binary):
            if (not scope.strings and n.op in ("==", "!=")
                    and any(isinstance(x, Str) for x in (n.left, n.right))):
                other = n.right if isinstance(n.left, Str) else n.left
                if isinstance(other, Name) and other.name != "comm":
                    return unparse(n)
            stack += [n.left, n.right]
        elif isinstance(n, Unary):
            stack.append(n.operand)
    return None


def split_for_kernel(text: str, scope: Scope) -> tuple[str | None, str | None]:
    """(the C the probe evaluates, the text left for user space) of a filter: each top-level
    ``&&`` term the kernel can evaluate exactly as user space would goes to the kernel
    (integers, pid/tid/cpu, comm, typed args and retval, duration, members, strings); the
    rest (globs beyond a prefix, arithmetic, lbr has) stays in user space. A term that needs
    the kernel (a member) but cannot go whole is refused, naming it. The C is generated from
    the AST alone: integers, our names and operators, no text of the user's."""
    ast = parse(text)
    kernel, user = [], []
    gen = _Kernel(scope, text)
    for term in _conjuncts(ast):
        try:
            kernel.append(gen.bool(term))
        except _NotKernel:
            only = _kernel_only(term, scope)
            if only is not None:
                whole = unparse(term)
                raise FilterError(
                    f"'{only}' is read in the kernel only, and it cannot evaluate "
                    + ("it" if only == whole else f"'{whole}' as a whole"), text, 0,
                    "make it a term of its own ('&&'), compared with an integer, an exact "
                    f"string or a prefix ('abc*') of at most {MAX_KERNEL_STR} bytes") from None
            _compile(term, scope, text)  # names checked (and refused) here
            user.append(term)
    c = " && ".join(f"({k})" for k in kernel) if kernel else None
    rest: Node | None = None
    for term in user:
        rest = term if rest is None else Binary("&&", rest, term)
    return c, unparse(rest) if rest is not None else None
