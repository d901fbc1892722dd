"""Smoke tests of the VM tier: the guest that scripts/vmtest boots is what the vm tests assume.

They make sense only inside that guest (Debian bookworm-backports' 6.12 kernel under QEMU, the
host's / read-only over 9p, BPFLBR_IN_VM=1) and are skipped anywhere else. Each capability is
checked by doing it for real and, where the feature probe reports on it, against a fact the probe
does not read (kallsyms, the kernel's own config from the vmtest cache, tracefs).

    scripts/vmtest -- .venv/bin/python -m pytest -m vm tests/test_vm_smoke.py
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from pathlib import Path

import pytest

from bpflbr_shell.kernel import features as F
from bpflbr_shell.kernel import libbpf

IN_VM = os.environ.get("BPFLBR_IN_VM") == "1"

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(not IN_VM, reason="runs only inside the 6.12 VM tier (scripts/vmtest), "
                       "which sets BPFLBR_IN_VM=1"),
]

REPO = Path(__file__).resolve().parent.parent


def kallsyms_names() -> set[str]:
    with open("/proc/kallsyms") as f:
        return {line.split()[2] for line in f if len(line.split()) >= 3}


def kernel_config() -> dict[str, str]:
    """The running kernel's config, from the vmtest cache (the guest has no /boot of its own)."""
    kver = os.uname().release
    path = Path(os.environ["BPFLBR_VM_CACHE"]) / "kernels" / kver / "boot" / f"config-{kver}"
    opts = {}
    for line in path.read_text().splitlines():
        if line.startswith("CONFIG_"):
            key, _, val = line.partition("=")
            opts[key] = val
    return opts


def traceable(names: list[str]) -> list[str]:
    with open("/sys/kernel/tracing/available_filter_functions") as f:
        avail = {line.split()[0] for line in f if line.strip()}
    return [n for n in names if n in avail]


# ------------------------------------------------------------------------------- the guest


def test_guest_kernel_is_backports_6_12() -> None:
    release = os.uname().release
    assert release.startswith("6.12."), release
    assert release == os.environ["BPFLBR_VM_KVER"]
    assert release.endswith("+deb12-amd64") or "+deb12." in release


def test_guest_filesystems() -> None:
    """/ is read-only (the host's), the share is writable, the tracing filesystems are there."""
    mounts = {}
    with open("/proc/self/mounts") as f:
        for line in f:
            dev, mnt, fstype, opts = line.split()[:4]
            mounts[mnt] = (fstype, opts.split(","))
    assert mounts["/"][0] == "9p" and "ro" in mounts["/"][1]
    for mnt, fstype in (("/sys/kernel/tracing", "tracefs"), ("/sys/kernel/debug", "debugfs"),
                        ("/sys/fs/bpf", "bpf"), ("/tmp", "tmpfs")):
        assert mounts.get(mnt, ("missing",))[0] == fstype, mnt
    with pytest.raises(OSError) as exc:
        (REPO / ".vm-write-probe").write_text("x")
    assert exc.value.errno == errno.EROFS
    share = Path(os.environ["BPFLBR_VM_SHARE"])
    probe = share / f"write-probe-{os.getpid()}"
    probe.write_text("ok")
    assert probe.read_text() == "ok"
    probe.unlink()


def test_kcore() -> None:
    with open("/proc/kcore", "rb") as f:
        assert f.read(4) == b"\x7fELF"
    assert kernel_config().get("CONFIG_PROC_KCORE") == "y"


# -------------------------------------------------------------------------- feature probe


def test_feature_probe_agrees_with_the_kernel() -> None:
    rows = {f.name: f for f in F.probe_features(
        ["kprobes", "kprobe-multi", "tracing-prog", "kcore", "bcc-headers", "lbr"])}
    config = kernel_config()
    syms = kallsyms_names()
    # independent facts: fprobe is built in (kallsyms, config), so kprobe.multi must work
    assert "register_fprobe" in syms and config.get("CONFIG_FPROBE") == "y"
    assert rows["kprobe-multi"].available, rows["kprobe-multi"].detail
    assert config.get("CONFIG_KPROBES") == "y" and "register_kprobe" in syms
    assert rows["kprobes"].available, rows["kprobes"].detail
    # fentry needs a BPF trampoline: this kernel has one and no lockdown policy against it
    assert "arch_prepare_bpf_trampoline" in syms
    assert rows["tracing-prog"].available, rows["tracing-prog"].detail
    assert rows["kcore"].available, rows["kcore"].detail
    # the headers BCC compiles against are the running kernel's (vmtest's merged headers tree)
    assert rows["bcc-headers"].available, rows["bcc-headers"].detail
    assert "matches the running kernel" in rows["bcc-headers"].detail
    # QEMU/TCG has no PMU: the probe must say so rather than claim LBR
    assert not os.path.exists("/sys/bus/event_source/devices/cpu")
    assert not rows["lbr"].available, rows["lbr"].detail


# ---------------------------------------------------------------------------- kprobe.multi


def _fn(name: str, restype: object, *argtypes: object):
    proto = ctypes.CFUNCTYPE(restype, *argtypes, use_errno=True)
    return proto((name, libbpf.lib()))


def test_kprobe_multi_link_fires_and_detaches() -> None:
    """One BPF_TRACE_KPROBE_MULTI link on several functions, through libbpf: the program runs
    (bpf_stats run_cnt grows) and ftrace lists its functions until the link is closed."""
    targets = traceable(["vfs_read", "ksys_read", "vfs_write", "ksys_write"])
    assert "vfs_read" in targets, targets
    prog_load = _fn("bpf_prog_load", ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                    ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t,
                    ctypes.POINTER(F.BpfProgLoadOpts))
    link_create = _fn("bpf_link_create", ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.POINTER(F.BpfLinkCreateOpts))
    opts = F.BpfProgLoadOpts(sz=ctypes.sizeof(F.BpfProgLoadOpts))
    opts.expected_attach_type = F.BPF_TRACE_KPROBE_MULTI
    insns = ctypes.create_string_buffer(F.TRIVIAL_PROG, len(F.TRIVIAL_PROG))
    stats_fd = libbpf.enable_stats()
    prog_fd = prog_load(F.BPF_PROG_TYPE_KPROBE, b"vm_smoke_km", b"GPL", insns,
                        len(F.TRIVIAL_PROG) // 8, ctypes.byref(opts))
    assert prog_fd >= 0, f"kprobe prog load: {os.strerror(-prog_fd)}"
    link_fd = -1
    try:
        syms = (ctypes.c_char_p * len(targets))(*(t.encode() for t in targets))
        lopts = F.BpfLinkCreateOpts(sz=ctypes.sizeof(F.BpfLinkCreateOpts))
        lopts.kprobe_multi.cnt = len(targets)
        lopts.kprobe_multi.syms = syms
        link_fd = link_create(prog_fd, 0, F.BPF_TRACE_KPROBE_MULTI, ctypes.byref(lopts))
        assert link_fd >= 0, f"bpf_link_create(KPROBE_MULTI): {os.strerror(-link_fd)}"
        info = libbpf.link_info(link_fd)
        assert info.type == 8  # BPF_LINK_TYPE_KPROBE_MULTI: one link for all of them

        enabled = Path("/sys/kernel/tracing/enabled_functions").read_text()
        for t in targets:
            assert any(line.split()[0] == t for line in enabled.splitlines()), t

        before = _run_cnt(prog_fd)
        fd = os.open("/proc/self/stat", os.O_RDONLY)
        try:
            for _ in range(20):
                os.pread(fd, 64, 0)  # pread64 -> vfs_read
                os.read(fd, 64)      # read -> ksys_read -> vfs_read
        finally:
            os.close(fd)
        assert _run_cnt(prog_fd) - before >= 20
    finally:
        if link_fd >= 0:
            os.close(link_fd)
        os.close(prog_fd)
        os.close(stats_fd)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        enabled = Path("/sys/kernel/tracing/enabled_functions").read_text()
        if not any(line.split()[0] in targets for line in enabled.splitlines() if line.strip()):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"functions still traced after closing the link:\n{enabled}")


def _run_cnt(prog_fd: int) -> int:
    info = libbpf.BpfProgInfo()
    libbpf.obj_info(prog_fd, info, "reading prog info")
    return info.run_cnt


# ------------------------------------------------------------------------------------- BCC

BCC_PROG = rb"""
#include <uapi/linux/ptrace.h>

struct event_t {
    u32 pid;
    char name[128];
};
BPF_PERF_OUTPUT(events);

int on_openat2(struct pt_regs *ctx, int dfd, const char __user *filename)
{
    struct event_t ev = {};
    ev.pid = bpf_get_current_pid_tgid() >> 32;
    if (ev.pid != TARGET_PID)
        return 0;
    bpf_probe_read_user_str(ev.name, sizeof(ev.name), filename);
    events.perf_submit(ctx, &ev, sizeof(ev));
    return 0;
}
"""


def test_bcc_kprobe_sees_an_open() -> None:
    """BCC compiles against the cached 6.12 headers, attaches a kprobe and reads its argument."""
    from bcc import BPF

    pid = os.getpid()
    b = BPF(text=BCC_PROG, cflags=[f"-DTARGET_PID={pid}"])
    try:
        b.attach_kprobe(event=b"do_sys_openat2", fn_name=b"on_openat2")
        seen: list[tuple[int, str]] = []

        def on_event(_cpu: int, data: int, _size: int) -> None:
            ev = b[b"events"].event(data)
            seen.append((ev.pid, ev.name.decode(errors="replace")))

        b[b"events"].open_perf_buffer(on_event)
        path = f"/tmp/vm-smoke-open-{pid}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (pid, path) not in seen:
            with open(path, "w"):
                pass
            b.perf_buffer_poll(timeout=200)
        assert (pid, path) in seen, seen[:10]
        os.unlink(path)
    finally:
        b.cleanup()
