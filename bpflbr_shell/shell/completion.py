"""Tab completion for the REPL: command words, options, and argument values via hooks.

Everything is derived from the registry and the commands' argparse parsers, so a new command
gets completion for free; dynamic values (prog ids, kernel symbols, paths) come from the
``completer=`` / ``completers={...}`` / ``complete=`` hooks a command declares. The analysis
(:func:`candidates`) is pure so it can be tested without a terminal; :class:`ShellCompleter` is
the thin prompt_toolkit adapter.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from bpflbr_shell.shell.context import Context
from bpflbr_shell.shell.lexer import lex
from bpflbr_shell.shell.registry import Command, complete_path

_NEEDS_QUOTES = re.compile(r"[\s'\"\\;|&<>()$`]")


@dataclass(frozen=True)
class Candidate:
    text: str
    meta: str = ""


def split_for_completion(text: str) -> tuple[list[str], str, int]:
    """Words before the cursor, the (unquoted) word being typed, and its raw length: the
    runner's own lexer, lenient (an open quote just means the current word continues)."""
    line = lex(text, strict=False)
    if line.partial is None:
        return line.argv, "", 0
    return line.argv, line.partial.text, len(text) - line.partial.start


def _normalise(items: Iterable[str | tuple[str, str]]) -> Iterator[Candidate]:
    for item in items:
        if isinstance(item, tuple):
            yield Candidate(str(item[0]), str(item[1]))
        else:
            yield Candidate(str(item))


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def _positional_for(cmd: Command, words: list[str]) -> argparse.Action | None:
    """The positional action the next word would fill, given the argument words so far."""
    parser = cmd.parser
    options = {s: a for a in parser._actions for s in a.option_strings}
    count = 0
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word.startswith("-") and word != "-":
            action = options.get(word.split("=", 1)[0])
            skip = action is not None and _takes_value(action) and "=" not in word
        else:
            count += 1
    for action in parser._actions:
        if action.option_strings:
            continue
        nargs = action.nargs
        if nargs in ("*", "+", argparse.REMAINDER):
            return action
        width = nargs if isinstance(nargs, int) else 1
        if count < width:
            return action
        count -= width
    return None


def _values(ctx: Context, cmd: Command, action: argparse.Action, prefix: str) -> list[Candidate]:
    hook = cmd.value_completer(action)
    if hook is not None:
        return list(_normalise(hook(ctx, prefix)))
    if action.choices is not None:
        return [Candidate(str(c)) for c in action.choices]
    return []


def _complete_args(ctx: Context, cmd: Command, words: list[str], prefix: str) -> list[Candidate]:
    if cmd.raw:
        return list(_normalise(cmd.complete(ctx, words, prefix))) if cmd.complete else []
    parser = cmd.parser
    if prefix.startswith("-"):
        out = []
        for action in parser._actions:
            for opt in action.option_strings:
                if prefix.startswith("--") and not opt.startswith("--"):
                    continue
                out.append(Candidate(opt, action.help or ""))
        return out
    if words and words[-1].startswith("-") and "=" not in words[-1]:
        options = {s: a for a in parser._actions for s in a.option_strings}
        option = options.get(words[-1])
        if option is not None and _takes_value(option):
            return _values(ctx, cmd, option, prefix)
    if cmd.complete is not None:
        positional = [w for w in words if not w.startswith("-")]
        return list(_normalise(cmd.complete(ctx, positional, prefix)))
    positional_action = _positional_for(cmd, words)
    return _values(ctx, cmd, positional_action, prefix) if positional_action is not None else []


def candidates(ctx: Context, text: str) -> tuple[list[Candidate], int]:
    """Completions for ``text`` (the line up to the cursor) and how many chars they replace.

    A failing hook (no privilege, kernel not readable) yields no candidates rather than an
    error: completion must never break the prompt.
    """
    line = lex(text, strict=False)
    if line.after_operator == "|":
        return [], 0  # a shell pipeline: not ours to complete
    words, prefix, raw_len = split_for_completion(text)
    if line.after_operator == ">":  # the output file
        return [Candidate(p) for p in complete_path(ctx, prefix) if p.startswith(prefix)], \
            raw_len
    registry = ctx.registry
    found: list[Candidate] = []
    cmd = None
    used = 0
    for k in range(len(words), 0, -1):
        cmd = registry.get(" ".join(words[:k]))
        if cmd is not None:
            used = k
            break
    try:
        if cmd is None or (used == len(words) and registry.subcommands(words)):
            found.extend(_normalise(registry.next_words(words, prefix)))
        if cmd is not None:
            found.extend(_complete_args(ctx, cmd, words[used:], prefix))
    except Exception:  # noqa: BLE001 - see docstring
        pass
    unique = {c.text: c for c in found if c.text.startswith(prefix)}
    return [unique[t] for t in sorted(unique)], raw_len


def quote_word(word: str) -> str:
    """Quote a completion only when it would not survive shlex as typed."""
    if not _NEEDS_QUOTES.search(word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


class ShellCompleter(Completer):
    """prompt_toolkit adapter over :func:`candidates`."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def get_completions(self, document: Document,
                        complete_event: CompleteEvent) -> Iterator[Completion]:
        found, raw_len = candidates(self.ctx, document.text_before_cursor)
        for cand in found:
            # A finished word gets its separating space, as in bash and gdb; a directory or
            # ``--opt=`` is not finished.
            tail = "" if cand.text.endswith(("/", "=")) else " "
            yield Completion(quote_word(cand.text) + tail, start_position=-raw_len,
                             display=cand.text, display_meta=cand.meta or None)
