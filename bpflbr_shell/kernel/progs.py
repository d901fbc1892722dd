"""The one reader of BPF program info: bpf(2) -> :class:`RawProgInfo` -> :class:`ProgInfo`.

``read_raw_prog_info`` talks to the kernel (two ``bpf_obj_get_info_by_fd`` calls: sizes, then
buffers); ``decode_prog_info`` is pure and checks the 1:1 counts the kernel promises
(ksyms/func lens/func info, line info/jited line info) so a broken promise becomes a clear error.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bpflbr_shell.errors import KernelDataError, NotFoundError
from bpflbr_shell.kernel import libbpf
from bpflbr_shell.kernel.btf import Btf
from bpflbr_shell.kernel.model import LineInfo, ProgInfo, RawProgInfo, SubProg, prog_type_name


def _array(ctype: Any, count: int) -> ctypes.Array[Any]:
    return (ctype * max(count, 1))()


def read_raw_prog_info_fd(fd: int, with_btf: bool = True) -> RawProgInfo:
    """Everything ``bpf_obj_get_info_by_fd`` tells about the program behind ``fd``."""
    info = libbpf.BpfProgInfo()
    libbpf.obj_info(fd, info, "reading BPF program info")
    n_maps, n_ksyms, n_lens = info.nr_map_ids, info.nr_jited_ksyms, info.nr_jited_func_lens
    n_finfo, n_linfo, n_jlinfo = info.nr_func_info, info.nr_line_info, info.nr_jited_line_info
    n_tags, jited_len, xlated_len = info.nr_prog_tags, info.jited_prog_len, info.xlated_prog_len
    finfo_size = info.func_info_rec_size or 8
    linfo_size = info.line_info_rec_size or 16
    jlinfo_size = info.jited_line_info_rec_size or 8

    map_ids = _array(ctypes.c_uint32, n_maps)
    ksyms = _array(ctypes.c_uint64, n_ksyms)
    lens = _array(ctypes.c_uint32, n_lens)
    finfo = ctypes.create_string_buffer(max(n_finfo * finfo_size, 1))
    linfo = ctypes.create_string_buffer(max(n_linfo * linfo_size, 1))
    jlinfo = ctypes.create_string_buffer(max(n_jlinfo * jlinfo_size, 1))
    tags = ctypes.create_string_buffer(max(n_tags * 8, 1))
    jited = ctypes.create_string_buffer(max(jited_len, 1))
    xlated = ctypes.create_string_buffer(max(xlated_len, 1))

    full = libbpf.BpfProgInfo()
    full.nr_map_ids, full.map_ids = n_maps, ctypes.addressof(map_ids)
    full.nr_jited_ksyms, full.jited_ksyms = n_ksyms, ctypes.addressof(ksyms)
    full.nr_jited_func_lens, full.jited_func_lens = n_lens, ctypes.addressof(lens)
    full.nr_func_info, full.func_info_rec_size = n_finfo, finfo_size
    full.func_info = ctypes.addressof(finfo)
    full.nr_line_info, full.line_info_rec_size = n_linfo, linfo_size
    full.line_info = ctypes.addressof(linfo)
    full.nr_jited_line_info, full.jited_line_info_rec_size = n_jlinfo, jlinfo_size
    full.jited_line_info = ctypes.addressof(jlinfo)
    full.nr_prog_tags, full.prog_tags = n_tags, ctypes.addressof(tags)
    full.jited_prog_len, full.jited_prog_insns = jited_len, ctypes.addressof(jited)
    full.xlated_prog_len, full.xlated_prog_insns = xlated_len, ctypes.addressof(xlated)
    libbpf.obj_info(fd, full, "reading BPF program info")
    # The kernel writes back the real counts; a program cannot change, but clamp anyway.
    n_maps, n_ksyms = min(n_maps, full.nr_map_ids), min(n_ksyms, full.nr_jited_ksyms)
    n_lens, n_finfo = min(n_lens, full.nr_jited_func_lens), min(n_finfo, full.nr_func_info)
    n_linfo, n_jlinfo = min(n_linfo, full.nr_line_info), min(n_jlinfo, full.nr_jited_line_info)

    def rows(buf: ctypes.Array, count: int, size: int, nfields: int) -> list[tuple[int, ...]]:
        raw = bytes(buf)
        return [
            tuple(int.from_bytes(raw[i * size + 4 * k : i * size + 4 * k + 4], "little")
                  for k in range(nfields))
            for i in range(count)
        ]

    raw_tags, raw_jlinfo = bytes(tags), bytes(jlinfo)  # one copy each, not one per record
    n_tags_out = min(n_tags, full.nr_prog_tags)
    return RawProgInfo(
        id=info.id,
        type=info.type,
        name=info.name.decode("utf-8", "replace"),
        tag=bytes(info.tag).hex(),
        load_time=info.load_time,
        created_by_uid=info.created_by_uid,
        xlated_prog_len=xlated_len,
        jited_prog_len=jited_len,
        btf_id=info.btf_id,
        gpl_compatible=bool(info.gpl_flags & 1),
        run_time_ns=full.run_time_ns,
        run_cnt=full.run_cnt,
        recursion_misses=full.recursion_misses,
        verified_insns=info.verified_insns,
        attach_btf_obj_id=info.attach_btf_obj_id,
        attach_btf_id=info.attach_btf_id,
        map_ids=list(map_ids)[:n_maps],
        jited_ksyms=list(ksyms)[:n_ksyms],
        jited_func_lens=list(lens)[:n_lens],
        func_info=[(r[0], r[1]) for r in rows(finfo, n_finfo, finfo_size, 2)],
        line_info=[(r[0], r[1], r[2], r[3]) for r in rows(linfo, n_linfo, linfo_size, 4)],
        jited_line_info=[
            int.from_bytes(raw_jlinfo[i * jlinfo_size : i * jlinfo_size + 8], "little")
            for i in range(n_jlinfo)
        ],
        prog_tags=[raw_tags[i * 8 : i * 8 + 8].hex() for i in range(n_tags_out)],
        nr_func_info=info.nr_func_info,
        nr_line_info=info.nr_line_info,
        nr_jited_line_info=info.nr_jited_line_info,
        nr_jited_ksyms=info.nr_jited_ksyms,
        nr_jited_func_lens=info.nr_jited_func_lens,
        jited_image=bytes(jited)[:jited_len],
        xlated_image=bytes(xlated)[:xlated_len],
        btf=read_btf_blob(info.btf_id) if with_btf and info.btf_id else b"",
    )


def read_btf_blob(btf_id: int) -> bytes:
    """The raw BTF of a BTF object id (header + types + strings)."""
    fd = libbpf.btf_fd_by_id(btf_id)
    try:
        info = libbpf.BpfBtfInfo()
        libbpf.obj_info(fd, info, f"reading BTF {btf_id}")
        buf = ctypes.create_string_buffer(max(info.btf_size, 1))
        full = libbpf.BpfBtfInfo()
        full.btf, full.btf_size = ctypes.addressof(buf), info.btf_size
        libbpf.obj_info(fd, full, f"reading BTF {btf_id}")
        return bytes(buf)[: info.btf_size]
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class ProgHeader:
    """What one ``bpf_obj_get_info_by_fd`` call without arrays tells: enough to name a
    program (completion) without reading its images, line info and BTF."""

    id: int
    type_name: str
    name: str  # the kernel's 15-character name
    tag: str
    load_time: int


def read_prog_header(prog_id: int) -> ProgHeader:
    fd = libbpf.prog_fd_by_id(prog_id)
    try:
        info = libbpf.BpfProgInfo()
        libbpf.obj_info(fd, info, "reading BPF program info")
    finally:
        os.close(fd)
    return ProgHeader(info.id, prog_type_name(info.type),
                      bytes(info.name).split(b"\0", 1)[0].decode("utf-8", "replace"),
                      bytes(info.tag).hex(), info.load_time)


def read_raw_prog_info(prog_id: int) -> RawProgInfo:
    fd = libbpf.prog_fd_by_id(prog_id)
    try:
        return read_raw_prog_info_fd(fd)
    finally:
        os.close(fd)


def boot_to_epoch_offset() -> float:
    """Seconds to add to a CLOCK_BOOTTIME stamp to get wall-clock time."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def decode_prog_info(raw: RawProgInfo, boot_epoch: float | None = None) -> ProgInfo:
    """Decode and cross-check one program's info. Pure: no kernel access."""
    jited = raw.jited_prog_len > 0
    if jited and len(raw.jited_ksyms) != len(raw.jited_func_lens):
        raise KernelDataError(
            f"prog {raw.id}: kernel reported {len(raw.jited_ksyms)} JIT symbols but "
            f"{len(raw.jited_func_lens)} function lengths"
        )
    if jited and raw.func_info and len(raw.func_info) != len(raw.jited_ksyms):
        raise KernelDataError(
            f"prog {raw.id}: {len(raw.func_info)} BTF func records for "
            f"{len(raw.jited_ksyms)} JITed functions"
        )
    if jited and raw.jited_line_info and len(raw.jited_line_info) != len(raw.line_info):
        raise KernelDataError(
            f"prog {raw.id}: {len(raw.line_info)} line info records but "
            f"{len(raw.jited_line_info)} JITed line addresses"
        )
    if jited and sum(raw.jited_func_lens) != raw.jited_prog_len:
        raise KernelDataError(
            f"prog {raw.id}: function lengths sum to {sum(raw.jited_func_lens)}, "
            f"image is {raw.jited_prog_len} bytes"
        )
    btf = Btf.parse(raw.btf) if raw.btf else None

    subprogs: list[SubProg] = []
    for i, (addr, size) in enumerate(zip(raw.jited_ksyms, raw.jited_func_lens, strict=True)):
        insn_off, type_id = raw.func_info[i] if i < len(raw.func_info) else (0, 0)
        btf_name = btf.func_name(type_id) if btf and type_id else None
        # kallsyms names the main function after the whole program's tag, the others after
        # their own (prog_tags[i])
        tag = raw.prog_tags[i] if 0 < i < len(raw.prog_tags) else raw.tag
        name = btf_name or raw.name
        ksym = f"bpf_prog_{tag}_{name}" if name else f"bpf_prog_{tag}"
        subprogs.append(SubProg(
            index=i, name=name, ksym=ksym, addr=addr, size=size, insn_off=insn_off,
            btf_type_id=type_id,
            prototype=btf.func_prototype(type_id) if btf and type_id else None,
        ))

    if btf and raw.jited_line_info:
        by_start = sorted(subprogs, key=lambda s: s.addr)
        for (insn_off, file_off, line_off, line_col), addr in zip(
            raw.line_info, raw.jited_line_info, strict=True
        ):
            sp = next((s for s in by_start if s.addr <= addr < s.end), None)
            if sp is None:
                raise KernelDataError(
                    f"prog {raw.id}: line info address {addr:#x} is outside every JITed function"
                )
            sp.lines.append(LineInfo(
                insn_off=insn_off, addr=addr, file=btf.string(file_off),
                line=line_col >> 10, col=line_col & 0x3FF, text=btf.string(line_off).strip(),
            ))
        for sp in subprogs:
            sp.lines.sort(key=lambda li: (li.addr, li.insn_off))

    if boot_epoch is None:
        boot_epoch = boot_to_epoch_offset()
    return ProgInfo(
        id=raw.id, type=raw.type, type_name=prog_type_name(raw.type), name=raw.name,
        func_name=subprogs[0].name if subprogs else raw.name, tag=raw.tag,
        load_time_ns=raw.load_time, load_time_epoch=boot_epoch + raw.load_time / 1e9,
        uid=raw.created_by_uid, xlated_len=raw.xlated_prog_len, jited_len=raw.jited_prog_len,
        map_ids=list(raw.map_ids), btf_id=raw.btf_id, gpl=raw.gpl_compatible,
        run_cnt=raw.run_cnt, run_time_ns=raw.run_time_ns,
        recursion_misses=raw.recursion_misses, verified_insns=raw.verified_insns,
        attach_btf_obj_id=raw.attach_btf_obj_id, attach_btf_id=raw.attach_btf_id,
        subprogs=subprogs, jited_image=raw.jited_image, raw=raw,
    )


def read_prog_info(prog_id: int) -> ProgInfo:
    return decode_prog_info(read_raw_prog_info(prog_id))


def iter_prog_infos() -> Iterator[ProgInfo]:
    """Every loaded program; ones unloaded while we walk are skipped."""
    for prog_id in libbpf.prog_ids():
        try:
            yield read_prog_info(prog_id)
        except NotFoundError:
            continue
