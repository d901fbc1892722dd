"""The bpflbr-shell command line, run as a real process: exit codes, stdin mode, lazy imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bpflbr_shell.cli import main


def shell(*args: str, stdin: str | None = None, tmp: Path | None = None
          ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, BPFLBR_HISTORY="")
    return subprocess.run([sys.executable, "-m", "bpflbr_shell", *args], input=stdin,
                          capture_output=True, text=True, timeout=30, env=env,
                          cwd=tmp or None)


def test_help_and_version_work_in_process(capsys) -> None:
    assert main(["--help"]) == 0
    assert "usage: bpflbr-shell" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("bpflbr-shell ")
    assert main(["--no-such-option"]) == 2


def test_help_imports_nothing_heavy() -> None:
    code = ("import sys\nfrom bpflbr_shell.cli import main\nmain(['-c', 'help'])\n"
            "heavy = [m for m in ('bcc', 'drgn', 'prompt_toolkit', 'capstone') "
            "if m in sys.modules]\nprint('HEAVY', heavy)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, env=dict(os.environ, BPFLBR_HISTORY=""))
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == "HEAVY []"


def test_commands_run_in_order() -> None:
    res = shell("-c", "echo one", "-c", "echo two")
    assert (res.returncode, res.stdout, res.stderr) == (0, "one\ntwo\n", "")


def test_batch_stops_at_first_failure() -> None:
    res = shell("--batch", "-c", "echo one", "-c", "shwo", "-c", "echo never")
    assert res.returncode == 1
    assert res.stdout == "one\n"
    assert res.stderr == "error: unknown command 'shwo' (did you mean 'show'?)\n"


def test_usage_error_exit_code_and_quit_code() -> None:
    assert shell("--batch", "-c", "set debug maybe").returncode == 1
    assert shell("--batch", "-c", "quit 7", "-c", "echo never").returncode == 7


def test_script_file_errors_name_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "replay.lbr").write_text("echo start\n# comment\n\nset nosuch on\necho no\n")
    res = shell("-x", "replay.lbr", "--batch", tmp=tmp_path)
    assert res.returncode == 1
    assert res.stdout == "start\n"
    assert res.stderr.startswith("error: replay.lbr:4: unknown setting 'nosuch'")


def test_stdin_mode_has_no_prompt_noise() -> None:
    res = shell(stdin="echo a\nshow settings --json\n# c\n\necho b\n")
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert "(bpflbr)" not in res.stdout and "bpflbr-shell" not in res.stdout
    assert res.stdout.startswith("a\n{") and res.stdout.endswith("}\nb\n")


def test_stdin_mode_stops_at_first_failure_with_location() -> None:
    res = shell(stdin="echo a\nshow prgos\necho b\n")
    assert res.returncode == 1
    assert res.stdout == "a\n"
    assert res.stderr.startswith("error: <stdin>:2: unknown command 'show prgos'")


@pytest.mark.parametrize("args", [["--batch"], []])
def test_empty_stdin_is_success(args: list[str]) -> None:
    assert shell(*args, stdin="").returncode == 0


def test_cold_start_is_cheap() -> None:
    import time

    start = time.monotonic()
    res = shell("-c", "show settings")
    elapsed = time.monotonic() - start
    assert res.returncode == 0
    assert elapsed < 0.5, f"cold start took {elapsed:.2f}s"
