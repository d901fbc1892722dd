"""User-space symbolization through drgn attached to the traced process.

drgn reads the process's mappings and each binary's DWARF once (about 0.1 s for a small
program), and keeps working after the process exits, which is when a trace is usually shown.
Programs are opened on the first event of a pid, so short-lived targets are still caught.
"""

from __future__ import annotations

from typing import Any

from .symbols import Location

MAX_PROCESSES = 64


class UserSymbolizer:
    def __init__(self) -> None:
        self._programs: dict[int, Any] = {}  # pid -> drgn.Program, or None when unavailable
        self._cache: dict[tuple[int, int], Location] = {}
        self.unavailable_reason: str | None = None

    def prepare(self, pid: int) -> None:
        """Open drgn on ``pid`` now, while it still runs (idempotent, never raises)."""
        if pid in self._programs or pid <= 0:
            return
        if len(self._programs) >= MAX_PROCESSES:
            self._programs.pop(next(iter(self._programs)))
        try:
            import logging

            import drgn

            logging.getLogger("drgn").setLevel(logging.ERROR)  # vdso "missing debug info"
        except ImportError:
            self.unavailable_reason = "drgn is not installed (pip install drgn)"
            self._programs[pid] = None
            return
        prog = drgn.Program()
        try:
            prog.set_pid(pid)
            try:
                prog.load_default_debug_info()
            except drgn.MissingDebugInfoError:
                pass  # the vdso and stripped libraries have none; the rest still loads
        except (OSError, ValueError, drgn.FaultError) as exc:
            self.unavailable_reason = f"cannot open process {pid} with drgn: {exc}"
            prog = None
        self._programs[pid] = prog

    def symbolize(self, pid: int, addr: int) -> Location:
        key = (pid, addr)
        loc = self._cache.get(key)
        if loc is not None:
            return loc
        self.prepare(pid)
        loc = self._resolve(self._programs.get(pid), addr)
        self._cache[key] = loc
        return loc

    @staticmethod
    def _resolve(prog: Any, addr: int) -> Location:
        if prog is None:
            return Location(addr, kind="user")
        try:
            sym = prog.symbol(addr)
        except LookupError:
            return Location(addr, kind="user")
        file = line = col = None
        try:
            src = prog.source_location(addr)
            # the innermost frame is the one executing (inlined callees come first)
            frame = src[0]
            file, line, col = frame.filename, frame.line, frame.column
        except (LookupError, IndexError, ValueError):
            pass
        return Location(addr, func=sym.name, offset=addr - sym.address, file=file, line=line,
                        col=col, kind="user")

    def params(self, pid: int, func: str) -> list[str] | None:
        """Parameter names of ``func`` from DWARF, or None when unknown."""
        self.prepare(pid)
        prog = self._programs.get(pid)
        if prog is None:
            return None
        try:
            ftype = prog.function(func).type_
            return [p.name or f"arg{i}" for i, p in enumerate(ftype.parameters)]
        except (LookupError, ValueError, AttributeError):
            return None
