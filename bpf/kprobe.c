/* Kernel functions through kprobe.multi (one link for every matched function) or single
 * kprobes. The program is a kprobe-type program; for kprobe.multi it is loaded through libbpf
 * with expected_attach_type BPF_TRACE_KPROBE_MULTI. bpf_get_func_ip() names the function each
 * hit is in, for both attach styles, and keys the entry stash. A kretprobe cannot see the
 * arguments: exits take them from the paired entry. */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/perf_event.h>
#include "probe_common.h"

int on_kprobe(struct pt_regs *ctx)
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
    if (!EMIT_ENTRY) {
        u64 args[MAX_ARGS];
        regs_args(ctx, args);
        stash_for_exit(id, func_ip, now, func_ip, args);
        return 0;
    }
    struct lbr_event *ev = c.ev;
    ev->func_ip = func_ip;
    regs_args(ctx, ev->args);
    if (PAIR_EXIT)
        stash_for_exit(id, func_ip, now, func_ip, ev->args);
    return publish(ctx, &c, id, EV_ENTRY, now, NO_DURATION, 0);
}

int on_kretprobe(struct pt_regs *ctx)
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
    copy_args(ev->args, st.args);
    return publish(ctx, &c, id, EV_EXIT, now, duration, PT_REGS_RC(ctx));
}
