"""The kernel as one session sees it: programs, kallsyms and the symbolizer, read lazily.

Commands ask this object; they never call bpf(2) themselves. Decoded programs are cached by
(id, load time) because their JIT image and line info cannot change; run counters are re-read
on every listing.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Protocol

from bpflbr_shell.errors import KernelDataError, NotFoundError
from bpflbr_shell.kernel import libbpf, progs, selectors
from bpflbr_shell.kernel.model import ProgInfo

if TYPE_CHECKING:
    from bpflbr_shell.kernel.btf import Btf
    from bpflbr_shell.kernel.kallsyms import KallsymsIndex


class ProgWatcher(Protocol):
    """Told of every program the view reads and of those found gone (the symbols layer's
    Symbolizer is one): the view never imports the layers above it."""

    def add_prog(self, prog: ProgInfo) -> None: ...
    def remove_prog(self, prog_id: int) -> None: ...


class KernelView:
    def __init__(self, kallsyms_path: str = "/proc/kallsyms") -> None:
        self.kallsyms_path = kallsyms_path
        self._kallsyms: KallsymsIndex | None = None
        self._kallsyms_lock = threading.Lock()
        self.watchers: list[ProgWatcher] = []
        self._progs: dict[int, ProgInfo] = {}
        self._boot_epoch = progs.boot_to_epoch_offset()

    # programs -------------------------------------------------------------------------------
    def prog_ids(self) -> list[int]:
        return libbpf.prog_ids()

    def prog(self, prog_id: int) -> ProgInfo:
        """Fresh info for one program (stats included); the decoded body is reused."""
        raw = progs.read_raw_prog_info(prog_id)
        cached = self._progs.get(prog_id)
        if cached is not None and cached.load_time_ns == raw.load_time and cached.tag == raw.tag:
            cached.run_cnt, cached.run_time_ns = raw.run_cnt, raw.run_time_ns
            cached.recursion_misses = raw.recursion_misses
            return cached
        info = progs.decode_prog_info(raw, self._boot_epoch)
        self._progs[prog_id] = info
        for w in self.watchers:
            w.add_prog(info)
        return info

    def prog_names(self) -> list[tuple[int, str, str, str]]:
        """(id, type, name, tag) of every program, from one header read each: the full C
        name where the program was decoded before, else the kernel's short name. For
        completion, which runs at every Tab."""
        out = []
        for prog_id in self.prog_ids():
            try:
                h = progs.read_prog_header(prog_id)
            except NotFoundError:
                continue
            known = self._progs.get(prog_id)
            name = known.func_name if known is not None and known.tag == h.tag and \
                known.load_time_ns == h.load_time else h.name
            out.append((h.id, h.type_name, name, h.tag))
        return out

    def progs(self) -> list[ProgInfo]:
        out: list[ProgInfo] = []
        live = set()
        for prog_id in self.prog_ids():
            try:
                out.append(self.prog(prog_id))
                live.add(prog_id)
            except NotFoundError:
                continue
        for gone in set(self._progs) - live:
            del self._progs[gone]
            for w in self.watchers:
                w.remove_prog(gone)
        return out

    def known_progs(self) -> list[ProgInfo]:
        """The programs read so far (no bpf(2) call)."""
        return list(self._progs.values())

    def select(self, text: str, *, must_match: bool = True) -> list[ProgInfo]:
        """Programs matching a selector string; none at all is an error unless asked otherwise."""
        sel = selectors.parse_selector(text)
        if sel.kind == "id":
            candidates = [self.prog(int(sel.value))]  # NotFoundError names the id
        else:
            candidates = self.progs()
        found = selectors.select_progs(
            sel, candidates, pinned_id=self.pinned_prog_id,
            pid_prog_ids=selectors.prog_ids_held_by,
        )
        if must_match and not found:
            raise NotFoundError(f"no BPF program matches '{text}'", "see 'show progs'")
        return found

    def select_one(self, text: str) -> ProgInfo:
        found = self.select(text)
        if len(found) > 1:
            ids = ", ".join(str(p.id) for p in found[:8]) + (", ..." if len(found) > 8 else "")
            raise NotFoundError(
                f"'{text}' matches {len(found)} programs ({ids})",
                "pick one by id",
            )
        return found[0]

    @staticmethod
    def pinned_prog_id(path: str) -> int:
        fd = libbpf.obj_get(path)
        try:
            info = libbpf.BpfProgInfo()
            libbpf.obj_info(fd, info, f"reading {path}")
            return info.id
        finally:
            os.close(fd)

    # symbols ---------------------------------------------------------------------------------
    @property
    def kallsyms(self) -> KallsymsIndex:
        """Parsed once (a second thread asking meanwhile waits for the same parse)."""
        if self._kallsyms is None:
            with self._kallsyms_lock:
                if self._kallsyms is None:
                    from bpflbr_shell.kernel.kallsyms import KallsymsIndex

                    self._kallsyms = KallsymsIndex.load(self.kallsyms_path)
        return self._kallsyms

    @property
    def vmlinux_btf(self) -> Btf | None:
        """The kernel's own BTF, parsed once (about 0.3 s), for kernel functions' prototypes;
        None when the kernel has none."""
        if "_vmlinux_btf" not in self.__dict__:
            from bpflbr_shell.kernel.btf import Btf

            try:
                with open("/sys/kernel/btf/vmlinux", "rb") as f:
                    self.__dict__["_vmlinux_btf"] = Btf.parse(f.read())
            except (OSError, KernelDataError):
                self.__dict__["_vmlinux_btf"] = None
        return self.__dict__["_vmlinux_btf"]
