"""Disassembly of real JITed programs, checked against oracles that do not share our code.

- byte count: ``bpftool prog show --json`` ``bytes_jited``;
- instruction boundaries: one straight capstone pass over the whole image, and each instruction
  re-decoded on its own;
- source lines: ``bpftool prog dump xlated linum`` (its own BTF line-info reader);
- call targets: the xlated dump's ``call NAME#...`` lines (bpftool names helpers after the kernel
  function the verifier patched in, subprograms after their ksym), in program order, and a
  brute-force scan of ``/proc/kallsyms`` for the exact address.

Two programs: a BCC socket filter (maps, helpers, an inlined array lookup) and, because BCC cannot
link bpf-to-bpf calls, ``examples/lbrdemo.bpf.c`` built with clang and loaded by ``bpftool prog
loadall`` (libbpf) for the multi-subprogram case.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpflbr_shell.errors import NotFoundError
from bpflbr_shell.kernel.model import ProgInfo
from bpflbr_shell.render.disasm import (
    DisasmFunc,
    disasm_to_json,
    disassemble_prog,
    render_disasm_text,
)
from bpflbr_shell.render.text import short_file

pytestmark = pytest.mark.live

REPO = Path(__file__).resolve().parent.parent
LBRDEMO = REPO / "examples" / "lbrdemo.bpf.c"

BCC_TEXT = r"""
#include <uapi/linux/bpf.h>
BPF_HASH(counts, u32, u64, 64);
BPF_ARRAY(totals, u64, 4);
int disasm_sf(struct __sk_buff *skb) {
    u32 k = bpf_get_prandom_u32() & 7;
    u64 *v = counts.lookup(&k);
    if (v) { __sync_fetch_and_add(v, 1); }
    else { u64 one = 1; counts.update(&k, &one); }
    int i = 0;
    u64 *t = totals.lookup(&i);
    if (t) *t += skb->len + bpf_ktime_get_ns() % 3;
    return 0;
}
"""


def _need_root_and_bpftool() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (bpf(2), /proc/kallsyms addresses)")
    if shutil.which("bpftool") is None:
        pytest.skip("needs bpftool (apt-get install bpftool)")


def _bpftool(*args: str) -> str:
    return subprocess.run(["bpftool", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def bcc_prog_id() -> Iterator[int]:
    _need_root_and_bpftool()
    try:
        from bcc import BPF
    except ImportError:
        pytest.skip("needs BCC (apt-get install python3-bpfcc; venv with system site packages)")
    from bpflbr_shell.kernel.progs import read_raw_prog_info_fd

    try:
        b = BPF(text=BCC_TEXT)
        fn = b.load_func("disasm_sf", BPF.SOCKET_FILTER)
    except Exception as exc:  # BCC raises bare Exception for compile/load failures
        pytest.skip(f"BCC cannot compile/load here (kernel headers?): {exc}")
    try:
        yield read_raw_prog_info_fd(fn.fd, with_btf=False).id
    finally:
        b.cleanup()


@pytest.fixture(scope="module")
def libbpf_prog_id(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    _need_root_and_bpftool()
    if not LBRDEMO.exists():
        pytest.skip(f"needs {LBRDEMO.relative_to(REPO)} (multi-subprogram example)")
    if shutil.which("clang") is None:
        pytest.skip("needs clang to build examples/lbrdemo.bpf.c")
    if not os.path.ismount("/sys/fs/bpf"):
        pytest.skip("needs bpffs mounted at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)")
    obj = tmp_path_factory.mktemp("lbrdemo") / "lbrdemo.o"
    subprocess.run(
        ["clang", "-target", "bpf", "-O2", "-g", "-I/usr/include/x86_64-linux-gnu",
         "-c", str(LBRDEMO), "-o", str(obj)],
        check=True, capture_output=True,
    )
    pin = Path(f"/sys/fs/bpf/bpflbr-test-disasm-{os.getpid()}")
    shutil.rmtree(pin, ignore_errors=True)
    try:
        _bpftool("prog", "loadall", str(obj), str(pin))
        pinned = sorted(pin.iterdir())
        assert pinned, f"bpftool loadall pinned nothing under {pin}"
        yield json.loads(_bpftool("prog", "show", "pinned", str(pinned[0]), "--json"))["id"]
    finally:
        shutil.rmtree(pin, ignore_errors=True)  # last reference gone: the kernel unloads it


@pytest.fixture(scope="module", params=["bcc", "libbpf"])
def prog_id(request: pytest.FixtureRequest) -> int:
    return request.getfixturevalue(f"{request.param}_prog_id")


@pytest.fixture(scope="module")
def symbolizer_for():  # noqa: ANN201 - a factory
    """A fresh kallsyms index per program: [bpf] symbols come and go as fixtures load."""
    from bpflbr_shell.kernel.kallsyms import KallsymsIndex
    from bpflbr_shell.symbols.kernel import Symbolizer

    return lambda prog: Symbolizer(KallsymsIndex.load(), [prog])


@pytest.fixture(scope="module")
def prog(prog_id: int) -> ProgInfo:
    from bpflbr_shell.kernel.progs import read_prog_info

    return read_prog_info(prog_id)


@pytest.fixture(scope="module")
def funcs(prog: ProgInfo, symbolizer_for) -> list[DisasmFunc]:
    return disassemble_prog(prog, symbolizer_for(prog))


def test_decodes_exactly_the_jited_bytes(prog_id: int, prog: ProgInfo, funcs: list[DisasmFunc]):
    shown = json.loads(_bpftool("prog", "show", "id", str(prog_id), "--json"))
    assert shown["jited"] is True
    assert sum(len(i.bytes) for fn in funcs for i in fn.insns) == shown["bytes_jited"]
    assert [fn.bad_bytes for fn in funcs] == [0] * len(funcs)
    for fn in funcs:
        assert sum(i.size for i in fn.insns) == fn.subprog.size
        # contiguous, starting at the function's ksym address
        expect = fn.subprog.addr
        for insn in fn.insns:
            assert insn.addr == expect and insn.offset == insn.addr - fn.subprog.addr
            expect += insn.size


def test_instruction_boundaries_match_capstone(prog: ProgInfo, funcs: list[DisasmFunc]):
    import capstone

    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    cs.syntax = capstone.CS_OPT_SYNTAX_ATT
    # one straight pass over the whole image: subprograms are laid out back to back
    base = prog.subprogs[0].addr
    image = b"".join(prog.image_of(sp) for sp in prog.subprogs)
    straight = [(base + i.address, i.size, i.mnemonic) for i in cs.disasm(image, 0)]
    ours = [(i.addr - fn.subprog.addr + _image_start(prog, fn), i.size, i.mnemonic)
            for fn in funcs for i in fn.insns]
    assert [(a - base, s, m) for a, s, m in straight] == [(a, s, m) for a, s, m in ours]
    # and each instruction alone decodes to itself, at its own address
    for fn in funcs:
        for insn in fn.insns:
            alone = list(cs.disasm(insn.bytes, insn.addr))
            assert len(alone) == 1 and alone[0].size == insn.size, insn
            assert alone[0].mnemonic == insn.mnemonic


def _image_start(prog: ProgInfo, fn: DisasmFunc) -> int:
    return sum(sp.size for sp in prog.subprogs[: fn.subprog.index])


def test_local_jumps_land_on_instruction_boundaries(funcs: list[DisasmFunc]):
    n_local = 0
    for fn in funcs:
        starts = {i.addr for i in fn.insns}
        for insn in fn.insns:
            if fn.local_offset(insn.target) is not None:
                n_local += 1
                assert insn.target in starts, insn
                assert insn.target_loc is None
    assert n_local > 0, "expected conditional jumps in every test program"
    # what users see: the <+N> of a jump's operand names an instruction of the same listing
    for fn, fj in zip(funcs, disasm_to_json(funcs), strict=True):
        offsets = {i.offset for i in fn.insns}
        assert {i["target_offset"] for i in fj["insns"]} - {None} <= offsets
        block = render_disasm_text([fn])
        shown = {int(n) for n in re.findall(r"0x[0-9a-f]+ <\+(\d+)>", block)}
        assert shown and shown <= offsets


_XLATED_LINE = re.compile(r"^; (.*) \[file:(\S*) line_num:(\d+) line_col:(\d+)\]$")
_RENDERED_LINE = re.compile(r"^; (.*)  \((\S+?):(\d+)(?::(\d+))?\)$")


def test_source_lines_match_bpftool_xlated(prog_id: int, funcs: list[DisasmFunc]):
    oracle: set[tuple[str, int, str]] = set()
    for row in _bpftool("prog", "dump", "xlated", "id", str(prog_id), "linum").splitlines():
        m = _XLATED_LINE.match(row)
        if m and int(m.group(3)):
            oracle.add((short_file(m.group(2)), int(m.group(3)), m.group(1).strip()))
    assert oracle, "bpftool printed no line info: the program has no BTF?"

    text = render_disasm_text(funcs)
    rendered = set()
    for row in text.splitlines():
        m = _RENDERED_LINE.match(row)
        if m:
            rendered.add((m.group(2), int(m.group(3)), m.group(1)))
    assert rendered == oracle

    from_json = {
        (short_file(li["file"]), li["line"], li["text"])
        for fn in disasm_to_json(funcs) for i in fn["insns"] for li in i["lines"] if li["line"]
    }
    assert from_json == oracle


_XLATED_CALL = re.compile(r"^\s*\d+: \(85\) call (?:pc[+-]\d+#)?([A-Za-z_][\w.]*)")


def test_call_targets_match_bpftool_and_kallsyms(prog_id: int, funcs: list[DisasmFunc]):
    xlated = _bpftool("prog", "dump", "xlated", "id", str(prog_id))
    oracle = [m.group(1) for row in xlated.splitlines() if (m := _XLATED_CALL.match(row))]
    calls = [i for fn in funcs for i in fn.insns if i.mnemonic.startswith("call")]
    assert all(i.target is not None for i in calls), "BPF JIT calls are all direct"
    assert all(i.target_loc is not None and i.target_loc.offset == 0 for i in calls)
    assert [i.target_loc.func for i in calls] == oracle
    assert len(oracle) >= 3

    # brute force: every name kallsyms lists at exactly that address
    wanted = {i.target for i in calls}
    names_at: dict[int, set[str]] = {a: set() for a in wanted}
    for row in Path("/proc/kallsyms").read_text().splitlines():
        addr, _, rest = row.partition(" ")
        a = int(addr, 16)
        if a in names_at:
            names_at[a].add(rest.split()[1])
    for insn in calls:
        assert insn.target_loc.func in names_at[insn.target], (insn, names_at[insn.target])

    text = render_disasm_text(funcs)
    for name in set(oracle):
        assert f"; {name}+0x0" in text


def test_bcc_helpers_are_named_after_their_kernel_functions(bcc_prog_id: int, symbolizer_for):
    from bpflbr_shell.kernel.progs import read_prog_info

    prog = read_prog_info(bcc_prog_id)
    funcs = disassemble_prog(prog, symbolizer_for(prog), syntax="intel")
    called = {i.target_loc.func for fn in funcs for i in fn.insns if i.target_loc}
    # bpf_ktime_get_ns is its own implementation; prandom and the hash map ops are patched by
    # the verifier to the functions bpftool names; the array lookup is inlined (no call).
    assert "bpf_ktime_get_ns" in called
    assert {"bpf_user_rnd_u32", "htab_map_update_elem"} <= called
    assert not any("array_map_lookup" in name for name in called)


def test_subprograms_and_selection(libbpf_prog_id: int, symbolizer_for):
    from bpflbr_shell.kernel.progs import read_prog_info

    prog = read_prog_info(libbpf_prog_id)
    assert len(prog.subprogs) >= 3
    sym = symbolizer_for(prog)
    funcs = disassemble_prog(prog, sym)
    ksyms = {sp.addr: sp.ksym for sp in prog.subprogs}
    sub_calls = [i for fn in funcs for i in fn.insns if i.target in ksyms]
    assert sub_calls and all(i.target_loc.func == ksyms[i.target] for i in sub_calls)
    text = render_disasm_text(funcs)
    for sp in prog.subprogs:
        assert f"{sp.ksym}:" in text
        if sp.prototype:
            assert sp.prototype in text

    sp = prog.subprogs[1]
    for key in (sp.name, sp.ksym, sp.index, str(sp.index)):
        (only,) = disassemble_prog(prog, sym, func=key)
        assert only.subprog is sp
    with pytest.raises(NotFoundError, match=prog.subprogs[0].name):
        disassemble_prog(prog, sym, func="no_such_subprogram")


def test_headers_name_the_kallsyms_symbols(prog: ProgInfo, funcs: list[DisasmFunc]):
    names_at: dict[int, set[str]] = {sp.addr: set() for sp in prog.subprogs}
    for row in Path("/proc/kallsyms").read_text().splitlines():
        if row.endswith("[bpf]"):
            addr, _, name = row.split()[:3]
            if int(addr, 16) in names_at:
                names_at[int(addr, 16)].add(name)
    headers = [row.split(":")[0] for row in render_disasm_text(funcs).splitlines()
               if row.startswith("bpf_prog_")]
    assert [{h} for h in headers] == [names_at[sp.addr] for sp in prog.subprogs]
