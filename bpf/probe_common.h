/* Maps and helpers every bpflbr-shell probe shares (BCC C; included by uprobe.c, fentry.c,
 * kprobe.c). Each probe that emits an event starts with claim(), whose only call is the branch
 * snapshot: the slot it fills is claimed with loads and stores alone (the CPU id and the array
 * lookup are inlined by the verifier on >= 6.10), so no helper runs before the snapshot. */
#ifndef BPFLBR_PROBE_COMMON_H
#define BPFLBR_PROBE_COMMON_H

#include "lbr_event.h"

#define barrier() asm volatile("" ::: "memory")

struct active_key {
    u32 tid;
    u32 pad;
    u64 func_ip;
};

BPF_F_TABLE("array", int, struct cpu_ring_bytes, rings, NR_RINGS, BPF_F_MMAPABLE);
BPF_PERCPU_ARRAY(stats, u64, STAT_MAX);
BPF_HASH(active, struct active_key, struct entry_state, MAX_ACTIVE);
BPF_STACK_TRACE(stacks, STACK_SLOTS);

static __always_inline void count(int which)
{
    u64 *v = stats.lookup(&which);
    if (v)
        *v += 1;
}

/* A claimed slot: the event being written and the ring it is published to. */
struct claim {
    struct cpu_ring *ring;
    struct lbr_event *ev;
    u64 pos;
    long lbr_ret; /* bpf_get_branch_snapshot(): bytes written, or -errno */
    u32 cpu;
};

/* Claim this CPU's next free slot and take the branch snapshot straight into it. Callers make
 * this their very first statement. 0 when the event is dropped (ring full, or a probe of ours
 * interrupted on this CPU is mid-event); the drop is counted.
 * The counters partition every firing of an emitting probe: each counts STAT_HITS once, here,
 * and then exactly one outcome: STAT_DROPS, STAT_FILTERED, or a published slot (the ring's
 * prod). So hits == published + drops + filtered once the probes are detached. HITS comes
 * first on every path: a reader that takes the outcomes before HITS never sees more outcomes
 * than hits. */
static __always_inline int claim(struct claim *c, int with_lbr)
{
    u32 cpu = bpf_get_smp_processor_id();
    struct cpu_ring *q = (struct cpu_ring *)rings.lookup(&cpu);
    if (!q)
        return 0;
    if (q->busy) {
        count(STAT_HITS);
        count(STAT_DROPS);
        return 0;
    }
    q->busy = 1;
    barrier(); /* busy is set before prod is read: an interrupting probe sees it */
    u64 pos = q->prod;
    if (pos - q->cons >= RING_SLOTS) {
        q->busy = 0;
        count(STAT_HITS);
        count(STAT_DROPS);
        return 0;
    }
    struct lbr_event *ev = &q->slot[pos & (RING_SLOTS - 1)];
    c->ring = q;
    c->ev = ev;
    c->pos = pos;
    c->cpu = cpu;
#if CAPTURE_LBR && LBR_ENTRIES > 0
    c->lbr_ret = with_lbr ? bpf_get_branch_snapshot(ev->lbr, sizeof(ev->lbr), 0) : -95;
#else
    c->lbr_ret = -95;
#endif
    count(STAT_HITS);
    return 1;
}

/* Give the slot back unpublished (the hit was filtered out). */
static __always_inline void unclaim(struct claim *c)
{
    c->ring->busy = 0;
}

/* Fill in what every event carries and publish it to the reader. */
static __always_inline int publish(void *ctx, struct claim *c, u64 id, u32 kind, u64 now,
                                   u64 duration, u64 retval)
{
    struct lbr_event *ev = c->ev;
    ev->ts_ns = now;
    ev->pid = id >> 32;
    ev->tid = (u32)id;
    ev->cpu = c->cpu;
    ev->kind = kind;
    ev->duration_ns = duration;
    ev->retval = retval;
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
    long lbr_ret = c->lbr_ret;
    ev->lbr_ret = lbr_ret;
    ev->nr_lbr = lbr_ret > 0 ? lbr_ret / sizeof(struct perf_branch_entry) : 0;
    barrier(); /* the slot is written before prod says so (x86 keeps stores in order) */
    c->ring->prod = c->pos + 1;
    c->ring->busy = 0;
    return 0;
}

/* The pid filter: FILTER_TGID (0: any process) and EXCLUDE_TGID (the tracer itself, whose
 * own syscalls would feed back into the trace) are integers from the tool, fixed per trace. */
#ifndef FILTER_TGID
#define FILTER_TGID 0
#endif
#ifndef EXCLUDE_TGID
#define EXCLUDE_TGID 0
#endif
static __always_inline int filtered_out(u64 id)
{
    u32 tgid = id >> 32;
    return (FILTER_TGID && tgid != FILTER_TGID) || (EXCLUDE_TGID && tgid == EXCLUDE_TGID);
}

/* A filter compiled from the tool's own AST (bpflbr_shell/trace/filter.py): FILTER_EXPR is a C
 * expression of integer literals, the names below, the two readers and operators, nothing
 * else (the tool checks every token before passing it); it runs after the branch snapshot,
 * once the event's values are in. ex: an exit (the return value is known); dk: the duration
 * is known (a paired exit). A rejected hit counts STAT_FILTERED. */
#ifdef FILTER_EXPR
/* n bytes (a constant, at most 8) of a struct member at ptr + off, little-endian; 0 through a
 * NULL pointer or when the read faults. Kernel memory is the upper half on x86-64. */
static __always_inline u64 bpflbr_rd(u64 ptr, u64 off, u64 n)
{
    u64 v = 0;
    if (!ptr)
        return 0;
    if ((s64)ptr < 0)
        bpf_probe_read_kernel(&v, n, (void *)(ptr + off));
    else
        bpf_probe_read_user(&v, n, (void *)(ptr + off));
    return v;
}

/* The 8 bytes of a C string at addr + off, zero after its NUL (the string helpers stop at
 * it): a string compare reads word k only once words 0..k-1 matched, so never past the NUL. */
static __always_inline u64 bpflbr_strw(u64 addr, u64 off)
{
    u64 buf[2] = {};
    if ((s64)addr < 0)
        bpf_probe_read_kernel_str(buf, 9, (void *)(addr + off));
    else
        bpf_probe_read_user_str(buf, 9, (void *)(addr + off));
    return buf[0];
}

static __always_inline int rejected(u64 id, u32 cpu, u64 *args, u64 retval, u64 dur,
                                    int is_exit)
{
    s64 pid = id >> 32, tid = (u32)id;
    s64 a0 = args[0], a1 = args[1], a2 = args[2], a3 = args[3], a4 = args[4], a5 = args[5];
    s64 ex = is_exit, dk = dur != NO_DURATION;
#if FILTER_COMM
    u64 comm_words[2] = {};
    bpf_get_current_comm(comm_words, sizeof(comm_words)); /* comm as two little-endian words */
    u64 c0 = comm_words[0], c1 = comm_words[1];
#endif
    if (FILTER_EXPR)
        return 0;
    count(STAT_FILTERED);
    return 1;
}
#else
#define rejected(id, cpu, args, retval, dur, is_exit) 0
#endif
#ifndef FILTER_COMM
#define FILTER_COMM 0
#endif

/* Whether this entry is ours to record (the pid filter). An emitting entry (claim() counted
 * its hit) counts the filtered outcome; a silent one (the stash for an exit) counts nothing:
 * its exit is the event, counted there. */
static __always_inline int wanted(u64 id)
{
    if (filtered_out(id)) {
        if (EMIT_ENTRY)
            count(STAT_FILTERED);
        return 0;
    }
    return 1;
}

/* Entry side of a paired trace: remember when and with what the function was entered.
 * key_ip tells calls of different functions on one thread apart (kprobes, fentry); probes
 * whose exit side cannot name the function (uretprobes) pass 0. */
static __always_inline void stash_entry(u64 id, u64 key_ip, struct entry_state *st)
{
    struct active_key key = {};
    key.tid = (u32)id;
    key.func_ip = key_ip;
    active.update(&key, st);
}

/* Exit side: the matching entry, copied out and forgotten; 0 when there was none (attached
 * mid-call, or the entry was not ours: counted). */
static __always_inline int take_entry(u64 id, u64 key_ip, struct entry_state *out)
{
    struct active_key key = {};
    key.tid = (u32)id;
    key.func_ip = key_ip;
    struct entry_state *st = active.lookup(&key);
    if (!st) {
        count(STAT_MISSED_ENTRY);
        return 0;
    }
    *out = *st;
    active.delete(&key);
    return 1;
}

/* Whether an exit hit is ours to record: the pid filter, then (PAIR_EXIT) the entry it pairs
 * with, copied into st, and the call's duration. Unpaired exits have NO_DURATION; those of
 * uretprobes (key_ip 0: nothing else names their function) are not recorded. */
static __always_inline int exit_wanted(u64 id, u64 key_ip, u64 now, struct entry_state *st,
                                       u64 *duration)
{
    *duration = NO_DURATION;
    if (filtered_out(id)) {
        count(STAT_FILTERED);
        return 0;
    }
    if (!PAIR_EXIT)
        return 1;
    if (take_entry(id, key_ip, st)) {
        *duration = now - st->ts_ns;
        return 1;
    }
    if (key_ip != 0)
        return 1;
    count(STAT_FILTERED); /* a uretprobe's return of a call made before the trace: not recorded */
    return 0;
}

/* Stash an entry for its exit (PAIR_EXIT); the stash key is as take_entry takes it. */
static __always_inline void stash_for_exit(u64 id, u64 key_ip, u64 now, u64 func_ip,
                                           u64 *args)
{
    struct entry_state st = {};
    st.ts_ns = now;
    st.func_ip = func_ip;
#pragma unroll
    for (int i = 0; i < MAX_ARGS; i++)
        st.args[i] = args[i];
    stash_entry(id, key_ip, &st);
}

static __always_inline void copy_args(u64 *dst, u64 *src)
{
#pragma unroll
    for (int i = 0; i < MAX_ARGS; i++)
        dst[i] = src[i];
}

/* Copy the C strings STR_MASK names (user pointers) into the event: args, and on exit the
 * return value. Compiled out unless the tool asks (STR_COUNT 0). */
static __always_inline void capture_strings(struct lbr_event *ev, u64 retval, int is_exit)
{
#if STR_COUNT > 0
    int k = 0;
#pragma unroll
    for (int i = 0; i < MAX_ARGS; i++) {
        if ((STR_MASK >> i) & 1) {
            if (k < STR_COUNT) {
                struct user_str *s = &ev->str[k];
                u64 p = ev->args[i];
                s->ret = p ? bpf_probe_read_user_str(s->buf, STR_LEN, (void *)p) : 0;
            }
            k++;
        }
    }
    if (((STR_MASK >> STR_RET_BIT) & 1) && k < STR_COUNT) {
        struct user_str *s = &ev->str[k];
        s->ret = is_exit && retval ? bpf_probe_read_user_str(s->buf, STR_LEN, (void *)retval) : 0;
    }
#endif
}

/* A pt_regs probe's six register arguments (x86-64 calling convention). */
static __always_inline void regs_args(struct pt_regs *ctx, u64 *args)
{
    args[0] = PT_REGS_PARM1(ctx);
    args[1] = PT_REGS_PARM2(ctx);
    args[2] = PT_REGS_PARM3(ctx);
    args[3] = PT_REGS_PARM4(ctx);
    args[4] = PT_REGS_PARM5(ctx);
    args[5] = PT_REGS_PARM6(ctx);
}

#endif
