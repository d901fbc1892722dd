"""Unit: decoding recorded prog info and BTF (no root), including broken kernel promises.

The records were captured from the real kernel by scripts/record-fixtures.py; the broken
variants are those records with one array cut short, as a buggy or racing kernel would return.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from bpflbr_shell.errors import KernelDataError
from bpflbr_shell.kernel.btf import KIND_FUNC, Btf
from bpflbr_shell.kernel.model import RawProgInfo
from bpflbr_shell.kernel.progs import decode_prog_info
from bpflbr_shell.render.text import prog_detail, prog_to_json, progs_table

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "progs"


def record(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def raw(name: str) -> RawProgInfo:
    return RawProgInfo.from_json(record(name)["raw"])


@pytest.mark.parametrize(
    ("field", "why"),
    [("jited_func_lens", "function lengths"), ("func_info", "BTF func records"),
     ("jited_line_info", "JITed line addresses")],
)
def test_broken_count_promises_are_errors(field: str, why: str) -> None:
    good = raw("tc_classify")
    broken = dataclasses.replace(good, **{field: getattr(good, field)[:-1]})
    with pytest.raises(KernelDataError, match=why):
        decode_prog_info(broken, boot_epoch=0.0)


def test_line_outside_every_function_is_an_error() -> None:
    good = raw("tc_classify")
    lines = list(good.jited_line_info)
    lines[-1] = good.jited_ksyms[0] - 16
    with pytest.raises(KernelDataError, match="outside every JITed function"):
        decode_prog_info(dataclasses.replace(good, jited_line_info=lines), boot_epoch=0.0)


def test_json_roundtrip_is_lossless() -> None:
    r = raw("tc_classify")
    assert RawProgInfo.from_json(json.loads(json.dumps(r.to_json()))) == r


def test_btf_funcs_are_the_subprograms() -> None:
    r = raw("tc_classify")
    btf = Btf.parse(r.btf)
    funcs = {t.name for t in btf.types[1:] if t and t.kind == KIND_FUNC}
    info = decode_prog_info(r, boot_epoch=0.0)
    assert [sp.name for sp in info.subprogs] == [btf.func_name(tid) for _, tid in r.func_info]
    assert {sp.name for sp in info.subprogs} <= funcs
    # func_info insn offsets are where the kernel says each subprogram starts
    assert [sp.insn_off for sp in info.subprogs] == [off for off, _ in r.func_info]


def test_prototypes_and_params() -> None:
    info = decode_prog_info(raw("tc_classify"), boot_epoch=0.0)
    protos = {sp.name: sp.prototype for sp in info.subprogs}
    source = (Path(__file__).resolve().parent.parent / "examples" / "lbrdemo.bpf.c").read_text()
    for name, proto in protos.items():
        assert proto and f"{name}(" in proto
        # every parameter name in the prototype appears in the source declaration
        decl = re.search(rf"\b{name}\(([^)]*)\)", source)
        assert decl, name
        params = [p.split()[-1].lstrip("*") for p in decl.group(1).split(",")]
        assert all(p in proto for p in params), (proto, params)
    btf = Btf.parse(raw("tc_classify").btf)
    sp0 = info.subprogs[0]
    assert btf.func_params(sp0.btf_type_id) == [("skb", "struct __sk_buff *")]


def test_bad_btf_blobs() -> None:
    blob = raw("tc_classify").btf
    with pytest.raises(KernelDataError, match="magic"):
        Btf.parse(b"\x00\x00" + blob[2:])
    with pytest.raises(KernelDataError, match="too short"):
        Btf.parse(blob[:10])


def test_bcc_program_lines_and_names() -> None:
    info = decode_prog_info(raw("sock_stats"), boot_epoch=0.0)
    assert len(info.subprogs) == 1
    assert info.subprogs[0].ksym == f"bpf_prog_{info.tag}_{info.subprogs[0].name}"
    files = {li.file for li in info.subprogs[0].lines if li.line}
    # BCC compiles from virtual files: the program and its inlined helpers header
    assert "/virtual/main.c" in files and all(f.startswith("/virtual/") for f in files)


def test_renderers_cover_every_program() -> None:
    infos = [decode_prog_info(raw(p.stem), boot_epoch=0.0) for p in sorted(FIXTURES.glob("*"))]
    text = progs_table(infos)
    for info in infos:
        assert str(info.id) in text and info.tag in text
        doc = prog_to_json(info, detail=True)
        assert doc["bytes_jited"] == sum(sp["size"] for sp in doc["subprogs"])
        detail = prog_detail(info)
        assert all(sp.ksym in detail for sp in info.subprogs)
        # every line record with a line number shows up as file:line:col
        for sp in info.subprogs:
            for li in sp.lines:
                if li.line:
                    assert f"{Path(li.file).name}:{li.line}:{li.col}" in detail
