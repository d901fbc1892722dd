"""Runner and built-ins: error rendering, debug, interrupts, source FILE:LINE, kernel hook."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest
from conftest import builtins_registry

from bpflbr_shell.errors import NotFoundError
from bpflbr_shell.shell.context import Context
from bpflbr_shell.shell.runner import run_line


@pytest.fixture
def ctx() -> Context:
    """A context over the built-ins plus a few misbehaving test commands."""
    reg = builtins_registry()

    @reg.command("boom")
    def boom(ctx: Context, args: argparse.Namespace) -> None:
        raise ValueError("kaboom")

    @reg.command("missing")
    def missing(ctx: Context, args: argparse.Namespace) -> None:
        raise NotFoundError("no program with id 999", "see 'show progs'")

    @reg.command("sigint")
    def sigint(ctx: Context, args: argparse.Namespace) -> None:
        raise KeyboardInterrupt

    @reg.command("block")
    def block(ctx: Context, args: argparse.Namespace) -> None:
        lines = []
        while (line := ctx.read_line("... ")) not in (None, "end"):
            lines.append(line)
        ctx.print("block:" + "|".join(lines))

    @reg.command("kern")
    def kern(ctx: Context, args: argparse.Namespace) -> None:
        ctx.print(ctx.kernel)

    return Context(reg, out=io.StringIO(), err=io.StringIO())


def out(ctx: Context) -> str:
    return ctx.out.getvalue()  # type: ignore[union-attr]


def err(ctx: Context) -> str:
    return ctx.err.getvalue()  # type: ignore[union-attr]


def test_user_error_is_one_line_and_shell_goes_on(ctx: Context) -> None:
    assert run_line(ctx, "missing") is False
    assert err(ctx) == "error: no program with id 999 (see 'show progs')\n"
    assert run_line(ctx, "echo still here") is True
    assert out(ctx) == "still here\n"


def test_internal_error_one_line_then_traceback_with_debug(ctx: Context) -> None:
    assert run_line(ctx, "boom") is False
    assert err(ctx) == ("internal error: ValueError: kaboom "
                        "(a bug; 'set debug on' shows the traceback)\n")
    assert run_line(ctx, "set debug on")
    assert run_line(ctx, "boom") is False
    tail = err(ctx).split("traceback)\n", 1)[1]
    assert tail.startswith("Traceback (most recent call last):")
    assert tail.rstrip().endswith("ValueError: kaboom")


def test_keyboard_interrupt_in_command_is_reported(ctx: Context) -> None:
    assert run_line(ctx, "sigint") is False
    assert err(ctx) == "^C\nerror: interrupted\n"
    assert run_line(ctx, "echo ok")


def test_set_and_show_settings(ctx: Context) -> None:
    assert run_line(ctx, "set color off")
    assert run_line(ctx, "show settings color")
    assert out(ctx).split() == ["color", "off", "colour", "output:", "auto", "(only", "on", "a",
                                "terminal),", "on,", "off"]
    assert not run_line(ctx, "set color blue")
    assert "invalid value 'blue' for color (one of: auto, on, off)" in err(ctx)
    assert not run_line(ctx, "show settings dbug")
    assert "unknown setting 'dbug' (did you mean 'debug'?)" in err(ctx)


def test_colour_follows_setting_not_just_tty(ctx: Context) -> None:
    assert ctx.style("x", "red") == "x"  # StringIO is not a terminal
    ctx.settings.set("color", "on")
    assert ctx.style("x", "red") == "\x1b[31mx\x1b[0m"


def test_help_lists_and_describes(ctx: Context) -> None:
    assert run_line(ctx, "help")
    listing = out(ctx)
    for name in ("echo", "help", "quit (exit)", "set", "show settings", "source"):
        assert f"  {name} " in listing
    assert run_line(ctx, "help source")
    assert "usage: source [-h] [--json] FILE" in out(ctx)
    assert run_line(ctx, "help show")
    assert "'show' subcommands:" in out(ctx)
    assert not run_line(ctx, "help sorce")
    assert "did you mean 'source'?" in err(ctx)


def test_quit_sets_exit_code(ctx: Context) -> None:
    assert run_line(ctx, "exit 4")
    assert ctx.exit_requested and ctx.exit_code == 4


def test_source_names_file_and_line_and_stops(ctx: Context, tmp_path: Path) -> None:
    script = tmp_path / "checks.lbr"
    script.write_text("# a comment\n\necho one\nshwo progs\necho never\n")
    assert run_line(ctx, f"source {script}") is False
    assert out(ctx) == "one\n"
    assert err(ctx) == f"error: {script}:4: unknown command 'shwo' (did you mean 'show'?)\n"


def test_nested_source_reports_innermost_location(ctx: Context, tmp_path: Path) -> None:
    (tmp_path / "inner.lbr").write_text("echo in\nmissing\n")
    (tmp_path / "outer.lbr").write_text(f"echo out\nsource {tmp_path / 'inner.lbr'}\necho no\n")
    assert run_line(ctx, f"source {tmp_path / 'outer.lbr'}") is False
    assert out(ctx) == "out\nin\n"
    assert err(ctx) == (f"error: {tmp_path / 'inner.lbr'}:2: no program with id 999 "
                        "(see 'show progs')\n")


def test_internal_error_in_script_names_location(ctx: Context, tmp_path: Path) -> None:
    (tmp_path / "s.lbr").write_text("echo a\nboom\n")
    assert run_line(ctx, f"source {tmp_path / 's.lbr'}") is False
    assert err(ctx).startswith(f"internal error: {tmp_path / 's.lbr'}:2: ValueError: kaboom")


def test_self_sourcing_script_is_stopped(ctx: Context, tmp_path: Path) -> None:
    loop = tmp_path / "loop.lbr"
    loop.write_text(f"source {loop}\n")
    assert run_line(ctx, f"source {loop}") is False
    assert "nested more than" in err(ctx)


def test_source_missing_file(ctx: Context, tmp_path: Path) -> None:
    assert run_line(ctx, f"source {tmp_path / 'nope.lbr'}") is False
    assert err(ctx) == f"error: no such script: {tmp_path / 'nope.lbr'} (check the path)\n"


def test_quit_in_script_stops_it(ctx: Context, tmp_path: Path) -> None:
    (tmp_path / "q.lbr").write_text("echo a\nquit 2\necho b\n")
    assert run_line(ctx, f"source {tmp_path / 'q.lbr'}")
    assert out(ctx) == "a\n" and ctx.exit_code == 2


def test_block_commands_read_following_script_lines(ctx: Context, tmp_path: Path) -> None:
    (tmp_path / "b.lbr").write_text("block\nx = 1\ny = 2\nend\necho after\n")
    assert run_line(ctx, f"source {tmp_path / 'b.lbr'}")
    assert out(ctx) == "block:x = 1|y = 2\nafter\n"


def test_kernel_view_is_lazy_and_created_once(ctx: Context) -> None:
    made = []
    ctx.kernel_factory = lambda c: made.append(c) or f"kernel#{len(made)}"
    assert not ctx.has_kernel and made == []
    assert run_line(ctx, "kern") and run_line(ctx, "kern")
    assert out(ctx) == "kernel#1\nkernel#1\n"


def test_missing_kernel_factory_is_a_feature_error(ctx: Context, monkeypatch) -> None:
    monkeypatch.setattr("bpflbr_shell.shell.context._kernel_factory", None)
    assert run_line(ctx, "kern") is False
    assert err(ctx).startswith("error: no kernel view is available in this session")
