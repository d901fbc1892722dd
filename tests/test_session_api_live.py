"""Live (root, BCC): the session API that py, extensions and recordings call, without the shell:
``session.trace(TraceSpec(...)) -> Trace``, ``trace.wait()``, ``trace.events()``,
``trace.stop()``. The target is a process calling libc's getpid: its pid is the oracle."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bpflbr_shell.trace.session import Session
from bpflbr_shell.trace.spec import TraceSpec

pytestmark = pytest.mark.live


@pytest.fixture()
def target() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", "import os, time\nwhile True:\n"
                             "    os.getpid(); time.sleep(0.005)\n"])
    time.sleep(0.2)
    yield proc
    proc.kill()
    proc.wait()


def test_trace_spec_to_events(require_root: None, require_bcc: None, target) -> None:
    notes: list[str] = []
    session = Session(notify=notes.append)
    attached: list[int] = []
    trace = session.trace(TraceSpec("uretprobe", ("c:getpid",), pid=target.pid, limit=4,
                                    lbr=False), on_attached=lambda t: attached.append(t.id))
    assert attached == [trace.id] and trace.summary.startswith("uretprobe on ")
    assert trace.wait(30), trace.counters()
    events = trace.events()
    assert len(events) == 4 and {e.pid for e in events} == {target.pid}
    assert all(e.retval == target.pid and e.func == "getpid" for e in events)
    books = trace.counters()
    assert books["delivered"] == 4 and books["pending"] == 0
    assert books["hits"] == books["delivered"] + books["drops"] + books["filtered"]


def test_a_background_trace_stops_and_detaches(require_root: None, require_bcc: None,
                                               target) -> None:
    session = Session()
    trace = session.trace(TraceSpec("uprobe", ("c:getpid",), pid=target.pid, lbr=False))
    deadline = time.monotonic() + 20
    while trace.delivered < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert trace.delivered >= 3
    assert trace.stop() and not trace.running
    n = len(trace.events())
    time.sleep(0.2)
    assert len(trace.events()) == n  # detached: nothing more comes
    assert trace.tracer.prog_fds() == []


def test_an_unknown_kind_is_one_clear_line() -> None:
    from bpflbr_shell.errors import UsageError

    with pytest.raises(UsageError, match="no probe kind 'nope'"):
        Session().trace(TraceSpec("nope", ("x",)))
