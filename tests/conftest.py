"""Shared test fixtures and the tier guard.

Tiers are pytest markers: ``live`` (root, this host's kernel), ``vm`` (inside scripts/vmtest's
VM); a test with neither is ``unit``. ``--require-passed TIER`` (repeatable) makes the run fail
when no test of that tier passed, so a tier that silently skipped everything (not root, BCC
missing, a broken fixture) cannot look green. scripts/test.sh passes it.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WORKLOAD = REPO / "examples" / "workload.py"
TIERS = ("unit", "live", "vm")

# ---- tier guard -------------------------------------------------------------------------------

_passed: Counter[str] = Counter()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-passed", action="append", default=[], choices=TIERS, metavar="TIER",
        help="fail the run unless at least one test of TIER (unit, live, vm) passed")


def _tier(keywords: object) -> str:
    for tier in ("vm", "live"):
        if tier in keywords:  # type: ignore[operator]
            return tier
    return "unit"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed:
        _passed[_tier(report.keywords)] += 1


def _missing(config: pytest.Config) -> list[str]:
    return [t for t in config.getoption("require_passed") if not _passed[t]]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _missing(session.config) and exitstatus in (pytest.ExitCode.OK,
                                                   pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    counts = ", ".join(f"{t} {_passed[t]}" for t in TIERS)
    terminalreporter.write_line(f"tiers passed: {counts}")
    for tier in _missing(config):
        terminalreporter.write_line(
            f"FAILED tier guard: no '{tier}' test passed (all skipped or deselected?); "
            "see the skip reasons above (-rs)", red=True, bold=True)


# ---- shell helpers ----------------------------------------------------------------------------

def builtins_registry():
    """A fresh command registry holding only the shell's built-ins (help, set, source, py...),
    for tests that add their own commands beside them."""
    from bpflbr_shell.shell import BUILTIN_MODULES, Registry, load_builtin_commands

    reg = Registry()
    mine = {f"bpflbr_shell.shell.{name}" for name in BUILTIN_MODULES}
    for cmd in load_builtin_commands().commands():
        if cmd.func.__module__ in mine:
            reg.add(cmd)
    return reg


# ---- capability fixtures ----------------------------------------------------------------------

def have_root() -> bool:
    return os.geteuid() == 0


def have_bcc() -> bool:
    try:
        import bcc  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "no usable BCC"
        return False
    return True


@pytest.fixture(scope="session")
def require_root() -> None:
    if not have_root():
        pytest.skip("needs root (CAP_SYS_ADMIN) for bpf(2)")


@pytest.fixture(scope="session")
def require_bcc() -> None:
    if not have_bcc():
        pytest.skip("needs BCC (python3-bpfcc), seen through a --system-site-packages venv "
                    "(scripts/bootstrap.sh)")


# ---- the example workload ---------------------------------------------------------------------

class ExampleWorkload(list):
    """The prog ids of the running example workload (libbpf program first), plus details."""

    def __init__(self, ids: list[int], pid: int, by_name: dict[str, int]) -> None:
        super().__init__(ids)
        self.pid = pid
        self.by_name = by_name  # BTF func name -> prog id: tc_classify, sock_stats


def start_workload(*extra: str, timeout: float = 180.0) -> tuple[subprocess.Popen[str], list[int]]:
    """Start examples/workload.py in the foreground; returns it and its ids once ready."""
    cmd = [sys.executable, str(WORKLOAD), "--foreground", *extra]
    err_log = tempfile.TemporaryFile("w+")  # a file, not a pipe: nobody drains it while we run
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_log, text=True)
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline and not line:
        if sel.select(timeout=max(0.0, deadline - time.monotonic())):
            line = proc.stdout.readline()
            if not line:
                break  # EOF: it died
    sel.close()
    m = re.fullmatch(r"ready ids=([\d,]+)\n", line)
    if not m:
        proc.kill()
        proc.wait()
        err_log.seek(0)
        err = err_log.read()
        err_log.close()
        raise RuntimeError(f"example workload did not become ready ({line!r}):\n{err}")
    err_log.close()  # the child keeps writing to its own copy
    return proc, [int(x) for x in m.group(1).split(",")]


def stop_workload(proc: subprocess.Popen[str], timeout: float = 15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout:
        proc.stdout.close()
    return proc.returncode


@pytest.fixture(scope="session")
def example_workload(require_root: None) -> Iterator[ExampleWorkload]:
    """examples/workload.py running (both loaders when BCC is usable), triggered every 100 ms."""
    extra = ["--trigger-ms", "100"]
    if not have_bcc():
        extra.append("--no-bcc")
    proc, ids = start_workload(*extra)
    try:
        from bpflbr_shell.kernel.progs import decode_prog_info, read_raw_prog_info

        by_name = {decode_prog_info(read_raw_prog_info(i)).func_name: i for i in ids}
        yield ExampleWorkload(ids, proc.pid, by_name)
    finally:
        stop_workload(proc)


def gcc_oracle(directory: Path, source: str, headers: tuple[str, ...] = ()) -> dict[str, int]:
    """Compile ``source`` (a C program printing ``key value`` lines) with gcc and run it: the
    independent oracle for struct layouts and constants as the system headers have them. Skips,
    naming what is missing, without gcc or one of ``headers``."""
    import shutil

    import pytest

    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not installed: no independent oracle for struct layouts")
    for hdr in headers:
        if not os.path.exists(hdr):
            pytest.skip(f"{hdr} missing (linux-libc-dev / libbpf-dev)")
    src, exe = directory / "oracle.c", directory / "oracle"
    src.write_text(source)
    subprocess.run([gcc, "-O0", "-o", str(exe), str(src)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}
