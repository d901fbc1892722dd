/* fentry/fexit on BPF programs and kernel functions (BPF_PROG_TYPE_TRACING).
 *
 * BCC compiles this file and creates its maps; the programs are then loaded through libbpf with
 * expected_attach_type, attach_btf_id and (for a BPF target) attach_prog_fd, which BCC 0.26
 * cannot set. fexit sees the arguments and the return value itself, so it needs no entry:
 * PAIR_EXIT (an fentry stashing the entry time) is only for durations. NARGS (the target's BTF
 * prototype length, at most 6) comes from the tool, never from user text. */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/perf_event.h>
#include "probe_common.h"

#ifndef NARGS
#define NARGS 0
#endif

#define PROBE_CTX u64 *
#define PROBE_KEYED 1
#define PROBE_EXIT_SEES_ARGS 1

static __always_inline u64 probe_func_ip(u64 *ctx)
{
    return bpf_get_func_ip(ctx);
}

static __always_inline void probe_args(u64 *ctx, u64 *args)
{
#pragma unroll
    for (int i = 0; i < MAX_ARGS; i++) {
        u64 v = 0;
        if (i < NARGS)
            bpf_get_func_arg(ctx, i, &v);
        args[i] = v;
    }
}

static __always_inline u64 probe_retval(u64 *ctx)
{
    u64 ret = 0;
    bpf_get_func_ret(ctx, &ret);
    return ret;
}

#include "probe_bodies.h"

int on_fentry(u64 *ctx)
{
    return entry_probe(ctx);
}

int on_fexit(u64 *ctx)
{
    return exit_probe(ctx);
}
