"""Unit (no root): the event record as gcc lays out bpf/lbr_event.h, against every Python
mirror of it (events.raw_event_type, events.HEAD/BRANCH/STR, cpuring.HEADER and ring_bytes,
base.STATS, the constants). The header is compiled as it is, with the typedefs BCC provides
and the kernel's uapi ``struct perf_branch_entry``; gcc is the oracle, not our own code."""

from __future__ import annotations

import ctypes
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from bpflbr_shell.trace import events
from bpflbr_shell.trace.probes import base, cpuring

HEADER_FILE = Path(__file__).resolve().parent.parent / "bpf" / "lbr_event.h"
FIELDS = ["ts_ns", "duration_ns", "func_ip", "args", "retval", "pid", "tid", "cpu", "kind",
          "kstack_id", "ustack_id", "lbr_ret", "nr_lbr", "comm"]
CONSTS = ["MAX_ARGS", "EV_ENTRY", "EV_EXIT", "STR_LEN", "STR_RET_BIT", "STAT_HITS",
          "STAT_DROPS", "STAT_FILTERED", "STAT_MISSED_ENTRY", "STAT_MAX", "NO_DURATION"]
VARIANTS = [(0, 0), (32, 0), (32, 2), (16, 7)]  # (LBR_ENTRIES, STR_COUNT)


def _source() -> str:
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/types.h>",
             "#include <linux/perf_event.h>",
             "typedef __u64 u64; typedef __s64 s64; typedef __u32 u32; typedef __s32 s32;",
             f'#include "{HEADER_FILE}"',
             '#define P(k, v) printf("%s %llu\\n", k, (unsigned long long)(v))',
             "int main(void) { struct lbr_event e; (void)e;",
             '  P("sizeof.event", sizeof(struct lbr_event));',
             '  P("off.lbr", offsetof(struct lbr_event, lbr));',
             '  P("sizeof.branch", sizeof(struct perf_branch_entry));',
             '  P("sizeof.user_str", sizeof(struct user_str));',
             '  P("off.user_str.buf", offsetof(struct user_str, buf));',
             '  P("off.ring.slot", offsetof(struct cpu_ring, slot));',
             '  P("sizeof.ring", sizeof(struct cpu_ring));',
             '  P("ring_bytes", RING_BYTES);',
             '  P("align.event", _Alignof(struct lbr_event));',
             "#if STR_COUNT > 0",
             '  P("off.str", offsetof(struct lbr_event, str));',
             "#endif"]
    for f in FIELDS:
        lines.append(f'  P("off.{f}", offsetof(struct lbr_event, {f}));')
        lines.append(f'  P("size.{f}", sizeof(e.{f}));')
        if f not in ("args", "comm"):
            lines.append(f'  P("signed.{f}", (__typeof__(e.{f}))-1 < 0);')
    lines += [f'  P("const.{c}", {c});' for c in CONSTS]
    lines.append("  return 0; }")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def gcc_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[int, int], dict[str, int]]:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not installed: no independent oracle for the record layout")
    d = tmp_path_factory.mktemp("layout")
    src = d / "layout.c"
    src.write_text(_source())
    out: dict[tuple[int, int], dict[str, int]] = {}
    for lbr, nstr in VARIANTS:
        exe = d / f"layout-{lbr}-{nstr}"
        subprocess.run([gcc, "-O0", f"-DLBR_ENTRIES={lbr}", f"-DSTR_COUNT={nstr}",
                        "-DRING_SLOTS=8", "-o", str(exe), str(src)], check=True,
                       capture_output=True)
        text = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
        out[(lbr, nstr)] = {k: int(v) for k, v in (ln.split() for ln in text.splitlines())}
    return out


def _head_items() -> list[tuple[int, int, bool]]:
    """(offset, size, signed) of each item of events.HEAD's format, in order."""
    fmt = events.HEAD.format
    order, body = fmt[0], fmt[1:]
    items, prefix = [], order
    for count, code in re.findall(r"(\d*)([a-zA-Z])", body):
        n = int(count or 1)
        one = f"{count}{code}" if code == "s" else code
        reps = 1 if code == "s" else n
        for _ in range(reps):
            off = struct.calcsize(prefix)
            items.append((off, struct.calcsize(order + one), code.islower() and code != "s"))
            prefix += one
    return items


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"lbr{v[0]}-str{v[1]}")
def test_ctypes_record_matches_gcc(gcc_layout, variant) -> None:
    c = gcc_layout[variant]
    raw = events.raw_event_type(*variant)
    assert ctypes.sizeof(raw) == c["sizeof.event"]
    for f in FIELDS:
        assert getattr(raw, f).offset == c[f"off.{f}"], f
        assert getattr(raw, f).size == c[f"size.{f}"], f
    assert raw.lbr.offset == c["off.lbr"]
    if variant[1]:
        assert raw.str.offset == c["off.str"]
    assert ctypes.sizeof(events.RawBranch) == c["sizeof.branch"] == events.BRANCH.size
    assert ctypes.sizeof(events.RawStr) == c["sizeof.user_str"] == events.STR.size
    assert events.RawStr.buf.offset == c["off.user_str.buf"]


def test_struct_head_matches_gcc(gcc_layout) -> None:
    """decode_record's one-call format: every item where gcc puts that field, with its size
    and signedness (args: six items; comm: one)."""
    c = gcc_layout[(32, 0)]
    items = _head_items()
    expect = []
    for f in FIELDS:
        if f == "args":
            expect += [(c["off.args"] + 8 * i, 8, False) for i in range(c["const.MAX_ARGS"])]
        elif f == "comm":
            expect.append((c["off.comm"], c["size.comm"], False))
        else:
            expect.append((c[f"off.{f}"], c[f"size.{f}"], bool(c[f"signed.{f}"])))
    assert items == expect
    assert events.HEAD.size == c["off.lbr"]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"lbr{v[0]}-str{v[1]}")
def test_ring_layout_matches_gcc(gcc_layout, variant) -> None:
    c = gcc_layout[variant]
    assert cpuring.HEADER == c["off.ring.slot"]
    record = ctypes.sizeof(events.raw_event_type(*variant))
    assert cpuring.ring_bytes(8, record) == c["sizeof.ring"] == c["ring_bytes"]
    assert record % c["align.event"] == 0  # slots stay aligned


def test_constants_match_the_header(gcc_layout) -> None:
    c = gcc_layout[(32, 0)]
    assert events.MAX_ARGS == c["const.MAX_ARGS"]
    assert (events.EV_ENTRY, events.EV_EXIT) == (c["const.EV_ENTRY"], c["const.EV_EXIT"])
    assert events.STR_LEN == c["const.STR_LEN"]
    assert events.RET_STR == c["const.STR_RET_BIT"]
    assert events.NO_DURATION == c["const.NO_DURATION"]
    assert len(base.STATS) == c["const.STAT_MAX"]
    for i, name in enumerate(base.STATS):
        assert c[f"const.STAT_{name.upper()}"] == i, name
