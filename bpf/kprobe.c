/* Kernel functions through kprobe.multi (one link for every matched function) or single
 * kprobes. The program is a kprobe-type program; for kprobe.multi it is loaded through libbpf
 * with expected_attach_type BPF_TRACE_KPROBE_MULTI. bpf_get_func_ip() names the function each
 * hit is in, for both attach styles, and keys the entry stash. A kretprobe cannot see the
 * arguments: exits take them from the paired entry. */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/perf_event.h>
#include "probe_common.h"

#define PROBE_KEYED 1

static __always_inline u64 probe_func_ip(struct pt_regs *ctx)
{
    return bpf_get_func_ip(ctx);
}

#include "regs_probe.h"

int on_kprobe(struct pt_regs *ctx)
{
    return entry_probe(ctx);
}

int on_kretprobe(struct pt_regs *ctx)
{
    return exit_probe(ctx);
}
