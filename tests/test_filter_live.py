"""Live (root, BCC): filters on real uprobe traces of libc, with the targets' own pids and
return values as the oracle, and the books (hits = events + drops + rejected + pending)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import pytest

from bpflbr_shell.errors import UsageError
from bpflbr_shell.shell import Context, load_builtin_commands
from bpflbr_shell.shell.runner import execute_line
from bpflbr_shell.trace.session import Session
from bpflbr_shell.trace.spec import TraceSpec

pytestmark = pytest.mark.live
LOOP = "import os, time\nwhile True:\n    os.getpid(); time.sleep(0.002)\n"
OPENS = ("import os, sys, time\nn = int(sys.argv[1])\nsys.stdin.readline()\n"
         "for i in range(n):\n"
         "    try:\n        os.close(os.open('/dev/null', os.O_RDONLY))\n"
         "    except OSError:\n        pass\n"
         "    try:\n        os.open('/nonexistent/bpflbr', os.O_RDONLY)\n"
         "    except OSError:\n        pass\n")


def balanced(c: dict[str, int]) -> bool:
    return c["hits"] == c["delivered"] + c["drops"] + c["filtered"] + c["pending"]


@pytest.fixture()
def two() -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    a = subprocess.Popen([sys.executable, "-c", LOOP])
    b = subprocess.Popen([sys.executable, "-c", LOOP])
    time.sleep(0.3)
    yield a, b
    for p in (a, b):
        p.kill()
        p.wait()


def test_pid_filter_keeps_one_of_two_processes(require_root: None, require_bcc: None,
                                               two) -> None:
    a, b = two
    session = Session()
    trace = session.trace(TraceSpec("uretprobe", ("c:getpid",), limit=20, lbr=False,
                                    filter=f"pid == {a.pid}"))
    assert trace.wait(30)
    events = trace.events()
    assert len(events) == 20 and {e.pid for e in events} == {a.pid}
    assert all(e.retval == a.pid for e in events)
    c = trace.counters()
    # b's (and every other process's) calls were rejected in the kernel: the pid term is
    # compiled into the probe; only what came after --limit is rejected in user space
    assert c["filtered_kernel"] > 0 and c["filtered_user"] == c["over_limit"], c
    assert balanced(c), c


def test_errors_and_retval_on_open(require_root: None, require_bcc: None) -> None:
    """Half of the target's opens fail (-1, ENOENT): `errors` keeps exactly those; `retval >= 0`
    exactly the others."""
    n = 30
    for expr, want_failed in (("errors", True), ("retval >= 0", False)):
        target = subprocess.Popen([sys.executable, "-c", OPENS, str(n)],
                                  stdin=subprocess.PIPE)
        try:
            session = Session()
            trace = session.trace(TraceSpec("uretprobe", ("c:open64",), pid=target.pid,
                                            lbr=False, filter=expr))
            time.sleep(0.1)
            target.stdin.write(b"\n")  # type: ignore[union-attr]
            target.stdin.flush()  # type: ignore[union-attr]
            target.wait(30)
            deadline = time.monotonic() + 10
            while not trace.finished.is_set() and time.monotonic() < deadline:
                time.sleep(0.05)
            trace.stop()
        finally:
            target.kill()
            target.wait()
        events = trace.events()
        rets = [e.retval for e in events]
        if want_failed:
            assert len(events) >= n and all(r == 0xFFFFFFFF for r in rets), rets[:5]
        else:
            assert len(events) >= n and all(0 <= r < 1 << 16 for r in rets), rets[:5]
        assert balanced(trace.counters())


def test_comm_globs(require_root: None, require_bcc: None, two) -> None:
    a, _ = two
    comm = open(f"/proc/{a.pid}/comm").read().strip()
    session = Session()
    trace = session.trace(TraceSpec("uretprobe", ("c:getpid",), pid=a.pid, limit=3, lbr=False,
                                    filter=f"comm == '{comm[:3]}*'"))
    assert trace.wait(30) and {e.comm for e in trace.events()} == {comm}
    none = session.trace(TraceSpec("uretprobe", ("c:getpid",), pid=a.pid, lbr=False,
                                   filter="comm == 'zz*'"))
    time.sleep(0.5)
    none.stop()
    c = none.counters()  # a prefix glob on comm is compared in the kernel
    assert none.events() == [] and c["filtered_kernel"] > 0 and c["filtered_user"] == 0, c


def test_filter_added_and_removed_while_a_background_trace_runs(
        require_root: None, require_bcc: None, two) -> None:
    a, b = two
    ctx = Context(load_builtin_commands(), out=io.StringIO(), err=io.StringIO())
    try:
        execute_line(ctx, f"trace uretprobe c:getpid --bg --quiet --no-lbr --pid {a.pid}")
        session = ctx.state["trace"].session
        trace = session.get(1)
        deadline = time.monotonic() + 20
        while trace.delivered < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        execute_line(ctx, "filter pid == 1")  # nobody: the running trace stops delivering
        assert "applied to running trace(s) 1" in ctx.err.getvalue()  # type: ignore[union-attr]
        time.sleep(0.2)
        frozen = trace.delivered
        time.sleep(0.5)
        assert trace.delivered == frozen and trace.rejected_user > 0
        ctx.out = io.StringIO()
        execute_line(ctx, "filter")
        assert "((pid == 1))" not in ctx.out.getvalue() and "pid == 1" in ctx.out.getvalue()
        execute_line(ctx, "filter clear")
        time.sleep(0.5)
        assert trace.delivered > frozen  # delivering again
        with pytest.raises(UsageError, match="unknown name 'pidd'"):
            execute_line(ctx, "filter pidd == 3")  # the running trace refuses it: not added
        assert session.filters == {}
        assert balanced(trace.counters())
    finally:
        rt = ctx.state.get("trace")
        if rt is not None:
            rt.session.stop_all()
        ctx.close()
    assert os.path.exists(f"/proc/{b.pid}")
