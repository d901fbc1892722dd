"""The probe cache: each compiled probe variant kept as plain data and loaded again without
clang or bcc, which is most of the time to a trace's first event.

An entry is JSON (never pickle: root loads it): per map its type, sizes, max_entries, flags
and name; per function the bytecode with each map fd turned back into the map's index, and
where the runtime knobs' placeholders sit. It is keyed by a hash of the inlined source, the
compile knobs, the kernel (release, version, headers used) and the BCC version. The cache
lives in a root-only directory (0700, files 0600, opened O_NOFOLLOW, owner and mode checked
on the open fd); a directory or file anyone else could have written is not used, and the
user is told once. Anything wrong with an entry means compiling again, said in one line.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpflbr_shell import safefile
from bpflbr_shell.kernel import libbpf
from bpflbr_shell.kernel.perf import close_all
from bpflbr_shell.trace.probes import bccprog
from bpflbr_shell.trace.probes.progobj import (
    RUNTIME_KNOBS,
    MapSpec,
    ProbeObject,
    imm,
    map_ref_slots,
    set_imms,
    split_knobs,
)

DEFAULT_ROOT = "/var/cache/bpflbr-shell/probes"
ENV_ROOT = "BPFLBR_SHELL_PROBE_CACHE"  # another directory, or "off"
FORMAT = 1
MAX_ENTRY = 8 << 20
MAX_FACT = 64 << 10
MAX_MAPS = 64
_KEY = re.compile(r"[0-9a-f]{64}")


class CorruptEntry(ValueError):
    """A cache entry that does not hold what this module writes."""


def _stderr_notice(message: str) -> None:
    sys.stderr.write(f"note: {message}\n")


# Where the one-line notices go; the shell may point it at its own warning line.
notice: Callable[[str], None] = _stderr_notice
_said: set[str] = set()


def say_once(kind: str, message: str) -> None:
    if kind not in _said:
        _said.add(kind)
        notice(message)


def bcc_version() -> str:
    """BCC's version without importing bcc (that costs ~0.1 s): its ``version.py`` as text."""
    try:
        spec = importlib.util.find_spec("bcc")
    except (ImportError, ValueError):
        return "none"
    if spec is None or not spec.submodule_search_locations:
        return "none"
    path = Path(list(spec.submodule_search_locations)[0]) / "version.py"
    try:
        m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", path.read_text())
    except OSError:
        return "unknown"
    return m.group(1) if m else "unknown"


def variant_key(source: str, knobs: dict[str, int]) -> str:
    """The hash naming one compiled variant (runtime knobs only as zero or placeholder)."""
    from bpflbr_shell.kernel.features import kernel_headers  # the one owner of this fact

    compiled, _ = split_knobs(knobs)
    uname = os.uname()
    headers = kernel_headers(uname.release)
    what = {
        "format": FORMAT, "source": source,
        "text": bccprog.inline_local_includes(bccprog.BPF_DIR / source),
        "cflags": bccprog.cflags_for(compiled), "release": uname.release,
        "version": uname.version, "machine": uname.machine,
        "headers": os.path.realpath(headers.tree) if headers.tree else "",
        "bcc": bcc_version(),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


# the entry: made from a fresh compile, checked when read ----------------------------------------
@dataclass(slots=True)
class Entry:
    key: str
    source: str
    maps: list[MapSpec]
    # name -> (bytecode with map indexes and placeholders, placeholder slots)
    functions: dict[str, tuple[bytes, dict[str, list[int]]]]

    @classmethod
    def from_object(cls, key: str, source: str, obj: bccprog.BccObject) -> Entry:
        specs = [spec for _fd, spec in obj.maps.values()]
        index = {fd: i for i, (fd, _spec) in enumerate(obj.maps.values())}
        functions = {}
        for name in obj.functions():
            insns, slots = obj._raw_func(name)
            functions[name] = (set_imms(insns, [(pc, index[imm(insns, pc)])
                                                for pc in map_ref_slots(insns)]), slots)
        return cls(key, source, specs, functions)

    def to_json(self) -> bytes:
        return json.dumps({
            "format": FORMAT, "key": self.key, "source": self.source,
            "maps": [{"name": m.name, "type": m.type, "key_size": m.key_size,
                      "value_size": m.value_size, "max_entries": m.max_entries,
                      "flags": m.flags} for m in self.maps],
            "functions": {name: {"insns": base64.b64encode(insns).decode(), "patch": slots}
                          for name, (insns, slots) in self.functions.items()},
        }, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, key: str) -> Entry:
        """Parse and check everything a load relies on; :class:`CorruptEntry` says what."""
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise CorruptEntry("not a format-1 entry")
            if doc.get("key") != key:
                raise CorruptEntry("its key does not match its name")
            maps = [_map_spec(m) for m in _list(doc["maps"], MAX_MAPS)]
            functions = {}
            raw_functions = doc["functions"]
            if not isinstance(raw_functions, dict) or not raw_functions:
                raise CorruptEntry("no functions")
            for name, f in raw_functions.items():
                insns = base64.b64decode(_str(f["insns"]), validate=True)
                slots = {k: [_int(pc) for pc in _list(v, 1 << 16)]
                         for k, v in _dict(f["patch"]).items()}
                _check_function(name, insns, slots, len(maps))
                functions[_str(name)] = (insns, slots)
            return cls(key, _str(doc["source"]), maps, functions)
        except CorruptEntry:
            raise
        except (ValueError, KeyError, TypeError) as exc:  # json, base64, missing fields
            raise CorruptEntry(f"{type(exc).__name__}: {exc}") from None


def _list(v: Any, limit: int) -> list[Any]:
    if not isinstance(v, list) or len(v) > limit:
        raise CorruptEntry("a list field is not a bounded list")
    return v


def _dict(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise CorruptEntry("a mapping field is not a mapping")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise CorruptEntry("a text field is not text")
    return v


def _int(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 32:
        raise CorruptEntry("a number field is not a 32-bit unsigned integer")
    return v


def _map_spec(m: Any) -> MapSpec:
    m = _dict(m)
    name = _str(m["name"])
    if not re.fullmatch(r"[A-Za-z0-9_.]{1,15}", name):
        raise CorruptEntry(f"bad map name {name!r}")
    return MapSpec(name, _int(m["type"]), _int(m["key_size"]), _int(m["value_size"]),
                   _int(m["max_entries"]), _int(m["flags"]))


def _check_function(name: Any, insns: bytes, slots: dict[str, list[int]], nmaps: int) -> None:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name):
        raise CorruptEntry("bad function name")
    if not insns or len(insns) % 8 or len(insns) > 1 << 20:
        raise CorruptEntry(f"{name}: bytecode is not whole instructions")
    for pc in map_ref_slots(insns):
        if not 0 <= imm(insns, pc) < nmaps:
            raise CorruptEntry(f"{name}: map index out of range at insn {pc}")
    n = len(insns) // 8
    for knob, pcs in slots.items():
        if knob not in RUNTIME_KNOBS:
            raise CorruptEntry(f"{name}: unknown runtime knob {knob!r}")
        if any(pc >= n or imm(insns, pc) != RUNTIME_KNOBS[knob] for pc in pcs):
            raise CorruptEntry(f"{name}: {knob} placeholder not where the entry says")


class CachedObject(ProbeObject):
    """A program loaded from a cache entry: maps made with libbpf, their fds patched in."""

    builder = "cache"

    def __init__(self, entry: Entry, patches: dict[str, int]) -> None:
        fds: list[int] = []
        try:
            for spec in entry.maps:
                fds.append(libbpf.map_create(spec.type, spec.name, spec.key_size,
                                             spec.value_size, spec.max_entries, spec.flags))
        except BaseException:
            close_all(fds)
            raise
        self._map_fds = fds
        self._funcs = {name: (set_imms(insns, [(pc, fds[imm(insns, pc)])
                                               for pc in map_ref_slots(insns)]), slots)
                       for name, (insns, slots) in entry.functions.items()}
        super().__init__({spec.name: (fd, spec) for spec, fd in
                          zip(entry.maps, fds, strict=True)}, patches)

    def _release(self) -> None:
        close_all(self._map_fds)
        self._map_fds = []


# the directory ------------------------------------------------------------------------------
class ProbeCache:
    """Entries in one root-only directory; every check is made before each use."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def usable(self) -> bool:
        """Create the directory (0700) if needed; False (said once) if it is not ours alone."""
        try:
            self._prepare()
            return True
        except (OSError, safefile.UnsafeFileError) as exc:
            say_once("cache-dir", f"probe cache not used: {exc}; compiling every probe")
            return False

    def _prepare(self) -> None:
        for d in (self.root.parent, self.root):  # each level ours alone, the one above checked
            safefile.ensure_private_dir(str(d), uid=os.geteuid(), narrow=False)

    def path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise ValueError(key)
        return self.root / f"{key}.json"

    def load(self, key: str) -> Entry | None:
        """The entry, or None when there is none or it cannot be used (said in one line)."""
        path = self.path(key)
        try:
            data = safefile.read_safe(str(path), MAX_ENTRY)
        except FileNotFoundError:
            return None
        except (OSError, safefile.UnsafeFileError) as exc:
            say_once(f"entry:{key}", f"probe cache entry not used: {exc}; compiling again")
            return None
        try:
            return Entry.from_json(data, key)
        except CorruptEntry as exc:
            say_once(f"entry:{key}",
                     f"probe cache entry {path} is corrupt ({exc}); compiling again")
            return None

    def store(self, entry: Entry) -> None:
        """Write atomically (a private temp file renamed over the entry)."""
        self._write(self.path(entry.key), entry.key, entry.to_json())

    def _write(self, path: Path, key: str, data: bytes) -> None:
        tmp = self.root / f".{key}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    # facts: small results of slow lookups (a function's DWARF types) per file version -------
    def fact_path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise ValueError(key)
        return self.root / f"fact-{key}.json"

    def load_fact(self, key: str) -> dict[str, Any] | None:
        """The value stored under ``key`` (a :func:`fact_key`), or None: none, unusable or not
        what :meth:`store_fact` writes (then the caller looks the fact up again)."""
        try:
            data = safefile.read_safe(str(self.fact_path(key)), MAX_FACT)
            doc = json.loads(data)
        except FileNotFoundError:
            return None
        except (OSError, safefile.UnsafeFileError, ValueError) as exc:
            say_once(f"fact:{key}", f"probe cache fact not used: {exc}; looking it up again")
            return None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("key") != key \
                or not isinstance(doc.get("value"), dict):
            say_once(f"fact:{key}", "probe cache fact is corrupt; looking it up again")
            return None
        return doc["value"]

    def store_fact(self, key: str, value: dict[str, Any]) -> None:
        try:
            self._write(self.fact_path(key), key, json.dumps(
                {"format": FORMAT, "key": key, "value": value}, sort_keys=True).encode())
        except (OSError, ValueError, TypeError) as exc:
            say_once("store", f"probe cache: cannot keep a fact ({exc})")


def fact_key(kind: str, files: list[str], *parts: str | int) -> str | None:
    """The key of a fact about ``files`` (e.g. a binary and its debug file): their paths and
    identities (device, inode, size, mtime and ctime: a rebuilt or replaced file is another
    key) and ``parts``. None when a file cannot be stat'ed (then nothing is cached)."""
    ids = []
    for path in files:
        try:
            st = os.stat(path)
        except OSError:
            return None
        ids.append([os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                    st.st_ctime_ns])
    what = {"format": FORMAT, "kind": kind, "files": ids, "parts": list(parts)}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def default_cache() -> ProbeCache | None:
    root = os.environ.get(ENV_ROOT) or DEFAULT_ROOT
    if root == "off":
        return None
    cache = ProbeCache(root)
    return cache if cache.usable() else None


def build_program(source: str, knobs: dict[str, int],
                  cache: ProbeCache | None | bool = True) -> ProbeObject:
    """The probe program for ``bpf/<source>`` with ``knobs``: from the cache when it holds
    this variant, else compiled by BCC (and then kept). ``cache``: True for the default
    directory, False for none, or a :class:`ProbeCache`."""
    bccprog.require_root()
    if cache is True:
        cache = default_cache()
    elif cache is False or (cache is not None and not cache.usable()):
        cache = None
    _, patches = split_knobs(knobs)
    key = variant_key(source, knobs) if cache is not None else ""
    if cache is not None:
        entry = cache.load(key)
        if entry is not None:
            return CachedObject(entry, patches)
    obj = bccprog.compile_program(source, knobs)
    if cache is not None:
        try:
            cache.store(Entry.from_object(key, source, obj))
        except (OSError, KeyError, ValueError) as exc:
            say_once("store", f"probe cache: cannot keep the compiled probe ({exc})")
    return obj
