"""Probe construction: compile-time knobs (pure) and, on the live host, the compiled bytecode
itself: every probe that emits an event takes the LBR snapshot as its very first helper call.
"""

from __future__ import annotations

import struct

import pytest

from bpflbr_shell.events import raw_event_type
from bpflbr_shell.probes.base import CaptureOptions, stack_knobs, wakeup_every

BPF_FUNC_map_lookup_elem = 1
BPF_FUNC_get_branch_snapshot = 176
CALL = 0x85  # BPF_JMP | BPF_CALL
CALLX = 0x8D  # an indirect call: what BCC emits for a map method it failed to rewrite


def test_stacks_are_the_lbr_fallback() -> None:
    both = CaptureOptions(ustack=True, kstack=True)
    assert stack_knobs(both, lbr_on=False) == {"CAPTURE_USTACK": 1, "CAPTURE_KSTACK": 1}
    assert stack_knobs(both, lbr_on=True) == {"CAPTURE_USTACK": 0, "CAPTURE_KSTACK": 0}
    asked = CaptureOptions(ustack=True, kstack=False, stacks_with_lbr=True)
    assert stack_knobs(asked, lbr_on=True) == {"CAPTURE_USTACK": 1, "CAPTURE_KSTACK": 0}


def test_wakeups_scale_with_the_ring_and_the_record() -> None:
    small, big = raw_event_type(0), raw_event_type(32)
    assert wakeup_every(1024, small) > wakeup_every(1024, big) >= 1
    assert wakeup_every(2048, big) == pytest.approx(2 * wakeup_every(1024, big), abs=1)
    assert wakeup_every(1, big) == 1  # a tiny ring wakes the reader on every event


def helper_calls(insns: bytes) -> list[int]:
    """Helper ids of the BPF_CALL instructions, in program order (8-byte instructions)."""
    calls = []
    for off in range(0, len(insns), 8):
        code, regs, _off, imm = struct.unpack_from("<BBhi", insns, off)
        assert code != CALLX, "indirect call: a map method BCC did not rewrite"
        if code == CALL and not regs & 0xF0:  # src_reg 0: a helper, not a bpf-to-bpf call
            calls.append(imm)
    return calls


@pytest.mark.live
@pytest.mark.parametrize(("source", "functions"), [
    ("uprobe.c", {"on_entry": True, "on_return": False}),
    ("kprobe.c", {"on_kprobe": True, "on_kretprobe": False}),
    ("fentry.c", {"on_fentry": True, "on_fexit": False}),
])
@pytest.mark.parametrize("emit_entry", [0, 1])
def test_snapshot_is_the_first_helper_call(require_root, require_bcc, source: str,
                                           functions: dict[str, bool], emit_entry: int) -> None:
    """Compiled for real by BCC: the only thing before bpf_get_branch_snapshot() is the per-CPU
    scratch lookup, which the verifier inlines on >= 6.10 (no branch spent)."""
    from bpflbr_shell.probes.bccprog import compile_program

    b = compile_program(source, {"CAPTURE_LBR": 1, "LBR_ENTRIES": 32, "EMIT_ENTRY": emit_entry,
                                 "PAIR_EXIT": 1, "NARGS": 2})
    try:
        for fn, is_entry in functions.items():
            calls = helper_calls(b.dump_func(fn.encode()))
            if is_entry and not emit_entry:
                # an entry that only stashes for its exit takes no snapshot at all
                assert BPF_FUNC_get_branch_snapshot not in calls, fn
                continue
            assert calls[:2] == [BPF_FUNC_map_lookup_elem, BPF_FUNC_get_branch_snapshot], fn
    finally:
        b.cleanup()


@pytest.mark.live
def test_no_snapshot_when_lbr_is_off(require_root, require_bcc) -> None:
    from bpflbr_shell.probes.bccprog import compile_program

    b = compile_program("kprobe.c", {"CAPTURE_LBR": 0, "LBR_ENTRIES": 0})
    try:
        for fn in ("on_kprobe", "on_kretprobe"):
            assert BPF_FUNC_get_branch_snapshot not in helper_calls(b.dump_func(fn.encode()))
    finally:
        b.cleanup()
