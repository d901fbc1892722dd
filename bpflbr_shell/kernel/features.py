"""What this machine can trace, measured rather than assumed (``show features``).

Every check is cheap, isolated (a crash in one becomes that row's ``detail``, never hides the
rest) and side-effect free: whatever it loads or opens it closes before returning, and it never
mounts anything. Where a fact can only be learnt by trying (TRACING load, kprobe.multi link,
LBR), we try with the smallest possible object, because config files and sysfs lie by omission:
on the CI host every TRACING load is refused by policy although the kernel supports it.
bcc and drgn are imported inside their checks only.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import os
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

from bpflbr_shell.errors import UsageError, UserError
from bpflbr_shell.kernel import libbpf, perf
from bpflbr_shell.kernel.libbpf import (
    BPF_PROG_TYPE_KPROBE,
    BPF_PROG_TYPE_TRACING,
    BPF_TRACE_FENTRY,
    BPF_TRACE_KPROBE_MULTI,
    BTF_KIND_FUNC,
    BpfLinkCreateOpts,
    BpfProgLoadOpts,
)

# Kernel functions present (and fentry-attachable) in every config we care about; first found wins.
PROBE_TARGETS = ("vfs_read", "ksys_read", "do_sys_openat2", "vfs_write")

# r0 = 0; exit
TRIVIAL_PROG = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


@dataclass
class Feature:
    """One capability: whether it is usable here, what was found, and what would enable it."""

    name: str
    available: bool
    detail: str
    fix: str | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _errname(err: int) -> str:
    return errno.errorcode.get(err, f"errno {err}")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


class _Context:
    """Facts several checks share, computed at most once per probe run."""

    @cached_property
    def release(self) -> str:
        return os.uname().release

    @cached_property
    def config(self) -> tuple[dict[str, str], str] | None:
        """Kernel config as {option: value} plus where it came from, if any source exists."""
        for path in ("/proc/config.gz", f"/boot/config-{self.release}"):
            try:
                if path.endswith(".gz"):
                    import gzip  # only here: a trace's start-up imports this module

                    with gzip.open(path, "rt") as f:
                        text = f.read()
                else:
                    with open(path) as f:
                        text = f.read()
            except OSError:
                continue
            opts: dict[str, str] = {}
            for line in text.splitlines():
                if line.startswith("CONFIG_") and "=" in line:
                    key, _, val = line.partition("=")
                    opts[key] = val
                elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
                    opts[line[2:-len(" is not set")]] = "n"
            return opts, path
        return None

    def config_note(self, option: str) -> str:
        """``CONFIG_X=y (/proc/config.gz)`` or ``CONFIG_X is not set (...)``; '' when unknown."""
        if self.config is None:
            return ""
        opts, path = self.config
        val = opts.get(option)
        if val is None or val == "n":
            return f"{option} is not set ({path})"
        return f"{option}={val} ({path})"

    @cached_property
    def mounts(self) -> list[tuple[str, str]]:
        """(mount point, fstype) pairs from /proc/self/mounts."""
        out = []
        for line in (_read("/proc/self/mounts") or "").splitlines():
            parts = line.split()
            if len(parts) >= 3:
                out.append((parts[1].replace("\\040", " "), parts[2]))
        return out

    @cached_property
    def caps(self) -> int:
        for line in (_read("/proc/self/status") or "").splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
        return 0

    def has_cap(self, cap: int) -> bool:
        return bool(self.caps >> cap & 1)

    @cached_property
    def probe_target(self) -> tuple[str, int]:
        """(name, vmlinux BTF FUNC id) of a kernel function to aim test programs at."""
        lib = libbpf.lib()
        btf = lib.btf__load_vmlinux_btf()
        if not btf:
            err = ctypes.get_errno()
            raise UserError(f"cannot load vmlinux BTF: {os.strerror(err)} ({_errname(err)})",
                            "CONFIG_DEBUG_INFO_BTF=y")
        try:
            for name in PROBE_TARGETS:
                type_id = lib.btf__find_by_name_kind(btf, name.encode(), BTF_KIND_FUNC)
                if isinstance(type_id, int) and type_id > 0:
                    return name, type_id
        finally:
            lib.btf__free(btf)
        raise UserError(f"none of {', '.join(PROBE_TARGETS)} is a FUNC in vmlinux BTF")

    def security_note(self) -> str:
        """Lockdown mode and LSM list when securityfs shows them (it is often not mounted)."""
        bits = []
        lockdown = _read("/sys/kernel/security/lockdown")
        if lockdown:
            bits.append(f"lockdown: {lockdown}")
        lsm = _read("/sys/kernel/security/lsm")
        if lsm:
            bits.append(f"LSMs: {lsm}")
        return "; ".join(bits)


def _load_prog(prog_type: int, name: str, attach_type: int, attach_btf_id: int = 0
               ) -> tuple[int, str]:
    """Load TRIVIAL_PROG; returns (fd or -errno, last line of the verifier log)."""
    log = ctypes.create_string_buffer(4096)
    opts = BpfProgLoadOpts(sz=ctypes.sizeof(BpfProgLoadOpts))
    opts.expected_attach_type = attach_type
    opts.attach_btf_id = attach_btf_id
    opts.log_buf = ctypes.cast(log, ctypes.c_char_p)
    opts.log_size = len(log)
    insns = ctypes.create_string_buffer(TRIVIAL_PROG, len(TRIVIAL_PROG))
    fd = libbpf.lib().bpf_prog_load(prog_type, name.encode(), b"GPL", insns,
                                    len(TRIVIAL_PROG) // 8, ctypes.byref(opts))
    text = log.value.decode(errors="replace").strip()
    return int(fd), (text.splitlines()[-1] if text else "")


# ---------------------------------------------------------------------------------------------
# the checks: each returns (available, detail, fix)

Result = tuple[bool, str, str | None]


def check_bpf_syscall(ctx: _Context) -> Result:
    nxt = ctypes.c_uint32(0)
    ret = int(libbpf.lib().bpf_prog_get_next_id(0, ctypes.byref(nxt)))
    unpriv = _read("/proc/sys/kernel/unprivileged_bpf_disabled")
    who = f"uid {os.geteuid()}"
    if ret == 0 or ret == -errno.ENOENT:
        first = f"first prog id {nxt.value}" if ret == 0 else "no programs loaded"
        return True, f"BPF_PROG_GET_NEXT_ID works as {who} ({first})", None
    err = -ret
    if err in (errno.EPERM, errno.EACCES):
        return (False, f"bpf(2) refused as {who} ({_errname(err)}; "
                f"unprivileged_bpf_disabled={unpriv})",
                "run as root (CAP_SYS_ADMIN, or CAP_BPF + CAP_PERFMON)")
    if err == errno.ENOSYS:
        return False, "the kernel has no bpf(2) syscall (ENOSYS)", "CONFIG_BPF_SYSCALL=y"
    return False, f"BPF_PROG_GET_NEXT_ID failed: {os.strerror(err)} ({_errname(err)})", None


def check_bpf_jit(ctx: _Context) -> Result:
    val = _read("/proc/sys/net/core/bpf_jit_enable")
    if val is None:
        note = ctx.config_note("CONFIG_BPF_JIT")
        return (False, "/proc/sys/net/core/bpf_jit_enable missing" + (f"; {note}" if note else ""),
                "a kernel with CONFIG_BPF_JIT=y")
    meaning = {"0": "off (interpreter)", "1": "on", "2": "on, with debug dumps"}.get(val, "?")
    always = ctx.config_note("CONFIG_BPF_JIT_ALWAYS_ON")
    detail = f"bpf_jit_enable={val}: {meaning}" + (f"; {always}" if "=y" in always else "")
    if val == "0":
        return False, detail, "sysctl -w net.core.bpf_jit_enable=1"
    return True, detail, None


def check_kernel_btf(ctx: _Context) -> Result:
    path = "/sys/kernel/btf/vmlinux"
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        note = ctx.config_note("CONFIG_DEBUG_INFO_BTF")
        return (False, f"{path}: {exc.strerror}" + (f"; {note}" if note else ""),
                "a kernel with CONFIG_DEBUG_INFO_BTF=y")
    return True, f"{path} ({size / 1e6:.1f} MB)", None


def check_tracing_prog(ctx: _Context) -> Result:
    target, func_id = ctx.probe_target
    fd, log = _load_prog(BPF_PROG_TYPE_TRACING, "bpflbr_feat_tr", BPF_TRACE_FENTRY, func_id)
    what = f"trivial fentry prog on {target} (BTF id {func_id})"
    if fd >= 0:
        os.close(fd)
        return True, f"{what} loads (closed again, never attached)", None
    err = -fd
    logpart = f"; verifier: {log}" if log else "; empty verifier log"
    if err in (errno.EPERM, errno.EACCES):
        if not (ctx.has_cap(CAP_SYS_ADMIN) or (ctx.has_cap(CAP_BPF)
                                                and ctx.has_cap(CAP_PERFMON))):
            return (False, f"{what}: {_errname(err)}, this process lacks CAP_BPF+CAP_PERFMON",
                    "run as root")
        sec = ctx.security_note()
        return (False, f"{what}: {_errname(err)} although we hold CAP_SYS_ADMIN: blocked by "
                f"policy (lockdown/LSM){logpart}" + (f"; {sec}" if sec else ""),
                "boot without the lockdown/LSM policy that denies BPF tracing (or use the VM "
                "tier); fentry/fexit and 'trace prog' need it")
    if err == errno.EINVAL:
        return (False, f"{what}: EINVAL, the kernel rejects fentry here{logpart}",
                "a kernel with CONFIG_BPF_JIT and fentry support (5.5+, x86-64/arm64)")
    if err == 524:  # the kernel-internal ENOTSUPP
        return (False, f"{what}: ENOTSUPP (524), no BPF trampoline on this arch/JIT{logpart}",
                "a kernel whose JIT supports BPF trampolines")
    return False, f"{what}: {os.strerror(err)} ({_errname(err)}){logpart}", None


def check_kprobes(ctx: _Context) -> Result:
    found = []
    pmu = "/sys/bus/event_source/devices/kprobe/type"
    if os.path.exists(pmu):
        found.append(f"kprobe PMU type {_read(pmu)}")
    for mnt, fstype in ctx.mounts:
        if fstype == "tracefs" and os.path.exists(os.path.join(mnt, "kprobe_events")):
            found.append(f"{mnt}/kprobe_events")
            break
    note = ctx.config_note("CONFIG_KPROBES")
    if found:
        return True, ", ".join(found) + (f"; {note}" if note else ""), None
    detail = "no kprobe PMU in /sys/bus/event_source/devices and no tracefs kprobe_events"
    return False, detail + (f"; {note}" if note else ""), "a kernel with CONFIG_KPROBES=y"


def check_kprobe_multi(ctx: _Context) -> Result:
    try:
        target = ctx.probe_target[0]
    except UserError:
        target = PROBE_TARGETS[0]  # kprobe.multi resolves names through kallsyms, not BTF
    fd, log = _load_prog(BPF_PROG_TYPE_KPROBE, "bpflbr_feat_km", BPF_TRACE_KPROBE_MULTI)
    fpr = ctx.config_note("CONFIG_FPROBE")
    fpr = f"; {fpr}" if fpr else ""
    if fd < 0:
        err = -fd
        if err == errno.EINVAL:
            return (False, f"kprobe prog with expected_attach_type KPROBE_MULTI rejected (EINVAL):"
                    f" kernel older than 5.18{fpr}", "a 5.18+ kernel with CONFIG_FPROBE=y")
        return (False, f"loading a kprobe.multi prog failed: {os.strerror(err)} "
                f"({_errname(err)}){fpr}", "run as root" if err == errno.EPERM else None)
    try:
        syms = (ctypes.c_char_p * 1)(target.encode())
        opts = BpfLinkCreateOpts(sz=ctypes.sizeof(BpfLinkCreateOpts))
        opts.kprobe_multi.cnt = 1
        opts.kprobe_multi.syms = syms
        link = int(libbpf.lib().bpf_link_create(fd, 0, BPF_TRACE_KPROBE_MULTI,
                                                 ctypes.byref(opts)))
        if link >= 0:
            os.close(link)
            return True, f"kprobe.multi link on {target} created (and closed again){fpr}", None
    finally:
        os.close(fd)
    err = -link
    what = f"bpf_link_create(KPROBE_MULTI, {target})"
    if err == errno.EOPNOTSUPP:
        return (False, f"{what}: EOPNOTSUPP, the kernel has no fprobe{fpr}",
                "a kernel with CONFIG_FPROBE=y (retsnoop/bpfsnoop then use kprobe.multi)")
    if err in (errno.ESRCH, errno.ENOENT):
        return False, f"{what}: {_errname(err)}, symbol not found{fpr}", None
    return False, f"{what}: {os.strerror(err)} ({_errname(err)}){fpr}", None


def check_lbr(ctx: _Context) -> Result:
    cpu = perf.online_cpus()[0]
    pmu = "/sys/bus/event_source/devices/cpu"
    pmus = ("PMU " + pmu if os.path.exists(pmu) else f"no {pmu}")
    try:
        fds = perf.open_lbr_events("any", kernel=True, cpus=[cpu])
    except UserError as exc:
        return False, f"{exc.problem}; {pmus}", exc.fix
    perf.close_all(fds)
    return True, f"cycles event with a kernel branch stack opens on CPU {cpu} ({pmus})", None


def check_uprobes(ctx: _Context) -> Result:
    path = "/sys/bus/event_source/devices/uprobe/type"
    val = _read(path)
    if val is None:
        note = ctx.config_note("CONFIG_UPROBES")
        return False, f"no {path}" + (f"; {note}" if note else ""), "a kernel with CONFIG_UPROBES=y"
    return True, f"uprobe PMU type {val}", None


def check_kcore(ctx: _Context) -> Result:
    path = "/proc/kcore"
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        note = ctx.config_note("CONFIG_PROC_KCORE")
        return (False, f"{path} does not exist" + (f"; {note}" if note else ""),
                "a kernel with CONFIG_PROC_KCORE=y (drgn needs it for the live kernel)")
    except OSError as exc:
        sec = ctx.security_note()
        return (False, f"{path} exists but is not readable: {exc.strerror}"
                + (f"; {sec}" if sec else ""),
                "run as root; lockdown=confidentiality also hides it")
    if magic != b"\x7fELF":
        return False, f"{path} readable but not ELF ({magic!r})", None
    return True, f"{path} readable (ELF)", None


def vmlinux_candidates(release: str) -> list[str]:
    """Where distributions (and bpfsnoop/drgn) look for the running kernel's vmlinux."""
    return [
        f"/usr/lib/debug/boot/vmlinux-{release}",
        f"/usr/lib/debug/lib/modules/{release}/vmlinux",
        f"/boot/vmlinux-{release}",
        f"/lib/modules/{release}/vmlinux",
        f"/lib/modules/{release}/build/vmlinux",
    ]


def _elf_sections(path: str) -> dict[str, tuple[int, int]]:
    """{section name: (offset, size)} of a 64-bit little-endian ELF, reading headers only."""
    with open(path, "rb") as f:
        ehdr = f.read(64)
        if ehdr[:4] != b"\x7fELF" or ehdr[4] != 2 or ehdr[5] != 1:
            raise ValueError("not a 64-bit little-endian ELF file")
        shoff, = struct.unpack_from("<Q", ehdr, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ehdr, 0x3A)
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        heads = [struct.unpack_from("<IIQQQQ", table, i * shentsize) for i in range(shnum)]
        _, _, _, _, str_off, str_size = heads[shstrndx]
        f.seek(str_off)
        names = f.read(str_size)
    out = {}
    for name_off, _type, _flags, _addr, off, size in heads:
        name = names[name_off : names.index(b"\0", name_off)].decode(errors="replace")
        out[name] = (off, size)
    return out


def _gnu_build_id(notes: bytes) -> str | None:
    pos = 0
    while pos + 12 <= len(notes):
        namesz, descsz, ntype = struct.unpack_from("<III", notes, pos)
        pos += 12
        name = notes[pos : pos + namesz]
        pos += (namesz + 3) & ~3
        desc = notes[pos : pos + descsz]
        pos += (descsz + 3) & ~3
        if ntype == 3 and name.rstrip(b"\0") == b"GNU":
            return desc.hex()
    return None


def _running_build_id() -> str | None:
    try:
        with open("/sys/kernel/notes", "rb") as f:
            return _gnu_build_id(f.read())
    except OSError:
        return None


def check_vmlinux_debuginfo(ctx: _Context) -> Result:
    seen = []
    running = _running_build_id()
    for path in vmlinux_candidates(ctx.release):
        if not os.path.exists(path):
            continue
        try:
            sections = _elf_sections(path)
        except (OSError, ValueError, struct.error) as exc:
            seen.append(f"{path}: unreadable ({exc})")
            continue
        if ".debug_info" not in sections:
            seen.append(f"{path}: no .debug_info")
            continue
        build_id = None
        for sec in (".notes", ".note.gnu.build-id"):
            if sec in sections:
                off, size = sections[sec]
                with open(path, "rb") as f:
                    f.seek(off)
                    build_id = _gnu_build_id(f.read(size))
                if build_id:
                    break
        if running and build_id and running != build_id:
            seen.append(f"{path}: DWARF present but build id {build_id[:12]} does not match the "
                        f"running kernel's {running[:12]}")
            continue
        match = " (build id matches)" if running and build_id else ""
        return True, f"{path} has DWARF{match}", None
    detail = "; ".join(seen) if seen else "no vmlinux with DWARF in the usual paths"
    return (False, detail,
            f"install the kernel's debug package (e.g. linux-image-{ctx.release}-dbg) so "
            f"/usr/lib/debug/boot/vmlinux-{ctx.release} exists")


def _import(name: str) -> tuple[object, float]:
    t0 = time.perf_counter()
    mod = importlib.import_module(name)
    return mod, time.perf_counter() - t0


def check_drgn(ctx: _Context) -> Result:
    try:
        mod, dt = _import("drgn")
    except ImportError as exc:
        return False, f"import drgn failed: {exc}", "pip install drgn (in this venv)"
    return True, f"drgn {getattr(mod, '__version__', '?')} (import {dt:.2f} s)", None


def check_bcc(ctx: _Context) -> Result:
    try:
        mod, dt = _import("bcc")
    except ImportError as exc:
        return (False, f"import bcc failed: {exc}",
                "apt-get install python3-bpfcc, and use a venv made with "
                "'/usr/bin/python3 -m venv --system-site-packages'")
    except OSError as exc:  # bcc found but libbcc.so missing
        return False, f"import bcc failed: {exc}", "apt-get install libbpfcc"
    return (True, f"bcc {getattr(mod, '__version__', '?')} from "
            f"{os.path.dirname(getattr(mod, '__file__', '?') or '?')} (import {dt:.2f} s)", None)


# Where BCC 0.26's clang loader (src/cc/frontends/clang/loader.cc) looks for kernel headers
KERNEL_MODULES_DIR = "/lib/modules"
KHEADERS = "/sys/kernel/kheaders.tar.xz"  # CONFIG_IKHEADERS: the running kernel's own headers
_KCONFIG_H = "include/linux/kconfig.h"  # what the loader checks to accept a tree


@dataclass(frozen=True)
class KernelHeaders:
    """The kernel headers a BCC compile will meet. ``tree`` is where BCC compiles (None: it
    finds none, and cannot compile); ``release`` the kernel they are for (None: they do not
    say). The one owner of this fact: ``bccprog.compile_program`` refuses on it, the
    bcc-headers row reports it (it lives here, not in bccprog, since kernel/ never imports
    trace/)."""

    running: str
    tree: str | None
    release: str | None
    detail: str
    fix: str | None

    @property
    def usable(self) -> bool:
        return self.tree is not None

    @property
    def matches(self) -> bool:
        return self.usable and self.release == self.running


def headers_release(tree: str) -> str | None:
    """The kernel release a headers tree is for: its utsrelease.h, else its Debian name."""
    try:
        text = Path(tree, "include/generated/utsrelease.h").read_text()
    except (OSError, UnicodeDecodeError):
        text = ""
    for line in text.splitlines():
        if "UTS_RELEASE" in line and '"' in line:
            return line.split('"')[1]
    base = os.path.basename(tree.rstrip("/"))
    for prefix in ("linux-headers-", "linux-"):
        if base.startswith(prefix):
            return base[len(prefix):]
    return None


def kernel_headers(running: str | None = None, modules_dir: str = KERNEL_MODULES_DIR,
                   kheaders: str = KHEADERS,
                   environ: Mapping[str, str] | None = None) -> KernelHeaders:
    """The headers BCC will use, chosen as its loader chooses: ``$BCC_KERNEL_SOURCE`` if set;
    else ``<modules>/<release>/source`` when both it and ``build`` are directories (the Debian
    layout: ``source`` the common tree, ``build`` the arch's generated headers, which say the
    release); else ``build`` (or ``$BCC_KERNEL_MODULES_SUFFIX``). A tree without
    include/linux/kconfig.h does not count; BCC then takes ``kheaders`` if the kernel has it."""
    env = os.environ if environ is None else environ
    running = running or os.uname().release
    kdir = os.path.join(modules_dir, running)
    build = os.path.join(kdir, "build")
    fix = f"install the headers of the running kernel ({running}) at {build} " \
          "(scripts/bootstrap.sh)"

    def show(path: str) -> str:
        real = os.path.realpath(path)
        return f"{path} -> {real}" if real != path else path

    kpath_env = env.get("BCC_KERNEL_SOURCE")
    if kpath_env:
        kpath, label, rel_tree = kpath_env, f"BCC_KERNEL_SOURCE={kpath_env}", kpath_env
    elif os.path.isdir(build) and os.path.isdir(os.path.join(kdir, "source")):
        source = os.path.join(kdir, "source")
        kpath, label, rel_tree = source, f"{show(source)} (+ {show(build)})", build
    else:
        kpath = os.path.join(kdir, env.get("BCC_KERNEL_MODULES_SUFFIX") or "build")
        label, rel_tree = show(kpath), kpath
    if os.path.isfile(os.path.join(kpath, _KCONFIG_H)):
        release = headers_release(os.path.realpath(rel_tree))
        if release is None:
            return KernelHeaders(running, kpath, None, f"{label}: cannot tell which kernel "
                                 "these headers are for", fix)
        if release != running:
            return KernelHeaders(running, kpath, release, f"MISMATCH: {label} holds headers "
                                 f"for {release}, the running kernel is {running}; BCC compiles "
                                 "against them, but programs that read kernel structs may use "
                                 "wrong offsets", fix)
        return KernelHeaders(running, kpath, release,
                             f"{label} ({release}, matches the running kernel)", None)
    if os.path.isfile(kheaders):
        return KernelHeaders(running, kheaders, running, f"no {_KCONFIG_H} under {label}; "
                             f"{kheaders} ({running}, matches the running kernel)", None)
    if not os.path.lexists(kpath):
        why = "does not exist"
    elif not os.path.exists(kpath):
        why = "dangling link"
    else:
        why = f"no {_KCONFIG_H}"
    return KernelHeaders(running, None, None, f"{label}: {why}, and no {kheaders}: BCC cannot "
                         "compile", fix)


def check_bcc_headers(ctx: _Context) -> Result:
    """What a BCC compile will meet (:func:`kernel_headers`, which the compile refuses on); a
    tree for another kernel compiles, but is reported as not usable."""
    headers = kernel_headers(ctx.release)
    return headers.matches, headers.detail, headers.fix


def _check_fs(ctx: _Context, fstype: str, default: str, what: str) -> Result:
    points = [mnt for mnt, fs in ctx.mounts if fs == fstype]
    if points:
        return True, f"{what} mounted at {', '.join(points)}", None
    exists = "exists" if os.path.isdir(default) else "does not exist"
    return (False, f"{what} not mounted ({default} {exists})",
            f"mount -t {fstype} nodev {default}")


def check_tracefs(ctx: _Context) -> Result:
    return _check_fs(ctx, "tracefs", "/sys/kernel/tracing", "tracefs")


def check_bpffs(ctx: _Context) -> Result:
    return _check_fs(ctx, "bpf", "/sys/fs/bpf", "bpffs")


CHECKS: tuple[tuple[str, Callable[[_Context], Result]], ...] = (
    ("bpf-syscall", check_bpf_syscall),
    ("bpf-jit", check_bpf_jit),
    ("kernel-btf", check_kernel_btf),
    ("tracing-prog", check_tracing_prog),
    ("kprobes", check_kprobes),
    ("kprobe-multi", check_kprobe_multi),
    ("lbr", check_lbr),
    ("uprobes", check_uprobes),
    ("kcore", check_kcore),
    ("vmlinux-debuginfo", check_vmlinux_debuginfo),
    ("drgn", check_drgn),
    ("bcc", check_bcc),
    ("bcc-headers", check_bcc_headers),
    ("tracefs", check_tracefs),
    ("bpffs", check_bpffs),
)
FEATURE_NAMES = tuple(name for name, _ in CHECKS)


def probe_features(names: Iterable[str] | None = None) -> list[Feature]:
    """Run the checks (all, or those named) in a fixed order; one row per check, always."""
    wanted = set(FEATURE_NAMES if names is None else names)
    unknown = wanted - set(FEATURE_NAMES)
    if unknown:
        raise UsageError(f"unknown feature {', '.join(sorted(unknown))}",
                         "valid: " + ", ".join(FEATURE_NAMES))
    ctx = _Context()
    out = []
    for name, check in CHECKS:
        if name not in wanted:
            continue
        try:
            available, detail, fix = check(ctx)
        except UserError as exc:
            available, detail, fix = False, exc.problem, exc.fix
        except Exception as exc:  # a bug in one check must not hide the others
            available, detail, fix = False, f"check crashed: {type(exc).__name__}: {exc}", None
        out.append(Feature(name, available, detail or "(nothing found)", fix))
    return out


def render_features(features: Iterable[Feature], width: int | None = None) -> str:
    """A plain table: name, yes/no, detail, with the fix on its own line below the detail."""
    rows = list(features)
    namew = max((len(f.name) for f in rows), default=4)
    lines = [f"{'feature':<{namew}}  ok   detail"]
    indent = " " * (namew + 7)
    for f in rows:
        lines.append(f"{f.name:<{namew}}  {'yes' if f.available else 'no ':<3}  {f.detail}")
        if f.fix:
            lines.append(f"{indent}fix: {f.fix}")
    if width:
        lines = [ln if len(ln) <= width else ln[: width - 1] + "…" for ln in lines]
    return "\n".join(lines)


def to_json(features: Iterable[Feature]) -> list[dict[str, object]]:
    """JSON-ready rows (recordings keep them so a reader knows what the source host could do)."""
    return [f.to_json() for f in features]

