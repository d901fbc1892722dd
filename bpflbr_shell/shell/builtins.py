"""Commands every session has: help, quit, set, show settings, source, echo."""

from __future__ import annotations

import argparse

from bpflbr_shell.errors import UsageError
from bpflbr_shell.shell.context import SETTINGS, Context, format_value
from bpflbr_shell.shell.registry import argument, command, complete_path, int_range
from bpflbr_shell.shell.runner import run_file


def _complete_help(ctx: Context, words: list[str], prefix: str) -> list[tuple[str, str]]:
    return ctx.registry.next_words(words, prefix)


@command("help", help="list commands, or show one command's options", complete=_complete_help)
@argument("words", nargs="*", metavar="CMD", help="a command (several words for subcommands)")
def cmd_help(ctx: Context, args: argparse.Namespace) -> None:
    registry = ctx.registry
    words: list[str] = args.words
    if not words:
        _print_table(ctx, registry.commands())
        ctx.print("\nType 'help CMD' for a command's options; 'CMD -h' works too.")
        return
    subs = registry.subcommands(words)
    cmd = registry.get(" ".join(words))
    if cmd is None and not subs:
        cmd, used = registry.resolve(words)  # raises 'unknown command ... did you mean'
        if used != len(words):
            raise UsageError(f"unknown command '{' '.join(words)}'", f"try 'help {cmd.name}'")
    if cmd is not None:
        ctx.write(cmd.parser.format_help())
        if cmd.aliases:
            ctx.print(f"\naliases: {', '.join(cmd.aliases)}")
    if subs:
        if cmd is not None:
            ctx.print()
        ctx.print(f"'{' '.join(words)}' subcommands:")
        _print_table(ctx, subs)


def _print_table(ctx: Context, cmds: list) -> None:
    rows = []
    for cmd in cmds:
        label = cmd.name + (f" ({', '.join(cmd.aliases)})" if cmd.aliases else "")
        rows.append((label, cmd.help))
    width = max((len(label) for label, _ in rows), default=0)
    for label, text in rows:
        ctx.print(f"  {ctx.style(label.ljust(width), 'bold')}  {text}".rstrip())


@command("quit", help="leave the shell", aliases=("exit",))
@argument("code", nargs="?", type=int_range(0, 255, "an exit status"), default=0, metavar="CODE",
          help="exit status (default 0)")
def cmd_quit(ctx: Context, args: argparse.Namespace) -> None:
    ctx.exit_requested = True
    ctx.exit_code = args.code


def _complete_set(ctx: Context, words: list[str], prefix: str) -> list[str]:
    if not words:
        return sorted(SETTINGS)
    if len(words) == 1 and words[0] in SETTINGS:
        setting = SETTINGS[words[0]]
        if setting.choices:
            return list(setting.choices)
        if isinstance(setting.default, bool):
            return ["on", "off"]
    return []


@command("set", help="change a setting (see 'show settings')", complete=_complete_set)
@argument("name", metavar="NAME", help="setting name")
@argument("value", metavar="VALUE", help="new value")
def cmd_set(ctx: Context, args: argparse.Namespace) -> None:
    ctx.settings.set(args.name, args.value)


@command("show settings", help="list settings with their values")
@argument("name", nargs="?", metavar="NAME", help="only this setting",
          completer=lambda ctx, prefix: sorted(SETTINGS))
def cmd_show_settings(ctx: Context, args: argparse.Namespace) -> None:
    items = ctx.settings.items()
    if args.name is not None:
        ctx.settings.lookup(args.name)
        items = [(n, v) for n, v in items if n == args.name]
    if args.json:
        ctx.print_json({name: value for name, value in items})
        return
    width = max((len(name) for name, _ in items), default=0)
    for name, value in items:
        ctx.print(f"  {name.ljust(width)}  {format_value(value):<6}  {SETTINGS[name].help}")


@command("source", help="run a command script (.lbr); stops at the first failing line")
@argument("file", metavar="FILE", help="script path", completer=complete_path)
def cmd_source(ctx: Context, args: argparse.Namespace) -> None:
    run_file(ctx, args.file)


@command("echo", help="print the rest of the line verbatim (handy in scripts)", raw=True)
def cmd_echo(ctx: Context, args: argparse.Namespace) -> None:
    ctx.print(args.text)
