"""Unit: the one command-line tokenizer (shell/lexer.py), against shlex (the oracle for the
words) and hypothesis (any text: one clear UsageError or a Line, never anything else)."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpflbr_shell.errors import UsageError
from bpflbr_shell.shell.lexer import lex

QUOTING = st.text(alphabet="ab c'\"\\\t", max_size=40)
ANY = st.text(alphabet="ab c'\"\\#|>\t\x00é", max_size=60)


@settings(max_examples=400, deadline=None)
@given(QUOTING)
def test_words_are_what_shlex_makes_of_them(text: str) -> None:
    try:
        want = shlex.split(text)
    except ValueError:
        with pytest.raises(UsageError):
            lex(text)
        return
    assert lex(text).argv == want


@settings(max_examples=400, deadline=None)
@given(ANY)
def test_any_text_is_a_line_or_one_usage_error(text: str) -> None:
    try:
        line = lex(text)
    except UsageError as exc:
        assert "\n" not in str(exc)
        return
    assert line.pipe is None or (line.pipe and line.redirect is None)
    lenient = lex(text, strict=False)  # the completer's view never raises on open quotes
    assert [w.text for w in lenient.words] == line.argv[: len(lenient.words)]


@settings(max_examples=300, deadline=None)
@given(ANY)
def test_lenient_lexing_never_raises_on_what_a_user_is_still_typing(text: str) -> None:
    try:
        lex(text, strict=False)
    except UsageError as exc:  # only misplaced operators, never an open quote
        assert "quotation" not in str(exc)


@pytest.mark.parametrize(("text", "argv", "pipe", "redirect", "append"), [
    ("show progs | wc -l", ["show", "progs"], "wc -l", None, False),
    ("show progs|wc -l", ["show", "progs"], "wc -l", None, False),
    ("show ksym 'tcp_*|x'", ["show", "ksym", "tcp_*|x"], None, None, False),
    ("show progs --json > out.json", ["show", "progs", "--json"], None, "out.json", False),
    ("show progs >> 'my file'", ["show", "progs"], None, "my file", True),
    ("trace kfunc vfs_read --if 'count > 4096'",
     ["trace", "kfunc", "vfs_read", "--if", "count > 4096"], None, None, False),
    ("show prog a#b # a comment", ["show", "prog", "a#b"], None, None, False),
    ("show progs # | not a pipe", ["show", "progs"], None, None, False),
])
def test_operators(text: str, argv: list[str], pipe: str | None, redirect: str | None,
                   append: bool) -> None:
    line = lex(text)
    assert (line.argv, line.pipe, line.redirect, line.append) == (argv, pipe, redirect, append)


@pytest.mark.parametrize(("text", "message"), [
    ("show 'progs", "no closing quotation"),
    ("show progs |", "'|' needs a command"),
    ("show progs >", "'>' needs a file name"),
    ("show progs > a b", "after the output file"),
    ("show progs > a > b", "only one '>'"),
    ("show progs > | wc", "'>' needs a file name"),
    ("show progs > f | wc", "'>' and '|' on one line"),
])
def test_misplaced_operators_are_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        lex(text)


def test_lenient_view_for_the_completer() -> None:
    line = lex("trace kfunc 'tcp_v", strict=False)
    assert line.argv == ["trace", "kfunc"] and line.open_quote == "'"
    assert line.partial is not None and line.partial.text == "tcp_v"
    assert lex("show progs ", strict=False).partial is None
    assert lex("show progs | gr", strict=False).after_operator == "|"
    assert lex("show progs > /tm", strict=False).after_operator == ">"
