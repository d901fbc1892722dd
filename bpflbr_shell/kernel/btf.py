"""A small, pure parser for raw BTF blobs: names, strings, and C prototypes of functions.

We parse the bytes ourselves instead of calling libbpf's btf__* API so the same code decodes a
live program, a recorded fixture and a recording loaded on another machine, without root.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from bpflbr_shell.errors import KernelDataError
from bpflbr_shell.kernel.values import VOID, Member, Signature, ValueType

BTF_MAGIC = 0xEB9F

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_FWD = 1, 2, 3, 4, 5, 6, 7
KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_FUNC, KIND_FUNC_PROTO = (
    8, 9, 10, 11, 12, 13)
KIND_VAR, KIND_DATASEC, KIND_FLOAT, KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = (
    14, 15, 16, 17, 18, 19)

# bytes of kind-specific data after the 12-byte common header: (fixed, per-vlen-member)
_TRAILER = {
    KIND_INT: (4, 0), KIND_ARRAY: (12, 0), KIND_STRUCT: (0, 12), KIND_UNION: (0, 12),
    KIND_ENUM: (0, 8), KIND_FUNC_PROTO: (0, 8), KIND_VAR: (4, 0), KIND_DATASEC: (0, 12),
    KIND_DECL_TAG: (4, 0), KIND_ENUM64: (0, 12),
}
_MODIFIERS = {KIND_CONST: "const", KIND_VOLATILE: "volatile", KIND_RESTRICT: "restrict"}
# what a value's type is made of, not what it is: skipped to reach the type that says how
_TRANSPARENT = (KIND_TYPEDEF, KIND_CONST, KIND_VOLATILE, KIND_RESTRICT, KIND_TYPE_TAG)
# KIND_INT's encoding word (btf.rst): BTF_INT_ENCODING(VAL) = (VAL & 0x0f000000) >> 24
BTF_INT_SIGNED, BTF_INT_CHAR, BTF_INT_BOOL = 1 << 0, 1 << 1, 1 << 2
POINTER_SIZE = 8  # BTF PTR has no size; the targets we trace are 64-bit


@dataclass(frozen=True, slots=True)
class BtfType:
    id: int
    kind: int
    name: str
    vlen: int
    kind_flag: bool
    ref: int  # "type" for refs/funcs/protos; size for ints, structs, enums
    # array: (elem_type, index_type, nelems); int: (encoding,); struct/union: (where its
    # members start in the blob,), read when asked (vmlinux has ~10k structs)
    extra: tuple[int, ...]
    params: tuple[tuple[str, int], ...]  # FUNC_PROTO: (name, type_id)


MODULE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
SYSFS_BTF = "/sys/kernel/btf"


def load_module_btf(module: str, base: Btf, root: str = SYSFS_BTF) -> Btf | None:
    """A loaded module's BTF (``root/<module>``) on top of vmlinux's; None when the module
    has none (or the name could not be a module's: it is never used as a path then)."""
    if not MODULE_NAME.fullmatch(module) or module in (".", ".."):
        return None
    try:
        with open(f"{root}/{module}", "rb") as f:
            return Btf.parse(f.read(), base)
    except (OSError, KernelDataError):
        return None


class Btf:
    """Types and strings of one BTF object. Type 0 is ``void``.

    A module's BTF is *split* BTF on top of vmlinux's (``/sys/kernel/btf/<module>``): its type
    ids continue after the base's last one and its string offsets after the base's strings,
    so with ``base`` the types and strings of both are one id and offset space, as the kernel
    sees them (``attach_btf_id`` of a module function is such an id)."""

    def __init__(self, types: list[BtfType | None], strings: bytes,
                 base: Btf | None = None) -> None:
        self.types = types
        self.strings = strings
        self.base = base
        self.first_id = len(base.types) if base is not None else 1  # this object's own types
        self.blob = b""  # the parsed bytes: struct members are read from them when asked

    @classmethod
    def parse(cls, blob: bytes, base: Btf | None = None) -> Btf:
        if len(blob) < 24:
            raise KernelDataError(f"BTF blob too short ({len(blob)} bytes)")
        magic, _ver, _flags, hdr_len = struct.unpack_from("<HBBI", blob, 0)
        if magic != BTF_MAGIC:
            raise KernelDataError(f"bad BTF magic {magic:#x}")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
        strings = blob[hdr_len + str_off : hdr_len + str_off + str_len]
        if base is None:
            btf = cls([None], strings)
        else:  # one id and offset space with the base (copies of references and bytes)
            btf = cls(list(base.types), base.strings + strings, base)
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        tid = btf.first_id
        while pos < end:
            name_off, info, ref = struct.unpack_from("<III", blob, pos)
            pos += 12
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            fixed, per = _TRAILER.get(kind, (0, 0))
            extra: tuple[int, ...] = ()
            params: tuple[tuple[str, int], ...] = ()
            if kind == KIND_ARRAY:
                extra = struct.unpack_from("<III", blob, pos)
            elif kind == KIND_INT:
                extra = struct.unpack_from("<I", blob, pos)
            elif kind in (KIND_STRUCT, KIND_UNION):
                extra = (pos,)
            elif kind == KIND_FUNC_PROTO:
                params = tuple(
                    (btf.string(p_name), p_type)
                    for p_name, p_type in struct.iter_unpack("<II", blob[pos : pos + 8 * vlen])
                )
            pos += fixed + per * vlen
            btf.types.append(
                BtfType(tid, kind, btf.string(name_off), vlen, bool(info >> 31), ref, extra, params)
            )
            tid += 1
        if pos != end:
            raise KernelDataError("BTF type section does not end on a type boundary")
        btf.blob = blob
        return btf

    def string(self, offset: int) -> str:
        """NUL-terminated string at ``offset`` of the string section ('' when out of range)."""
        if not 0 <= offset < len(self.strings):
            return ""
        end = self.strings.find(b"\0", offset)
        return self.strings[offset : end if end >= 0 else None].decode("utf-8", "replace")

    def type(self, type_id: int) -> BtfType | None:
        return self.types[type_id] if 0 < type_id < len(self.types) else None

    def func_id(self, name: str) -> int | None:
        """Type id of the FUNC called ``name`` (an index built on first use: vmlinux has
        ~60k functions)."""
        index = self.__dict__.get("_func_index")
        if index is None:  # this object's own functions (a module's), then its base's
            index = {t.name: t.id for t in self.types[self.first_id:]
                     if t is not None and t.kind == KIND_FUNC}
            self.__dict__["_func_index"] = index
        found = index.get(name)
        if found is None and self.base is not None:
            return self.base.func_id(name)
        return found

    def own_func_id(self, name: str) -> int | None:
        """Like :meth:`func_id`, but only this object's functions (a module's own)."""
        found = self.func_id(name)
        return found if found is not None and found >= self.first_id else None

    def func_name(self, type_id: int) -> str | None:
        t = self.type(type_id)
        return t.name if t and t.kind == KIND_FUNC else None

    def func_prototype(self, type_id: int) -> str | None:
        """C declaration of a FUNC, e.g. ``int sf(struct __sk_buff *skb)``."""
        t = self.type(type_id)
        if t is None or t.kind != KIND_FUNC:
            return None
        return self.declaration(t.ref, t.name)

    def func_params(self, type_id: int) -> list[tuple[str, str]]:
        """``(name, C type)`` of each parameter of a FUNC."""
        t = self.type(type_id)
        proto = self.type(t.ref) if t and t.kind == KIND_FUNC else None
        if proto is None or proto.kind != KIND_FUNC_PROTO:
            return []
        return [(name, self.declaration(ptype, "")) for name, ptype in proto.params]

    def value_type(self, type_id: int) -> ValueType | None:
        """How a value of ``type_id`` is presented: typedefs, modifiers and type tags
        resolved down to an int, enum or pointer; None for what has no integer reading
        (struct/union by value, float, a bad id). Type 0 is void."""
        if type_id == 0:
            return VOID
        name = ""
        t = self.type(type_id)
        for _ in range(32):
            if t is None or t.kind not in _TRANSPARENT:
                break
            name = name or (t.name if t.kind == KIND_TYPEDEF else "")
            if t.ref == 0:  # const void: only behind a pointer, but be total
                return VOID
            t = self.type(t.ref)
        if t is None:
            return None
        name = name or t.name or ("enum" if t.kind in (KIND_ENUM, KIND_ENUM64) else "")
        if t.kind == KIND_INT:
            enc = (t.extra[0] >> 24) & 0x0F if t.extra else 0
            return ValueType(t.ref, bool(enc & BTF_INT_SIGNED), False, name)
        if t.kind in (KIND_ENUM, KIND_ENUM64):  # kind_flag: signed values (btf.rst)
            return ValueType(t.ref, t.kind_flag, False, name)
        if t.kind == KIND_PTR:
            target = self.resolve(t.ref)
            pointee = (BtfAggregate(self, target.id) if target is not None
                       and target.kind in (KIND_STRUCT, KIND_UNION, KIND_FWD) else None)
            chars = target is not None and target.kind == KIND_INT and target.ref == 1
            return ValueType(POINTER_SIZE, False, True, name or self.declaration(t.id, ""),
                             string=chars, pointee=pointee)
        return None

    def resolve(self, type_id: int) -> BtfType | None:
        """The type ``type_id`` names once typedefs, modifiers and type tags are gone."""
        t = self.type(type_id)
        for _ in range(32):
            if t is None or t.kind not in _TRANSPARENT:
                return t
            t = self.type(t.ref)
        return None

    def members(self, type_id: int) -> list[tuple[str, int, int]]:
        """``(name, type id, offset word)`` of each member of a struct or union, as BTF
        stores them ('' for an anonymous member)."""
        if type_id < self.first_id and self.base is not None:
            return self.base.members(type_id)
        t = self.type(type_id)
        if t is None or t.kind not in (KIND_STRUCT, KIND_UNION) or not t.extra:
            return []
        pos = t.extra[0]
        return [(self.string(n), ty, off)
                for n, ty, off in struct.iter_unpack("<III", self.blob[pos:pos + 12 * t.vlen])]

    def complete_aggregate(self, t: BtfType) -> BtfType:
        """A forward declaration's full definition when this BTF has one by that name."""
        if t.kind != KIND_FWD or not t.name:
            return t
        index = self.__dict__.get("_aggregate_index")
        if index is None:
            index = {}
            for cand in self.types[1:]:
                if cand is not None and cand.kind in (KIND_STRUCT, KIND_UNION) and cand.name:
                    index.setdefault((cand.kind == KIND_UNION, cand.name), cand)
            self.__dict__["_aggregate_index"] = index
        return index.get((t.kind_flag, t.name), t)

    def func_signature(self, type_id: int) -> Signature | None:
        """Parameter names (``argN`` when unnamed) and value types, and the return type, of
        a FUNC; None when ``type_id`` is not a FUNC with a prototype."""
        t = self.type(type_id)
        proto = self.type(t.ref) if t and t.kind == KIND_FUNC else None
        if proto is None or proto.kind != KIND_FUNC_PROTO:
            return None
        params = tuple((name or f"arg{i}", self.value_type(ptype))
                       for i, (name, ptype) in enumerate(proto.params)
                       if not (ptype == 0 and not name))  # a trailing '...' takes no register
        return Signature(params, self.value_type(proto.ref))

    def declaration(self, type_id: int, decl: str, depth: int = 0) -> str:
        """C declarator of ``decl`` having type ``type_id`` (inside-out, as C reads)."""
        if depth > 32:
            return f"? {decl}".rstrip()
        if type_id == 0:
            return f"void {decl}".rstrip()
        t = self.type(type_id)
        if t is None:
            return f"<type {type_id}> {decl}".rstrip()
        if t.kind == KIND_PTR:
            target = self.type(t.ref)
            inner = f"*{decl}"
            if target and target.kind in (KIND_ARRAY, KIND_FUNC_PROTO):
                inner = f"(*{decl})"
            return self.declaration(t.ref, inner, depth + 1)
        if t.kind in _MODIFIERS:
            word = _MODIFIERS[t.kind]
            target = self.type(t.ref)
            if target is not None and target.kind == KIND_PTR:
                return self.declaration(t.ref, f"{word} {decl}".rstrip(), depth + 1)
            return f"{word} {self.declaration(t.ref, decl, depth + 1)}"
        if t.kind == KIND_TYPE_TAG:
            return self.declaration(t.ref, decl, depth + 1)
        if t.kind == KIND_ARRAY:
            return self.declaration(t.extra[0], f"{decl}[{t.extra[2]}]", depth + 1)
        if t.kind == KIND_FUNC_PROTO:
            parts = [
                "..." if p == 0 and not n else self.declaration(p, n, depth + 1)
                for n, p in t.params
            ]
            params = ", ".join(parts) or "void"
            return self.declaration(t.ref, f"{decl}({params})", depth + 1)
        if t.kind == KIND_FUNC:
            return self.declaration(t.ref, t.name, depth + 1)
        base = {
            KIND_STRUCT: "struct ", KIND_UNION: "union ", KIND_ENUM: "enum ", KIND_ENUM64: "enum ",
        }.get(t.kind, "")
        if t.kind == KIND_FWD:
            base = "union " if t.kind_flag else "struct "
        name = f"{base}{t.name or '(anon)'}"
        return f"{name} {decl}".rstrip()


class BtfAggregate:
    """A struct or union of a BTF object, as filters walk it (kernel.values.Aggregate):
    members found by name, anonymous members' own included at their real offsets."""

    def __init__(self, btf: Btf, type_id: int) -> None:
        self.btf = btf
        found = btf.type(type_id)
        self.type = btf.complete_aggregate(found) if found is not None else None

    @property
    def name(self) -> str:
        t = self.type
        if t is None:
            return "struct ?"
        union = t.kind == KIND_UNION or (t.kind == KIND_FWD and t.kind_flag)
        return f"{'union' if union else 'struct'} {t.name or '(anon)'}"

    @property
    def complete(self) -> bool:
        return self.type is not None and self.type.kind in (KIND_STRUCT, KIND_UNION)

    def member(self, name: str) -> Member | None:
        return self._find(self.type, name, 0, 0) if self.complete else None

    def member_names(self) -> list[str]:
        out: list[str] = []
        self._names(self.type, out, 0)
        return out

    def _names(self, t: BtfType | None, out: list[str], depth: int) -> None:
        if t is None or depth > 8:
            return
        for mname, mtype, _ in self.btf.members(t.id):
            if mname:
                out.append(mname)
            else:
                inner = self.btf.resolve(mtype)
                if inner is not None and inner.kind in (KIND_STRUCT, KIND_UNION):
                    self._names(inner, out, depth + 1)

    def _find(self, t: BtfType | None, name: str, base_bits: int, depth: int) -> Member | None:
        if t is None or depth > 8:
            return None
        for mname, mtype, word in self.btf.members(t.id):
            bits, bit_size = (word & 0xFFFFFF, word >> 24) if t.kind_flag else (word, 0)
            if not mname:  # an anonymous struct or union: C finds its members through it
                inner = self.btf.resolve(mtype)
                if inner is not None and inner.kind in (KIND_STRUCT, KIND_UNION):
                    found = self._find(inner, name, base_bits + bits, depth + 1)
                    if found is not None:
                        return found
                continue
            if mname == name:
                return self._member(mname, mtype, base_bits + bits, bit_size)
        return None

    def _member(self, name: str, type_id: int, bits: int, bit_size: int) -> Member:
        btf = self.btf
        c_type = btf.declaration(type_id, "")
        t = btf.resolve(type_id)
        if t is not None and t.kind == KIND_INT and not bit_size and t.extra:
            nr_bits, int_offset = t.extra[0] & 0xFF, (t.extra[0] >> 16) & 0xFF
            if nr_bits and nr_bits < t.ref * 8:  # an old-style bitfield: the int says so
                bit_size, bits = nr_bits, bits + int_offset
        if t is not None and t.kind in (KIND_STRUCT, KIND_UNION):
            return Member(name, bits // 8, None, c_type, embedded=BtfAggregate(btf, t.id))
        if t is not None and t.kind == KIND_ARRAY:
            elem = btf.resolve(t.extra[0])
            chars = elem is not None and elem.kind == KIND_INT and elem.ref == 1
            return Member(name, bits // 8, None, c_type, char_array=t.extra[2] if chars else 0)
        return Member(name, bits // 8, btf.value_type(type_id), c_type,
                      bit_shift=bits % 8 if bit_size else 0, bit_size=bit_size)


class KernelBtfs:
    """vmlinux's BTF and the loaded modules' (split on top of it), each parsed on first use:
    where kernel functions' prototypes come from, module functions included."""

    def __init__(self, vmlinux: Btf | None, root: str = SYSFS_BTF) -> None:
        self.vmlinux = vmlinux
        self.root = root
        self._modules: dict[str, Btf | None] = {}

    def of(self, module: str | None) -> Btf | None:
        """The BTF that describes a function of ``module`` (None: vmlinux)."""
        if module is None or self.vmlinux is None:
            return self.vmlinux
        if module not in self._modules:
            self._modules[module] = load_module_btf(module, self.vmlinux, self.root)
        return self._modules[module]

    def func(self, name: str, module: str | None) -> tuple[Btf, int] | None:
        """The BTF object and FUNC id of ``name``: a module's own function, or vmlinux's."""
        btf = self.of(module)
        if btf is None:
            return None
        type_id = btf.own_func_id(name) if module is not None else btf.func_id(name)
        return (btf, type_id) if type_id else None

    def signature(self, name: str, module: str | None) -> Signature | None:
        found = self.func(name, module)
        return found[0].func_signature(found[1]) if found else None
