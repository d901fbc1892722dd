"""Unit: the fixtures scripts/record-fixtures.py recorded from the real kernel hang together.

These guard the recorder (and the prog-info decoder on real data): every later unit test that
reads tests/fixtures/progs/*.json relies on what is checked here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import capstone
import pytest

from bpflbr_shell.kernel.model import RawProgInfo
from bpflbr_shell.kernel.progs import decode_prog_info

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PROGS = sorted((FIXTURES / "progs").glob("*.json"))
TC_FUNCS = {"tc_classify", "parse_packet", "parse_l4", "classify_flow", "account_class",
            "update_flow"}


def load(name: str) -> dict:
    return json.loads((FIXTURES / "progs" / f"{name}.json").read_text())


def kallsyms_slice() -> list[tuple[int, str, str, str | None]]:
    rows = []
    for line in (FIXTURES / "kallsyms-progs.txt").read_text().splitlines():
        addr, typ, rest = line.split(" ", 2)
        name, _, mod = rest.partition("\t")
        rows.append((int(addr, 16), typ, name, mod.strip("[]") or None))
    return rows


def test_both_loaders_recorded() -> None:
    assert {p.stem for p in PROGS} >= {"tc_classify", "sock_stats"}
    assert load("tc_classify")["loader"] == "libbpf"
    assert load("sock_stats")["loader"] == "bcc"


@pytest.mark.parametrize("path", PROGS, ids=[p.stem for p in PROGS])
def test_fixture_decodes_and_matches_bpftool(path: Path) -> None:
    rec = json.loads(path.read_text())
    assert set(rec) >= {"raw", "bpftool_show", "bpftool_xlated_linum", "kernel_release",
                        "recorded_at"}
    raw = RawProgInfo.from_json(rec["raw"])
    info = decode_prog_info(raw, boot_epoch=0.0)
    show = rec["bpftool_show"]
    assert (info.id, info.name, info.tag) == (show["id"], show["name"], show["tag"])
    assert (info.xlated_len, info.jited_len) == (show["bytes_xlated"], show["bytes_jited"])
    assert info.map_ids == show["map_ids"] and info.btf_id == show["btf_id"]
    assert info.type_name == show["type"]
    assert len(raw.jited_image) == info.jited_len
    # bpftool prints one "[file:... line_num:N ...]" per line info record
    linum = re.findall(r"\[file:(\S+) line_num:(\d+) line_col:(\d+)\]",
                       rec["bpftool_xlated_linum"])
    assert len(linum) == len(raw.line_info) > 0
    ours = sorted((li.insn_off, li.file, li.line, li.col)
                  for sp in info.subprogs for li in sp.lines)
    assert [(f, int(n), int(c)) for f, n, c in linum] == [o[1:] for o in ours]


def test_tc_classify_has_its_subprograms() -> None:
    info = decode_prog_info(RawProgInfo.from_json(load("tc_classify")["raw"]), boot_epoch=0.0)
    assert info.type_name == "sched_cls" and info.func_name == "tc_classify"
    assert {sp.name for sp in info.subprogs} == TC_FUNCS
    assert info.subprogs[0].name == "tc_classify"
    assert info.subprogs[0].prototype == "int tc_classify(struct __sk_buff *skb)"
    files = {li.file for sp in info.subprogs for li in sp.lines}
    assert files == {"examples/lbrdemo.bpf.c"}
    assert len(info.map_ids) == 3


def test_bcc_prog_is_one_function() -> None:
    info = decode_prog_info(RawProgInfo.from_json(load("sock_stats")["raw"]), boot_epoch=0.0)
    assert info.type_name == "socket_filter" and len(info.subprogs) == 1
    files = {li.file for li in info.subprogs[0].lines}
    assert "/virtual/main.c" in files  # BCC's name for the text it compiled
    assert files <= {"/virtual/main.c", "/virtual/include/bcc/helpers.h"}


def test_kallsyms_slice_covers_prog_symbols_and_call_targets() -> None:
    rows = kallsyms_slice()
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    by_addr: dict[int, set[str]] = {}
    for addr, _typ, name, _mod in rows:
        by_addr.setdefault(addr, set()).add(name)
    starts = sorted(by_addr)
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    for path in PROGS:
        raw = RawProgInfo.from_json(json.loads(path.read_text())["raw"])
        info = decode_prog_info(raw, boot_epoch=0.0)
        for sp in info.subprogs:
            # a [bpf] symbol bpf_prog_<tag>_<func> at each JITed function's address
            at = [r for r in rows if r[0] == sp.addr and r[3] == "bpf"]
            assert at, hex(sp.addr)
            assert at[0][2].startswith("bpf_prog_") and at[0][2].endswith("_" + sp.name)
        off = 0
        for sp in info.subprogs:
            for insn in md.disasm(raw.jited_image[off:off + sp.size], sp.addr):
                if insn.group(capstone.CS_GRP_CALL):
                    target = insn.operands[0]
                    if target.type != capstone.x86.X86_OP_IMM:
                        continue
                    # the containing symbol and the next one are both in the slice
                    imm = target.imm & 0xFFFF_FFFF_FFFF_FFFF
                    below = [a for a in starts if a <= imm]
                    assert below, hex(imm)
                    assert any(a > imm for a in starts), hex(imm)
            off += sp.size
    names = {r[2] for r in rows}
    assert {"_stext", "bpf_map_lookup_elem", "__x86_return_thunk"} <= names


def test_main_function_ksym_matches_kallsyms() -> None:
    raw = RawProgInfo.from_json(load("tc_classify")["raw"])
    info = decode_prog_info(raw, boot_epoch=0.0)
    names = {r[2] for r in kallsyms_slice() if r[0] == info.subprogs[0].addr}
    assert info.subprogs[0].ksym in names
    for sp in info.subprogs[1:]:
        assert sp.ksym in {r[2] for r in kallsyms_slice() if r[0] == sp.addr}
