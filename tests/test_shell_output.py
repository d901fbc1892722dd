"""The presenter, pipes and redirections, and the registry's rules (issue: one presenter).

Unit tests drive the runner in-process on commands that need no kernel; the live ones run
``bpflbr-shell --batch`` as a user does, with ``bpftool`` as the oracle for ``show progs``."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bpflbr_shell.errors import UsageError, UserError
from bpflbr_shell.render.present import Settings, Table, Text
from bpflbr_shell.shell import Context, load_builtin_commands
from bpflbr_shell.shell.runner import execute_line, run_command

SHELL = [sys.executable, "-m", "bpflbr_shell"]


@pytest.fixture()
def ctx() -> Context:
    return Context(load_builtin_commands(), out=io.StringIO(), err=io.StringIO())


def out(ctx: Context) -> str:
    assert isinstance(ctx.out, io.StringIO)
    return ctx.out.getvalue()


# ---- commands return records; one presenter ----
def test_commands_return_records_and_the_presenter_renders_them(ctx: Context) -> None:
    settings = run_command(ctx, "show settings")
    assert isinstance(settings, Settings)
    assert dict((n, v) for n, v, _ in settings.items)["lbr-trim"] is True
    assert isinstance(run_command(ctx, "trace list"), Table)
    assert isinstance(run_command(ctx, "help"), Text)
    assert out(ctx) == ""  # run_command presents nothing
    execute_line(ctx, "show settings --json")
    assert json.loads(out(ctx)) == {n: v for n, v, _ in settings.items}


def test_every_command_takes_json(ctx: Context) -> None:
    for cmd in ctx.registry.commands():
        if cmd.raw:
            continue
        assert "--json" in cmd.parser._option_string_actions, cmd.name


@pytest.mark.parametrize("line", ["trace list --json", "help --json", "help trace --json",
                                  "show stats --json", "show events --json"])
def test_json_output_is_json_only(ctx: Context, line: str) -> None:
    execute_line(ctx, line)
    json.loads(out(ctx))


def test_run_command_refuses_pipes(ctx: Context) -> None:
    with pytest.raises(UsageError, match="records"):
        run_command(ctx, "help | wc -l")


# ---- the registry's rules ----
def test_options_are_never_abbreviated(ctx: Context) -> None:
    with pytest.raises(UsageError, match="unrecognized arguments: --js"):
        execute_line(ctx, "show settings --js")


def test_direction_options_are_mutually_exclusive(ctx: Context) -> None:
    with pytest.raises(UsageError, match="not allowed with"):
        execute_line(ctx, "trace prog 1 --entry --exit")


def test_help_is_grouped_and_names_defaults(ctx: Context) -> None:
    execute_line(ctx, "help")
    text = out(ctx)
    for category in ("tracing:", "events:", "programs:", "kernel:", "shell:"):
        assert category in text
    assert text.index("tracing:") < text.index("trace kfunc") < text.index("events:")
    ctx.out = io.StringIO()
    execute_line(ctx, "help trace kfunc")
    assert "(default: auto)" in out(ctx)
    assert "--exit" in out(ctx) and "(default: False)" not in out(ctx)


# ---- > FILE and | PIPELINE ----
def test_redirect_writes_a_private_file_and_appends(ctx: Context, tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    execute_line(ctx, f"show settings lbr-trim > {target}")
    execute_line(ctx, f"help quit >> '{target}'")
    text = target.read_text()
    assert text.startswith("  lbr-trim") and "usage: quit" in text
    execute_line(ctx, f"echo raw > {target}")  # raw commands see their text as typed
    assert out(ctx) == f"raw > {target}\n"
    ctx.out = io.StringIO()
    assert target.stat().st_mode & 0o777 == 0o600
    execute_line(ctx, f"show settings --json > {target}")
    assert "lbr-trim" in json.loads(target.read_text())
    assert out(ctx) == ""


def test_redirect_refuses_a_symlink(ctx: Context, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    link = tmp_path / "link"
    link.symlink_to(victim)
    with pytest.raises(UserError, match="symlink"):
        execute_line(ctx, f"help > {link}")
    assert victim.read_text() == "keep\n"


def _batch(*lines: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    argv = [*SHELL, "--batch"]
    for line in lines:
        argv += ["-c", line]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env=env or dict(os.environ))


def test_pipe_in_batch_mode() -> None:
    plain = _batch("help")
    piped = _batch("help | wc -l")
    assert plain.returncode == piped.returncode == 0, piped.stderr
    assert int(piped.stdout.strip()) == len(plain.stdout.splitlines())


def test_a_pipeline_that_stops_reading_ends_quietly() -> None:
    r = _batch("help | head -n 2", "echo after")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "after" and len(r.stdout.splitlines()) == 3
    assert "error" not in r.stderr


# ---- live: show progs against bpftool ----
@pytest.mark.live
def test_show_progs_pipe_and_json_file_in_batch(require_root: None, example_workload,
                                                tmp_path: Path) -> None:
    bpftool = shutil.which("bpftool")
    if bpftool is None:
        pytest.skip("needs bpftool")
    target = tmp_path / "progs.json"
    r = _batch("show progs | wc -l", f"show progs --json > {target}")
    assert r.returncode == 0, r.stderr
    listed = json.loads(target.read_text())
    theirs = json.loads(subprocess.run([bpftool, "prog", "show", "--json"], check=True,
                                       capture_output=True, text=True).stdout)
    assert set(example_workload) <= {p["id"] for p in listed}
    # one header line and one line per program, as many as the JSON lists (progs come and
    # go between the two commands on a busy machine: compare with the same run's JSON)
    assert int(r.stdout.strip()) == len(listed) + 1
    assert {p["id"] for p in listed} & {p["id"] for p in theirs} >= set(example_workload)
    assert target.stat().st_mode & 0o777 == 0o600
