/* uprobe / uretprobe on user functions (BCC, kprobe-type program with pt_regs).
 *
 * on_entry runs at the function's first instruction: for `trace uprobe` it emits an entry
 * event; for `trace uretprobe` it stashes ts/args per (thread, function). on_return runs at the
 * return: it takes the branch snapshot FIRST (before any other helper, so the LBR still holds
 * the traced code's branches), then pairs with the stash for args and duration and emits. */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/perf_event.h>
#include "probe_common.h"

#ifndef EMIT_ENTRY
#define EMIT_ENTRY 0
#endif

int on_entry(struct pt_regs *ctx)
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
    st.func_ip = PT_REGS_IP(ctx);
    st.args[0] = PT_REGS_PARM1(ctx);
    st.args[1] = PT_REGS_PARM2(ctx);
    st.args[2] = PT_REGS_PARM3(ctx);
    st.args[3] = PT_REGS_PARM4(ctx);
    st.args[4] = PT_REGS_PARM5(ctx);
    st.args[5] = PT_REGS_PARM6(ctx);
#if EMIT_ENTRY
    return emit(ctx, lbr, lbr_ret, EV_ENTRY, &st, st.ts_ns, 0);
#else
    stash_entry(0, &st); /* the uretprobe side cannot name the function: key by thread */
    return 0;
#endif
}

int on_return(struct pt_regs *ctx)
{
    struct lbr_buf *lbr = 0;
    long lbr_ret = take_lbr_snapshot(&lbr);
    u64 now = bpf_ktime_get_ns();
    u64 id = bpf_get_current_pid_tgid();
    struct entry_state st = {};
    if (!take_entry(0, &st)) {
        /* entry filtered out, or attached mid-call */
        if (!filtered_out(id >> 32))
            count(STAT_MISSED_ENTRY);
        return 0;
    }
    if (CAPTURE_LBR && lbr_ret < 0)
        count(STAT_LBR_ERRORS);
    return emit(ctx, lbr, lbr_ret, EV_EXIT, &st, now, PT_REGS_RC(ctx));
}
