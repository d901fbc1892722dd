"""The extension API: ``from bpflbr_shell import command, on_event``.

An extension is a Python file (``source FILE.py``, ``~/.config/bpflbr-shell/commands/*.py``)
or an installed package (entry-point group ``bpflbr_shell.plugins``). Its decorators only
declare; the shell's loader (shell/extensions.py) takes the declarations after the file ran
and installs them, so this module stays tiny and imports nothing of the shell::

    import argparse
    from bpflbr_shell import command, on_event

    parser = argparse.ArgumentParser(prog="hello", description="greet someone")
    parser.add_argument("name")

    @command(parser)
    def hello(shell, args):
        return f"hello {args.name}"      # a str, or a record (render/present.py)

    @on_event
    def keep_failures(event):            # every decoded event, typed (event.retval, .args)
        return event.retval is None or event.retval < 0   # False: not stored

The command's name is the parser's ``prog``; it gets ``help``, completion (an action's
``completer = fn(shell_ctx, prefix)`` attribute adds values) and one-line usage errors like a
built-in.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: the entry-point group installed plugins declare (as drgn's ``drgn.plugins``)
PLUGIN_GROUP = "bpflbr_shell.plugins"

CommandBody = Callable[[Any, argparse.Namespace], Any]
EventHook = Callable[[Any], Any]


@dataclass(frozen=True)
class DeclaredCommand:
    parser: argparse.ArgumentParser
    func: CommandBody
    category: str = "user"


_commands: list[DeclaredCommand] = []
_hooks: list[EventHook] = []


def command(parser: argparse.ArgumentParser, *, category: str = "user"
            ) -> Callable[[CommandBody], CommandBody]:
    """Declare ``def name(shell, args)`` as the command ``parser.prog``, its arguments what
    ``parser`` parses. ``shell`` is the same object ``py``'s names come from (``.session``,
    ``.events``, ``.kernel``, ``.run(CMD)``, ``.print``)."""
    if not isinstance(parser, argparse.ArgumentParser):
        raise TypeError("@command takes an argparse.ArgumentParser (its prog is the name)")
    if not parser.prog or parser.prog == os.path.basename(sys.argv[0] or ""):
        raise ValueError("give the parser prog=NAME: it is the command's name")

    def declare(func: CommandBody) -> CommandBody:
        _commands.append(DeclaredCommand(parser, func, category))
        return func

    return declare


def on_event(func: EventHook) -> EventHook:
    """Declare a hook seeing every decoded event before it is stored; returning ``False``
    (exactly) drops the event, anything else keeps it."""
    if not callable(func):
        raise TypeError("@on_event decorates a function of one event")
    _hooks.append(func)
    return func


def take_declared() -> tuple[list[DeclaredCommand], list[EventHook]]:
    """Everything declared since the last call (the loader's side of the API)."""
    commands, hooks = list(_commands), list(_hooks)
    _commands.clear()
    _hooks.clear()
    return commands, hooks
