/* uprobe / uretprobe on user functions (BCC, kprobe-type program with pt_regs).
 *
 * on_entry runs at the function's first instruction: for `trace uprobe` it emits an entry
 * event; for `trace uretprobe` it stashes ts/args per thread. on_return runs at the return: it
 * takes the branch snapshot FIRST (before any other helper, so the LBR still holds the traced
 * code's branches), then pairs with the stash for args and duration and emits. A uretprobe
 * cannot name the function it returns from (the ip is in the caller), so the stash is keyed by
 * thread alone (key 0): one outstanding call per thread, the common case for user code. */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/perf_event.h>
#include "probe_common.h"

int on_entry(struct pt_regs *ctx)
{
    struct lbr_buf *lbr = 0;
    long lbr_ret = EMIT_ENTRY ? take_lbr_snapshot(&lbr) : -95;
    if (!entry_wanted(lbr_ret))
        return 0;
    struct entry_state st = {};
    st.ts_ns = bpf_ktime_get_ns();
    st.func_ip = PT_REGS_IP(ctx);
    regs_args(ctx, &st);
    return finish_entry(ctx, lbr, lbr_ret, &st, 0);
}

int on_return(struct pt_regs *ctx)
{
    struct lbr_buf *lbr = 0;
    long lbr_ret = take_lbr_snapshot(&lbr);
    u64 now = bpf_ktime_get_ns();
    struct entry_state st = {};
    if (!exit_wanted(lbr_ret, 0, 0, &st))
        return 0;
    return emit(ctx, lbr, lbr_ret, EV_EXIT, &st, now, PT_REGS_RC(ctx));
}
