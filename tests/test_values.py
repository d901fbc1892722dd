"""Unit: typed presentation of registers (values.py), BTF and DWARF (drgn) types as ValueTypes,
the renderers' use of them, and placing a uprobe's binary in a process that is gone.

BTF cases come from the recorded programs (tests/fixtures/progs: real kernel BTF, where
``tc_classify``'s functions take and return ``__u32`` and ``int``) and from small blobs built
here by the BTF spec (Documentation/bpf/btf.rst) for what those programs lack: signed and
unsigned enums, ``char``, ``_Bool``, typedef and modifier chains.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from bpflbr_shell.kernel.btf import (
    KIND_CONST,
    KIND_ENUM,
    KIND_ENUM64,
    KIND_FLOAT,
    KIND_FUNC,
    KIND_FUNC_PROTO,
    KIND_INT,
    KIND_PTR,
    KIND_STRUCT,
    KIND_TYPEDEF,
    KIND_VOLATILE,
    Btf,
)
from bpflbr_shell.kernel.model import RawProgInfo
from bpflbr_shell.kernel.values import VOID, Signature, ValueType, as_signature, signed64
from bpflbr_shell.render.events import RenderOptions, event_json, event_to_json, format_call
from bpflbr_shell.symbols.kernel import Location
from bpflbr_shell.trace.events import Event

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "progs"
M64 = (1 << 64) - 1

INT = ValueType(4, True, name="int")
U32 = ValueType(4, False, name="__u32")
CHAR = ValueType(1, True, name="char")
U8 = ValueType(1, False, name="unsigned char")
SHORT = ValueType(2, True, name="short")
LONG = ValueType(8, True, name="long")
ULONG = ValueType(8, False, name="unsigned long")
PTR = ValueType(8, False, True, "char *")


# ---- ValueType.present / format -----------------------------------------------------------------

@pytest.mark.parametrize(("vtype", "raw", "want"), [
    (INT, 0xFFFFFFFF, -1),  # what a uretprobe on int sub(1, 2) reads
    (INT, 0xDEADBEEF_FFFFFFFE, -2),  # garbage above bit 31 of an int register
    (INT, 0x7FFFFFFF, 2**31 - 1),
    (INT, 0x80000000, -(2**31)),
    (INT, 5, 5),
    (U32, 0xFFFFFFFF, 2**32 - 1),
    (U32, 0x12345678_00000003, 3),
    (CHAR, 0xFF, -1),
    (CHAR, 0x4141, 0x41),
    (U8, 0xFFFF, 0xFF),
    (SHORT, 0x8000, -32768),
    (SHORT, 0xFFFF_0001, 1),
    (LONG, M64, -1),
    (LONG, 1 << 63, -(1 << 63)),
    (ULONG, M64, M64),
    (PTR, 0xFFFF_8880_0000_1000, 0xFFFF_8880_0000_1000),  # pointers stay raw
    (PTR, 0, 0),
    (VOID, M64, M64),  # void and unknown stay raw
    (ValueType(0, name="struct s"), 0x1234, 0x1234),
    (ValueType(16, True, name="__int128"), M64, M64),  # wider than a register: raw
])
def test_present(vtype: ValueType, raw: int, want: int) -> None:
    assert vtype.present(raw) == want


@pytest.mark.parametrize(("vtype", "value", "text"), [
    (INT, -1, "-1"), (INT, 12, "12"), (LONG, -3, "-3"),
    # sizes and counts read in decimal, signed or not (count=832, not 0x340)
    (U32, 7, "7"), (U32, 10, "10"), (ULONG, 832, "832"), (U32, 2**32 - 1, "4294967295"),
    (PTR, 0, "0x0"), (PTR, 0x7FFD1000, "0x7ffd1000"),
    (VOID, 5, "0x5"),
])
def test_format(vtype: ValueType, value: int, text: str) -> None:
    assert vtype.format(value) == text


def test_signature_args_and_retval() -> None:
    sig = Signature((("a", INT), ("p", PTR), ("n", None)), INT)
    assert sig.names == ["a", "p", "n"]
    assert sig.args([0xFFFFFFFF, 0x1000, M64, 99, 98, 97]) == {"a": -1, "p": 0x1000, "n": M64}
    assert sig.args([1]) == {"a": 1}
    assert sig.retval(0xFFFFFFFF) == -1
    assert Signature((), U32).retval(0xFFFFFFFF) == 2**32 - 1
    assert Signature((), PTR).retval(M64) == M64
    # unknown, void or struct return: the signed 64-bit register, as without a signature
    for ret in (None, VOID, ValueType(0, name="struct s")):
        assert Signature((), ret).retval(M64) == -1 == signed64(M64)
    assert signed64(5) == 5 and signed64(1 << 63) == -(1 << 63)


def test_as_signature_takes_names_or_signatures() -> None:
    assert as_signature(None) is None
    sig = Signature((("x", INT),), INT)
    assert as_signature(sig) is sig
    names = as_signature(["x", "y"])
    assert names == Signature((("x", None), ("y", None)))
    assert names.args([M64, 2]) == {"x": M64, "y": 2}  # names only: raw values


# ---- BTF: the recorded programs -----------------------------------------------------------------

def fixture_btf(name: str) -> Btf:
    record = json.loads((FIXTURES / f"{name}.json").read_text())
    return Btf.parse(RawProgInfo.from_json(record["raw"]).btf)


def func_id(btf: Btf, name: str) -> int:
    (tid,) = [t.id for t in btf.types[1:] if t and t.kind == KIND_FUNC and t.name == name]
    return tid


def test_btf_signatures_of_the_recorded_program() -> None:
    btf = fixture_btf("tc_classify")
    u32, int_ = ValueType(4, False, False, "__u32"), ValueType(4, True, False, "int")

    sig = btf.func_signature(func_id(btf, "account_class"))  # int account_class(__u32, __u32)
    assert sig == Signature((("tclass", u32), ("len", u32)), int_)
    assert sig.args([M64, 0xFFFFFFFF_00000010]) == {"tclass": 2**32 - 1, "len": 16}
    assert sig.retval(0xFFFFFFFF) == -1

    sig = btf.func_signature(func_id(btf, "classify_flow"))  # __u32 classify_flow(const ... *)
    assert sig.ret == u32 and sig.retval(0xFFFFFFFF) == 2**32 - 1
    ((name, key),) = sig.params
    assert name == "key" and key.pointer and key.name == "const struct flow_key *"

    sig = btf.func_signature(func_id(btf, "update_flow"))  # void update_flow(ptr, __u32, __u32)
    assert sig.ret == VOID
    assert [(n, t.pointer, t.size, t.signed) for n, t in sig.params] == \
        [("key", True, 8, False), ("tclass", False, 4, False), ("len", False, 4, False)]

    sig = btf.func_signature(func_id(btf, "tc_classify"))  # int tc_classify(struct __sk_buff *)
    assert sig.names == ["skb"] and sig.params[0][1].pointer and sig.ret == int_
    # the names agree with func_params, which the C prototypes are made of
    for t in btf.types[1:]:
        if t and t.kind == KIND_FUNC:
            assert btf.func_signature(t.id).names == [n for n, _ in btf.func_params(t.id)]


def test_btf_int_encoding_of_the_recorded_program() -> None:
    """The raw encoding words: 'int' has BTF_INT_SIGNED, 'unsigned int' (under __u32) not."""
    btf = fixture_btf("tc_classify")
    ints = {t.name: t for t in btf.types[1:] if t and t.kind == KIND_INT}
    assert (ints["int"].extra[0] >> 24) & 0xF == 1 and ints["int"].ref == 4
    assert (ints["unsigned int"].extra[0] >> 24) & 0xF == 0
    assert ints["int"].extra[0] & 0xFF == 32  # BTF_INT_BITS
    assert btf.value_type(ints["int"].id) == ValueType(4, True, False, "int")
    assert btf.value_type(0) == VOID
    assert btf.value_type(len(btf.types) + 5) is None


def test_no_signature_for_what_is_not_a_function() -> None:
    btf = fixture_btf("tc_classify")
    int_id = next(t.id for t in btf.types[1:] if t and t.kind == KIND_INT)
    assert btf.func_signature(int_id) is None
    assert btf.func_signature(0) is None


# ---- BTF: blobs built by the spec ---------------------------------------------------------------

class BtfBuilder:
    """Writes a BTF blob: header, type section, string section (btf.rst)."""

    def __init__(self) -> None:
        self.types: list[bytes] = []
        self.strings = b"\0"

    def s(self, text: str) -> int:
        if not text:
            return 0
        off = len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def add(self, kind: int, name: str = "", vlen: int = 0, kflag: bool = False,
            size_type: int = 0, tail: bytes = b"") -> int:
        info = (int(kflag) << 31) | (kind << 24) | vlen
        self.types.append(struct.pack("<III", self.s(name), info, size_type) + tail)
        return len(self.types)

    def int_(self, name: str, size: int, signed: bool = False, char: bool = False,
             bool_: bool = False) -> int:
        enc = int(signed) | int(char) << 1 | int(bool_) << 2
        return self.add(KIND_INT, name, size_type=size,
                        tail=struct.pack("<I", enc << 24 | size * 8))

    def enum(self, name: str, size: int, values: dict[str, int], signed: bool,
             kind: int = KIND_ENUM) -> int:
        if kind == KIND_ENUM:
            tail = b"".join(struct.pack("<Ii", self.s(n), v) if signed else
                            struct.pack("<II", self.s(n), v) for n, v in values.items())
        else:
            tail = b"".join(struct.pack("<III", self.s(n), v & 0xFFFFFFFF, v >> 32 & 0xFFFFFFFF)
                            for n, v in values.items())
        return self.add(kind, name, len(values), signed, size, tail)

    def func(self, name: str, ret: int, params: list[tuple[str, int]]) -> int:
        tail = b"".join(struct.pack("<II", self.s(n), t) for n, t in params)
        proto = self.add(KIND_FUNC_PROTO, vlen=len(params), size_type=ret, tail=tail)
        return self.add(KIND_FUNC, name, size_type=proto)

    def blob(self) -> bytes:
        types = b"".join(self.types)
        hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types),
                          len(self.strings))
        return hdr + types + self.strings


def test_btf_value_types_by_the_spec() -> None:
    b = BtfBuilder()
    int_ = b.int_("int", 4, signed=True)
    char = b.int_("char", 1, signed=True, char=True)
    uchar = b.int_("unsigned char", 1, char=True)
    bool_ = b.int_("_Bool", 1, bool_=True)
    s64 = b.int_("long long", 8, signed=True)
    u16 = b.int_("unsigned short", 2)
    typedef_u16 = b.add(KIND_TYPEDEF, "__u16", size_type=u16)
    typedef2 = b.add(KIND_TYPEDEF, "port_t", size_type=typedef_u16)
    const_int = b.add(KIND_CONST, size_type=int_)
    volatile_port = b.add(KIND_VOLATILE, size_type=typedef2)
    senum = b.enum("err", 4, {"E_NEG": -22, "E_OK": 0}, signed=True)
    uenum = b.enum("flags", 4, {"F_HI": 0x80000000}, signed=False)
    e64 = b.enum("big", 8, {"B_NEG": (1 << 64) - 1}, signed=True, kind=KIND_ENUM64)
    ue64 = b.enum("ubig", 8, {"U": 1 << 63}, signed=False, kind=KIND_ENUM64)
    st = b.add(KIND_STRUCT, "pair", 0, size_type=8)
    ptr_struct = b.add(KIND_PTR, size_type=st)
    ptr_char = b.add(KIND_PTR, size_type=char)
    ptr_typedef = b.add(KIND_TYPEDEF, "string_t", size_type=ptr_char)
    flt = b.add(KIND_FLOAT, "double", size_type=8)
    fid = b.func("f", senum, [("a", const_int), ("c", char), ("uc", uchar), ("ok", bool_),
                              ("port", volatile_port), ("fl", uenum)])
    gid = b.func("g", ptr_struct, [("", s64), ("e", e64), ("u", ue64), ("p", st),
                                   ("d", flt), ("s", ptr_typedef)])
    hid = b.func("h", 0, [("fmt", ptr_char), ("", 0)])  # void h(char *fmt, ...)
    btf = Btf.parse(b.blob())

    f = btf.func_signature(fid)
    assert f == Signature((
        ("a", ValueType(4, True, False, "int")),
        ("c", ValueType(1, True, False, "char")),
        ("uc", ValueType(1, False, False, "unsigned char")),
        ("ok", ValueType(1, False, False, "_Bool")),
        ("port", ValueType(2, False, False, "port_t")),  # the outermost typedef names it
        ("fl", ValueType(4, False, False, "flags")),
    ), ValueType(4, True, False, "err"))
    assert f.args([0xFFFFFFFF, 0xFF, 0xFF, 1, 0xFFFF_FFFF, 0x80000000]) == \
        {"a": -1, "c": -1, "uc": 255, "ok": 1, "port": 0xFFFF, "fl": 0x80000000}
    assert f.retval(0xFFFFFFEA) == -22  # a signed enum (kind_flag) returning -EINVAL

    g = btf.func_signature(gid)
    assert [n for n, _ in g.params] == ["arg0", "e", "u", "p", "d", "s"]
    assert g.params[0][1] == ValueType(8, True, False, "long long")
    assert g.params[1][1] == ValueType(8, True, False, "big")
    assert g.params[2][1] == ValueType(8, False, False, "ubig")
    assert g.params[3][1] is None and g.params[4][1] is None  # struct by value, float
    assert g.params[5][1] == ValueType(8, False, True, "string_t", string=True)  # char *
    assert g.ret == ValueType(8, False, True, "struct pair *")
    assert g.ret.pointee is not None and g.ret.pointee.name == "struct pair"
    assert g.args([M64, M64, M64, 7, 8, 9]) == {"arg0": -1, "e": -1, "u": M64, "p": 7,
                                               "d": 8, "s": 9}

    h = btf.func_signature(hid)  # the trailing '...' takes no register of its own
    assert h.names == ["fmt"] and h.ret == VOID


# ---- DWARF: drgn types --------------------------------------------------------------------------

def test_drgn_types_as_value_types() -> None:
    drgn = pytest.importorskip("drgn", reason="needs drgn (pip install drgn: scripts/bootstrap.sh)")
    from bpflbr_shell.symbols.user import value_type

    prog = drgn.Program(drgn.host_platform)
    int_t = prog.int_type("int", 4, True)
    uint_t = prog.int_type("unsigned int", 4, False)
    char_t = prog.int_type("char", 1, True)
    size_t = prog.typedef_type("size_t", prog.int_type("unsigned long", 8, False))
    ssize_t = prog.typedef_type("ssize_t", prog.typedef_type("__ssize_t",
                                                             prog.int_type("long", 8, True)))
    assert value_type(int_t) == ValueType(4, True, False, "int")
    assert value_type(uint_t) == ValueType(4, False, False, "unsigned int")
    assert value_type(char_t).present(0xFF) == -1
    assert value_type(size_t) == ValueType(8, False, False, "size_t")
    assert value_type(ssize_t) == ValueType(8, True, False, "ssize_t")
    assert value_type(prog.int_type("int", 4, True, qualifiers=drgn.Qualifiers.CONST)) == \
        ValueType(4, True, False, "const int")
    assert value_type(prog.bool_type("_Bool", 1)) == ValueType(1, False, False, "_Bool")
    assert value_type(prog.pointer_type(char_t)) == ValueType(8, False, True, "char *", True)
    # what the probe may copy as a C string: pointers to char (through typedefs, const)
    gchar = prog.typedef_type("gchar", char_t, qualifiers=drgn.Qualifiers.CONST)
    assert value_type(prog.pointer_type(gchar)).string
    assert not value_type(prog.pointer_type(prog.pointer_type(char_t))).string  # char **
    assert not value_type(prog.pointer_type(prog.void_type())).string
    assert not value_type(prog.pointer_type(int_t)).string
    assert value_type(prog.void_type()) == VOID
    assert value_type(prog.float_type("double", 8)) is None
    assert value_type(prog.struct_type("s", 8, ())) is None
    senum = prog.enum_type("e", int_t, (drgn.TypeEnumerator("E_NEG", -1),))
    uenum = prog.enum_type("u", uint_t, (drgn.TypeEnumerator("U", 1),))
    assert value_type(senum) == ValueType(4, True, False, "enum e")
    assert value_type(uenum).present(0xFFFFFFFF) == 2**32 - 1
    assert value_type(prog.enum_type("incomplete")) is None


# ---- rendering through a signature --------------------------------------------------------------

def event(kind: str = "exit", args: tuple[int, ...] = (), retval: int | None = None) -> Event:
    return Event("uretprobe target:sub", kind, 1000, 42, 42, 0, "target", 0x401000,
                 list(args), retval, 5 if kind == "exit" else None, -95, func="sub")


def no_symbols(ev: Event, addr: int) -> Location:
    return Location(addr)


SUB = Signature((("a", INT), ("b", INT)), INT)


def test_format_call_presents_through_types() -> None:
    ev = event(args=(1, 2), retval=0xFFFFFFFF)
    assert format_call(ev, SUB) == "sub(a=1, b=2) = -1"
    assert format_call(event(args=(0xFFFFFFFF, 12), retval=11), SUB) == \
        "sub(a=-1, b=12) = 11"  # a typed int: decimal only
    # names only: raw registers in hex, retval as the signed register (and its hex)
    assert format_call(ev, ["a", "b"]) == "sub(a=0x1, b=0x2) = 4294967295 (0xffffffff)"
    # nothing known: the registers are said to be registers, not a prototype
    assert format_call(ev, None) == "sub(raw regs: 0x1, 0x2) = 4294967295 (0xffffffff)"
    ptr = Signature((("p", PTR), ("n", U32)), PTR)
    assert format_call(event(args=(0x7FFD0000, 0xFFFFFFFF), retval=0x5000), ptr) == \
        "sub(p=0x7ffd0000, n=4294967295) = 0x5000"
    size = Signature((("fd", INT), ("buf", ValueType(8, False, True, "void *")),
                      ("count", ULONG)), LONG)
    assert format_call(event(args=(3, 0x7FFD0000, 832), retval=832), size) == \
        "sub(fd=3, buf=0x7ffd0000, count=832) = 832"
    # variadic (int open(const char *, int, ...)): typed where the prototype says, then '...'
    opn = Signature((("file", PTR), ("oflag", INT)), INT, variadic=True)
    assert format_call(event(args=(0x1000, 0, 0x1B6), retval=0xFFFFFFFF), opn) == \
        "sub(file=0x1000, oflag=0, ...) = -1"
    assert format_call(event("entry", (3, 4)), SUB) == "sub(a=3, b=4)"


@pytest.mark.parametrize("sort_keys", [True, False])
def test_json_presents_through_types_and_fast_path_agrees(sort_keys: bool) -> None:
    opts = RenderOptions()
    cases = [
        (event(args=(1, 0xFFFFFFFF_FFFFFFFE), retval=0xFFFFFFFF), SUB,
         {"a": 1, "b": -2}, -1),
        (event(args=(1, 2), retval=M64), ["a", "b"], {"a": 1, "b": 2}, -1),
        (event(args=(1, 2), retval=0xFFFFFFFF), None, [1, 2], 0xFFFFFFFF),
        (event("entry", (0xFFFFFFFF,)), SUB, {"a": -1}, None),
        (event(args=(1,), retval=M64), Signature((("p", PTR),), PTR), {"p": 1}, M64),
    ]
    for ev, params, args, retval in cases:
        js = event_to_json(ev, no_symbols, opts, params)
        assert (js["args"], js["retval"]) == (args, retval)
        assert event_json(ev, no_symbols, opts, params, sort_keys=sort_keys) == \
            json.dumps(js, sort_keys=sort_keys)


# ---- placing a uprobe's binary in a vanished process ---------------------------------------------

class FakeImage:
    """What UserSymbolizer asks of a BinaryImage, without a file."""

    path = "/bin/target"
    file = "/nonexistent/bpflbr-test/target"  # gone from disk: what was read stays

    def __init__(self, funcs: dict[str, int]) -> None:
        self.funcs = funcs
        self.text = (0x1000, 0x3000)

    def function_addrs(self, name: str) -> list[int]:
        return [self.funcs[name]] if name in self.funcs else []

    def lookup(self, link_addr: int) -> tuple[str, int, None, None, None] | None:
        best = max((a, n) for n, a in self.funcs.items() if a <= link_addr)
        return (best[1], link_addr - best[0], None, None, None)

    def signature(self, func: str) -> Signature | None:
        return SUB if func in self.funcs else None


GONE = 0x7FFFFFF0  # above pid_max: never a process


def symbolizer_with(image: FakeImage) -> object:
    from bpflbr_shell.symbols.user import UserSymbolizer

    us = UserSymbolizer()
    us._images[image.path] = image  # noqa: SLF001 - the seam for a file-less image
    return us


def test_vanished_process_placed_from_the_probed_function() -> None:
    from bpflbr_shell.symbols.user import ProbeSite

    image = FakeImage({"add": 0x1199, "sub": 0x11CD, "main": 0x122F})
    us = symbolizer_with(image)
    bias = 0x5555_0000_0000
    us.prepare(GONE, bias + 0x11CD, ProbeSite(image.path, ("add", "sub")))
    loc = us.symbolize(GONE, bias + 0x1240)  # a return address in main
    assert (loc.func, loc.offset) == ("main", 0x11)
    assert us.symbolize(GONE, bias + 0x11CD).func == "sub"
    assert us.signature(GONE, "sub", bias + 0x11CD) == SUB
    assert us.params(GONE, "sub") == ["a", "b"]
    assert us.symbolize(GONE, bias + 0x3000).func is None  # past the binary's text
    assert us.symbolize(GONE, 0x7F00_0000_1000).func is None  # libc of a gone process


def test_ambiguous_probe_is_not_guessed() -> None:
    """Two attached functions a page apart: func_ip fits either with a page-aligned bias."""
    from bpflbr_shell.symbols.user import ProbeSite

    image = FakeImage({"f": 0x1100, "g": 0x2100})
    us = symbolizer_with(image)
    us.prepare(GONE, 0x5555_0000_2100, ProbeSite(image.path, ("f", "g")))
    assert us.symbolize(GONE, 0x5555_0000_2100).func is None
    # a misaligned candidate is no candidate: only g fits here
    us = symbolizer_with(image)
    us.prepare(GONE, 0x5555_0000_2100, ProbeSite(image.path, ("g", "nope")))
    assert us.symbolize(GONE, 0x5555_0000_2100).func == "g"
    us = symbolizer_with(image)
    us.prepare(GONE, 0x5555_0000_2180, ProbeSite(image.path, ("f", "g")))  # fits neither
    assert us.symbolize(GONE, 0x5555_0000_2180).func is None


def test_elf_segments_of_a_real_binary() -> None:
    """load_segments on the interpreter running this test: PT_LOADs, one executable."""
    import sys

    from bpflbr_shell.symbols.user import load_segments

    segs = load_segments(sys.executable)
    assert any(s.exec for s in segs)
    assert all(s.offset % 4096 == s.vaddr % 4096 for s in segs)  # ELF's congruence rule
    with pytest.raises(ValueError, match="not an ELF"):
        load_segments(__file__)
