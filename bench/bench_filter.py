#!/usr/bin/env python3
"""What a filter costs and saves (issue 10), measured side by side in one run (root, BCC).

The overload target (bench/targets/callloop.c, built with -g: its DWARF types the args) calls
``bench_target(i, 1)`` in a tight loop. Each variant traces it for ``--seconds`` with the
session API (``--quiet``: events stored, not printed), interleaved over ``--rounds``:

- ``none``: no filter: every call is an event (the rings stay full; most are dropped);
- ``kernel``: ``a & 127 == 0`` (keeps 1 call in 128, rejects 99.2% in the kernel: the term is
  compiled into the probe);
- ``user``: the same test written so that it runs in user space
  (``(a & 127 == 0) || comm == '*zz'``: a suffix glob, which only user space matches, keeps the
  whole term out of the kernel).

Printed per variant (medians): calls the probes saw per second, events delivered per second,
rejected in the kernel / in user space, the reader's user-space CPU seconds per wall second
(this process's utime, where the reader runs), and the in-kernel ns per probe run (bpf_stats:
the kernel's own accounting of our program's run time, the cost every traced call pays).
The ratios: user CPU of kernel-filtered vs unfiltered, and ns per run of a (mostly rejected)
filtered call vs an unfiltered one (goal: at most 1.3x). There is no separate empty probe: the
unfiltered probe is the baseline, so the ratio is what the filter adds to our own probe.

usage: .venv/bin/python bench/bench_filter.py [--seconds 2] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

VARIANTS = {"none": None, "kernel": "a & 127 == 0", "user": "(a & 127 == 0) || comm == '*zz'"}


def build_target(tmp: Path) -> Path:
    out = tmp / "callloop"
    subprocess.run(["gcc", "-O2", "-g", "-fno-omit-frame-pointer", "-o", str(out),
                    str(REPO / "bench" / "targets" / "callloop.c")], check=True)
    return out


def one(binary: Path, expr: str | None, seconds: float) -> dict[str, float]:
    from bpflbr_shell.trace.session import Session
    from bpflbr_shell.trace.spec import TraceSpec

    target = subprocess.Popen([str(binary), "0", str(seconds + 30)], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, text=True)
    try:
        assert target.stdin is not None
        target.stdin.write("g")
        target.stdin.flush()
        session = Session(store_capacity=1000, notify=lambda m: None)
        trace = session.trace(TraceSpec("uprobe", (f"{binary}:bench_target",), pid=target.pid,
                                        lbr=False, filter=expr))
        cpu0 = resource.getrusage(resource.RUSAGE_SELF).ru_utime
        c0, t0 = trace.counters(), time.monotonic()
        time.sleep(seconds)
        c1, t1 = trace.counters(), time.monotonic()
        cpu1 = resource.getrusage(resource.RUSAGE_SELF).ru_utime
        trace.stop()
    finally:
        target.kill()
        target.wait()
    wall = t1 - t0
    runs = c1["run_cnt"] - c0["run_cnt"]
    return {
        "calls_per_s": (c1["hits"] - c0["hits"]) / wall,
        "delivered_per_s": (c1["delivered"] - c0["delivered"]) / wall,
        "rejected_kernel_per_s": (c1["filtered_kernel"] - c0["filtered_kernel"]) / wall,
        "rejected_user_per_s": (c1["filtered_user"] - c0["filtered_user"]) / wall,
        "dropped_per_s": (c1["drops"] - c0["drops"]) / wall,
        "reader_cpu_s_per_s": (cpu1 - cpu0) / wall,
        "ns_per_run": (c1["run_time_ns"] - c0["run_time_ns"]) / runs if runs else float("nan"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_filter: needs root", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench_filter.") as tmp:
        binary = build_target(Path(tmp))
        one(binary, VARIANTS["kernel"], 0.3)  # compile each variant once, outside the clock
        one(binary, None, 0.3)
        one(binary, VARIANTS["user"], 0.3)
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in VARIANTS}
        for r in range(args.rounds):
            kinds = list(VARIANTS)
            for kind in kinds[r % 3:] + kinds[:r % 3]:
                runs[kind].append(one(binary, VARIANTS[kind], args.seconds))
    med = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in runs.items()}
    result = {
        "seconds": args.seconds, "rounds": args.rounds, "filters": VARIANTS, "median": med,
        "user_cpu_kernel_filter_vs_none": med["kernel"]["reader_cpu_s_per_s"]
        / max(med["none"]["reader_cpu_s_per_s"], 1e-9),
        "ns_per_run_kernel_filter_vs_none": med["kernel"]["ns_per_run"]
        / med["none"]["ns_per_run"],
    }
    result["goal_met"] = result["ns_per_run_kernel_filter_vs_none"] <= 1.3
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"uprobe on callloop:bench_target, {args.rounds} interleaved rounds of "
          f"{args.seconds:g} s each (medians)")
    cols = ("calls_per_s", "delivered_per_s", "rejected_kernel_per_s", "rejected_user_per_s",
            "dropped_per_s", "reader_cpu_s_per_s", "ns_per_run")
    print(f"{'':8}" + "".join(f"{c:>22}" for c in cols))
    for k in VARIANTS:
        print(f"{k:8}" + "".join(f"{med[k][c]:>22.2f}" for c in cols))
    print(f"reader CPU, kernel filter / none: {result['user_cpu_kernel_filter_vs_none']:.2f}x")
    print(f"ns per probe run, kernel filter (99% rejected) / none: "
          f"{result['ns_per_run_kernel_filter_vs_none']:.2f}x  goal <= 1.3x: "
          f"{'met' if result['goal_met'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
