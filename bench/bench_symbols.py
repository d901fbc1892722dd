#!/usr/bin/env python3
"""Benchmark the kallsyms index and the symbolizer on the running kernel, against goals and a
naive baseline (list of tuples + bisect, no cache, linear prog scan) measured in the same run.

Goals: index build < 0.2 s and < 25 MB extra RSS; warm symbolization >= 1M addresses/s on a mix
of real kernel and BPF addresses. Build costs are measured in fresh child processes so the two
builders do not share freed memory. Needs root (kallsyms addresses, bpf(2)); loads a tiny BCC
socket filter when no JITed BPF program is loaded, so there are BPF addresses to resolve.

usage: .venv/bin/python bench/bench_symbols.py [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from bisect import bisect_right
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GOAL_BUILD_S = 0.2
GOAL_RSS_MB = 25.0
GOAL_WARM_PER_S = 1_000_000
BUILDS = 5


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def hwm_bytes() -> int:
    """Peak RSS so far (VmHWM), to show what a build costs at its worst moment."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def naive_build(path: str = "/proc/kallsyms") -> tuple[list[int], list[tuple]]:
    """The obvious parse: one tuple per symbol, sorted, plus a key list for bisect."""
    syms = []
    with open(path) as f:
        for line in f:
            p = line.split()
            syms.append((int(p[0], 16), p[1], p[2], p[3][1:-1] if len(p) > 3 else None))
    syms.sort()
    return [s[0] for s in syms], syms


def child_build(kind: str) -> dict:
    """Run in a fresh process: extra RSS and peak of the first build, then timed rebuilds."""
    from bpflbr_shell.kernel.kallsyms import KallsymsIndex

    def build():
        return KallsymsIndex.load() if kind == "index" else naive_build()

    import gc

    gc.collect()
    before, hwm_before = rss_bytes(), hwm_bytes()
    t = time.perf_counter()
    keep = build()
    first = time.perf_counter() - t
    gc.collect()
    after, hwm_after = rss_bytes(), hwm_bytes()
    times = [first]
    for _ in range(BUILDS - 1):
        t = time.perf_counter()
        build()
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    with open("/proc/kallsyms", "rb") as f:
        f.read()
    read_s = time.perf_counter() - t
    n = len(keep) if kind == "index" else len(keep[1])
    return {
        "kind": kind, "symbols": n, "first_s": first, "best_s": min(times),
        "median_s": statistics.median(times), "read_s": read_s,
        "extra_rss_mb": (after - before) / 1e6,
        "peak_extra_mb": (max(hwm_after, after) - max(hwm_before, before)) / 1e6,
    }


def run_child(kind: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)


def bpf_progs():
    """Loaded JITed programs, loading a BCC socket filter if there are none."""
    from bpflbr_shell.kernel.progs import iter_prog_infos

    progs = [p for p in iter_prog_infos() if p.jited and p.subprogs]
    keep = None
    if not progs:
        from bcc import BPF  # Debian's python3-bpfcc

        # unsigned arithmetic: LLVM 14's BPF backend aborts the process on signed division
        keep = BPF(text=r"""
int bench_sf(struct __sk_buff *skb)
{
    u32 n = skb->len;
    if (n > 64)
        n = n >> 1;
    return n > 10 ? -1 : 0;
}
""")
        keep.load_func(b"bench_sf", BPF.SOCKET_FILTER)
        progs = [p for p in iter_prog_infos() if p.jited and p.subprogs]
    return progs, keep


def address_mix(index, progs, distinct: int, rnd: random.Random) -> list[int]:
    """Distinct real addresses: 80% inside random kernel text symbols, 20% inside BPF subprogs."""
    n = len(index)
    kernel: set[int] = set()
    while len(kernel) < distinct * 8 // 10:
        s = index.symbol_at(rnd.randrange(n))
        if s.is_text and s.size > 0:
            kernel.add(s.addr + rnd.randrange(min(s.size, 4096)))
    subs = [sp for p in progs for sp in p.subprogs if sp.size]
    bpf: set[int] = set()
    want = distinct - len(kernel)
    span = sum(sp.size for sp in subs)
    while len(bpf) < min(want, span):
        sp = rnd.choice(subs)
        bpf.add(sp.addr + rnd.randrange(sp.size))
    while len(kernel) + len(bpf) < distinct:  # small BPF progs: fill up with kernel code
        s = index.symbol_at(rnd.randrange(n))
        if s.is_text and s.size > 0:
            kernel.add(s.addr + rnd.randrange(min(s.size, 4096)))
    addrs = list(kernel) + list(bpf)
    rnd.shuffle(addrs)
    return addrs


def naive_symbolize(keys, syms, progs, addr):
    """Baseline: linear scan of prog subprogs, then bisect into the tuple list; no cache."""
    for p in progs:
        sp = p.subprog_at(addr)
        if sp is not None:
            line = None
            for li in sp.lines:
                if li.addr <= addr:
                    line = li
            return (sp.ksym, addr - sp.addr, line)
    i = bisect_right(keys, addr) - 1
    if i < 0:
        return None
    a, typ, name, mod = syms[i]
    return (name, addr - a, mod) if typ in "tTwW" else None


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", choices=("index", "naive"), help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead")
    ap.add_argument("--distinct", type=int, default=20000, help="distinct addresses (20000)")
    ap.add_argument("--stream", type=int, default=1_000_000, help="warm lookups (1000000)")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child_build(args.child)))
        return 0
    if os.geteuid() != 0:
        print("bench_symbols: needs root (kallsyms addresses, bpf(2))", file=sys.stderr)
        return 1

    idx_build, naive = run_child("index"), run_child("naive")

    from bpflbr_shell.kernel.kallsyms import KallsymsIndex
    from bpflbr_shell.symbols.kernel import Symbolizer

    index = KallsymsIndex.load()
    progs, keep = bpf_progs()
    rnd = random.Random(7)
    addrs = address_mix(index, progs, args.distinct, rnd)
    n_bpf = sum(1 for a in addrs if any(p.subprog_at(a) for p in progs))
    stream = [rnd.choice(addrs) for _ in range(args.stream)]

    sym = Symbolizer(index, progs)
    t = time.perf_counter()
    cold_locs = sym.symbolize_many(addrs)
    cold_s = time.perf_counter() - t
    t = time.perf_counter()
    sym.symbolize_many(stream)
    warm_many_s = time.perf_counter() - t
    symbolize = sym.symbolize
    t = time.perf_counter()
    for a in stream:
        symbolize(a)
    warm_each_s = time.perf_counter() - t
    unknown = sum(1 for loc in cold_locs if loc.kind == "unknown")

    keys, syms = naive_build()
    t = time.perf_counter()
    for a in addrs:
        naive_symbolize(keys, syms, progs, a)
    naive_s = time.perf_counter() - t
    del keep

    res = {
        "symbols": idx_build["symbols"], "progs": len(progs), "distinct": len(addrs),
        "bpf_addrs": n_bpf, "unknown": unknown, "stream": len(stream),
        "index_build": idx_build, "naive_build": naive,
        "cold_per_s": rate(len(addrs), cold_s), "warm_many_per_s": rate(len(stream), warm_many_s),
        "warm_each_per_s": rate(len(stream), warm_each_s),
        "naive_per_s": rate(len(addrs), naive_s),
    }
    if args.json:
        print(json.dumps(res))
        return 0

    def ok(good: bool) -> str:
        return "ok  " if good else "MISS"

    ib, nb = idx_build, naive
    ib_ms, nb_ms = ib["best_s"] * 1e3, nb["best_s"] * 1e3
    rss_ok = max(ib["extra_rss_mb"], ib["peak_extra_mb"]) < GOAL_RSS_MB
    cold, many, each, base = (
        res["cold_per_s"], res["warm_many_per_s"], res["warm_each_per_s"], res["naive_per_s"]
    )
    print(f"kallsyms: {ib['symbols']} symbols; reading /proc/kallsyms alone takes "
          f"{ib['read_s'] * 1e3:.1f} ms")
    print(f"{ok(ib['best_s'] < GOAL_BUILD_S)} index build    best {ib_ms:6.1f} ms  median "
          f"{ib['median_s'] * 1e3:6.1f} ms  ({ib['best_s'] / GOAL_BUILD_S:.2f} of goal "
          f"{GOAL_BUILD_S * 1e3:.0f} ms)   naive {nb_ms:6.1f} ms "
          f"(index {nb_ms / ib_ms:.2f}x faster)")
    print(f"{ok(rss_ok)} index RSS      +{ib['extra_rss_mb']:5.1f} MB, peak +"
          f"{ib['peak_extra_mb']:.1f} MB (goal {GOAL_RSS_MB:.0f} MB)   naive +"
          f"{nb['extra_rss_mb']:.1f} MB, peak +{nb['peak_extra_mb']:.1f} MB "
          f"(index keeps {ib['extra_rss_mb'] / nb['extra_rss_mb']:.2f}x)")
    print(f"addresses: {len(addrs)} distinct ({n_bpf} in {len(progs)} BPF progs, "
          f"{unknown} unknown), warm stream of {len(stream)}")
    print(f"     cold symbolize      {cold:>12,.0f} addr/s   naive (bisect on tuples, no cache, "
          f"no region rules) {base:,.0f} addr/s ({cold / base:.2f}x)")
    print(f"{ok(many >= GOAL_WARM_PER_S)} warm symbolize_many {many:>12,.0f} addr/s   "
          f"({many / GOAL_WARM_PER_S:.2f}x goal; {many / base:.0f}x naive)")
    print(f"{ok(each >= GOAL_WARM_PER_S)} warm symbolize()    {each:>12,.0f} addr/s   "
          f"({each / GOAL_WARM_PER_S:.2f}x goal; {each / base:.0f}x naive)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
