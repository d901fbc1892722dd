"""The command registry: ``@command`` + argparse, multi-word names, longest-prefix dispatch.

Commands are plain functions ``fn(ctx, args)``; their arguments are declared with argparse so
``help CMD``, option completion and usage errors all come from one description. argparse is
tamed here: it never prints on its own and never exits; every complaint becomes a
:class:`~bpflbr_shell.errors.UsageError` that the shell renders as one line.

This module must stay cheap to import (it is on the ``bpflbr-shell -c ...`` start-up path): no
prompt_toolkit, no kernel access.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from bpflbr_shell.errors import UsageError

if TYPE_CHECKING:
    from bpflbr_shell.shell.context import Context

#: A command body. The return value is ignored; raise a UserError to fail.
CommandFunc = Callable[["Context", argparse.Namespace], Any]
#: Completes one argument value: ``fn(ctx, prefix)`` -> candidates (``str`` or
#: ``(text, meta)``). Candidates not starting with ``prefix`` are dropped by the completer.
ValueCompleter = Callable[["Context", str], Iterable["str | tuple[str, str]"]]
#: Full control over completing a command's arguments: ``fn(ctx, words, prefix)`` where
#: ``words`` are the complete argument words typed so far (after the command name).
CommandCompleter = Callable[["Context", list[str], str], Iterable["str | tuple[str, str]"]]
#: Adds arguments to a command's parser (the alternative to ``@argument``).
ParserBuilder = Callable[[argparse.ArgumentParser], None]


class UnknownCommandError(UsageError):
    """The first word(s) of a line name no command (scripts report it without the text)."""


class HelpRequested(Exception):  # noqa: N818 - control flow, not an error
    """``CMD -h``: raised instead of letting argparse print and exit."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class _HelpAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0,
                         help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        raise HelpRequested(parser.format_help())


#: ``help``'s groups, in the order it lists them (a command names its own; default "shell").
CATEGORIES = ("tracing", "events", "programs", "kernel", "shell", "user")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """"(default: X)" after an option's help when X says something: not for switches, empty
    values, or help that already names its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default in (None, False, argparse.SUPPRESS, "") or action.nargs == 0 \
                or "default" in text or not action.option_strings:
            return text
        shown = default if isinstance(default, str) else repr(default)
        return f"{text} (default: {shown})".replace("%", "%%")


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of printing usage and calling ``sys.exit``.
    Options are never abbreviated (``--js`` for ``--json`` breaks a script the day an option
    gains a sibling)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("add_help", False)
        kwargs.setdefault("exit_on_error", False)
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)
        self.register("action", "help", _HelpAction)
        self.add_argument("-h", "--help", action="help", help="show this help")

    def one_line_usage(self) -> str:
        """Usage collapsed onto one line, for the ``(fix)`` part of a UsageError."""
        text = self.format_usage().strip()
        text = text.removeprefix("usage:").strip()
        return re.sub(r"\s+", " ", text)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}", f"usage: {self.one_line_usage()}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        # Only reachable through custom actions; never let them end the process.
        raise UsageError(f"{self.prog}: {(message or 'exit requested').strip()}")

    def _print_message(self, message: str, file: Any = None) -> None:
        # argparse prints only on its way to exit(); we raise instead, so stay quiet.
        return None


def int_range(lo: int, hi: int | None = None, what: str = "a whole number"
              ) -> Callable[[str], int]:
    """argparse ``type=`` for an integer in ``lo..hi``; the complaint names the allowed range
    and quotes at most a few characters of what was typed (a 10,000-digit "number" used to
    end in Python's int-digits limit)."""
    allowed = f"{what} from {lo} to {hi}" if hi is not None else f"{what} >= {lo}"

    def parse(text: str) -> int:
        shown = text if len(text) <= 24 else text[:20] + "..."
        digits = text.strip().removeprefix("-").removeprefix("+")
        if not (digits.isascii() and digits.isdigit()) or len(digits) > 19:
            raise argparse.ArgumentTypeError(f"'{shown}' is not {allowed}")
        value = int(text)
        if value < lo or hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"{shown} is out of range: use {allowed}")
        return value

    parse.__name__ = "int"  # argparse names the type in some messages
    return parse


@dataclass(frozen=True)
class Argument:
    """One deferred ``parser.add_argument(*flags, **kwargs)`` call, plus an optional completer."""

    flags: tuple[str, ...]
    kwargs: dict[str, Any]
    completer: ValueCompleter | None = None


def argument(*flags: str, completer: ValueCompleter | None = None,
             **kwargs: Any) -> Callable[[Any], Any]:
    """Declare an argparse argument of a command (same signature as ``add_argument``).

    Stack it above or below ``@command``; arguments keep their written top-to-bottom order.
    ``completer=fn`` completes this argument's values in the REPL.
    """

    def decorate(target: Any) -> Any:
        spec = Argument(tuple(flags), dict(kwargs), completer)
        if isinstance(target, Command):
            target.arguments.insert(0, spec)
            target.reset_parser()
        else:
            # Decorators apply bottom-up, so prepend to keep the written order.
            target.__dict__.setdefault("_bpflbr_arguments", []).insert(0, spec)
        return target

    return decorate


@dataclass
class Command:
    """A registered command. ``name`` may be several words (``"show progs"``)."""

    name: str
    func: CommandFunc
    help: str = ""
    description: str | None = None
    aliases: tuple[str, ...] = ()
    arguments: list[Argument] = field(default_factory=list)
    build: ParserBuilder | None = None
    completers: dict[str, ValueCompleter] = field(default_factory=dict)
    complete: CommandCompleter | None = None
    json: bool = False
    raw: bool = False
    category: str = "shell"
    # features (kernel/features.py names) the command needs; "a|b" when either will do
    requires: tuple[str, ...] = ()
    # checked by the runner before the command runs; off for commands that check their
    # own way (a trace says why each backend it tried is missing, after the user's input)
    precheck: bool = True
    # an extension's own argparse parser: its arguments are copied into ours (``parents=``),
    # so it parses, helps and fails like a built-in
    base_parser: argparse.ArgumentParser | None = None
    _parser: CommandParser | None = field(default=None, repr=False)

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(self.name.split())

    @property
    def parser(self) -> CommandParser:
        """The argparse parser, built on first use (start-up only pays for commands it runs)."""
        if self._parser is None:
            self._parser = self._build_parser()
        return self._parser

    def reset_parser(self) -> None:
        self._parser = None

    def _build_parser(self) -> CommandParser:
        base = self.base_parser
        if base is not None:
            parser = CommandParser(prog=self.name, description=self.description or
                                   base.description or self.help or None, epilog=base.epilog,
                                   parents=[base], conflict_handler="resolve")
        else:
            parser = CommandParser(prog=self.name,
                                   description=self.description or self.help or None)
        if self.raw:
            parser.add_argument("text", nargs=argparse.REMAINDER, metavar="TEXT",
                                help="the rest of the line, verbatim")
            return parser
        for spec in self.arguments:
            action = parser.add_argument(*spec.flags, **spec.kwargs)
            if spec.completer is not None:
                self.completers.setdefault(action.dest, spec.completer)
        if self.build is not None:
            self.build(parser)
        if self.json and "--json" not in parser._option_string_actions:
            parser.add_argument("--json", action="store_true", help="print JSON instead of text")
        return parser

    def parse(self, argv: list[str]) -> argparse.Namespace:
        """Parse argument words; UsageError on any complaint, HelpRequested on ``-h``."""
        try:
            return self.parser.parse_args(argv)
        except argparse.ArgumentError as exc:  # exit_on_error=False routes some errors here
            self.parser.error(str(exc))

    def value_completer(self, action: argparse.Action) -> ValueCompleter | None:
        """The completer for one argparse action, looked up by dest or by metavar, or the
        action's own ``completer`` attribute (argcomplete's convention, for extensions)."""
        self.parser  # noqa: B018 - building the parser registers @argument completers
        own = getattr(action, "completer", None)
        if callable(own):
            return own
        for key in (action.dest, action.metavar):
            if isinstance(key, str) and key in self.completers:
                return self.completers[key]
        return None


class Registry:
    """All commands by name and alias; resolves a word list to the longest registered prefix."""

    def __init__(self) -> None:
        self._by_name: dict[tuple[str, ...], Command] = {}
        self._commands: list[Command] = []

    # -- registration ----------------------------------------------------------------------

    def command(self, name: str, *, help: str = "", description: str | None = None,
                aliases: Iterable[str] = (), build: ParserBuilder | None = None,
                completers: dict[str, ValueCompleter] | None = None,
                complete: CommandCompleter | None = None, json: bool | None = None,
                raw: bool = False, category: str = "shell", requires: Iterable[str] = (),
                precheck: bool = True) -> Callable[[CommandFunc], Command]:
        """Decorator registering ``fn(ctx, args)`` as command ``name``.

        The function returns a record (render/present.py) or None; ``--json`` (added to every
        command but ``raw`` ones) makes the presenter write it as JSON. ``raw`` commands get
        the rest of the line verbatim as ``args.text`` (no shlex, no ``|`` or ``>``), for
        things like ``py EXPR``. ``category`` groups it in ``help``. ``requires`` names the
        features it needs (``"tracing-prog"``, ``"kprobes|kprobe-multi"`` for either): the
        runner refuses it, and ``help`` marks it, where they are missing (shell/preconditions.py).
        """

        def decorate(func: CommandFunc) -> Command:
            words = tuple(name.split())
            if not words:
                raise ValueError("a command needs a name")
            cmd = Command(
                name=" ".join(words),
                func=func,
                help=help or _first_doc_line(func),
                description=description,
                aliases=tuple(" ".join(a.split()) for a in aliases),
                arguments=list(func.__dict__.get("_bpflbr_arguments", [])),
                build=build,
                completers=dict(completers or {}),
                complete=complete,
                json=not raw if json is None else json,
                raw=raw,
                category=category,
                requires=tuple(requires),
                precheck=precheck,
            )
            self.add(cmd)
            return cmd

        return decorate

    def add(self, cmd: Command) -> None:
        """Register ``cmd``; re-registering the same function (a module reload) replaces it."""
        keys = [cmd.words] + [tuple(a.split()) for a in cmd.aliases]
        for key in keys:
            old = self._by_name.get(key)
            if old is not None and _func_id(old.func) != _func_id(cmd.func):
                raise ValueError(f"command {' '.join(key)!r} is already registered")
        for key in keys:
            old = self._by_name.get(key)
            if old is not None and old in self._commands:
                self._commands.remove(old)
            self._by_name[key] = cmd
        self._commands.append(cmd)

    # -- lookup ----------------------------------------------------------------------------

    def commands(self) -> list[Command]:
        """Every command once, sorted by name."""
        return sorted(self._commands, key=lambda c: c.name)

    def names(self) -> list[tuple[str, ...]]:
        """Every name and alias, as word tuples (what the completer offers)."""
        return sorted(self._by_name)

    def get(self, name: str) -> Command | None:
        return self._by_name.get(tuple(name.split()))

    def subcommands(self, words: Sequence[str]) -> list[Command]:
        """Commands whose name extends ``words`` (``show`` -> ``show progs``, ...)."""
        n = len(words)
        found = {c.name: c for k, c in self._by_name.items()
                 if len(k) > n and k[:n] == tuple(words)}
        return [found[k] for k in sorted(found)]

    def next_words(self, words: Sequence[str], prefix: str = "") -> list[tuple[str, str]]:
        """(word, help) for the next word of every name extending ``words`` with ``prefix``.

        ``help`` is the command's one-liner, or ``...`` when the word only opens a group.
        """
        n = len(words)
        seen: dict[str, str] = {}
        for key, cmd in self._by_name.items():
            if len(key) > n and key[:n] == tuple(words) and key[n].startswith(prefix):
                meta = cmd.help if len(key) == n + 1 else "..."
                if seen.get(key[n], "...") == "...":
                    seen[key[n]] = meta
        return sorted(seen.items())

    def resolve(self, words: Sequence[str]) -> tuple[Command, int]:
        """Longest registered prefix of ``words`` -> (command, number of words it used)."""
        for n in range(len(words), 0, -1):
            cmd = self._by_name.get(tuple(words[:n]))
            if cmd is not None:
                return cmd, n
        raise self._unknown(words)

    def _unknown(self, words: Sequence[str]) -> UsageError:
        # Find how far the words walk into the name tree, to complain about the right word.
        depth = 0
        while depth < len(words) and self.subcommands(words[: depth + 1]):
            depth += 1
        if depth == 0:
            typed = words[0]
            candidates = sorted({k[0] for k in self._by_name})
        else:
            group = " ".join(words[:depth])
            subs = self.subcommands(words[:depth])
            if depth == len(words):
                choices = ", ".join(sorted({c.words[depth] for c in subs}))
                return UsageError(f"'{group}' needs a subcommand", f"one of: {choices}")
            typed = " ".join(words[: depth + 1])
            candidates = sorted({" ".join(c.words[: depth + 1]) for c in subs})
        close = difflib.get_close_matches(typed, candidates, n=1, cutoff=0.6)
        if close:
            return UnknownCommandError(f"unknown command '{typed}'",
                                       f"did you mean '{close[0]}'?")
        hint = f"see 'help {' '.join(words[:depth])}'" if depth else "type 'help' for a list"
        return UnknownCommandError(f"unknown command '{typed}'", hint)


def _first_doc_line(func: Callable[..., Any]) -> str:
    doc = (func.__doc__ or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


def _func_id(func: Callable[..., Any]) -> tuple[str, str]:
    return (getattr(func, "__module__", ""), getattr(func, "__qualname__", repr(func)))


def complete_path(ctx: Context, prefix: str) -> list[str]:
    """Value completer for file arguments (``source FILE``); directories end in ``/``."""
    expanded = os.path.expanduser(prefix)
    head, tail = os.path.split(expanded)
    try:
        names = os.listdir(head or ".")
    except OSError:
        return []
    shown_head = prefix[: len(prefix) - len(tail)]
    out = []
    for name in sorted(names):
        if not name.startswith(tail) or (name.startswith(".") and not tail.startswith(".")):
            continue
        is_dir = os.path.isdir(os.path.join(head or ".", name))
        out.append(shown_head + name + ("/" if is_dir else ""))
    return out


#: The process-wide registry the built-in and ``cmd_*`` modules register into.
REGISTRY = Registry()
#: ``@command("show progs", help=...)`` registering into :data:`REGISTRY`.
command = REGISTRY.command
