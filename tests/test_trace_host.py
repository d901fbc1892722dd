"""What this host's kernel cannot trace is said in one line, and the shell goes on (root).

The host forbids BPF_PROG_TYPE_TRACING loads (EPERM by policy) and has neither kprobes nor
kprobe.multi; the vm tier proves the same commands work on a kernel that allows them. Each test
first asks the feature probe, so on a kernel that does allow them the test is skipped with the
feature named, rather than asserting something false.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bpflbr_shell.kernel import features

pytestmark = pytest.mark.live

SHELL = [sys.executable, "-m", "bpflbr_shell", "--batch"]


def feature(name: str) -> features.Feature:
    (row,) = features.probe_features([name])
    return row


def shell(*commands: str) -> subprocess.CompletedProcess[str]:
    argv = [*SHELL]
    for c in commands:
        argv += ["-c", c]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def bpftool_progs() -> list[dict]:
    out = subprocess.run(["bpftool", "prog", "show", "--json"], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out)


def bpftool_ids(kind: str) -> set[int]:
    out = subprocess.run(["bpftool", kind, "show", "--json"], check=True, capture_output=True,
                         text=True).stdout
    return {o["id"] for o in json.loads(out)}


def test_trace_prog_explains_eperm(require_root: None, example_workload) -> None:
    if feature("tracing-prog").available:
        pytest.skip("this kernel allows TRACING programs (feature tracing-prog): see the vm tier")
    links_before = bpftool_ids("link")
    prog_id = example_workload.by_name["tc_classify"]
    res = shell(f"trace prog {prog_id} --exit --limit 1")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "EPERM" in lines[0] and "show features" in lines[0], lines[0]
    # nothing of ours stayed loaded (named bpflbr_*: other tests may load programs meanwhile)
    assert not [p for p in bpftool_progs() if p.get("name", "").startswith("bpflbr_")]
    assert not bpftool_ids("link") - links_before


def test_trace_kfunc_names_every_backend_tried(require_root: None) -> None:
    if feature("kprobe-multi").available or feature("kprobes").available:
        pytest.skip("this kernel has kprobes or kprobe.multi: see the vm tier")
    res = shell("trace kfunc vfs_read --limit 1")
    assert res.returncode == 1
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1
    for backend in ("multi", "fentry", "kprobe"):
        assert f"{backend}:" in err[0], err[0]
    # each fallback was announced as it happened
    assert res.stderr.count("trying the next backend") == 2


def test_trace_kfunc_dry_run_works_without_kprobes(require_root: None) -> None:
    res = shell("trace kfunc 'tcp_v4_*' 'vfs_rea*' --dry-run")
    assert res.returncode == 0, res.stderr
    names = [ln.strip() for ln in res.stdout.splitlines()[1:]]
    assert "tcp_v4_connect" in names and "vfs_read" in names
    assert names == sorted(names)
    # an independent list: kallsyms text symbols matching the same globs
    with open("/proc/kallsyms") as f:
        ksyms = {p[2] for p in (ln.split() for ln in f) if p[1] in "tT" and len(p) == 3}
    assert set(names) <= ksyms


def test_refusals_are_one_line(require_root: None, example_workload) -> None:
    res = shell("trace prog 999999999")
    assert res.returncode == 1 and "no BPF program with id 999999999" in res.stderr
    res = shell(f"trace prog {example_workload.by_name['tc_classify']}:no_such_func")
    assert res.returncode == 1
    assert "has no function 'no_such_func'" in res.stderr and "classify_flow" in res.stderr
    res = shell("trace kfunc 'zz_no_such_*' --dry-run")
    assert res.returncode == 1 and "no traceable kernel function matches" in res.stderr
