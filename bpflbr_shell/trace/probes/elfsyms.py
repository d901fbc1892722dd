"""Function symbols of an ELF file and of its separate debug file, without bcc.

What BCC's ``get_user_functions_and_addresses`` reports (its ``bcc_foreach_function_symbol``):
every named, non-zero STT_FUNC / STT_GNU_IFUNC symbol of ``.symtab`` and ``.dynsym``, then
the same for the debug file found by build id or ``.gnu_debuglink`` (libc6-dbg's local
functions). Reading them here spares a trace ``import bcc`` (about 0.1 s) when its probe comes
from the probe cache.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import zlib
from collections.abc import Iterator

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
SHT_SYMTAB, SHT_NOTE, SHT_DYNSYM, SHT_NOBITS = 2, 7, 11, 8
STT_FUNC, STT_GNU_IFUNC = 2, 10
NT_GNU_BUILD_ID = 3
DEBUG_ROOT = "/usr/lib/debug"
MAX_SECTIONS = 1 << 16


class ElfError(ValueError):
    """Not an ELF64 little-endian file we can read."""


class _Elf:
    def __init__(self, path: str) -> None:
        with open(path, "rb") as f:
            try:  # mapped: only the headers and symbol tables are paged in
                self.data: bytes | mmap.mmap = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
            except ValueError:  # empty file
                self.data = b""
        d = self.data
        if len(d) < _EHDR.size or d[:4] != b"\x7fELF" or d[4] != 2 or d[5] != 1:
            raise ElfError(f"{path}: not a 64-bit little-endian ELF file")
        fields = _EHDR.unpack_from(d, 0)
        shoff, shentsize, shnum, shstrndx = fields[6], fields[11], fields[12], fields[13]
        if shnum > MAX_SECTIONS or (shnum and shentsize < _SHDR.size) or \
                shoff + shnum * shentsize > len(d):
            raise ElfError(f"{path}: bad section header table")
        self.sections = [_SHDR.unpack_from(d, shoff + i * shentsize) for i in range(shnum)]
        self.shstrndx = shstrndx

    def _bytes(self, index: int) -> bytes:
        sh = self.sections[index]
        if sh[1] == SHT_NOBITS:
            return b""
        return bytes(self.data[sh[4]:sh[4] + sh[5]])

    def section_name(self, index: int) -> str:
        if self.shstrndx >= len(self.sections):
            return ""
        names = self._bytes(self.shstrndx)
        start = self.sections[index][0]
        return names[start:names.find(b"\0", start)].decode(errors="replace")

    def functions(self) -> Iterator[tuple[bytes, int, bool]]:
        """(name, value, is_ifunc) of every named, non-zero function symbol."""
        for i, sh in enumerate(self.sections):
            if sh[1] not in (SHT_SYMTAB, SHT_DYNSYM) or sh[6] >= len(self.sections):
                continue
            table, strtab = self._bytes(i), self._bytes(sh[6])
            if (sh[9] or _SYM.size) != _SYM.size:
                continue  # ELF64 symbols are 24 bytes
            table = table[:len(table) - len(table) % _SYM.size]
            for name_off, info, _other, _shndx, value, _size in _SYM.iter_unpack(table):
                kind = info & 0xF
                if not value or not name_off or kind not in (STT_FUNC, STT_GNU_IFUNC):
                    continue
                end = strtab.find(b"\0", name_off)
                if end > name_off:
                    yield strtab[name_off:end], value, kind == STT_GNU_IFUNC

    def build_id(self) -> str | None:
        for i, sh in enumerate(self.sections):
            if sh[1] != SHT_NOTE:
                continue
            note, pos = self._bytes(i), 0
            while pos + 12 <= len(note):
                namesz, descsz, ntype = struct.unpack_from("<III", note, pos)
                name_end = pos + 12 + ((namesz + 3) & ~3)
                desc = note[name_end:name_end + descsz]
                if ntype == NT_GNU_BUILD_ID and note[pos + 12:pos + 12 + namesz] == b"GNU\0":
                    return desc.hex()
                pos = name_end + ((descsz + 3) & ~3)
        return None

    def debuglink(self) -> tuple[str, int] | None:
        for i in range(len(self.sections)):
            if self.section_name(i) == ".gnu_debuglink":
                raw = self._bytes(i)
                end = raw.find(b"\0")
                if end <= 0:
                    return None
                crc_at = (end + 4) & ~3
                if crc_at + 4 > len(raw):
                    return None
                return os.fsdecode(raw[:end]), struct.unpack_from("<I", raw, crc_at)[0]
        return None


def _crc_matches(path: str, crc: int) -> bool:
    value = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                value = zlib.crc32(chunk, value)
    except OSError:
        return False
    return value == crc


def debug_file(path: str, elf: _Elf | None = None) -> str | None:
    """The separate debug file gdb (and BCC) would use: by build id, else by debuglink."""
    elf = elf or _Elf(path)
    bid = elf.build_id()
    if bid and len(bid) > 2:
        candidate = f"{DEBUG_ROOT}/.build-id/{bid[:2]}/{bid[2:]}.debug"
        if os.path.isfile(candidate):
            return candidate
    link = elf.debuglink()
    if link is None:
        return None
    name, crc = link
    if "/" in name:
        return None
    where = os.path.dirname(os.path.realpath(path))
    for candidate in (f"{where}/{name}", f"{where}/.debug/{name}",
                      f"{DEBUG_ROOT}{where}/{name}"):
        if os.path.realpath(candidate) != os.path.realpath(path) and \
                os.path.isfile(candidate) and _crc_matches(candidate, crc):
            return candidate
    return None


def function_symbols(path: str, regex: str) -> list[tuple[str, int]]:
    """(name, address) of the functions whose name ``re.match``es ``regex``, in the file and
    its debug file (duplicates kept, as BCC reports them)."""
    return [(name, addr) for name, addr, _ in function_symbols_typed(path, regex)]


def function_symbols_typed(path: str, regex: str) -> list[tuple[str, int, bool]]:
    """:func:`function_symbols` with each symbol's STT_GNU_IFUNC flag: whether a uprobe there
    would sit on a resolver is known from the symbol table, without opening the DWARF."""
    pattern = re.compile(regex.encode("utf-8", "surrogateescape"))
    elf = _Elf(path)
    out = [(n.decode("utf-8", "surrogateescape"), v, i) for n, v, i in elf.functions()
           if pattern.match(n)]
    dbg = debug_file(path, elf)
    if dbg is not None:
        try:
            out += [(n.decode("utf-8", "surrogateescape"), v, i)
                    for n, v, i in _Elf(dbg).functions() if pattern.match(n)]
        except (OSError, ElfError):
            pass  # a broken debug file only costs its local symbols
    return out
