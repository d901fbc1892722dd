/* Maps and helpers every bpflbr-shell probe shares (BCC C; included by uprobe.c, fentry.c,
 * kprobe.c). The LBR snapshot is never taken here: each probe takes it itself as its very
 * first call, before anything in this file runs. */
#ifndef BPFLBR_PROBE_COMMON_H
#define BPFLBR_PROBE_COMMON_H

#include "lbr_event.h"

struct active_key {
    u32 tid;
    u32 pad;
    u64 func_ip;
};

BPF_PERCPU_ARRAY(lbr_scratch, struct lbr_buf, 1);
BPF_ARRAY(config, struct probe_config, 1);
BPF_PERCPU_ARRAY(stats, u64, STAT_MAX);
BPF_HASH(active, struct active_key, struct entry_state, MAX_ACTIVE);
BPF_STACK_TRACE(stacks, STACK_SLOTS);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);

/* The branch snapshot. Callers make this their very first statement; it is always inlined,
 * and the per-CPU array lookup before the helper is inlined by the verifier on >= 6.10, so no
 * branch is spent before the helper; on older kernels the trimmer drops the few it costs.
 * Returns bytes written or -errno (-EOPNOTSUPP when LBR capture is off). */
static __always_inline long take_lbr_snapshot(struct lbr_buf **out)
{
#if CAPTURE_LBR
    int zero = 0;
    struct lbr_buf *lbr = lbr_scratch.lookup(&zero);
    *out = lbr;
    if (!lbr)
        return -12;
    return bpf_get_branch_snapshot(lbr->entries, sizeof(lbr->entries), 0);
#else
    *out = 0;
    return -95;
#endif
}

static __always_inline u64 count(int which)
{
    u64 *v = stats.lookup(&which);
    if (!v)
        return 0;
    *v += 1;
    return *v;
}

static __always_inline int filtered_out(u32 tgid)
{
    int zero = 0;
    struct probe_config *cfg = config.lookup(&zero);
    if (!cfg)
        return 0;
    return (cfg->tgid && cfg->tgid != tgid) || (cfg->exclude_tgid == tgid);
}

static __always_inline int emit(void *ctx, struct lbr_buf *lbr, long lbr_ret, u32 kind,
                       struct entry_state *st, u64 now, u64 retval)
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
    ev->duration_ns = kind == EV_EXIT && st->ts_ns ? now - st->ts_ns : 0;
    ev->retval = retval;
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

/* Entry side of a paired trace: remember when and with what the function was entered.
 * key_ip tells calls of different functions on one thread apart (kprobes, fentry); probes
 * whose exit side cannot name the function (uretprobes) pass 0. */
static __always_inline void stash_entry(u64 key_ip, struct entry_state *st)
{
    struct active_key key = {};
    key.tid = (u32)bpf_get_current_pid_tgid();
    key.func_ip = key_ip;
    active.update(&key, st);
}

/* Exit side: the matching entry, copied out and forgotten; 0 when there was none. */
static __always_inline int take_entry(u64 key_ip, struct entry_state *out)
{
    struct active_key key = {};
    key.tid = (u32)bpf_get_current_pid_tgid();
    key.func_ip = key_ip;
    struct entry_state *st = active.lookup(&key);
    if (!st)
        return 0;
    *out = *st;
    active.delete(&key);
    return 1;
}

/* Common part of every entry probe, after the snapshot: filter, count; 0 = not ours. */
static __always_inline int entry_wanted(long lbr_ret)
{
    u64 id = bpf_get_current_pid_tgid();
    if (filtered_out(id >> 32)) {
        count(STAT_FILTERED);
        return 0;
    }
    count(STAT_HITS);
    if (EMIT_ENTRY && CAPTURE_LBR && lbr_ret < 0)
        count(STAT_LBR_ERRORS);
    return 1;
}

/* The end of an entry probe: stash for the exit side (key_ip as stash_entry takes it) and/or
 * emit the entry event. */
static __always_inline int finish_entry(void *ctx, struct lbr_buf *lbr, long lbr_ret,
                                        struct entry_state *st, u64 key_ip)
{
    if (PAIR_EXIT)
        stash_entry(key_ip, st);
    if (EMIT_ENTRY)
        return emit(ctx, lbr, lbr_ret, EV_ENTRY, st, st->ts_ns, 0);
    return 0;
}

/* Common part of every exit probe, after the snapshot: filter, pair with the entry (its args
 * and start time) when PAIR_EXIT, count; 0 = not ours. key_ip as take_entry takes it. */
static __always_inline int exit_wanted(long lbr_ret, u64 func_ip, u64 key_ip,
                                       struct entry_state *st)
{
    u64 id = bpf_get_current_pid_tgid();
    if (filtered_out(id >> 32)) {
        count(STAT_FILTERED);
        return 0;
    }
    if (!PAIR_EXIT) {
        count(STAT_HITS);
        st->func_ip = func_ip;
    } else if (!take_entry(key_ip, st)) {
        count(STAT_MISSED_ENTRY); /* attached mid-call, or the entry was not ours */
        if (!func_ip)
            return 0; /* nothing to name the function by (uretprobes) */
        st->func_ip = func_ip;
    }
    if (CAPTURE_LBR && lbr_ret < 0)
        count(STAT_LBR_ERRORS);
    return 1;
}

/* A pt_regs probe's six register arguments (x86-64 calling convention). */
static __always_inline void regs_args(struct pt_regs *ctx, struct entry_state *st)
{
    st->args[0] = PT_REGS_PARM1(ctx);
    st->args[1] = PT_REGS_PARM2(ctx);
    st->args[2] = PT_REGS_PARM3(ctx);
    st->args[3] = PT_REGS_PARM4(ctx);
    st->args[4] = PT_REGS_PARM5(ctx);
    st->args[5] = PT_REGS_PARM6(ctx);
}

#endif
