"""Our uprobes and other tracers' on the same function, both orders (live: root, bpftrace).

The kernel keeps one uprobe per (file, offset) and refuses a second registration whose
ref_ctr_offset differs ("ref_ctr_offset mismatch" in dmesg). Our uprobes used to carry a
garbage ref_ctr_offset (Debian's BCC Python binding passes 6 of libbcc's 7 arguments), so
bpftrace could not attach while we traced, and we could not attach while bpftrace did. The
target calls libc's getppid exactly N times per command: both tracers must count N. (getppid,
not getpid: on a shared machine another old tracer holding getpid would fail the test for
the very reason it tests.)
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

N = 25

TARGET_C = r"""
#include <stdio.h>
#include <unistd.h>

int main(void)
{
    char cmd;
    long sum = 0;

    printf("ready pid=%d\n", getpid());
    fflush(stdout);
    while (read(0, &cmd, 1) == 1 && cmd == 'p') {
        for (int i = 0; i < NCALLS; i++)
            sum += getppid();
        printf("done %ld\n", sum);
        fflush(stdout);
    }
    return 0;
}
"""


def read_line(stream, timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "timed out waiting for a line"
    return stream.readline()


@pytest.fixture(scope="module")
def target_bin(require_root: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("needs gcc to build the target that calls getppid")
    d = tmp_path_factory.mktemp("coexist")
    (d / "t.c").write_text(TARGET_C)
    subprocess.run([gcc, "-O0", "-fno-builtin", f"-DNCALLS={N}", "-o", str(d / "t"),
                    str(d / "t.c")], check=True)
    return d / "t"


class Target:
    def __init__(self, binary: Path) -> None:
        self.proc = subprocess.Popen([str(binary)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        m = re.fullmatch(r"ready pid=(\d+)\n", read_line(self.proc.stdout, 10))
        assert m
        self.pid = int(m.group(1))

    def calls(self) -> None:
        """N getppid calls, returning once they are made."""
        self.proc.stdin.write("p")
        self.proc.stdin.flush()
        assert read_line(self.proc.stdout, 30).startswith("done")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


@pytest.fixture
def target(target_bin: Path) -> Iterator[Target]:
    t = Target(target_bin)
    yield t
    t.close()


def libc_path() -> str:
    from bpflbr_shell.trace.probes.uprobe import resolve_binary

    return resolve_binary("c")


class Bpftrace:
    """bpftrace counting getppid calls of one process; ready once BEGIN ran (all attached)."""

    def __init__(self, pid: int) -> None:
        tool = shutil.which("bpftrace")
        if tool is None:
            pytest.skip("needs bpftrace (the other tracer; scripts/bootstrap.sh installs it)")
        prog = ('BEGIN { printf("coexist-ready\\n"); } '
                f'uprobe:{libc_path()}:getppid /pid == {pid}/ {{ @calls = count(); }}')
        self.proc = subprocess.Popen([tool, "-p", str(pid), "-e", prog],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = []
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], 30)
            line = self.proc.stdout.readline() if ready else ""
            if line == "coexist-ready\n":
                return
            if not line:  # bpftrace gave up: show why
                self.proc.kill()
                _, err = self.proc.communicate()
                pytest.fail(f"bpftrace could not attach: {''.join(lines)}{err}")
            lines.append(line)

    def count(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=30)
        m = re.search(r"^@calls: (\d+)$", out, re.M)
        return int(m.group(1)) if m else 0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


class Ours:
    """Our uprobe tracer on getppid, counting the events it delivers."""

    def __init__(self, pid: int) -> None:
        from bpflbr_shell.trace.probes.base import CaptureOptions
        from bpflbr_shell.trace.probes.uprobe import UprobeTracer, resolve_targets

        self.events = 0
        targets = resolve_targets(libc_path(), "getppid")
        self.tracer = UprobeTracer(targets, CaptureOptions(pid=pid, lbr=False, ustack=False,
                                                           kstack=False), False,
                                   self._on_event, "coexist")
        self.tracer.start()

    def _on_event(self, event, kstack: int, ustack: int) -> None:
        self.events += 1

    def count(self, want: int, timeout: float = 10) -> int:
        deadline = time.monotonic() + timeout
        while self.events < want and time.monotonic() < deadline:
            self.tracer.poll(50)
        self.tracer.poll(50)
        return self.events

    def close(self) -> None:
        self.tracer.close()


@pytest.mark.live
def test_bpftrace_attaches_while_we_trace_the_same_function(require_root, require_bcc,
                                                            target: Target) -> None:
    ours = Ours(target.pid)
    theirs = None
    try:
        theirs = Bpftrace(target.pid)
        target.calls()
        assert (ours.count(N), theirs.count()) == (N, N)
    finally:
        if theirs is not None:
            theirs.kill()
        ours.close()


@pytest.mark.live
def test_we_attach_while_bpftrace_traces_the_same_function(require_root, require_bcc,
                                                           target: Target) -> None:
    theirs = Bpftrace(target.pid)
    ours = None
    try:
        ours = Ours(target.pid)
        target.calls()
        assert (ours.count(N), theirs.count()) == (N, N)
    finally:
        if ours is not None:
            ours.close()
        theirs.kill()


ADD_C = r"""
#include <stdio.h>
__attribute__((noinline)) int add(int a, int b) { return a + b; }
int main(void)
{
    int s = 0;
    for (int i = 0; i < NCALLS; i++)
        s += add(i, 2 * i);
    printf("%d\n", s);
    return 0;
}
"""


@pytest.mark.live
def test_a_non_pie_executable_is_probed_at_the_file_offset(require_root, require_bcc,
                                                          tmp_path: Path) -> None:
    """Symbols give addresses; the uprobe PMU takes file offsets. In a -no-pie executable
    they differ (text at 0x401000, file offset 0x1000): each of the N calls is an event."""
    from bpflbr_shell.trace.probes.base import CaptureOptions
    from bpflbr_shell.trace.probes.uprobe import UprobeTracer, resolve_targets

    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("needs gcc to build the -no-pie target")
    (tmp_path / "add.c").write_text(ADD_C)
    binary = tmp_path / "add"
    subprocess.run([gcc, "-O1", "-no-pie", f"-DNCALLS={N}", "-o", str(binary),
                    str(tmp_path / "add.c")], check=True)
    (target,) = resolve_targets(str(binary), "add")
    assert target.offset >= 0x400000  # an address, not an offset
    got = []
    tracer = UprobeTracer([target], CaptureOptions(lbr=False, ustack=False, kstack=False), True,
                          lambda ev, k, u: got.append(ev.retval), "nopie")
    tracer.start()
    try:
        subprocess.run([str(binary)], check=True, capture_output=True)
        deadline = time.monotonic() + 10
        while len(got) < N and time.monotonic() < deadline:
            tracer.poll(50)
    finally:
        tracer.close()
    assert got == [3 * i for i in range(N)]


@pytest.mark.live
def test_a_conflicting_ref_ctr_offset_is_said_not_sent_to_show_features(
        require_root, require_bcc, tmp_path: Path) -> None:
    """Another tracer's uprobe with a non-zero ref_ctr_offset (a USDT semaphore, or Debian's
    BCC tools' garbage one) on a function makes the kernel refuse ours with EINVAL: the error
    says so, instead of pointing at 'show features'. The other probe sits on a binary that no
    process maps, so its counter is never written anywhere."""
    from bpflbr_shell.errors import FeatureError
    from bpflbr_shell.kernel import perf
    from bpflbr_shell.trace.probes.base import CaptureOptions
    from bpflbr_shell.trace.probes.uprobe import (
        UprobeTracer,
        file_offset,
        resolve_targets,
    )

    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("needs gcc to build the target")
    (tmp_path / "add.c").write_text(ADD_C)
    binary = tmp_path / "add"
    subprocess.run([gcc, "-O1", f"-DNCALLS={N}", "-o", str(binary), str(tmp_path / "add.c")],
                   check=True)
    (target,) = resolve_targets(str(binary), "add")
    attr, _keep = perf.probe_attr("uprobe", bytes(binary), file_offset(str(binary),
                                                                      target.offset), False)
    attr.config |= 0x10 << 32  # ref_ctr_offset (the PMU's config:32-63)
    other = perf.perf_event_open(attr, -1, 0)
    try:
        tracer = UprobeTracer([target], CaptureOptions(lbr=False, ustack=False, kstack=False),
                              False, lambda *a: None, "conflict")
        with pytest.raises(FeatureError) as err:
            tracer.start()
        text = str(err.value)
        assert "EINVAL" in text and "ref_ctr_offset" in text and "show features" not in text
        assert "\n" not in text
    finally:
        os.close(other)
