"""A worked bpflbr-shell extension: LBR hops per function, as a histogram.

Load it with ``source examples/lbr_hops.py`` (or copy it to
``~/.config/bpflbr-shell/commands/``), trace something, then ``hops``::

    (bpflbr) source examples/lbr_hops.py
    (bpflbr) trace uretprobe c:close --pid 1234 --limit 100
    (bpflbr) hops --top 5
    (bpflbr) hops --only-errors on     # from now on, store only failed calls

Every decoded event passes through ``count`` (an ``@on_event`` hook) before it is stored:
it counts the event and its LBR records per function. Where the CPU has no LBR (VMs, most
clouds) the hop count is 0 and the table still counts calls. ``keep`` drops successful calls
from the store when ``--only-errors on`` was given: a hook returning False drops the event.
"""

from __future__ import annotations

import argparse
from collections import Counter

from bpflbr_shell import command, on_event

calls: Counter[str] = Counter()
hops: Counter[str] = Counter()
only_errors = False


@on_event
def count(event):
    name = event.func or f"{event.func_ip:#x}"
    calls[name] += 1
    hops[name] += len(event.lbr)


@on_event
def keep(event):
    if only_errors and event.retval is not None and event.retval >= 0:
        return False  # not stored: 'show events' and py's events never see it
    return True


parser = argparse.ArgumentParser(prog="hops", description="LBR hops per traced function")
parser.add_argument("--top", type=int, default=10, metavar="N", help="the N busiest functions")
parser.add_argument("--reset", action="store_true", help="forget the counts")
parser.add_argument("--only-errors", choices=["on", "off"],
                    help="store only events whose return value is negative")


@command(parser)
def hops_command(shell, args):
    global only_errors
    from bpflbr_shell.render.present import Table

    if args.only_errors is not None:
        only_errors = args.only_errors == "on"
    if args.reset:
        calls.clear()
        hops.clear()
    widest = max(calls.values(), default=1)
    rows = [{"func": name, "calls": n, "lbr": hops[name],
             "per_call": round(hops[name] / n, 1),
             "histogram": "#" * max(1, round(30 * n / widest))}
            for name, n in calls.most_common(args.top)]
    return Table(["FUNCTION", "CALLS", "LBR", "PER CALL", ""],
                 ["func", "calls", "lbr", "per_call", "histogram"], rows, right=(1, 2, 3),
                 empty="no events counted yet (trace something first)")
