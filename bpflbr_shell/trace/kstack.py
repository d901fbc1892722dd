"""Which frames of a captured kernel stack are the tracer's own.

A stack our probe takes starts where the probe runs: for fentry/fexit that is our BPF program,
then the trampoline, then the traced function; for kprobes it may start in the kprobe, fprobe
or rethook machinery. Those frames are ours, not the traced code's, so they are hidden the way
LBR trimming hides our branches (``set lbr-trim off`` shows them) and counted. Only frames
ABOVE the traced function go: below it the stack is the traced world's, whatever it holds.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from bpflbr_shell.symbols.kernel import Location

# Kernel functions between a probe firing and our program taking the stack (fprobe/kprobe.multi,
# perf kprobes and kretprobes, rethook, ftrace's list dispatch, the BPF run wrappers).
TRACER_STACK_FUNCS = frozenset((
    "kprobe_ftrace_handler", "kprobe_perf_func", "kprobe_dispatcher", "kretprobe_dispatcher",
    "kretprobe_perf_func", "kretprobe_trampoline_handler", "__kretprobe_trampoline_handler",
    "kretprobe_rethook_handler", "trace_call_bpf", "bpf_prog_run_array",
    "fprobe_handler", "__fprobe_handler", "fprobe_kprobe_handler", "fprobe_exit_handler",
    "kprobe_multi_link_handler", "kprobe_multi_link_exit_handler",
    "kprobe_multi_link_prog_run", "rethook_trampoline_handler",
    "arch_rethook_trampoline_callback", "arch_rethook_trampoline",
    "arch_ftrace_ops_list_func", "ftrace_ops_list_func", "__ftrace_ops_list_func",
    "ftrace_call", "ftrace_regs_call", "ftrace_caller", "ftrace_regs_caller",
    "__bpf_prog_enter", "__bpf_prog_exit", "__bpf_prog_enter_recur", "__bpf_prog_exit_recur",
    "bpf_get_stackid", "bpf_get_stackid_raw_tp", "bpf_get_stackid_tp",
))
# our probes' programs as kallsyms names them (bpf_prog_<tag>_<function name>), and the
# trampolines fentry/fexit run through
_OURS = re.compile(r"bpf_prog_[0-9a-f]{16}_(bpflbr_\w+|on_kprobe|on_kretprobe|on_fentry|on_fexit)"
                   r"|bpf_trampoline_\d+")


def is_tracer_frame(loc: Location) -> bool:
    func = loc.func
    return func is not None and (func in TRACER_STACK_FUNCS or _OURS.fullmatch(func) is not None)


def _start(loc: Location) -> int | None:
    return loc.addr - loc.offset if loc.func is not None else None


def tracer_frames(frames: Sequence[Location], traced: Location | None) -> int:
    """How many leading ``frames`` are the tracer's: all those above the first frame inside
    the traced function (``traced``: where its address symbolizes) when it is in the stack;
    else (a return probe: the function has returned) the leading run of known tracer
    frames, unsymbolized ones inside that run included (our programs and trampolines are
    unknown to a kallsyms snapshot taken before the trace attached)."""
    start = _start(traced) if traced is not None else None
    if start is not None:
        for i, loc in enumerate(frames):
            if _start(loc) == start:
                return i
    hidden = 0
    for i, loc in enumerate(frames):
        if is_tracer_frame(loc):
            hidden = i + 1
        elif loc.func is not None:
            break
    return hidden
