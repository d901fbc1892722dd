"""The interactive loop: prompt_toolkit PromptSession, private history, completion.

Only imported when a REPL is really going to run, so scripted use never pays for
prompt_toolkit's import.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import ThreadedCompleter
from prompt_toolkit.history import History, InMemoryHistory
from prompt_toolkit.patch_stdout import StdoutProxy

from bpflbr_shell.errors import UserError
from bpflbr_shell.safefile import ensure_private_dir, open_safe
from bpflbr_shell.shell.completion import ShellCompleter
from bpflbr_shell.shell.context import Context
from bpflbr_shell.shell.runner import run_line

PROMPT = "(bpflbr) "
CONTINUATION_PROMPT = "> "
HISTORY_ENV = "BPFLBR_HISTORY"
#: only the newest part of a huge history file is read back (the rest stays in the file)
HISTORY_READ_LIMIT = 4 << 20


def history_path() -> str | None:
    """``$BPFLBR_HISTORY`` or ``~/.bpflbr_shell_history``; an empty variable turns history off."""
    path = os.environ.get(HISTORY_ENV)
    if path is not None:
        return os.path.expanduser(path) or None
    return os.path.expanduser("~/.bpflbr_shell_history")


class PrivateFileHistory(History):
    """prompt_toolkit's FileHistory format, read and appended through one fd opened once
    with :func:`~bpflbr_shell.safefile.open_safe` (FileHistory reopens its path on every
    command: a symlink planted later would be followed by root)."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd, self.path = fd, path
        super().__init__()

    def load_history_strings(self) -> Iterable[str]:
        size = os.fstat(self.fd).st_size
        start = max(0, size - HISTORY_READ_LIMIT)
        data = os.pread(self.fd, size - start, start)
        strings: list[str] = []
        lines: list[str] = []
        for raw in data.split(b"\n"):
            line = raw.decode("utf-8", errors="replace")
            if line.startswith("+"):
                lines.append(line[1:])
            elif lines:
                strings.append("\n".join(lines))
                lines = []
        if lines:
            strings.append("\n".join(lines))
        return reversed(strings)

    def store_string(self, string: str) -> None:
        text = f"\n# {datetime.datetime.now()}\n" + "".join(
            f"+{line}\n" for line in string.split("\n"))
        try:
            os.write(self.fd, text.encode("utf-8", errors="replace"))
        except OSError:
            pass  # a full disk must not break the prompt; the command still runs

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_history(path: str | None, ctx: Context | None = None) -> History:
    """The history file, private to the user running the shell (commands may hold addresses,
    paths, pids) and opened as :mod:`~bpflbr_shell.safefile` opens what root writes: not a
    symlink, owned by us, one link, mode 0600 (a wider one is narrowed), in a directory only
    we can change (created 0700 when missing). If it cannot be used the session keeps an
    in-memory history and says so in one line.
    """
    if path is None:
        return InMemoryHistory()
    try:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            ensure_private_dir(parent)
        fd = open_safe(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    except (OSError, UserError) as exc:
        if ctx is not None:
            why = f"{path}: {exc.strerror}" if isinstance(exc, OSError) else str(exc)
            ctx.warn(f"history not saved: {why}")
        return InMemoryHistory()
    return PrivateFileHistory(fd, path)


def make_session(ctx: Context, history: History | None = None, **kwargs: Any) -> PromptSession:
    """The PromptSession the REPL uses (tests pass ``input=``/``output=`` through kwargs)."""
    return PromptSession(
        PROMPT,
        history=history if history is not None else open_history(history_path(), ctx),
        # in a thread: a slow hook (kallsyms on first use) never freezes the prompt
        completer=ThreadedCompleter(ShellCompleter(ctx)),
        complete_while_typing=False,
        enable_history_search=False,
        **kwargs,
    )


class FdReserve:
    """File descriptors held while commands run and let go just before each prompt, so the
    prompt can always open its event loop (epoll fd and self-pipe). A trace attaching many
    probes once took the last fd and the REPL died in asyncio (``_UnixSelectorEventLoop``
    without ``_ssock``)."""

    def __init__(self, count: int = 8) -> None:
        self.count = count
        self.fds: list[int] = []

    def hold(self) -> None:
        while len(self.fds) < self.count:
            try:
                self.fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return  # take what is there; the next hold tries again

    def release(self) -> None:
        while self.fds:
            os.close(self.fds.pop())


#: prompt_toolkit's patch_stdout bundles writes for 0.2 s; with a trace printing events that
#: was added to every command's answer (bench/bench_overload.py measures it)
WRITE_BUNDLE_S = 0.03


@contextlib.contextmanager
def output_above_prompt() -> Iterator[None]:
    """patch_stdout(raw=True), bundling writes for WRITE_BUNDLE_S instead of 0.2 s."""
    with StdoutProxy(sleep_between_writes=WRITE_BUNDLE_S, raw=True) as proxy:
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = proxy
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved


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
    reserve = FdReserve()
    reserve.hold()
    try:
        with output_above_prompt():
            while not ctx.exit_requested:
                reserve.release()
                try:
                    line = session.prompt(PROMPT)
                except KeyboardInterrupt:
                    continue
                except EOFError:
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EMFILE, errno.ENFILE):
                        raise
                    ctx.error_line("out of file descriptors: cannot read the next command "
                                   "(stop traces or raise 'ulimit -n')")
                    return 1
                finally:
                    reserve.hold()
                run_line(ctx, line)
    finally:
        reserve.release()
        ctx.pop_reader()
    return ctx.exit_code
