"""Bad input found by the issue's fuzz run: each case is one clear ``error:`` line, quickly.

Cases run through the real runner and the real command registry; the ones that need the
kernel view (selectors resolved against loaded programs) are ``live``.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bpflbr_shell.errors import SelectorError, UsageError
from bpflbr_shell.kernel.selectors import parse_selector
from bpflbr_shell.shell import Context, load_builtin_commands
from bpflbr_shell.shell.runner import run_line
from bpflbr_shell.shell.scripts import run_file

REPO = Path(__file__).resolve().parent.parent
SECRET = "root:$6$hunter2SECRETsalt$TOPSECRETHASH:19700:0:99999:7:::"


def _ctx(kernel: bool = False) -> Context:
    factory = None
    if kernel:
        from bpflbr_shell.cli import open_kernel_view

        factory = open_kernel_view
    return Context(load_builtin_commands(), out=io.StringIO(), err=io.StringIO(),
                   kernel_factory=factory)


def one_error(ctx: Context, line: str, budget: float = 2.0) -> str:
    """Run ``line``; it must fail with exactly one ``error:`` line within ``budget`` s."""
    start = time.monotonic()
    assert run_line(ctx, line) is False
    took = time.monotonic() - start
    lines = ctx.stderr.getvalue().splitlines()
    ctx.stderr.seek(0)
    ctx.stderr.truncate()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert took < budget, f"{took:.2f} s"
    return lines[0]


# ---- paths --------------------------------------------------------------------------------

def test_undecodable_bytes_in_a_path_are_escaped_not_a_crash(tmp_path: Path) -> None:
    name = os.fsdecode(b"/nonexistent/\xff\xfe.lbr")  # what argv gives for such bytes
    line = one_error(_ctx(), f"source {name}")
    assert "no such script" in line and "\\udcff" in line
    line.encode("utf-8")  # printable as is: no UnicodeEncodeError on the way out


def test_undecodable_path_from_the_command_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bpflbr_shell", "-x", b"/nonexistent/\xff"],
                          capture_output=True, cwd=REPO, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith(b"error: no such script: /nonexistent/\\udcff")
    assert b"internal error" not in proc.stderr and b"Traceback" not in proc.stderr


def test_nul_in_a_path() -> None:
    assert "NUL" in one_error(_ctx(), "source '/tmp/a\x00b'")
    with pytest.raises(UsageError, match="NUL"):
        run_file(_ctx(), "/tmp/a\x00b")


# ---- sizes --------------------------------------------------------------------------------

def test_a_ten_thousand_digit_id() -> None:
    with pytest.raises(SelectorError, match="out of range"):
        parse_selector("9" * 4000)
    with pytest.raises(SelectorError, match="out of range"):
        parse_selector("id:" + "9" * 10_000)
    line = one_error(_ctx(), "show event " + "9" * 4000)
    assert "event id" in line and len(line) < 400


def test_dev_zero_as_a_script() -> None:
    line = one_error(_ctx(), "source /dev/zero")  # refused before a byte is read
    assert "refusing '/dev/zero': the script is not a regular file" in line


def test_a_hundred_thousand_character_line() -> None:
    line = one_error(_ctx(), "echo '" + "x" * 100_000, budget=0.5)
    assert "line too long (100006 characters; at most 4096)" in line


def test_many_brackets_in_a_glob() -> None:
    start = time.monotonic()
    with pytest.raises(SelectorError, match="too long"):
        parse_selector("[" * 4000)
    assert time.monotonic() - start < 0.1
    assert "too long" in one_error(_ctx(), "trace uprobe c:" + "[" * 4000)


# ---- settings and options -----------------------------------------------------------------

@pytest.mark.parametrize("value", ["-1", "abc", "0", "1" * 30])
def test_event_store_setting_validated(value: str) -> None:
    line = one_error(_ctx(), f"set event-store {value}")
    assert "from 1 to 10000000" in line


def test_lbr_branch_types_validated_when_set() -> None:
    ctx = _ctx()
    line = one_error(ctx, "set lbr-branch-types bogus")
    assert "unknown LBR branch type 'bogus'" in line and "any_call" in line
    assert run_line(ctx, "set lbr-branch-types call,any_return")


@pytest.mark.parametrize("value", ["0", "-3", "x"])
def test_limit_refused_naming_the_allowed_values(value: str) -> None:
    line = one_error(_ctx(), f"trace uprobe c:getpid --limit {value}")
    assert "--limit" in line and ">= 1" in line


def test_quit_code_range() -> None:
    assert "from 0 to 255" in one_error(_ctx(), "quit 999")


# ---- scripts that are not scripts ---------------------------------------------------------

def test_a_secret_file_as_script_is_not_echoed(tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text(SECRET + "\ndaemon:*:19700:0:99999:7:::\n")
    line = one_error(_ctx(), f"source {secret}")
    assert "not a command script" in line
    assert "hunter2" not in line and "TOPSECRET" not in line and "root:" not in line
    proc = subprocess.run([sys.executable, "-m", "bpflbr_shell", "-x", str(secret)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 1 and "hunter2" not in proc.stderr + proc.stdout


def test_a_real_script_still_names_the_bad_command(tmp_path: Path) -> None:
    script = tmp_path / "s.lbr"
    script.write_text("echo one\nshwo progs\n")
    assert one_error(_ctx(), f"source {script}").endswith(
        ":2: unknown command 'shwo' (did you mean 'show'?)")


def test_a_binary_file_as_script(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
    assert "not a command script" in one_error(_ctx(), f"source {blob}")


# ---- fd exhaustion ------------------------------------------------------------------------

REPL_UNDER_EMFILE = r"""
import io, os, resource, sys
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from bpflbr_shell.shell import Context, load_builtin_commands
from bpflbr_shell.shell.repl import make_session, run_repl

reg = load_builtin_commands()
held = []

@reg.command("hog")
def hog(ctx, args):
    while True:  # what an attach of many probes does to the fd table
        held.append(os.open("/dev/null", os.O_RDONLY))

resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
ctx = Context(reg, out=io.StringIO(), err=io.StringIO())
with create_pipe_input() as pipe:
    session = make_session(ctx, history=InMemoryHistory(), input=pipe, output=DummyOutput())
    pipe.send_text("hog\recho still here\rquit 7\r")
    code = run_repl(ctx, session)
sys.__stdout__.write(ctx.stdout.getvalue())
sys.__stderr__.write(ctx.stderr.getvalue())
sys.exit(code)
"""


def test_repl_survives_fd_exhaustion() -> None:
    proc = subprocess.run([sys.executable, "-c", REPL_UNDER_EMFILE], capture_output=True,
                          text=True, cwd=REPO, timeout=60)
    assert "error: out of file descriptors (EMFILE)" in proc.stderr, proc.stderr
    assert "still here" in proc.stdout, (proc.stdout, proc.stderr)
    assert proc.returncode == 7, proc.stderr


# ---- against the live kernel view ---------------------------------------------------------

@pytest.mark.live
def test_pinned_regular_file_is_not_a_bpf_object() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (bpf(2))")
    line = one_error(_ctx(kernel=True), "show progs pinned:/etc/passwd")
    assert "/etc/passwd is not a BPF object" in line and "run as root" not in line


@pytest.mark.live
def test_a_numeric_prog_name_completes_as_name_selector() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (bpf(2))")
    from bpflbr_shell.kernel import libbpf
    from bpflbr_shell.kernel.features import TRIVIAL_PROG
    from bpflbr_shell.shell.cmd_show import complete_prog

    fd = libbpf.prog_load(1, "99", TRIVIAL_PROG)  # a socket filter named "99"
    try:
        info = libbpf.BpfProgInfo()
        libbpf.obj_info(fd, info, "reading the test prog")
        ctx = _ctx(kernel=True)
        found = list(complete_prog(ctx, "99"))
        assert ("name:99", f"id {info.id}") in found
        assert ("99", f"id {info.id}") not in found  # typed alone, 99 would select id 99
        ids = {p.id for p in ctx.kernel.progs()}
        assert [c for c, _ in found if c == "99"] == (["99"] if 99 in ids else [])
    finally:
        os.close(fd)
