"""Read-only view of the running kernel (bpf(2) via libbpf, BTF, kallsyms, features).

Nothing here imports the shell, and nothing privileged runs at import time.
"""
