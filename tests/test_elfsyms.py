"""Function symbols read without bcc (probes/elfsyms.py), BCC's own reader as the oracle.

Third-party files: Debian's libc (its libc6-dbg debug file adds the local functions), bash,
libpython; the same names and addresses as ``BPF.get_user_functions_and_addresses``.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bpflbr_shell.trace.probes import elfsyms

REPO = Path(__file__).resolve().parent.parent
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
FILES = [LIBC, "/usr/bin/bash", "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0"]


@pytest.mark.parametrize("path", FILES)
@pytest.mark.parametrize("glob", ["*", "malloc", "*read*", "_int_*"])
def test_the_same_functions_as_bcc_reports(require_bcc, path: str, glob: str) -> None:
    import bcc

    if not os.path.exists(path):
        pytest.skip(f"needs {path}")
    regex = fnmatch.translate(glob)
    theirs = {(n.decode(), a) for n, a in
              bcc.BPF.get_user_functions_and_addresses(path.encode(), regex.encode())}
    assert set(elfsyms.function_symbols(path, regex)) == theirs


def test_libc_local_functions_come_from_its_debug_file() -> None:
    dbg = elfsyms.debug_file(LIBC)
    if dbg is None:
        pytest.skip("needs libc's debug file (apt-get install libc6-dbg)")
    names = {n for n, _ in elfsyms.function_symbols(LIBC, fnmatch.translate("_int_malloc"))}
    assert names == {"_int_malloc"}  # a static function: not in libc's .dynsym


def test_not_an_elf_file_is_said(tmp_path: Path) -> None:
    f = tmp_path / "script"
    f.write_text("#!/bin/sh\n")
    with pytest.raises(elfsyms.ElfError, match="not a 64-bit little-endian ELF"):
        elfsyms.function_symbols(str(f), ".*")


def test_resolving_uprobe_targets_does_not_import_bcc() -> None:
    """bcc's import is ~0.1 s of a trace's start; with the probe from the cache nothing else
    needs it."""
    script = ("import sys\n"
              "from bpflbr_shell.trace.probes.uprobe import resolve_targets\n"
              f"t = resolve_targets({LIBC!r}, 'malloc')\n"
              "print(len(t), 'bcc' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.split() == ["1", "False"], out.stderr
