"""The real REPL: prompt_toolkit pipe input in-process, and once through a pty with pexpect."""

from __future__ import annotations

import argparse
import io
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pexpect
import pytest
from conftest import builtins_registry
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from bpflbr_shell.shell.context import Context
from bpflbr_shell.shell.repl import make_session, open_history, run_repl

Step = tuple[str, Callable[[], bool] | None]


@pytest.fixture
def ctx() -> Context:
    reg = builtins_registry()

    @reg.command("slow")
    def slow(ctx: Context, args: argparse.Namespace) -> None:
        raise KeyboardInterrupt  # what SIGINT delivers in the middle of a command

    @reg.command("block")
    def block(ctx: Context, args: argparse.Namespace) -> None:
        lines = []
        while (line := ctx.read_line("... ")) not in (None, "end"):
            lines.append(line)
        ctx.print("block:" + "|".join(lines))

    return Context(reg, out=io.StringIO(), err=io.StringIO())


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("REPL did not reach the expected state")
        time.sleep(0.01)


def drive(ctx: Context, steps: list[Step] | Callable[[object], list[Step]],
          history=None) -> tuple[int, object]:
    """Type each chunk, then wait for its condition (completion is asynchronous).

    ``steps`` may be a function of the session, for conditions on the edit buffer.
    """
    with create_pipe_input() as pipe:
        session = make_session(ctx, history=history or InMemoryHistory(), input=pipe,
                               output=DummyOutput())
        plan = steps(session) if callable(steps) else steps
        failure: list[BaseException] = []

        def feed() -> None:
            try:
                wait_for(lambda: session.app.is_running)
                for text, cond in plan:
                    pipe.send_text(text)
                    if cond is not None:
                        wait_for(cond)
            except BaseException as exc:  # noqa: BLE001 - reported below
                failure.append(exc)
                ctx.exit_requested = True
                pipe.send_text("\x03")  # leave the prompt whatever is typed

        thread = threading.Thread(target=feed, daemon=True)
        thread.start()
        code = run_repl(ctx, session)
        thread.join(5)
        if failure:
            raise failure[0]
        return code, session


def out(ctx: Context) -> str:
    return ctx.out.getvalue()  # type: ignore[union-attr]


def err(ctx: Context) -> str:
    return ctx.err.getvalue()  # type: ignore[union-attr]


def test_commands_errors_and_ctrl_d(ctx: Context) -> None:
    code, session = drive(ctx, [
        ("echo hello\r", lambda: out(ctx) == "hello\n"),
        ("shwo\r", lambda: "did you mean 'show'" in err(ctx)),
        ("\x04", None),
    ])
    assert code == 0
    assert session.history.get_strings() == ["echo hello", "shwo"]


def test_tab_completes_multi_word_commands_and_options(ctx: Context) -> None:
    def plan(session) -> list[Step]:
        def buffer_is(text: str) -> Callable[[], bool]:
            return lambda: session.default_buffer.text == text

        return [
            ("sh\t", buffer_is("show ")),
            ("sett\t", buffer_is("show settings ")),
            ("--js\t", buffer_is("show settings --json ")),
            ("\r", lambda: "}" in out(ctx)),
            ("quit 3\r", None),
        ]

    code, _ = drive(ctx, plan)
    assert code == 3
    assert out(ctx).startswith('{\n  "color": "auto"')


def test_ctrl_c_cancels_line_and_interrupts_command(ctx: Context) -> None:
    code, session = drive(ctx, [
        ("half typed line\x03", None),
        ("slow\r", lambda: "interrupted" in err(ctx)),
        ("echo after\r", lambda: "after" in out(ctx)),
        ("\x04", None),
    ])
    assert code == 0
    assert out(ctx) == "after\n"
    assert err(ctx) == "^C\nerror: interrupted\n"  # the cancelled line ran nothing
    assert session.history.get_strings() == ["slow", "echo after"]


def test_block_lines_come_from_the_prompt(ctx: Context) -> None:
    drive(ctx, [
        ("block\r", None), ("a = 1\r", None), ("end\r", lambda: "block:" in out(ctx)),
        ("\x04", None),
    ])
    assert out(ctx) == "block:a = 1\n"


def test_history_file_is_private(ctx: Context, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "hist"
    monkeypatch.setenv("BPFLBR_HISTORY", str(path))
    old_umask = os.umask(0o022)
    try:
        with create_pipe_input() as pipe:
            session = make_session(ctx, input=pipe, output=DummyOutput())
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    code, _ = drive(ctx, [("echo saved\r", lambda: "saved" in out(ctx)), ("\x04", None)],
                    history=session.history)
    assert code == 0
    assert "+echo saved" in path.read_text()


def test_existing_history_with_wide_mode_is_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "hist"
    path.write_text("\n# 2026\n+show progs\n")
    path.chmod(0o644)
    history = open_history(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(history.load_history_strings()) == ["show progs"]


def test_unwritable_history_falls_back_to_memory(ctx: Context, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    history = open_history(str(tmp_path / "file" / "hist"), ctx)  # a file, not a directory
    assert type(history).__name__ == "InMemoryHistory"
    assert err(ctx).startswith("warning: history not saved:")


BIN = Path(sys.executable).parent / "bpflbr-shell"


@pytest.mark.skipif(not BIN.exists(), reason="console script not installed in this venv")
def test_real_terminal_with_pexpect(tmp_path: Path) -> None:
    hist = tmp_path / "hist"
    fifo = tmp_path / "blocks.lbr"
    os.mkfifo(fifo)
    env = dict(os.environ, BPFLBR_HISTORY=str(hist), PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm")
    child = pexpect.spawn(str(BIN), env=env, encoding="utf-8", timeout=10,
                          dimensions=(40, 120))
    try:
        child.expect_exact("(bpflbr)")  # pt draws the trailing space as a cursor move
        child.sendline("help")
        child.expect("leave the shell")
        child.expect_exact("(bpflbr)")
        child.sendline("shwo")
        child.expect_exact("unknown command 'shwo'")
        child.expect_exact("did you mean 'show'?")
        child.expect_exact("(bpflbr)")
        # A command blocked in a syscall (opening a FIFO nobody writes): Ctrl-C stops only it.
        # (`source FIFO` no longer blocks: a script that is not a regular file is refused.)
        child.sendline(f"py open({str(fifo)!r}).read()")
        time.sleep(0.3)
        child.sendintr()
        child.expect_exact("interrupted")
        child.expect_exact("(bpflbr)")
        child.sendline("quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert stat.S_IMODE(hist.stat().st_mode) == 0o600
    assert "+shwo" in hist.read_text()


def test_define_and_python_blocks_at_the_prompt(ctx: Context) -> None:
    code, _ = drive(ctx, [
        ("define hi\r", lambda: "end with a line saying just 'end'" in err(ctx)),
        ("  echo hi $arg0\r", None),
        ("end\r", None),
        ("hi there\r", lambda: out(ctx) == "hi there\n"),
        ("python\r", None),
        ("n = 6\r", None),
        ("print(n * 7)\r", None),
        ("end\r", lambda: out(ctx) == "hi there\n42\n"),
        ("py n\r", lambda: out(ctx) == "hi there\n42\n6\n"),
        ("quit\r", None),
    ])
    assert code == 0
    from bpflbr_shell.shell.completion import candidates

    # the user command completes beside the built-ins, with its one-line help
    assert [(c.text, c.meta) for c in candidates(ctx, "h")[0]] == [
        ("help", "list commands, or show one command's options"),
        ("hi", "user-defined command")]
