"""bpflbr-shell: see what the Linux kernel and its BPF programs really executed."""

__version__ = "0.1.0"
