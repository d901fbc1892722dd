#!/usr/bin/env python3
"""What tracing a user function costs, measured side by side in one run (root, BCC).

1. Cost per traced call as the workload sees it: bench/targets/callloop.c calls
   ``bench_target()`` in a tight loop and reports ns per call, (a) untraced, (b) with an EMPTY
   BPF program on the same uprobe + uretprobe (the trap is the floor), (c) under
   ``bpflbr-shell trace uretprobe`` (LBR requested, stack fallback here, events consumed by
   the real shell). Rounds are interleaved. Goal: ours adds at most 25% to the empty probe's
   added cost. Also bpf_stats run_time_ns/run_cnt of our programs.
2. Overload: the target calls as fast as it can for 10 s under the shell; events/s delivered,
   the drops the shell reports vs the kernel's own drop counter, and the shell's peak RSS.

usage: .venv/bin/python bench/bench_uprobe.py [--rounds 3] [--iters 200000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHELL = [str(REPO / ".venv" / "bin" / "python"), "-m", "bpflbr_shell"]
GOAL_RATIO = 1.25

EMPTY_PROBE = "int empty(struct pt_regs *ctx) { return 0; }"


def build_target(tmp: Path) -> Path:
    out = tmp / "callloop"
    subprocess.run(["gcc", "-O2", "-g", "-fno-omit-frame-pointer", "-o", str(out),
                    str(REPO / "bench" / "targets" / "callloop.c")], check=True)
    return out


def run_target(binary: Path, iters: int, seconds: float = 0) -> tuple[int, float]:
    """Start the target, let it go, return (calls, ns per call)."""
    proc = subprocess.Popen([str(binary), str(iters), str(seconds)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate("g")
    m = re.search(r"calls (\d+) ns_per_call ([\d.]+)", out)
    assert m, out
    return int(m.group(1)), float(m.group(2))


def with_empty_probe(binary: Path, iters: int) -> float:
    from bcc import BPF

    b = BPF(text=EMPTY_PROBE)
    try:
        b.attach_uprobe(name=str(binary).encode(), sym=b"bench_target", fn_name=b"empty")
        b.attach_uretprobe(name=str(binary).encode(), sym=b"bench_target", fn_name=b"empty")
        return run_target(binary, iters)[1]
    finally:
        b.cleanup()


class ShellTrace:
    """``bpflbr-shell`` tracing the target in the background, driven through its stdin."""

    def __init__(self, binary: Path, extra: str = "") -> None:
        self.proc = subprocess.Popen(
            [*SHELL, "--batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, bufsize=1,
            env={**os.environ, "BPFLBR_HISTORY": ""})
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"trace uretprobe {binary}:bench_target --bg --quiet {extra}\n")
        self.proc.stdin.write("echo attached\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.strip() == "attached":
                break
        else:
            raise RuntimeError(self.proc.stderr.read() if self.proc.stderr else "shell died")

        self.rss_attached = self.rss_mb()

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def finish(self) -> dict:
        assert self.proc.stdin
        time.sleep(0.5)  # let the consumer drain the ring buffer
        rss_end = self.rss_mb()
        out, err = self.proc.communicate("trace stop\nshow stats --json\n", timeout=120)
        start = out.index("[")
        stats = json.loads(out[start:])[0]
        stats["shell_rss_mb_attached"] = self.rss_attached
        stats["shell_rss_mb_end"] = rss_end
        return stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=200_000)
    ap.add_argument("--overload-seconds", type=float, default=10.0)
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_uprobe: needs root (uprobes, bpf(2))", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    from bpflbr_shell.trace.probes.bccprog import ensure_tracefs

    ensure_tracefs()
    with tempfile.TemporaryDirectory() as tmp:
        binary = build_target(Path(tmp))
        untraced, empty, ours, run_ns = [], [], [], []
        for _ in range(opts.rounds):
            untraced.append(run_target(binary, opts.iters)[1])
            empty.append(with_empty_probe(binary, opts.iters))
            tr = ShellTrace(binary)
            ours.append(run_target(binary, opts.iters)[1])
            st = tr.finish()
            if st.get("run_cnt"):
                run_ns.append(st["run_time_ns"] / st["run_cnt"])
        base, e, o = (statistics.median(x) for x in (untraced, empty, ours))
        ratio = (o - base) / (e - base) if e > base else float("inf")

        tr = ShellTrace(binary)
        calls, _ = run_target(binary, 0, opts.overload_seconds)
        st = tr.finish()

    result = {
        "cost_per_call": {
            "untraced_ns": base, "empty_probe_ns": e, "bpflbr_ns": o,
            "empty_added_ns": e - base, "bpflbr_added_ns": o - base,
            "added_cost_ratio": ratio, "goal_ratio": GOAL_RATIO, "goal_met": ratio <= GOAL_RATIO,
            "bpf_stats_ns_per_run": statistics.median(run_ns) if run_ns else None,
            "rounds": opts.rounds, "iters": opts.iters,
        },
        "overload": {
            "seconds": opts.overload_seconds, "target_calls": calls,
            "hits": st.get("hits"), "delivered": st.get("delivered"), "drops": st.get("drops"),
            "delivered_per_s": st.get("delivered", 0) / opts.overload_seconds,
            "delivered_plus_drops_equals_hits":
                st.get("delivered", 0) + st.get("drops", 0) == st.get("hits"),
            "shell_rss_mb_attached": st["shell_rss_mb_attached"],
            "shell_rss_mb_end": st["shell_rss_mb_end"],
        },
    }
    if opts.json:
        print(json.dumps(result, indent=2))
        return 0
    c, ov = result["cost_per_call"], result["overload"]
    print(f"cost per traced call (median of {opts.rounds} interleaved rounds, "
          f"{opts.iters} calls each)")
    print(f"  untraced                 {base:9.1f} ns")
    print(f"  empty uprobe+uretprobe   {e:9.1f} ns  (+{e - base:.1f} ns: the trap floor)")
    print(f"  bpflbr trace uretprobe   {o:9.1f} ns  (+{o - base:.1f} ns)")
    print(f"  added-cost ratio ours/empty {ratio:.2f}  goal <= {GOAL_RATIO}: "
          f"{'met' if c['goal_met'] else 'NOT met'}")
    if c["bpf_stats_ns_per_run"] is not None:
        print(f"  our programs in-kernel (bpf_stats) {c['bpf_stats_ns_per_run']:.0f} ns per run")
    print(f"overload: {ov['target_calls']} calls in {ov['seconds']:.0f} s")
    print(f"  hits {ov['hits']}  delivered {ov['delivered']} ({ov['delivered_per_s']:.0f}/s)  "
          f"drops {ov['drops']}  delivered+drops==hits: {ov['delivered_plus_drops_equals_hits']}")
    print(f"  shell RSS {ov['shell_rss_mb_attached']:.0f} MB after attaching, "
          f"{ov['shell_rss_mb_end']:.0f} MB after {ov['delivered']} events "
          f"(the event store keeps the last 10000)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
