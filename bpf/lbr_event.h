/* The event record every bpflbr-shell probe emits (BCC C; included by the probe sources).
 * bpflbr_shell/events.py mirrors this layout; change both together.
 * Compile-time knobs come only from the tool's own integer settings (-D), never user text. */
#ifndef BPFLBR_LBR_EVENT_H
#define BPFLBR_LBR_EVENT_H

#ifndef LBR_ENTRIES
#define LBR_ENTRIES 32
#endif
#ifndef CAPTURE_LBR
#define CAPTURE_LBR 0
#endif
#ifndef CAPTURE_USTACK
#define CAPTURE_USTACK 1
#endif
#ifndef CAPTURE_KSTACK
#define CAPTURE_KSTACK 1
#endif
/* Events are submitted without waking the reader (it drains the ring every 100 ms anyway);
 * every WAKEUP_EVERY-th event on a CPU forces a wakeup, so a busy target does not pay an
 * irq_work per event and a burst still reaches the reader before the ring fills. */
#ifndef WAKEUP_EVERY
#define WAKEUP_EVERY 32
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 64
#endif
#ifndef STACK_SLOTS
#define STACK_SLOTS 4096
#endif
#ifndef MAX_ACTIVE
#define MAX_ACTIVE 10240
#endif

/* EMIT_ENTRY: entry probes emit events; PAIR_EXIT: entries are stashed so exits get args
 * and durations. Each tracer sets both; the defaults suit kernel targets. */
#ifndef EMIT_ENTRY
#define EMIT_ENTRY 1
#endif
#ifndef PAIR_EXIT
#define PAIR_EXIT 0
#endif

#define MAX_ARGS 6
#define EV_ENTRY 1
#define EV_EXIT 2

/* per-CPU counters, summed by the tool */
#define STAT_HITS 0
#define STAT_DROPS 1
#define STAT_FILTERED 2
#define STAT_LBR_ERRORS 3
#define STAT_MISSED_ENTRY 4
#define STAT_SUBMITTED 5
#define STAT_MAX 6

struct lbr_event {
    u64 ts_ns;          /* bpf_ktime_get_ns() at the probe */
    u64 duration_ns;    /* exit events: time since the paired entry */
    u64 func_ip;        /* address of the traced function */
    u64 args[MAX_ARGS];
    u64 retval;
    u32 pid;            /* tgid */
    u32 tid;
    u32 cpu;
    u32 kind;           /* EV_ENTRY or EV_EXIT */
    s32 kstack_id;      /* -errno when absent */
    s32 ustack_id;
    s32 lbr_ret;        /* bpf_get_branch_snapshot(): bytes written, or -errno */
    u32 nr_lbr;
    char comm[16];
    struct perf_branch_entry lbr[LBR_ENTRIES]; /* LBR_ENTRIES is 0 when LBR is off */
};

struct lbr_buf {
    struct perf_branch_entry entries[LBR_ENTRIES > 0 ? LBR_ENTRIES : 1];
};

struct probe_config {
    u32 tgid;           /* 0: any process */
    u32 exclude_tgid;   /* the tracer itself: its own syscalls would feed back into the trace */
};

struct entry_state {
    u64 ts_ns;
    u64 func_ip;
    u64 args[MAX_ARGS];
};

#endif
