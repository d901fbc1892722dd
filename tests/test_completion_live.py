"""Live (root): completion names programs from one header read each (no images, line info or
BTF per Tab); bpftool is the oracle for ids, types, names and tags."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from bpflbr_shell.kernel.view import KernelView

pytestmark = pytest.mark.live


def test_prog_names_are_headers_matching_bpftool(require_root: None, example_workload) -> None:
    bpftool = shutil.which("bpftool")
    if bpftool is None:
        pytest.skip("needs bpftool")
    view = KernelView()
    names = {i: (t, n, tag) for i, t, n, tag in view.prog_names()}
    assert view.known_progs() == []  # nothing decoded for it
    theirs = {p["id"]: p for p in json.loads(subprocess.run(
        [bpftool, "prog", "show", "--json"], check=True, capture_output=True,
        text=True).stdout)}
    for prog_id in example_workload:
        t, n, tag = names[prog_id]
        assert (t, n, tag) == (theirs[prog_id]["type"], theirs[prog_id]["name"],
                               theirs[prog_id]["tag"])
    full = view.prog(example_workload[0])  # once decoded, its full C name is offered
    assert dict((i, n) for i, _, n, _ in view.prog_names())[full.id] == full.func_name
