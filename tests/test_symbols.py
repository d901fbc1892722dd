"""Symbolizer against real records: prog infos and kallsyms recorded together from the host
(scripts/record_kallsyms_fixture.py), and live against a BCC-loaded socket filter."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from bpflbr_shell.kernel.kallsyms import KallsymsIndex
from bpflbr_shell.kernel.model import ProgInfo, RawProgInfo
from bpflbr_shell.kernel.progs import decode_prog_info
from bpflbr_shell.symbols.kernel import KINDS, Location, Symbolizer

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_rows() -> list[tuple[int, str, str, str | None]]:
    rows = []
    for line in (FIXTURES / "kallsyms-slice.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            f = line.split()
            rows.append((int(f[0], 16), f[1], f[2], f[3].strip("[]") if len(f) > 3 else None))
    return rows


@pytest.fixture(scope="module")
def kallsyms() -> KallsymsIndex:
    return KallsymsIndex.from_text((FIXTURES / "kallsyms-slice.txt").read_text())


@pytest.fixture(scope="module")
def progs() -> list[ProgInfo]:
    raws = json.loads((FIXTURES / "symbols-progs.json").read_text())
    return [decode_prog_info(RawProgInfo.from_json(r), boot_epoch=0.0) for r in raws]


@pytest.fixture()
def sym(kallsyms, progs) -> Symbolizer:
    return Symbolizer(kallsyms, progs)


def expected_line(sub, addr):
    """Oracle: the last line record starting at or before addr, by linear scan."""
    best = None
    for li in sub.lines:
        if li.addr and li.addr <= addr and (best is None or li.addr >= best.addr):
            best = li
    return best


def test_fixture_progs_have_lines_and_kallsyms_entries(progs):
    rows = fixture_rows()
    bpf_syms = {r[0]: r[2] for r in rows if r[3] == "bpf"}
    assert any(sp.lines for p in progs for sp in p.subprogs)
    for p in progs:
        for sp in p.subprogs:
            # the kernel's kallsyms line and the decoded prog info name the same symbol
            assert bpf_syms.get(sp.addr) == sp.ksym


def test_every_bpf_byte_maps_to_its_subprog_and_line(sym, progs):
    checked = 0
    for p in progs:
        for sp in p.subprogs:
            for a in range(sp.addr, sp.end):
                loc = sym.symbolize(a)
                assert (loc.kind, loc.func, loc.offset, loc.module, loc.prog_id) == (
                    "bpf", sp.ksym, a - sp.addr, "bpf", p.id
                )
                li = expected_line(sp, a)
                if li is None:
                    assert loc.file is None and loc.line is None
                else:
                    assert (loc.file, loc.line, loc.col, loc.text) == (
                        li.file, li.line, li.col, li.text
                    )
                checked += 1
            for li in sp.lines:
                loc = sym.symbolize(li.addr)
                assert loc.line == li.line and loc.text == li.text
                want = f"{sp.ksym}+{li.addr - sp.addr:#x} ({li.file}:{li.line}:{li.col})"
                assert loc.format() == want
    assert checked > 50


def test_past_a_known_prog_end_is_not_guessed(sym, progs):
    for p in progs:
        for sp in p.subprogs:
            loc = sym.symbolize(sp.end)
            assert loc.func != sp.ksym


def test_kernel_module_and_unknown_addresses(sym):
    rows = fixture_rows()
    vm = [r for r in rows if r[3] is None and r[1] in "tT" and r[2] == "bpf_get_branch_snapshot"]
    assert vm
    loc = sym.symbolize(vm[0][0] + 4)
    assert (loc.kind, loc.func, loc.offset, loc.module) == (
        "kernel", "bpf_get_branch_snapshot", 4, None
    )
    assert loc.format() == "bpf_get_branch_snapshot+0x4"
    mod = [r for r in rows if r[3] not in (None, "bpf")][0]
    loc = sym.symbolize(mod[0] + 1)
    assert loc.kind == "module" and loc.module == mod[3]
    assert loc.format() == f"{mod[2]}+0x1 [{mod[3]}]"
    loc = sym.symbolize(0x1234)
    assert loc.kind == "unknown" and loc.func is None and loc.format() == "0x1234"
    assert str(loc) == "0x1234"


def test_bpf_ksym_without_prog_info(kallsyms, progs):
    rows = fixture_rows()
    known = {sp.addr for p in progs for sp in p.subprogs}
    others = [r for r in rows if r[3] == "bpf" and r[0] not in known]
    if not others:
        pytest.skip("fixture has no [bpf] symbol beyond the recorded progs")
    s = Symbolizer(kallsyms)  # no prog infos: every [bpf] entry comes from kallsyms alone
    for r in others:
        loc = s.symbolize(r[0] + 2)
        got = (loc.kind, loc.func, loc.offset, loc.file, loc.prog_id)
        assert got == ("bpf", r[2], 2, None, None)


def test_line_resolver_is_used_for_kernel_only(sym, progs):
    rows = fixture_rows()
    kaddr = next(r[0] for r in rows if r[2] == "bpf_get_branch_snapshot")
    before = sym.symbolize(kaddr)
    assert before.file is None
    calls: list[int] = []

    def resolver(addr: int) -> tuple[str, int, int] | None:
        calls.append(addr)
        return ("kernel/bpf/helpers.c", 41, 0)

    sym.line_resolver = resolver  # drops the cache: the old answer must not stick
    after = sym.symbolize(kaddr)
    assert after.format() == "bpf_get_branch_snapshot+0x0 (kernel/bpf/helpers.c:41)"
    bpf_addr = progs[0].subprogs[0].addr
    assert sym.symbolize(bpf_addr).file != "kernel/bpf/helpers.c"
    assert calls == [kaddr]


def test_cache_and_many(sym, progs):
    rows = fixture_rows()
    addrs = [r[0] + 1 for r in rows[::50]] + [sp.addr + 3 for p in progs for sp in p.subprogs]
    addrs += [0x10]
    first = sym.symbolize_many(addrs)
    assert first == [Symbolizer(sym.kallsyms, progs).symbolize(a) for a in addrs]
    second = sym.symbolize_many(addrs)
    assert all(a is b for a, b in zip(first, second, strict=True))  # served from the cache
    assert {loc.kind for loc in first} <= set(KINDS)


def test_add_remove_and_replace(kallsyms, progs):
    p = progs[0]
    sp = p.subprogs[0]
    s = Symbolizer(kallsyms)
    assert s.symbolize(sp.addr + 1).prog_id is None  # kallsyms-only answer
    s.add_prog(p)
    assert s.symbolize(sp.addr + 1).prog_id == p.id
    s.add_prog(p)  # again: no duplicate ranges
    assert len(s.progs) == 1
    # the kernel reuses JIT memory: a newer prog at the same address replaces the old one
    newer = copy.deepcopy(p)
    newer.id = p.id + 1000
    s.add_prog(newer)
    assert [q.id for q in s.progs] == [newer.id]
    assert s.symbolize(sp.addr + 1).prog_id == newer.id
    s.remove_prog(newer.id)
    assert s.symbolize(sp.addr + 1).prog_id is None
    assert s.bpf_range(sp.addr) is None


def test_no_kallsyms(progs):
    s = Symbolizer(None, progs)
    sp = progs[0].subprogs[0]
    assert s.symbolize(sp.addr).kind == "bpf"
    assert s.symbolize(0xFFFFFFFF81000000).kind == "unknown"


def test_location_format_variants():
    assert Location(0x10, "f", 0, None, "a.c", 3, 0, kind="kernel").format() == "f+0x0 (a.c:3)"
    assert Location(0x10, "f", 0x20, None, "a.c", 3, 7, kind="kernel").format() == (
        "f+0x20 (a.c:3:7)"
    )
    assert Location(0x10, "f", 1, "bpf", None, None, None, kind="bpf").format() == "f+0x1"


# ---- live: a real program from bpf(2) --------------------------------------------------------


@pytest.mark.live
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bpf(2), /proc/kallsyms addresses)")
def test_live_bcc_socket_filter_lines():
    bcc = pytest.importorskip("bcc", reason="BCC (python3-bpfcc) not importable")
    from bpflbr_shell.kernel.progs import read_prog_info, read_raw_prog_info_fd

    # unsigned arithmetic only: LLVM 14's BPF backend aborts the whole process on signed division
    src = r"""
int live_sf(struct __sk_buff *skb)
{
    u32 n = skb->len;
    if (n > 64)
        n = n >> 1;
    return n > 10 ? -1 : 0;
}
"""
    try:
        b = bcc.BPF(text=src)
        fn = b.load_func(b"live_sf", bcc.BPF.SOCKET_FILTER)
    except Exception as exc:  # BCC raises bare Exception for compile/load failures
        pytest.skip(f"BCC cannot compile/load here (kernel headers?): {exc}")
    prog = read_prog_info(read_raw_prog_info_fd(fn.fd, with_btf=False).id)
    kallsyms = KallsymsIndex.load()  # after the load, so it lists the prog
    s = Symbolizer(kallsyms, [prog])
    lines = [li for sp in prog.subprogs for li in sp.lines]
    assert lines, "BCC program has no line info"
    for sp in prog.subprogs:
        ks = kallsyms.lookup(sp.addr)
        assert ks is not None and ks.name == sp.ksym and ks.module == "bpf"
        for li in sp.lines:
            loc = s.symbolize(li.addr)
            assert (loc.func, loc.offset, loc.line, loc.col, loc.file, loc.prog_id) == (
                sp.ksym, li.addr - sp.addr, li.line, li.col, li.file, prog.id
            )
        assert s.symbolize(sp.end - 1).func == sp.ksym
    b.cleanup()


def test_concurrent_add_remove_while_resolving(kallsyms, progs):
    """A background trace's reader thread symbolizes while the shell adds and removes
    programs (a trace attaching its own, `show progs` refreshing). Before the fix the three
    arrays were swapped one by one: a reader saw new starts with old ranges (IndexError, or
    another program's name), and a Location resolved from the old table was cached after the
    swap, for good. Every answer must be one of the two true ones (the program, when it is
    registered; kallsyms' symbol, when it is not) and, once the writer is done, the cache
    must hold no stale answer."""
    import sys
    import threading
    import time

    owner = {}  # address -> (prog id, ksym): from the recorded prog infos, not our tables
    for p in progs:
        for sp in p.subprogs:
            if sp.addr and sp.size > 0:
                for a in range(sp.addr, sp.addr + sp.size, max(1, sp.size // 16)):
                    owner[a] = (p.id, sp.ksym)
    assert len({pid for pid, _ in owner.values()}) >= 2
    sym = Symbolizer(kallsyms, progs)
    moving = progs[: max(1, len(progs) // 2)]
    stop = threading.Event()
    errors: list[str] = []

    def read() -> None:
        try:
            while not stop.is_set():
                for a, (pid, ksym) in owner.items():
                    loc = sym.symbolize(a)
                    if loc.prog_id is not None and (loc.prog_id, loc.func) != (pid, ksym):
                        errors.append(f"{a:#x}: prog {loc.prog_id} {loc.func}, not {pid}")
                        return
        except Exception as exc:  # noqa: BLE001 - what the test is about
            errors.append(f"{type(exc).__name__}: {exc}")

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter allows
    readers = [threading.Thread(target=read) for _ in range(2)]
    try:
        for t in readers:
            t.start()
        deadline = time.monotonic() + 3.0  # a few thousand swaps
        while time.monotonic() < deadline:
            for p in moving:
                sym.remove_prog(p.id)
            for p in moving:
                sym.add_prog(p)
            if errors:
                break
    finally:
        stop.set()
        for t in readers:
            t.join()
        sys.setswitchinterval(old)
    assert not errors, errors[:3]
    for a, (pid, ksym) in owner.items():  # every program registered again: no stale cache
        loc = sym.symbolize(a)
        assert (loc.prog_id, loc.func) == (pid, ksym), hex(a)
