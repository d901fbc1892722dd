"""Commands every session has: help, quit, set, show settings, echo (``source``, ``define``
and ``document`` live with the script reader in scripts.py, ``py``/``python`` in pyexec.py)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from bpflbr_shell.errors import UsageError
from bpflbr_shell.shell import preconditions
from bpflbr_shell.shell.context import SETTINGS, Context, format_value
from bpflbr_shell.shell.registry import (
    CATEGORIES,
    Command,
    argument,
    command,
    int_range,
)

if TYPE_CHECKING:  # records load with the first command that returns one
    from bpflbr_shell.render.present import Settings, Text


def _complete_help(ctx: Context, words: list[str], prefix: str) -> list[tuple[str, str]]:
    return ctx.registry.next_words(words, prefix)


@command("help", help="list commands, or show one command's options", complete=_complete_help)
@argument("words", nargs="*", metavar="CMD", help="a command (several words for subcommands)")
def cmd_help(ctx: Context, args: argparse.Namespace) -> Text:
    from bpflbr_shell.render.present import Text

    registry = ctx.registry
    words: list[str] = args.words
    if not words:
        cmds = registry.commands()
        return Text(_grouped(ctx, cmds)
                    + "\n\nType 'help CMD' for a command's options; 'CMD -h' works too.",
                    data=[_doc(ctx, c) for c in cmds])
    subs = registry.subcommands(words)
    cmd = registry.get(" ".join(words))
    if cmd is None and not subs:
        cmd, used = registry.resolve(words)  # raises 'unknown command ... did you mean'
        if used != len(words):
            raise UsageError(f"unknown command '{' '.join(words)}'", f"try 'help {cmd.name}'")
    parts = []
    if cmd is not None:
        parts.append(cmd.parser.format_help().rstrip("\n"))
        if cmd.aliases:
            parts.append(f"\naliases: {', '.join(cmd.aliases)}")
        missing = _unmet(ctx, cmd)
        if missing is not None:
            parts.append(f"\nunavailable here: {missing}")
    if subs:
        if cmd is not None:
            parts.append("")
        parts.append(f"'{' '.join(words)}' subcommands:")
        parts.append(_rows(ctx, subs))
    return Text("\n".join(parts), data=[_doc(ctx, c) for c in ([cmd] if cmd else []) + subs])


def _doc(ctx: Context, cmd: Command) -> dict[str, object]:
    return {"name": cmd.name, "help": cmd.help, "aliases": list(cmd.aliases),
            "category": cmd.category, "usage": cmd.parser.one_line_usage(),
            "requires": list(cmd.requires), "unavailable": _unmet(ctx, cmd)}


def _grouped(ctx: Context, cmds: list[Command]) -> str:
    """The command list by category (in CATEGORIES' order), each group aligned alike."""
    groups: dict[str, list[Command]] = {}
    for cmd in cmds:
        groups.setdefault(cmd.category, []).append(cmd)
    order = [c for c in CATEGORIES if c in groups] + sorted(set(groups) - set(CATEGORIES))
    width = max((len(_label(c)) for c in cmds), default=0)
    return "\n\n".join(f"{ctx.style(cat + ':', 'bold')}\n" + _rows(ctx, groups[cat], width)
                        for cat in order)


def _label(cmd: Command) -> str:
    return cmd.name + (f" ({', '.join(cmd.aliases)})" if cmd.aliases else "")


def _rows(ctx: Context, cmds: list[Command], width: int = 0) -> str:
    width = width or max((len(_label(c)) for c in cmds), default=0)
    return "\n".join(f"  {ctx.style(_label(c).ljust(width), 'bold')}  {c.help}".rstrip()
                     + (ctx.style("  [unavailable here]", "dim") if _unmet(ctx, c) else "")
                     for c in cmds)


def _unmet(ctx: Context, cmd: Command) -> str | None:
    """Why this machine cannot run ``cmd`` (from kernel/features.py), or None."""
    if not cmd.requires:
        return None
    err = preconditions.unmet(ctx, cmd)
    return str(err) if err is not None else None


@command("quit", help="leave the shell", aliases=("exit",))
@argument("code", nargs="?", type=int_range(0, 255, "an exit status"), default=0, metavar="CODE",
          help="exit status (default 0)")
def cmd_quit(ctx: Context, args: argparse.Namespace) -> None:
    ctx.exit_requested = True
    ctx.exit_code = args.code


def _complete_set(ctx: Context, words: list[str], prefix: str) -> list[tuple[str, str]]:
    if not words:
        return [(name, SETTINGS[name].help) for name in sorted(SETTINGS)]
    if len(words) == 1:
        try:
            setting = ctx.settings.lookup(words[0])
        except UsageError:
            return []
        values = setting.completions()
        if setting.values and "," in prefix:  # a list: complete its last item
            head = prefix[: prefix.rindex(",") + 1]
            return [(head + v, "") for v in values]
        return [(v, "now" if format_value(ctx.settings[setting.name]) == v else "")
                for v in values]
    return []


@command("set", help="change a setting (see 'show settings')", complete=_complete_set)
@argument("name", metavar="NAME", help="setting name")
@argument("value", metavar="VALUE", help="new value")
def cmd_set(ctx: Context, args: argparse.Namespace) -> None:
    ctx.settings.set(args.name, args.value)


@command("show settings", help="list settings with their values")
@argument("name", nargs="?", metavar="NAME", help="only this setting",
          completer=lambda ctx, prefix: sorted(SETTINGS))
def cmd_show_settings(ctx: Context, args: argparse.Namespace) -> Settings:
    from bpflbr_shell.render.present import Settings

    items = ctx.settings.items()
    if args.name is not None:
        name = ctx.settings.lookup(args.name).name
        items = [(n, v) for n, v in items if n == name]
    return Settings([(n, v, SETTINGS[n].help) for n, v in items], format_value)


@command("echo", help="print the rest of the line verbatim (handy in scripts)", raw=True)
def cmd_echo(ctx: Context, args: argparse.Namespace) -> Text:
    from bpflbr_shell.render.present import Text

    return Text(args.text)
