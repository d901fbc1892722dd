"""Registry: @command/@argument, multi-word dispatch, argparse taming, suggestions."""

from __future__ import annotations

import argparse
import io

import pytest

from bpflbr_shell.errors import UsageError
from bpflbr_shell.shell.context import Context
from bpflbr_shell.shell.lexer import lex
from bpflbr_shell.shell.registry import HelpRequested, Registry, argument
from bpflbr_shell.shell.runner import execute_line


@pytest.fixture
def reg() -> Registry:
    reg = Registry()
    calls: list[tuple[str, argparse.Namespace]] = []
    reg.calls = calls  # type: ignore[attr-defined]

    @reg.command("show progs", help="list programs")
    @argument("pattern", nargs="?", metavar="PATTERN")
    def show_progs(ctx: Context, args: argparse.Namespace) -> None:
        calls.append(("show progs", args))

    @reg.command("show prog", help="one program")
    @argument("sel", metavar="SEL")
    @argument("--xlated", action="store_true")
    def show_prog(ctx: Context, args: argparse.Namespace) -> None:
        calls.append(("show prog", args))

    @reg.command("disasm prog", help="disassemble", aliases=("dis prog",))
    @argument("sel", metavar="SEL")
    @argument("func", nargs="?", metavar="FUNC")
    def disasm_prog(ctx: Context, args: argparse.Namespace) -> None:
        calls.append(("disasm prog", args))

    def build(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--limit", type=int, default=10)

    @reg.command("trace", help="trace things", build=build)
    def trace(ctx: Context, args: argparse.Namespace) -> None:
        calls.append(("trace", args))

    return reg


def run(reg: Registry, line: str) -> Context:
    ctx = Context(reg, out=io.StringIO(), err=io.StringIO())
    execute_line(ctx, line)
    return ctx


def test_longest_prefix_dispatch(reg: Registry) -> None:
    run(reg, "show progs tc*")
    run(reg, "show prog 850 --xlated")
    run(reg, "disasm prog name:foo bar_sub")
    names = [(n, vars(a)) for n, a in reg.calls]  # type: ignore[attr-defined]
    assert names == [
        ("show progs", {"pattern": "tc*", "json": False}),
        ("show prog", {"sel": "850", "xlated": True, "json": False}),
        ("disasm prog", {"sel": "name:foo", "func": "bar_sub", "json": False}),
    ]


def test_alias_and_builder(reg: Registry) -> None:
    run(reg, "dis prog 7")
    run(reg, "trace --limit 3")
    assert reg.calls[0][0] == "disasm prog"  # type: ignore[attr-defined]
    assert reg.calls[1][1].limit == 3  # type: ignore[attr-defined]


def test_arguments_keep_written_order(reg: Registry) -> None:
    cmd = reg.get("disasm prog")
    assert cmd is not None
    assert cmd.parser.format_usage().split()[-2:] == ["SEL", "[FUNC]"]


def test_every_command_gets_json_but_raw_ones(reg: Registry) -> None:
    """The presenter writes any command's records as JSON: every command takes --json (it
    used to be show commands only); raw commands see their text as typed."""
    run(reg, "show progs --json")
    assert reg.calls[-1][1].json is True  # type: ignore[attr-defined]
    run(reg, "disasm prog 1 --json")
    assert reg.calls[-1][1].json is True  # type: ignore[attr-defined]

    @reg.command("say", help="raw", raw=True)
    def say(ctx: Context, args: argparse.Namespace) -> None:
        reg.calls.append(("say", args))  # type: ignore[attr-defined]

    run(reg, "say hi --json")
    assert vars(reg.calls[-1][1]) == {"text": "hi --json"}  # type: ignore[attr-defined]


def test_argparse_errors_are_one_line_usage_errors(reg: Registry, capsys) -> None:
    with pytest.raises(UsageError) as info:
        run(reg, "show prog")
    err = info.value
    assert str(err) == ("show prog: the following arguments are required: SEL "
                        "(usage: show prog [-h] [--xlated] [--json] SEL)")
    assert "\n" not in str(err)
    with pytest.raises(UsageError, match="invalid int value: 'x'"):
        run(reg, "trace --limit x")
    # argparse must not have printed anything itself, nor exited
    assert capsys.readouterr() == ("", "")


def test_help_flag_prints_to_context_not_stdout(reg: Registry, capsys) -> None:
    ctx = run(reg, "show prog -h")
    assert ctx.out.getvalue().startswith("usage: show prog")  # type: ignore[union-attr]
    assert reg.calls == []  # type: ignore[attr-defined]
    assert capsys.readouterr() == ("", "")
    cmd = reg.get("show prog")
    assert cmd is not None
    with pytest.raises(HelpRequested):
        cmd.parse(["--help"])


@pytest.mark.parametrize("line, message", [
    ("shwo progs", "unknown command 'shwo' (did you mean 'show'?)"),
    ("disasmm prog 1", "unknown command 'disasmm' (did you mean 'disasm'?)"),
    ("show prgos", "unknown command 'show prgos' (did you mean 'show progs'?)"),
    ("show zzzzzz", "unknown command 'show zzzzzz' (see 'help show')"),
    ("show", "'show' needs a subcommand (one of: prog, progs)"),
    ("frobnicate", "unknown command 'frobnicate' (type 'help' for a list)"),
])
def test_unknown_commands_suggest(reg: Registry, line: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        run(reg, line)
    assert str(info.value) == message


def test_duplicate_name_from_another_function_is_refused(reg: Registry) -> None:
    with pytest.raises(ValueError, match="already registered"):
        reg.command("show progs")(lambda ctx, args: None)


def test_raw_command_gets_text_verbatim() -> None:
    reg = Registry()
    seen = []
    reg.command("py", raw=True)(lambda ctx, args: seen.append(args.text))
    run(reg, "py  len([e for e in x if e == 'a b'])  # not a comment")
    assert seen == ["len([e for e in x if e == 'a b'])  # not a comment"]


def test_shlex_comments_and_blank_lines(reg: Registry) -> None:
    run(reg, "   ")
    run(reg, "# just a comment")
    run(reg, "show progs 'a b' # trailing comment")
    run(reg, "show progs a#b")
    assert [a.pattern for _, a in reg.calls] == ["a b", "a#b"]  # type: ignore[attr-defined]
    assert lex("echo '# kept' \"# kept\" \\# kept # gone").argv == \
        ["echo", "# kept", "# kept", "#", "kept"]


def test_unbalanced_quotes_are_usage_errors(reg: Registry) -> None:
    with pytest.raises(UsageError, match="(?i)no closing quotation"):
        run(reg, "show progs 'oops")


def test_show_command_declaring_its_own_json_is_fine() -> None:
    reg = Registry()
    seen = []

    @reg.command("show things")
    @argument("--json", action="store_true", help="my own")
    def show_things(ctx: Context, args: argparse.Namespace) -> None:
        seen.append(args.json)

    run(reg, "show things --json")
    assert seen == [True]
