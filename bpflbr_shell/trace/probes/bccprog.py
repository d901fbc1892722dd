"""Compiling our BPF C with BCC: source lookup, compile-time knobs, headers, tracefs; the
BCC builder of :class:`progobj.ProbeObject`.

Knobs reach the C only as ``-DNAME=<int>`` built from the tool's own integer settings, so no
user text is ever pasted into a program.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from bpflbr_shell.errors import FeatureError, PrivilegeError
from bpflbr_shell.kernel import libbpf
from bpflbr_shell.trace.probes.progobj import (
    MapSpec,
    ProbeObject,
    imm,
    map_ref_slots,
    placeholder_slots,
    split_knobs,
)

_PACKAGE = Path(__file__).resolve().parents[2]
# the probes' C: inside the package when installed from a wheel (pyproject maps the repo's
# bpf/ there), at the top of the checkout otherwise
BPF_DIR = next((d for d in (_PACKAGE / "bpf", _PACKAGE.parent / "bpf")
                if (d / "lbr_event.h").is_file()), _PACKAGE.parent / "bpf")
_KNOB = re.compile(r"[A-Z][A-Z0-9_]*")


def import_bcc() -> Any:
    try:
        import bcc
    except ImportError:
        raise FeatureError("BCC's Python module is not importable",
                           "apt-get install python3-bpfcc and use a venv with "
                           "--system-site-packages (scripts/bootstrap.sh does both)") from None
    return bcc


def ensure_tracefs() -> None:
    """Mount tracefs if nobody has: BCC's uprobe detach path reads ``uprobe_events``."""
    if os.path.exists("/sys/kernel/tracing/uprobe_events"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    ret = libc.mount(b"nodev", b"/sys/kernel/tracing", b"tracefs", 0, None)
    if ret != 0 and not os.path.exists("/sys/kernel/tracing/uprobe_events"):
        err = ctypes.get_errno()
        raise FeatureError(f"cannot mount tracefs at /sys/kernel/tracing ({os.strerror(err)})",
                           "mount -t tracefs nodev /sys/kernel/tracing")


_LOCAL_INCLUDE = re.compile(r'^#include "([A-Za-z0-9_.]+)"\s*$', re.M)


def inline_local_includes(path: Path, seen: frozenset[str] = frozenset()) -> str:
    """The source with our own ``#include "x.h"`` lines replaced by the headers' text.

    BCC rewrites map method calls (``rings.lookup(&cpu)``) only in the main file; in
    an included header they would compile into indirect calls the verifier rejects. Only files
    of ``bpf/`` are inlined, so this never reads anything but the tool's own sources.
    """

    def replace(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in seen:
            return ""
        return inline_local_includes(BPF_DIR / name, seen | {name})

    return _LOCAL_INCLUDE.sub(replace, path.read_text())


class CapturedStderr:
    """Collects what C code (BCC, libbcc, LLVM) writes to fd 2 while active, so it can become
    part of one clear error line instead of noise above the prompt."""

    def __init__(self) -> None:
        self.text = ""

    def __enter__(self) -> CapturedStderr:
        import sys
        import tempfile

        sys.stderr.flush()
        self._file = tempfile.TemporaryFile(mode="w+b")
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc: object) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode("utf-8", "replace")
        self._file.close()

    def first_error(self) -> str:
        """The first line that says what went wrong (a compiler error, a failed open)."""
        lines = [ln.strip() for ln in self.text.splitlines() if ln.strip()]
        for ln in lines:
            if "error:" in ln or "open(" in ln or "Failed" in ln:
                return ln
        return lines[0] if lines else ""


# FILTER_EXPR, generated from a filter's AST: integer literals, the probe's own names and C
# operators only; checked here again, token by token, before it reaches the compiler
_FILTER_TOKEN = re.compile(r"\s*(?:-?\d+LL\b|\d+ULL\b"
                           r"|(?:pid|tid|cpu|retval|a[0-5]|c[01]|dur|dk|ex|bpflbr_rd|bpflbr_strw)\b"
                           r"|\((?:s8|s16|s32|u8|u16|u32|s64|u64)\)"
                           r"|==|!=|<=|>=|<<|>>|&&|\|\||[<>&|^!()~+?:,-])")


def check_filter_expr(expr: str) -> str:
    pos = 0
    while pos < len(expr):
        m = _FILTER_TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"FILTER_EXPR holds something other than our tokens at {pos}")
        pos = m.end()
    return expr


def cflags_for(knobs: dict[str, Any]) -> list[str]:
    """The clang flags of one variant: our include dir and each knob as ``-DNAME=int`` (and
    FILTER_EXPR, a C expression of our own tokens only: :func:`check_filter_expr`)."""
    cflags = [f"-I{BPF_DIR}", "-Wno-macro-redefined"]
    for name, value in sorted(knobs.items()):
        if name == "FILTER_EXPR" and isinstance(value, str):
            cflags.append(f"-D{name}=({check_filter_expr(value)})")
            continue
        if not _KNOB.fullmatch(name) or not isinstance(value, int):
            raise ValueError(f"bad compile knob {name}={value!r}")
        cflags.append(f"-D{name}={value}")
    return cflags


def require_root() -> None:
    if os.geteuid() != 0:
        raise PrivilegeError("loading BPF programs needs root (CAP_BPF, CAP_PERFMON)",
                             "run bpflbr-shell as root")


class BccObject(ProbeObject):
    """A program BCC compiled now: BCC made the maps; we load the bytecode ourselves (patched
    with the runtime knobs), so both builders load exactly the same instructions."""

    builder = "bcc"

    def __init__(self, bpf: Any, patches: dict[str, int]) -> None:
        self.bpf = bpf
        lib = import_bcc().lib
        names = [lib.bpf_function_name(bpf.module, i).decode()
                 for i in range(lib.bpf_num_functions(bpf.module))]
        self._funcs = {}
        fds: set[int] = set()
        for name in names:
            insns = bpf.dump_func(name.encode())
            self._funcs[name] = (insns, placeholder_slots(insns))
            fds.update(imm(insns, pc) for pc in map_ref_slots(insns))
        maps: dict[str, tuple[int, MapSpec]] = {}
        for fd in sorted(fds):
            info = libbpf.map_info(fd)
            spec = MapSpec(info.name.decode(), info.type, info.key_size, info.value_size,
                           info.max_entries, info.map_flags)
            maps[spec.name] = (fd, spec)
        super().__init__(maps, patches)

    def _release(self) -> None:
        bpf, self.bpf = self.bpf, None
        if bpf is not None:
            bpf.cleanup()


def compile_program(source: str, knobs: dict[str, int]) -> BccObject:
    """``bpf/<source>`` compiled by BCC with integer ``knobs`` as -D defines (the runtime
    ones as placeholders, patched when loading)."""
    require_root()
    bcc = import_bcc()
    from bpflbr_shell.kernel.features import kernel_headers  # the one owner of this fact

    headers = kernel_headers()
    if not headers.usable:
        raise FeatureError(f"BCC cannot compile: {headers.detail}", headers.fix)
    compiled, patches = split_knobs(knobs)
    cflags = cflags_for(compiled)
    text = inline_local_includes(BPF_DIR / source)
    captured = CapturedStderr()
    try:
        with captured:
            bpf = bcc.BPF(text=text.encode(), cflags=cflags)
    except Exception as exc:
        msg = captured.first_error() or (str(exc).splitlines() or [type(exc).__name__])[0]
        raise FeatureError(f"BCC failed to build {source}: {msg} ({headers.detail})",
                           "see 'show features' (bcc-headers)") from None
    try:
        return BccObject(bpf, patches)
    except BaseException:
        bpf.cleanup()
        raise
