"""One exception family for everything a user can cause.

The shell renders a :class:`UserError` as a single line (``error: ...``) and keeps running;
anything else is a bug and gets a traceback only with ``set debug on``.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; ``fix`` says how. ``caret``: (text, column) when the
    problem sits at one place of something the user typed (a filter expression)."""

    caret: tuple[str, int] | None = None

    def __init__(self, problem: str, fix: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.problem} ({self.fix})" if self.fix else self.problem


class UsageError(UserError):
    """Bad command line: unknown command, bad option, missing argument."""


class SelectorError(UserError):
    """A program selector that does not parse."""


class NotFoundError(UserError):
    """A program, symbol or file that does not exist."""


class PrivilegeError(UserError):
    """The kernel refused for lack of a capability."""


class FeatureError(UserError):
    """The running kernel (or this machine) lacks what the command needs."""


class KernelDataError(UserError):
    """The kernel returned data that breaks its own promises (e.g. line info counts)."""


class ScriptError(UserError):
    """A command script failed; carries FILE:LINE."""
