"""Live: the example workload (examples/workload.py) loads real programs, runs, unloads them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import WORKLOAD, have_bcc

from bpflbr_shell.kernel import libbpf
from bpflbr_shell.kernel.progs import read_prog_info

pytestmark = pytest.mark.live


def bpftool_show(prog_id: int) -> dict:
    out = subprocess.run(["bpftool", "prog", "show", "id", str(prog_id), "--json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_workload_progs_match_bpftool(example_workload) -> None:
    tc = example_workload.by_name["tc_classify"]
    assert example_workload[0] == tc
    show = bpftool_show(tc)
    assert show["type"] == "sched_cls" and show["name"] == "tc_classify"
    assert len(show["map_ids"]) == 3
    info = read_prog_info(tc)
    assert {sp.name for sp in info.subprogs} == {
        "tc_classify", "parse_packet", "parse_l4", "classify_flow", "account_class",
        "update_flow"}
    assert {li.file for sp in info.subprogs for li in sp.lines} == {"examples/lbrdemo.bpf.c"}


def test_workload_bcc_prog(example_workload, require_bcc) -> None:
    sock = example_workload.by_name["sock_stats"]
    show = bpftool_show(sock)
    assert show["type"] == "socket_filter"
    assert len(read_prog_info(sock).subprogs) == 1


def test_workload_holds_the_prog_fds(example_workload) -> None:
    held = set()
    for fd in os.listdir(f"/proc/{example_workload.pid}/fdinfo"):
        text = Path(f"/proc/{example_workload.pid}/fdinfo/{fd}").read_text()
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                held.add(int(line.split()[1]))
    assert set(example_workload) <= held


def test_trigger_moves_run_cnt(example_workload) -> None:
    first = {i: read_prog_info(i).run_cnt for i in example_workload}
    time.sleep(0.5)
    later = {i: read_prog_info(i).run_cnt for i in example_workload}
    for i in example_workload:
        assert later[i] > first[i] > 0, (i, first[i], later[i])


def test_detached_mode_pidfile_and_clean_unload(require_root, tmp_path) -> None:
    pidfile = tmp_path / "wl.pid"
    cmd = [sys.executable, str(WORKLOAD), "--pidfile", str(pidfile), "--log",
           str(tmp_path / "wl.log")]
    if not have_bcc():
        cmd.append("--no-bcc")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ready ids=")
    ids = [int(x) for x in out.stdout.split("=", 1)[1].split(",")]
    pid = int(pidfile.read_text())
    assert set(ids) <= set(libbpf.prog_ids())
    os.kill(pid, 15)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (pidfile.exists() or set(ids) & set(libbpf.prog_ids())):
        time.sleep(0.05)
    assert not pidfile.exists()
    assert not set(ids) & set(libbpf.prog_ids()), "programs still loaded after SIGTERM"
    assert "stopping" in (tmp_path / "wl.log").read_text()
