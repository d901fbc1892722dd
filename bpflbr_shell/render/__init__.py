"""The render layer: text (colour on a TTY) and JSON for programs, events and disassembly."""
