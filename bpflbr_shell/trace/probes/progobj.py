"""The loaded BPF object a probe works with, whoever built it.

Two builders make one: BCC compiling the C now (:class:`bccprog.BccObject`), or the probe
cache loading what an earlier compile left (:class:`objcache.CachedObject`). Probes only use
what is here (map fds, per-CPU sums, stack walks, bytecode, loaded program fds, kprobe attach),
so a cache hit never needs bcc, not even ``import bcc``.

Per-run values (the pid filter, our own pid) would make every compile unique; they are
compiled as placeholders and patched into the bytecode before loading (:data:`RUNTIME_KNOBS`),
so one compiled variant serves every pid.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from bpflbr_shell.kernel import libbpf, perf

LD_IMM64 = 0x18
PSEUDO_MAP_FD, PSEUDO_MAP_VALUE = 1, 2  # ld_imm64 src_reg: imm is a map fd
BPF_PROG_TYPE_KPROBE = libbpf.BPF_PROG_TYPE_KPROBE
# Knobs whose value changes with every trace: compiled as these placeholders (far above any
# pid_max, below 2**31 so they stay positive imm32 words) and patched to the real value.
RUNTIME_KNOBS = {"FILTER_TGID": 0x5EED0001, "EXCLUDE_TGID": 0x5EED0002}
_INSN = struct.Struct("<BBhi")


@dataclass(frozen=True, slots=True)
class MapSpec:
    """What it takes to create one map again."""

    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


def split_knobs(knobs: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """(knobs to compile with, runtime values to patch in). A zero runtime knob stays a
    compile-time 0: it removes code, so it is part of the variant."""
    compiled, patches = dict(knobs), {}
    for name, placeholder in RUNTIME_KNOBS.items():
        value = knobs.get(name, 0)
        if value:
            if not 0 < value < 1 << 31:
                raise ValueError(f"runtime knob {name}={value} out of range")
            compiled[name] = placeholder
            patches[name] = value
    return compiled, patches


def map_ref_slots(insns: bytes) -> list[int]:
    """Instruction indexes of ld_imm64 instructions whose imm is a map fd."""
    out = []
    pc, n = 0, len(insns) // 8
    while pc < n:
        code, regs, _off, _imm = _INSN.unpack_from(insns, pc * 8)
        if code == LD_IMM64:
            if (regs >> 4) in (PSEUDO_MAP_FD, PSEUDO_MAP_VALUE):
                out.append(pc)
            pc += 2
        else:
            pc += 1
    return out


def placeholder_slots(insns: bytes) -> dict[str, list[int]]:
    """Where each runtime knob's placeholder sits (any imm word, ld_imm64 halves included)."""
    wanted = {v: k for k, v in RUNTIME_KNOBS.items()}
    out: dict[str, list[int]] = {}
    for pc in range(len(insns) // 8):
        imm = _INSN.unpack_from(insns, pc * 8)[3]
        if imm in wanted:
            out.setdefault(wanted[imm], []).append(pc)
    return out


def set_imms(insns: bytes, values: Iterable[tuple[int, int]]) -> bytes:
    """``insns`` with the imm word of instruction ``pc`` set to ``value`` for each pair."""
    buf = bytearray(insns)
    for pc, value in values:
        struct.pack_into("<i", buf, pc * 8 + 4, value)
    return bytes(buf)


def imm(insns: bytes, pc: int) -> int:
    return int(_INSN.unpack_from(insns, pc * 8)[3])


def _possible_cpus() -> int:
    from bpflbr_shell.trace.probes.base import possible_cpus

    return possible_cpus()


class ProbeObject:
    """Maps by name, bytecode by function, programs loaded once each, probes attached through
    perf events; :meth:`cleanup` releases all of it."""

    builder = "?"

    # set by the builder before __init__: name -> (bytecode with map fds in place, the
    # placeholder slots of the runtime knobs)
    _funcs: dict[str, tuple[bytes, dict[str, list[int]]]]

    def __init__(self, maps: dict[str, tuple[int, MapSpec]], patches: dict[str, int]) -> None:
        self.maps = maps
        self.patches = patches  # runtime knob -> value patched into every function
        self._progs: dict[tuple[str, int], int] = {}
        self._events: list[int] = []  # perf event fds of kprobes attached here

    def functions(self) -> list[str]:
        return list(self._funcs)

    def _raw_func(self, name: str) -> tuple[bytes, dict[str, list[int]]]:
        """The function's bytecode (map fds in place) and its placeholder slots."""
        try:
            return self._funcs[name]
        except KeyError:
            raise ValueError(f"the program has no function {name}") from None

    # what a builder provides ------------------------------------------------------------------

    def _release(self) -> None:
        raise NotImplementedError

    # what probes use --------------------------------------------------------------------------
    def dump_func(self, fn_name: bytes | str) -> bytes:
        """Bytecode ready to load: map fds in place, runtime knobs patched (BCC's signature)."""
        name = fn_name.decode() if isinstance(fn_name, bytes) else fn_name
        insns, slots = self._raw_func(name)
        # a knob may have no slot: the compiler drops EXCLUDE_TGID's test under FILTER_TGID
        return set_imms(insns, [(pc, self.patches[k]) for k, pcs in slots.items()
                                if k in self.patches for pc in pcs])

    def load_func(self, fn_name: str, prog_type: int = BPF_PROG_TYPE_KPROBE) -> int:
        """The fd of ``fn_name`` loaded as ``prog_type`` (loaded on first use)."""
        key = (fn_name, prog_type)
        fd = self._progs.get(key)
        if fd is None:
            fd = libbpf.prog_load(prog_type, fn_name, self.dump_func(fn_name))
            self._progs[key] = fd
        return fd

    def prog_fds(self) -> list[int]:
        return list(self._progs.values())

    def map_fd(self, name: str) -> int:
        return self.maps[name][0]

    def percpu_sum(self, name: str, key: int) -> int:
        """Sum over CPUs of a per-CPU array's u64 value."""
        fd, spec = self.maps[name]
        ncpu = _possible_cpus()
        stride = (spec.value_size + 7) & ~7
        raw = libbpf.map_lookup(fd, struct.pack("<i", key), stride * ncpu)
        if raw is None:
            return 0
        return sum(struct.unpack_from("<Q", raw, i * stride)[0] for i in range(ncpu))

    def stack_walk(self, name: str, stack_id: int) -> list[int]:
        """The addresses of one stack of a stack-trace map (empty when the id is gone)."""
        fd, spec = self.maps[name]
        raw = libbpf.map_lookup(fd, struct.pack("<I", stack_id), spec.value_size)
        if raw is None:
            return []
        out = []
        for (addr,) in struct.iter_unpack("<Q", raw[: spec.value_size & ~7]):
            if not addr:
                break
            out.append(addr)
        return out

    def attach_kprobe(self, event: bytes, fn_name: bytes) -> None:
        self._attach_kprobe(event, fn_name, retprobe=False)

    def attach_kretprobe(self, event: bytes, fn_name: bytes) -> None:
        self._attach_kprobe(event, fn_name, retprobe=True)

    def _attach_kprobe(self, event: bytes, fn_name: bytes, retprobe: bool) -> None:
        """A kprobe through the kprobe PMU (what BCC does too, minus the tracefs fallback)."""
        prog = self.load_func(fn_name.decode())
        what = f"{'kretprobe' if retprobe else 'kprobe'} on {event.decode(errors='replace')}"
        self._events.append(perf.attach_probe("kprobe", event, 0, retprobe, -1, prog, what))

    def detach_events(self) -> None:
        """Take off the kprobes attached here; programs and maps stay (the rings are read
        after the probes stop). Idempotent."""
        events, self._events = self._events, []
        perf.close_all(events)

    def cleanup(self) -> None:
        """Detach what was attached here, unload the programs, free the maps."""
        self.detach_events()
        perf.close_all(self._progs.values())
        self._progs = {}
        self._release()
