"""Read-only view of the running kernel (bpf(2) via libbpf, BTF, kallsyms, features).

Nothing here imports the shell, and nothing privileged runs at import time.
"""

from typing import Any


def open_kernel(ctx: Any = None) -> Any:
    """The live kernel view for a shell session (imported lazily: nothing runs at import)."""
    from bpflbr_shell.kernel.view import KernelView

    return KernelView()
