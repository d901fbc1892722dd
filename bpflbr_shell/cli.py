"""``bpflbr-shell`` command line: run commands (-c), scripts (-x), stdin, or the REPL.

Exit rules (gdb-like, strict for scripts):

- ``-c CMD`` / ``-x FILE`` run in the order given, then the program exits; the first failure
  stops the run with status 1. ``-i`` continues into the REPL afterwards (failures then only
  print, as gdb's ``-ex`` does).
- Without ``-c``/``-x``: a terminal gets the REPL; anything else on stdin is read as a script
  (no prompt, no banner) that stops at the first failing line with status 1.
- ``--batch`` never starts the REPL (overrides ``-i``; with nothing else to do it reads stdin).
- ``quit N`` exits with status N.
- First, unless ``--nx``: installed plugins and ``~/.config/bpflbr-shell/commands/*.py``
  load (a broken one is reported, the shell goes on), then ``init.lbr`` there runs (a
  failure there counts as the first failing step). ``$XDG_CONFIG_HOME`` is honoured.

Start-up stays cheap: prompt_toolkit is imported only when the REPL starts, and the kernel view
(bpf(2), BCC, drgn) only when a command first touches ``ctx.kernel``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Sequence
from typing import Any

from bpflbr_shell import __version__
from bpflbr_shell.errors import FeatureError


class _Step(argparse.Action):
    """Collect ``-c`` and ``-x`` into one ordered list of (kind, value)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        steps = getattr(namespace, "steps", None) or []
        steps.append((self.const, values))
        namespace.steps = steps


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bpflbr-shell",
        description="An interactive shell for seeing what the Linux kernel and its BPF "
                    "programs really executed.",
        epilog="Without -c/-x a terminal gets the interactive shell; piped stdin is run as a "
               "command script. Type 'help' inside the shell for its commands.",
    )
    parser.add_argument("-c", "--command", metavar="CMD", action=_Step, const="c", dest="steps",
                        help="run a shell command (repeatable; runs in order with -x)")
    parser.add_argument("-x", "--source", metavar="FILE", action=_Step, const="x", dest="steps",
                        help="run a command script (.lbr), like 'source FILE' (repeatable)")
    parser.add_argument("-i", "--interactive", action="store_true",
                        help="enter the shell after the -c/-x commands")
    parser.add_argument("--batch", action="store_true",
                        help="never start the interactive shell; stop and exit 1 at the "
                             "first failing command")
    parser.add_argument("-q", "--quiet", action="store_true", help="no start-up banner")
    parser.add_argument("--nx", action="store_true",
                        help="do not load ~/.config/bpflbr-shell/init.lbr, commands/*.py "
                             "or installed plugins")
    parser.add_argument("--version", action="version", version=f"bpflbr-shell {__version__}")
    parser.set_defaults(steps=[])
    return parser


def open_kernel_view(ctx: Any) -> Any:
    """``ctx.kernel`` factory: the live kernel view, imported and opened only on first use.

    The kernel layer provides ``bpflbr_shell.kernel.open_kernel(ctx)``; until it does, commands
    that need the kernel get a clear FeatureError instead of a crash.
    """
    try:
        from bpflbr_shell.kernel import open_kernel
    except ImportError as exc:
        if exc.name not in (None, "bpflbr_shell.kernel"):
            raise
        raise FeatureError("the live kernel view is not available in this build",
                           "bpflbr_shell.kernel.open_kernel is missing") from None
    return open_kernel(ctx)


def _run(opts: argparse.Namespace) -> int:
    from bpflbr_shell.shell import Context, load_builtin_commands, set_kernel_factory
    from bpflbr_shell.shell.runner import execute_line, run_guarded
    from bpflbr_shell.shell.scripts import execute_script, run_file, run_init

    set_kernel_factory(open_kernel_view)
    ctx = Context(load_builtin_commands())
    try:
        keep_going = opts.interactive and not opts.batch
        failed = False
        if not opts.nx:
            from bpflbr_shell.shell.extensions import autoload

            autoload(ctx)
            if not run_init(ctx):
                failed = True
                if ctx.exit_requested:
                    return ctx.exit_code
                if opts.batch or (opts.steps and not keep_going):
                    return 1
            if ctx.exit_requested:
                return ctx.exit_code
        for kind, value in opts.steps:
            step = execute_line if kind == "c" else run_file
            ok = run_guarded(ctx, functools.partial(step, ctx, value))
            if ctx.exit_requested:
                return ctx.exit_code
            if not ok:
                failed = True
                if not keep_going:
                    return 1
        if opts.steps and not keep_going:
            return 1 if failed else 0

        if sys.stdin.isatty() and not opts.batch:
            from bpflbr_shell.shell.repl import run_repl

            if not opts.quiet:
                ctx.print(f"bpflbr-shell {__version__}: 'help' lists commands, Ctrl-D quits.")
            return run_repl(ctx)

        ok = run_guarded(ctx, lambda: execute_script(ctx, "<stdin>", sys.stdin))
        if ctx.exit_requested:
            return ctx.exit_code
        return 0 if ok else 1
    finally:
        ctx.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bpflbr-shell`` script and ``python -m bpflbr_shell``."""
    try:
        opts = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, bad options: argparse already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return _run(opts)
    except BrokenPipeError:
        # `bpflbr-shell -c 'show progs' | head`: the reader left; exit quietly like cat does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        return 130
