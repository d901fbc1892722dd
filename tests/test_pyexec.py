"""``py``/``python`` in process (no root): values, one namespace for the session, short
tracebacks of the user's code only, syntax errors with a caret, blocks in scripts naming
their lines, ``run()`` giving records, drgn's ``prog`` opened lazily or refused in one line;
and the settings: typed, validated, completed."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from conftest import builtins_registry

from bpflbr_shell.shell import load_builtin_commands
from bpflbr_shell.shell.completion import candidates
from bpflbr_shell.shell.context import SETTINGS, Context
from bpflbr_shell.shell.runner import run_line


@pytest.fixture
def ctx() -> Context:
    return Context(builtins_registry(), out=io.StringIO(), err=io.StringIO())


def out(ctx: Context) -> str:
    return ctx.stdout.getvalue()  # type: ignore[attr-defined]


def err(ctx: Context) -> str:
    return ctx.stderr.getvalue()  # type: ignore[attr-defined]


def test_values_and_one_namespace(ctx: Context) -> None:
    assert run_line(ctx, "py 6 * 7")
    assert run_line(ctx, "py total = sum(range(5))")
    assert run_line(ctx, "py total, _")
    assert run_line(ctx, "py 'esc\\x1b'")
    assert out(ctx) == "42\n(10, 42)\n'esc\\x1b'\n"
    assert err(ctx) == ""


def test_a_user_exception_shows_only_user_frames_and_the_shell_goes_on(ctx: Context) -> None:
    assert not run_line(ctx, "python")  # no lines to read here (as with -c): one error
    assert err(ctx) == "error: python: no 'end' before the end of input (close the block " \
                       "with a line saying just 'end')\n"
    ctx.stderr.truncate(0)
    ctx.stderr.seek(0)
    assert run_line(ctx, "py f = lambda x: 1 // x")
    assert not run_line(ctx, "py [f(i) for i in (1, 0)]")
    text = err(ctx)
    lines = text.splitlines()
    assert lines[0] == "Traceback (most recent call last; your code only):"
    assert all("bpflbr_shell" not in ln for ln in lines)
    assert sum(ln.startswith('  File "<py#') for ln in lines) == 3  # module, listcomp, lambda
    assert "    py [f(i) for i in (1, 0)]" not in text and "[f(i) for i in (1, 0)]" in text
    assert lines[-1] == "error: ZeroDivisionError: integer division or modulo by zero"
    assert run_line(ctx, "py 'alive'") and out(ctx).endswith("'alive'\n")


def test_a_syntax_error_is_one_line_with_a_caret(ctx: Context) -> None:
    assert not run_line(ctx, "py 1 +* 2")
    lines = err(ctx).splitlines()
    assert lines[0].startswith("error: <py#") and "SyntaxError: invalid syntax" in lines[0]
    assert lines[1] == "  1 +* 2" and lines[2] == "     ^"


def test_user_errors_inside_python_stay_one_line(ctx: Context) -> None:
    assert not run_line(ctx, "py run('show nosuch')")
    assert err(ctx).splitlines() == ["error: unknown command 'show nosuch' "
                                     "(see 'help show')"]


def test_run_returns_records_not_text(ctx: Context) -> None:
    assert run_line(ctx, "py s = run('show settings'); type(s).__name__, s['event-store']")
    assert out(ctx) == "('dict', 10000)\n"
    assert not run_line(ctx, "py run('show settings | wc -l')")
    assert "run() returns records" in err(ctx)


def test_a_python_block_in_a_script_names_its_file_line(tmp_path: Path) -> None:
    ctx = Context(load_builtin_commands(), out=io.StringIO(), err=io.StringIO())
    script = tmp_path / "b.lbr"
    script.write_text("echo start\npython\nimport math\nx = math.sqrt(16)\n"
                      "print('x', x)\nraise ValueError('bad %d' % x)\nend\necho never\n")
    assert not run_line(ctx, f"source {script}")
    assert out(ctx) == "start\nx 4.0\n"
    text = err(ctx)
    assert f'File "{script}", line 6, in <module>' in text
    assert "raise ValueError('bad %d' % x)" in text  # the script's own line 6
    assert text.rstrip().endswith(f"error: {script}:2: ValueError: bad 4")


def test_drgn_prog_is_lazy_and_says_why_it_cannot_open(ctx: Context) -> None:
    assert run_line(ctx, "py prog")
    assert out(ctx) == "<drgn Program for the live kernel (opened on first use)>\n"
    if os.path.exists("/proc/kcore") and os.geteuid() == 0:
        pytest.skip("this machine has /proc/kcore: drgn may open the kernel")
    assert not run_line(ctx, "py prog.platform")
    (line,) = err(ctx).splitlines()
    assert line.startswith("error: ")
    assert "drgn" in line and ("cannot open the live kernel" in line or "importable" in line)


def test_drgn_prog_for_a_process(ctx: Context) -> None:
    pytest.importorskip("drgn", reason="pip install drgn")
    if os.geteuid() != 0:
        pytest.skip("drgn reads /proc/PID/mem: needs root")
    assert run_line(ctx, f"py p = prog_for({os.getpid()}); "
                         "bool(p.flags & __import__('drgn').ProgramFlags.IS_LIVE)"), err(ctx)
    assert out(ctx) == "True\n"  # a live program: this process, read through drgn


def test_settings_are_typed_validated_and_complete(ctx: Context) -> None:
    for name in ("color", "disasm-syntax", "lbr-trim", "lbr-branch-types", "event-store",
                 "script-errors", "debug"):
        assert name in SETTINGS, name
    assert run_line(ctx, "set colour on")  # the British spelling is the same setting
    assert run_line(ctx, "set disasm-syntax intel")
    assert run_line(ctx, "show settings --json")
    assert '"color": "on"' in out(ctx) and '"disasm-syntax": "intel"' in out(ctx)
    assert '"lbr-trim": true' in out(ctx) and '"event-store": 10000' in out(ctx)
    for line, why in [("set disasm-syntax gas", "(one of: att, intel)"),
                      ("set lbr-trim maybe", "(one of: on, off)"),
                      ("set event-store 0", "out of range: use a number of events from 1"),
                      ("set lbr-branch-types cond,jump", "valid: any, any_call"),
                      ("set script-errors skip", "(one of: stop, continue)"),
                      ("set colr on", "did you mean 'color'?")]:
        assert not run_line(ctx, line), line
        assert why in err(ctx).splitlines()[-1], (line, err(ctx))

    def texts(line: str) -> list[str]:
        return [c.text for c in candidates(ctx, line)[0]]

    assert set(texts("set ")) >= {"color", "disasm-syntax", "script-errors", "lbr-trim"}
    assert texts("set disasm-syntax ") == ["att", "intel"]
    assert texts("set debug ") == ["off", "on"]
    assert texts("set script-errors c") == ["continue"]
    assert "cond" in texts("set lbr-branch-types ")
    assert texts("set lbr-branch-types call,any_r") == ["call,any_return"]
    assert texts("show settings disasm") == ["disasm-syntax"]


def test_branch_type_completions_are_the_kernel_layers_names() -> None:
    from bpflbr_shell.kernel.perf import BRANCH_TYPES

    load_builtin_commands()
    assert SETTINGS["lbr-branch-types"].values == tuple(BRANCH_TYPES)
