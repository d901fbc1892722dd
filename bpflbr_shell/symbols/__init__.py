"""The symbols layer: addresses to functions, offsets and source lines (kernel, BPF, user)."""
