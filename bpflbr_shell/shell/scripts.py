"""Command scripts (``.lbr``), user commands (``define``/``document``) and the init file.

A script is one command a line: ``#`` comments, blank lines ignored, a line ending in ``\\``
continued on the next. The first failing line stops it as ``FILE:LINE: message`` unless
``set script-errors continue``. Commands that read a block (``python``, ``define``) take the
following physical lines as they are (indentation kept, no continuation joined).

Files are read as :func:`~bpflbr_shell.safefile.read_trusted` reads what root runs: no
symlink, owned by the invoking user or root, writable by nobody else.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from bpflbr_shell import safefile
from bpflbr_shell.errors import NotFoundError, ScriptError, UsageError, UserError
from bpflbr_shell.render.text import safe_line
from bpflbr_shell.shell.context import Context, register_setting
from bpflbr_shell.shell.registry import (
    Command,
    HelpRequested,
    UnknownCommandError,
    argument,
    command,
    complete_path,
)
from bpflbr_shell.shell.runner import execute_line, run_guarded

#: ``source`` nesting limit: a script sourcing itself should fail, not blow the stack.
MAX_SOURCE_DEPTH = 16
#: Largest script ``source``/``-x`` reads (``-x /dev/zero`` read until MemoryError).
MAX_SCRIPT_BYTES = 1 << 20
#: Lines a ``define``/``document``/``python`` block may hold (an 'end' forgotten in a pipe
#: must not read forever into memory).
MAX_BLOCK_LINES = 10_000

register_setting("script-errors", "stop",
                 "what a failing script line does: stop (the script fails there) or "
                 "continue (reported, the script goes on, and fails at its end)",
                 choices=("stop", "continue"))


# -- reading --------------------------------------------------------------------------------
class ScriptLines:
    """A script's physical lines, numbered; :meth:`commands` joins ``\\`` continuations, and
    :meth:`raw` hands block readers the next physical line as written."""

    def __init__(self, lines: Iterable[str], first_line: int = 1) -> None:
        self._lines: Iterator[tuple[int, str]] = enumerate(lines, start=first_line)
        self.lineno = first_line - 1

    def raw(self, prompt: str = "") -> str | None:
        for lineno, line in self._lines:
            self.lineno = lineno
            return line.rstrip("\r\n")
        return None

    def commands(self) -> Iterator[tuple[int, str]]:
        """(first line number, text) of each command: comments and blank lines skipped."""
        while True:
            line = self.raw()
            if line is None:
                return
            start = self.lineno
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            while text.endswith("\\") and not text.endswith("\\\\"):
                more = self.raw()
                if more is None:
                    raise UsageError(f"line {start} ends in '\\' at the end of the script",
                                     "remove the backslash or add the line it continues")
                text = text[:-1] + more.strip()
            yield start, text


def read_script(path: str) -> str:
    """The text of a script file (any failure is one UserError line that never quotes the
    file: ``-x /etc/shadow`` must not print its first line)."""
    full = os.path.expanduser(path)
    if "\0" in full:
        raise UsageError("the script path holds a NUL character", "check the path")
    shown = safe_line(path)
    try:
        data = safefile.read_trusted(full, MAX_SCRIPT_BYTES, "script")
    except FileNotFoundError:
        raise NotFoundError(f"no such script: {shown}", "check the path") from None
    except IsADirectoryError:
        raise NotFoundError(f"{shown} is a directory, not a script", "check the path") \
            from None
    except OSError as exc:
        raise NotFoundError(f"cannot read script {shown}: {exc.strerror}", "check the file") \
            from None
    if len(data) > MAX_SCRIPT_BYTES:
        raise UsageError(f"{shown} is not a command script (larger than {MAX_SCRIPT_BYTES} "
                         "bytes)", "check the path")
    if b"\0" in data:
        raise UsageError(f"{shown} is not a command script (it holds NUL bytes)",
                         "check the path")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{shown} is not a command script (not UTF-8 text at byte "
                         f"{exc.start})", "check the path") from None


# -- running --------------------------------------------------------------------------------
def execute_script(ctx: Context, name: str, lines: Iterable[str], first_line: int = 1) -> None:
    """Run a script's commands. A UserError becomes a ScriptError naming ``NAME:LINE`` (the
    innermost script's, when scripts nest): it stops the script, or with ``script-errors
    continue`` is reported and the script goes on, failing at its end."""
    if ctx.source_depth >= MAX_SOURCE_DEPTH:
        raise ScriptError(f"{name}: scripts nested more than {MAX_SOURCE_DEPTH} deep",
                          "does a script source itself?")
    script = ScriptLines(lines, first_line)
    ctx.source_depth += 1
    ctx.push_reader(script.raw)
    saved = ctx.location
    ran_any = False
    failed = 0
    try:
        for lineno, text in _commands(name, script):
            if ctx.exit_requested:
                break
            ctx.location = (name, lineno)
            if ctx.settings["script-errors"] == "continue":
                if not run_guarded(ctx, functools.partial(_one, ctx, name, lineno, text, ran_any)):
                    failed += 1
            else:
                _one(ctx, name, lineno, text, ran_any)
            ran_any = True
    finally:
        ctx.location = saved
        ctx.pop_reader()
        ctx.source_depth -= 1
    if failed:
        raise ScriptError(f"{name}: {failed} command{'s' if failed > 1 else ''} failed",
                          "script-errors is continue: each was reported above")


def _commands(name: str, script: ScriptLines) -> Iterator[tuple[int, str]]:
    try:
        yield from script.commands()
    except UserError as exc:
        raise ScriptError(f"{name}:{script.lineno}: {exc.problem}", exc.fix) from None


def _one(ctx: Context, name: str, lineno: int, text: str, ran_any: bool) -> None:
    try:
        execute_line(ctx, text)
    except ScriptError:
        raise
    except UserError as exc:
        if isinstance(exc, UnknownCommandError) and not ran_any and lineno == 1:
            # a file whose first line is no command is not a script: say so without
            # quoting it (`-x /etc/shadow` printed the first line of the file)
            raise ScriptError(f"{name} is not a command script (line {lineno} does "
                              "not start with a command)", "see 'help'") from None
        raise ScriptError(f"{name}:{lineno}: {exc.problem}", exc.fix) from exc
    except Exception as exc:
        if not hasattr(exc, "bpflbr_location"):
            # read back by runner._internal_error: where a bug surfaced in a script
            exc.bpflbr_location = f"{name}:{lineno}"  # type: ignore[attr-defined]
            exc.add_note(f"while running {name}:{lineno}")
        raise


def run_file(ctx: Context, path: str) -> None:
    """``source FILE`` / ``-x FILE``: a ``.py`` file is an extension, anything else a
    command script."""
    if path.endswith(".py"):
        from bpflbr_shell.shell.extensions import load_file

        load_file(ctx, path)
        return
    execute_script(ctx, safe_line(path), read_script(path).splitlines())


@command("source", help="run a command script (.lbr) or load an extension (.py)")
@argument("file", metavar="FILE", help="script path (FILE.py: a Python extension)",
          completer=complete_path)
def cmd_source(ctx: Context, args: argparse.Namespace) -> None:
    run_file(ctx, args.file)


# -- blocks ---------------------------------------------------------------------------------
_OPENS_BLOCK = re.compile(r"\s*(define|document)\s+\S|\s*python\s*$")


def read_block(ctx: Context, what: str, nested: bool = True) -> list[str]:
    """Lines up to the ``end`` that closes ``what`` (``define`` bodies may hold blocks of
    their own: ``python`` ... ``end`` inside is kept whole)."""
    if ctx.interactive and not ctx.source_depth:
        ctx.status(f"Type the lines of {what}; end with a line saying just 'end'.")
    body: list[str] = []
    depth = 0
    while True:
        line = ctx.read_line("> ")
        if line is None:
            raise UsageError(f"{what}: no 'end' before the end of input",
                             "close the block with a line saying just 'end'")
        if line.strip() == "end":
            if depth == 0:
                return body
            depth -= 1
        elif nested and _OPENS_BLOCK.match(line):
            depth += 1
        body.append(line)
        if len(body) > MAX_BLOCK_LINES:
            raise UsageError(f"{what}: more than {MAX_BLOCK_LINES} lines without 'end'",
                             "close the block with a line saying just 'end'")


# -- user commands --------------------------------------------------------------------------
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
_ARG = re.compile(r"\$arg(c|\d+)")


@dataclass
class UserCommand(Command):
    """A command made with ``define``: its body runs as a script with ``$arg0..$argN`` and
    ``$argc`` replaced by the words it was given (gdb's convention, words re-quoted so a
    word with spaces stays one word)."""

    body: list[str] = field(default_factory=list)
    origin: tuple[str, int] | None = None  # (script, line of the first body line)

    def parse(self, argv: list[str]) -> argparse.Namespace:
        if argv and argv[0] in ("-h", "--help"):
            raise HelpRequested(self.parser.format_help())
        return argparse.Namespace(words=list(argv))


def _build_user_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("words", nargs="*", metavar="ARG",
                        help="words for $arg0, $arg1, ... ($argc: how many)")


def substitute(body: list[str], words: list[str], name: str) -> list[str]:
    """The body with ``$argN`` / ``$argc`` replaced; a missing argument is an error."""
    def one(m: re.Match[str]) -> str:
        if m.group(1) == "c":
            return str(len(words))
        n = int(m.group(1))
        if n >= len(words):
            raise UsageError(f"{name}: missing argument $arg{n} (it was given {len(words)})",
                             f"usage: {name} ARG0 ... ARG{n}")
        return shlex.quote(words[n])

    return [_ARG.sub(one, line) for line in body]


def _run_user_command(ctx: Context, name: str, words: list[str]) -> None:
    cmd = ctx.registry.get(name)
    assert isinstance(cmd, UserCommand)
    lines = substitute(cmd.body, words, cmd.name)
    if cmd.origin is not None:
        execute_script(ctx, cmd.origin[0], lines, first_line=cmd.origin[1])
    else:
        execute_script(ctx, f"{cmd.name} (defined in the shell)", lines)


def _check_name(ctx: Context, name: str, verb: str) -> Command | None:
    if not _NAME.fullmatch(name):
        raise UsageError(f"{verb}: bad command name '{name[:40]}'",
                         "use letters, digits, '-' and '_', starting with a letter")
    old = ctx.registry.get(name)
    if old is not None and not isinstance(old, UserCommand) \
            or old is None and ctx.registry.subcommands([name]):
        raise UsageError(f"{verb}: '{name}' is a built-in command",
                         "choose another name (user commands cannot replace built-ins)")
    return old


@command("define", help="make a user command from shell commands (ends at 'end')")
@argument("name", metavar="NAME", help="the new command's name")
def cmd_define(ctx: Context, args: argparse.Namespace) -> None:
    old = _check_name(ctx, args.name, "define")
    origin = (ctx.location[0], ctx.location[1] + 1) if ctx.location else None
    body = read_block(ctx, f"define {args.name}")
    name = args.name

    def run(ctx: Context, args: argparse.Namespace) -> None:
        _run_user_command(ctx, name, args.words)

    cmd = UserCommand(name=name, func=run,
                      help=old.help if old is not None else "user-defined command",
                      description=old.description if old is not None else None,
                      build=_build_user_parser, json=False, category="user", body=body,
                      origin=origin)
    ctx.registry.add(cmd)


@command("document", help="give a user command its help text (ends at 'end')")
@argument("name", metavar="NAME", help="a command made with 'define'",
          completer=lambda ctx, prefix: [c.name for c in ctx.registry.commands()
                                         if isinstance(c, UserCommand)])
def cmd_document(ctx: Context, args: argparse.Namespace) -> None:
    cmd = ctx.registry.get(args.name)
    if not isinstance(cmd, UserCommand):
        if cmd is not None or ctx.registry.subcommands([args.name]):
            raise UsageError(f"document: '{args.name}' is a built-in command",
                             "only commands made with 'define' can be documented")
        raise NotFoundError(f"document: no user command '{args.name[:40]}'",
                            "make it with 'define' first")
    lines = read_block(ctx, f"document {args.name}", nested=False)
    text = "\n".join(line.strip() for line in lines).strip()
    cmd.help = text.splitlines()[0] if text else "user-defined command"
    cmd.description = text or None
    cmd.reset_parser()


# -- start-up -------------------------------------------------------------------------------
def config_dir() -> str:
    """``$XDG_CONFIG_HOME/bpflbr-shell`` (``~/.config/bpflbr-shell`` when unset or not
    absolute, as the XDG spec says)."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):
        base = os.path.expanduser("~/.config")
    return os.path.join(base, "bpflbr-shell")


def init_file() -> str:
    return os.path.join(config_dir(), "init.lbr")


def run_init(ctx: Context) -> bool:
    """Run the init file when there is one (a missing one is fine); False when it failed
    (the failure was reported)."""
    path = init_file()
    if not os.path.lexists(path):
        return True
    return run_guarded(ctx, lambda: execute_script(ctx, safe_line(path),
                                                   read_script(path).splitlines()))
