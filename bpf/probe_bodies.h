/* The entry and exit probes, written once (BCC C). Each source includes this last (pt_regs
 * probes through regs_probe.h), after defining what differs between target kinds:
 *   PROBE_CTX                 the context type (u64 * for fentry/fexit, struct pt_regs *)
 *   PROBE_KEYED               1: the function's address names it on exit too and keys the
 *                             entry stash; 0 (uretprobes): only the stash names it (key 0)
 *   PROBE_EXIT_SEES_ARGS      1: the exit reads the arguments itself (fexit); 0: from the
 *                             paired entry
 *   probe_func_ip(ctx), probe_args(ctx, args), probe_retval(ctx)
 * Both start with claim(): the branch snapshot is the first helper call of every emitting
 * probe (tests/test_probes.py checks the compiled code). */
#ifndef BPFLBR_PROBE_BODIES_H
#define BPFLBR_PROBE_BODIES_H

static __always_inline int entry_probe(PROBE_CTX ctx)
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
    u64 func_ip = probe_func_ip(ctx);
    u64 key_ip = PROBE_KEYED ? func_ip : 0;
    if (!EMIT_ENTRY) { /* silent: only the stash for the exit's args and duration */
        u64 args[MAX_ARGS];
        probe_args(ctx, args);
        stash_for_exit(id, key_ip, now, func_ip, args);
        return 0;
    }
    struct lbr_event *ev = c.ev;
    ev->func_ip = func_ip;
    probe_args(ctx, ev->args);
    if (PAIR_EXIT)
        stash_for_exit(id, key_ip, now, func_ip, ev->args);
    if (rejected(id, c.cpu, ev->args, 0, NO_DURATION, 0)) {
        unclaim(&c);
        return 0;
    }
    capture_strings(ev, 0, 0);
    return publish(ctx, &c, id, EV_ENTRY, now, NO_DURATION, 0);
}

static __always_inline int exit_probe(PROBE_CTX ctx)
{
    struct claim c = {};
    if (!claim(&c, 1))
        return 0;
    u64 now = bpf_ktime_get_ns();
    u64 func_ip = PROBE_KEYED ? probe_func_ip(ctx) : 0;
    struct entry_state st = {};
    u64 duration;
    u64 id = bpf_get_current_pid_tgid();
    if (!exit_wanted(id, func_ip, now, &st, &duration)) {
        unclaim(&c);
        return 0;
    }
    struct lbr_event *ev = c.ev;
    ev->func_ip = PROBE_KEYED ? func_ip : st.func_ip;
    if (PROBE_EXIT_SEES_ARGS)
        probe_args(ctx, ev->args);
    else
        copy_args(ev->args, st.args);
    u64 retval = probe_retval(ctx);
    if (rejected(id, c.cpu, ev->args, retval, duration, 1)) {
        unclaim(&c);
        return 0;
    }
    capture_strings(ev, retval, 1);
    return publish(ctx, &c, id, EV_EXIT, now, duration, retval);
}

#endif
