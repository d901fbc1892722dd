/* The hooks bpf/probe_bodies.h takes that kprobes and uprobes share (pt_regs context, register
 * arguments, RC as the return value). A source defines PROBE_KEYED and probe_func_ip() and
 * includes this instead of probe_bodies.h. */
#ifndef BPFLBR_REGS_PROBE_H
#define BPFLBR_REGS_PROBE_H

#define PROBE_CTX struct pt_regs *
#define PROBE_EXIT_SEES_ARGS 0 /* a return probe cannot see the arguments: the entry stashes them */

static __always_inline void probe_args(struct pt_regs *ctx, u64 *args)
{
    regs_args(ctx, args);
}

static __always_inline u64 probe_retval(struct pt_regs *ctx)
{
    return PT_REGS_RC(ctx);
}

#include "probe_bodies.h"

#endif
