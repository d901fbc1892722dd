#!/usr/bin/env python3
"""Event pipeline throughput: ring-buffer record -> decode -> LBR trim -> symbolize -> render.

Goal (issue 3): at least 20k events/s per core for 32-entry LBR events, text and JSON output.

This host has no LBR hardware, so the records are built as tests/test_lbr.py builds them, from
real addresses only: walks through a loaded program's real JIT image (capstone-decoded calls,
jumps and returns), real kallsyms helpers and return thunk, and the tracer's own entries (a
tracer BPF program's real JIT image, ``trace_call_bpf``, ``bpf_get_branch_snapshot``). As root
the example workload's ``tc_classify`` (6 subprograms) and a BCC tracer program are loaded and
/proc/kallsyms is read; otherwise the recorded fixtures stand in. Many different walks (random
choices of taken conditional jumps) give many different snapshots.

Everything runs in this one thread; events/s is per core. Wall and process CPU time are both
reported. "warm" keeps the symbolizer's address cache across events (the steady state of a
trace); "cold" clears it before every event (every address resolved afresh: the worst case).

usage: .venv/bin/python bench/bench_pipeline.py [--events N] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

GOAL_EVENTS_PER_S = 20_000
WALKS = 64


@contextlib.contextmanager
def live_scenario() -> Iterator[Any]:
    """The example workload's tc_classify and a BCC tracer program, on the running kernel."""
    from bcc import BPF
    from conftest import start_workload, stop_workload
    from test_lbr import TRACER_BCC, build_scenario

    from bpflbr_shell.kernel.kallsyms import KallsymsIndex
    from bpflbr_shell.kernel.progs import (
        decode_prog_info,
        read_prog_info,
        read_raw_prog_info,
        read_raw_prog_info_fd,
    )
    from bpflbr_shell.trace.probes.ranges import tracer_ranges

    proc, ids = start_workload("--no-bcc")
    bpf = None
    try:
        bpf = BPF(text=TRACER_BCC.encode())
        fn = bpf.load_func(b"lbr_test_tracer", BPF.KPROBE)
        by_name = {decode_prog_info(read_raw_prog_info(i)).func_name: i for i in ids}
        traced = read_prog_info(by_name["tc_classify"])
        tracer = read_prog_info(read_raw_prog_info_fd(fn.fd, with_btf=False).id)
        kallsyms = KallsymsIndex.load()
        yield build_scenario(traced, tracer, kallsyms, tracer_ranges([fn.fd], kallsyms)), \
            f"live: prog {traced.id} tc_classify + BCC tracer prog {tracer.id}, /proc/kallsyms"
    finally:
        if bpf is not None:
            bpf.cleanup()
        stop_workload(proc)


@contextlib.contextmanager
def fixture_scenario() -> Iterator[Any]:
    from test_lbr import (
        TRACED_FIXTURE,
        TRACER_FIXTURE,
        build_scenario,
        load_fixture_kallsyms,
        load_fixture_prog,
        prog_ranges_of,
    )

    from bpflbr_shell.trace.probes.ranges import kernel_tracer_ranges

    kallsyms = load_fixture_kallsyms()
    traced, tracer = load_fixture_prog(TRACED_FIXTURE), load_fixture_prog(TRACER_FIXTURE)
    ranges = prog_ranges_of(tracer, "our BPF program") + kernel_tracer_ranges(kallsyms)
    yield build_scenario(traced, tracer, kallsyms, ranges), \
        "recorded fixtures: tc_classify + sock_stats (as the tracer), kallsyms slices"


def build_records(sc: Any, walks: int, seed: int = 1) -> list[bytes]:
    """One 32-entry ring-buffer record per distinct walk (random taken jcc sets)."""
    from test_lbr import TAKE_HAPPY_PATH, ProgWalker, pack

    from bpflbr_shell.trace.events import LBR_ENTRIES

    rng = random.Random(seed)
    base = ProgWalker(sc.traced, sc.kallsyms)
    jccs = sorted(base.jcc_ordinal.values())
    main = sc.traced.subprogs[0]
    seen: set[tuple] = set()
    records: list[bytes] = []
    for i in range(walks * 4):
        # the program runs (packets) back to back until the 32 entries are full
        run: list = []
        while len(run) + len(sc.tail) < LBR_ENTRIES:
            take = TAKE_HAPPY_PATH if i == 0 else frozenset(
                j for j in jccs if rng.random() < 0.3)
            run = ProgWalker(sc.traced, sc.kallsyms, take).walk() + run
        snap = sc.snapshot(run + sc.tail)
        assert len(snap) == LBR_ENTRIES
        key = tuple((r.src, r.dst) for r in snap)
        if key in seen:
            continue
        seen.add(key)
        records.append(pack(snap, func_ip=main.addr))
        if len(records) == walks:
            break
    return records


def run_pipeline(records: list[bytes], n: int, out: Any, emit: Callable[[Any], str],
                 clear: Callable[[], None] | None) -> tuple[float, float]:
    """Decode + render ``n`` events (cycling through ``records``); returns (wall, cpu) s.
    Records are memoryviews, as the ring-buffer reader hands them to ``decode_record``."""
    from bpflbr_shell.trace.events import decode_record

    views = [memoryview(r) for r in records]
    nrec = len(views)
    write = out.write
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        if clear is not None:
            clear()
        event, _k, _u = decode_record(views[i % nrec], "fexit tc_classify", 1)
        event.id, event.func = i, "tc_classify"
        write(emit(event))
        write("\n")
    return time.perf_counter() - w0, time.process_time() - c0


def measure(sc: Any, records: list[bytes], n: int) -> dict[str, dict[str, float]]:
    from bpflbr_shell.render.events import EndpointMap, event_json, event_to_json, render_event
    from bpflbr_shell.symbols.kernel import Symbolizer

    opts = sc.opts(keep_ranges=sc.keep_ranges)
    results: dict[str, dict[str, float]] = {}
    with open(os.devnull, "w") as out:
        for cache in ("warm", "cold"):
            sym = Symbolizer(sc.kallsyms, sc.progs)

            def symbolize(event: Any, addr: int, sym: Symbolizer = sym) -> Any:
                return sym.symbolize(addr)

            # text as the shell prints it: one EndpointMap kept across events (cold: emptied
            # with the symbolizer's cache before every event, as a generation change would)
            endpoints = EndpointMap(symbolize)
            emitters = {  # JSON as 'trace --json' prints it: sorted keys
                "text": lambda ev, s=symbolize, m=endpoints: render_event(ev, s, opts, None, m),
                "json": lambda ev, s=symbolize: json.dumps(event_to_json(ev, s, opts),
                                                           sort_keys=True),
                "json-fast": lambda ev, s=symbolize: event_json(ev, s, opts),
            }
            for fmt, emit in emitters.items():
                clear = None
                if cache == "cold":
                    def clear(sym: Symbolizer = sym, endpoints: EndpointMap = endpoints) -> None:
                        sym._cache.clear()
                        endpoints.clear()
                if cache == "warm":  # one pass over every record fills the cache
                    run_pipeline(records, len(records), out, emit, None)
                wall, cpu = run_pipeline(records, n, out, emit, clear)
                results[f"{fmt}-{cache}"] = {
                    "events": n, "wall_s": wall, "cpu_s": cpu,
                    "events_per_s": n / wall, "events_per_cpu_s": n / cpu,
                }
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    source = fixture_scenario()
    if os.geteuid() == 0:
        try:
            import bcc  # noqa: F401
            source = live_scenario()
        except ImportError:
            pass
    with source as (sc, what):
        records = build_records(sc, WALKS)
        results = measure(sc, records, args.events)
    ratio = {f"{j}-{c}": results[f"text-{c}"]["events_per_cpu_s"]
             / results[f"{j}-{c}"]["events_per_cpu_s"]
             for j in ("json", "json-fast") for c in ("warm", "cold")}
    if args.json:
        print(json.dumps({"source": what, "distinct_records": len(records),
                          "goal_events_per_s": GOAL_EVENTS_PER_S, "results": results,
                          "text_to_json_ratio": ratio}, indent=2))
        return 0
    print(f"source: {what}")
    print(f"{len(records)} distinct 32-entry records, {args.events} events per row, one thread")
    print("goal judged on events per CPU-second (per core); wall/s shown beside it")
    print(f"{'pipeline':<16} {'per CPU-s':>10} {'events/s':>10} {'cpu s':>8} {'wall s':>8}  goal")
    for name, r in results.items():
        ok = "ok" if r["events_per_cpu_s"] >= GOAL_EVENTS_PER_S else "MISSED"
        print(f"{name:<16} {r['events_per_cpu_s']:>10,.0f} {r['events_per_s']:>10,.0f} "
              f"{r['cpu_s']:>8.3f} {r['wall_s']:>8.3f}  >= {GOAL_EVENTS_PER_S:,}/s {ok}")
    print("json: json.dumps(event_to_json(...), sort_keys=True); json-fast: event_json(...), "
          "the same text")
    for name, v in ratio.items():
        print(f"text/{name.rsplit('-', 1)[0]} throughput ratio ({name.rsplit('-', 1)[1]}): "
              f"{v:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
