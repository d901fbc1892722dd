"""The REPL's history file as root: no symlink, no foreign file, private modes, one fd."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest
from conftest import builtins_registry

from bpflbr_shell.shell.context import Context
from bpflbr_shell.shell.repl import open_history

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def _ctx() -> Context:
    return Context(builtins_registry(), out=io.StringIO(), err=io.StringIO())


def _warnings(ctx: Context) -> list[str]:
    return ctx.stderr.getvalue().splitlines()


def test_symlink_at_history_path_refused_victim_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("root's secrets\n")
    victim.chmod(0o644)
    hist = tmp_path / "hist"
    hist.symlink_to(victim)
    ctx = _ctx()
    history = open_history(str(hist), ctx)
    history.store_string("show progs")
    assert type(history).__name__ == "InMemoryHistory"
    (line,) = _warnings(ctx)
    assert line.startswith("warning: history not saved: ") and "symlink" in line
    assert victim.read_text() == "root's secrets\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644


@ROOT_ONLY
def test_history_owned_by_another_user_refused(tmp_path: Path) -> None:
    hist = tmp_path / "hist"
    hist.write_text("\n# t\n+planted\n")
    os.chown(hist, 65534, 65534)
    ctx = _ctx()
    history = open_history(str(hist), ctx)
    assert type(history).__name__ == "InMemoryHistory"
    (line,) = _warnings(ctx)
    assert "owned by uid 65534" in line
    assert hist.read_text() == "\n# t\n+planted\n"


def test_new_history_0600_in_a_0700_directory_and_round_trip(tmp_path: Path) -> None:
    hist = tmp_path / "state" / "bpflbr" / "hist"
    history = open_history(str(hist), _ctx())
    history.store_string("show progs")
    history.store_string("trace uprobe c:getpid\n--limit 1")
    assert stat.S_IMODE(hist.stat().st_mode) == 0o600
    assert stat.S_IMODE(hist.parent.stat().st_mode) == 0o700
    again = open_history(str(hist), _ctx())
    assert list(again.load_history_strings()) == ["trace uprobe c:getpid\n--limit 1",
                                                   "show progs"]


def test_symlink_planted_after_open_is_not_followed(tmp_path: Path) -> None:
    """prompt_toolkit's FileHistory reopened the path on every command."""
    hist = tmp_path / "hist"
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    history = open_history(str(hist), _ctx())
    hist.unlink()
    hist.symlink_to(victim)
    history.store_string("echo after the swap")
    assert victim.read_text() == "precious\n"
