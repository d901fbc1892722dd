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

from ..errors import NotFoundError, PrivilegeError, SelectorError
from .model import ProgInfo

SelectorKind = Literal["id", "name", "tag", "pinned", "pid", "all"]

_PREFIXES: dict[str, SelectorKind] = {
    "id": "id", "i": "id", "name": "name", "n": "name", "tag": "tag", "t": "tag",
    "pinned": "pinned", "p": "pinned", "pid": "pid",
}
_HEX_TAG = re.compile(r"[0-9a-fA-F]{1,16}")
SELECTOR_HELP = "ID, id:N, name:GLOB, tag:HEX, pinned:PATH, pid:PID, GLOB or *"


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
    if text.isdigit():
        return Selector("id", int(text), text)
    prefix, sep, rest = text.partition(":")
    if sep and prefix in _PREFIXES:
        kind = _PREFIXES[prefix]
        if not rest:
            raise SelectorError(f"selector '{text}' has nothing after '{prefix}:'",
                                f"use {SELECTOR_HELP}")
        if kind in ("id", "pid"):
            if not rest.isdigit():
                raise SelectorError(f"selector '{text}': '{rest}' is not a number",
                                    f"e.g. {prefix}:42")
            return Selector(kind, int(rest), text)
        if kind == "tag":
            tag = rest.lower()
            if not _HEX_TAG.fullmatch(tag):
                raise SelectorError(f"selector '{text}': a tag is up to 16 hex digits",
                                    "see 'show progs' for tags")
            return Selector(kind, tag, text)
        return Selector(kind, rest, text)
    if sep and not any(ch in prefix for ch in "*?["):
        raise SelectorError(f"unknown selector kind '{prefix}:'", f"use {SELECTOR_HELP}")
    return Selector("name", text, text)


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
            want = pinned_id(str(sel.value))
            return [p for p in progs if p.id == want]
        case "pid":
            if pid_prog_ids is None:
                raise SelectorError("pid: selectors need the live kernel")
            ids = pid_prog_ids(int(sel.value))
            return [p for p in progs if p.id in ids]
    raise AssertionError(sel.kind)


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
