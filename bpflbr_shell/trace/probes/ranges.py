"""Address ranges of the tracer's own code, for LBR trimming.

A snapshot taken inside our probe also records the branches of getting there: the trampoline or
uprobe/kprobe path, the snapshot helper and the PMU code behind it, and our own BPF program.
This module names them once, from facts of the running kernel (kallsyms, our programs' JIT
ranges), so every probe kind trims the same way.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from bpflbr_shell.trace.lbr import AddrRange

# Kernel functions on the path from a probe firing to bpf_get_branch_snapshot() returning.
TRACER_FUNCS = (
    "bpf_get_branch_snapshot", "intel_pmu_snapshot_branch_stack",
    "intel_pmu_snapshot_arch_branch_stack", "amd_pmu_v2_snapshot_branch_stack",
    "__bpf_prog_enter", "__bpf_prog_exit", "__bpf_prog_enter_recur", "__bpf_prog_exit_recur",
    "__bpf_tramp_enter", "__bpf_tramp_exit", "migrate_disable", "migrate_enable",
    "kprobe_multi_link_handler", "fprobe_handler", "kprobe_ftrace_handler",
    "kprobe_perf_func", "trace_call_bpf", "bpf_prog_run_array",
    "uprobe_dispatcher", "uprobe_perf_func", "__uprobe_perf_func", "handler_chain",
    "handle_swbp", "uprobe_notify_resume", "uretprobe_dispatcher", "handle_trampoline",
)


def prog_ranges(prog_fds: Iterable[int], label: str = "our BPF program") -> list[AddrRange]:
    """JIT ranges of the given programs (every subprogram)."""
    from bpflbr_shell.kernel.progs import read_raw_prog_info_fd

    out: list[AddrRange] = []
    for fd in prog_fds:
        raw = read_raw_prog_info_fd(fd, with_btf=False)
        out += [AddrRange(a, a + n, label) for a, n in zip(raw.jited_ksyms, raw.jited_func_lens,
                                                           strict=False)]
    return out


def kernel_tracer_ranges(kallsyms: Any, names: Iterable[str] = TRACER_FUNCS) -> list[AddrRange]:
    """Ranges of the kernel's tracing machinery, as kallsyms places it; trampolines included."""
    out: list[AddrRange] = []
    for name in names:
        for sym in kallsyms.symbols_named(name):
            out.append(AddrRange(sym.addr, sym.addr + max(sym.size, 1), name))
    for name in kallsyms.names_matching("bpf_trampoline_*", limit=None):
        for sym in kallsyms.symbols_named(name):
            out.append(AddrRange(sym.addr, sym.addr + max(sym.size, 1), "trampoline"))
    return out


def tracer_ranges(prog_fds: Iterable[int], kallsyms: Any | None) -> list[AddrRange]:
    ranges = prog_ranges(prog_fds)
    if kallsyms is not None and os.geteuid() == 0:
        ranges += kernel_tracer_ranges(kallsyms)
    return ranges
