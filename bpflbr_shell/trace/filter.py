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
    primary := INT | DURATION | STRING | NAME ('->' NAME)* | '(' expr ')'
             | 'lbr' ['!'] 'has' (STRING | NAME)
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
  | (?P<op>->|==|!=|<=|>=|<<|>>|&&|\|\||[-+~!<>&|^()])
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
            while self.tok.kind == "op" and self.tok.text == "->":
                self.take()
                f = self.take()
                if f.kind != "name":
                    raise self.error("a member name after '->'", f)
                node = Member(node, f.text)
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
        return f"{unparse(node.base)}->{node.field}"
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


def check_terms(node: Node, text: str) -> None:
    """Refuse, naming it, a term no trace can evaluate here (struct members), before any
    trace's names are known (a session filter: names are checked per trace)."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, Member):
            _compile(n, Scope(), text)  # raises the member's FilterError
        elif isinstance(n, Unary):
            stack.append(n.operand)
        elif isinstance(n, Binary):
            stack += [n.left, n.right]


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
        base = node
        while isinstance(base, Member):
            base = base.base  # type: ignore[assignment]  # a Member's base is a Node
        col = base.column if isinstance(base, Name) else 0
        raise FilterError(f"'{unparse(node)}': struct members are read in the kernel through "
                          "BTF, which this build does not do yet", text, max(col, 0),
                          "filter on the pointer's value, or on other terms")
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
        null_is_error = scope.pointer_return()  # `errors`: NULL from a pointer function
        value = _name(Name("retval"), scope, text)

        def errors(e: Any) -> bool:
            r = value(e)
            return r is not None and (-ERRNO_MAX <= r <= -1 or (null_is_error and r == 0))

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


# the part the kernel evaluates ----------------------------------------------------------------
class _NotKernel(Exception):
    """This term is evaluated in user space."""


_C_OPS = ("==", "!=", "<", "<=", ">", ">=", "&&", "||", "&", "|", "^")
_S64_MAX = (1 << 63) - 1


def _typed(var: str, vt: Any) -> str:
    """``var`` (a u64 register) as the C code sees it: an integer type of at most 4 bytes,
    or a signed 8-byte one; anything else stays in user space (exactly as it evaluates)."""
    if vt is None or getattr(vt, "pointer", False) or not getattr(vt, "integer", False):
        raise _NotKernel
    if vt.size == 8:
        if not vt.signed:
            raise _NotKernel
        return f"((s64){var})"
    return f"((s64)({'s' if vt.signed else 'u'}{vt.size * 8}){var})"


def _to_c(node: Node, scope: Scope) -> str:  # noqa: C901 - one case per node
    if isinstance(node, Num):
        if node.value > _S64_MAX:
            raise _NotKernel
        return f"{node.value}LL"
    if isinstance(node, Name):
        name = node.name
        if name in ("pid", "tid", "cpu"):
            return f"((s64){name})"
        sig = scope.prototype()
        if name in ("retval", "errors"):
            if not scope.has_retval:
                raise _NotKernel
            if sig is None or sig.ret is None:
                r = "((s64)retval)"  # untyped: the signed register, as in user space
                pointer = False
            else:
                pointer = bool(sig.ret.pointer)
                r = "((s64)retval)" if pointer else _typed("retval", sig.ret)
            if name == "retval":
                if pointer:
                    raise _NotKernel  # pointers compare unsigned: user space
                return r
            null = f" || ({r} == 0LL)" if pointer else ""
            return f"((({r} >= -{ERRNO_MAX}LL) && ({r} <= -1LL)){null})"
        m = re.fullmatch(r"arg([0-5])", name)
        index = int(m.group(1)) if m else None
        if index is None and sig is not None:
            names = [n for n, _ in sig.params]
            index = names.index(name) if name in names and names.index(name) < 6 else None
        if index is None or sig is None or index >= len(sig.params):
            raise _NotKernel
        return _typed(f"a{index}", sig.params[index][1])
    if isinstance(node, Unary):
        if node.op not in ("!", "-"):
            raise _NotKernel
        return f"{node.op}({_to_c(node.operand, scope)})"
    if isinstance(node, Binary) and node.op in ("==", "!=") and _is_comm_glob(node):
        return _comm_c(node)
    if isinstance(node, Binary) and node.op in _C_OPS:
        return f"({_to_c(node.left, scope)}) {node.op} ({_to_c(node.right, scope)})"
    raise _NotKernel  # other strings, duration, lbr has, arithmetic: user space


COMM_LEN = 16  # TASK_COMM_LEN: 15 bytes and the NUL


def _is_comm_glob(node: Binary) -> bool:
    """``comm == 'nginx'`` or ``comm == 'ngi*'``: an exact name, or a prefix (one trailing
    ``*``, no other glob character), of at most 15 bytes."""
    names = [n for n in (node.left, node.right) if isinstance(n, Name)]
    strs = [n for n in (node.left, node.right) if isinstance(n, Str)]
    if len(names) != 1 or names[0].name != "comm" or len(strs) != 1:
        return False
    body = strs[0].value.removesuffix("*")
    return not any(c in body for c in "*?[") and len(body.encode()) < COMM_LEN


def _comm_c(node: Binary) -> str:
    """comm compared as two little-endian 8-byte words (c0, c1) with the literal's bytes,
    masked to the prefix for ``'ngi*'``: integers only reach the C."""
    (glob,) = [n.value for n in (node.left, node.right) if isinstance(n, Str)]
    prefix = glob.endswith("*")
    data = glob.removesuffix("*").encode()
    full = data.ljust(COMM_LEN, b"\0")
    mask = (b"\xff" * len(data) if prefix else b"\xff" * COMM_LEN).ljust(COMM_LEN, b"\0")
    terms = []
    for k in range(2):
        m = int.from_bytes(mask[8 * k:8 * k + 8], "little")
        v = int.from_bytes(full[8 * k:8 * k + 8], "little")
        if m:
            terms.append(f"((c{k} & {m}ULL) == {v}ULL)")
    test = " && ".join(terms) if terms else "1LL"
    return f"({test})" if node.op == "==" else f"!({test})"


def uses_comm(c: str) -> bool:
    """Whether generated C reads comm (the probe then reads it before the filter)."""
    return re.search(r"\bc[01]\b", c) is not None


def _conjuncts(node: Node) -> list[Node]:
    if isinstance(node, Binary) and node.op == "&&":
        return _conjuncts(node.left) + _conjuncts(node.right)
    return [node]


def split_for_kernel(text: str, scope: Scope) -> tuple[str | None, str | None]:
    """(the C the probe evaluates, the text left for user space) of a filter: each top-level
    ``&&`` term goes to the kernel when it is made of integers, pid/tid/cpu, and args and
    retval of integer types the prototype gives (values as the C code sees them); the rest
    (strings, comm, duration, lbr has, untyped arguments) stays in user space. The C is
    generated from the AST alone: integers, our names and operators, no text of the user's."""
    ast = parse(text)
    _compile(ast, scope, text)  # every name checked first, whichever side evaluates it
    kernel, user = [], []
    for term in _conjuncts(ast):
        try:
            kernel.append(_to_c(term, scope))
        except _NotKernel:
            user.append(term)
    c = " && ".join(f"({k})" for k in kernel) if kernel else None
    rest: Node | None = None
    for term in user:
        rest = term if rest is None else Binary("&&", rest, term)
    return c, unparse(rest) if rest is not None else None
