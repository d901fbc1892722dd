"""Live (root): preconditions as data. A command names the features it needs; the runner
refuses it in one line carrying kernel/features.py's own sentence, and ``help`` marks it, exactly
where ``show features`` says the feature is missing."""

from __future__ import annotations

import argparse
import io

import pytest

from bpflbr_shell.errors import FeatureError
from bpflbr_shell.kernel import features
from bpflbr_shell.shell import Context, load_builtin_commands
from bpflbr_shell.shell.registry import Registry
from bpflbr_shell.shell.runner import execute_line

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def rows(require_root: None) -> dict[str, features.Feature]:
    return {f.name: f for f in features.probe_features()}


def test_a_missing_feature_refuses_the_command_with_features_sentence(rows) -> None:
    missing = [f for f in rows.values() if not f.available]
    present = [f for f in rows.values() if f.available]
    if not missing or not present:
        pytest.skip("needs one feature missing and one present on this machine")
    reg = Registry()
    ran: list[str] = []

    @reg.command("needs missing", requires=(missing[0].name,))
    def _a(ctx: Context, args: argparse.Namespace) -> None:
        ran.append("missing")

    @reg.command("needs either", requires=(f"{missing[0].name}|{present[0].name}",))
    def _b(ctx: Context, args: argparse.Namespace) -> None:
        ran.append("either")

    ctx = Context(reg, out=io.StringIO(), err=io.StringIO())
    with pytest.raises(FeatureError) as err:
        execute_line(ctx, "needs missing")
    assert missing[0].detail in str(err.value) and "show features" in str(err.value)
    assert "\n" not in str(err.value) and ran == []
    execute_line(ctx, "needs either")  # one alternative present: it runs
    assert ran == ["either"]


def test_help_marks_exactly_the_commands_this_kernel_cannot_run(rows) -> None:
    ctx = Context(load_builtin_commands(), out=io.StringIO(), err=io.StringIO())
    execute_line(ctx, "help")
    listing = ctx.out.getvalue()  # type: ignore[union-attr]
    expect = {
        "trace prog": not rows["tracing-prog"].available,
        "trace kfunc": not any(rows[n].available
                               for n in ("kprobes", "kprobe-multi", "tracing-prog")),
        "trace uprobe": not rows["uprobes"].available,
    }
    for name, unavailable in expect.items():
        (line,) = [ln for ln in listing.splitlines() if ln.strip().startswith(name + " ")]
        assert ("[unavailable here]" in line) == unavailable, line
    assert "[unavailable here]" not in next(ln for ln in listing.splitlines()
                                           if ln.strip().startswith("show progs"))
