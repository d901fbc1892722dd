"""Drops, stop and the one reader under load (issue 8, root, BCC): the books of a trace
balance at every reading, a stop under a flood returns at once with the probes off, and one
thread reads a trace's rings however slow its handlers are.

The load is the C target of test_trace_live.py making many add() calls while the shell's
reader is made slower than the producer (an event hook that sleeps: hooks run in the reader
thread), so the rings really fill. Oracles: the target's own call count, ``bpftool perf show``
(are our uprobes still attached), the event store, and the thread each hook call ran in.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_trace_live import (  # noqa: F401 - fixtures are found by name
    REPO,
    InProcShell,
    shell,
    shell_env,
    snapshot,
    start_trace,
    target_bin,
    targets,
)

pytestmark = pytest.mark.live


def books_balance(row: dict[str, Any]) -> bool:
    return row["hits"] == row["delivered"] + row["drops"] + row["filtered"] + row["pending"]


def flood(t: Any, cmd: str = "a") -> None:
    """Start the target's loop of add() calls without waiting for it to end."""
    assert t.proc.stdin is not None
    t.proc.stdin.write(cmd)
    t.proc.stdin.flush()


def slow_hook(seconds: float, seen: list[int] | None = None) -> Any:
    def hook(event: Any) -> None:
        if seen is not None:
            seen.append(threading.get_ident())
        time.sleep(seconds)

    return hook


def test_books_balance_running_and_stopped(shell, targets, target_bin) -> None:  # noqa: F811
    """Tiny rings (4 KiB: 16 slots a CPU) and a reader slower than the target: every
    reading of 'show stats' while it runs balances (hits == events + drops + filtered +
    pending, pending >= 0), and at stop pending is 0, hits is the target's call count, the
    events are those stored, and the drops are said with their fix, at stop and in
    'show stats'."""
    calls = 200000
    t = targets(calls)
    shell.run("trace list")  # the session
    assert shell.run("set event-ring 4K")[0]
    assert shell.run("set event-store 100000")[0]
    shell.session.hooks.append(slow_hook(0.0005))
    trace_id = start_trace(shell, f"trace uretprobe {target_bin}:add --bg --quiet --no-lbr")
    assert shell.trace(trace_id).tracer.reader.slots == 16
    flood(t)
    readings = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        (row,) = shell.json("show stats --json")
        readings.append(row)
        if row["hits"] >= calls:
            break
        time.sleep(0.01)
    assert len(readings) > 2 and readings[-1]["hits"] == calls, (len(readings), readings[-1])
    for row in readings:
        assert books_balance(row) and row["pending"] >= 0, row
        assert row["running"]
    assert any(r["drops"] > 0 for r in readings)
    assert t.proc.stdout is not None and t.proc.stdout.readline().startswith("done a ")
    ok, out, err = shell.run("trace stop")
    assert ok, err
    (row,) = shell.json("show stats --json")
    assert books_balance(row) and row["pending"] == 0, row
    assert row["hits"] == calls and row["filtered"] == 0
    assert row["drops"] == row["drops_ring_full"] + row["drops_unread"] > 0, row
    assert row["submitted"] == calls - row["drops_ring_full"]  # the rings' own count
    stored = [e for e in shell.session.store if e.trace_id == trace_id]
    assert row["delivered"] == len(stored) == len({e.id for e in stored})
    assert [e.args[0] for e in stored] == sorted(e.args[0] for e in stored)  # call order
    dropped = f"trace {trace_id}: {row['drops_ring_full']} events dropped (ring full"
    assert any(ln.startswith(f"warning: {dropped}") and "--limit" in ln and "event-ring" in ln
               for ln in err.splitlines()), err
    ok, out, _ = shell.run("show stats")
    assert ok and any(ln.startswith(dropped) for ln in out.splitlines()), out
    head, body = out.splitlines()[:2]
    assert head.split()[:6] == ["ID", "HITS", "EVENTS", "DROPS", "FILTERED", "PENDING"]
    assert body.split()[1:6] == [str(row[k]) for k in ("hits", "delivered", "drops",
                                                       "filtered", "pending")]


def test_events_after_the_limit_are_counted(shell, targets, target_bin) -> None:  # noqa: F811
    """--limit 5 while the target makes thousands of calls: 5 events, and what the reader
    saw after them is in the books as filtered (over the limit), not lost."""
    calls = 5000
    t = targets(calls)
    result: dict[str, Any] = {}
    fg = threading.Thread(target=lambda: result.setdefault("r", shell.run(
        f"trace uretprobe {target_bin}:add --limit 5 --duration 60s --quiet --no-lbr")))
    fg.start()
    deadline = time.monotonic() + 30
    while not shell.ctx.state.get("trace") or not shell.session.traces:
        assert time.monotonic() < deadline and fg.is_alive()
        time.sleep(0.01)  # registered once its probes are attached
    t.run("a", timeout=60)
    fg.join(timeout=30)
    assert not fg.is_alive()
    ok, _, err = result["r"]
    assert ok, err
    (row,) = shell.json("show stats --json")
    assert row["delivered"] == 5 and row["pending"] == 0 and books_balance(row), row
    assert row["over_limit"] > 0 and row["filtered"] == row["over_limit"], row
    # the probes came off once the limit was reached, while the target went on calling
    assert 5 < row["hits"] == 5 + row["over_limit"] + row["drops"] <= calls, row


def test_stop_under_flood_is_quick_and_detaches(shell, targets, target_bin) -> None:  # noqa: F811
    """The default 4 MiB rings full and a reader at 1 ms an event: 'trace stop' returns
    within the bound (the goal is 0.2 s), the uprobes are gone when it returns (bpftool),
    and the books balance, the rest counted as dropped (unread)."""
    t = targets(10**8)
    shell.run("trace list")  # the session
    shell.session.hooks.append(slow_hook(0.001))
    trace_id = start_trace(shell, f"trace uretprobe {target_bin}:add --bg --quiet --no-lbr")
    flood(t)
    trace = shell.trace(trace_id)
    deadline = time.monotonic() + 30
    while trace.tracer.reader.pending() < 1000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert trace.tracer.reader.pending() >= 1000
    t0 = time.monotonic()
    ok, _, err = shell.run(f"trace stop {trace_id}")
    took = time.monotonic() - t0
    attached = snapshot().perf_on(target_bin)
    assert ok, err
    assert took < 0.6, f"trace stop took {took:.2f} s under a flood"
    assert attached == [], attached
    assert trace.finished.is_set()
    (row,) = shell.json("show stats --json")
    assert books_balance(row) and row["pending"] == 0, row
    assert row["drops_unread"] > 0, row
    assert "events dropped (still in the rings when the trace stopped" in err, err
    t.proc.kill()


def test_one_reader_when_a_handler_outlasts_stop(shell, targets, target_bin) -> None:  # noqa: F811
    """A hook that blocks 6 s on the first event (longer than any wait of stop): stop
    returns with the probes off and says the reader is finishing; that one thread (and no
    other) goes on to hand over the events, none twice, and closes with balanced books."""
    t = targets(2000)
    threads: list[int] = []
    first = threading.Event()
    shell.run("trace list")  # the session

    def hook(event: Any) -> None:
        threads.append(threading.get_ident())
        if not first.is_set():
            first.set()
            time.sleep(6)

    shell.session.hooks.append(hook)
    trace_id = start_trace(shell, f"trace uretprobe {target_bin}:add --bg --quiet --no-lbr")
    t.run("a", timeout=60)
    assert first.wait(10)
    t0 = time.monotonic()
    ok, _, err = shell.run(f"trace stop {trace_id}")
    took = time.monotonic() - t0
    assert ok, err
    assert took < 2, took
    assert snapshot().perf_on(target_bin) == []
    assert "its reader is finishing a slow event handler" in err, err
    trace = shell.trace(trace_id)
    assert trace.finished.wait(20), "the reader never finished"
    assert len(set(threads)) == 1 and threads[0] != threading.get_ident(), set(threads)
    (row,) = shell.json("show stats --json")
    assert books_balance(row) and row["pending"] == 0 and row["hits"] == 2000, row
    stored = [e for e in shell.session.store if e.trace_id == trace_id]
    assert len(stored) == row["delivered"] == len(threads)
    assert len({(e.ts_ns, e.tid) for e in stored}) == len(stored)  # none delivered twice


def test_ctrl_c_on_a_flooded_foreground_trace(target_bin: Path, targets) -> None:  # noqa: F811
    """The real CLI printing events to a pipe while the target floods: SIGINT ends the trace
    within the bound (goal 0.2 s) and the stop says what was dropped."""
    t = targets(10**8)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bpflbr_shell", "--batch", "-c",
         f"trace uretprobe {target_bin}:add --no-lbr --duration 120s", "-c", "show stats --json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=shell_env())
    assert proc.stdout is not None and proc.stderr is not None
    err_lines: list[tuple[float, str]] = []
    out = bytearray()

    def read_err() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            err_lines.append((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))

    def read_out() -> None:
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(65536):
            out.extend(chunk)

    readers = [threading.Thread(target=f, daemon=True) for f in (read_err, read_out)]
    for r in readers:
        r.start()
    try:
        deadline = time.monotonic() + 60
        while not any(ln.startswith("trace 1: ") for _, ln in err_lines):
            assert time.monotonic() < deadline and proc.poll() is None, err_lines
            time.sleep(0.02)
        flood(t)
        time.sleep(2)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, err_lines
    finally:
        if proc.poll() is None:
            proc.kill()
        t.proc.kill()
    for r in readers:
        r.join(timeout=10)
    stopped = [ts for ts, ln in err_lines if re.fullmatch(r"trace 1 stopped: \d+ events", ln)]
    assert stopped, err_lines
    assert stopped[0] - t0 < 0.6, f"Ctrl-C took {stopped[0] - t0:.2f} s"
    text = out.decode(errors="replace")
    row = json.loads(text[text.rindex("\n[\n") + 1:])[0]
    assert books_balance(row) and row["pending"] == 0, row
    assert row["drops"] > 0 and any("events dropped (ring full" in ln for _, ln in err_lines)
