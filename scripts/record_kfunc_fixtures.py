#!/usr/bin/env python3
"""Record the kernel-function fixtures of tests/test_kfunc_unit.py from a real kernel: the VM
tier's 6.12 guest (run it there: scripts/vmtest -- .venv/bin/python
scripts/record_kfunc_fixtures.py). Needs root, tracefs and kprobe.multi/fentry.

It writes tests/fixtures/kfunc-<release>/:
  kallsyms.txt         verbatim /proc/kallsyms lines: every text symbol named __x64_sys_*,
                       __ia32_sys_*, __do_sys_* or __se_sys_*, every symbol sharing an address
                       with one of those, the kprobe/fprobe/rethook functions that can sit on
                       top of a probe's stack (bpflbr_shell.trace.kstack), and the symbols of the
                       stacks below (each of these with its same-address group and the next
                       symbol, which bounds its size)
  available_filter_functions.txt   the lines of tracefs' list naming any of those symbols
  blacklist.txt        /sys/kernel/debug/kprobes/blacklist lines naming any of them
  stacks.json          kernel stacks of real events of 'trace kfunc __do_sys_getpid --kstack'
                       on each backend and direction: func_ip, the raw addresses, and the
                       [bpf] kallsyms lines of that moment

usage: .venv/bin/python scripts/record_kfunc_fixtures.py [--out DIR]
"""

from __future__ import annotations

import argparse
import bisect
import datetime
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SYSCALL_NAMES = re.compile(r"__(x64|ia32|do|se)_sys_\w+")
TARGET = "__do_sys_getpid"
RUNS = (("fentry", False), ("fentry", True), ("multi", False), ("multi", True),
        ("kprobe", True))


def record_stacks() -> list[dict]:
    """Events of the real shell commands, each run in-process with a getpid() workload, each
    with the [bpf] kallsyms lines (our programs, trampolines) read while it was attached: JIT
    memory is reused, so one run's programs sit where another's were."""
    sys.path.insert(0, str(REPO))
    from bpflbr_shell.cli import open_kernel_view
    from bpflbr_shell.shell import Context, load_builtin_commands, set_kernel_factory
    from bpflbr_shell.shell.runner import execute_line

    set_kernel_factory(open_kernel_view)
    out = []
    for backend, exit_ in RUNS:
        ctx = Context(load_builtin_commands(), out=io.StringIO(), err=io.StringIO())
        worker = subprocess.Popen([sys.executable, "-c",
                                   "import os, sys\nfor line in sys.stdin:\n    os.getpid()\n"
                                   "    print(flush=True)\n"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        execute_line(ctx, f"trace kfunc {TARGET} --backend {backend}"
                     f"{' --exit' if exit_ else ''} --pid {worker.pid} --kstack --bg --quiet")
        assert worker.stdin and worker.stdout
        worker.stdin.write("\n")
        worker.stdin.flush()
        worker.stdout.readline()
        rt = ctx.state["trace"]
        for _ in range(600):
            if rt.session.store.last(1):
                break
            time.sleep(0.1)
        with open("/proc/kallsyms") as f:
            bpf_lines = [ln.rstrip("\n") for ln in f if ln.rstrip().endswith("[bpf]")]
        execute_line(ctx, "trace stop")
        worker.kill()
        worker.wait()
        event = rt.session.store.last(1)[0]
        out.append({"backend": backend, "kind": event.kind, "func_ip": event.func_ip,
                    "kstack": event.kstack, "bpf_kallsyms": bpf_lines})
        print(f"record: {backend} {event.kind}: {len(event.kstack)} frames", file=sys.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path,
                    default=REPO / "tests" / "fixtures" / f"kfunc-{os.uname().release}")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("record: must run as root", file=sys.stderr)
        return 1
    stacks = record_stacks()
    lines = Path("/proc/kallsyms").read_text().splitlines()
    fields = [ln.split() for ln in lines]
    order = sorted(range(len(lines)), key=lambda i: int(fields[i][0], 16))
    addrs = [int(fields[i][0], 16) for i in order]
    by_addr: dict[str, list[int]] = {}
    for i, f in enumerate(fields):
        by_addr.setdefault(f[0], []).append(i)
    pick: set[int] = set()
    for f in fields:
        if f[1] in "tT" and SYSCALL_NAMES.fullmatch(f[2]):
            pick.update(by_addr[f[0]])
    sys.path.insert(0, str(REPO))
    from bpflbr_shell.trace.kstack import TRACER_STACK_FUNCS

    wanted = [int(f[0], 16) for f in fields if f[2] in TRACER_STACK_FUNCS]
    for s in stacks:
        wanted += [s["func_ip"], *s["kstack"]]
    for a in wanted:
        k = bisect.bisect_right(addrs, a) - 1
        if k < 0:
            continue
        base = addrs[k]
        nxt = k + 1
        while nxt < len(addrs) and addrs[nxt] == base:
            nxt += 1
        pick.update(by_addr[fields[order[k]][0]])
        if nxt < len(addrs):
            pick.update(by_addr[fields[order[nxt]][0]])
    names = {fields[i][2] for i in pick}
    with open("/sys/kernel/tracing/available_filter_functions") as f:
        aff = [ln.rstrip("\n") for ln in f if ln.split() and ln.split()[0] in names]
    try:
        with open("/sys/kernel/debug/kprobes/blacklist") as f:
            black = [ln.rstrip("\n") for ln in f if len(ln.split()) > 1
                     and ln.split()[1] in names]
    except OSError:
        black = []
    args.out.mkdir(parents=True, exist_ok=True)
    head = (f"# recorded from {os.uname().release} on {datetime.date.today().isoformat()} by "
            "scripts/record_kfunc_fixtures.py")
    (args.out / "kallsyms.txt").write_text(
        "\n".join([head, f"# {len(pick)} of {len(lines)} lines, verbatim, file order kept"]
                  + [lines[i] for i in sorted(pick)]) + "\n")
    (args.out / "available_filter_functions.txt").write_text("\n".join([head, *aff]) + "\n")
    (args.out / "blacklist.txt").write_text("\n".join([head, *black]) + "\n")
    (args.out / "stacks.json").write_text(json.dumps(
        {"recorded": head[2:], "target": TARGET, "events": stacks}, indent=1) + "\n")
    print(f"record: {len(pick)} kallsyms lines, {len(aff)} filter functions, {len(black)} "
          f"blacklisted, {len(stacks)} stacks in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
