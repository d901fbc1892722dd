"""Live (root, BCC): ``py`` and extensions against real uretprobes on libc's ``close`` in a C
target built here with gcc. The target is the oracle: on each command byte it makes FAILS
calls that fail (``close(-1)``: -1, EBADF) and OKS that succeed (``close(dup(2))``: 0), then
answers ``done``. ``run('show progs')`` is checked against ``bpftool prog show``."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from bpflbr_shell.shell import Context, load_builtin_commands
from bpflbr_shell.shell.runner import execute_line, run_line

pytestmark = pytest.mark.live

FAILS, OKS = 5, 3
TARGET_C = r"""
#include <stdio.h>
#include <unistd.h>

int main(void)
{
    char cmd;
    printf("ready\n");
    fflush(stdout);
    while (read(0, &cmd, 1) == 1) {
        if (cmd != 'c')
            continue;
        for (int i = 0; i < FAILS; i++)
            close(-1);
        for (int i = 0; i < OKS; i++)
            close(dup(2));
        printf("done\n");
        fflush(stdout);
    }
    return 0;
}
""".replace("FAILS", str(FAILS)).replace("OKS", str(OKS))


@pytest.fixture()
def target(tmp_path: Path, require_root: None, require_bcc: None):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("needs gcc to build the target")
    src, exe = tmp_path / "closer.c", tmp_path / "closer"
    src.write_text(TARGET_C)
    subprocess.run([gcc, "-O0", "-o", str(exe), str(src)], check=True)
    proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    yield proc
    proc.kill()
    proc.wait()


def _ctx() -> Context:
    from bpflbr_shell.cli import open_kernel_view

    return Context(load_builtin_commands(), out=io.StringIO(), err=io.StringIO(),
                   kernel_factory=open_kernel_view)


def _py(ctx: Context, expr: str) -> str:
    out = ctx.stdout
    assert isinstance(out, io.StringIO)
    out.seek(0)
    out.truncate()
    assert run_line(ctx, f"py {expr}"), ctx.stderr.getvalue()  # type: ignore[attr-defined]
    return out.getvalue().strip()


def _drive(ctx: Context, target, expected: int) -> None:
    """Trace the target's close() in the background, make it call, wait for the events."""
    execute_line(ctx, f"trace uretprobe c:close --pid {target.pid} --bg --quiet --no-lbr "
                      f"--limit {expected}")
    target.stdin.write("c")
    target.stdin.flush()
    assert target.stdout.readline() == "done\n"
    deadline = time.monotonic() + 20
    while int(_py(ctx, "len(events)")) < expected and time.monotonic() < deadline:
        time.sleep(0.05)


def test_py_counts_failed_calls_of_a_live_trace(target) -> None:
    ctx = _ctx()
    try:
        _drive(ctx, target, FAILS + OKS)
        assert _py(ctx, "len(events)") == str(FAILS + OKS)
        assert _py(ctx, "len([e for e in events if e.retval < 0])") == str(FAILS)
        assert _py(ctx, "sorted({e.retval for e in events})") == "[-1, 0]"
        assert _py(ctx, f"{{e.pid for e in events}} == {{{target.pid}}}") == "True"
        # the namespace lasts: a name bound by one line is there for the next
        _py(ctx, "failed = [e for e in events if e.retval < 0]")
        assert _py(ctx, "len(failed), failed[0].func") == f"({FAILS}, 'close')"
    finally:
        run_line(ctx, "trace stop")
        ctx.close()


def test_on_event_hook_counts_and_drops_events_of_a_live_trace(target, tmp_path: Path) -> None:
    ext = tmp_path / "counting.py"
    ext.write_text(
        "from collections import Counter\n"
        "from bpflbr_shell import on_event\n"
        "seen = Counter()\n"
        "@on_event\n"
        "def count(event):\n"
        "    seen[event.retval] += 1\n"
        "@on_event\n"
        "def only_failures(event):\n"
        "    return event.retval < 0\n")
    ctx = _ctx()
    try:
        execute_line(ctx, f"source {ext}")
        execute_line(ctx, f"trace uretprobe c:close --pid {target.pid} --bg --quiet "
                          "--no-lbr")
        target.stdin.write("c")
        target.stdin.flush()
        assert target.stdout.readline() == "done\n"
        _py(ctx, "seen = __import__('sys').modules['bpflbr_shell_ext_counting'].seen")
        deadline = time.monotonic() + 20
        while int(_py(ctx, "sum(seen.values())")) < FAILS + OKS \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        # the hook saw every decoded event, typed; the store kept only what it let through
        assert _py(ctx, "dict(seen)") == str({-1: FAILS, 0: OKS})
        assert _py(ctx, "len(events)") == str(FAILS)
        assert _py(ctx, "all(e.retval == -1 for e in events)") == "True"
        # the books still balance: dropped by a hook counts as filtered in user space
        stats = json.loads(_json(ctx, "show stats --json"))
        row = stats[0] if isinstance(stats, list) else stats
        assert row["filtered_user"] >= OKS, row
    finally:
        run_line(ctx, "trace stop")
        ctx.close()


def _json(ctx: Context, line: str) -> str:
    out = ctx.stdout
    assert isinstance(out, io.StringIO)
    out.seek(0)
    out.truncate()
    execute_line(ctx, line)
    return out.getvalue()


def _bpftool_ids() -> set[int]:
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    if not Path(bpftool).exists():
        pytest.skip("needs bpftool (the oracle for program ids)")
    out = subprocess.run([bpftool, "prog", "show", "--json"], check=True,
                         capture_output=True, text=True).stdout
    return {p["id"] for p in json.loads(out)}


def test_run_show_progs_returns_records_matching_bpftool(example_workload) -> None:
    ctx = _ctx()
    try:
        before = _bpftool_ids()
        _py(ctx, "import json")
        ours = set(json.loads(_py(ctx, "json.dumps(sorted(p.id for p in run('show progs')))")
                              .strip("'")))
        after = _bpftool_ids()
        # programs may come and go between the three looks: ours lies between them
        assert before & after <= ours <= before | after
        assert set(example_workload) <= ours
        assert _py(ctx, "type(run('show progs')[0]).__name__") == "'ProgInfo'"
        wanted = sorted(example_workload)
        names = _py(ctx, f"sorted(p.name for p in run('show progs') if p.id in {wanted})")
        assert names != "[]"
    finally:
        ctx.close()
