"""The few libbpf object-level calls the example workload needs, through ctypes.

bpflbr_shell itself never loads programs from ELF objects, so these signatures live here, on
a private handle to the library (``ctypes.CDLL`` instances do not share argtypes), rather than
in ``bpflbr_shell.kernel.libbpf``.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from functools import cache

from bpflbr_shell.kernel.libbpf import open_libbpf

_p = ctypes.c_void_p


class BpfTestRunOpts(ctypes.Structure):
    """``struct bpf_test_run_opts`` of libbpf 1.1 (``/usr/include/bpf/bpf.h``)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", _p),
        ("data_out", _p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", _p),
        ("ctx_out", _p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


@cache
def lib() -> ctypes.CDLL:
    sigs: dict[str, tuple[object, list[object]]] = {
        "bpf_object__open_file": (_p, [ctypes.c_char_p, _p]),
        "bpf_object__load": (ctypes.c_int, [_p]),
        "bpf_object__close": (None, [_p]),
        "bpf_object__next_program": (_p, [_p, _p]),
        "bpf_object__next_map": (_p, [_p, _p]),
        "bpf_program__fd": (ctypes.c_int, [_p]),
        "bpf_program__name": (ctypes.c_char_p, [_p]),
        "bpf_map__fd": (ctypes.c_int, [_p]),
        "bpf_map__name": (ctypes.c_char_p, [_p]),
        "bpf_map_update_elem": (ctypes.c_int, [ctypes.c_int, _p, _p, ctypes.c_uint64]),
        "bpf_obj_pin": (ctypes.c_int, [ctypes.c_int, ctypes.c_char_p]),
        "bpf_prog_test_run_opts": (ctypes.c_int, [ctypes.c_int, ctypes.POINTER(BpfTestRunOpts)]),
    }
    return open_libbpf(sigs)


def _fail(ret: int, what: str) -> OSError:
    err = -ret if ret < -1 else (ctypes.get_errno() or errno.EINVAL)
    return OSError(err, f"{what}: {os.strerror(err)}")


@dataclass
class LoadedProgram:
    name: str
    fd: int


class BpfObject:
    """An ELF object opened and loaded by libbpf; closing it unloads its programs and maps."""

    def __init__(self, path: str) -> None:
        ctypes.set_errno(0)
        obj = lib().bpf_object__open_file(os.fsencode(path), None)
        if not obj:
            raise _fail(-1, f"bpf_object__open_file({path})")
        self._obj: int | None = obj
        ret = lib().bpf_object__load(obj)
        if ret < 0:
            self.close()
            raise _fail(ret, f"bpf_object__load({path}) (the verifier log is above)")

    def programs(self) -> list[LoadedProgram]:
        out: list[LoadedProgram] = []
        prog = lib().bpf_object__next_program(self._obj, None)
        while prog:
            out.append(LoadedProgram(
                name=lib().bpf_program__name(prog).decode(), fd=lib().bpf_program__fd(prog)))
            prog = lib().bpf_object__next_program(self._obj, prog)
        return out

    def map_fd(self, name: str) -> int:
        m = lib().bpf_object__next_map(self._obj, None)
        while m:
            if lib().bpf_map__name(m).decode() == name:
                return lib().bpf_map__fd(m)
            m = lib().bpf_object__next_map(self._obj, m)
        raise KeyError(name)

    def close(self) -> None:
        if self._obj:
            lib().bpf_object__close(self._obj)
            self._obj = None


def map_update_u32(map_fd: int, key: int, value: int) -> None:
    k, v = ctypes.c_uint32(key), ctypes.c_uint32(value)
    ret = lib().bpf_map_update_elem(map_fd, ctypes.byref(k), ctypes.byref(v), 0)
    if ret < 0:
        raise _fail(ret, "bpf_map_update_elem")


def obj_pin(fd: int, path: str) -> None:
    ret = lib().bpf_obj_pin(fd, os.fsencode(path))
    if ret < 0:
        raise _fail(ret, f"bpf_obj_pin({path})")


def test_run(prog_fd: int, packet: bytes, repeat: int = 1) -> int:
    """Run a skb program once on ``packet`` (BPF_PROG_TEST_RUN); returns its return value."""
    buf = ctypes.create_string_buffer(packet, len(packet))
    opts = BpfTestRunOpts()
    opts.sz = ctypes.sizeof(BpfTestRunOpts)
    opts.data_in = ctypes.cast(buf, _p)
    opts.data_size_in = len(packet)
    opts.repeat = repeat
    ret = lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts))
    if ret < 0:
        raise _fail(ret, "bpf_prog_test_run_opts")
    return opts.retval
