"""trace prog (fentry/fexit on BPF programs) and trace kfunc (kprobe.multi, fentry, kprobes)
on a real 6.12 kernel: the VM tier (scripts/vmtest boots it; BPFLBR_IN_VM=1 inside).

Each test loads real programs, drives the real shell commands in-process, triggers the traced
code for real (BPF_PROG_TEST_RUN, syscalls), and checks the events against what the kernel
itself reports (test_run's retval, bpftool's link and prog lists, getpid()). There is no PMU in
the guest either, so LBR is off and stacks are the fallback: the notice is checked too.
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_VM = os.environ.get("BPFLBR_IN_VM") == "1"

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(not IN_VM, reason="needs the 6.12 VM tier (scripts/vmtest sets "
                       "BPFLBR_IN_VM=1): fentry/fexit and kprobe.multi are blocked on this host"),
]


class Shell:
    """The real command registry and runner, in-process, output captured."""

    def __init__(self) -> None:
        from bpflbr_shell.cli import open_kernel_view
        from bpflbr_shell.shell import Context, load_builtin_commands, set_kernel_factory

        set_kernel_factory(open_kernel_view)
        self.out, self.err = io.StringIO(), io.StringIO()
        self.ctx = Context(load_builtin_commands(), out=self.out, err=self.err)

    def run(self, line: str) -> str:
        from bpflbr_shell.shell.runner import execute_line

        start = self.out.tell()
        execute_line(self.ctx, line)
        return self.out.getvalue()[start:]

    def json(self, line: str) -> object:
        return json.loads(self.run(line))

    def close(self) -> None:
        self.run("trace stop")


@pytest.fixture
def shell() -> Iterator[Shell]:
    sh = Shell()
    try:
        yield sh
    finally:
        sh.close()


class Reader:
    """A child process doing pipe write()+read() pairs of given sizes when told to: a workload
    with a pid of its own (the tracer never traces itself)."""

    SCRIPT = (
        "import os, sys\n"
        "r, w = os.pipe()\n"
        "for line in sys.stdin:\n"
        "    for n in map(int, line.split()):\n"
        "        if n < 0:  # a read() that fails: EBADF\n"
        "            try:\n"
        "                os.read(987, 1)\n"
        "            except OSError:\n"
        "                pass\n"
        "            continue\n"
        "        os.write(w, b'z' * n)\n"
        "        os.read(r, 4096)\n"
        "    print('done', flush=True)\n"
    )

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", self.SCRIPT], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid

    def run(self, *sizes: int) -> None:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(" ".join(map(str, sizes)) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "done"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def reader() -> Iterator[Reader]:
    r = Reader()
    try:
        yield r
    finally:
        r.close()


def bpftool_ids(kind: str) -> dict[int, dict]:
    out = subprocess.run(["bpftool", kind, "show", "--json"], check=True, capture_output=True,
                         text=True).stdout
    return {o["id"]: o for o in json.loads(out)}


@pytest.fixture(scope="module")
def socket_filter() -> Iterator[tuple[int, int]]:
    """A BCC socket filter whose return value depends on the packet: (fd, prog id)."""
    from bcc import BPF

    from bpflbr_shell.kernel.progs import read_raw_prog_info_fd

    b = BPF(text="int len_filter(struct __sk_buff *skb) { return skb->len * 3 + 1; }")
    fn = b.load_func("len_filter", BPF.SOCKET_FILTER)
    yield fn.fd, read_raw_prog_info_fd(fn.fd, with_btf=False).id
    b.cleanup()


def run_packets(prog_id: int, *sizes: int) -> list[int]:
    """BPF_PROG_TEST_RUN of ``prog_id`` on zeroed packets of ``sizes``, from a child process
    (the tracer never traces its own process); returns the kernel's retval for each."""
    script = (
        "import sys\n"
        f"sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'examples')!r}]\n"
        "from _libbpf_obj import test_run\n"
        "from bpflbr_shell.kernel import libbpf\n"
        "fd = libbpf.prog_fd_by_id(int(sys.argv[1]))\n"
        "for n in sys.argv[2:]:\n"
        "    print(test_run(fd, bytes(int(n))))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(prog_id), *map(str, sizes)],
                         check=True, capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def test_fexit_retval_matches_test_run(shell: Shell, socket_filter: tuple[int, int]) -> None:
    _, prog_id = socket_filter
    links_before = set(bpftool_ids("link"))
    progs_before = set(bpftool_ids("prog"))
    shell.run(f"trace prog {prog_id} --exit --bg --quiet --no-lbr")
    assert f"fexit on 1 BPF function(s): len_filter (prog {prog_id})" in shell.err.getvalue()
    ours_loaded = [v["name"] for k, v in bpftool_ids("prog").items() if k not in progs_before]
    assert ours_loaded == ["bpflbr_fexit"]  # --exit alone: one program, no pairing fentry
    expected = run_packets(prog_id, 14, 40, 100)
    wait_delivered(shell, len(expected))  # the reader's first event is slow under TCG
    shell.run("trace stop")
    events = shell.json("show events 10 --json")
    ours = [e for e in events if e["probe"].startswith("fexit")]
    assert [e["retval"] for e in ours] == expected  # the kernel's own test_run result
    for e in ours:
        assert e["kind"] == "exit" and e["func"].endswith("_len_filter")
        assert set(e["args"]) == {"skb"} and e["args"]["skb"] != 0  # name from BTF
        assert e["duration_ns"] is None  # durations need the entry: --both
    # nothing of ours is left attached
    assert set(bpftool_ids("link")) == links_before


def test_fentry_sees_args_not_retval(shell: Shell, socket_filter: tuple[int, int]) -> None:
    _, prog_id = socket_filter
    shell.run(f"trace prog {prog_id} --entry --bg --quiet")
    run_packets(prog_id, 20, 30)
    wait_delivered(shell, 2)
    shell.run("trace stop")
    events = [e for e in shell.json("show events 10 --json") if e["probe"].startswith("fentry")]
    assert len(events) == 2
    assert all(e["kind"] == "entry" and e["retval"] is None for e in events)
    assert all(e["args"]["skb"] for e in events)


def test_lbr_notice_once_and_stacks_instead(shell: Shell, socket_filter) -> None:
    _, prog_id = socket_filter
    for _ in range(2):
        shell.run(f"trace prog {prog_id} --exit --bg --quiet")
        run_packets(prog_id, 20)
        time.sleep(0.2)
        shell.run("trace stop")
    notices = [ln for ln in shell.err.getvalue().splitlines() if "LBR off" in ln]
    assert len(notices) == 1  # the guest has no PMU either
    event = shell.json("show events 1 --json")[0]
    assert event["lbr"] == [] and event["kstack"], "a kernel stack stands in for the LBR"
    # our fexit program and the trampoline sit above the traced program: hidden by default
    assert event["kstack_hidden"] == 2 and event["kstack"][0]["func"].endswith("_len_filter")
    shell.run("set lbr-trim off")
    event = shell.json("show events 1 --json")[0]
    assert event["kstack_hidden"] == 0
    names = [f["func"] for f in event["kstack"]]
    # the unwinder walks from our fexit program through the trampoline into the target
    assert any(n and n.endswith("_len_filter") for n in names), names
    assert any(n and n.startswith("bpf_trampoline_") for n in names), names


def test_subprogram_both_directions(shell: Shell, example_workload) -> None:
    """A subprogram of the libbpf example (called on every packet the workload sends)."""
    prog_id = example_workload.by_name["tc_classify"]
    shell.run(f"trace prog {prog_id}:classify_flow --both --bg --quiet")
    assert "fentry+fexit on 1 BPF function(s): classify_flow" in shell.err.getvalue()
    time.sleep(1.5)  # the workload runs the program every 100 ms
    shell.run("trace stop")
    events = [e for e in shell.json("show events 200 --json") if "classify_flow" in
              (e["func"] or "")]
    kinds = {e["kind"] for e in events}
    assert kinds == {"entry", "exit"}, kinds
    exits = [e for e in events if e["kind"] == "exit"]
    # an exit pairs with its entry, except a call that entered before the fentry link was
    # made (fexit is linked first): such an orphan can only precede the first entry seen
    first_entry = min(e["ts_ns"] for e in events if e["kind"] == "entry")
    paired = [e for e in exits if e["ts_ns"] > first_entry]
    assert paired and all(e["duration_ns"] and e["duration_ns"] > 0 for e in paired), exits
    orphans = [e for e in exits if not e["duration_ns"]]
    assert len(orphans) <= 1 and all(e["ts_ns"] < first_entry for e in orphans), orphans
    assert all(set(e["args"]) == {"key"} for e in events)  # BTF parameter name


def test_refuses_tracing_a_tracing_prog(shell: Shell, socket_filter) -> None:
    """An fexit program of ours is itself a TRACING prog: tracing it is refused clearly."""
    from bpflbr_shell.errors import UsageError

    _, prog_id = socket_filter
    shell.run(f"trace prog {prog_id} --exit --bg --quiet")
    try:
        tracing = [p["id"] for p in bpftool_ids("prog").values() if p["type"] == "tracing"]
        assert tracing
        with pytest.raises(UsageError, match="tracing"):
            shell.run(f"trace prog {tracing[0]}")
    finally:
        shell.run("trace stop")


def test_kprobe_multi_one_link_for_many(shell: Shell, reader: Reader) -> None:
    glob = "__x64_sys_*"  # about 430 traceable syscall entries on 6.12
    dry = shell.run(f"trace kfunc '{glob}' --dry-run")
    count = int(dry.split()[0])
    assert count >= 100, dry
    links_before, progs_before = set(bpftool_ids("link")), set(bpftool_ids("prog"))
    shell.run(f"trace kfunc '{glob}' --pid {reader.pid} --bg --quiet --no-lbr")
    try:
        new_links = [v for k, v in bpftool_ids("link").items() if k not in links_before]
        assert len(new_links) == 1 and new_links[0]["type"] == "kprobe_multi", new_links
        reader.run(1, 2, 3, 4, 5)
        time.sleep(0.3)
    finally:
        shell.run("trace stop")
    events = shell.json("show events 1000 --json")
    assert events and {e["pid"] for e in events} == {reader.pid}  # filtered in the kernel
    funcs = [e["func"] for e in events]
    assert funcs.count("__x64_sys_read") >= 5 and funcs.count("__x64_sys_write") >= 5
    assert set(bpftool_ids("link")) == links_before
    assert not set(bpftool_ids("prog")) - progs_before  # our programs are unloaded


@pytest.mark.parametrize("backend", ["fentry", "kprobe", "multi"])
def test_kfunc_backends_exit_retval(shell: Shell, reader: Reader, backend: str) -> None:
    shell.run(f"trace kfunc ksys_read --backend {backend} --exit --pid {reader.pid} "
              "--bg --quiet --no-lbr")
    assert f"--backend {backend}" in shell.run("trace list")
    sizes = (3, 11, -1, 7)
    reader.run(*sizes)
    wait_delivered(shell, len(sizes))
    shell.run("trace stop")
    events = [e for e in shell.json("show events 50 --json")
              if e["func"] == "ksys_read" and e["kind"] == "exit"]
    # the function's own return value: the bytes each read() returned, in order, and -EBADF
    # for the failing one (ssize_t from vmlinux BTF: a signed 64-bit value)
    assert [e["retval"] for e in events] == [3, 11, -errno.EBADF, 7], backend
    if backend == "fentry":  # fexit sees args and retval itself: no entry, no duration
        assert all(e["duration_ns"] is None for e in events)
    else:  # a kretprobe's args come from its paired entry, and so does the duration
        assert all(e["duration_ns"] > 0 for e in events)
    assert all(e["pid"] == reader.pid for e in events)
    # argument names and types from the kernel's BTF prototype
    assert all(set(e["args"]) == {"fd", "buf", "count"} for e in events), events[0]
    assert events[2]["args"]["fd"] == 987 and events[0]["args"]["count"] == 4096


@pytest.mark.parametrize("backend", ["multi", "fentry"])
def test_kfunc_filter_runs_in_the_kernel(shell: Shell, reader: Reader, backend: str) -> None:
    """A filter on the BTF-typed retval (ssize_t) and fd (unsigned int) of ksys_read is
    compiled into the probe: the reads it rejects never reach user space (IN_KERNEL counts
    them), and what it keeps is what the workload did."""
    shell.run(f"trace kfunc ksys_read --backend {backend} --exit --pid {reader.pid} --bg "
              "--quiet --no-lbr --if 'retval > 5 && fd != 987'")
    sizes = (3, 11, -1, 7, 2)
    reader.run(*sizes)
    wait_delivered(shell, 2)
    stats = shell.json("show stats --json")[-1]
    shell.run("trace stop")
    events = [e for e in shell.json("show events 50 --json")
              if e["func"] == "ksys_read" and e["kind"] == "exit"]
    assert [e["retval"] for e in events] == [11, 7], backend
    assert stats["filtered_kernel"] >= 3 and stats["filtered_user"] == 0, stats
    shell.run(f"trace kfunc ksys_read --backend {backend} --exit --pid {reader.pid} --bg "
              "--quiet --no-lbr --if errors")
    reader.run(4, -1, 6)
    wait_delivered(shell, 1)
    shell.run("trace stop")
    failed = [e for e in shell.json("show events 50 --json")[-3:]
              if e["func"] == "ksys_read" and e["kind"] == "exit" and e["retval"] < 0]
    assert [e["retval"] for e in failed] == [-errno.EBADF]


class FileReader:
    """A child process reading when told to, ``count`` bytes at a time, from a blocking pipe,
    a non-blocking pipe (O_NONBLOCK in f_flags) and a file named bpflbr-member-test: the same
    vfs_read counts through three different struct files."""

    SCRIPT = (
        "import os, sys\n"
        "path = os.path.join(sys.argv[1], 'bpflbr-member-test')\n"
        "with open(path, 'wb') as f:\n"
        "    f.write(b'x' * 10000)\n"
        "r1, w1 = os.pipe()\n"
        "r2, w2 = os.pipe()\n"
        "os.set_blocking(r2, False)\n"
        "print('ready', flush=True)\n"
        "for line in sys.stdin:\n"
        "    for n in map(int, line.split()):\n"
        "        os.write(w1, b'z' * n); os.read(r1, n)\n"
        "        os.write(w2, b'z' * n); os.read(r2, n)\n"
        "        fd = os.open(path, os.O_RDONLY); os.read(fd, n); os.close(fd)\n"
        "    print('done', flush=True)\n"
    )

    def __init__(self, directory: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", self.SCRIPT, directory],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    run, close = Reader.run, Reader.close  # one line of sizes in, 'done' out


@pytest.mark.parametrize("backend", ["multi", "fentry"])
def test_kfunc_filter_on_struct_members(shell: Shell, tmp_path, backend: str) -> None:
    """Members of vfs_read's struct file *, typed by the kernel's BTF and read in the probe:
    f_flags (O_NONBLOCK) beside the count argument, and a string through two pointers and an
    embedded struct (file->f_path.dentry->d_name.name). Each keeps exactly the reads the
    workload made through that kind of file; the rest are rejected in the kernel."""
    reader = FileReader(str(tmp_path))
    sizes = (50, 200, 300, 5000)
    try:
        cases = [("file->f_flags & 0x800 && count > 100", [200, 300, 5000]),
                 ("file->f_path.dentry->d_name.name == 'bpflbr-m*'", list(sizes))]
        for expr, want in cases:
            before = max((e["id"] for e in shell.json("show events 1 --json")), default=0)
            shell.run(f"trace kfunc vfs_read --backend {backend} --pid {reader.pid} --bg "
                      f"--quiet --no-lbr --if \"{expr}\"")
            reader.run(*sizes)
            wait_delivered(shell, len(want))
            stats = shell.json("show stats --json")[-1]
            shell.run("trace stop")
            events = [e for e in shell.json("show events 100 --json")
                      if e["func"] == "vfs_read" and e["id"] > before]
            assert [e["args"]["count"] for e in events] == want, (backend, expr)
            assert stats["filtered_kernel"] >= 3 * len(sizes) - len(want), stats
            assert stats["filtered_user"] == 0, stats
    finally:
        reader.close()


def test_module_functions_are_tagged(shell: Shell) -> None:
    dry = shell.run("trace kfunc 'p9_*' --dry-run")
    assert "[9pnet" in dry, dry  # 9p is a module in the guest (it carries the root fs)


# trace kfunc on real workloads: the first call, aliases, module functions, stacks ------------
class Sender:
    """A child process connected over TCP to a local sink; each ``send(sizes)`` is one
    sendall() per size (one tcp_sendmsg each, returning the size)."""

    SCRIPT = (
        "import socket, sys, time\n"
        "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
        "print('ready', flush=True)\n"
        "for line in sys.stdin:\n"
        "    words = line.split()\n"
        "    if words[0] == 'stream':  # until stdin says stop: sizes 1..200, each call\n"
        "        import select, threading  # from a new thread (a tid never seen again)\n"
        "        log, n = [], 0\n"
        "        while not select.select([sys.stdin], [], [], 0.001)[0]:\n"
        "            n = n % 200 + 1\n"
        "            log.append((time.monotonic(), n))\n"
        "            t = threading.Thread(target=s.sendall, args=(b'x' * n,))\n"
        "            t.start()\n"
        "            t.join()\n"
        "        sys.stdin.readline()\n"
        "        print(' '.join(f'{t:.6f}:{k}' for t, k in log), flush=True)\n"
        "        continue\n"
        "    for n in map(int, words):\n"
        "        s.sendall(b'x' * n)\n"
        "    print('done', flush=True)\n"
    )

    def __init__(self) -> None:
        import socket
        import threading

        self.sink = socket.socket()
        self.sink.bind(("127.0.0.1", 0))
        self.sink.listen(1)

        def drain() -> None:
            conn, _ = self.sink.accept()
            while conn.recv(1 << 16):
                pass

        threading.Thread(target=drain, daemon=True).start()
        self.proc = subprocess.Popen([sys.executable, "-c", self.SCRIPT,
                                      str(self.sink.getsockname()[1])],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout and self.proc.stdout.readline().strip() == "ready"
        self.pid = self.proc.pid

    def send(self, sizes: list[int]) -> None:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(" ".join(map(str, sizes)) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "done"

    def start_stream(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.write("stream\n")
        self.proc.stdin.flush()

    def stop_stream(self) -> list[tuple[float, int]]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        return [(float(t), int(n)) for t, n in
                (w.split(":") for w in self.proc.stdout.readline().split())]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.sink.close()


@pytest.fixture
def sender() -> Iterator[Sender]:
    s = Sender()
    try:
        yield s
    finally:
        s.close()


def wait_delivered(shell: Shell, at_least: int, timeout: float = 120.0) -> dict:
    """Until the running trace has delivered every published event (and at least
    ``at_least``): under TCG the first delivery (symbolizer, BTF) takes seconds."""
    deadline = time.monotonic() + timeout
    while True:
        stats = shell.json("show stats --json")[-1]
        if stats["delivered"] >= max(at_least, stats.get("submitted", 0)) \
                or time.monotonic() > deadline:
            return stats
        time.sleep(0.2)


@pytest.mark.parametrize("backend", ["multi", "kprobe", "fentry"])
def test_kfunc_exit_sees_the_first_call(shell: Shell, sender: Sender, backend: str) -> None:
    """Exactly N calls after the trace is attached: N return events, the first included, in
    order, each with the function's own return value (the bytes sent)."""
    shell.run(f"trace kfunc tcp_sendmsg --backend {backend} --exit --pid {sender.pid} "
              "--bg --quiet --no-lbr")
    sizes = list(range(1, 21))
    sender.send(sizes)
    stats = wait_delivered(shell, len(sizes))
    shell.run("trace stop")
    events = [e for e in shell.json("show events 100 --json") if e["pid"] == sender.pid]
    assert [e["retval"] for e in events] == sizes, backend
    assert all(e["kind"] == "exit" and e["func"] == "tcp_sendmsg" for e in events)
    assert stats["drops"] == 0 and stats["hits"] == len(sizes), stats
    if backend != "fentry":  # every exit paired with its entry: args and a duration
        assert all(e["duration_ns"] > 0 and e["args"]["size"] == e["retval"] for e in events)


def our_maps(progs_before: set[int], name: str) -> list[int]:
    """Ids of the maps called ``name`` that the programs loaded since ``progs_before`` use."""
    ids: set[int] = set()
    for pid, p in bpftool_ids("prog").items():
        if pid not in progs_before:
            ids.update(p.get("map_ids", []))
    maps = bpftool_ids("map")
    return sorted(i for i in ids if maps.get(i, {}).get("name") == name)


@pytest.mark.parametrize("backend", ["multi", "kprobe"])
def test_kfunc_exit_probe_is_attached_before_the_entry(shell: Shell, sender: Sender,
                                                       backend: str) -> None:
    """Calls all through the attach, each from a thread of its own: no entry may be stashed
    for an exit that is not attached yet (that call was never delivered: the trace's first
    call lost; a thread's next call would overwrite the stash, so one call per thread leaves
    it there to see). Every call made after the command returned is delivered, and the events
    are exactly the workload's last calls, in order."""
    progs_before = set(bpftool_ids("prog"))
    sender.start_stream()
    shell.run(f"trace kfunc tcp_sendmsg --backend {backend} --exit --pid {sender.pid} "
              "--bg --quiet --no-lbr")
    attached = time.monotonic()
    time.sleep(0.5)
    calls = sender.stop_stream()
    try:
        (active,) = our_maps(progs_before, "active")
        stale = json.loads(subprocess.run(["bpftool", "map", "dump", "id", str(active), "--json"],
                                          check=True, capture_output=True, text=True).stdout)
        wait_delivered(shell, 1)
    finally:
        shell.run("trace stop")
    assert stale == [], f"{len(stale)} entries stashed whose exits were never seen"
    got = [e["retval"] for e in shell.json("show events 10000 --json") if e["pid"] == sender.pid]
    after = [n for t, n in calls if t > attached]
    assert len(after) > 10 and len(got) >= len(after)
    assert got == [n for _, n in calls[-len(got):]]


@pytest.mark.parametrize("backend", ["multi", "fentry"])
def test_kfunc_alias_is_traced_by_its_listed_name(shell: Shell, backend: str) -> None:
    """__x64_sys_getpid is not in available_filter_functions (ftrace lists __do_sys_getpid at
    its address): it is traced through that name, said once, events named as asked."""
    worker = subprocess.Popen([sys.executable, "-c", "import os, sys\nfor line in sys.stdin:\n"
                               "    [os.getpid() for _ in range(int(line))]\n"
                               "    print(flush=True)\n"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        shell.run(f"trace kfunc __x64_sys_getpid --backend {backend} --pid {worker.pid} "
                  "--bg --quiet --no-lbr")
        assert "__x64_sys_getpid is traced as __do_sys_getpid (same address)" \
            in shell.err.getvalue()
        assert worker.stdin and worker.stdout
        worker.stdin.write("5\n")
        worker.stdin.flush()
        worker.stdout.readline()
        wait_delivered(shell, 5)
    finally:
        shell.run("trace stop")
        worker.kill()
        worker.wait()
    events = [e for e in shell.json("show events 100 --json") if e["pid"] == worker.pid]
    assert len(events) == 5 and {e["func"] for e in events} == {"__x64_sys_getpid"}
    dry = shell.run("trace kfunc '__x64_sys_*' --dry-run")
    assert "(asked as __x64_sys_getpid)" in dry
    assert "functions are traced as the name ftrace lists at their address" \
        in shell.err.getvalue()


@pytest.mark.parametrize("backend", ["fentry", "multi"])
def test_kfunc_module_function_typed_from_module_btf(shell: Shell, backend: str) -> None:
    """A 9p function (the guest's root is 9p; a read of a file on the rw share calls
    v9fs_file_read_iter once for the data and once more at EOF), typed from
    /sys/kernel/btf/9p; fentry attaches through the module's BTF object."""
    path = Path(os.environ["BPFLBR_VM_SHARE"]) / f"kfunc-module-{backend}.txt"
    path.write_text("hello\n")
    worker = subprocess.Popen([sys.executable, "-c", "import sys\nfor line in sys.stdin:\n"
                               f"    [open({str(path)!r}).read() for _ in range(int(line))]\n"
                               "    print(flush=True)\n"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    links_before = set(bpftool_ids("link"))
    try:
        shell.run(f"trace kfunc v9fs_file_read_iter --backend {backend} --exit "
                  f"--pid {worker.pid} --bg --quiet --no-lbr")
        new = [v for k, v in bpftool_ids("link").items() if k not in links_before]
        if backend == "fentry":  # the kernel's link info (bpftool 7.1 does not print it)
            from bpflbr_shell.kernel import libbpf

            btfs = json.loads(subprocess.run(["bpftool", "btf", "show", "--json"], check=True,
                                             capture_output=True, text=True).stdout)
            ninep = [b["id"] for b in btfs if b.get("name") == "9p"]
            (link,) = new
            fd = libbpf.link_fd_by_id(link["id"])
            try:
                assert [libbpf.link_info(fd).tracing.target_obj_id] == ninep, link
            finally:
                os.close(fd)
        assert worker.stdin and worker.stdout
        worker.stdin.write("3\n")
        worker.stdin.flush()
        worker.stdout.readline()
        wait_delivered(shell, 6)
    finally:
        shell.run("trace stop")
        worker.kill()
        worker.wait()
    events = [e for e in shell.json("show events 100 --json") if e["pid"] == worker.pid]
    assert [e["retval"] for e in events] == [6, 0] * 3, backend  # ssize_t: bytes, then EOF
    assert all(set(e["args"]) == {"iocb", "to"} for e in events), events[0]["args"]


def test_kfunc_kernel_stack_hides_the_tracer(shell: Shell) -> None:
    """fentry's stack starts in our program and the trampoline: hidden and counted, the
    traced function first; 'set lbr-trim off' shows them."""
    worker = subprocess.Popen([sys.executable, "-c", "import os, sys\nfor line in sys.stdin:\n"
                               "    os.getpid()\n    print(flush=True)\n"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        shell.run(f"trace kfunc __do_sys_getpid --backend fentry --kstack --pid {worker.pid} "
                  "--bg --quiet --no-lbr")
        assert worker.stdin and worker.stdout
        worker.stdin.write("\n")
        worker.stdin.flush()
        worker.stdout.readline()
        wait_delivered(shell, 1)
    finally:
        shell.run("trace stop")
        worker.kill()
        worker.wait()
    (event,) = [e for e in shell.json("show events 10 --json") if e["pid"] == worker.pid]
    assert event["kstack_hidden"] == 2
    top = event["kstack"][0]
    assert top["addr"] - top["offset"] == event["func_ip"]  # the traced function itself
    assert "(2 tracer frames hidden; 'set lbr-trim off' shows them)" \
        in shell.run(f"show event {event['id']} --kstack")
    shell.run("set lbr-trim off")
    full = shell.json(f"show event {event['id']} --json")
    assert full["kstack_hidden"] == 0 and len(full["kstack"]) == len(event["kstack"]) + 2
    assert full["kstack"][2] == top


def test_py_prog_reads_the_live_kernel(shell: Shell, socket_filter) -> None:
    """``py`` with drgn's ``prog`` on the live kernel (/proc/kcore, the guest has it): a
    loaded program's JIT image, read through drgn at its kallsyms address, is byte for byte
    what bpf(2) gives (BPF_OBJ_GET_INFO_BY_FD), as long as bpftool says it is."""
    from bpflbr_shell.kernel.progs import read_prog_info

    _, prog_id = socket_filter
    info = bpftool_ids("prog")[prog_id]
    want = read_prog_info(prog_id).jited_image
    assert len(want) == info["bytes_jited"] > 0
    symbol = f"bpf_prog_{info['tag']}_{info['name']}"
    with open("/proc/kallsyms") as f:
        (addr,) = [int(line.split()[0], 16) for line in f if line.split()[2] == symbol]
    assert addr, "kallsyms shows no addresses (kptr_restrict?)"
    out = shell.run(f"py prog.read({addr:#x}, {len(want)}).hex()")
    assert bytes.fromhex(out.strip().strip("'")) == want, out[:200]
