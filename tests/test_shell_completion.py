"""Completion logic: command words, options, value hooks, quoting, failing hooks."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest
from conftest import builtins_registry
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from bpflbr_shell.errors import PrivilegeError
from bpflbr_shell.shell.completion import ShellCompleter, candidates, split_for_completion
from bpflbr_shell.shell.context import SETTINGS, Context
from bpflbr_shell.shell.registry import argument


def prog_completer(ctx: Context, prefix: str) -> list[tuple[str, str]]:
    return [("850", "tc_ingress"), ("851", "tc_egress"), ("name:tc_ingress", "")]


def denied(ctx: Context, prefix: str) -> list[str]:
    raise PrivilegeError("bpf(2) needs CAP_BPF")


@pytest.fixture
def ctx() -> Context:
    reg = builtins_registry()

    @reg.command("show prog", help="one program", completers={"SEL": prog_completer})
    @argument("sel", metavar="SEL")
    @argument("--format", choices=["text", "raw"])
    def show_prog(ctx: Context, args: argparse.Namespace) -> None: ...

    @reg.command("show progs", help="list programs")
    def show_progs(ctx: Context, args: argparse.Namespace) -> None: ...

    @reg.command("disasm prog", help="disassemble")
    @argument("sel", metavar="SEL", completer=prog_completer)
    @argument("func", nargs="?", metavar="FUNC",
              completer=lambda ctx, p: ["main func", "sub_a", "sub_b"])
    def disasm_prog(ctx: Context, args: argparse.Namespace) -> None: ...

    @reg.command("show ksym", help="a kernel symbol")
    @argument("name", completer=denied)
    def show_ksym(ctx: Context, args: argparse.Namespace) -> None: ...

    return Context(reg, out=io.StringIO(), err=io.StringIO())


def texts(ctx: Context, line: str) -> list[str]:
    return [c.text for c in candidates(ctx, line)[0]]


def test_split_for_completion() -> None:
    assert split_for_completion("show prog ") == (["show", "prog"], "", 0)
    assert split_for_completion("show pr") == (["show"], "pr", 2)
    assert split_for_completion("echo 'a b' \"c d") == (["echo", "a b"], "c d", 4)


def test_command_words(ctx: Context) -> None:
    assert texts(ctx, "") == ["define", "disasm", "document", "echo", "exit", "help", "py",
                              "python", "quit", "set", "show", "source"]
    assert texts(ctx, "sh") == ["show"]
    assert texts(ctx, "show ") == ["ksym", "prog", "progs", "settings"]
    assert texts(ctx, "show pro") == ["prog", "progs"]
    assert texts(ctx, "nosuch ") == []


def test_meta_is_the_one_line_help(ctx: Context) -> None:
    found, _ = candidates(ctx, "show progs")
    assert [(c.text, c.meta) for c in found] == [("progs", "list programs")]


def test_options_from_argparse(ctx: Context) -> None:
    assert texts(ctx, "show prog --") == ["--format", "--help", "--json"]
    assert texts(ctx, "show prog --format ") == ["raw", "text"]


def test_value_hooks_by_metavar_and_by_argument(ctx: Context) -> None:
    assert texts(ctx, "show prog 85") == ["850", "851"]
    assert texts(ctx, "disasm prog ") == ["850", "851", "name:tc_ingress"]
    assert texts(ctx, "disasm prog 850 sub") == ["sub_a", "sub_b"]
    assert texts(ctx, "disasm prog 850 sub_a ") == []
    # options with values are skipped when counting positionals
    assert texts(ctx, "show prog --format raw 8") == ["850", "851"]


def test_failing_hook_gives_no_candidates(ctx: Context) -> None:
    assert texts(ctx, "show ksym tcp_") == []


def test_builtin_hooks(ctx: Context, tmp_path: Path, monkeypatch) -> None:
    names = texts(ctx, "set ")
    assert names == sorted(SETTINGS) and {"color", "debug"} <= set(names)
    assert texts(ctx, "set debug ") == ["off", "on"]
    assert texts(ctx, "set color a") == ["auto"]
    assert texts(ctx, "help show pr") == ["prog", "progs"]
    (tmp_path / "checks.lbr").write_text("")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    assert texts(ctx, "source ") == ["checks.lbr", "sub/"]


def test_prompt_toolkit_adapter_quotes_and_replaces(ctx: Context) -> None:
    completer = ShellCompleter(ctx)
    doc = Document("disasm prog 850 'main f")
    got = list(completer.get_completions(doc, CompleteEvent(completion_requested=True)))
    assert [(c.text, c.start_position) for c in got] == [("'main func' ", -7)]
    doc = Document("source /")
    got = list(completer.get_completions(doc, CompleteEvent(completion_requested=True)))
    assert got and all(c.text.endswith(("/", " ")) for c in got)
