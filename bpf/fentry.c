/* fentry/fexit on BPF programs and kernel functions (BPF_PROG_TYPE_TRACING).
 *
 * BCC compiles this file and creates its maps; the programs are then loaded through libbpf with
 * expected_attach_type, attach_btf_id and (for a BPF target) attach_prog_fd, which BCC 0.26
 * cannot set. Every emitting program starts with claim(): the branch snapshot is its first call.
 * fexit sees the arguments and the return value itself, so it needs no entry: PAIR_EXIT (a
 * silent or emitting fentry stashing the entry time) is only for durations. NARGS (the target's
 * BTF prototype length, at most 6) comes from the tool, never from user text. */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/perf_event.h>
#include "probe_common.h"

#ifndef NARGS
#define NARGS 0
#endif

static __always_inline void read_args(u64 *ctx, u64 *args)
{
#pragma unroll
    for (int i = 0; i < MAX_ARGS; i++) {
        u64 v = 0;
        if (i < NARGS)
            bpf_get_func_arg(ctx, i, &v);
        args[i] = v;
    }
}

int on_fentry(u64 *ctx)
{
    struct claim c = {};
    if (EMIT_ENTRY && !claim(&c, 1))
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    if (!wanted(id)) {
        if (EMIT_ENTRY)
            unclaim(&c);
        return 0;
    }
    u64 now = bpf_ktime_get_ns();
    u64 func_ip = bpf_get_func_ip(ctx);
    if (!EMIT_ENTRY) { /* silent: only the stash for the exit's duration */
        u64 args[MAX_ARGS];
        read_args(ctx, args);
        stash_for_exit(id, func_ip, now, func_ip, args);
        return 0;
    }
    struct lbr_event *ev = c.ev;
    ev->func_ip = func_ip;
    read_args(ctx, ev->args);
    if (PAIR_EXIT)
        stash_for_exit(id, func_ip, now, func_ip, ev->args);
    return publish(ctx, &c, id, EV_ENTRY, now, NO_DURATION, 0);
}

int on_fexit(u64 *ctx)
{
    struct claim c = {};
    if (!claim(&c, 1))
        return 0;
    u64 now = bpf_ktime_get_ns();
    u64 func_ip = bpf_get_func_ip(ctx);
    struct entry_state st = {};
    u64 duration;
    u64 id = bpf_get_current_pid_tgid();
    if (!exit_wanted(id, func_ip, now, &st, &duration)) {
        unclaim(&c);
        return 0;
    }
    struct lbr_event *ev = c.ev;
    ev->func_ip = func_ip;
    read_args(ctx, ev->args); /* fexit sees the arguments too */
    u64 ret = 0;
    bpf_get_func_ret(ctx, &ret);
    return publish(ctx, &c, id, EV_EXIT, now, duration, ret);
}
