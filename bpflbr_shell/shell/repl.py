"""The interactive loop: prompt_toolkit PromptSession, private history, completion.

Only imported when a REPL is really going to run, so scripted use never pays for
prompt_toolkit's import.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.patch_stdout import patch_stdout

from bpflbr_shell.shell.completion import ShellCompleter
from bpflbr_shell.shell.context import Context
from bpflbr_shell.shell.runner import run_line

PROMPT = "(bpflbr) "
CONTINUATION_PROMPT = "> "
HISTORY_ENV = "BPFLBR_HISTORY"


def history_path() -> str | None:
    """``$BPFLBR_HISTORY`` or ``~/.bpflbr_shell_history``; an empty variable turns history off."""
    path = os.environ.get(HISTORY_ENV)
    if path is not None:
        return os.path.expanduser(path) or None
    return os.path.expanduser("~/.bpflbr_shell_history")


def open_history(path: str | None, ctx: Context | None = None) -> History:
    """A FileHistory readable only by its owner (commands may hold addresses, paths, pids).

    The file is created 0600 and narrowed to 0600 if it exists wider; if it cannot be used the
    session keeps an in-memory history and says so once.
    """
    if path is None:
        return InMemoryHistory()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode & 0o077:
                os.fchmod(fd, mode & 0o700)
        finally:
            os.close(fd)
    except OSError as exc:
        if ctx is not None:
            ctx.warn(f"history not saved: {path}: {exc.strerror}")
        return InMemoryHistory()
    return FileHistory(path)


def make_session(ctx: Context, history: History | None = None, **kwargs: Any) -> PromptSession:
    """The PromptSession the REPL uses (tests pass ``input=``/``output=`` through kwargs)."""
    return PromptSession(
        PROMPT,
        history=history if history is not None else open_history(history_path(), ctx),
        completer=ShellCompleter(ctx),
        complete_while_typing=False,
        enable_history_search=False,
        **kwargs,
    )


def run_repl(ctx: Context, session: PromptSession | None = None) -> int:
    """Read-eval-print until ``quit`` or Ctrl-D; returns the exit status.

    Ctrl-C at the prompt clears the line; Ctrl-C while a command runs interrupts only that
    command (run_line reports it). ``patch_stdout`` keeps output printed by background work
    (trace events) above the prompt instead of through it.
    """
    session = session or make_session(ctx)
    ctx.interactive = True

    def more(prompt: str) -> str | None:
        try:
            return session.prompt(prompt or CONTINUATION_PROMPT)
        except (EOFError, KeyboardInterrupt):
            return None

    ctx.push_reader(more)
    try:
        with patch_stdout(raw=True):
            while not ctx.exit_requested:
                try:
                    line = session.prompt(PROMPT)
                except KeyboardInterrupt:
                    continue
                except EOFError:
                    break
                run_line(ctx, line)
    finally:
        ctx.pop_reader()
    return ctx.exit_code
