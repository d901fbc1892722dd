/* uprobe / uretprobe on user functions (BCC, kprobe-type program with pt_regs).
 *
 * on_entry runs at the function's first instruction: for `trace uprobe` it emits an entry
 * event; for `trace uretprobe` it stashes ts/args per thread. on_return runs at the return: it
 * claims its slot and takes the branch snapshot FIRST (before any other helper, so the LBR
 * still holds the traced code's branches), then pairs with the stash for args and duration and
 * publishes. A uretprobe cannot name the function it returns from (the ip is in the caller), so
 * the stash is keyed by thread alone (key 0): one outstanding call per thread, the common case
 * for user code. */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/perf_event.h>
#include "probe_common.h"

int on_entry(struct pt_regs *ctx)
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
    u64 func_ip = PT_REGS_IP(ctx);
    if (!EMIT_ENTRY) {
        u64 args[MAX_ARGS];
        regs_args(ctx, args);
        stash_for_exit(id, 0, now, func_ip, args);
        return 0;
    }
    struct lbr_event *ev = c.ev;
    ev->func_ip = func_ip;
    regs_args(ctx, ev->args);
    if (PAIR_EXIT)
        stash_for_exit(id, 0, now, func_ip, ev->args);
    return publish(ctx, &c, id, EV_ENTRY, now, NO_DURATION, 0);
}

int on_return(struct pt_regs *ctx)
{
    struct claim c = {};
    if (!claim(&c, 1))
        return 0;
    u64 now = bpf_ktime_get_ns();
    struct entry_state st = {};
    u64 duration;
    u64 id = bpf_get_current_pid_tgid();
    if (!exit_wanted(id, 0, now, &st, &duration)) {
        unclaim(&c);
        return 0;
    }
    struct lbr_event *ev = c.ev;
    ev->func_ip = st.func_ip;
    copy_args(ev->args, st.args);
    return publish(ctx, &c, id, EV_EXIT, now, duration, PT_REGS_RC(ctx));
}
