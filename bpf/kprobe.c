/* Kernel functions through kprobe.multi (one link for every matched function) or single
 * kprobes. The program is a kprobe-type program; for kprobe.multi it is loaded through libbpf
 * with expected_attach_type BPF_TRACE_KPROBE_MULTI. bpf_get_func_ip() names the function each
 * hit is in, for both attach styles, and keys the entry stash. */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/perf_event.h>
#include "probe_common.h"

int on_kprobe(struct pt_regs *ctx)
{
    struct lbr_buf *lbr = 0;
    long lbr_ret = EMIT_ENTRY ? take_lbr_snapshot(&lbr) : -95;
    if (!entry_wanted(lbr_ret))
        return 0;
    struct entry_state st = {};
    st.ts_ns = bpf_ktime_get_ns();
    st.func_ip = bpf_get_func_ip(ctx);
    regs_args(ctx, &st);
    return finish_entry(ctx, lbr, lbr_ret, &st, st.func_ip);
}

int on_kretprobe(struct pt_regs *ctx)
{
    struct lbr_buf *lbr = 0;
    long lbr_ret = take_lbr_snapshot(&lbr);
    u64 now = bpf_ktime_get_ns();
    u64 func_ip = bpf_get_func_ip(ctx);
    struct entry_state st = {};
    if (!exit_wanted(lbr_ret, func_ip, func_ip, &st))
        return 0;
    return emit(ctx, lbr, lbr_ret, EV_EXIT, &st, now, PT_REGS_RC(ctx));
}
