"""Typed presentation of probe values: registers are 64 bits, C values often are not.

A probe reads arguments and the return value as whole 64-bit registers. An ``int`` of -1
arrives as 0xffffffff (or with garbage above bit 31), a ``char`` as whatever the upper bytes
hold. :class:`ValueType` is what the function's type information (DWARF for user code, BTF for
BPF programs and the kernel) says about one value; :meth:`ValueType.present` turns the raw
register into the integer the C code sees. :class:`Signature` is a function's parameters and
return type; it is what traces attach to events and renderers present them through.

Pure data, no drgn and no BTF here: both sides build these records (``usersyms`` from drgn
types, ``kernel.btf`` from BTF) and ``render_events`` only reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Protocol

REG_BITS = 64


@dataclass(frozen=True, slots=True)
class ValueType:
    """One C value: ``size`` bytes (0: not an integer we can present, e.g. a struct by value
    or a float), signedness, and whether it is a pointer (shown raw, in hex)."""

    size: int
    signed: bool = False
    pointer: bool = False
    name: str = ""
    # a pointer to char (through typedefs and qualifiers): a C string the probe can copy;
    # ``char **`` and ``void *`` are not
    string: bool = False
    # a pointer to a struct or union: its members, for filters (``skb->len``); not part of
    # the value's identity
    pointee: Aggregate | None = dc_field(default=None, compare=False, hash=False, repr=False)

    @property
    def integer(self) -> bool:
        return not self.pointer and 0 < self.size <= REG_BITS // 8

    def present(self, raw: int) -> int:
        """The value the C code sees: truncated to ``size`` bytes, sign-extended if signed.
        Pointers, unknown types and void stay raw."""
        if not self.integer:
            return raw
        bits = self.size * 8
        value = raw & ((1 << bits) - 1)
        if self.signed and value >> (bits - 1):
            value -= 1 << bits
        return value

    def format(self, value: int) -> str:
        """Text of an already presented value: integers (sizes, counts, flags, signed or not)
        in decimal, pointers and what we cannot type (void, structs, floats) in hex."""
        if self.integer:
            return str(value)
        return f"{value:#x}"


VOID = ValueType(0, name="void")


@dataclass(frozen=True, slots=True)
class Member:
    """One member of a struct or union, where a filter reads it: ``offset`` bytes from the
    aggregate's start (a bitfield: ``bit_size`` bits from bit ``bit_shift`` of the bytes
    there), and what it holds: an integer or pointer (``vtype``), an aggregate by value
    (``embedded``: ``.`` goes on), or a char array (``char_array`` bytes: a string)."""

    name: str
    offset: int
    vtype: ValueType | None
    c_type: str  # as C writes it, for messages
    bit_shift: int = 0
    bit_size: int = 0  # 0: not a bitfield
    embedded: Aggregate | None = None
    char_array: int = 0


class Aggregate(Protocol):
    """A struct or union type as BTF (kernel) or DWARF (user code) describes it; anonymous
    members' own members are found through it, at their real offsets, as C finds them."""

    @property
    def name(self) -> str: ...  # "struct sk_buff"

    @property
    def complete(self) -> bool: ...  # False: only declared here (no members known)

    def member(self, name: str) -> Member | None: ...

    def member_names(self) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class Signature:
    """A function's parameters (name, type or None when unknown) and return type."""

    params: tuple[tuple[str, ValueType | None], ...]
    ret: ValueType | None = None
    variadic: bool = False  # a trailing '...': more arguments than params, untyped

    @classmethod
    def from_names(cls, names: Sequence[str]) -> Signature:
        """Names only (no type information): values stay raw, as before types were known."""
        return cls(tuple((n, None) for n in names))

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.params]

    def args(self, raw: Sequence[int]) -> dict[str, int]:
        """name -> presented value, for as many values as both have."""
        return {name: vt.present(v) if vt is not None else v
                for (name, vt), v in zip(self.params, raw, strict=False)}

    def retval(self, raw: int) -> int:
        """The presented return value; a pointer stays raw, and an unknown type (or void,
        a struct, a float) is the signed 64-bit register, as without a signature."""
        ret = self.ret
        if ret is not None and (ret.pointer or ret.integer):
            return ret.present(raw)
        return signed64(raw)


def format_str(data: bytes, truncated: bool = False) -> str:
    """A C string the probe copied, as a quoted, escaped literal: printable ASCII as is,
    quotes and backslashes escaped, every other byte as ``\\xNN`` (traced text never reaches
    the terminal raw); ``...`` after the quote when the copy was cut at its bound."""
    out = []
    for b in data:
        if b in (0x22, 0x5C):
            out.append("\\" + chr(b))
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append(_ESCAPES.get(b) or f"\\x{b:02x}")
    return '"' + "".join(out) + '"' + ("..." if truncated else "")


_ESCAPES = {0x0A: "\\n", 0x09: "\\t", 0x0D: "\\r"}


def signed64(raw: int) -> int:
    """The register as a signed 64-bit value: what an untyped return value is shown as."""
    return raw - (1 << 64) if raw >= 1 << 63 else raw


def as_signature(params: Signature | Sequence[str] | None) -> Signature | None:
    """Renderers take a Signature, or (older callers, recorded traces) a list of names."""
    if params is None or isinstance(params, Signature):
        return params
    return Signature.from_names(params)
