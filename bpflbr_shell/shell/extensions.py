"""Loading Python extensions and installing what they declare (bpflbr_shell/extensions.py).

Three sources, all the user's own choice: ``source FILE.py``, the files in
``~/.config/bpflbr-shell/commands/*.py`` at start-up, and installed packages naming a module
(or a ``setup(shell)`` function) in the entry-point group ``bpflbr_shell.plugins``. Files
are read as root reads what it runs (safefile.read_trusted). A broken extension is reported
with the traceback of its own code and installs nothing; the shell goes on.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bpflbr_shell import extensions, safefile
from bpflbr_shell.errors import UsageError, UserError
from bpflbr_shell.render.text import safe_line
from bpflbr_shell.shell.api import Shell, TypedEvent
from bpflbr_shell.shell.context import Context
from bpflbr_shell.shell.pyexec import USER_FILES, PythonError, report
from bpflbr_shell.shell.registry import Command
from bpflbr_shell.shell.runner import run_guarded

#: an extension file larger than this is not one
MAX_EXTENSION_BYTES = 1 << 20
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class ExtensionCommand(Command):
    """A command an extension declared; ``source`` says where from (``help`` shows it)."""

    source: str = ""


def _result(value: Any) -> Any:
    """What an extension command returned, as a record the presenter knows."""
    from bpflbr_shell.render import present

    if value is None:
        return None
    if isinstance(value, str):
        return present.Text(value)
    if type(value).__module__ == present.__name__:
        return value
    return present.Text(repr(value), data=value)


def _command_of(declared: extensions.DeclaredCommand, source: str) -> ExtensionCommand:
    parser, func = declared.parser, declared.func

    def run(ctx: Context, args: argparse.Namespace) -> Any:
        try:
            return _result(func(Shell(ctx), args))
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - the extension's bug, told as one
            raise report(ctx, exc) from None

    run.__module__, run.__qualname__ = "bpflbr_shell.ext", f"{source}:{parser.prog}"
    doc = (func.__doc__ or "").strip()
    help_ = parser.description or (doc.splitlines()[0] if doc else f"from {source}")
    return ExtensionCommand(name=" ".join(parser.prog.split()), func=run,
                            help=help_.splitlines()[0], json=True, category=declared.category,
                            base_parser=parser, source=source)


def install(ctx: Context, source: str) -> list[str]:
    """Install everything declared since the last take; the command names. A command that
    would replace a built-in (or another extension's) is refused and nothing is installed."""
    commands, hooks = extensions.take_declared()
    made = [_command_of(d, source) for d in commands]
    for cmd in made:
        old = ctx.registry.get(cmd.name)
        if old is not None and not (isinstance(old, ExtensionCommand) and old.source == source) \
                or old is None and ctx.registry.subcommands(cmd.words):
            raise UsageError(f"{source}: command '{cmd.name}' already exists",
                             "give the parser another prog=")
    for cmd in made:
        ctx.registry.add(cmd)
    if hooks:
        session = Shell(ctx).session
        for hook in hooks:
            session.gates.append(_gate(session, hook))
    return [c.name for c in made]


def _gate(session: Any, hook: Callable[[Any], Any]) -> Callable[[Any], object]:
    def gate(event: Any) -> object:
        return hook(TypedEvent.of(session, event))

    gate.__name__ = getattr(hook, "__name__", "hook")
    return gate


def load_file(ctx: Context, path: str) -> list[str]:
    """Run an extension file (ours alone to write, as safefile checks) and install what it
    declares; its command names."""
    full = os.path.abspath(os.path.expanduser(path))
    shown = safe_line(path)
    try:
        data = safefile.read_trusted(full, MAX_EXTENSION_BYTES, "extension")
    except FileNotFoundError:
        raise UsageError(f"no such extension: {shown}", "check the path") from None
    except OSError as exc:
        raise UsageError(f"cannot read extension {shown}: {exc.strerror}",
                         "check the file") from None
    if len(data) > MAX_EXTENSION_BYTES:
        raise UsageError(f"{shown} is larger than {MAX_EXTENSION_BYTES} bytes",
                         "an extension is a Python source file")
    stem = os.path.splitext(os.path.basename(full))[0]
    module = types.ModuleType(f"bpflbr_shell_ext_{stem}")
    module.__file__ = full
    extensions.take_declared()  # nothing half-declared from before counts as this file's
    USER_FILES.add(full)
    try:
        code = compile(data, full, "exec")
        sys.modules[module.__name__] = module  # dataclasses and typing look modules up
        exec(code, module.__dict__)  # noqa: S102 - the user's own extension file
    except SyntaxError as exc:
        extensions.take_declared()
        raise UsageError(f"{shown}:{exc.lineno}: SyntaxError: {exc.msg}",
                         "fix the extension") from None
    except (KeyboardInterrupt, PythonError):
        extensions.take_declared()
        raise
    except BaseException as exc:  # noqa: BLE001 - its bug: reported, the shell goes on
        extensions.take_declared()
        err = report(ctx, exc)
        raise UsageError(f"extension {shown} failed: {err.problem}", "fix the extension") \
            from None
    return install(ctx, shown)


def _plugin_frames_only(exc: BaseException) -> None:
    """Make a plugin's frames count as user code for :func:`report` (they are not ours)."""
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if not name.startswith((_PACKAGE_DIR, "<frozen")) and "importlib" not in name:
            USER_FILES.add(name)
        tb = tb.tb_next


def load_plugins(ctx: Context) -> list[str]:
    """Every installed ``bpflbr_shell.plugins`` entry point, each in its own guard; the names
    of the plugins that loaded."""
    from importlib.metadata import entry_points

    loaded = []
    for ep in sorted(entry_points(group=extensions.PLUGIN_GROUP), key=lambda e: e.name):
        def one(ep: Any = ep) -> None:
            extensions.take_declared()
            try:
                obj = ep.load()
                if callable(obj) and not isinstance(obj, type):
                    obj(Shell(ctx))
            except (UserError, KeyboardInterrupt):
                extensions.take_declared()
                raise
            except BaseException as exc:  # noqa: BLE001 - its bug: reported, we go on
                extensions.take_declared()
                _plugin_frames_only(exc)
                err = report(ctx, exc)
                raise UsageError(f"plugin {safe_line(ep.name)} ({safe_line(ep.value)}) "
                                 f"failed: {err.problem}", "fix or uninstall it") from None
            install(ctx, f"plugin {ep.name}")

        if run_guarded(ctx, one):
            loaded.append(ep.name)
    return loaded


def commands_dir() -> str:
    from bpflbr_shell.shell.scripts import config_dir

    return os.path.join(config_dir(), "commands")


def load_commands_dir(ctx: Context) -> list[str]:
    """``~/.config/bpflbr-shell/commands/*.py`` in name order, each in its own guard."""
    done = []
    for path in sorted(glob.glob(os.path.join(glob.escape(commands_dir()), "*.py"))):
        if run_guarded(ctx, lambda p=path: load_file(ctx, p)):  # type: ignore[misc]
            done.append(path)
    return done


def autoload(ctx: Context) -> None:
    """Start-up: installed plugins, then the user's command files (``--nx`` skips both)."""
    load_plugins(ctx)
    load_commands_dir(ctx)
