"""fentry/fexit (BPF_PROG_TYPE_TRACING) on BPF programs and on kernel functions.

BCC compiles ``bpf/fentry.c`` and creates its maps; libbpf loads the bytecode BCC hands back
(``dump_func``, map fds in place) with what BCC 0.26 cannot set: the expected attach type, the
target's BTF func id and, for a BPF target, ``attach_prog_fd``. Each attachment is a link;
after creating it we read the link back, because libbpf silently falls back to
``BPF_RAW_TRACEPOINT_OPEN`` when ``BPF_LINK_CREATE`` fails and would attach as loaded.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from bpflbr_shell.errors import FeatureError, UsageError, UserError
from bpflbr_shell.kernel import libbpf
from bpflbr_shell.kernel.btf import Btf
from bpflbr_shell.kernel.model import ProgInfo
from bpflbr_shell.kernel.values import Signature
from bpflbr_shell.trace.events import MAX_ARGS, Event
from bpflbr_shell.trace.lbr import AddrRange
from bpflbr_shell.trace.probes.base import (
    CaptureOptions,
    ProbeTracer,
    capture_options,
    kernel_filter_knobs,
)
from bpflbr_shell.trace.spec import PlanContext, TracePlan, TraceSpec

NOT_TRACEABLE_TYPES = {"tracing": "a tracing (fentry/fexit) program",
                       "ext": "an extension (freplace) program"}


@dataclass(frozen=True, slots=True)
class TracingTarget:
    """One function to attach to: a BPF subprogram (prog_id set) or a kernel function."""

    name: str  # BTF func name
    btf_id: int  # FUNC id in the target's BTF (the prog's, or vmlinux/module BTF)
    params: tuple[str, ...]  # parameter names from the BTF prototype
    prog_id: int = 0  # 0 for kernel functions
    addr: int = 0
    size: int = 0
    btf_obj_id: int = 0  # module BTF object for module functions (0: vmlinux)
    signature: Signature | None = None  # BTF value types of params and return (BPF targets)

    @property
    def nargs(self) -> int:
        return min(len(self.params), MAX_ARGS)


def prog_target(prog: ProgInfo, func: str | None) -> TracingTarget:
    """The subprogram of ``prog`` to attach to, refusing what fentry cannot trace."""
    if prog.type_name in NOT_TRACEABLE_TYPES:
        raise UsageError(f"prog {prog.id} is {NOT_TRACEABLE_TYPES[prog.type_name]}: "
                         "the kernel does not allow tracing it with fentry/fexit",
                         "trace the program it is attached to instead")
    if not prog.btf_id or not prog.raw or not prog.raw.func_info:
        raise UsageError(f"prog {prog.id} ({prog.name}) was loaded without BTF",
                         "fentry/fexit needs the target's BTF func info: load it with BTF")
    if not prog.jited:
        raise FeatureError(f"prog {prog.id} is not JITed", "sysctl net.core.bpf_jit_enable=1")
    sub = prog.subprogs[0] if func is None else prog.subprog(func)
    btf = Btf.parse(prog.raw.btf)
    params = tuple(name or f"arg{i}" for i, (name, _) in
                   enumerate(btf.func_params(sub.btf_type_id)))
    return TracingTarget(sub.name, sub.btf_type_id, params, prog.id, sub.addr, sub.size,
                         signature=btf.func_signature(sub.btf_type_id))


@cache
def _btf_next_id() -> Callable[..., int]:
    so = libbpf.open_libbpf({"bpf_btf_get_next_id": (
        ctypes.c_int, [ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32)])})
    return so.bpf_btf_get_next_id


def kernel_btf_obj_id(module: str) -> int:
    """The id of the kernel BTF object named ``module`` (a loaded module's BTF, which a
    module function's fentry names through ``attach_btf_obj_fd``); 0 when there is none."""
    cur, nxt = ctypes.c_uint32(0), ctypes.c_uint32(0)
    name = ctypes.create_string_buffer(64)
    while True:
        ret = _btf_next_id()(cur, ctypes.byref(nxt))
        if ret < 0:
            err = -ret if ret != -1 else ctypes.get_errno()
            if err == errno.ENOENT:
                return 0
            libbpf.check(-err, "listing BTF objects")
        cur.value = nxt.value
        try:
            fd = libbpf.btf_fd_by_id(cur.value)
        except UserError:  # gone meanwhile
            continue
        try:
            info = libbpf.BpfBtfInfo(name=ctypes.addressof(name), name_len=len(name))
            libbpf.obj_info(fd, info, f"reading BTF object {cur.value}")
        finally:
            os.close(fd)
        if info.kernel_btf and name.value.decode(errors="replace") == module:
            return cur.value


class TracingTracer(ProbeTracer):
    """fentry and/or fexit on each target: one loaded program and one link per target and
    direction, all sharing the maps BCC created."""

    kind = "fentry"
    source = "fentry.c"
    lbr_kernel, lbr_user = True, False

    def __init__(self, targets: list[TracingTarget], capture: CaptureOptions, entry: bool,
                 exit: bool, on_event: Callable[[Event, int, int], None], label: str) -> None:
        super().__init__(capture, on_event, label)
        if not targets:
            raise UsageError("nothing to attach to")
        self.targets = targets
        self.entry, self.exit = entry, exit
        self._fds: list[int] = []  # our programs
        self._links: list[int] = []
        self._target_fds: dict[int, int] = {}  # prog id -> fd held while attaching

    @property
    def paired(self) -> bool:
        """Exits pair with their entries (durations) only when entries are traced too: fexit
        sees args and retval itself, and a second program per call (plus the stash) would
        cost several times what the fexit alone does."""
        return self.entry and self.exit

    def knobs(self) -> dict[str, int]:
        return {"NARGS": max(t.nargs for t in self.targets), "EMIT_ENTRY": int(self.entry),
                "PAIR_EXIT": int(self.paired)}

    def attach(self) -> None:
        """Every program is loaded (and verified) before the first link is made, then the
        links go fexit first, as kprobes.KprobeTracer does: an entry is stashed only once its
        exit will be seen. A call that enters between the two links has its exit delivered
        without a duration; with the loads in between, that window was a verification long
        (about 0.1 s under emulation) and a --both trace of a program run every 100 ms lost
        its first pairing now and then."""
        directions = []
        if self.exit:
            directions.append(("on_fexit", libbpf.BPF_TRACE_FEXIT))
        if self.entry:
            directions.append(("on_fentry", libbpf.BPF_TRACE_FENTRY))
        assert self.bpf is not None  # compiled by start() before attach()
        insns = {fn_name: self.bpf.dump_func(fn_name.encode()) for fn_name, _ in directions}
        loaded: list[tuple[int, int, str, TracingTarget]] = []
        for target in self.targets:
            target_fd = 0
            if target.prog_id:
                if target.prog_id not in self._target_fds:
                    self._target_fds[target.prog_id] = libbpf.prog_fd_by_id(target.prog_id)
                target_fd = self._target_fds[target.prog_id]
            for fn_name, attach_type in directions:
                btf_fd = libbpf.btf_fd_by_id(target.btf_obj_id) if target.btf_obj_id else 0
                try:
                    fd = libbpf.prog_load(
                        libbpf.BPF_PROG_TYPE_TRACING, f"bpflbr_{fn_name[3:]}", insns[fn_name],
                        expected_attach_type=attach_type, attach_btf_id=target.btf_id,
                        attach_prog_fd=target_fd, attach_btf_obj_fd=btf_fd)
                finally:
                    if btf_fd:
                        os.close(btf_fd)
                self._fds.append(fd)
                loaded.append((fd, attach_type, fn_name, target))
        for fd, attach_type, fn_name, target in loaded:
            link = libbpf.link_create(fd, 0, attach_type,
                                      what=f"attaching {fn_name[3:]} to {target.name}")
            self._links.append(link)
            self._check_link(link, attach_type, target)

    @staticmethod
    def _check_link(link: int, attach_type: int, target: TracingTarget) -> None:
        info = libbpf.link_info(link)
        got = info.tracing
        if got.attach_type != attach_type or got.target_btf_id != target.btf_id or (
                target.btf_obj_id and got.target_obj_id != target.btf_obj_id):
            raise UserError(
                f"the kernel attached to {target.name} as type {got.attach_type}/btf "
                f"{got.target_btf_id}, not {attach_type}/{target.btf_id} as asked",
                "this libbpf fell back to RAW_TRACEPOINT_OPEN; upgrade libbpf or the kernel")

    def detach(self) -> None:
        from bpflbr_shell.kernel.perf import close_all

        close_all([*self._links, *self._fds, *self._target_fds.values()])
        self._links, self._fds, self._target_fds = [], [], {}

    def prog_fds(self) -> list[int]:
        return list(self._fds)

    def keep_ranges(self) -> list[AddrRange]:
        """bpfsnoop's rule: for a BPF target, the branches inside its JIT image."""
        return [AddrRange(t.addr, t.addr + t.size, t.name) for t in self.targets if t.prog_id]


def plan(spec: TraceSpec, ctx: PlanContext) -> list[TracePlan]:
    """``prog SEL[:FUNC]``: fentry/fexit (``entry``/``exit``/``both`` options) on the main
    function or the named subprogram of every program the selector picks."""
    from bpflbr_shell.kernel.selectors import split_prog_target

    if len(spec.targets) != 1:
        raise UsageError("prog takes one SEL[:FUNC] target")
    target = spec.targets[0]
    sel, func = split_prog_target(target)
    kernel = ctx.kernel()
    progs = kernel.select(sel)
    kernel.progs()  # every program in the symbolizer, so LBR addresses get their lines
    targets = [prog_target(p, func) for p in progs]
    entry = bool(spec.option("entry") or spec.option("both"))
    exit_ = bool(spec.option("exit") or spec.option("both") or not spec.option("entry"))
    what = "fentry+fexit" if entry and exit_ else "fentry" if entry else "fexit"
    names = ", ".join(f"{t.name} (prog {t.prog_id})" for t in targets[:5])
    capture = capture_options(spec)
    label = f"{what} {target}"
    return [TracePlan(
        make=lambda on_event: TracingTracer(targets, capture, entry, exit_, on_event, label),
        spec_text=f"trace prog {target} --{what.replace('+', ' --')}",
        summary=f"{what} on {len(targets)} BPF function(s): {names}",
        targets=[f"{t.name} (prog {t.prog_id})" for t in targets], requires="tracing-prog",
        returns=exit_, prototype=(lambda: targets[0].signature) if len(targets) == 1 else None,
        kernel_filter=kernel_filter_knobs(capture),
        params={t.addr: t.signature or Signature.from_names(t.params) for t in targets})]
