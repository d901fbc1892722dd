#!/usr/bin/env python3
"""Time to the first event of a uprobe trace, ours and bpftrace's, side by side in one run.

The target (bench/targets/mallocloop.c) calls libc's malloc every millisecond. Each sample
starts a tracer on it and takes the time from starting the process to (1) its probes being
attached, the first possible event (ours: the "trace 1:" line, printed once attached;
bpftrace: its BEGIN probe's line, run once every probe is attached), and (2) the first event
line on its stdout:

- ``cold``: ``.venv/bin/bpflbr-shell -c 'trace uprobe c:malloc --pid P --limit 1'`` with an
  empty probe cache (a fresh root-only directory: BCC compiles the probe);
- ``warm``: the same command with the cache a previous run filled (no clang, no bcc import);
- ``in-shell``: the same command typed into a running shell (the REPL's case: a session's
  second and later traces): the shell is started, reads commands from a pipe, answers ``show
  settings``, and the clock starts when the ``trace`` line is written (warm probe cache);
- ``bpftrace``: ``bpftrace -p P -e 'uprobe:LIBC:malloc { printf("x\\n"); exit(); }'``.

The three are interleaved (rotating order) for ``--rounds`` rounds; medians, the spread and
the ratios to bpftrace are printed. Goal: warm at most bpftrace's. Python's bytecode cache
(in a private prefix, filled by a first run) and the page cache are warm for all three:
"cold" means the probe cache only.

usage: .venv/bin/python bench/bench_first_event.py [--rounds 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHELL = str(REPO / ".venv" / "bin" / "bpflbr-shell")
CACHE_ENV = "BPFLBR_SHELL_PROBE_CACHE"
TIMEOUT = 120.0


def build_target(tmp: Path) -> Path:
    out = tmp / "mallocloop"
    subprocess.run(["gcc", "-O0", "-o", str(out), str(REPO / "bench" / "targets" /
                                                     "mallocloop.c")], check=True)
    return out


def libc_path() -> str:
    sys.path.insert(0, str(REPO))
    from bpflbr_shell.trace.probes.uprobe import resolve_binary

    return resolve_binary("c")


def timed(argv: list[str], env: dict[str, str], attached: bytes, event: bytes,
          ) -> tuple[float, float]:
    """Seconds from starting ``argv`` to the line starting with ``attached`` (on stdout or
    stderr: the tracer says its probes are in) and to the first line starting with
    ``event`` on stdout; then the process is ended."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    streams = {proc.stdout.fileno(): b"", proc.stderr.fileno(): b""}
    out_fd = proc.stdout.fileno()
    t_attached = t_event = None
    try:
        while t_attached is None or t_event is None:
            left = TIMEOUT - (time.monotonic() - t0)
            ready, _, _ = select.select(list(streams), [], [], max(left, 0))
            if not ready:
                raise TimeoutError(f"{argv[0]}: no event in {TIMEOUT:.0f} s")
            for fd in ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    err = streams[proc.stderr.fileno()].decode(errors="replace")
                    raise RuntimeError(f"{argv[0]} ended without an event: {err[-500:]}")
                now = time.monotonic() - t0
                streams[fd] += chunk
                lines = streams[fd].split(b"\n")[:-1]
                if t_attached is None and any(ln.startswith(attached) for ln in lines):
                    t_attached = now
                if fd == out_fd and t_event is None and any(ln.startswith(event)
                                                            for ln in lines):
                    t_event = now
                    t_attached = t_attached if t_attached is not None else now
        return t_attached, t_event
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def timed_in_shell(command: str, env: dict[str, str], attached: bytes, event: bytes,
                   ) -> tuple[float, float]:
    """Seconds from writing ``command`` into a running, idle shell to its ``attached`` line
    and to its first ``event`` line (the shell started and answered a command before)."""
    proc = subprocess.Popen([SHELL], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    streams = {proc.stdout.fileno(): b"", proc.stderr.fileno(): b""}
    out_fd = proc.stdout.fileno()

    def wait_for(fds: set[int], prefix: bytes, t0: float) -> float:
        while True:
            left = TIMEOUT - (time.monotonic() - t0)
            ready, _, _ = select.select(list(streams), [], [], max(left, 0))
            if not ready:
                raise TimeoutError(f"in-shell: no {prefix!r} in {TIMEOUT:.0f} s")
            now = time.monotonic() - t0
            for fd in ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    err = streams[proc.stderr.fileno()].decode(errors="replace")
                    raise RuntimeError(f"in-shell: the shell ended: {err[-500:]}")
                streams[fd] += chunk
            for fd in fds:
                lines = streams[fd].split(b"\n")[:-1]
                hit = [i for i, ln in enumerate(lines) if ln.lstrip().startswith(prefix)]
                if hit:
                    streams[fd] = b"\n".join(lines[hit[0] + 1:]) + b"\n"
                    return now

    try:
        proc.stdin.write(b"show settings\n")
        proc.stdin.flush()
        wait_for({out_fd}, b"lbr-trim", time.monotonic())  # idle: ready for a command
        t0 = time.monotonic()
        proc.stdin.write(command.encode() + b"\n")
        proc.stdin.flush()
        t_attached = wait_for({out_fd, proc.stderr.fileno()}, attached, t0)
        t_event = wait_for({out_fd}, event, t0)
        return t_attached, t_event
    finally:
        try:
            proc.stdin.close()  # end of the script: the shell exits
        except OSError:
            pass
        proc.stdin = None
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def private_dir(parent: Path, name: str) -> Path:
    d = parent / name
    d.mkdir(mode=0o700)
    return d / "probes"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_first_event: needs root", file=sys.stderr)
        return 2
    bpftrace = shutil.which("bpftrace")
    if bpftrace is None:
        print("bench_first_event: needs bpftrace (scripts/bootstrap.sh)", file=sys.stderr)
        return 2
    libc = libc_path()
    with tempfile.TemporaryDirectory(prefix="bench_first_event.") as tmpname:
        tmp = Path(tmpname)
        os.chmod(tmp, 0o700)
        target = subprocess.Popen([str(build_target(tmp))], stdin=subprocess.DEVNULL)
        try:
            pid = target.pid
            ours = [SHELL, "-c", f"trace uprobe c:malloc --pid {pid} --limit 1"]
            theirs = [bpftrace, "-p", str(pid), "-e",
                      'BEGIN { printf("attached\\n"); } '
                      f'uprobe:{libc}:malloc {{ printf("x\\n"); exit(); }}']
            markers = {"ours": (b"trace 1: ", b"#1 "), "bpftrace": (b"attached", b"x")}
            warm_cache = private_dir(tmp, "warm")
            # as installed: Python's bytecode cached (kept out of the tree), as pip leaves it
            base_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
            base_env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
            timed(ours, {**base_env, CACHE_ENV: str(warm_cache)}, *markers["ours"])  # fills
            runs: dict[str, list[tuple[float, float]]] = {"cold": [], "warm": [],
                                                          "in-shell": [], "bpftrace": []}
            for r in range(args.rounds):
                kinds = list(runs)
                kinds = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
                for kind in kinds:
                    if kind == "bpftrace":
                        runs[kind].append(timed(theirs, base_env, *markers["bpftrace"]))
                        continue
                    if kind == "in-shell":
                        runs[kind].append(timed_in_shell(
                            ours[2], {**base_env, CACHE_ENV: str(warm_cache)}, *markers["ours"]))
                        continue
                    cache = warm_cache if kind == "warm" else private_dir(tmp, f"cold{r}")
                    runs[kind].append(timed(ours, {**base_env, CACHE_ENV: str(cache)},
                                            *markers["ours"]))
        finally:
            target.kill()
            target.wait()
    result: dict[str, object] = {"rounds": args.rounds}
    for i, what in enumerate(("attached", "first_event")):
        med = {k: statistics.median(t[i] for t in v) for k, v in runs.items()}
        result[what] = {
            "median_s": med,
            "min_s": {k: min(t[i] for t in v) for k, v in runs.items()},
            "max_s": {k: max(t[i] for t in v) for k, v in runs.items()},
            "ratio_to_bpftrace": {k: med[k] / med["bpftrace"]
                                  for k in ("cold", "warm", "in-shell")},
            "goal_met": med["warm"] <= med["bpftrace"],
            "goal_met_in_shell": med["in-shell"] <= med["bpftrace"],
        }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print("uprobe on libc malloc, target calling it every 1 ms; "
          f"{args.rounds} interleaved rounds; seconds from starting the tracer")
    for what, title in (("attached", "to probes attached (ours: 'trace 1:' line; bpftrace: "
                                     "BEGIN)"),
                        ("first_event", "to the first event printed")):
        r = result[what]
        assert isinstance(r, dict)
        print(f"\n{title}")
        print(f"{'':10} {'median':>9} {'min':>9} {'max':>9} {'vs bpftrace':>12}")
        for k in ("cold", "warm", "in-shell", "bpftrace"):
            ratio = f"{r['ratio_to_bpftrace'][k]:.2f}x" if k != "bpftrace" else ""
            print(f"{k:10} {r['median_s'][k] * 1000:8.0f}ms {r['min_s'][k] * 1000:8.0f}ms "
                  f"{r['max_s'][k] * 1000:8.0f}ms {ratio:>12}")
        print("goal (warm <= bpftrace):", "met" if r["goal_met"] else "NOT met",
              "; in a running shell:", "met" if r["goal_met_in_shell"] else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
