#!/usr/bin/env python3
"""Cold wall time of ``bpflbr-shell -c 'show progs'`` next to ``bpftool prog show``.

Both commands run alternately N times in one process (machines are noisy: interleaving keeps
the comparison fair) while examples/workload.py keeps real programs loaded. "Cold" means a new
process each time, as a user typing the command gets; the page cache is warm for both.
Goal: bpflbr-shell under 0.5 s. ``--baseline REV`` also runs the same command from a git
worktree of REV (an earlier tree: "start-up must not get slower"), in the same interleaved
loop, with the same interpreter and venv (the worktree comes first on PYTHONPATH), and
prints the ratio to it.

usage: .venv/bin/python bench/bench_startup.py [-n 20] [--baseline REV] [--json]
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


def wall(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=env)
    return time.perf_counter() - t0


def worktree(rev: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), rev],
                   check=True, capture_output=True)
    return where


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--baseline", metavar="REV", help="also time this git revision's tree")
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_startup: needs root (bpf(2))", file=sys.stderr)
        return 2
    import tempfile

    from conftest import start_workload, stop_workload

    tmp = Path(tempfile.mkdtemp(prefix="bench_startup."))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")  # bytecode cached, as pip leaves it
    base_tree = worktree(opts.baseline, tmp / "baseline") if opts.baseline else None
    proc, ids = start_workload("--no-bcc")
    try:
        py = str(REPO / ".venv" / "bin" / "python")
        ours_cmd = [py, "-m", "bpflbr_shell", "-c", "show progs"]
        theirs_cmd = ["bpftool", "prog", "show"]
        base_env = dict(env, PYTHONPATH=str(base_tree)) if base_tree else None
        ours, theirs, base = [], [], []
        for cmd, e in ((ours_cmd, env), (ours_cmd, base_env)):  # bytecode caches filled
            if e is not None:
                wall(cmd, e)
        for _ in range(opts.n):
            ours.append(wall(ours_cmd, env))
            theirs.append(wall(theirs_cmd))
            if base_env is not None:
                base.append(wall(ours_cmd, base_env))
        nprogs = len(json.loads(subprocess.run(["bpftool", "prog", "show", "--json"],
                                               capture_output=True, text=True).stdout))
    finally:
        stop_workload(proc)
        if base_tree is not None:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                            str(base_tree)], capture_output=True)
    result = {
        "progs_loaded": nprogs, "runs": opts.n,
        "bpflbr_show_progs_median_s": statistics.median(ours),
        "bpflbr_show_progs_min_s": min(ours),
        "bpftool_prog_show_median_s": statistics.median(theirs),
        "ratio_median": statistics.median(ours) / statistics.median(theirs),
        "goal_s": GOAL_S,
        "goal_met": statistics.median(ours) < GOAL_S,
    }
    if base:
        result["baseline"] = opts.baseline
        result["baseline_median_s"] = statistics.median(base)
        result["ratio_to_baseline"] = statistics.median(ours) / statistics.median(base)
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
        if base:
            print(f"  baseline {opts.baseline[:12]:12}         median "
                  f"{result['baseline_median_s']*1e3:7.1f} ms;  this tree / baseline "
                  f"{result['ratio_to_baseline']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
