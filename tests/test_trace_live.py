"""trace uprobe/uretprobe end to end on this host (root, BCC): a C target built here with gcc.

The target (TARGET_C below) makes known calls only when the test writes a command byte to its
stdin, and answers ``done`` after them, so every trace is attached before the calls happen and
the test knows when they are over: no sleep decides whether a test passes.

This host has no LBR hardware (perf branch-stack events fail with ENOENT), so the no-LBR path,
with user stacks instead of branch records, is the real one here.

Oracles are independent of our code: the C source (which line makes each call), ``nm`` and
``addr2line`` on the target binary, ``bpftool prog/link/perf show``, ``uprobe_events``,
``/proc/PID/fd(info)`` and the target's own text bytes read through ``/proc/PID/mem`` (a uprobe
is an int3 written into the traced process).
"""

from __future__ import annotations

import io
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.live

REPO = Path(__file__).resolve().parent.parent
OUR_PROG_NAMES = {"on_entry", "on_return"}  # bpf/uprobe.c's functions (names <= 15 chars)
N = 7  # calls per command byte

TARGET_C = r"""
/* bpflbr-shell live-test target: each command byte on stdin makes known calls. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int n = 5;
static long sum;

int add(int a, int b)
{
    return a + b;
}

long mul3(long x, long y, long z)
{
    return x * y * z;
}

int sub(int a, int b)
{
    return a - b;
}

static void *add_loop(void *arg)
{
    for (int i = 0; i < n; i++)
        sum += add(i, 2 * i); /* CALL add */
    return arg;
}

int main(int argc, char **argv)
{
    pthread_t th;
    char cmd;

    if (argc > 1)
        n = atoi(argv[1]);
    printf("ready pid=%d add=%p mul3=%p sub=%p\n", getpid(), (void *)add, (void *)mul3,
           (void *)sub);
    fflush(stdout);
    while (read(0, &cmd, 1) == 1) {
        if (cmd == 'a') {
            add_loop(NULL); /* CALL add_loop */
        } else if (cmd == 't') {
            pthread_create(&th, NULL, add_loop, NULL);
            pthread_join(th, NULL);
        } else if (cmd == 'm') {
            for (int i = 0; i < n; i++)
                sum += mul3(i, 3, -1); /* CALL mul3 */
        } else if (cmd == 's') {
            for (int i = 0; i < n; i++)
                sum += sub(i, 2 * i); /* CALL sub */
        } else if (cmd == 'e') {
            sum += add(1000, 1000); /* CALL end */
        } else if (cmd == 'q') {
            break;
        } else {
            continue;
        }
        printf("done %c %ld\n", cmd, sum);
        fflush(stdout);
    }
    return 0;
}
"""


# ---- requirements -----------------------------------------------------------------------------

def require_tool(name: str, why: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.skip(f"needs {name} ({why})")
    return path


@pytest.fixture(scope="session")
def target_bin(require_root: None, require_bcc: None,
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The C target, built with -g -O0 and frame pointers (BPF's user stacks walk them)."""
    gcc = require_tool("gcc", "to build the C target the traces attach to")
    d = tmp_path_factory.mktemp("trace_target")
    src = d / "target.c"
    src.write_text(TARGET_C.lstrip("\n"))
    binary = d / "target"
    res = subprocess.run([gcc, "-g", "-O0", "-fno-omit-frame-pointer", "-pthread", "-o",
                          str(binary), str(src)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(f"gcc failed to build the target:\n{res.stderr}")
    return binary


def call_line(marker: str) -> int:
    """The source line (1-based) of target.c that carries ``/* CALL marker */``."""
    lines = TARGET_C.lstrip("\n").splitlines()
    hits = [i for i, text in enumerate(lines, 1) if f"/* CALL {marker} */" in text]
    assert len(hits) == 1, marker
    return hits[0]


def nm_symbols(binary: Path) -> dict[str, int]:
    """``nm`` (binutils): symbol -> link-time address (the independent oracle for our ELF)."""
    nm = require_tool("nm", "binutils: the symbol oracle")
    out = subprocess.run([nm, str(binary)], check=True, capture_output=True, text=True).stdout
    syms = {}
    for row in out.splitlines():
        parts = row.split()
        if len(parts) == 3 and parts[1] in "tT":
            syms[parts[2]] = int(parts[0], 16)
    return syms


def addr2line(binary: Path, addrs: list[int]) -> list[tuple[str, str, int]]:
    """``addr2line -f``: (function, file, line) of each link-time address."""
    tool = require_tool("addr2line", "binutils: the file:line oracle")
    out = subprocess.run([tool, "-f", "-e", str(binary), *(hex(a) for a in addrs)],
                         check=True, capture_output=True, text=True).stdout.splitlines()
    result = []
    for func, where in zip(out[::2], out[1::2], strict=True):
        file, _, line = where.partition(":")
        result.append((func, file, int(line.split()[0])))
    return result


# ---- the target process -----------------------------------------------------------------------

def read_line(stream: Any, timeout: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise TimeoutError(f"no line within {timeout}s")
    finally:
        sel.close()
    return stream.readline()


class Target:
    """A running target: ``run('a')`` makes N add() calls and returns when they are done."""

    def __init__(self, binary: Path, n: int = N) -> None:
        self.binary = binary
        self.n = n
        self.proc = subprocess.Popen([str(binary), str(n)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = read_line(self.proc.stdout, 10)
        m = re.fullmatch(r"ready pid=(\d+) add=0x([0-9a-f]+) mul3=0x([0-9a-f]+) "
                         r"sub=0x([0-9a-f]+)\n", line)
        assert m, line
        self.pid = int(m.group(1))
        assert self.pid == self.proc.pid
        self.addr = {"add": int(m.group(2), 16), "mul3": int(m.group(3), 16),
                     "sub": int(m.group(4), 16)}
        # PIE load bias, from the target's own &add and nm's link-time address of add
        self.bias = self.addr["add"] - nm_symbols(binary)["add"]

    def run(self, cmd: str, timeout: float = 30) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd)
        self.proc.stdin.flush()
        line = read_line(self.proc.stdout, timeout)
        assert line.startswith(f"done {cmd} "), line

    def text(self, func: str, size: int = 4) -> bytes:
        """The first bytes of ``func`` as the process sees them (an attached uprobe is 0xcc)."""
        with open(f"/proc/{self.pid}/mem", "rb", buffering=0) as mem:
            mem.seek(self.addr[func])
            return mem.read(size)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture
def targets(target_bin: Path) -> Iterator[Callable[..., Target]]:
    started: list[Target] = []

    def start(n: int = N) -> Target:
        t = Target(target_bin, n)
        started.append(t)
        return t

    yield start
    for t in started:
        t.close()


# ---- kernel-side oracles ----------------------------------------------------------------------

def bpftool_json(*args: str) -> Any:
    tool = require_tool("bpftool", "the independent oracle for progs, links and perf attachments")
    res = subprocess.run([tool, *args, "--json"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout or "[]")


def uprobe_events() -> list[str]:
    path = Path("/sys/kernel/tracing/uprobe_events")
    if not path.exists():
        from bpflbr_shell.trace.probes.bccprog import ensure_tracefs

        ensure_tracefs()
    return path.read_text().splitlines()


def bpf_fds(pid: int) -> dict[int, tuple[str, int | None]]:
    """fd -> (kind, prog_id) for the BPF and perf-event fds of a process."""
    fds: dict[int, tuple[str, int | None]] = {}
    base = Path(f"/proc/{pid}/fd")
    try:
        entries = list(base.iterdir())
    except FileNotFoundError:
        return fds
    for entry in entries:
        try:
            link = os.readlink(entry)
        except OSError:
            continue
        if not link.startswith("anon_inode:") or not re.search(r"bpf|btf|perf_event", link):
            continue
        prog_id = None
        if "bpf-prog" in link:
            try:
                info = Path(f"/proc/{pid}/fdinfo/{entry.name}").read_text()
                m = re.search(r"^prog_id:\s*(\d+)", info, re.M)
                prog_id = int(m.group(1)) if m else None
            except OSError:
                pass
        fds[int(entry.name)] = (link.removeprefix("anon_inode:"), prog_id)
    return fds


@dataclass
class Snapshot:
    progs: dict[int, str]  # bpftool prog show: id -> name
    links: set[int]
    perf: list[dict[str, Any]]  # bpftool perf show (uprobe attachments of every process)
    uprobe_events: list[str]
    fds: dict[int, dict[int, tuple[str, int | None]]]  # pid -> bpf/perf fds
    text: dict[tuple[int, str], bytes]  # (target pid, func) -> first bytes

    def perf_on(self, binary: Path) -> list[dict[str, Any]]:
        return [p for p in self.perf if p.get("filename") == str(binary)]

    def fd_kinds(self, pid: int) -> Counter[str]:
        return Counter(kind for kind, _ in self.fds.get(pid, {}).values())


def snapshot(pids: tuple[int, ...] = (), watch: tuple[tuple[Target, str], ...] = ()) -> Snapshot:
    return Snapshot(
        progs={p["id"]: p.get("name", "") for p in bpftool_json("prog", "show")},
        links={link["id"] for link in bpftool_json("link", "show")},
        perf=bpftool_json("perf", "show"),
        uprobe_events=uprobe_events(),
        fds={pid: bpf_fds(pid) for pid in (os.getpid(), *pids)},
        text={(t.pid, f): t.text(f) for t, f in watch},
    )


def ours_during(snap: Snapshot, binary: Path, pids: tuple[int, ...]) -> set[int]:
    """Prog ids attached to our binary, or held by our processes and named like ours."""
    ids = {p["prog_id"] for p in snap.perf_on(binary)}
    for pid in pids:
        ids |= {prog_id for kind, prog_id in snap.fds.get(pid, {}).values()
                if kind == "bpf-prog" and snap.progs.get(prog_id or -1) in OUR_PROG_NAMES}
    return ids


def assert_attached(snap: Snapshot, binary: Path, n_probes: int) -> None:
    """The oracles do see our probes while a trace runs (so their absence later means it)."""
    entries = snap.perf_on(binary)
    assert len(entries) == n_probes, entries
    for e in entries:
        assert snap.progs.get(e["prog_id"]) in OUR_PROG_NAMES, e


def assert_clean(before: Snapshot, after: Snapshot, binary: Path, ours: set[int],
                 ignore_fds: tuple[str, ...] = ()) -> None:
    """Nothing of ours remains: progs, links, uprobes, perf fds, int3 in the target's text."""
    assert ours, "the test saw none of our programs while tracing"
    assert not after.perf_on(binary), after.perf_on(binary)
    assert not ours & set(after.progs), sorted(ours & set(after.progs))
    new_links = after.links - before.links
    assert not new_links, f"links left behind: {sorted(new_links)}"
    assert [ln for ln in after.uprobe_events if str(binary) in ln] == \
        [ln for ln in before.uprobe_events if str(binary) in ln] == []
    for pid in after.fds:
        if pid in before.fds:
            kinds_after, kinds_before = after.fd_kinds(pid), before.fd_kinds(pid)
            for kind in ignore_fds:
                kinds_after.pop(kind, None)
                kinds_before.pop(kind, None)
            assert kinds_after == kinds_before, pid
    assert after.text == before.text, "a breakpoint is still written into the target"


# ---- the shell, in process and as a real process ----------------------------------------------

class InProcShell:
    """The real command runner with a Context whose output goes to StringIO."""

    def __init__(self) -> None:
        from bpflbr_shell.cli import open_kernel_view
        from bpflbr_shell.shell import Context, load_builtin_commands

        self.out, self.err = io.StringIO(), io.StringIO()
        self.ctx = Context(load_builtin_commands(), out=self.out, err=self.err,
                           kernel_factory=open_kernel_view)
        self._seen = (0, 0)

    def run(self, line: str) -> tuple[bool, str, str]:
        """Run one line as the shell does; returns (ok, new stdout, new stderr)."""
        from bpflbr_shell.shell.runner import run_line

        ok = run_line(self.ctx, line)
        return (ok, *self.new_output())

    def new_output(self) -> tuple[str, str]:
        out, err = self.out.getvalue(), self.err.getvalue()
        o, e = self._seen
        self._seen = (len(out), len(err))
        return out[o:], err[e:]

    def json(self, line: str) -> Any:
        ok, out, err = self.run(line)
        assert ok, err
        return json.loads(out)

    @property
    def session(self) -> Any:
        return self.ctx.state["trace"].session

    def trace(self, trace_id: int) -> Any:
        return self.session.get(trace_id)

    def wait_delivered(self, trace_id: int, n: int, timeout: float = 20) -> None:
        trace = self.trace(trace_id)
        deadline = time.monotonic() + timeout
        while trace.delivered < n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert trace.delivered >= n, (trace.delivered, n, trace.counters())

    def close(self) -> None:
        rt = self.ctx.state.get("trace")
        if rt is not None:
            rt.session.stop_all()
            rt.session.release_stats()
        self.ctx.close()


@pytest.fixture
def shell(require_root: None, require_bcc: None) -> Iterator[InProcShell]:
    sh = InProcShell()
    yield sh
    sh.close()


def start_trace(sh: InProcShell, line: str) -> int:
    return start_trace_output(sh, line)[0]


def start_trace_output(sh: InProcShell, line: str) -> tuple[int, str, str]:
    ok, out, err = sh.run(line)
    assert ok, err
    m = re.search(r"^trace (\d+): ", err, re.M)  # status lines go to stderr
    assert m, (out, err)
    return int(m.group(1)), out, err


def wait_until(predicate: Callable[[], bool], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def shell_env() -> dict[str, str]:
    # unbuffered: the test waits for the "trace N:" line before it makes the target call
    return dict(os.environ, BPFLBR_HISTORY="", PYTHONUNBUFFERED="1",
                PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


#: Runs the real CLI (``cli.main``, what ``python -m bpflbr_shell`` runs) and, at the very end
#: of the process, after the shell's own cleanup, reports what of ours it still holds: the
#: uprobes ``bpftool perf show`` lists for this pid on the target binary, and its BPF and
#: perf-event fds. Its atexit hook is registered before the shell's, so it runs after it
#: (atexit is LIFO); the SIGTERM path ends in os._exit, which skips atexit, so that is wrapped.
#: Without this, process exit would close every fd and hide a cleanup that never ran.
EXIT_CHECK = r"""
import atexit, json, os, re, subprocess, sys

binary = sys.argv.pop(1)
real_exit = os._exit


def leftovers():
    perf = subprocess.run(["bpftool", "perf", "show", "--json"], capture_output=True,
                          text=True).stdout
    mine = [p for p in json.loads(perf or "[]")
            if p["pid"] == os.getpid() and p.get("filename") == binary]
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if re.fullmatch(r"anon_inode:(\[perf_event\]|bpf-prog|bpf-map|bpf_link)", link):
            fds.append(link)
    sys.stderr.write(f"LEFTOVERS uprobes={len(mine)} fds={sorted(fds)}\n")
    sys.stderr.flush()


def checked_exit(code):
    leftovers()
    real_exit(code)


atexit.register(leftovers)
os._exit = checked_exit
from bpflbr_shell.cli import main

sys.exit(main())
"""


class ShellProc:
    """``python -m bpflbr_shell --batch -c ...`` as a real process, its stdout read live.

    With ``exit_check=BINARY`` the CLI runs under EXIT_CHECK, which reports leftovers."""

    def __init__(self, *commands: str, exit_check: Path | None = None) -> None:
        argv = [sys.executable, "-m", "bpflbr_shell", "--batch"]
        if exit_check is not None:
            argv = [sys.executable, "-c", EXIT_CHECK, str(exit_check), "--batch"]
        for c in commands:
            argv += ["-c", c]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=REPO, env=shell_env())
        self.lines: list[str] = []
        self.err = ""
        self._cond = threading.Condition()
        self._readers = [threading.Thread(target=self._read_out, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for r in self._readers:
            r.start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:  # status lines ("trace 1: ...") come here
            with self._cond:
                self.err += line
                self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines + self.err.splitlines():
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not any(
                        r.is_alive() for r in self._readers):
                    raise AssertionError(f"no line matching {pattern!r}; stdout: {self.lines}; "
                                         f"stderr: {self.err}")
                self._cond.wait(min(left, 0.2))

    def finish(self, timeout: float = 60) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for r in self._readers:
                r.join(timeout=10)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish()


def json_events(lines: list[str]) -> list[dict[str, Any]]:
    """The one-line JSON objects ``trace ... --json`` prints, one per event."""
    return [json.loads(ln) for ln in lines if ln.startswith("{")]


def run_batch(*commands: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "bpflbr_shell", "--batch"]
    for c in commands:
        argv += ["-c", c]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=shell_env())


# ---- 1. values: retval, args, count, order, duration ------------------------------------------

def test_uretprobe_values_of_every_call_in_order(targets, target_bin: Path) -> None:
    """The real CLI, foreground: N calls of add(i, 2i) then one add(1000, 1000) that ends the
    trace (--limit N+1), so the count is exact without a timer: an extra or a missing event
    would move the sentinel."""
    t = targets()
    sh = ShellProc(f"trace uretprobe {target_bin}:add --limit {N + 1} --duration 60s --json",
                   "show stats --json")
    try:
        sh.wait_for(r"^trace 1: uretprobe on 1 function\(s\) of ")
        t.run("a")
        t.run("e")
        rc = sh.finish()
    finally:
        sh.kill()
    assert rc == 0, sh.err
    events = json_events(sh.lines)
    expected = [({"a": i, "b": 2 * i}, 3 * i) for i in range(N)] + [({"a": 1000, "b": 1000},
                                                                      2000)]
    assert [(e["args"], e["retval"]) for e in events] == expected
    assert [e["id"] for e in events] == list(range(1, N + 2))
    for e in events:
        assert (e["kind"], e["func"], e["pid"], e["tid"], e["comm"]) == \
            ("exit", "add", t.pid, t.pid, "target")
        assert e["probe"] == "uretprobe target:add"
        assert e["func_ip"] == t.addr["add"]
        assert 0 < e["duration_ns"] < 10**9, e["duration_ns"]
    ts = [e["ts_ns"] for e in events]
    assert ts == sorted(ts) and len(set(ts)) == len(ts)
    assert f"trace 1 stopped: {N + 1} events" in sh.err.splitlines()
    # show stats after the trace: the kernel counted exactly these calls
    assert all(ln.startswith("{") for ln in sh.lines[:N + 1])  # stdout: JSON only
    stats_text = "\n".join(sh.lines[N + 1:])
    (stats,) = json.loads(stats_text)
    assert (stats["hits"], stats["delivered"], stats["drops"], stats["running"]) == \
        (N + 1, N + 1, 0, False)


def test_negative_int_retval(shell: InProcShell, targets, target_bin: Path) -> None:
    """int sub(i, 2i) returns -i: the 64-bit register holds 0xffffffff for -1 (and garbage
    may sit above bit 31 of an int arg); the DWARF types of sub say how to read them."""
    t = targets()
    start_trace(shell, f"trace uretprobe {target_bin}:sub --bg --quiet --no-lbr")
    start_trace(shell, f"trace uprobe {target_bin}:mul3 --bg --quiet --no-lbr")
    t.run("s")
    t.run("m")  # mul3(i, 3, -1): a long arg of -1
    shell.wait_delivered(1, N)
    shell.wait_delivered(2, N)
    events = shell.json("show events --json")
    subs = [e for e in events if e["func"] == "sub"]
    assert [e["retval"] for e in subs] == [-i for i in range(N)]
    assert [e["args"] for e in subs] == [{"a": i, "b": 2 * i} for i in range(N)]
    assert [e["args"]["z"] for e in events if e["func"] == "mul3"] == [-1] * N
    # the text view: signed ints in decimal, the same values
    ok, out, err = shell.run(f"show events {2 * N}")
    assert ok, err
    calls = re.findall(r"^   (sub\(.*\) = \S+)", out, re.M)
    assert calls == [f"sub(a={i}, b={2 * i}) = {-i}" for i in range(N)], out
    assert re.findall(r"^   mul3\((.*)\)$", out, re.M) == [f"x={i}, y=3, z=-1"
                                                           for i in range(N)], out


def test_long_retval_sign_and_uprobe_args(shell: InProcShell, targets,
                                          target_bin: Path) -> None:
    """mul3(i, 3, -1) returns -3i as a long; the uprobe (entry) event carries the args."""
    t = targets()
    start_trace(shell, f"trace uretprobe {target_bin}:mul3 --bg --quiet --no-lbr")
    start_trace(shell, f"trace uprobe {target_bin}:mul3 --bg --quiet --no-lbr")
    t.run("m")
    shell.wait_delivered(1, N)
    shell.wait_delivered(2, N)
    events = shell.json("show events --json")
    exits = [e for e in events if e["kind"] == "exit"]
    entries = [e for e in events if e["kind"] == "entry"]
    assert [e["retval"] for e in exits] == [-3 * i for i in range(N)]
    assert [(e["args"]["x"], e["args"]["y"]) for e in entries] == [(i, 3) for i in range(N)]
    assert all(e["retval"] is None and e["duration_ns"] is None for e in entries)
    assert sorted(entries[0]["args"]) == ["x", "y", "z"]


# ---- 2. user stacks against addr2line ---------------------------------------------------------

def frames_in_binary(t: Target, ustack: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The frames whose address lies in the target's executable mapping (not libc)."""
    maps = Path(f"/proc/{t.pid}/maps").read_text().splitlines()
    ranges = []
    for row in maps:
        parts = row.split()
        if len(parts) >= 6 and parts[5] == str(t.binary) and "x" in parts[1]:
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            ranges.append((lo, hi))
    assert ranges, maps
    return [f for f in ustack if any(lo <= f["addr"] < hi for lo, hi in ranges)]


def check_against_addr2line(t: Target, frames: list[dict[str, Any]]) -> None:
    oracle = addr2line(t.binary, [f["addr"] - t.bias for f in frames])
    for frame, (func, file, line) in zip(frames, oracle, strict=True):
        assert (frame["func"], frame["file"], frame["line"]) == (func, file, line), frame


def test_user_stack_frames_match_addr2line(shell: InProcShell, targets,
                                           target_bin: Path) -> None:
    t = targets()
    start_trace(shell, f"trace uretprobe {target_bin}:add --bg --quiet")
    start_trace(shell, f"trace uprobe {target_bin}:add --bg --quiet")
    t.run("a")
    shell.wait_delivered(1, N)
    shell.wait_delivered(2, N)
    events = shell.json("show events --json")
    exit_ev = next(e for e in events if e["kind"] == "exit")
    entry_ev = next(e for e in events if e["kind"] == "entry")

    # at the return: add_loop (at its call of add), then main (at its call of add_loop)
    frames = frames_in_binary(t, exit_ev["ustack"])
    assert [f["func"] for f in frames] == ["add_loop", "main"], exit_ev["ustack"]
    check_against_addr2line(t, frames)
    assert [f["line"] for f in frames] == [call_line("add"), call_line("add_loop")]
    assert all(f["file"] == str(target_bin.parent / "target.c") for f in frames)
    # at the entry: the first frame is add itself, at offset 0
    frames = frames_in_binary(t, entry_ev["ustack"])
    assert frames and frames[0]["addr"] == t.addr["add"], entry_ev["ustack"]
    assert (frames[0]["func"], frames[0]["offset"]) == ("add", 0)
    check_against_addr2line(t, frames)
    # the text view shows the same frames with file:line
    ok, out, err = shell.run(f"show event {exit_ev['id']}")
    assert ok, err
    assert re.search(rf"^\s+add_loop\+0x[0-9a-f]+ \(\S*target\.c:{call_line('add')}:\d+\)$",
                     out, re.M), out
    assert re.search(rf"^\s+main\+0x[0-9a-f]+ \(\S*target\.c:{call_line('add_loop')}:\d+\)$",
                     out, re.M), out


def test_short_lived_process_is_symbolized(shell: InProcShell, target_bin: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The target runs and exits before the reader sees its first event: nothing can ask
    the process any more, yet the function, its arg names and the frames in the binary
    resolve (the uprobe's binary is placed from the event's func_ip)."""
    from bpflbr_shell.trace.probes.uprobe import UprobeTracer

    gate = threading.Event()
    real_poll = UprobeTracer.poll

    def gated_poll(self: UprobeTracer, *args: Any) -> int:
        gate.wait(30)  # the background reader starts reading only once the target is gone
        return real_poll(self, *args)

    monkeypatch.setattr(UprobeTracer, "poll", gated_poll)
    start_trace(shell, f"trace uretprobe {target_bin}:add --bg --quiet")
    res = subprocess.run([str(target_bin), str(N)], input="a", capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0
    gate.set()
    shell.wait_delivered(1, N)
    m = re.match(r"ready pid=(\d+) add=0x([0-9a-f]+) ", res.stdout)
    assert m, res.stdout
    pid, bias = int(m.group(1)), int(m.group(2), 16) - nm_symbols(target_bin)["add"]
    assert not Path(f"/proc/{pid}").exists()  # really gone before the first event was read
    events = shell.json("show events --json")
    assert [(e["pid"], e["func"], e["args"], e["retval"]) for e in events] == \
        [(pid, "add", {"a": i, "b": 2 * i}, 3 * i) for i in range(N)]
    event = events[-1]
    assert event["args"] == {"a": N - 1, "b": 2 * (N - 1)}
    assert event["ustack"][0]["func"] == "add_loop"
    # the frames in the binary, as addr2line reads them; the rest (libc) stay bare addresses
    frames = event["ustack"][:2]
    assert [f["func"] for f in frames] == ["add_loop", "main"], event["ustack"]
    oracle = addr2line(target_bin, [f["addr"] - bias for f in frames])
    assert [(f["func"], f["file"], f["line"]) for f in frames] == oracle
    assert [f["line"] for f in frames] == [call_line("add"), call_line("add_loop")]


# ---- 3. two traces at once --------------------------------------------------------------------

def test_two_traces_at_once_each_labelled(shell: InProcShell, targets,
                                          target_bin: Path) -> None:
    t = targets()
    id_add = start_trace(shell, f"trace uretprobe {target_bin}:add --bg --quiet")
    id_mul = start_trace(shell, f"trace uprobe {target_bin}:mul3 --bg --quiet")
    assert id_add != id_mul
    t.run("a")
    t.run("m")
    t.run("a")
    shell.wait_delivered(id_add, 2 * N)
    shell.wait_delivered(id_mul, N)
    events = list(shell.session.store)
    by_trace: dict[int, list[Any]] = {}
    for e in events:
        by_trace.setdefault(e.trace_id, []).append(e)
    assert set(by_trace) == {id_add, id_mul}
    assert [(e.probe, e.kind, e.func) for e in by_trace[id_add]] == \
        [("uretprobe target:add", "exit", "add")] * (2 * N)
    assert [(e.probe, e.kind, e.func) for e in by_trace[id_mul]] == \
        [("uprobe target:mul3", "entry", "mul3")] * N
    assert [e.args[0] for e in by_trace[id_add]] == list(range(N)) * 2
    assert [e.args[0] for e in by_trace[id_mul]] == list(range(N))
    # in time order the events are the calls: an a-run, the m-run, an a-run (each trace has
    # its own ring buffer and reader, so the store holds them in arrival order)
    by_time = sorted(events, key=lambda e: e.ts_ns)
    assert [e.trace_id for e in by_time] == [id_add] * N + [id_mul] * N + [id_add] * N
    # the text view says which probe each event came from
    ok, out, err = shell.run("show events 100")
    assert ok, err
    heads = re.findall(r"^#(\d+) (\S+ \S+)  pid", out, re.M)
    labels = {e.id: e.probe for e in events}
    assert len(heads) == 3 * N
    assert all(labels[int(i)] == probe for i, probe in heads), heads
    assert Counter(probe for _, probe in heads) == {"uretprobe target:add": 2 * N,
                                                    "uprobe target:mul3": N}
    ok, out, err = shell.run("trace list")
    rows = {int(r.split()[0]): r.split() for r in out.splitlines()[1:]}
    assert rows[id_add][1:3] == ["running", str(2 * N)]
    assert rows[id_mul][1:3] == ["running", str(N)]


# ---- 4. --pid ---------------------------------------------------------------------------------

def test_pid_filter_sees_only_its_process(shell: InProcShell, targets,
                                          target_bin: Path) -> None:
    mine, other = targets(), targets()
    id_pid = start_trace(shell, f"trace uretprobe {target_bin}:add --pid {mine.pid} --bg "
                                "--quiet")
    id_all = start_trace(shell, f"trace uretprobe {target_bin}:add --bg --quiet")  # control
    other.run("a")
    mine.run("a")
    other.run("a")
    mine.run("t")  # a second thread of the same process: --pid is the process, not the thread
    shell.wait_delivered(id_all, 4 * N)
    shell.wait_delivered(id_pid, 2 * N)
    events = list(shell.session.store)
    ours = [e for e in events if e.trace_id == id_pid]
    control = [e for e in events if e.trace_id == id_all]
    assert [e.pid for e in ours] == [mine.pid] * (2 * N)
    assert len({e.tid for e in ours}) == 2  # main thread, then the worker
    assert Counter(e.pid for e in control) == {mine.pid: 2 * N, other.pid: 2 * N}
    stats = {row["id"]: row for row in shell.json("show stats --json")}
    # hits count the probe's firings, those it filtered out too
    assert (stats[id_pid]["hits"] - stats[id_pid]["filtered"], stats[id_pid]["delivered"],
            stats[id_pid]["drops"]) == (2 * N, 2 * N, 0)
    assert (stats[id_all]["hits"], stats[id_all]["delivered"], stats[id_all]["drops"]) == \
        (4 * N, 4 * N, 0)
    # the other process's calls never reached the probe, or were filtered in the kernel
    assert stats[id_pid]["filtered"] in (0, 2 * N)
    assert stats[id_all]["filtered"] == 0


# ---- 5. the no-LBR notice ---------------------------------------------------------------------

def test_no_lbr_notice_once_per_session_and_stacks_instead(shell: InProcShell, targets,
                                                           target_bin: Path) -> None:
    t = targets()
    _, _, err1 = start_trace_output(shell, f"trace uretprobe {target_bin}:add --bg --quiet")
    start_trace(shell, f"trace uprobe {target_bin}:mul3 --bg --quiet")
    shell.run("trace stop")
    start_trace(shell, f"trace uretprobe {target_bin}:add --bg --quiet")  # after a stop
    t.run("a")
    shell.wait_delivered(3, N)
    err = shell.err.getvalue()
    notices = [ln for ln in err.splitlines() if "LBR off:" in ln]
    assert len(notices) == 1, err
    assert notices[0] in err1.splitlines(), "the notice comes with the first trace"
    assert notices[0].startswith("warning: LBR off: ")
    assert re.search(r"ENOENT|no hardware PMU", notices[0]), notices[0]
    assert len(notices[0]) <= 100 and "'show features'" in notices[0], notices[0]
    # and stacks are shown instead: no LBR block, a user stack with our frames
    events = shell.json("show events --json")
    assert all(e["lbr"] == [] and e["lbr_ret"] < 0 for e in events)
    ok, out, err = shell.run("show events 1")
    assert ok, err
    assert "LBR" not in out and "[#" not in out
    assert re.search(r"^   user stack:\n\s+add_loop\+0x[0-9a-f]+ \(\S*target\.c:\d+:\d+\)$",
                     out, re.M), out


def test_no_lbr_flag_gives_no_notice(target_bin: Path) -> None:
    """Two real shells: --no-lbr twice -> no notice; default twice -> exactly one."""
    res = run_batch(f"trace uretprobe {target_bin}:add --no-lbr --duration 100ms",
                    f"trace uprobe {target_bin}:mul3 --no-lbr --duration 100ms")
    assert res.returncode == 0, res.stderr
    assert "LBR off" not in res.stderr and "LBR off" not in res.stdout
    assert res.stderr.count("trace 1: ") == 1 and res.stderr.count("trace 2: ") == 1
    res = run_batch(f"trace uretprobe {target_bin}:add --duration 100ms",
                    f"trace uprobe {target_bin}:mul3 --duration 100ms")
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("LBR off:") == 1, res.stderr
    assert "LBR off" not in res.stdout


# ---- 6. cleanup -------------------------------------------------------------------------------

def test_cleanup_after_trace_stop(shell: InProcShell, targets, target_bin: Path) -> None:
    t = targets()
    watch = ((t, "add"), (t, "mul3"))
    shell.run("trace list")  # opens the session (bpf_stats fd comes with the first trace)
    before = snapshot((t.pid,), watch)
    id_add = start_trace(shell, f"trace uretprobe {target_bin}:add --bg --quiet")
    id_mul = start_trace(shell, f"trace uprobe {target_bin}:mul3 --bg --quiet")
    during = snapshot((t.pid,), watch)
    assert_attached(during, target_bin, 3)  # add: entry + return probe; mul3: entry
    assert during.text[(t.pid, "add")][0] == 0xCC and during.text[(t.pid, "mul3")][0] == 0xCC
    assert before.text[(t.pid, "add")][0] != 0xCC
    assert during.fd_kinds(os.getpid())["[perf_event]"] >= 3
    ours = ours_during(during, target_bin, (os.getpid(),))
    assert len(ours) == 3  # on_entry + on_return for add; on_entry only for mul3

    ok, out, err = shell.run(f"trace stop {id_add}")
    assert ok, err
    assert out == "stopped 1 trace(s)\n"
    middle = snapshot((t.pid,), watch)
    # only mul3's entry probe is left, at the file offset nm gives for mul3 (gcc's PIE text
    # has vaddr == file offset); add's two probes sat at add's offset
    offsets = sorted((p["fd_type"], p["offset"]) for p in during.perf_on(target_bin))
    syms = nm_symbols(target_bin)
    assert offsets == sorted([("uprobe", syms["add"]), ("uretprobe", syms["add"]),
                              ("uprobe", syms["mul3"])])
    assert [(p["fd_type"], p["offset"]) for p in middle.perf_on(target_bin)] == \
        [("uprobe", syms["mul3"])]
    assert middle.text[(t.pid, "add")] == before.text[(t.pid, "add")]
    assert middle.text[(t.pid, "mul3")][0] == 0xCC  # the other trace still runs
    t.run("m")
    shell.wait_delivered(id_mul, N)

    ok, out, err = shell.run("trace stop")
    assert ok, err
    after = snapshot((t.pid,), watch)
    assert_clean(before, after, target_bin, ours)
    # stopped traces keep their events and say so
    ok, out, err = shell.run("trace list")
    assert re.search(rf"^\s*{id_mul}\s+stopped\s+{N}\s", out, re.M), out
    ok, out, err = shell.run(f"trace delete {id_add}")
    assert (ok, out, err) == (True, "", "")
    ok, out, err = shell.run("trace list")
    assert [row.split()[0] for row in out.splitlines()[1:]] == [str(id_mul)]


def test_cleanup_after_normal_exit(targets, target_bin: Path) -> None:
    """A --bg trace still running when the shell ends (atexit), and a foreground one."""
    t = targets()
    watch = ((t, "add"), (t, "mul3"))
    before = snapshot((t.pid,), watch)
    sh = ShellProc(f"trace uretprobe {target_bin}:mul3 --bg --quiet",
                   f"trace uretprobe {target_bin}:add --limit {N + 1} --duration 60s --quiet",
                   exit_check=target_bin)
    try:
        sh.wait_for(r"^trace 2: ")
        during = snapshot((t.pid, sh.proc.pid), watch)
        assert_attached(during, target_bin, 4)
        assert {p["pid"] for p in during.perf_on(target_bin)} == {sh.proc.pid}
        assert during.fd_kinds(sh.proc.pid)["[perf_event]"] >= 4
        ours = ours_during(during, target_bin, (sh.proc.pid,))
        t.run("m")
        t.run("a")
        t.run("e")
        rc = sh.finish()
    finally:
        sh.kill()
    assert rc == 0, sh.err
    assert f"trace 2 stopped: {N + 1} events" in sh.err.splitlines()
    # the shell itself let go of everything before the process ended (the --bg trace at exit)
    assert "LEFTOVERS uprobes=0 fds=[]" in sh.err.splitlines(), sh.err
    after = snapshot((t.pid,), watch)
    assert_clean(before, after, target_bin, ours)


def test_cleanup_after_sigterm(targets, target_bin: Path) -> None:
    t = targets()
    watch = ((t, "add"),)
    before = snapshot((t.pid,), watch)
    sh = ShellProc(f"trace uretprobe {target_bin}:add --duration 120s", exit_check=target_bin)
    try:
        sh.wait_for(r"^trace 1: ")
        t.run("a")
        sh.wait_for(rf"^   add\(a={N - 1}, b={2 * (N - 1)}\) = ")  # events flow
        during = snapshot((t.pid, sh.proc.pid), watch)
        assert_attached(during, target_bin, 2)
        ours = ours_during(during, target_bin, (sh.proc.pid,))
        sh.proc.send_signal(signal.SIGTERM)
        rc = sh.finish(timeout=30)
    finally:
        sh.kill()
    assert rc == 128 + signal.SIGTERM, (rc, sh.err)  # our handler ran (not the default death)
    assert "LEFTOVERS uprobes=0 fds=[]" in sh.err.splitlines(), sh.err
    after = snapshot((t.pid,), watch)
    assert_clean(before, after, target_bin, ours)


def test_event_hook_exception_is_reported_and_trace_goes_on(shell: InProcShell, targets,
                                                            target_bin: Path) -> None:
    t = targets()
    watch = ((t, "add"),)
    shell.run("trace list")
    calls = []

    def bad_hook(event: Any) -> None:
        calls.append(event.id)
        raise ValueError("hook bug")

    shell.session.hooks.append(bad_hook)
    before = snapshot((t.pid,), watch)
    start_trace(shell, f"trace uretprobe {target_bin}:add --bg --quiet")
    ours = ours_during(snapshot((t.pid,), watch), target_bin, (os.getpid(),))
    t.run("a")
    shell.wait_delivered(1, N)
    assert wait_until(lambda: shell.err.getvalue().count("\n") >= N + 1), shell.err.getvalue()
    assert calls == list(range(1, N + 1))
    _, err = shell.new_output()
    assert err.splitlines() == ["warning: event hook bad_hook failed: hook bug"] * N
    ok, _, err = shell.run("trace stop")
    assert ok, err
    assert_clean(before, snapshot((t.pid,), watch), target_bin, ours)


@pytest.mark.parametrize("exc, message", [
    (RuntimeError("symbolizer bug"), r"^internal error: RuntimeError: symbolizer bug"),
    (KeyboardInterrupt(), None),
])
def test_exception_in_event_path_stops_and_detaches(shell: InProcShell, targets,
                                                    target_bin: Path, exc: BaseException,
                                                    message: str | None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception raised while an event is handled (here: in user symbolization) ends a
    foreground trace like any other failure: reported, detached; Ctrl-C there stops it."""
    from bpflbr_shell.symbols.user import UserSymbolizer

    t = targets()
    watch = ((t, "add"),)
    shell.run("trace list")  # session and signal handlers set up in the main thread
    before = snapshot((t.pid,), watch)

    def broken_prepare(*args: Any, **kwargs: Any) -> Any:
        raise exc

    monkeypatch.setattr(UserSymbolizer, "prepare", broken_prepare)
    result: dict[str, Any] = {}
    fg = threading.Thread(
        target=lambda: result.setdefault("ok", shell.run(
            f"trace uretprobe {target_bin}:add --duration 60s --no-lbr")))
    fg.start()
    deadline = time.monotonic() + 30
    while "trace 1: " not in shell.err.getvalue() and time.monotonic() < deadline:
        time.sleep(0.02)
    during = snapshot((t.pid,), watch)
    assert_attached(during, target_bin, 2)
    ours = ours_during(during, target_bin, (os.getpid(),))
    t.run("a")
    fg.join(timeout=20)
    assert not fg.is_alive(), "the trace kept running after the exception"
    ok, out, err = result["ok"]
    if message:  # a failure of the command: one line, the trace ended early
        assert not ok
        errors = [ln for ln in err.splitlines() if not ln.startswith("trace 1: ")]
        assert len(errors) == 1 and re.search(message, errors[0]), err
        assert "trace 1 stopped" not in err
    else:  # Ctrl-C ends a foreground trace normally
        assert ok, err
        assert err.splitlines()[-2:] == ["^C", "trace 1 stopped: 0 events"], (out, err)
    assert_clean(before, snapshot((t.pid,), watch), target_bin, ours)


def test_exception_in_background_trace_detaches(shell: InProcShell, targets,
                                                target_bin: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from bpflbr_shell.symbols.user import UserSymbolizer

    t = targets()
    watch = ((t, "add"),)
    shell.run("trace list")
    before = snapshot((t.pid,), watch)

    def broken_prepare(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("symbolizer bug")

    monkeypatch.setattr(UserSymbolizer, "prepare", broken_prepare)
    start_trace(shell, f"trace uretprobe {target_bin}:add --bg --no-lbr")
    ours = ours_during(snapshot((t.pid,), watch), target_bin, (os.getpid(),))
    t.run("a")
    trace = shell.trace(1)
    deadline = time.monotonic() + 20
    while trace.running and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not trace.running, "the background trace kept running after the exception"
    assert "error: trace 1: symbolizer bug" in shell.err.getvalue().splitlines()
    # everything is released when the trace dies, the session's bpf_stats fd included (no
    # other trace runs)
    assert_clean(before, snapshot((t.pid,), watch), target_bin, ours)
    ok, _, err = shell.run("trace stop")
    assert ok, err
    assert_clean(before, snapshot((t.pid,), watch), target_bin, ours)


def test_failing_reader_close_still_detaches(shell: InProcShell, targets, target_bin: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception while the tracer closes its event-ring reader is reported, and the
    probes come off anyway."""
    from bpflbr_shell.trace.probes.cpuring import CpuRings

    t = targets()
    watch = ((t, "add"),)
    shell.run("trace list")
    before = snapshot((t.pid,), watch)
    start_trace(shell, f"trace uretprobe {target_bin}:add --bg --quiet --no-lbr")
    ours = ours_during(snapshot((t.pid,), watch), target_bin, (os.getpid(),))
    real_close = CpuRings.close

    def failing_close(self: CpuRings) -> None:
        real_close(self)
        raise OSError("injected close failure")

    monkeypatch.setattr(CpuRings, "close", failing_close)
    ok, _, err = shell.run("trace stop 1")
    assert not ok
    assert len(err.splitlines()) == 1 and "injected close failure" in err, err
    shell.run("trace stop")  # closes the session's bpf_stats fd
    assert_clean(before, snapshot((t.pid,), watch), target_bin, ours)


# ---- 7. bad input -----------------------------------------------------------------------------

def bad_inputs(target_bin: Path) -> list[tuple[str, str]]:
    return [
        ("trace uretprobe /nonexistent/dir/prog:add", "no such binary: /nonexistent/dir/prog"),
        ("trace uprobe no_such_binary_xyz:foo",
         "cannot find binary or library 'no_such_binary_xyz'"),
        (f"trace uretprobe {target_bin}:no_such_fn*",
         f"no function in {target_bin} matches 'no_such_fn*'"),
        (f"trace uretprobe {target_bin}", f"bad uprobe target '{target_bin}'"),
        (f"trace uretprobe {target_bin}:", f"bad uprobe target '{target_bin}:'"),
        ("trace uretprobe :add", "bad uprobe target ':add'"),
        (f"trace uretprobe {target_bin}:add --duration xyz", "bad duration 'xyz'"),
        (f"trace uretprobe {target_bin}:add --pid 4194303", "no process 4194303"),
        ("trace stop 99", "no trace 99"),
        ("trace delete 99", "no trace 99"),
        ("show event 12345", "no event #12345 in the store"),
    ]


def test_bad_input_one_clear_line_and_shell_goes_on(shell: InProcShell,
                                                    target_bin: Path) -> None:
    before = snapshot()
    for line, expected in bad_inputs(target_bin):
        ok, out, err = shell.run(line)
        assert not ok, line
        assert out == "", (line, out)
        lines = err.splitlines()
        assert len(lines) == 1, (line, err)
        assert lines[0].startswith("error: ") and expected in lines[0], (line, err)
        ok, out, err = shell.run("echo still here")
        assert (ok, out, err) == (True, "still here\n", ""), line
    # none of the failures left anything attached or loaded
    after = snapshot()
    assert not after.perf_on(target_bin)
    assert after.fd_kinds(os.getpid())["bpf-prog"] == before.fd_kinds(os.getpid())["bpf-prog"]
    assert after.fd_kinds(os.getpid())["[perf_event]"] == \
        before.fd_kinds(os.getpid())["[perf_event]"]


def test_batch_exits_nonzero_on_first_error(target_bin: Path) -> None:
    res = run_batch("echo one", f"trace uretprobe {target_bin}:nope", "echo never")
    assert res.returncode == 1
    assert res.stdout == "one\n"
    assert res.stderr == f"error: no function in {target_bin} matches 'nope' " \
                         "(check the name with: nm -D BINARY)\n"
    res = run_batch("trace stop 99", "echo never")
    assert (res.returncode, res.stdout) == (1, "")
    assert res.stderr == "error: no trace 99 (see 'trace list')\n"
    res = run_batch("trace list", "show events", "echo fine")
    assert (res.returncode, res.stdout, res.stderr) == (0, "no traces\nno events stored\nfine\n",
                                                        "")


# ---- 8. drops ---------------------------------------------------------------------------------

def test_drops_counted_exactly_with_a_tiny_ring_buffer(require_root: None, require_bcc: None,
                                                       targets, target_bin: Path) -> None:
    """One page of event rings (16 slots a CPU), nobody reading while the target makes 20000
    calls: the rings overflow for sure, and every hit is either delivered or counted as a
    drop."""
    from bpflbr_shell.trace.probes.base import CaptureOptions
    from bpflbr_shell.trace.probes.uprobe import UprobeTracer, resolve_targets

    calls = 20000
    t = targets(calls)
    got: list[Any] = []
    tracer = UprobeTracer(resolve_targets(str(target_bin), "add"),
                          CaptureOptions(pid=t.pid, lbr=False, kstack=False, ringbuf_pages=1), True,
                          lambda ev, ks, us: got.append(ev), "uretprobe target:add")
    tracer.start()
    try:
        t.run("a", timeout=120)
        c = tracer.counters()
        assert c["hits"] == calls
        assert c["missed_entry"] == 0 and c["filtered"] == 0
        assert c["drops"] > 0, c
        for _ in range(100):  # drain what the ring holds
            before = len(got)
            tracer.poll(50)
            if len(got) == before and len(got) + c["drops"] == calls:
                break
        c = tracer.counters()
        assert len(got) + c["drops"] == c["hits"] == calls, (len(got), c)
        assert c["submitted"] == len(got)  # the kernel's count of what it handed over
        rings = tracer.reader
        assert rings.slots == 16 and 0 < len(got) <= rings.slots * rings.nrings
        # what each CPU kept are the first calls it saw (its ring filled, then dropped), and
        # the reader hands them over in call order, whichever CPUs the target ran on
        args = [e.args[0] for e in got]
        assert args == sorted(set(args)) and args[0] == 0
        by_cpu: dict[int, list[int]] = {}
        for e in got:
            by_cpu.setdefault(e.cpu, []).append(e.args[0])
        assert all(0 < len(a) <= rings.slots for a in by_cpu.values()), by_cpu
        assert max(len(a) for a in by_cpu.values()) == rings.slots, by_cpu  # one filled up
    finally:
        tracer.close()


def test_show_stats_accounts_for_every_hit_under_overload(shell: InProcShell, targets,
                                                          target_bin: Path) -> None:
    """The CLI's numbers: hits == events + drops once the reader has caught up."""
    calls = 50000
    t = targets(calls)
    start_trace(shell, f"trace uretprobe {target_bin}:add --bg --quiet --no-lbr")
    t.run("a", timeout=120)
    trace = shell.trace(1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        c = trace.counters()
        if c["delivered"] + c["drops"] >= calls:
            break
        time.sleep(0.05)
    time.sleep(0.3)  # anything beyond the sum would be a double count: give it time to show
    (row,) = shell.json("show stats --json")
    assert row["hits"] == calls
    assert row["delivered"] + row["drops"] == calls, row
    assert row["delivered"] == len(shell.session.store) or \
        len(shell.session.store) == shell.session.store.capacity
    assert row["bytes"] > 0 and row["run_cnt"] == 2 * calls  # entry + return programs
    ok, out, err = shell.run("show stats")
    assert ok, err
    head, body = out.splitlines()[:2]
    assert head.split()[:4] == ["ID", "HITS", "EVENTS", "DROPS"]
    assert body.split()[1:4] == [str(calls), str(row["delivered"]), str(row["drops"])]


# ==== H2: user-space values and symbols on third-party code (libc, bash, pyenv python) =========
# A target of our own only makes the calls; what is traced is Debian's libc (with libc6-dbg's
# DWARF) and the pyenv python's libpython. bpftrace is the oracle for values of the same calls.

LIBC_TARGET_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char cmd;
    long sum = 0;
    int n = argc > 1 ? atoi(argv[1]) : 5;

    printf("ready pid=%d\n", getpid());
    fflush(stdout);
    while (read(0, &cmd, 1) == 1) {
        for (int i = 0; i < n; i++) {
            if (cmd == 'p')
                sum += getppid();
            else if (cmd == 'P')
                sum += getpid();
            else if (cmd == 'o')
                sum += open("/nonexistent/bpflbr-h2", O_RDONLY);
            else if (cmd == 'l')
                sum += strlen(argv[0] + (i % 2));
            else if (cmd == 'u')
                sum += puts(i % 2 ? "short" : "\x1b]0;title\x07 and a long "
                                                   "line that does not fit in sixty-two bytes");
            else if (cmd == 'g')
                sum += getenv("BPFLBR_H2") != NULL;
        }
        if (cmd == 'q')
            break;
        fprintf(stderr, "done %c %ld\n", cmd, sum);
    }
    return 0;
}
"""


@pytest.fixture(scope="session")
def libc_target_bin(require_root: None, require_bcc: None,
                    tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = require_tool("gcc", "to build the target that calls libc")
    d = tmp_path_factory.mktemp("libc_target")
    (d / "libc_target.c").write_text(LIBC_TARGET_C)
    binary = d / "libc_target"
    res = subprocess.run([gcc, "-O0", "-fno-builtin", "-o", str(binary), str(d / "libc_target.c")],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(f"gcc failed:\n{res.stderr}")
    return binary


class LibcTarget:
    """``run('p')`` makes n calls of one libc function; its stdout is puts()' (unread), its
    stderr says when the calls are done."""

    def __init__(self, binary: Path, n: int = N) -> None:
        self.proc = subprocess.Popen([str(binary), str(n)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, BPFLBR_H2="h2-value"))
        m = re.fullmatch(r"ready pid=(\d+)\n", read_line(self.proc.stdout, 10))
        assert m
        self.pid = int(m.group(1))

    def run(self, cmd: str) -> None:
        self.proc.stdin.write(cmd)
        self.proc.stdin.flush()
        line = read_line(self.proc.stderr, 30)
        assert line.startswith(f"done {cmd}"), line

    def quit(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("q")
            self.proc.stdin.flush()
            self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass


@pytest.fixture
def libc_targets(libc_target_bin: Path) -> Iterator[Callable[..., LibcTarget]]:
    started: list[LibcTarget] = []

    def start(n: int = N) -> LibcTarget:
        t = LibcTarget(libc_target_bin, n)
        started.append(t)
        return t

    yield start
    for t in started:
        t.close()


def require_libc_dwarf() -> None:
    from bpflbr_shell.symbols.user import BinaryImage

    try:
        BinaryImage(os.path.realpath(resolve_libc())).prog.function("__libc_read")
    except LookupError:
        pytest.skip("needs libc's DWARF (apt-get install libc6-dbg)")


def resolve_libc() -> str:
    from bpflbr_shell.trace.probes.uprobe import resolve_binary

    return resolve_binary("c")


@pytest.mark.parametrize("func, cmd", [("getpid", "P"), ("getppid", "p")])
def test_h2_uretprobe_on_a_libc_assembly_stub(libc_targets, func: str, cmd: str) -> None:
    """getpid's DWARF (an assembly stub's DW_TAG_unspecified_type; getppid's is the same)
    made drgn raise and the trace end at its first event with 'internal error'. Now: N
    events, each returning what the call returns (the target's pid, its parent's: this
    test), and one notice that the values are raw."""
    require_libc_dwarf()
    t = libc_targets()
    sh = ShellProc(f"trace uretprobe c:{func} --pid {t.pid} --limit {N} --duration 60s "
                   "--json --no-lbr")
    try:
        sh.wait_for(r"^trace 1: uretprobe on 1 function\(s\) of ")
        t.run(cmd)
        rc = sh.finish()
    finally:
        sh.kill()
    assert rc == 0, sh.err
    events = json_events(sh.lines)
    expected = t.pid if func == "getpid" else os.getpid()
    assert [e["retval"] for e in events] == [expected] * N, sh.err
    assert all(e["pid"] == t.pid and e["kind"] == "exit" for e in events)
    assert "internal error" not in sh.err
    notices = [ln for ln in sh.err.splitlines() if "DWARF type is unreadable" in ln]
    assert len(notices) == 1, sh.err
    assert f"trace 1 stopped: {N} events" in sh.err


def bpftrace_values(pid: int, program: str, trigger: Callable[[], None], count: int,
                    timeout: float = 60) -> list[str]:
    """Run a bpftrace program (one probe, one action block) on process ``pid`` (-p: its
    uprobes sit in that process only), trigger the calls once it has attached, and return
    the lines it printed. It exits by itself after ``count`` events (a SIGINT'd bpftrace
    sometimes took a minute to leave on this loaded machine); SIGINT only past the timeout."""
    tool = require_tool("bpftrace", "the oracle for values of the same calls")
    program = program.rstrip()
    assert program.endswith("}"), program
    program = program[:-1] + f" @h2n++; if (@h2n == {count}) {{ exit(); }} }}"
    # BEGIN runs once every probe is attached ("Attaching N probes..." comes before that)
    proc = subprocess.Popen([tool, "-p", str(pid), "-e",
                             'BEGIN { printf("h2-ready\\n"); } ' + program],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while (line := read_line(proc.stdout, timeout)) != "h2-ready\n":
            assert line.startswith("Attaching"), line
        trigger()
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)  # fewer events than expected: what came, came
            out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("@h2n")]


def test_h2_failing_open64_returns_minus_one_as_bpftrace_says(libc_targets) -> None:
    """open64's DWARF is under __libc_open64 (int, variadic): a failed open is -1, not
    4294967295. bpftrace's retval of the same calls (one after the other: two tracers on one
    function at once is another point) is the oracle."""
    require_libc_dwarf()
    t = libc_targets()
    sh = ShellProc(f"trace uretprobe c:open64 --pid {t.pid} --limit {N} --duration 60s --json "
                   "--no-lbr")
    try:
        sh.wait_for(r"^trace 1: ")
        t.run("o")
        assert sh.finish() == 0, sh.err
    finally:
        sh.kill()
    ours = json_events(sh.lines)
    theirs = bpftrace_values(t.pid, f'uretprobe:{resolve_libc()}:open64 /pid == {t.pid}/ '
                             '{ printf("%d\\n", retval); }', lambda: t.run("o"), N)
    assert theirs == ["-1"] * N
    assert [str(e["retval"]) for e in ours] == theirs
    assert all(e["args"]["oflag"] == 0 for e in ours)
    assert {e["func"] for e in ours} == {"open64"}  # the name traced, not drgn's alias
    assert all(e["strings"]["file"]["text"] == "/nonexistent/bpflbr-h2" for e in ours)


def test_h2_pid_trace_ends_when_the_process_exits(libc_targets) -> None:
    """bpftrace -p ends with its process; ours ran on, printing nothing, until Ctrl-C."""
    t = libc_targets()
    sh = ShellProc(f"trace uprobe c:getppid --pid {t.pid} --no-lbr --quiet")
    try:
        sh.wait_for(r"^trace 1: ")
        t.run("p")
        t.quit()
        sh.wait_for(rf"^trace 1: process {t.pid} exited$", timeout=10)
        assert sh.finish(timeout=20) == 0, sh.err
    finally:
        sh.kill()
    assert f"trace 1 stopped: {N} events" in sh.err


def test_h2_background_pid_trace_ends_when_the_process_exits(shell: InProcShell,
                                                             libc_targets) -> None:
    t = libc_targets()
    trace_id = start_trace(shell, f"trace uprobe c:getppid --pid {t.pid} --no-lbr --quiet --bg")
    t.run("p")
    t.quit()
    trace = shell.trace(trace_id)
    assert wait_until(lambda: not trace.running, timeout=10), "the trace outlived its process"
    _, err = shell.new_output()
    assert f"trace {trace_id}: process {t.pid} exited; stopped: {N} events" in err
    assert trace.delivered == N


def test_h2_ifunc_traces_the_implementation_the_process_runs(libc_targets) -> None:
    """A uprobe on strlen (an IFUNC) sat on its resolver, which ran once at load: 0 events.
    Now the implementation the loader chose for this process is traced, and said."""
    require_libc_dwarf()
    t = libc_targets()
    sh = ShellProc(f"trace uprobe c:strlen --pid {t.pid} --limit {N} --duration 60s --json "
                   "--no-lbr")
    try:
        m = sh.wait_for(r"strlen is an IFUNC: tracing (\S+), the implementation the dynamic "
                        rf"loader chose in process {t.pid}")
        sh.wait_for(r"^trace 1: uprobe on 1 function")  # attached (the notice comes first)
        t.run("l")
        assert sh.finish() == 0, sh.err
    finally:
        sh.kill()
    impl = m.group(1)
    events = json_events(sh.lines)
    assert len(events) == N and {e["func"] for e in events} == {impl}, sh.err
    # the oracle: the calls the same implementation sees under bpftrace
    theirs = bpftrace_values(t.pid, f'uprobe:{resolve_libc()}:{impl} /pid == {t.pid}/ '
                             '{ printf("hit\\n"); }', lambda: t.run("l"), N)
    assert theirs == ["hit"] * N


def test_h2_string_args_and_retvals_from_libc_dwarf(shell: InProcShell, libc_targets) -> None:
    """puts(const char *) and getenv: the char * values are copied by the probe, shown
    escaped (an OSC sequence from the traced world never reaches the terminal raw), cut
    and marked at 62 bytes; bpftrace's str() of the same calls is the oracle."""
    require_libc_dwarf()
    t = libc_targets(2)
    start_trace(shell, f"trace uprobe c:puts --pid {t.pid} --no-lbr --quiet --bg")
    start_trace(shell, f"trace uretprobe c:getenv --pid {t.pid} --no-lbr --quiet --bg")
    t.run("u")
    t.run("g")
    shell.wait_delivered(1, 2)
    shell.wait_delivered(2, 2)
    ok, out, err = shell.run("show events 4")
    assert ok, err
    # two background traces: each keeps its order, the store interleaves them as read
    calls = [c for c in re.findall(r"^   (\w+\(.*)$", out, re.M) if c.startswith("puts(")]
    raw = "\x1b]0;title\x07 and a long line that does not fit in sixty-two bytes"
    shown = raw[:62].replace("\x1b", "\\x1b").replace("\x07", "\\x07")
    assert calls[:2] == [f'puts(str="{shown}"...)', 'puts(str="short")'], out
    assert "\x1b" not in out
    events = shell.json("show events 4 --json")
    puts = [e for e in events if e["kind"] == "entry"]
    getenv = [e for e in events if e["kind"] == "exit"]
    texts = [e["strings"]["str"] for e in puts]
    assert texts[1] == {"text": "short", "truncated": False, "ret": 6}
    assert texts[0]["truncated"] and len(texts[0]["text"]) == 62
    assert texts[0]["text"] == raw[:62]
    assert [e["strings"] for e in getenv] == [
        {"name": {"text": "BPFLBR_H2", "truncated": False, "ret": 10},
         "retval": {"text": "h2-value", "truncated": False, "ret": 9}}] * 2
    ok, _, err = shell.run("trace stop")  # one tracer on a function at a time here
    assert ok, err
    theirs = bpftrace_values(t.pid, f'uretprobe:{resolve_libc()}:getenv /pid == {t.pid}/ '
                             '{ printf("%s\\n", str(retval)); }', lambda: t.run("g"), 2)
    assert theirs == ["h2-value"] * 2


PYENV_PYTHON = Path.home() / ".pyenv/versions/3.11.7/bin/python3.11"


def test_h2_pid_traces_the_library_copy_the_process_maps(shell: InProcShell) -> None:
    """The pyenv python links its own libpython3.11.so.1.0; the short name resolved Debian's
    copy in /usr/lib and the trace saw nothing, silently."""
    if not PYENV_PYTHON.exists():
        pytest.skip(f"needs the pyenv python at {PYENV_PYTHON} (its own libpython3.11)")
    proc = subprocess.Popen([str(PYENV_PYTHON), "-c",
                             "import sys\nfor line in sys.stdin:\n"
                             "    print(sum(int(c) for c in line.split()), flush=True)\n"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: "libpython3.11.so.1.0" in
                          Path(f"/proc/{proc.pid}/maps").read_text(), timeout=10)
        trace_id = start_trace(shell, "trace uprobe libpython3.11.so.1.0:PyLong_FromLong "
                                      f"--pid {proc.pid} --no-lbr --quiet --bg")
        spec = shell.trace(trace_id).tracer.targets[0].binary
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert spec in maps and spec.startswith(str(PYENV_PYTHON.parent.parent)), spec
        proc.stdin.write("1 2 3\n")
        proc.stdin.flush()
        assert read_line(proc.stdout, 10).strip() == "6"
        assert wait_until(lambda: shell.trace(trace_id).delivered > 0, timeout=10), \
            shell.trace(trace_id).counters()
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


def test_h2_string_probe_still_snapshots_first(require_root: None, require_bcc: None) -> None:
    """The string copies come after the branch snapshot: compiled for real with STR_MASK."""
    from test_probes import (
        BPF_FUNC_get_branch_snapshot,
        BPF_FUNC_get_smp_processor_id,
        BPF_FUNC_map_lookup_elem,
        calls_that_can_precede,
        helper_calls,
    )

    from bpflbr_shell.trace.probes.bccprog import compile_program

    b = compile_program("uprobe.c", {"CAPTURE_LBR": 1, "LBR_ENTRIES": 32, "EMIT_ENTRY": 1,
                                     "PAIR_EXIT": 1, "STR_MASK": 1 | 1 << 6, "STR_COUNT": 2})
    try:
        for fn in ("on_entry", "on_return"):
            insns = b.dump_func(fn.encode())
            calls = helper_calls(insns)
            assert 114 in calls, fn  # bpf_probe_read_user_str
            assert sorted(calls_that_can_precede(insns, BPF_FUNC_get_branch_snapshot)) == \
                sorted([BPF_FUNC_get_smp_processor_id, BPF_FUNC_map_lookup_elem]), fn
    finally:
        b.cleanup()


def test_h2_bash_readline_string_with_str_ret(shell: InProcShell) -> None:
    """bashreadline's use case: Debian's bash has no DWARF, so its readline's char * return is
    a string only when the user says so (--str ret). bpftrace's str(retval) of the same lines
    is the oracle; without a prototype the args read as raw registers."""
    import pty

    bash = Path("/usr/bin/bash")
    if not bash.exists():
        pytest.skip("needs /usr/bin/bash")
    master, slave = pty.openpty()
    proc = subprocess.Popen([str(bash), "--norc", "--noprofile", "-i"], stdin=slave,
                            stdout=slave, stderr=slave, start_new_session=True,
                            env={"PS1": "h2$ ", "TERM": "dumb", "PATH": "/usr/bin:/bin"})
    os.close(slave)

    def until_prompt() -> None:
        out = b""
        deadline = time.monotonic() + 10
        while not out.endswith(b"h2$ "):
            assert time.monotonic() < deadline, out
            if select_readable(master):
                out += os.read(master, 4096)

    def typed(*lines: str) -> None:
        for line in lines:
            os.write(master, line.encode() + b"\n")
            until_prompt()

    try:
        until_prompt()
        trace_id = start_trace(shell, f"trace uretprobe {bash}:readline --str ret "
                                      f"--pid {proc.pid} --no-lbr --quiet --bg")
        # the readline bash sits in was entered before the probe: its return is not seen
        typed("", "echo one", "true \x16\x1b[2J two")  # ^V: ESC taken literally
        shell.wait_delivered(trace_id, 2)
        ok, out, err = shell.run("show events 2")
        assert ok, err
        calls = re.findall(r"^   (readline\(.*)  took", out, re.M)
        assert [c.split(" = ")[1] for c in calls] == ['"echo one"', '"true \\x1b[2J two"'], out
        assert all(c.startswith("readline(raw regs: 0x") for c in calls), calls
        ok, _, err = shell.run("trace stop")
        assert ok, err
        theirs = bpftrace_values(proc.pid, f'uretprobe:{bash}:readline '
                                 '{ printf("%s\\n", str(retval)); }',
                                 lambda: typed("", "echo one"), 1)
        assert theirs == ["echo one"]
    finally:
        os.write(master, b"exit\n")
        proc.wait(timeout=10)
        os.close(master)


def select_readable(fd: int, timeout: float = 0.1) -> bool:
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    try:
        return bool(sel.select(timeout))
    finally:
        sel.close()


def test_h2_pid_in_another_mount_namespace(shell: InProcShell, target_bin: Path,
                                           tmp_path: Path) -> None:
    """A process in its own mount namespace runs a binary at a path that, in ours, holds
    nothing: --pid finds it through /proc/P/maps and attaches through /proc/P/root."""
    unshare = require_tool("unshare", "util-linux: a private mount namespace")
    hidden = tmp_path / "ns"
    hidden.mkdir()
    script = (f'mount -t tmpfs none "{hidden}" && cp "{target_bin}" "{hidden}/nsprog" && '
              f'exec "{hidden}/nsprog" {N}')
    proc = subprocess.Popen([unshare, "--mount", "--propagation", "private", "sh", "-c", script],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        m = re.match(r"ready pid=(\d+) add=0x([0-9a-f]+)", read_line(proc.stdout, 20))
        assert m, "the namespaced target did not start"
        pid = int(m.group(1))
        assert not (hidden / "nsprog").exists()  # not in our namespace
        trace_id = start_trace(shell, f"trace uretprobe nsprog:add --pid {pid} --no-lbr "
                                      "--quiet --bg")
        assert shell.trace(trace_id).tracer.targets[0].binary == \
            f"/proc/{pid}/root{hidden}/nsprog"
        proc.stdin.write("a")
        proc.stdin.flush()
        assert read_line(proc.stdout, 20).startswith("done a")
        shell.wait_delivered(trace_id, N)
        events = shell.json(f"show events {N} --json")
        assert [(e["func"], e["retval"]) for e in events] == [("add", 3 * i) for i in range(N)]
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
