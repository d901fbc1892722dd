/* fentry/fexit on BPF programs and kernel functions (BPF_PROG_TYPE_TRACING).
 *
 * BCC compiles this file and creates its maps; the programs are then loaded through libbpf with
 * expected_attach_type, attach_btf_id and (for a BPF target) attach_prog_fd, which BCC 0.26
 * cannot set. Both take the branch snapshot as their very first call. NARGS (the target's BTF
 * prototype length, at most 6) comes from the tool, never from user text. */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/perf_event.h>
#include "probe_common.h"

#ifndef NARGS
#define NARGS 0
#endif

static __always_inline void read_args(u64 *ctx, struct entry_state *st)
{
#pragma unroll
    for (int i = 0; i < MAX_ARGS; i++) {
        u64 v = 0;
        if (i < NARGS)
            bpf_get_func_arg(ctx, i, &v);
        st->args[i] = v;
    }
}

int on_fentry(u64 *ctx)
{
    struct lbr_buf *lbr = 0;
    long lbr_ret = EMIT_ENTRY ? take_lbr_snapshot(&lbr) : -95;
    if (!entry_wanted(lbr_ret))
        return 0;
    struct entry_state st = {};
    st.ts_ns = bpf_ktime_get_ns();
    st.func_ip = bpf_get_func_ip(ctx);
    read_args(ctx, &st);
    return finish_entry(ctx, lbr, lbr_ret, &st, st.func_ip);
}

int on_fexit(u64 *ctx)
{
    struct lbr_buf *lbr = 0;
    long lbr_ret = take_lbr_snapshot(&lbr);
    u64 now = bpf_ktime_get_ns();
    u64 func_ip = bpf_get_func_ip(ctx);
    struct entry_state st = {};
    if (!exit_wanted(lbr_ret, func_ip, func_ip, &st))
        return 0;
    read_args(ctx, &st); /* fexit sees the arguments too */
    u64 ret = 0;
    bpf_get_func_ret(ctx, &ret);
    return emit(ctx, lbr, lbr_ret, EV_EXIT, &st, now, ret);
}
