#!/usr/bin/env python3
"""Cold wall time of ``bpflbr-shell -c 'show progs'`` next to ``bpftool prog show``.

Both commands run alternately N times in one process (machines are noisy: interleaving keeps
the comparison fair) while examples/workload.py keeps real programs loaded. "Cold" means a new
process each time, as a user typing the command gets; the page cache is warm for both.
Goal: bpflbr-shell under 0.5 s.

usage: .venv/bin/python bench/bench_startup.py [-n 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
GOAL_S = 0.5


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_startup: needs root (bpf(2))", file=sys.stderr)
        return 2
    from conftest import start_workload, stop_workload

    proc, ids = start_workload("--no-bcc")
    try:
        ours_cmd = [str(REPO / ".venv" / "bin" / "bpflbr-shell"), "-c", "show progs"]
        theirs_cmd = ["bpftool", "prog", "show"]
        ours, theirs = [], []
        for _ in range(opts.n):
            ours.append(wall(ours_cmd))
            theirs.append(wall(theirs_cmd))
        nprogs = len(json.loads(subprocess.run(["bpftool", "prog", "show", "--json"],
                                               capture_output=True, text=True).stdout))
    finally:
        stop_workload(proc)
    result = {
        "progs_loaded": nprogs, "runs": opts.n,
        "bpflbr_show_progs_median_s": statistics.median(ours),
        "bpflbr_show_progs_min_s": min(ours),
        "bpftool_prog_show_median_s": statistics.median(theirs),
        "ratio_median": statistics.median(ours) / statistics.median(theirs),
        "goal_s": GOAL_S,
        "goal_met": statistics.median(ours) < GOAL_S,
    }
    if opts.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"show progs, cold process, {nprogs} programs loaded, {opts.n} interleaved runs")
        ours_ms = result["bpflbr_show_progs_median_s"] * 1e3
        print(f"  bpflbr-shell -c 'show progs'  median {ours_ms:7.1f} ms"
              f"  (min {result['bpflbr_show_progs_min_s']*1e3:.1f} ms)  goal < {GOAL_S*1e3:.0f} ms:"
              f" {'met' if result['goal_met'] else 'NOT met'}")
        print(f"  bpftool prog show             median "
              f"{result['bpftool_prog_show_median_s']*1e3:7.1f} ms")
        print(f"  ratio bpflbr/bpftool          {result['ratio_median']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
