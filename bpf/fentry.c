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
#ifndef EMIT_ENTRY
#define EMIT_ENTRY 1
#endif
#ifndef PAIR_EXIT
#define PAIR_EXIT 0
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
    read_args(ctx, &st);
#if PAIR_EXIT
    stash_entry(st.func_ip, &st);
#endif
#if EMIT_ENTRY
    return emit(ctx, lbr, lbr_ret, EV_ENTRY, &st, st.ts_ns, 0);
#else
    return 0;
#endif
}

int on_fexit(u64 *ctx)
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
    read_args(ctx, &st); /* fexit sees the arguments too */
    if (CAPTURE_LBR && lbr_ret < 0)
        count(STAT_LBR_ERRORS);
    u64 ret = 0;
    bpf_get_func_ret(ctx, &ret);
    return emit(ctx, lbr, lbr_ret, EV_EXIT, &st, now, ret);
}
