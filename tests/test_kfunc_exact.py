"""VM tier (root, tracefs; the host refuses available_filter_functions): exact kernel
function names resolve straight from the ftrace list's text to what the full resolution (the
whole list parsed, kallsyms aliases) gives, without kallsyms; globs, aliases and blacklisted
names are left to the full resolution."""

from __future__ import annotations

import os

import pytest

from bpflbr_shell.trace.probes import kprobes

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(os.environ.get("BPFLBR_IN_VM") != "1", reason="needs the 6.12 VM tier "
                       "(scripts/vmtest sets BPFLBR_IN_VM=1): the host hides the ftrace list"),
]


@pytest.fixture(scope="module")
def traceable(require_root: None) -> kprobes.Traceable:
    try:
        return kprobes.traceable_functions()
    except Exception as exc:  # noqa: BLE001 - in the VM tier this is a failure, not a skip
        pytest.fail(f"the VM guest must list traceable functions: {exc}")


def test_exact_names_match_the_full_resolution(traceable: kprobes.Traceable) -> None:
    from bpflbr_shell.kernel.kallsyms import KallsymsIndex

    names = sorted({k.name for k in traceable.funcs})
    picks = [names[0], names[len(names) // 2], names[-1]]
    modular = [k for k in traceable.funcs if k.module]
    if modular:
        picks.append(modular[0].name)
    fast = kprobes.resolve_exact(picks)
    assert fast is not None
    full = kprobes.resolve_functions(picks, traceable, KallsymsIndex.load())
    assert [(k.name, k.module) for k in fast.funcs] == [(k.name, k.module) for k in full.funcs]
    assert fast.notices() == full.notices() == []


def test_globs_aliases_and_unknown_names_are_left_to_the_full_resolution(
        traceable: kprobes.Traceable) -> None:
    name = traceable.funcs[0].name
    assert kprobes.resolve_exact([name + "*"]) is None
    assert kprobes.resolve_exact(["no_such_function_bpflbr"]) is None
    if os.path.exists(kprobes.BLACKLIST) and traceable.blocked:
        assert kprobes.resolve_exact([sorted(traceable.blocked)[0]]) is None
    # __x64_sys_getpid: kallsyms has it, ftrace lists __do_sys_getpid at its address
    if "__x64_sys_getpid" not in {k.name for k in traceable.funcs}:
        assert kprobes.resolve_exact(["__x64_sys_getpid"]) is None
