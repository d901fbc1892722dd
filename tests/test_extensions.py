"""Extensions: an ``@command(parser)`` used like a built-in (help, completion, bad arguments,
--json), broken extensions reported with their own traceback while the shell goes on, the
commands directory and ``--nx``, a plugin found through a real entry point of a package that
pip installed, refusal of extension files others could write, and that only the user's own
Python is ever compiled."""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, builtins_registry

from bpflbr_shell.shell.completion import candidates
from bpflbr_shell.shell.context import Context
from bpflbr_shell.shell.runner import run_line

EXT = '''\
import argparse
from bpflbr_shell import command

parser = argparse.ArgumentParser(prog="count-words", description="count words of a text")
parser.add_argument("words", nargs="+", help="the words")
parser.add_argument("--min", type=int, default=1, help="shortest word counted")
parser.add_argument("--case", choices=["keep", "lower"], default="keep")
parser.add_argument("--colour").completer = lambda ctx, prefix: ["red", "green"]

@command(parser)
def count_words(shell, args):
    words = [w.lower() if args.case == "lower" else w for w in args.words]
    kept = [w for w in words if len(w) >= args.min]
    from bpflbr_shell.render.present import Text
    return Text(f"{len(kept)} words", data={"count": len(kept), "words": kept})
'''


def ctx_with(tmp_path: Path, text: str = EXT, name: str = "ext.py") -> tuple[Context, Path]:
    path = tmp_path / name
    path.write_text(text)
    ctx = Context(builtins_registry(), out=io.StringIO(), err=io.StringIO())
    return ctx, path


def out(ctx: Context) -> str:
    return ctx.stdout.getvalue()  # type: ignore[attr-defined]


def err(ctx: Context) -> str:
    return ctx.stderr.getvalue()  # type: ignore[attr-defined]


def test_an_extension_command_works_like_a_builtin(tmp_path: Path) -> None:
    ctx, path = ctx_with(tmp_path)
    assert run_line(ctx, f"source {path}"), err(ctx)
    assert run_line(ctx, "count-words a bb ccc --min 2")
    assert out(ctx) == "2 words\n"
    assert run_line(ctx, "count-words A a --case lower --json")
    assert json.loads(out(ctx).split("2 words\n", 1)[1]) == {"count": 2, "words": ["a", "a"]}
    assert run_line(ctx, "help count-words")
    assert "usage: count-words [-h]" not in out(ctx)  # our -h replaces argparse's
    assert "count words of a text" in out(ctx) and "--min MIN" in out(ctx)
    assert run_line(ctx, "help") and "count-words" in out(ctx).split("user:")[1]
    # bad arguments: one line with the usage, never argparse's exit
    assert not run_line(ctx, "count-words")
    assert not run_line(ctx, "count-words x --min lots")
    assert not run_line(ctx, "count-words x --mi 3")  # no abbreviations, as built-ins
    lines = err(ctx).splitlines()
    assert len(lines) == 3 and all(ln.startswith("error: count-words: ") for ln in lines)
    assert "the following arguments are required: words" in lines[0]
    assert "invalid int value: 'lots'" in lines[1]
    assert "unrecognized arguments: --mi 3" in lines[2]
    assert "(usage: count-words" in lines[0]


def test_extension_commands_complete(tmp_path: Path) -> None:
    ctx, path = ctx_with(tmp_path)
    assert run_line(ctx, f"source {path}")

    def texts(line: str) -> list[str]:
        return [c.text for c in candidates(ctx, line)[0]]

    assert "count-words" in texts("cou")
    assert {"--min", "--case", "--colour", "--json", "--help"} <= set(texts("count-words --"))
    assert texts("count-words x --case ") == ["keep", "lower"]
    assert texts("count-words x --colour ") == ["green", "red"]
    assert texts("source ") and any(t.endswith("ext.py") for t in texts(f"source {tmp_path}/"))


def test_a_broken_extension_is_reported_and_the_shell_goes_on(tmp_path: Path) -> None:
    ctx, path = ctx_with(tmp_path, "import argparse\nfrom bpflbr_shell import command\n"
                                   "p = argparse.ArgumentParser(prog='half')\n"
                                   "@command(p)\ndef half(shell, args): pass\n"
                                   "def helper():\n    return {}['missing']\n"
                                   "helper()\n")
    assert not run_line(ctx, f"source {path}")
    text = err(ctx)
    assert "Traceback (most recent call last; your code only):" in text
    assert f'File "{path}", line 8, in <module>' in text
    assert f'File "{path}", line 7, in helper' in text
    assert "bpflbr_shell/shell" not in text  # our frames are not the user's business
    assert text.rstrip().endswith(f"error: extension {path} failed: KeyError: 'missing' "
                                  "(fix the extension)")
    assert ctx.registry.get("half") is None  # a failed file installs nothing
    assert run_line(ctx, "echo still here") and out(ctx) == "still here\n"
    bad = tmp_path / "syntax.py"
    bad.write_text("def (:\n")
    assert not run_line(ctx, f"source {bad}")
    assert f"error: {bad}:1: SyntaxError: invalid syntax" in err(ctx)


def test_an_extension_may_not_replace_a_builtin(tmp_path: Path) -> None:
    ctx, path = ctx_with(tmp_path, "import argparse\nfrom bpflbr_shell import command\n"
                                   "@command(argparse.ArgumentParser(prog='help'))\n"
                                   "def mine(shell, args): return 'hijacked'\n")
    assert not run_line(ctx, f"source {path}")
    assert "command 'help' already exists" in err(ctx)
    assert run_line(ctx, "help") and "hijacked" not in out(ctx)


def test_an_extension_command_that_raises_is_one_error(tmp_path: Path) -> None:
    ctx, path = ctx_with(tmp_path, "import argparse\nfrom bpflbr_shell import command\n"
                                   "@command(argparse.ArgumentParser(prog='boom'))\n"
                                   "def boom(shell, args):\n    return 1 / 0\n")
    assert run_line(ctx, f"source {path}")
    assert not run_line(ctx, "boom")
    assert f'File "{path}", line 5, in boom' in err(ctx)
    assert err(ctx).rstrip().endswith("error: ZeroDivisionError: division by zero")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown a file to nobody")
def test_extension_files_others_could_write_are_refused(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    ctx, path = ctx_with(tmp_path, "print('ran')\n")
    path.chmod(0o664)
    assert not run_line(ctx, f"source {path}")
    assert "the extension is writable by others (mode 664)" in err(ctx)
    path.chmod(0o644)
    os.chown(path, 65534, 65534)
    assert not run_line(ctx, f"source {path}")
    assert "the extension is owned by uid 65534" in err(ctx)
    assert "ran" not in out(ctx)


def _shell(*args: str, config: Path, extra_path: str = "") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, BPFLBR_HISTORY="", XDG_CONFIG_HOME=str(config))
    if extra_path:
        env["PYTHONPATH"] = extra_path
    return subprocess.run([sys.executable, "-m", "bpflbr_shell", *args], capture_output=True,
                          text=True, timeout=60, env=env, cwd=config)


def test_commands_dir_autoloads_and_nx_skips_it(tmp_path: Path) -> None:
    commands = tmp_path / "bpflbr-shell" / "commands"
    commands.mkdir(parents=True)
    (commands / "a_words.py").write_text(EXT)
    (commands / "b_broken.py").write_text("raise RuntimeError('broken on purpose')\n")
    res = _shell("--batch", "-c", "count-words x y", config=tmp_path)
    assert res.returncode == 0, res.stderr  # a broken extension does not stop the shell
    assert res.stdout == "2 words\n"
    assert "RuntimeError: broken on purpose" in res.stderr
    assert 'b_broken.py", line 1, in <module>' in res.stderr
    res = _shell("--nx", "--batch", "-c", "count-words x y", config=tmp_path)
    assert res.returncode == 1 and "unknown command 'count-words'" in res.stderr
    assert "broken on purpose" not in res.stderr


PLUGIN_PYPROJECT = """\
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "bpflbr-test-plugin"
version = "0.0.1"

[project.entry-points."bpflbr_shell.plugins"]
greeter = "bpflbr_test_plugin"
broken = "bpflbr_test_plugin_broken"

[tool.setuptools]
py-modules = ["bpflbr_test_plugin", "bpflbr_test_plugin_broken"]
"""
PLUGIN = """\
import argparse
from bpflbr_shell import command

parser = argparse.ArgumentParser(prog="plugin-hello", description="hello from a package")
parser.add_argument("name")

@command(parser)
def hello(shell, args):
    return f"hello {args.name}, {len(shell.events)} events stored"
"""


@pytest.fixture
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real package with a ``bpflbr_shell.plugins`` entry point, built by pip and installed
    into the test venv (this interpreter's), and uninstalled after the test."""
    src = tmp_path_factory.mktemp("plugin-src")
    (src / "pyproject.toml").write_text(PLUGIN_PYPROJECT)
    (src / "bpflbr_test_plugin.py").write_text(PLUGIN)
    (src / "bpflbr_test_plugin_broken.py").write_text("import no_such_module_here\n")
    pip = [sys.executable, "-m", "pip"]
    res = subprocess.run([*pip, "install", "--no-index", "--no-build-isolation", "--no-deps",
                          "--quiet", str(src)], capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        pytest.skip(f"pip could not build the test plugin offline: {res.stderr[-300:]}")
    try:
        from importlib.metadata import distribution

        dist = distribution("bpflbr-test-plugin")  # found by the venv's own metadata
        assert dist.entry_points.select(group="bpflbr_shell.plugins")
        yield ""
    finally:
        subprocess.run([*pip, "uninstall", "--yes", "--quiet", "bpflbr-test-plugin"],
                       capture_output=True, text=True, timeout=120, check=True)


def test_an_installed_plugin_loads_through_its_entry_point(installed_plugin: str,
                                                          tmp_path: Path) -> None:
    res = _shell("--batch", "-c", "plugin-hello you", config=tmp_path,
                 extra_path=installed_plugin)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hello you, 0 events stored\n"
    # the broken plugin beside it was reported, with its own frame, and nothing stopped
    assert "plugin broken (bpflbr_test_plugin_broken) failed: ModuleNotFoundError" \
        in res.stderr
    assert 'bpflbr_test_plugin_broken.py", line 1, in <module>' in res.stderr
    res = _shell("--batch", "-c", "help plugin-hello", config=tmp_path,
                 extra_path=installed_plugin)
    assert "hello from a package" in res.stdout
    res = _shell("--nx", "--batch", "-c", "plugin-hello you", config=tmp_path,
                 extra_path=installed_plugin)
    assert res.returncode == 1 and "unknown command 'plugin-hello'" in res.stderr


def test_importing_the_api_stays_light() -> None:
    code = ("import sys\nfrom bpflbr_shell import command, on_event\n"
            "print(sorted(m for m in sys.modules if m.startswith('bpflbr_shell')),"
            " [m for m in ('bcc', 'drgn', 'prompt_toolkit') if m in sys.modules])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30)
    assert res.stdout.strip() == "['bpflbr_shell', 'bpflbr_shell.extensions'] []", res.stderr


def test_only_the_users_python_is_ever_compiled() -> None:
    """eval/exec/compile appear only where typed code and extension files run; a recording
    or any other data file has no path to them."""
    allowed = {"bpflbr_shell/shell/pyexec.py", "bpflbr_shell/shell/extensions.py"}
    found = set()
    for path in sorted((REPO / "bpflbr_shell").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in ("eval", "exec", "compile"):
                found.add(str(path.relative_to(REPO)))
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                assert "pickle" not in names and "marshal" not in names, path
    assert found == allowed


def test_the_worked_example_loads_and_answers(tmp_path: Path) -> None:
    ctx = Context(builtins_registry(), out=io.StringIO(), err=io.StringIO())
    assert run_line(ctx, f"source {REPO / 'examples' / 'lbr_hops.py'}"), err(ctx)
    assert run_line(ctx, "hops --top 3")
    assert out(ctx) == "no events counted yet (trace something first)\n"
    assert run_line(ctx, "help hops") and "LBR hops per traced function" in out(ctx)
    assert not run_line(ctx, "hops --only-errors maybe")
    assert "argument --only-errors: invalid choice: 'maybe'" in err(ctx)
    session = ctx.state["trace"].session
    assert [g.__name__ for g in session.gates] == ["count", "keep"]
