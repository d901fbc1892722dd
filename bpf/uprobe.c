/* uprobe / uretprobe on user functions (BCC, kprobe-type program with pt_regs).
 *
 * on_entry runs at the function's first instruction: it stashes ts/ip/args per thread and, for
 * `trace uprobe`, emits an entry event. on_return runs at the return: it takes the branch
 * snapshot FIRST (before any other helper, so the LBR still holds the traced code's branches),
 * then pairs with the stashed entry for args and duration and emits an exit event. */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/perf_event.h>
#include "lbr_event.h"

#ifndef EMIT_ENTRY
#define EMIT_ENTRY 0
#endif

BPF_PERCPU_ARRAY(lbr_scratch, struct lbr_buf, 1);
BPF_ARRAY(config, struct probe_config, 1);
BPF_PERCPU_ARRAY(stats, u64, STAT_MAX);
BPF_HASH(active, u32, struct entry_state, MAX_ACTIVE);
BPF_STACK_TRACE(stacks, STACK_SLOTS);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);

static inline u64 count(int which)
{
    u64 *v = stats.lookup(&which);
    if (!v)
        return 0;
    *v += 1;
    return *v;
}

static inline int filtered_out(u32 tgid)
{
    int zero = 0;
    struct probe_config *cfg = config.lookup(&zero);
    return cfg && cfg->tgid && cfg->tgid != tgid;
}

static inline int emit(struct pt_regs *ctx, struct lbr_buf *lbr, long lbr_ret, u32 kind,
                       struct entry_state *st, u64 now)
{
    struct lbr_event *ev = events.ringbuf_reserve(sizeof(struct lbr_event));
    if (!ev) {
        count(STAT_DROPS);
        return 0;
    }
    u64 id = bpf_get_current_pid_tgid();
    ev->ts_ns = now;
    ev->pid = id >> 32;
    ev->tid = (u32)id;
    ev->cpu = bpf_get_smp_processor_id();
    ev->kind = kind;
    ev->func_ip = st->func_ip;
    ev->duration_ns = kind == EV_EXIT ? now - st->ts_ns : 0;
    ev->retval = kind == EV_EXIT ? PT_REGS_RC(ctx) : 0;
#pragma unroll
    for (int i = 0; i < MAX_ARGS; i++)
        ev->args[i] = st->args[i];
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
#if CAPTURE_KSTACK
    ev->kstack_id = stacks.get_stackid(ctx, 0);
#else
    ev->kstack_id = -2;
#endif
#if CAPTURE_USTACK
    ev->ustack_id = stacks.get_stackid(ctx, BPF_F_USER_STACK);
#else
    ev->ustack_id = -2;
#endif
    ev->lbr_ret = lbr_ret;
    ev->nr_lbr = 0;
#if CAPTURE_LBR && LBR_ENTRIES > 0
    if (lbr && lbr_ret > 0) {
        ev->nr_lbr = lbr_ret / sizeof(struct perf_branch_entry);
        __builtin_memcpy(ev->lbr, lbr->entries, sizeof(ev->lbr));
    }
#endif
    u64 n = count(STAT_SUBMITTED);
    events.ringbuf_submit(ev, n % WAKEUP_EVERY ? BPF_RB_NO_WAKEUP : BPF_RB_FORCE_WAKEUP);
    return 0;
}

int on_entry(struct pt_regs *ctx)
{
    struct lbr_buf *lbr = 0;
    long lbr_ret = -95; /* EOPNOTSUPP: not requested */
#if CAPTURE_LBR && EMIT_ENTRY
    int zero = 0;
    lbr = lbr_scratch.lookup(&zero); /* inlined by the verifier on >= 6.10: no branch spent */
    if (lbr)
        lbr_ret = bpf_get_branch_snapshot(lbr->entries, sizeof(lbr->entries), 0);
#endif
    u64 id = bpf_get_current_pid_tgid();
    if (filtered_out(id >> 32)) {
        count(STAT_FILTERED);
        return 0;
    }
    count(STAT_HITS);
#if CAPTURE_LBR && EMIT_ENTRY
    if (lbr_ret < 0)
        count(STAT_LBR_ERRORS);
#endif
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
    return emit(ctx, lbr, lbr_ret, EV_ENTRY, &st, st.ts_ns);
#else
    u32 tid = (u32)id;
    active.update(&tid, &st);
    return 0;
#endif
}

int on_return(struct pt_regs *ctx)
{
    struct lbr_buf *lbr = 0;
    long lbr_ret = -95;
#if CAPTURE_LBR
    int zero = 0;
    lbr = lbr_scratch.lookup(&zero);
    if (lbr)
        lbr_ret = bpf_get_branch_snapshot(lbr->entries, sizeof(lbr->entries), 0);
#endif
    u64 now = bpf_ktime_get_ns();
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct entry_state *st = active.lookup(&tid);
    if (!st) {
        /* entry filtered out, or attached mid-call */
        if (!filtered_out(id >> 32))
            count(STAT_MISSED_ENTRY);
        return 0;
    }
#if CAPTURE_LBR
    if (lbr_ret < 0)
        count(STAT_LBR_ERRORS);
#endif
    struct entry_state copy = *st;
    active.delete(&tid);
    return emit(ctx, lbr, lbr_ret, EV_EXIT, &copy, now);
}
