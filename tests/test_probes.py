"""Probe construction: compile-time knobs (pure) and, on the live host, the compiled bytecode
itself: every probe that emits an event takes the LBR snapshot as its very first helper call.
"""

from __future__ import annotations

import ctypes
import os
import struct

import pytest

from bpflbr_shell.trace.events import raw_event_type
from bpflbr_shell.trace.probes.base import CaptureOptions, stack_knobs
from bpflbr_shell.trace.probes.cpuring import slots_for

BPF_FUNC_map_lookup_elem = 1
BPF_FUNC_get_smp_processor_id = 8
BPF_FUNC_get_branch_snapshot = 176
CALL = 0x85  # BPF_JMP | BPF_CALL
CALLX = 0x8D  # an indirect call: what BCC emits for a map method it failed to rewrite


def test_stacks_are_the_lbr_fallback() -> None:
    both = CaptureOptions(ustack=True, kstack=True)
    assert stack_knobs(both, lbr_on=False) == {"CAPTURE_USTACK": 1, "CAPTURE_KSTACK": 1}
    assert stack_knobs(both, lbr_on=True) == {"CAPTURE_USTACK": 0, "CAPTURE_KSTACK": 0}
    asked = CaptureOptions(ustack=True, kstack=False, stacks_with_lbr=True)
    assert stack_knobs(asked, lbr_on=True) == {"CAPTURE_USTACK": 1, "CAPTURE_KSTACK": 0}


def test_ring_slots_share_the_budget_in_powers_of_two() -> None:
    small, big = ctypes.sizeof(raw_event_type(0)), ctypes.sizeof(raw_event_type(32))
    assert slots_for(4 << 20, 2, small) == 16384  # 2 MiB a CPU of 128-byte records
    assert slots_for(4 << 20, 2, big) == 2048  # 896-byte records: 1.75 MiB of 2 MiB
    assert slots_for(4 << 20, 64, big) == 64  # many CPUs share the same memory
    assert slots_for(4096, 2, small) == 16  # one page: the minimum
    assert slots_for(1 << 40, 1, big) * big <= 4 << 20  # one map value stays under 4 MiB
    for n in (slots_for(p << 12, c, r) for p in (1, 7, 1024) for c in (1, 3, 8)
              for r in (small, big)):
        assert n & (n - 1) == 0


def helper_calls(insns: bytes) -> list[int]:
    """Helper ids of the BPF_CALL instructions, in program order (8-byte instructions)."""
    return [imm for _pc, imm in helper_call_sites(insns)]


def helper_call_sites(insns: bytes) -> list[tuple[int, int]]:
    """(instruction index, helper id) of every helper call."""
    calls = []
    for pc in range(len(insns) // 8):
        code, regs, _off, imm = struct.unpack_from("<BBhi", insns, pc * 8)
        assert code != CALLX, "indirect call: a map method BCC did not rewrite"
        if code == CALL and not regs & 0xF0:  # src_reg 0: a helper, not a bpf-to-bpf call
            calls.append((pc, imm))
    return calls


def successors(insns: bytes, pc: int) -> list[int]:
    """Where control can go after instruction ``pc`` (jumps, fall-through, exit)."""
    code, _regs, off, _imm = struct.unpack_from("<BBhi", insns, pc * 8)
    if code == 0x18:  # ld_imm64 spans two slots
        return [pc + 2]
    if code & 0x07 in (0x05, 0x06):  # BPF_JMP, BPF_JMP32
        op = code & 0xF0
        if op == 0x90:  # exit
            return []
        if op == 0x80:  # call
            return [pc + 1]
        if op == 0x00:  # ja
            return [pc + 1 + off]
        return [pc + 1, pc + 1 + off]
    return [pc + 1]


def calls_that_can_precede(insns: bytes, helper: int) -> list[int]:
    """Helper ids of the calls from which some path of the program's control flow reaches a
    call of ``helper``: the helpers that may run before it in some execution."""
    sites = helper_call_sites(insns)
    targets = {pc for pc, imm in sites if imm == helper}
    before = []
    for pc, imm in sites:
        seen, todo = set(), successors(insns, pc)
        while todo:
            nxt = todo.pop()
            if nxt in seen or nxt * 8 >= len(insns):
                continue
            seen.add(nxt)
            todo.extend(successors(insns, nxt))
        if seen & targets:
            before.append(imm)
    return before


def build(source: str, knobs: dict[str, int], builder: str, tmp_path):
    """The program as BCC compiles it now, or as the probe cache loads it back (a second
    build from a cache the first one filled)."""
    from bpflbr_shell.trace.probes.bccprog import compile_program
    from bpflbr_shell.trace.probes.objcache import ProbeCache, build_program

    if builder == "bcc":
        return compile_program(source, knobs)
    cache = ProbeCache(tmp_path / "cache" / "probes")
    assert cache.usable()
    build_program(source, knobs, cache).cleanup()
    obj = build_program(source, knobs, cache)
    assert obj.builder == "cache"
    return obj


@pytest.mark.live
@pytest.mark.parametrize("builder", ["bcc", "cache"])
@pytest.mark.parametrize(("source", "functions"), [
    ("uprobe.c", {"on_entry": True, "on_return": False}),
    ("kprobe.c", {"on_kprobe": True, "on_kretprobe": False}),
    ("fentry.c", {"on_fentry": True, "on_fexit": False}),
])
@pytest.mark.parametrize("emit_entry", [0, 1])
def test_snapshot_is_the_first_helper_call(require_root, require_bcc, source: str,
                                           functions: dict[str, bool], emit_entry: int,
                                           builder: str, tmp_path) -> None:
    """Compiled for real by BCC: before bpf_get_branch_snapshot() come only the CPU id and the
    lookup of that CPU's event ring (the slot the snapshot is written into), both of which the
    verifier inlines on >= 6.10: no helper runs before the snapshot there."""
    b = build(source, {"CAPTURE_LBR": 1, "LBR_ENTRIES": 32, "EMIT_ENTRY": emit_entry,
                       "PAIR_EXIT": 1, "NARGS": 2, "FILTER_TGID": 4242,
                       "EXCLUDE_TGID": os.getpid()}, builder, tmp_path)
    try:
        for fn, is_entry in functions.items():
            calls = helper_calls(b.dump_func(fn.encode()))
            if is_entry and not emit_entry:
                # an entry that only stashes for its exit takes no snapshot at all
                assert BPF_FUNC_get_branch_snapshot not in calls, fn
                continue
            assert calls.count(BPF_FUNC_get_branch_snapshot) == 1, fn
            # every path to the snapshot: the CPU id and the ring lookup, nothing else (a drop
            # path may be laid out before it, but cannot reach it)
            insns = b.dump_func(fn.encode())
            assert sorted(calls_that_can_precede(insns, BPF_FUNC_get_branch_snapshot)) == \
                sorted([BPF_FUNC_get_smp_processor_id, BPF_FUNC_map_lookup_elem]), fn
    finally:
        b.cleanup()


@pytest.mark.live
@pytest.mark.parametrize(("source", "functions"), [
    ("uprobe.c", ("on_entry", "on_return")),
    ("kprobe.c", ("on_kprobe", "on_kretprobe")),
    ("fentry.c", ("on_fentry", "on_fexit")),
])
def test_snapshot_stays_first_with_a_kernel_filter(require_root, require_bcc, source: str,
                                                   functions: tuple[str, str],
                                                   tmp_path) -> None:
    """A filter compiled into the probe (FILTER_EXPR, generated from a filter's AST) runs
    after the branch snapshot: the snapshot is still the first helper call of every path."""
    from bpflbr_shell.trace.filter import Scope, split_for_kernel

    c, rest = split_for_kernel("pid == 4242 && (tid != 7 || cpu == 0) && retval < 0 && "
                               "comm == 'ba*'", Scope())
    assert c is not None and rest is None
    b = build(source, {"CAPTURE_LBR": 1, "LBR_ENTRIES": 32, "EMIT_ENTRY": 1, "PAIR_EXIT": 1,
                       "FILTER_EXPR": c, "FILTER_COMM": 1}, "bcc", tmp_path)  # type: ignore[dict-item]
    try:
        for fn in functions:
            insns = b.dump_func(fn.encode())
            assert helper_calls(insns).count(BPF_FUNC_get_branch_snapshot) == 1, fn
            assert sorted(calls_that_can_precede(insns, BPF_FUNC_get_branch_snapshot)) == \
                sorted([BPF_FUNC_get_smp_processor_id, BPF_FUNC_map_lookup_elem]), fn
    finally:
        b.cleanup()


@pytest.mark.live
@pytest.mark.parametrize("builder", ["bcc", "cache"])
def test_no_snapshot_when_lbr_is_off(require_root, require_bcc, builder: str, tmp_path) -> None:
    b = build("kprobe.c", {"CAPTURE_LBR": 0, "LBR_ENTRIES": 0}, builder, tmp_path)
    try:
        for fn in ("on_kprobe", "on_kretprobe"):
            assert BPF_FUNC_get_branch_snapshot not in helper_calls(b.dump_func(fn.encode()))
    finally:
        b.cleanup()
