/* Kernel functions through kprobe.multi (one link for every matched function) or single
 * kprobes. The program is a kprobe-type program; for kprobe.multi it is loaded through libbpf
 * with expected_attach_type BPF_TRACE_KPROBE_MULTI. bpf_get_func_ip() names the function each
 * hit is in, for both attach styles, and keys the entry stash. A kretprobe cannot see the
 * arguments: exits take them from the paired entry. */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/perf_event.h>
#include "probe_common.h"

#define PROBE_CTX struct pt_regs *
#define PROBE_KEYED 1
#define PROBE_EXIT_SEES_ARGS 0

static __always_inline u64 probe_func_ip(struct pt_regs *ctx)
{
    return bpf_get_func_ip(ctx);
}

static __always_inline void probe_args(struct pt_regs *ctx, u64 *args)
{
    regs_args(ctx, args);
}

static __always_inline u64 probe_retval(struct pt_regs *ctx)
{
    return PT_REGS_RC(ctx);
}

#include "probe_bodies.h"

int on_kprobe(struct pt_regs *ctx)
{
    return entry_probe(ctx);
}

int on_kretprobe(struct pt_regs *ctx)
{
    return exit_probe(ctx);
}
