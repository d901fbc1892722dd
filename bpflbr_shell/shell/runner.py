"""Running command lines and scripts, and the one place that turns exceptions into lines.

Every front end (REPL, ``-c``, ``-x``, stdin, ``source``) goes through :func:`execute_line`
and :func:`run_guarded`, so they all split, dispatch and report errors the same way.
"""

from __future__ import annotations

import errno
import re
import shlex
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from bpflbr_shell.errors import ScriptError, UsageError, UserError
from bpflbr_shell.shell.context import Context
from bpflbr_shell.shell.registry import HelpRequested, UnknownCommandError

#: ``source`` nesting limit: a script sourcing itself should fail, not blow the stack.
MAX_SOURCE_DEPTH = 16
#: Longest command line: shlex and fnmatch are superlinear (a 100k-character line took 22 s
#: to split, 20,000 '[' 11 s to match); no real command comes near this.
MAX_LINE = 4096
#: Largest script ``source``/``-x`` reads (``-x /dev/zero`` read until MemoryError).
MAX_SCRIPT_BYTES = 1 << 20


def strip_comment(line: str) -> str:
    """Drop a ``#`` comment: ``#`` starting a word outside quotes (``a#b`` is kept)."""
    quote: str | None = None
    escaped = False
    prev = " "
    for i, ch in enumerate(line):
        if escaped:
            escaped, ch = False, "x"  # an escaped char never starts a comment
        elif ch == "\\" and quote != "'":
            escaped = True
        elif quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and prev.isspace():
            return line[:i]
        prev = ch
    return line


def split_words(line: str) -> list[str]:
    """shlex words of a line (never a shell); unbalanced quotes are a UsageError."""
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"cannot split line: {exc}", "check the quotes") from None


def _raw_rest(line: str, nwords: int) -> str:
    """The text after the first ``nwords`` whitespace-separated words, verbatim."""
    match = re.match(r"\s*" + r"\S+\s*" * nwords, line)
    return line[match.end():].strip() if match else ""


def execute_line(ctx: Context, line: str) -> None:
    """Split, dispatch and run one command line; exceptions propagate to the caller."""
    text = line.strip()
    if not text or text.startswith("#"):
        return
    if len(text) > MAX_LINE:
        raise UsageError(f"line too long ({len(text)} characters; at most {MAX_LINE})",
                         "shorten it (globs select many names at once)")
    if "\0" in text:
        raise UsageError("the line holds a NUL character", "remove it")
    loose = text.split()
    cmd, n = ctx.registry.resolve(loose)
    if cmd.raw:
        # Raw commands (py EXPR, echo) see their text untouched: no shlex, no comments.
        import argparse

        args = argparse.Namespace(text=_raw_rest(text, n))
    else:
        words = split_words(strip_comment(text))
        if not words:
            return
        cmd, n = ctx.registry.resolve(words)
        try:
            args = cmd.parse(words[n:])
        except HelpRequested as req:
            ctx.write(req.text)
            return
    cmd.func(ctx, args)


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


def execute_script(ctx: Context, name: str, lines: Iterable[str]) -> None:
    """Run command lines from a script; the first failure stops it.

    A UserError becomes a ScriptError naming ``NAME:LINE`` (the innermost script's, when
    scripts nest). Commands that read blocks (``ctx.read_line``) consume following lines.
    """
    if ctx.source_depth >= MAX_SOURCE_DEPTH:
        raise ScriptError(f"{name}: scripts nested more than {MAX_SOURCE_DEPTH} deep",
                          "does a script source itself?")
    numbered: Iterator[tuple[int, str]] = enumerate(lines, start=1)

    def more(prompt: str) -> str | None:
        for _, extra in numbered:
            return extra.rstrip("\n")
        return None

    ctx.source_depth += 1
    ctx.push_reader(more)
    ran_any = False
    try:
        for lineno, line in numbered:
            if ctx.exit_requested:
                break
            try:
                text = line.strip()
                if text and not text.startswith("#"):
                    execute_line(ctx, text)
                    ran_any = True
            except ScriptError:
                raise
            except UserError as exc:
                if isinstance(exc, UnknownCommandError) and not ran_any:
                    # a file whose first line is no command is not a script: say so without
                    # quoting it (`-x /etc/shadow` printed the first line of the file)
                    raise ScriptError(f"{name} is not a command script (line {lineno} does "
                                      "not start with a command)", "see 'help'") from None
                raise ScriptError(f"{name}:{lineno}: {exc.problem}", exc.fix) from exc
            except Exception as exc:
                if not hasattr(exc, "bpflbr_location"):
                    exc.bpflbr_location = f"{name}:{lineno}"  # type: ignore[attr-defined]
                    exc.add_note(f"while running {name}:{lineno}")
                raise
    finally:
        ctx.pop_reader()
        ctx.source_depth -= 1


def run_file(ctx: Context, path: str) -> None:
    """``source FILE`` / ``-x FILE``: read the file (errors are user errors) and run it."""
    import os

    from bpflbr_shell.errors import NotFoundError

    full = os.path.expanduser(path)
    try:
        with open(full, "rb") as fh:
            data = fh.read(MAX_SCRIPT_BYTES + 1)
    except FileNotFoundError:
        raise NotFoundError(f"no such script: {path}", "check the path") from None
    except IsADirectoryError:
        raise NotFoundError(f"{path} is a directory, not a script", "check the path") from None
    except OSError as exc:
        raise NotFoundError(f"cannot read script {path}: {exc.strerror}", "check the file") \
            from None
    except ValueError:  # open() on a path holding NUL
        raise UsageError("the script path holds a NUL character", "check the path") from None
    # what is wrong with a file that is not a script is said without quoting it
    if len(data) > MAX_SCRIPT_BYTES:
        raise UsageError(f"{path} is not a command script (larger than {MAX_SCRIPT_BYTES} "
                         "bytes)", "check the path")
    if b"\0" in data:
        raise UsageError(f"{path} is not a command script (it holds NUL bytes)",
                         "check the path")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not a command script (not UTF-8 text at byte "
                         f"{exc.start})", "check the path") from None
    execute_script(ctx, path, text.splitlines())
