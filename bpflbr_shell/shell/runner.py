"""Running command lines and scripts, and the one place that turns exceptions into lines.

Every front end (REPL, ``-c``, ``-x``, stdin, ``source``) goes through :func:`execute_line`
and :func:`run_guarded`, so they all split, dispatch and report errors the same way; scripts
(``FILE:LINE`` errors, continuation, ``define``) are read in scripts.py.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bpflbr_shell import safefile
from bpflbr_shell.errors import UsageError, UserError
from bpflbr_shell.render.present import present  # loaded now: output must not need an fd
from bpflbr_shell.render.text import safe_line
from bpflbr_shell.shell import preconditions
from bpflbr_shell.shell.context import Context
from bpflbr_shell.shell.lexer import Line, lex
from bpflbr_shell.shell.registry import Command, HelpRequested

#: Longest command line: shlex and fnmatch are superlinear (a 100k-character line took 22 s
#: to split, 20,000 '[' 11 s to match); no real command comes near this.
MAX_LINE = 4096


def split_words(line: str) -> list[str]:
    """The words of a line (shell quoting, never a shell); unbalanced quotes, ``|`` and ``>``
    are the lexer's: see :mod:`bpflbr_shell.shell.lexer`."""
    return lex(line).argv


def _raw_rest(line: str, nwords: int) -> str:
    """The text after the first ``nwords`` whitespace-separated words, verbatim."""
    match = re.match(r"\s*" + r"\S+\s*" * nwords, line)
    return line[match.end():].strip() if match else ""


def _checked(line: str) -> str | None:
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if len(text) > MAX_LINE:
        raise UsageError(f"line too long ({len(text)} characters; at most {MAX_LINE})",
                         "shorten it (globs select many names at once)")
    if "\0" in text:
        raise UsageError("the line holds a NUL character", "remove it")
    return text


def _parse(ctx: Context, text: str) -> tuple[Command, argparse.Namespace, Line] | None:
    """(command, its arguments, the lexed line) of one line; None for ``CMD -h`` (its help
    is printed) or a line of nothing but a comment."""
    cmd, n = ctx.registry.resolve(text.split())
    if cmd.raw:  # py EXPR, echo: their text untouched (no quotes, comments, | or >)
        return cmd, argparse.Namespace(text=_raw_rest(text, n)), Line()
    line = lex(text)
    if not line.words:
        return None
    cmd, n = ctx.registry.resolve(line.argv)
    try:
        return cmd, cmd.parse(line.argv[n:]), line
    except HelpRequested as req:
        ctx.write(req.text)
        return None


def run_command(ctx: Context, text: str) -> Any:
    """Run one command line and return what the command returned (its records, unrendered):
    the API under ``py``'s ``run(CMD)``. ``|`` and ``>`` are refused here: records are not
    text."""
    checked = _checked(text)
    parsed = _parse(ctx, checked) if checked else None
    if parsed is None:
        return None
    cmd, args, line = parsed
    if line.pipe is not None or line.redirect is not None:
        raise UsageError("run() returns records: '|' and '>' only apply to printed output",
                         "drop them, or print the command's output instead")
    if cmd.requires and cmd.precheck:
        preconditions.check(ctx, cmd)
    return cmd.func(ctx, args)


def execute_line(ctx: Context, text: str) -> None:
    """Split, dispatch and run one command line, and present what it returns (text, or JSON
    with ``--json``), to stdout, a file (``> FILE``) or a pipeline (``| CMD``); exceptions
    propagate to the caller."""
    checked = _checked(text)
    parsed = _parse(ctx, checked) if checked else None
    if parsed is None:
        return
    cmd, args, line = parsed
    if cmd.requires and cmd.precheck:
        preconditions.check(ctx, cmd)
    with output_to(ctx, line):
        result = cmd.func(ctx, args)
        if result is not None:
            present(result, ctx.stdout, as_json=bool(getattr(args, "json", False)),
                    color=ctx.use_color())


@contextmanager
def output_to(ctx: Context, line: Line) -> Iterator[None]:
    """Point ``ctx.stdout`` at the line's ``> FILE`` (created 0600, never through a symlink,
    ours alone) or ``| PIPELINE`` (``/bin/sh -c`` on the text the user typed: the one place
    a shell runs) while the command runs; a pipeline that stops reading (``| head``) ends
    the output quietly."""
    if line.redirect is None and line.pipe is None:
        yield
        return
    saved = ctx.out
    ctx.flush()
    if line.redirect is not None:
        path = os.path.expanduser(line.redirect)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if line.append else os.O_TRUNC)
        try:
            fd = safefile.open_safe(path, flags, 0o600)
        except OSError as exc:
            raise UsageError(f"cannot write {safe_line(line.redirect)}: {exc.strerror}",
                             "check the path") from None
        stream = os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape")
        ctx.out = stream
        try:
            yield
        finally:
            ctx.out = saved
            stream.close()
        return
    import subprocess

    assert line.pipe is not None
    sink = sys.__stdout__ if sys.__stdout__ is not None else sys.stdout
    proc = subprocess.Popen(["/bin/sh", "-c", line.pipe], stdin=subprocess.PIPE,  # noqa: S603
                            stdout=sink, text=True, encoding="utf-8", errors="replace")
    assert proc.stdin is not None
    ctx.out = proc.stdin  # type: ignore[assignment]  # a text-mode pipe: IO[str] is a TextIO
    try:
        yield
    except BrokenPipeError:
        pass  # the pipeline stopped reading: as after `| head`, the output just ends
    finally:
        ctx.out = saved
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
        proc.wait()


def run_guarded(ctx: Context, action: Callable[[], Any]) -> bool:
    """Run ``action``; report any failure as one line (or a traceback with debug on).

    Returns True on success. KeyboardInterrupt is reported as ``interrupted`` and counts as a
    failure; it never ends the shell. SystemExit is not caught (nothing here raises it).
    """
    try:
        action()
        return True
    except UserError as exc:
        ctx.error_line(str(exc))
        if exc.caret is not None:
            ctx.caret(*exc.caret)
        if ctx.settings["debug"] and exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__, file=ctx.stderr)
    except KeyboardInterrupt:
        ctx.stderr.write("^C\n")
        ctx.error_line("interrupted")
    except BrokenPipeError:
        if not ctx.interactive:
            raise  # `bpflbr-shell -c CMD | head`: the reader left; cli.main exits quietly
        ctx.error_line("output pipe closed")
    except OSError as exc:
        if exc.errno not in (errno.EMFILE, errno.ENFILE):
            return _internal_error(ctx, exc)
        ctx.error_line(f"out of file descriptors ({errno.errorcode[exc.errno]})"
                       " (stop traces with 'trace stop', or raise the limit: ulimit -n)")
    except Exception as exc:  # noqa: BLE001 - the shell must survive its own bugs
        _internal_error(ctx, exc)
    finally:
        ctx.flush()
    return False


def _internal_error(ctx: Context, exc: BaseException) -> bool:
    where = getattr(exc, "bpflbr_location", None)
    prefix = f"{where}: " if where else ""
    if ctx.settings["debug"]:
        traceback.print_exception(exc, file=ctx.stderr)
    else:
        ctx.error_line(f"{prefix}{type(exc).__name__}: {exc} "
                       "(a bug; 'set debug on' shows the traceback)", "internal error")
    return False


def run_line(ctx: Context, line: str) -> bool:
    """One line at the top level: run it, report errors, say whether it worked."""
    return run_guarded(ctx, lambda: execute_line(ctx, line))
