"""The shell layer: command registry, context, runner, REPL.

Writing a command module: put ``cmd_<topic>.py`` in this package and decorate functions with
``@command`` (see :mod:`bpflbr_shell.shell.registry`); :func:`load_builtin_commands` imports
every ``cmd_*`` module it finds, so no list needs editing. prompt_toolkit is only imported by
:mod:`.repl` and :mod:`.completion`, which only the interactive path loads.
"""

from __future__ import annotations

import importlib
import pkgutil

from bpflbr_shell.shell.context import Context, register_setting, set_kernel_factory
from bpflbr_shell.shell.registry import REGISTRY, Registry, argument, command

__all__ = [
    "REGISTRY", "Context", "Registry", "argument", "command", "load_builtin_commands",
    "register_setting", "set_kernel_factory",
]


#: modules holding the commands every shell has, whatever cmd_* modules exist
BUILTIN_MODULES = ("builtins", "scripts", "pyexec")


def load_builtin_commands() -> Registry:
    """Import the built-ins and every ``cmd_*`` module here; returns the filled registry."""
    for name in BUILTIN_MODULES:
        importlib.import_module(f"{__name__}.{name}")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"{__name__}.{info.name}")
    return REGISTRY
