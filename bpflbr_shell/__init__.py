"""bpflbr-shell: see what the Linux kernel and its BPF programs really executed.

``from bpflbr_shell import command, on_event`` is the extension API (bpflbr_shell.extensions),
loaded only when asked for: importing the package stays as cheap as before.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["command", "on_event"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from bpflbr_shell import extensions

        return getattr(extensions, name)
    raise AttributeError(f"module 'bpflbr_shell' has no attribute {name!r}")
