"""A compact, read-only index of ``/proc/kallsyms``: address -> symbol, name -> addresses.

Why this shape (measured on a 6.18 kernel with ~122k symbols, see ``bench/bench_symbols.py``):
a list of per-symbol tuples or ``str`` objects costs ~30 MB and ~65 ms to build; here the lines
are sorted as bytes (fixed-width lowercase hex sorts numerically), addresses go into one
``array('Q')`` for :func:`bisect`, and the sorted lines themselves are kept as one ``bytes`` blob
plus an ``array('I')`` of line offsets. Name, type letter and module are sliced out of the blob
only when a lookup needs them, and name searches run as ``bytes.find``/``re`` over the blob, so
the index holds ~7 MB (+9 MB RSS, peak +18 MB, ~50 ms of which ~22 ms is the kernel producing
the text) and no per-symbol Python objects.
"""

from __future__ import annotations

import io
import re
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate

from bpflbr_shell.errors import KernelDataError, NotFoundError, PrivilegeError

TEXT_TYPES = frozenset("tTwW")
"""Type letters of code symbols; ``[bpf]`` entries are ``t`` too."""
_TEXT_BYTES = frozenset(b"tTwW")

LAST_SYMBOL_CAP = 0x4000
"""Largest size guessed for the last symbol of a module or ``[bpf]`` region, whose end kallsyms
does not tell. vmlinux functions on 6.18 are < 21 KiB (p99.9 ~5 KiB); BPF programs are best
sized from their prog info, which :mod:`bpflbr_shell.symbols.kernel` consults first."""

# Section markers that end a vmlinux text region: nothing executable lies between one of these
# and the next symbol (e.g. ``__entry_text_end`` is followed by ~1 MiB of padding).
_END_MARKER = re.compile(r"_etext|_einittext|__\w+_text_end")
_END_SUFFIXES = ("_etext", "_einittext", "_text_end")  # cheap gate before the regex
# Markers that start a region: real code at the same address is a better name for it.
_START_MARKER = re.compile(r"_stext|_text|_sinittext|__\w+_text_start")


@dataclass(frozen=True, slots=True)
class KSym:
    """One kallsyms symbol. ``size`` is an estimate: the distance to the next symbol, capped at
    region ends, because kallsyms carries no sizes."""

    name: str
    addr: int
    size: int
    module: str | None  # None for vmlinux, "bpf" for [bpf], else the module name
    type: str  # kallsyms type letter: t/T/w/W code, d/D/r/R/b/B data

    @property
    def end(self) -> int:
        return self.addr + self.size

    @property
    def is_text(self) -> bool:
        return self.type in TEXT_TYPES


def _glob_to_regex(glob: str) -> bytes:
    """Shell glob -> regex over one kallsyms name field (names never contain whitespace)."""
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        i += 1
        if c == "*":
            out.append(r"\S*")
        elif c == "?":
            out.append(r"\S")
        elif c == "[":
            j = glob.find("]", i + 1 if i < n and glob[i] in "!^" else i)
            if j < 0:
                out.append(r"\[")
                continue
            body = glob[i:j]
            i = j + 1
            neg = body[:1] in ("!", "^")
            if neg:
                body = body[1:]
            body = body.replace("\\", "\\\\").replace("]", r"\]")
            out.append(f"[{'^' if neg else ''}{body}]")
        else:
            out.append(re.escape(c))
    return "".join(out).encode()


class KallsymsIndex:
    """Sorted kallsyms with O(log n) address lookup and blob-scan name search.

    Build with :meth:`load` (the live kernel) or :meth:`from_text` (fixtures, recordings).
    """

    __slots__ = ("_addrs", "_offs", "_blob", "_w", "_mods", "source")

    def __init__(self, addrs: array, offs: array, blob: bytes, width: int, source: str) -> None:
        self._addrs = addrs  # array('Q'), ascending
        self._offs = offs  # array('I'), len(addrs)+1 line starts in _blob
        self._blob = blob  # sorted kallsyms lines, each ending in b"\n"
        self._w = width  # hex digits in an address column
        self._mods: dict[bytes, str] = {}  # raw "[mod]" field -> module name, filled lazily
        self.source = source

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def from_text(cls, text: str | bytes, source: str = "<text>") -> KallsymsIndex:
        """Index kallsyms text (pure: no file or kernel access).

        Blank lines and ``#`` comments are ignored (fixtures carry a provenance header).
        Raises :class:`PrivilegeError` when every address is zero: that text was read without
        the privilege to see addresses and would map every address to nonsense.
        """
        data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
        lines = data.splitlines(keepends=True)
        if lines and not lines[-1].endswith(b"\n"):
            lines[-1] += b"\n"
        return cls._build(lines, source)

    @classmethod
    def _build(cls, lines: list[bytes], source: str) -> KallsymsIndex:
        """Build from kallsyms lines, each ending in a newline (consumed: sorted and emptied)."""
        # Equal-width lowercase hex sorts numerically as bytes, so one C-level sort orders all.
        lines.sort()
        # Blank lines and comments ('#', or any first byte below '0') sorted to the front.
        skip = 0
        while skip < len(lines) and (not lines[skip] or lines[skip][0] < 0x30):
            skip += 1
        if skip:
            del lines[:skip]
        if not lines:
            return cls(array("Q"), array("I", [0]), b"", 16, source)
        width = lines[0].find(b" ")
        if width <= 0:
            raise KernelDataError(f"{source}: not kallsyms text: {lines[0][:60]!r}")
        try:
            # a generator, not a list: 122k transient ints would add ~6 MB to the peak
            addrs = array("Q", (int(ln[:width], 16) for ln in lines))
        except ValueError as e:
            raise KernelDataError(f"{source}: malformed kallsyms line ({e})") from None
        if addrs[-1] == 0:
            raise PrivilegeError(
                f"{source}: all kallsyms addresses are zero (hidden by kernel.kptr_restrict)",
                "run as root, or set sysctl kernel.kptr_restrict=0",
            )
        offs = array("I", accumulate((len(ln) for ln in lines), initial=0))
        # BytesIO, not b"".join: join takes an 80-byte Py_buffer per item (+10 MB peak here)
        buf = io.BytesIO()
        buf.writelines(lines)
        lines.clear()
        blob = buf.getvalue()
        return cls(addrs, offs, blob, width, source)

    @classmethod
    def load(cls, path: str = "/proc/kallsyms") -> KallsymsIndex:
        """Index the running kernel's symbols (or a saved copy at ``path``)."""
        lines: list[bytes] = []
        try:
            with open(path, "rb") as f:
                # Split chunk by chunk so the whole 5 MB text never sits beside its 122k lines:
                # that keeps the build's peak RSS ~10 MB lower.
                tail = b""
                while chunk := f.read(1 << 18):
                    parts = (tail + chunk).splitlines(keepends=True)
                    tail = b"" if parts[-1].endswith(b"\n") else parts.pop()
                    lines.extend(parts)
                if tail:
                    lines.append(tail + b"\n")
        except FileNotFoundError:
            raise NotFoundError(f"{path}: no such file", "is /proc mounted?") from None
        except PermissionError:
            raise PrivilegeError(f"{path}: permission denied", "run as root") from None
        if not any(ln.strip() for ln in lines):
            raise KernelDataError(f"{path}: empty")
        return cls._build(lines, source=path)

    # ---- per-entry access (everything is sliced out of the blob on demand) ---------------

    def __len__(self) -> int:
        return len(self._addrs)

    def _type(self, i: int) -> str:
        return chr(self._blob[self._offs[i] + self._w + 1])

    def _mod_raw(self, i: int) -> bytes:
        """The raw ``[module]`` field of entry ``i`` (b"" for vmlinux); compared as bytes so a
        lookup decodes only the one module name it returns."""
        start, end = self._offs[i] + self._w + 3, self._offs[i + 1] - 1
        tab = self._blob.find(b"\t", start, end)
        return b"" if tab < 0 else self._blob[tab + 1 : end]

    def _module_name(self, raw: bytes) -> str | None:
        mod = self._mods.get(raw)
        if mod is None and raw:
            text = raw.strip()
            if text[:1] == b"[" and text[-1:] == b"]":
                text = text[1:-1]
            mod = self._mods[raw] = text.decode("utf-8", "surrogateescape")
        return mod

    def _name_module(self, i: int) -> tuple[str, str | None]:
        start, end = self._offs[i] + self._w + 3, self._offs[i + 1] - 1
        tab = self._blob.find(b"\t", start, end)
        name = self._blob[start : end if tab < 0 else tab].decode("utf-8", "surrogateescape")
        return name, None if tab < 0 else self._module_name(self._blob[tab + 1 : end])

    def _rank(self, i: int) -> tuple[bool, int, int]:
        """Preference among symbols sharing one address (higher wins): code over data, real
        functions over start markers over end markers (code follows ``__split_text_start`` even
        when ``__split_text_end`` shares its address), fewer leading underscores (memcpy over
        __memcpy)."""
        name, _ = self._name_module(i)
        kind = 0 if _END_MARKER.fullmatch(name) else 1 if _START_MARKER.fullmatch(name) else 2
        return (self._type(i) in TEXT_TYPES, kind, -(len(name) - len(name.lstrip("_"))))

    def _ksym(self, i: int, best: int) -> KSym:
        """KSym for entry ``best`` of the same-address group whose last entry is ``i``."""
        addrs = self._addrs
        addr = addrs[i]
        start, end = self._offs[best] + self._w + 3, self._offs[best + 1] - 1
        blob = self._blob
        tab = blob.find(b"\t", start, end)
        name = blob[start : end if tab < 0 else tab].decode("utf-8", "surrogateescape")
        mod_raw = b"" if tab < 0 else blob[tab + 1 : end]
        if i + 1 < len(addrs):
            size = addrs[i + 1] - addr
            if self._mod_raw(i + 1) != mod_raw:
                size = min(size, LAST_SYMBOL_CAP)
        else:
            size = LAST_SYMBOL_CAP
        module = self._module_name(mod_raw) if mod_raw else None
        return KSym(name, addr, size, module, chr(blob[start - 2]))

    def _group_start(self, i: int) -> int:
        addrs, a = self._addrs, self._addrs[i]
        j = i
        while j > 0 and addrs[j - 1] == a:
            j -= 1
        return j

    # ---- queries -----------------------------------------------------------------------

    def lookup(self, addr: int) -> KSym | None:
        """The code symbol containing ``addr``, or None.

        None when the nearest symbol below is data, a text-section end marker (``_etext``,
        ``__entry_text_end``, ...), or when ``addr`` lies past the capped size of the last
        symbol of a module/``[bpf]`` region: better unknown than ``foo+0x3f2a1c``.
        """
        addrs = self._addrs
        i = bisect_right(addrs, addr) - 1
        if i < 0:
            return None
        if i and addrs[i - 1] == addrs[i]:
            best = max(range(self._group_start(i), i + 1), key=self._rank)
        else:
            best = i
        if self._blob[self._offs[best] + self._w + 1] not in _TEXT_BYTES:
            return None
        sym = self._ksym(i, best)
        if addr >= sym.addr + sym.size:
            return None
        if sym.name.endswith(_END_SUFFIXES) and _END_MARKER.fullmatch(sym.name):
            return None
        return sym

    def symbol_at(self, index: int) -> KSym:
        """Entry ``index`` in address order (0 <= index < len), whatever its type."""
        if not 0 <= index < len(self._addrs):
            raise IndexError(index)
        last = bisect_right(self._addrs, self._addrs[index]) - 1
        return self._ksym(last, index)

    def __iter__(self) -> Iterator[KSym]:
        """All entries in address order (duplicates included), for tests and recordings."""
        for i in range(len(self._addrs)):
            yield self.symbol_at(i)

    def _find_name(self, name: str) -> Iterator[int]:
        """Indexes of entries called ``name``: two ``bytes.find`` scans (~2 ms each) instead of a
        name dict that would cost ~10 MB for the rare by-name query."""
        if not name or any(c.isspace() for c in name):
            return
        key = name.encode("utf-8", "surrogateescape")
        blob, offs = self._blob, self._offs
        for term in (b"\n", b"\t"):
            needle = b" " + key + term
            pos = blob.find(needle)
            while pos >= 0:
                i = bisect_right(offs, pos) - 1
                # the space must be the one after the type letter, not part of another field
                if pos == offs[i] + self._w + 2:
                    yield i
                pos = blob.find(needle, pos + 1)

    def addresses_of(self, name: str) -> list[int]:
        """Every address of ``name``, ascending (static functions can repeat a name)."""
        return sorted({self._addrs[i] for i in self._find_name(name)})

    def address_of(self, name: str) -> int | None:
        """The lowest address of ``name``, or None. Use :meth:`addresses_of` when a static name
        may repeat."""
        found = self.addresses_of(name)
        return found[0] if found else None

    def symbols_named(self, name: str) -> list[KSym]:
        """Every entry called ``name``, in address order."""
        out = []
        for i in sorted(self._find_name(name)):
            out.append(self._ksym(bisect_right(self._addrs, self._addrs[i]) - 1, i))
        return out

    def at_address(self, addr: int) -> list[KSym]:
        """Every entry at exactly ``addr`` (aliases: ``__x64_sys_getpid`` and
        ``__do_sys_getpid`` are one function), in line order."""
        lo = bisect_left(self._addrs, addr)
        hi = bisect_right(self._addrs, addr)
        return [self._ksym(hi - 1, i) for i in range(lo, hi)]

    def symbols_matching(self, glob: str, text_only: bool = True) -> list[KSym]:
        """Every entry whose name matches a shell glob, in address order: one regex scan of
        the blob, so a glob over thousands of names costs what one name does."""
        types = rb"[tTwW]" if text_only else rb"\S"
        rx = re.compile(rb"(?m)^[0-9a-f]+ " + types + rb" " + _glob_to_regex(glob)
                        + rb"(?=[\t\n])")
        out = []
        offs = self._offs
        for m in rx.finditer(self._blob):
            i = bisect_right(offs, m.start()) - 1
            out.append(self._ksym(bisect_right(self._addrs, self._addrs[i]) - 1, i))
        return out

    def names_matching(
        self, glob: str, limit: int | None = 100, text_only: bool = True
    ) -> list[str]:
        """Sorted distinct names matching a shell glob (``tcp_v4_*``), for completion and
        selectors. A literal prefix makes this ~4 ms; a leading ``*`` ~50 ms."""
        types = rb"[tTwW]" if text_only else rb"\S"
        rx = re.compile(rb" " + types + rb" (" + _glob_to_regex(glob) + rb")(?=[\t\n])")
        names = sorted({m.decode("utf-8", "surrogateescape") for m in rx.findall(self._blob)})
        return names if limit is None else names[:limit]
