/* The event record every bpflbr-shell probe emits (BCC C; included by the probe sources).
 * bpflbr_shell/trace/events.py mirrors this layout (tests/test_event_layout.py checks it).
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
/* Events go into one single-producer ring per CPU, in an mmap-able array map the reader maps
 * (struct cpu_ring below): a slot is claimed, filled and published with plain loads and stores,
 * no helper call and no lock. The reader polls (there is no wakeup to pay for per event).
 * RING_SLOTS (a power of two) and NR_RINGS (possible CPUs) come from the tool. */
#ifndef RING_SLOTS
#define RING_SLOTS 1024
#endif
#ifndef NR_RINGS
#define NR_RINGS 1
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

/* per-CPU counters, summed by the tool: per firing of an emitting probe, HITS and one outcome
 * (DROPS: ring full or busy; FILTERED: --pid, or an unpairable return; else it is published).
 * MISSED_ENTRY: exits without their entry (some still published, without a duration). */
#define STAT_HITS 0
#define STAT_DROPS 1
#define STAT_FILTERED 2
#define STAT_MISSED_ENTRY 3
#define STAT_MAX 4  /* events published: the rings' prod counters; LBR errors: the reader */

#define NO_DURATION 0xffffffffffffffffULL

/* C strings copied into the record (user pointers: uprobes): STR_MASK has bit i for arg i and
 * bit STR_RET_BIT for the return value; STR_COUNT is its popcount (both from the tool). Each is
 * bpf_probe_read_user_str()'s result (bytes with the NUL, 0 for NULL: not read, or -errno) and
 * at most STR_LEN bytes. */
#ifndef STR_MASK
#define STR_MASK 0
#endif
#ifndef STR_COUNT
#define STR_COUNT 0
#endif
#define STR_LEN 64
#define STR_RET_BIT MAX_ARGS

struct user_str {
    s64 ret;
    char buf[STR_LEN];
};

struct lbr_event {
    u64 ts_ns;          /* bpf_ktime_get_ns() at the probe */
    u64 duration_ns;    /* exit events: time since the paired entry; NO_DURATION unpaired */
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
#if STR_COUNT > 0
    struct user_str str[STR_COUNT];
#endif
};

/* One CPU's ring. Slots [cons, prod) hold published events. The probe owns prod and busy;
 * the reader owns cons. A probe that finds the ring full, or busy (a probe of ours interrupted
 * on this CPU between claim and publish), counts a drop. The header is 64 bytes so slots stay
 * 8-byte aligned; bpflbr_shell/trace/probes/cpuring.py mirrors this layout. */
struct cpu_ring {
    u64 prod;
    u64 cons;
    u64 busy;
    u64 pad[5];
    struct lbr_event slot[RING_SLOTS];
};

/* What the map is declared with: the same bytes, opaque to BCC, whose generated reader and
 * writer code for a map value grows with every field of every slot (minutes to compile). Its
 * type description wants a literal size: RING_BYTES, from the tool, checked here. */
#ifndef RING_BYTES
#define RING_BYTES (64 + RING_SLOTS * (128 + LBR_ENTRIES * 24 + STR_COUNT * 72))
#endif
struct cpu_ring_bytes {
    char bytes[RING_BYTES];
};
_Static_assert(sizeof(struct cpu_ring) == RING_BYTES, "RING_BYTES != sizeof(struct cpu_ring)");

struct entry_state {
    u64 ts_ns;
    u64 func_ip;
    u64 args[MAX_ARGS];
};

#endif
