"""Output people can rely on, end to end through the installed ``bpflbr-shell`` (root, BCC):
``--json`` stdout is JSON only, a closed pipe ends quietly, a hostile comm or symbol cannot
reach the terminal.

The target is a C program built here: it renames itself with prctl(PR_SET_NAME) to a name
holding an OSC title sequence and a newline (any user can do this), and calls ``add`` three
times per byte written to its stdin, so every trace is attached before the calls happen.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.live

REPO = Path(__file__).resolve().parent.parent
SHELL = REPO / ".venv" / "bin" / "bpflbr-shell"
EVIL_COMM = b"\x1b]0;pwned\x07\n#evil"  # the kernel keeps 15 bytes of it

TARGET_C = r"""
#include <stdio.h>
#include <sys/prctl.h>
#include <unistd.h>
__attribute__((noinline)) int add(int a, int b) { return a + b; }
int main(void)
{
    char c;
    long s = 0;
    prctl(PR_SET_NAME, "\x1b]0;pwned\x07\n#evil");
    printf("ready %d\n", getpid());
    fflush(stdout);
    while (read(0, &c, 1) == 1) {
        for (int i = 0; i < 3; i++)
            s += add(i, 1);
        printf("done %ld\n", s);
        fflush(stdout);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def target_bin(tmp_path_factory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root (uprobes through BCC)")
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("needs gcc to build the target")
    if not SHELL.exists():
        pytest.skip(f"needs the installed shell at {SHELL} (scripts/bootstrap.sh)")
    d = tmp_path_factory.mktemp("evil")
    (d / "evil.c").write_text(TARGET_C)
    subprocess.run([gcc, "-g", "-O0", "-o", str(d / "evil"), str(d / "evil.c")], check=True)
    return d / "evil"


class Target:
    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen([str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.pid = int(self.proc.stdout.readline().split()[1])
        comm = Path(f"/proc/{self.pid}/comm").read_bytes()
        assert comm.startswith(EVIL_COMM[:15]), comm  # the hostile name really is in place

    def call(self) -> None:
        self.proc.stdin.write(b"a")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().startswith(b"done")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def read_until(proc: subprocess.Popen, stream, marker: bytes, timeout: float = 30) -> bytes:
    """Bytes of ``stream`` (raw, unbuffered reads) until ``marker`` appears."""
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    got = b""
    deadline = time.monotonic() + timeout
    while marker not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} in {got!r}"
        if sel.select(left):
            chunk = os.read(stream.fileno(), 65536)
            assert chunk, f"EOF before {marker!r} in {got!r} (rc {proc.poll()})"
            got += chunk
    return got


def run_trace(target_bin: Path, extra: str, stdout=subprocess.PIPE) -> tuple[bytes, bytes, int]:
    """``trace uretprobe evil:add --pid P --limit 3 EXTRA``; the target calls add 3 times once
    the trace says it is attached (its status line on stderr)."""
    target = Target(target_bin)
    try:
        sh = subprocess.Popen(
            [str(SHELL), "-c", f"trace uretprobe {target_bin}:add --pid {target.pid} "
                               f"--limit 3 {extra}"],
            stdout=stdout, stderr=subprocess.PIPE)
        err = read_until(sh, sh.stderr, b"trace 1: ")
        target.call()
        out, rest = sh.communicate(timeout=60)
        return out or b"", err + rest, sh.returncode
    finally:
        target.close()


def test_json_trace_prints_only_json_on_stdout(target_bin):
    out, err, rc = run_trace(target_bin, "--json")
    assert rc == 0, err
    lines = out.decode().splitlines()
    assert len(lines) == 3
    docs = [json.loads(line) for line in lines]  # every stdout line is one JSON document
    assert all(d["func"] == "add" for d in docs)
    assert docs[0]["comm"].encode() == EVIL_COMM[:15]  # JSON keeps the exact name
    assert b"trace 1 stopped: 3 events" in err  # status lines went to stderr


def test_text_trace_escapes_a_hostile_comm(target_bin):
    out, err, rc = run_trace(target_bin, "")
    assert rc == 0, err
    assert b"\x1b" not in out and b"\x07" not in out
    assert b"\\x1b]0;pwned\\x07\\n#evi" in out
    text = out.decode()
    assert not any(line.startswith("#evi") for line in text.splitlines())
    assert text.count("add(") == 3
    # no LBR hardware here: one short notice, the details left to 'show features'
    notice = [x for x in err.decode().splitlines() if x.startswith("warning: LBR off")]
    assert len(notice) == 1 and len(notice[0]) <= 100 and "show features" in notice[0], notice


def _closed_pipe() -> int:
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first write: EPIPE, every time
    return w


def test_closed_pipe_ends_quietly():
    w = _closed_pipe()
    try:
        proc = subprocess.run([str(SHELL), "-c", "show progs", "-c", "show settings"],
                              stdout=w, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(w)
    assert proc.stderr == b"", proc.stderr  # no 'internal error: BrokenPipeError'
    assert proc.returncode == 141


def test_json_trace_into_closed_pipe_ends_quietly_and_detaches(target_bin):
    w = _closed_pipe()
    try:
        _, err, rc = run_trace(target_bin, "--json", stdout=w)
    finally:
        os.close(w)
    assert b"internal error" not in err and b"Traceback" not in err, err
    assert rc == 141
    uprobes = Path("/sys/kernel/tracing/uprobe_events")
    if uprobes.exists():  # tracefs mounted: our probe on the target is gone
        assert str(target_bin) not in uprobes.read_text()
