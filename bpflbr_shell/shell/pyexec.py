"""``py EXPR|STMT`` and ``python ... end``: the user's own Python, in one namespace that lasts
the session (see :mod:`.api` for what it holds).

This module and :mod:`.extensions` are the only places that compile or run Python, and only
what the user typed or wrote in files they own; recordings and other data never get here.
A failure prints a traceback of the user's frames only (ours are noise to them) and becomes
one error line, so a script stops at ``FILE:LINE`` and the REPL goes on.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import contextlib
import linecache
import textwrap
import traceback
from types import CodeType
from typing import TYPE_CHECKING, Any

from bpflbr_shell.errors import FeatureError, UserError
from bpflbr_shell.render.text import safe_line
from bpflbr_shell.shell.api import Shell, Unavailable
from bpflbr_shell.shell.context import Context
from bpflbr_shell.shell.registry import command

if TYPE_CHECKING:
    from bpflbr_shell.render.present import Text

NAMESPACE = "py.namespace"
#: file names of code the user gave us (typed lines, scripts, extension files): the frames
#: a traceback shows
USER_FILES: set[str] = set()


class PythonError(UserError):
    """User code raised; its traceback (user frames) was printed already."""


# -- drgn -----------------------------------------------------------------------------------
class LazyProgram:
    """drgn's ``Program`` for the live kernel, opened on first use (drgn is imported then,
    not at start-up); where drgn cannot open it, every use raises the one-line reason."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._prog: Any = None
        self._error: UserError | None = None

    def _open(self) -> Any:
        if self._prog is not None:
            return self._prog
        if self._error is not None:
            raise self._error
        try:
            import drgn
        except ImportError as exc:
            self._error = FeatureError(f"drgn is not importable ({exc})",
                                       "pip install drgn (in this venv)")
            raise self._error from None
        prog = drgn.Program()
        try:
            prog.set_kernel()
        except (OSError, ValueError, drgn.FaultError) as exc:
            self._error = FeatureError(f"drgn cannot open the live kernel: {exc}",
                                       "it needs /proc/kcore (see 'show features'); "
                                       "prog_for(PID) opens a process instead")
            raise self._error from None
        try:
            prog.load_default_debug_info()
        except drgn.MissingDebugInfoError as exc:
            self._ctx.warn(f"drgn: {str(exc).splitlines()[0]} (no types; symbols only)")
        self._prog = prog
        return prog

    def __getattr__(self, name: str) -> Any:
        return getattr(self._open(), name)

    def __getitem__(self, key: Any) -> Any:
        return self._open()[key]

    def __repr__(self) -> str:
        if self._prog is not None:
            return repr(self._prog)
        return "<drgn Program for the live kernel (opened on first use)>"


def prog_for(pid: int) -> Any:
    """A drgn ``Program`` for process ``pid`` with its debug info (missing pieces, as the
    vdso's, are skipped)."""
    try:
        import drgn
    except ImportError as exc:
        raise FeatureError(f"drgn is not importable ({exc})", "pip install drgn") from None
    prog = drgn.Program()
    try:
        prog.set_pid(int(pid))
    except (OSError, ValueError) as exc:
        raise FeatureError(f"drgn cannot open process {pid}: {exc}",
                           "check the pid (and that you are root)") from None
    with contextlib.suppress(drgn.MissingDebugInfoError):
        prog.load_default_debug_info()
    return prog


# -- the namespace ---------------------------------------------------------------------------
def namespace(ctx: Context) -> dict[str, Any]:
    """The session's namespace, made on first use: ``session``, ``events``, ``kernel``,
    ``symbolize``, ``run``, ``prog`` (drgn, lazily), ``prog_for(PID)``, ``shell``."""
    ns: dict[str, Any] | None = ctx.state.get(NAMESPACE)
    if ns is None:
        shell = Shell(ctx)
        ns = {"__name__": "__bpflbr__", "__builtins__": builtins, "shell": shell,
              "session": shell.session, "events": shell.events,
              "symbolize": shell.symbolize, "run": shell.run,
              "prog": LazyProgram(ctx), "prog_for": prog_for}
        try:
            ns["kernel"] = ctx.kernel
        except UserError as exc:
            ns["kernel"] = Unavailable(exc)
        ctx.state[NAMESPACE] = ns
    return ns


# -- running ----------------------------------------------------------------------------------
def _compile(source: str, filename: str, line_offset: int, expression_ok: bool
             ) -> tuple[CodeType, CodeType | None]:
    """(statements, the value's expression or None): ``a = 1; a`` runs ``a = 1`` and
    shows ``a``, as Python's own prompt would. SyntaxError becomes one line with a caret."""
    tree: ast.Module | ast.Expression | None = None
    is_expr = False
    if expression_ok:
        try:
            tree = ast.parse(source, filename, "eval")
            is_expr = True
        except (SyntaxError, MemoryError, RecursionError, UnicodeError, ValueError):
            tree = None
    try:
        if tree is None:
            tree = ast.parse(source, filename, "exec")
    except (MemoryError, RecursionError):  # CPython's parser on deeply nested input
        raise PythonError(f"{filename}: the Python is too deeply nested to parse",
                          "simplify it") from None
    except (UnicodeError, ValueError):  # undecodable bytes from argv (surrogates), NUL
        raise PythonError(f"{filename}: the Python holds characters it cannot read",
                          "type it again in UTF-8") from None
    except SyntaxError as exc:
        line = (exc.lineno or 1) + line_offset
        err = PythonError(f"{filename}:{line}: SyntaxError: {exc.msg}", "check the Python")
        if exc.text:
            err.caret = (exc.text.rstrip("\n"), max(0, (exc.offset or 1) - 1))
        raise err from None
    if line_offset:
        ast.increment_lineno(tree, line_offset)
    if is_expr:
        assert isinstance(tree, ast.Expression)
        return compile(ast.Module([], []), filename, "exec"), compile(tree, filename, "eval")
    assert isinstance(tree, ast.Module)
    last: CodeType | None = None
    tail = tree.body[-1] if tree.body else None
    if expression_ok and isinstance(tail, ast.Expr):
        tree.body.pop()
        last = compile(ast.Expression(tail.value), filename, "eval")
    return compile(tree, filename, "exec"), last


def remember_source(filename: str, source: str, line_offset: int = 0) -> None:
    """Typed code has no file: keep its lines where tracebacks look for them."""
    USER_FILES.add(filename)
    if filename.startswith("<"):
        lines = ["\n"] * line_offset + [ln + "\n" for ln in source.splitlines()]
        linecache.cache[filename] = (len(source), None, lines, filename)


def report(ctx: Context, exc: BaseException) -> PythonError:
    """Print ``exc``'s traceback through the user's frames only; the error to raise."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename in USER_FILES]
    out = ctx.stderr
    if frames:
        out.write("Traceback (most recent call last; your code only):\n")
        for frame in frames:
            out.write(safe_line(f'  File "{frame.filename}", line {frame.lineno}, '
                                f"in {frame.name}") + "\n")
            if frame.line:
                out.write("    " + safe_line(frame.line.strip()) + "\n")
    message = str(exc).splitlines()[0] if str(exc) else ""
    return PythonError(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)


def run_python(ctx: Context, source: str, *, filename: str, line_offset: int = 0,
               expression_ok: bool = True) -> Any:
    """Run user code in the session namespace; an expression's value is returned (and kept
    as ``_``). User errors raised inside (``run('bad')``) stay one line; anything else is
    reported as :func:`report` does."""
    code, last = _compile(source, filename, line_offset, expression_ok)
    remember_source(filename, source, line_offset)
    ns = namespace(ctx)
    value = None
    try:
        with contextlib.redirect_stdout(ctx.stdout):
            exec(code, ns)  # noqa: S102 - the user's own typed Python
            if last is not None:
                value = eval(last, ns)  # noqa: S307 - the user's own typed Python
    except UserError:
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - SystemExit too: the shell goes on
        raise report(ctx, exc) from None
    if value is not None:
        ns["_"] = value
    return value


_counter = iter(range(1, 1 << 62))


def _where(ctx: Context, what: str) -> tuple[str, int]:
    """(file name, line offset) for code typed at ``ctx.location`` (a script) or the REPL."""
    if ctx.location is not None:
        return ctx.location[0], ctx.location[1] - 1
    return f"<{what}#{next(_counter)}>", 0


def _value_text(value: Any) -> Text | None:
    from bpflbr_shell.render.present import Text

    return None if value is None else Text(repr(value))


_NAMES_HELP = """\
Names: session (the trace session), events (stored events, typed: e.retval, e.args),
kernel (the kernel view), symbolize(addr[, pid]), run(CMD) (a command's records),
prog (drgn's Program for the live kernel, opened on first use), prog_for(PID) (drgn for a
process), shell (the same, as extension commands get it). The namespace lasts the session."""


@command("py", raw=True, help="evaluate a Python expression or run a statement",
         description="py EXPR|STMT: an expression's value is printed (and kept as _).\n\n"
                     + _NAMES_HELP)
def cmd_py(ctx: Context, args: argparse.Namespace) -> Text | None:
    return _one_line(ctx, args.text)


def _one_line(ctx: Context, text: str) -> Text | None:
    if not text:
        raise UserError("py needs an expression or statement",
                        "e.g. py len(events); 'python' alone reads a block")
    filename, offset = _where(ctx, "py")
    return _value_text(run_python(ctx, text, filename=filename, line_offset=offset))


@command("python", raw=True, help="run a block of Python (lines up to 'end'), or one line",
         description="python: the following lines, up to a line saying just 'end', run as "
                     "one block.\npython STMT: like py.\n\n" + _NAMES_HELP)
def cmd_python(ctx: Context, args: argparse.Namespace) -> Text | None:
    if args.text:
        return _one_line(ctx, args.text)
    from bpflbr_shell.shell.scripts import read_block

    filename, offset = _where(ctx, "python")
    source = textwrap.dedent("\n".join(read_block(ctx, "python", nested=False)))
    run_python(ctx, source, filename=filename, line_offset=offset + 1, expression_ok=False)
    return None
