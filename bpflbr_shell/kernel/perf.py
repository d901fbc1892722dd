"""perf_event_open(2) through ctypes, just enough to switch on LBR (the CPU's branch stack).

``bpf_get_branch_snapshot()`` only returns data while a perf event with
``PERF_SAMPLE_BRANCH_STACK`` is open on the CPU, so the tracer opens one cycles event per CPU
(as retsnoop and bpfsnoop do) and keeps the fds for the life of the trace. The same call backs
the feature probe, which is why a failure is turned into one line saying *why* LBR is missing.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from collections.abc import Callable, Iterable, Sequence
from functools import cache

from bpflbr_shell.errors import FeatureError, PrivilegeError, UsageError

u16 = ctypes.c_uint16
u32 = ctypes.c_uint32
u64 = ctypes.c_uint64

# perf_event_open syscall number per machine (asm/unistd_64.h and the generic table).
_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "riscv64": 241, "ppc64le": 319,
                       "s390x": 331}

PERF_TYPE_HARDWARE = 0
PERF_COUNT_HW_CPU_CYCLES = 0
PERF_SAMPLE_BRANCH_STACK = 1 << 11
PERF_FLAG_FD_CLOEXEC = 1 << 3

# enum perf_branch_sample_type (linux/perf_event.h): privilege levels ...
PERF_SAMPLE_BRANCH_USER = 1 << 0
PERF_SAMPLE_BRANCH_KERNEL = 1 << 1
PERF_SAMPLE_BRANCH_HV = 1 << 2
# ... and branch kinds.
PERF_SAMPLE_BRANCH_ANY = 1 << 3
PERF_SAMPLE_BRANCH_ANY_CALL = 1 << 4
PERF_SAMPLE_BRANCH_ANY_RETURN = 1 << 5
PERF_SAMPLE_BRANCH_IND_CALL = 1 << 6
PERF_SAMPLE_BRANCH_ABORT_TX = 1 << 7
PERF_SAMPLE_BRANCH_IN_TX = 1 << 8
PERF_SAMPLE_BRANCH_NO_TX = 1 << 9
PERF_SAMPLE_BRANCH_COND = 1 << 10
PERF_SAMPLE_BRANCH_CALL_STACK = 1 << 11
PERF_SAMPLE_BRANCH_IND_JUMP = 1 << 12
PERF_SAMPLE_BRANCH_CALL = 1 << 13

PRIVILEGE_BITS = PERF_SAMPLE_BRANCH_USER | PERF_SAMPLE_BRANCH_KERNEL | PERF_SAMPLE_BRANCH_HV

# retsnoop's --lbr spellings (bpfsnoop accepts the same), in retsnoop's order.
BRANCH_TYPES: dict[str, int] = {
    "any": PERF_SAMPLE_BRANCH_ANY,
    "any_call": PERF_SAMPLE_BRANCH_ANY_CALL,
    "any_return": PERF_SAMPLE_BRANCH_ANY_RETURN,
    "cond": PERF_SAMPLE_BRANCH_COND,
    "call": PERF_SAMPLE_BRANCH_CALL,
    "ind_call": PERF_SAMPLE_BRANCH_IND_CALL,
    "ind_jump": PERF_SAMPLE_BRANCH_IND_JUMP,
    "call_stack": PERF_SAMPLE_BRANCH_CALL_STACK,
    "abort_tx": PERF_SAMPLE_BRANCH_ABORT_TX,
    "in_tx": PERF_SAMPLE_BRANCH_IN_TX,
    "no_tx": PERF_SAMPLE_BRANCH_NO_TX,
}
_ALL_KIND_BITS = sum(BRANCH_TYPES.values())  # distinct single bits, so sum == OR


def parse_branch_types(spec: str | Iterable[str] | None) -> int:
    """Branch-kind bits (no privilege bits) for ``"any"``, ``"call,ind_jump"``, ``["cond"]``...

    Like retsnoop, a number (``0x18``) is taken as raw branch-kind bits, and nothing means
    ``any``. Unknown names raise :class:`UsageError` listing the valid ones.
    """
    if spec is None:
        names: list[str] = []
    elif isinstance(spec, str):
        names = [p for p in spec.replace(" ", ",").split(",") if p]
    else:
        names = [str(p).strip() for p in spec if str(p).strip()]
    if not names:
        return PERF_SAMPLE_BRANCH_ANY
    bits = 0
    for name in names:
        key = name.lower()
        if key in BRANCH_TYPES:
            bits |= BRANCH_TYPES[key]
            continue
        try:
            raw = int(key, 0)
        except ValueError:
            raise UsageError(
                f"unknown LBR branch type {name!r}",
                "valid: " + ", ".join(BRANCH_TYPES),
            ) from None
        if raw <= 0 or raw & ~_ALL_KIND_BITS:
            raise UsageError(
                f"LBR branch mask {name} has bits outside the branch kinds ({_ALL_KIND_BITS:#x})",
                "use names: " + ", ".join(BRANCH_TYPES),
            )
        bits |= raw
    return bits


def branch_type_names(bits: int) -> list[str]:
    """The alias names set in ``bits`` (inverse of :func:`parse_branch_types`)."""
    return [name for name, bit in BRANCH_TYPES.items() if bits & bit]


class _SampleUnion(ctypes.Union):
    _fields_ = [("sample_period", u64), ("sample_freq", u64)]


class _WakeupUnion(ctypes.Union):
    _fields_ = [("wakeup_events", u32), ("wakeup_watermark", u32)]


class _Config1Union(ctypes.Union):
    _fields_ = [("bp_addr", u64), ("kprobe_func", u64), ("uprobe_path", u64), ("config1", u64)]


class _Config2Union(ctypes.Union):
    _fields_ = [("bp_len", u64), ("kprobe_addr", u64), ("probe_offset", u64), ("config2", u64)]


class PerfEventAttr(ctypes.Structure):
    """``struct perf_event_attr`` as in the uapi header we build against (PERF_ATTR_SIZE_VER7).

    The 64 one-bit flags (``disabled``, ``inherit``, ...) are kept in one ``flags`` word and set
    through :data:`ATTR_FLAG_BITS`; ctypes bit-fields would work too but hide the layout the
    test checks against the C compiler.
    """

    _anonymous_ = ("_u_sample", "_u_wakeup", "_u_config1", "_u_config2")
    _fields_ = [
        ("type", u32),
        ("size", u32),
        ("config", u64),
        ("_u_sample", _SampleUnion),
        ("sample_type", u64),
        ("read_format", u64),
        ("flags", u64),
        ("_u_wakeup", _WakeupUnion),
        ("bp_type", u32),
        ("_u_config1", _Config1Union),
        ("_u_config2", _Config2Union),
        ("branch_sample_type", u64),
        ("sample_regs_user", u64),
        ("sample_stack_user", u32),
        ("clockid", ctypes.c_int32),
        ("sample_regs_intr", u64),
        ("aux_watermark", u32),
        ("sample_max_stack", u16),
        ("_reserved_2", u16),
        ("aux_sample_size", u32),
        ("_reserved_3", u32),
        ("sig_data", u64),
    ]


PERF_ATTR_SIZE_VER7 = 128
assert ctypes.sizeof(PerfEventAttr) == PERF_ATTR_SIZE_VER7, ctypes.sizeof(PerfEventAttr)

# Bit positions inside PerfEventAttr.flags, in header order; precise_ip is two bits wide.
ATTR_FLAG_BITS: dict[str, int] = {
    name: pos
    for pos, name in enumerate(
        (
            "disabled", "inherit", "pinned", "exclusive", "exclude_user", "exclude_kernel",
            "exclude_hv", "exclude_idle", "mmap", "comm", "freq", "inherit_stat",
            "enable_on_exec", "task", "watermark", "precise_ip", "_precise_ip_hi", "mmap_data",
            "sample_id_all", "exclude_host", "exclude_guest", "exclude_callchain_kernel",
            "exclude_callchain_user", "mmap2", "comm_exec", "use_clockid", "context_switch",
            "write_backward", "namespaces", "ksymbol", "bpf_event", "aux_output", "cgroup",
            "text_poke", "build_id", "inherit_thread", "remove_on_exec", "sigtrap",
        )
    )
    if not name.startswith("_")
}


@cache
def _syscall() -> Callable[..., int]:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.syscall
    fn.restype = ctypes.c_long
    fn.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                   ctypes.c_ulong]
    return fn


def perf_event_open(attr: PerfEventAttr, pid: int, cpu: int, group_fd: int = -1,
                    flags: int = PERF_FLAG_FD_CLOEXEC) -> int:
    """The raw syscall: an fd, or ``OSError`` carrying the kernel's errno."""
    nr = _NR_PERF_EVENT_OPEN.get(os.uname().machine)
    if nr is None:
        raise FeatureError(f"perf_event_open: syscall number unknown for {os.uname().machine}")
    ret = _syscall()(nr, ctypes.byref(attr), pid, cpu, group_fd, flags)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def lbr_attr(branch_bits: int, kernel: bool = True, user: bool = False) -> PerfEventAttr:
    """The attr retsnoop uses: a cycles event whose only purpose is to keep LBR recording."""
    if not (kernel or user):
        raise UsageError("LBR needs kernel or user branches (or both)")
    attr = PerfEventAttr()
    attr.type = PERF_TYPE_HARDWARE
    attr.size = ctypes.sizeof(PerfEventAttr)
    attr.config = PERF_COUNT_HW_CPU_CYCLES
    attr.sample_type = PERF_SAMPLE_BRANCH_STACK
    attr.branch_sample_type = (
        (branch_bits & ~PRIVILEGE_BITS)
        | (PERF_SAMPLE_BRANCH_KERNEL if kernel else 0)
        | (PERF_SAMPLE_BRANCH_USER if user else 0)
    )
    return attr


def parse_cpu_list(text: str) -> list[int]:
    """A kernel CPU list (``0-3,6``: /sys/devices/system/cpu/online, ``possible``) as CPU
    ids; ValueError when it is not one."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if "-" in part:
            lo, hi = part.split("-")
            cpus.extend(range(int(lo), int(hi) + 1))
        elif part:
            cpus.append(int(part))
    return cpus


def cpu_list(which: str) -> list[int]:
    """``online`` or ``possible`` CPUs from /sys; ``range(os.cpu_count())`` if unreadable."""
    try:
        with open(f"/sys/devices/system/cpu/{which}") as f:
            return parse_cpu_list(f.read())
    except (OSError, ValueError):
        return list(range(os.cpu_count() or 1))


def online_cpus() -> list[int]:
    """CPUs listed in /sys/devices/system/cpu/online (``0-3,6``); os.cpu_count() as fallback."""
    return cpu_list("online")


def explain_lbr_errno(err: int, branch_bits: int) -> tuple[str, str | None]:
    """(why, fix) for a failed LBR perf_event_open; shared with the feature probe."""
    kinds = ",".join(branch_type_names(branch_bits)) or f"{branch_bits:#x}"
    bare_metal = ("run on bare metal with LBR (Intel) or LbrExtV2 (AMD Zen 4+), or a VM "
                  "that passes the PMU's LBR through")
    if err == errno.ENOENT:
        return ("no hardware PMU with a branch stack (LBR) on this CPU "
                "(cycles event unknown: ENOENT)", bare_metal)
    if err == errno.ENODEV:
        return "no hardware PMU on this CPU (ENODEV)", bare_metal
    if err == errno.EOPNOTSUPP:
        return ("the CPU's PMU has no branch stack (LBR) support (EOPNOTSUPP)", bare_metal)
    if err == errno.EINVAL:
        return (f"the PMU rejected branch types {kinds} (EINVAL); this LBR cannot filter "
                "that way", "try --lbr any")
    if err == errno.EBUSY:
        return ("LBR is busy: another user (perf record -b, a hypervisor) holds it (EBUSY)",
                "stop the other LBR user")
    if err == errno.ENOSYS:
        return "the kernel has no perf_event_open (ENOSYS)", "CONFIG_PERF_EVENTS=y"
    if err in (errno.EACCES, errno.EPERM):
        return (f"perf_event_open refused ({errno.errorcode[err]}): kernel.perf_event_paranoid "
                "or lockdown", "run as root (CAP_PERFMON) or lower kernel.perf_event_paranoid")
    name = errno.errorcode.get(err, str(err))
    return f"perf_event_open failed: {os.strerror(err)} ({name})", None


def close_all(fds: Iterable[int]) -> None:
    """Close every fd, ignoring ones already closed: cleanup must never raise."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def open_lbr_events(branch_types: str | Iterable[str] | int | None = None, kernel: bool = True,
                    user: bool = False, cpus: Sequence[int] | None = None) -> list[int]:
    """One LBR-enabling cycles event per CPU (pid=-1); all or nothing.

    ``branch_types`` is anything :func:`parse_branch_types` takes, or raw bits. On failure every
    fd opened so far is closed and a :class:`FeatureError` (:class:`PrivilegeError` for
    EPERM/EACCES) says why LBR is unavailable.
    """
    bits = branch_types if isinstance(branch_types, int) else parse_branch_types(branch_types)
    attr = lbr_attr(bits, kernel=kernel, user=user)
    fds: list[int] = []
    try:
        for cpu in online_cpus() if cpus is None else cpus:
            try:
                fds.append(perf_event_open(attr, -1, cpu))
            except OSError as exc:
                why, fix = explain_lbr_errno(exc.errno or 0, bits)
                where = f"LBR on CPU {cpu}: {why}"
                if exc.errno in (errno.EACCES, errno.EPERM):
                    raise PrivilegeError(where, fix) from None
                raise FeatureError(where, fix) from None
    except BaseException:
        close_all(fds)
        raise
    return fds


# uprobes and kprobes as perf events of their PMUs ------------------------------------------
# (linux/perf_event.h: _IO('$', 0), _IO('$', 1), _IOW('$', 8, __u32))
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_DISABLE = 0x2401
PERF_EVENT_IOC_SET_BPF = 0x40042408
EVENT_SOURCES = "/sys/bus/event_source/devices"


@cache
def probe_pmu(kind: str) -> tuple[int, int]:
    """(perf type, retprobe config bit) of the ``uprobe`` or ``kprobe`` PMU, from sysfs."""
    base = f"{EVENT_SOURCES}/{kind}"
    try:
        with open(f"{base}/type") as f:
            pmu_type = int(f.read())
        with open(f"{base}/format/retprobe") as f:
            fmt = f.read().strip()  # "config:0"
        field, _, bit = fmt.partition(":")
        if field != "config" or not bit.isdigit():
            raise ValueError(fmt)
    except (OSError, ValueError) as exc:
        raise FeatureError(f"no {kind} PMU in {EVENT_SOURCES} ({exc})",
                           f"a kernel with CONFIG_{kind.upper()}_EVENTS=y") from None
    return pmu_type, int(bit)


def probe_attr(kind: str, target: bytes, offset: int, retprobe: bool) -> tuple[PerfEventAttr,
                                                                                 ctypes.Array]:
    """The attr of a uprobe (``target`` = binary path, ``offset`` = file offset) or kprobe
    (``target`` = function, ``offset`` into it). The config's upper half, the uprobe's
    ref_ctr_offset, stays 0: a probe with another ref_ctr_offset at the same place would make
    the kernel refuse other tracers' probes there (and theirs ours). Returns the path buffer
    too: it must live until perf_event_open has copied it."""
    pmu_type, ret_bit = probe_pmu(kind)
    buf = ctypes.create_string_buffer(target)
    attr = PerfEventAttr()
    attr.type = pmu_type
    attr.size = ctypes.sizeof(PerfEventAttr)
    attr.config = (1 << ret_bit) if retprobe else 0
    attr.sample_period = 1
    attr.wakeup_events = 1
    attr.config1 = ctypes.addressof(buf)
    attr.config2 = offset
    return attr, buf


def explain_probe_errno(err: int, kind: str) -> tuple[str, str | None]:
    """(why, fix) for a uprobe/kprobe perf event the kernel refused."""
    name = errno.errorcode.get(err, str(err))
    if kind == "uprobe" and err == errno.EINVAL:
        return ("the kernel refused the uprobe (EINVAL): another tracer holds a uprobe at this "
                "address with a different ref_ctr_offset (a USDT semaphore, or the garbage one "
                "Debian's BCC Python tools set: `dmesg | grep ref_ctr_offset` tells), or the "
                "offset is outside the file", "stop the other tracer, or trace another function")
    if err == errno.ENOENT:
        return (f"no such {'file' if kind == 'uprobe' else 'function'} for the {kind} (ENOENT)",
                None)
    if err == errno.ESRCH:
        return "the process is gone (ESRCH)", "--pid takes the id of a running process"
    if err in (errno.EPERM, errno.EACCES):
        return (f"the kernel refused the {kind} ({name})", "run as root (CAP_PERFMON)")
    if err == errno.EEXIST:
        return f"the {kind} event already has a BPF program (EEXIST)", None
    return f"the kernel refused the {kind}: {os.strerror(err)} ({name})", None


def attach_probe(kind: str, target: bytes, offset: int, retprobe: bool, pid: int,
                 prog_fd: int, what: str) -> int:
    """A uprobe/kprobe perf event running ``prog_fd``; returns its fd (closing it detaches).

    ``pid`` > 0 limits a uprobe to that process (any CPU); otherwise the event is opened on
    one CPU with pid -1, which the kernel requires for a system-wide event: the program runs
    on every CPU all the same, since it hangs off the probe, not the CPU's event.
    """
    attr, _keep = probe_attr(kind, target, offset, retprobe)
    cpu = -1 if pid > 0 else (online_cpus() or [0])[0]
    try:
        fd = perf_event_open(attr, pid if pid > 0 else -1, cpu)
    except OSError as exc:
        why, fix = explain_probe_errno(exc.errno or 0, kind)
        err = PrivilegeError if exc.errno in (errno.EPERM, errno.EACCES) else FeatureError
        raise err(f"{what}: {why}", fix) from None
    try:
        fcntl.ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog_fd)
        fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
    except OSError as exc:
        os.close(fd)
        why, fix = explain_probe_errno(exc.errno or 0, kind)
        raise FeatureError(f"{what}: attaching the program: {why}", fix) from None
    return fd
