/* Kernel functions through kprobe.multi (one link for every matched function) or single
 * kprobes. The program is a kprobe-type program; for kprobe.multi it is loaded through libbpf
 * with expected_attach_type BPF_TRACE_KPROBE_MULTI. bpf_get_func_ip() names the function each
 * hit is in, for both attach styles. */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/perf_event.h>
#include "probe_common.h"

#ifndef EMIT_ENTRY
#define EMIT_ENTRY 1
#endif
#ifndef PAIR_EXIT
#define PAIR_EXIT 0
#endif

int on_kprobe(struct pt_regs *ctx)
{
    struct lbr_buf *lbr = 0;
    long lbr_ret = EMIT_ENTRY ? take_lbr_snapshot(&lbr) : -95;
    u64 id = bpf_get_current_pid_tgid();
    if (filtered_out(id >> 32)) {
        count(STAT_FILTERED);
        return 0;
    }
    count(STAT_HITS);
    if (EMIT_ENTRY && CAPTURE_LBR && lbr_ret < 0)
        count(STAT_LBR_ERRORS);
    struct entry_state st = {};
    st.ts_ns = bpf_ktime_get_ns();
    st.func_ip = bpf_get_func_ip(ctx);
    st.args[0] = PT_REGS_PARM1(ctx);
    st.args[1] = PT_REGS_PARM2(ctx);
    st.args[2] = PT_REGS_PARM3(ctx);
    st.args[3] = PT_REGS_PARM4(ctx);
    st.args[4] = PT_REGS_PARM5(ctx);
    st.args[5] = PT_REGS_PARM6(ctx);
#if PAIR_EXIT
    stash_entry(st.func_ip, &st);
#endif
#if EMIT_ENTRY
    return emit(ctx, lbr, lbr_ret, EV_ENTRY, &st, st.ts_ns, 0);
#else
    return 0;
#endif
}

int on_kretprobe(struct pt_regs *ctx)
{
    struct lbr_buf *lbr = 0;
    long lbr_ret = take_lbr_snapshot(&lbr);
    u64 now = bpf_ktime_get_ns();
    u64 id = bpf_get_current_pid_tgid();
    if (filtered_out(id >> 32)) {
        count(STAT_FILTERED);
        return 0;
    }
    u64 func_ip = bpf_get_func_ip(ctx);
    struct entry_state st = {};
#if PAIR_EXIT
    if (!take_entry(func_ip, &st)) {
        count(STAT_MISSED_ENTRY);
        st.func_ip = func_ip;
    }
#else
    count(STAT_HITS);
    st.func_ip = func_ip;
#endif
    if (CAPTURE_LBR && lbr_ret < 0)
        count(STAT_LBR_ERRORS);
    return emit(ctx, lbr, lbr_ret, EV_EXIT, &st, now, PT_REGS_RC(ctx));
}
