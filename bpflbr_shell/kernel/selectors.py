"""Program selectors, spelled as bpfsnoop spells them.

``ID``, ``id:N``/``i:N``, ``name:GLOB``/``n:GLOB``, ``tag:HEX``/``t:HEX``,
``pinned:PATH``/``p:PATH``, ``pid:PID``, a bare glob on names, and ``*``. Parsing and
matching are pure; the two selectors that need the kernel (pinned, pid) take their resolver
as an argument.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from bpflbr_shell.errors import NotFoundError, PrivilegeError, SelectorError
from bpflbr_shell.kernel.model import ProgInfo

SelectorKind = Literal["id", "name", "tag", "pinned", "pid", "all"]

_PREFIXES: dict[str, SelectorKind] = {
    "id": "id", "i": "id", "name": "name", "n": "name", "tag": "tag", "t": "tag",
    "pinned": "pinned", "p": "pinned", "pid": "pid",
}
_HEX_TAG = re.compile(r"[0-9a-fA-F]{1,16}")
SELECTOR_HELP = "ID, id:N, name:GLOB, tag:HEX, pinned:PATH, pid:PID, GLOB or *"
#: fnmatch's regex for a pattern of many '[' is superlinear (20,000 took 11 s); names are short
MAX_GLOB = 256
BPF_FS_MAGIC = 0xCAFE4A11
U32_MAX = (1 << 32) - 1


def check_glob(glob: str, what: str = "glob") -> str:
    """``glob``, or a SelectorError when it is longer than any name could need."""
    if len(glob) > MAX_GLOB:
        raise SelectorError(f"{what} too long ({len(glob)} characters; at most {MAX_GLOB})",
                            "use a shorter pattern")
    return glob


def _number(text: str, what: str, example: str) -> int:
    """A decimal id (ids and pids are u32): ASCII digits only, range-checked before int()
    (a 10,000-digit id used to hit Python's int-digits limit)."""
    if not (text.isascii() and text.isdigit()):
        raise SelectorError(f"'{text[:24]}' is not a number", f"e.g. {example}")
    if len(text) > 10 or int(text) > U32_MAX:
        raise SelectorError(f"{what} {text[:12]}{'...' if len(text) > 12 else ''} is out of "
                            f"range (1 to {U32_MAX})", f"e.g. {example}")
    return int(text)


def split_prog_target(text: str) -> tuple[str, str | None]:
    """``SEL[:FUNC]``: a trailing ``:NAME`` that is not after a selector prefix (``id:``,
    ``pinned:``...) names a subprogram."""
    head, sep, tail = text.rpartition(":")
    if sep and head and head not in _PREFIXES and not tail.startswith("/"):
        return head, tail
    return text, None


@dataclass(frozen=True, slots=True)
class Selector:
    kind: SelectorKind
    value: str | int
    text: str


def parse_selector(text: str) -> Selector:
    """Parse one selector; a malformed one is a :class:`SelectorError` naming the valid forms."""
    text = text.strip()
    if not text:
        raise SelectorError("empty program selector", f"use {SELECTOR_HELP}")
    if text == "*":
        return Selector("all", "*", text)
    if text.isascii() and text.isdigit():
        return Selector("id", _number(text, "program id", "42"), text)
    prefix, sep, rest = text.partition(":")
    if sep and prefix in _PREFIXES:
        kind = _PREFIXES[prefix]
        if not rest:
            raise SelectorError(f"selector '{text}' has nothing after '{prefix}:'",
                                f"use {SELECTOR_HELP}")
        if kind in ("id", "pid"):
            if not (rest.isascii() and rest.isdigit()):
                raise SelectorError(f"selector '{text[:40]}': '{rest[:24]}' is not a number",
                                    f"e.g. {prefix}:42")
            return Selector(kind, _number(rest, "id" if kind == "id" else "pid",
                                          f"{prefix}:42"), text)
        if kind == "tag":
            tag = rest.lower()
            if not _HEX_TAG.fullmatch(tag):
                raise SelectorError(f"selector '{text}': a tag is up to 16 hex digits",
                                    "see 'show progs' for tags")
            return Selector(kind, tag, text)
        if kind == "name":
            check_glob(rest, "name glob")
        return Selector(kind, rest, text)
    if sep and not any(ch in prefix for ch in "*?["):
        raise SelectorError(f"unknown selector kind '{prefix[:40]}:'", f"use {SELECTOR_HELP}")
    return Selector("name", check_glob(text, "name glob"), text)


def name_matches(glob: str, prog: ProgInfo) -> bool:
    """Match the kernel's (15-char) prog name or any BTF function name of the program."""
    names = {prog.name, prog.func_name, *(sp.name for sp in prog.subprogs)}
    return any(fnmatch.fnmatchcase(n, glob) for n in names if n)


def select_progs(
    sel: Selector,
    progs: Iterable[ProgInfo],
    pinned_id: Callable[[str], int] | None = None,
    pid_prog_ids: Callable[[int], set[int]] | None = None,
) -> list[ProgInfo]:
    """Programs matching ``sel``, in id order."""
    progs = sorted(progs, key=lambda p: p.id)
    match sel.kind:
        case "all":
            return progs
        case "id":
            return [p for p in progs if p.id == sel.value]
        case "name":
            return [p for p in progs if name_matches(str(sel.value), p)]
        case "tag":
            return [p for p in progs if p.tag.startswith(str(sel.value))]
        case "pinned":
            if pinned_id is None:
                raise SelectorError("pinned: selectors need the live kernel")
            path = str(sel.value)
            try:
                want = pinned_id(path)
            except PrivilegeError:
                # the kernel says EACCES for a file that is not a pinned object; as root, or
                # off bpffs, that is what it means
                if os.geteuid() == 0 or not on_bpffs(path):
                    raise NotFoundError(f"{path} is not a BPF object",
                                        "pinned objects live on bpffs (/sys/fs/bpf)") from None
                raise
            return [p for p in progs if p.id == want]
        case "pid":
            if pid_prog_ids is None:
                raise SelectorError("pid: selectors need the live kernel")
            ids = pid_prog_ids(int(sel.value))
            return [p for p in progs if p.id in ids]
    raise AssertionError(sel.kind)


def on_bpffs(path: str, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Whether ``path`` lies on a bpf filesystem (the longest mount point above it)."""
    real = os.path.realpath(path)
    best, fstype = "", ""
    try:
        with open(mountinfo) as f:
            for line in f:
                fields = line.split()
                try:
                    mnt = fields[4].replace("\\040", " ")
                    kind = fields[fields.index("-") + 1]
                except (IndexError, ValueError):
                    continue
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best):
                    best, fstype = mnt, kind
    except OSError:
        return False
    return fstype == "bpf"


def prog_ids_held_by(pid: int, proc: str = "/proc") -> set[int]:
    """Prog ids a process holds through prog or link fds (``prog_id:`` in its fdinfo)."""
    fdinfo = f"{proc}/{pid}/fdinfo"
    try:
        names = os.listdir(fdinfo)
    except FileNotFoundError:
        raise NotFoundError(f"no process with pid {pid}") from None
    except PermissionError:
        raise PrivilegeError(f"cannot read {fdinfo}", "run as root") from None
    ids: set[int] = set()
    for name in names:
        try:
            with open(f"{fdinfo}/{name}") as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except (OSError, ValueError, IndexError):
            continue  # the fd closed while we read, or is not a bpf object
    return ids


def processes_holding(prog_id: int, proc: str = "/proc") -> list[tuple[int, str]]:
    """(pid, comm) of every process holding ``prog_id``, as bpftool's ``pids`` shows."""
    found: list[tuple[int, str]] = []
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            held = prog_ids_held_by(int(entry), proc)
        except (NotFoundError, PrivilegeError):
            continue
        if prog_id in held:
            try:
                with open(f"{proc}/{entry}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                comm = "?"
            found.append((int(entry), comm))
    return found
