"""Probes: BPF C from ``bpf/``, compiled by BCC, attached by BCC or (where BCC cannot) libbpf.

Nothing here imports ``bcc`` at module import time; the shell never imports probes until a
``trace`` command runs.
"""
