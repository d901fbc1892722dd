"""Preconditions as data: a command names the features it needs (``@command(...,
requires=("tracing-prog",))``); this module asks kernel/features.py, which alone says why a
feature is missing and what would fix it, refuses the command in one line before it runs, and
tells ``help`` which commands this machine cannot run. Results are kept for the session (a
check may load a BPF program); alternatives (``"kprobes|kprobe-multi"``) stop at the first
that is there, cheapest first as written."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bpflbr_shell.errors import FeatureError

if TYPE_CHECKING:
    from bpflbr_shell.shell.context import Context
    from bpflbr_shell.shell.registry import Command


def feature(ctx: Context, name: str) -> Any:
    """The named feature's row (kernel.features.Feature), checked once per session."""
    cache: dict[str, Any] = ctx.state.setdefault("features", {})
    if name not in cache:
        from bpflbr_shell.kernel import features

        (cache[name],) = features.probe_features([name])
    return cache[name]


def unmet(ctx: Context, cmd: Command) -> FeatureError | None:
    """Why ``cmd`` cannot run here (the first requirement none of whose alternatives is
    available), or None."""
    for need in cmd.requires:
        rows = []
        for name in need.split("|"):
            row = feature(ctx, name)
            if row.available:
                break
            rows.append(row)
        else:
            why = "; ".join(f"{r.name}: {r.detail}" for r in rows)
            fixes = [r.fix for r in rows if r.fix]
            one = "needs " + (rows[0].name if len(rows) == 1 else "one of " +
                              ", ".join(r.name for r in rows))
            return FeatureError(f"{cmd.name} {one} ({why})",
                                (fixes[0] + "; " if fixes else "") + "see 'show features'")
    return None


def check(ctx: Context, cmd: Command) -> None:
    """Raise the one-line FeatureError when ``cmd``'s features are missing here."""
    err = unmet(ctx, cmd)
    if err is not None:
        raise err
