"""KallsymsIndex against facts read independently from real kallsyms text.

Unit tests use tests/fixtures/kallsyms-slice.txt (recorded by scripts/record_kallsyms_fixture.py
from the host kernel); the oracle here is a plain split-and-sort of the same text. Live tests
compare with a brute-force linear scan of /proc/kallsyms and with grep.
"""

from __future__ import annotations

import fnmatch
import os
import random
import re
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from bpflbr_shell.errors import KernelDataError, NotFoundError, PrivilegeError
from bpflbr_shell.kernel.kallsyms import LAST_SYMBOL_CAP, KallsymsIndex

FIXTURE = Path(__file__).parent / "fixtures" / "kallsyms-slice.txt"
TEXT = "tTwW"
END_MARKERS = re.compile(r"_etext|_einittext|__\w+_text_end")
START_MARKERS = {"_stext", "_text", "_sinittext"}

live = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/proc/kallsyms"),
    reason="needs root and /proc/kallsyms with real addresses",
)


def parse(text: str) -> list[tuple[int, str, str, str | None]]:
    """The oracle's own parse: (addr, type, name, module) sorted by address."""
    rows = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        f = line.split()
        rows.append((int(f[0], 16), f[1], f[2], f[3].strip("[]") if len(f) > 3 else None))
    rows.sort(key=lambda r: r[0])
    return rows


@pytest.fixture(scope="module")
def text() -> str:
    return FIXTURE.read_text()


@pytest.fixture(scope="module")
def rows(text: str) -> list[tuple[int, str, str, str | None]]:
    return parse(text)


@pytest.fixture(scope="module")
def index(text: str) -> KallsymsIndex:
    return KallsymsIndex.from_text(text)


def groups(rows):
    """Address -> rows at that address, and the sorted distinct addresses."""
    by_addr = defaultdict(list)
    for r in rows:
        by_addr[r[0]].append(r)
    return by_addr, sorted(by_addr)


def test_fixture_is_real_and_varied(rows):
    # guards against a re-recording that lost the parts the other tests rely on
    mods = {r[3] for r in rows}
    assert len(rows) > 2000
    assert None in mods and "bpf" in mods and len(mods - {None, "bpf"}) >= 1
    assert {"_stext", "_etext", "_einittext"} <= {r[2] for r in rows}


def test_len_and_order(index, rows):
    assert len(index) == len(rows)
    syms = list(index)
    assert [s.addr for s in syms] == [r[0] for r in rows]
    assert sorted((s.addr, s.name) for s in syms) == sorted((r[0], r[2]) for r in rows)


def test_str_and_bytes_agree(text, rows):
    a = KallsymsIndex.from_text(text)
    b = KallsymsIndex.from_text(text.encode())
    for r in rows[::37]:
        assert a.lookup(r[0]) == b.lookup(r[0])


def test_unique_text_symbols_map_to_themselves(index, rows):
    by_addr, addrs = groups(rows)
    checked = 0
    for k, addr in enumerate(addrs[:-1]):
        group = by_addr[addr]
        (_, typ, name, mod), nxt = group[0], addrs[k + 1]
        if len(group) > 1 or typ not in TEXT or END_MARKERS.fullmatch(name):
            continue
        if by_addr[nxt][0][3] != mod:
            continue  # region end: size is capped, checked separately
        want = (name, addr, nxt - addr, mod, typ)
        for probe in {addr, addr + 1, (addr + nxt) // 2, nxt - 1}:
            if probe >= nxt:
                continue
            got = index.lookup(probe)
            assert got is not None, hex(probe)
            assert (got.name, got.addr, got.size, got.module, got.type) == want, hex(probe)
        checked += 1
    assert checked > 2000


def test_same_address_groups_prefer_real_code(index, rows):
    by_addr, _ = groups(rows)
    dup_groups = [g for g in by_addr.values() if len(g) > 1]
    assert dup_groups
    for g in dup_groups:
        got = index.lookup(g[0][0])
        text_names = [r[2] for r in g if r[1] in TEXT]
        real = [
            n for n in text_names if n not in START_MARKERS and not END_MARKERS.fullmatch(n)
            and not n.endswith("_text_start")
        ]
        if real:
            assert got is not None and got.name in real
        elif not text_names:
            assert got is None
    stext = index.address_of("_stext")
    assert stext is not None
    assert index.lookup(stext).name not in ("_stext", "_text")


def test_region_ends(index, rows):
    names = {r[2]: r[0] for r in rows}
    etext = names["_etext"]
    assert index.lookup(etext) is None
    assert index.lookup(etext + 0x100) is None
    before = max(r for r in rows if r[0] < etext)
    assert index.lookup(etext - 1).name == before[2]
    # the first data symbol after _etext starts a region where no code lives
    data = min(r for r in rows if r[0] > etext)
    assert data[1] not in TEXT
    assert index.lookup(data[0]) is None and index.lookup(data[0] + 8) is None
    # a section end marker followed by padding: nothing is mapped in the padding
    ends = [r for r in rows if END_MARKERS.fullmatch(r[2]) and r[2] not in ("_etext",)]
    assert ends
    for r in ends:
        if all(o[0] != r[0] or o[2] == r[2] for o in rows):  # marker alone at its address
            assert index.lookup(r[0]) is None and index.lookup(r[0] + 4) is None
    assert index.lookup(rows[0][0] - 1) is None
    assert index.lookup(0) is None


def test_module_and_bpf_symbols(index, rows):
    by_addr, addrs = groups(rows)
    for r in rows:
        if r[3] is None:
            continue
        got = index.lookup(r[0])
        assert got is not None and got.module == r[3] and got.name == r[2]
        assert got.type == r[1]
        nxt = next((a for a in addrs if a > r[0]), None)
        if nxt is None or by_addr[nxt][0][3] != r[3]:
            # last of its region: kallsyms gives no end, so the size is capped, not absurd
            assert got.size <= LAST_SYMBOL_CAP
            assert index.lookup(r[0] + LAST_SYMBOL_CAP) is None or (
                nxt is not None and nxt <= r[0] + LAST_SYMBOL_CAP
            )
        else:
            assert got.size == nxt - r[0]
    bpf = [r for r in rows if r[3] == "bpf"]
    assert all(r[2].startswith("bpf_prog_") for r in bpf)


def test_addresses_of_duplicates(index, rows):
    by_name = defaultdict(set)
    for r in rows:
        by_name[r[2]].add(r[0])
    repeated = [n for n, a in by_name.items() if len(a) > 1]
    assert len(repeated) >= 5
    for name in repeated:
        assert index.addresses_of(name) == sorted(by_name[name])
        assert index.address_of(name) == min(by_name[name])
        assert [s.addr for s in index.symbols_named(name)] == sorted(by_name[name])
    for name in random.Random(1).sample(sorted(by_name), 200):
        assert index.addresses_of(name) == sorted(by_name[name])
    assert index.address_of("no_such_symbol_xyz") is None
    assert index.address_of("") is None
    # a prefix or a suffix of a real name is not that name
    assert index.address_of("_stex") is None
    assert index.address_of("stext") is None


@pytest.mark.parametrize("glob", ["bpf_*", "*_show", "s_?ext", "[st]_next", "__pfx_bpf_*",
                                  "*branch*", "[!_]*_one", "nothing_matches_*"])
def test_names_matching_agrees_with_fnmatch(index, rows, glob):
    want = sorted({r[2] for r in rows if r[1] in TEXT and fnmatch.fnmatchcase(r[2], glob)})
    assert index.names_matching(glob, limit=None) == want
    assert index.names_matching(glob, limit=3) == want[:3]
    want_all = sorted({r[2] for r in rows if fnmatch.fnmatchcase(r[2], glob)})
    assert index.names_matching(glob, limit=None, text_only=False) == want_all


def test_comments_blank_lines_and_empty_text(text):
    noisy = "# header\n\n" + text.replace("\n", "\n\n", 5) + "\n# trailer\n"
    assert len(KallsymsIndex.from_text(noisy)) == len(KallsymsIndex.from_text(text))
    empty = KallsymsIndex.from_text("")
    assert len(empty) == 0 and empty.lookup(0xFFFFFFFF81000000) is None
    assert empty.address_of("x") is None


def test_zero_addresses_raise_privilege_error(text):
    zeroed = re.sub(r"(?m)^[0-9a-f]+", "0" * 16, text)
    with pytest.raises(PrivilegeError) as e:
        KallsymsIndex.from_text(zeroed)
    msg = str(e.value)
    assert "\n" not in msg and "kptr_restrict" in msg and "root" in msg


def test_load_errors_and_file(tmp_path, text):
    with pytest.raises(NotFoundError):
        KallsymsIndex.load(str(tmp_path / "missing"))
    p = tmp_path / "kallsyms"
    p.write_text(text)
    loaded = KallsymsIndex.load(str(p))
    assert len(loaded) == len(KallsymsIndex.from_text(text))
    with pytest.raises(KernelDataError):
        KallsymsIndex.from_text("zzzz T foo\n")


# ---- live: the running kernel ------------------------------------------------------------


@pytest.fixture(scope="module")
def live_rows():
    with open("/proc/kallsyms") as f:
        return parse(f.read())


@pytest.mark.live
@live
def test_live_random_addresses_match_linear_scan(live_rows):
    """Random addresses across kernel text, checked against a brute-force scan of all lines."""
    index = KallsymsIndex.load()
    # [bpf] lines come and go as programs load (other tests, other users): compare the rest
    assert sum(1 for s in index if s.module != "bpf") == sum(
        1 for r in live_rows if r[3] != "bpf"
    )
    by_name = {r[2]: r[0] for r in live_rows}
    lo, hi = by_name["_stext"], by_name["_etext"]
    rnd = random.Random(42)
    flat = [(r[0], r[1], r[2]) for r in live_rows]
    for _ in range(150):
        x = rnd.randrange(lo, hi)
        best = max(a for a, _, _ in flat if a <= x)  # linear scan, no bisect
        group = [(t, n) for a, t, n in flat if a == best]
        got = index.lookup(x)
        text_names = [n for t, n in group if t in TEXT]
        if not text_names or all(END_MARKERS.fullmatch(n) for n in text_names):
            assert got is None, hex(x)
        else:
            assert got is not None and got.name in text_names, hex(x)
            assert got.addr == best and got.module is None


@pytest.mark.live
@live
def test_live_every_text_symbol_maps_into_its_group(live_rows):
    index = KallsymsIndex.load()
    names_at = defaultdict(set)
    for a, _t, n, _m in live_rows:
        names_at[a].add(n)
    for a, t, n, m in live_rows:
        if t not in TEXT or END_MARKERS.fullmatch(n) or m == "bpf":  # bpf: may be gone by now
            continue
        got = index.lookup(a)
        if got is None:  # only an end marker may win a group over code
            assert any(END_MARKERS.fullmatch(o) for o in names_at[a]), n
            continue
        assert got.addr == a and got.name in names_at[a] and got.module == m


@pytest.mark.live
@live
@pytest.mark.parametrize("name", ["bpf_get_branch_snapshot", "tcp_v4_rcv", "_stext", "schedule"])
def test_live_address_of_matches_grep(name):
    out = subprocess.run(
        ["grep", "-E", f" {name}(\t|$)", "/proc/kallsyms"], capture_output=True, text=True
    ).stdout
    want = sorted({int(line.split()[0], 16) for line in out.splitlines()})
    assert want, f"{name} not in /proc/kallsyms"
    index = KallsymsIndex.load()
    assert index.addresses_of(name) == want
    assert index.address_of(name) == want[0]


@pytest.mark.live
@live
def test_live_names_matching_matches_grep():
    out = subprocess.run(
        ["grep", "-E", r" [tTwW] tcp_v4_[^ \t]*(\t|$)", "/proc/kallsyms"],
        capture_output=True, text=True,
    ).stdout
    want = sorted({line.split()[2] for line in out.splitlines()})
    assert want
    assert KallsymsIndex.load().names_matching("tcp_v4_*", limit=None) == want


def test_start_marker_beats_end_marker_at_one_address(text, rows):
    """Where one text section ends and the next starts at the same address, code follows: keep
    the start marker. Derived from the real fixture by dropping the real function that shares
    the address, so only the markers decide."""
    by_addr, _ = groups(rows)
    mixed = [
        a for a, g in by_addr.items()
        if any(END_MARKERS.fullmatch(r[2]) for r in g) and any(r[2].endswith("_text_start")
                                                              for r in g)
    ]
    assert mixed
    for a in mixed:
        prefix = f"{a:016x} "
        markers_only = "\n".join(
            ln for ln in text.splitlines()
            if not ln.startswith(prefix) or ln.split()[2].endswith(("_text_start", "_text_end"))
        )
        got = KallsymsIndex.from_text(markers_only).lookup(a + 1)
        assert got is not None and got.name.endswith("_text_start")


def test_address_of_module_and_bpf_names(index, rows):
    for r in rows:
        if r[3] is not None:
            assert r[0] in index.addresses_of(r[2])
            assert [s.module for s in index.symbols_named(r[2])][0] == r[3]
