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

#define PROBE_KEYED 0

static __always_inline u64 probe_func_ip(struct pt_regs *ctx)
{
    return PT_REGS_IP(ctx);
}

#include "regs_probe.h"

int on_entry(struct pt_regs *ctx)
{
    return entry_probe(ctx);
}

int on_return(struct pt_regs *ctx)
{
    return exit_probe(ctx);
}
