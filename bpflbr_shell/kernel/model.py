"""Plain records for what the kernel tells us about BPF programs.

Two levels on purpose: :class:`RawProgInfo` is exactly what ``bpf_obj_get_info_by_fd`` and the
BTF object returned (JSON-serialisable, so fixtures and recordings carry it verbatim), and
:class:`ProgInfo` is the decoded view every command uses. ``progs.decode_prog_info`` is the one
place that turns the first into the second.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field
from typing import Any

from bpflbr_shell.errors import NotFoundError

# enum bpf_prog_type, in uapi order (linux/bpf.h)
PROG_TYPES = (
    "unspec", "socket_filter", "kprobe", "sched_cls", "sched_act", "tracepoint", "xdp",
    "perf_event", "cgroup_skb", "cgroup_sock", "lwt_in", "lwt_out", "lwt_xmit", "sock_ops",
    "sk_skb", "cgroup_device", "sk_msg", "raw_tracepoint", "cgroup_sock_addr", "lwt_seg6local",
    "lirc_mode2", "sk_reuseport", "flow_dissector", "cgroup_sysctl", "raw_tracepoint_writable",
    "cgroup_sockopt", "tracing", "struct_ops", "ext", "lsm", "sk_lookup", "syscall", "netfilter",
)


def prog_type_name(prog_type: int) -> str:
    """bpftool's spelling of a program type, or ``type_N`` for types newer than our table."""
    return PROG_TYPES[prog_type] if 0 <= prog_type < len(PROG_TYPES) else f"type_{prog_type}"


@dataclass
class RawProgInfo:
    """``struct bpf_prog_info`` plus the arrays it points to, undecoded.

    Scalars keep the uapi field names. ``line_info`` rows are
    ``(insn_off, file_name_off, line_off, line_col)``; ``func_info`` rows ``(insn_off, type_id)``.
    ``btf`` is the program's raw BTF blob (header + types + strings) or empty.
    """

    id: int
    type: int
    name: str
    tag: str
    load_time: int
    created_by_uid: int
    xlated_prog_len: int
    jited_prog_len: int
    btf_id: int
    gpl_compatible: bool
    run_time_ns: int
    run_cnt: int
    recursion_misses: int
    verified_insns: int
    attach_btf_obj_id: int
    attach_btf_id: int
    map_ids: list[int] = field(default_factory=list)
    jited_ksyms: list[int] = field(default_factory=list)
    jited_func_lens: list[int] = field(default_factory=list)
    func_info: list[tuple[int, int]] = field(default_factory=list)
    line_info: list[tuple[int, int, int, int]] = field(default_factory=list)
    jited_line_info: list[int] = field(default_factory=list)
    prog_tags: list[str] = field(default_factory=list)  # one per subprogram
    nr_func_info: int = 0
    nr_line_info: int = 0
    nr_jited_line_info: int = 0
    nr_jited_ksyms: int = 0
    nr_jited_func_lens: int = 0
    jited_image: bytes = b""
    xlated_image: bytes = b""
    btf: bytes = b""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("jited_image", "xlated_image", "btf"):
            d[key] = base64.b64encode(d[key]).decode()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RawProgInfo:
        d = dict(d)
        for key in ("jited_image", "xlated_image", "btf"):
            d[key] = base64.b64decode(d.get(key, ""))
        d["func_info"] = [tuple(r) for r in d.get("func_info", [])]
        d["line_info"] = [tuple(r) for r in d.get("line_info", [])]
        return cls(**d)


@dataclass(frozen=True, slots=True)
class LineInfo:
    """One BPF line-info record, resolved: where a run of JIT code came from."""

    insn_off: int  # xlated instruction index
    addr: int  # JIT address where this line's code starts (0 when not jited)
    file: str
    line: int
    col: int
    text: str  # the source line as the compiler recorded it


@dataclass(slots=True)
class SubProg:
    """One JITed function of a program (index 0 is the main program)."""

    index: int
    name: str  # BTF func name (full C name) or the prog name when there is no BTF
    ksym: str  # kallsyms name: bpf_prog_<tag>_<name>
    addr: int
    size: int
    insn_off: int
    btf_type_id: int
    prototype: str | None  # e.g. "int sf(struct __sk_buff *skb)"
    lines: list[LineInfo] = field(default_factory=list)  # sorted by addr

    @property
    def end(self) -> int:
        return self.addr + self.size


@dataclass(slots=True)
class ProgInfo:
    """Everything the kernel knows about one loaded BPF program, decoded."""

    id: int
    type: int
    type_name: str
    name: str  # kernel prog name (truncated to 15 chars by the kernel)
    func_name: str  # main function's BTF name when known, else ``name``
    tag: str
    load_time_ns: int  # since boot
    load_time_epoch: float  # wall clock seconds, as bpftool reports it
    uid: int
    xlated_len: int
    jited_len: int
    map_ids: list[int]
    btf_id: int
    gpl: bool
    run_cnt: int
    run_time_ns: int
    recursion_misses: int
    verified_insns: int
    attach_btf_obj_id: int
    attach_btf_id: int
    subprogs: list[SubProg]
    jited_image: bytes
    raw: RawProgInfo | None = None

    @property
    def jited(self) -> bool:
        return self.jited_len > 0

    def subprog(self, func: str | int) -> SubProg:
        """The subprogram ``func`` names: its BTF name, its ksym name or its index; the one
        lookup ``disasm prog`` and ``trace prog`` share."""
        key = str(func)
        for sp in self.subprogs:
            if key in (sp.name, sp.ksym) or (key.isdigit() and int(key) == sp.index):
                return sp
        avail = ", ".join(f"{sp.index}:{sp.name}" for sp in self.subprogs) or "none"
        raise NotFoundError(f"prog {self.id} has no function '{key}' (available: {avail})",
                            f"name one of its functions: {avail}")

    def subprog_at(self, addr: int) -> SubProg | None:
        for sp in self.subprogs:
            if sp.addr <= addr < sp.end:
                return sp
        return None

    def image_of(self, sp: SubProg) -> bytes:
        """The JIT bytes of one subprogram: the kernel concatenates them in subprog order."""
        start = sum(s.size for s in self.subprogs[: sp.index])
        return self.jited_image[start : start + sp.size]
