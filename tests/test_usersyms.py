"""Unit (no root): user-space symbols and types on real third-party files: Debian's libc with
libc6-dbg's DWARF, its IFUNCs, the pyenv python's second libpython, stacks through garbage.

Oracles are independent of our code: ``readelf`` (relocations), ``nm -D`` (dynamic symbols),
``dlsym`` (which asks the dynamic loader for an IFUNC's implementation by running its resolver
in this process, something our code never does), ``/proc/PID/maps`` as the kernel writes it.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bpflbr_shell.kernel.values import Signature, ValueType, format_str
from bpflbr_shell.render.events import (
    RenderOptions,
    event_json,
    event_to_json,
    format_call,
    render_event,
)
from bpflbr_shell.trace.events import RET_STR, STR_SHOWN, CapturedStr, Event

drgn = pytest.importorskip("drgn", reason="needs drgn (pip install drgn: scripts/bootstrap.sh)")


def mapped_path(name: str, pid: int | str = "self") -> str:
    for row in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = row.split(maxsplit=5)
        if len(parts) == 6 and os.path.basename(parts[5]) == name:
            return parts[5]
    pytest.skip(f"this process does not map {name}")


LIBC = mapped_path("libc.so.6")


@pytest.fixture(scope="module")
def libc():
    from bpflbr_shell.symbols.user import BinaryImage

    image = BinaryImage(LIBC)
    try:
        image.prog.function("__libc_open64")
    except LookupError:
        pytest.skip("needs libc's DWARF (apt-get install libc6-dbg)")
    return image


# ---- 1. DWARF drgn cannot map: raw values, one notice, never an exception -------------------

def test_libc_assembly_stub_degrades_to_raw_values_once(libc) -> None:
    """getpid is an assembly stub whose DWARF has DW_TAG_unspecified_type (0x3b); drgn raises
    BadDataError on it. It ended the trace with 'internal error' before."""
    with pytest.raises(Exception, match="0x3b"):  # what drgn itself does with it
        _ = libc.prog.function("__getpid").type_
    libc.notices.clear()
    for name in ("getpid", "__getpid", "getpid"):  # aliases: one function, one notice
        assert libc.signature(name) is None
    assert len(libc.notices) == 1, libc.notices
    assert re.fullmatch(r"getpid in libc\.so\.6: its DWARF type is unreadable "
                        r"\(BadDataError: .*0x3b\); showing raw registers", libc.notices[0])


def test_symbolizer_hands_notices_out_once(libc) -> None:
    from bpflbr_shell.symbols.user import UserSymbolizer

    us = UserSymbolizer()
    us._images[LIBC] = libc  # noqa: SLF001 - the image above, already open
    libc.notices.clear()
    libc._signatures.clear()  # noqa: SLF001
    assert libc.signature("getppid") is None  # another stub of the same kind
    first = us.take_notices()
    assert any(n.startswith("getppid in libc.so.6") for n in first), first
    assert us.take_notices() == []


# ---- 2. width and sign from the prototype, through aliases, variadic or not -----------------

INT = ValueType(4, True, False, "int")


def test_open64_prototype_through_its_dwarf_name(libc) -> None:
    """``open64`` has no DWARF of that name (it is ``__libc_open64``): the symbol's aliases at
    the same address find it. Returns int, variadic."""
    with pytest.raises(LookupError):
        libc.prog.function("open64")
    for name in ("open64", "open", "__open"):
        sig = libc.signature(name)
        assert sig is not None, name
        assert sig.ret == INT and sig.variadic, sig
        assert sig.names == ["file", "oflag"]
        assert sig.params[0][1].pointer and sig.params[0][1].string
        assert sig.retval(0xFFFFFFFF) == -1  # what bpftrace prints for a failed open
    read = libc.signature("read")  # __libc_read: ssize_t read(int, void *, size_t)
    assert read is not None and not read.variadic
    assert read.names == ["fd", "buf", "nbytes"]
    assert (read.ret.size, read.ret.signed) == (8, True)
    assert read.params[1][1].pointer and not read.params[1][1].string  # void *
    assert (read.params[2][1].size, read.params[2][1].signed) == (8, False)


def test_aliases_are_what_nm_puts_at_that_address(libc) -> None:
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("needs nm (binutils)")
    out = subprocess.run([nm, "-D", LIBC], capture_output=True, text=True, check=True).stdout
    addrs: dict[int, set[str]] = {}
    for row in out.splitlines():
        parts = row.split()
        if len(parts) == 3 and parts[1] in "TtWwi":
            addrs.setdefault(int(parts[0], 16), set()).add(parts[2].split("@")[0])
    (open_addr,) = {a for a, names in addrs.items() if "open64" in names}
    assert addrs[open_addr] <= set(libc.aliases("open64"))
    assert libc.aliases("open64")[0] == "open64"


def test_variadic_and_unsigned_counts_render(libc) -> None:
    ev = Event("uretprobe libc.so.6:open64", "exit", 1, 7, 7, 0, "t", 0x1000,
               [0x5000, 0, 0x1B6], 0xFFFFFFFF, 10, -95, func="open64")
    assert format_call(ev, libc.signature("open64")) == "open64(file=0x5000, oflag=0, ...) = -1"
    ev = Event("uretprobe libc.so.6:read", "exit", 1, 7, 7, 0, "t", 0x1000,
               [3, 0x7FFD0000, 832], 832, 10, -95, func="read")
    assert format_call(ev, libc.signature("read")) == \
        "read(fd=3, buf=0x7ffd0000, nbytes=832) = 832"


# ---- 5. IFUNCs ------------------------------------------------------------------------------

def readelf_irelative(path: str) -> dict[int, list[int]]:
    tool = shutil.which("readelf")
    if tool is None:
        pytest.skip("needs readelf (binutils)")
    out = subprocess.run([tool, "-rW", path], capture_output=True, text=True, check=True).stdout
    slots: dict[int, list[int]] = {}
    for row in out.splitlines():
        parts = row.split()
        if len(parts) >= 4 and parts[2] == "R_X86_64_IRELATIVE":
            slots.setdefault(int(parts[3], 16), []).append(int(parts[0], 16))
    return slots


def test_irelative_slots_match_readelf() -> None:
    from bpflbr_shell.symbols.user import irelative_slots

    if os.uname().machine != "x86_64":
        pytest.skip("R_X86_64_IRELATIVE is x86-64's")
    ours = irelative_slots(LIBC)
    assert ours == readelf_irelative(LIBC)
    assert ours  # libc has dozens


def test_ifunc_implementation_is_what_the_loader_chose(libc) -> None:
    """dlsym("strlen") runs the resolver and returns the implementation; we read the GOT slot
    the loader filled instead, calling nothing. Both must name the same function."""
    from bpflbr_shell.symbols.user import UserSymbolizer

    us = UserSymbolizer()
    us._images[LIBC] = libc  # noqa: SLF001
    assert libc.symbol_kind("strlen") == "ifunc"
    assert libc.symbol_kind("read") == "func"
    bias = us.load_bias(os.getpid(), LIBC)
    for name in ("strlen", "memcpy", "strchr"):
        impl = us.ifunc_target(os.getpid(), LIBC, name)
        assert impl is not None and impl != name, name
        via_dlsym = ctypes.cast(getattr(ctypes.CDLL(LIBC), name), ctypes.c_void_p).value
        assert libc.lookup(via_dlsym - bias)[:2] == (impl, 0), (name, impl)
    assert "__strlen_avx2" in libc.functions_named("__strlen_") or \
        "__strlen_sse2" in libc.functions_named("__strlen_")
    assert libc.signature("strlen") is None  # not the resolver's size_t (*)(const char *)


def test_resolve_ifuncs_swaps_the_resolver_for_the_implementation(libc) -> None:
    pytest.importorskip("bcc", reason="needs BCC (apt-get install python3-bpfcc)")
    from bpflbr_shell.symbols.user import UserSymbolizer
    from bpflbr_shell.trace.probes.uprobe import resolve_ifuncs, resolve_targets

    us = UserSymbolizer()
    us._images[LIBC] = libc  # noqa: SLF001
    notes: list[str] = []
    (target,) = resolve_ifuncs(resolve_targets(LIBC, "strlen"), us, 0, notes)
    impl = us.ifunc_target(os.getpid(), LIBC, "strlen")
    assert target.name == impl
    assert notes == [f"strlen is an IFUNC: tracing {impl}, the implementation the dynamic "
                     "loader chose in this shell's process (same file, same CPU)"]
    # time has no IRELATIVE slot in libc (its implementation is the vDSO's): said, not hidden
    notes.clear()
    (target,) = resolve_ifuncs(resolve_targets(LIBC, "time"), us, 0, notes)
    assert target.name == "time"
    assert notes and notes[0].startswith("time is an IFUNC: tracing its resolver")


# ---- 3. --pid: what the process maps ---------------------------------------------------------

PYENV_PY = Path.home() / ".pyenv/versions/3.11.7/bin/python3.11"


def test_pid_resolves_the_copy_the_process_maps() -> None:
    """The pyenv python links its own libpython3.11.so.1.0; ldconfig knows Debian's. Without
    --pid the short name chose Debian's copy and the trace saw nothing, silently."""
    pytest.importorskip("bcc", reason="needs BCC (apt-get install python3-bpfcc)")
    from bpflbr_shell.trace.probes.uprobe import resolve_binary

    if not PYENV_PY.exists():
        pytest.skip(f"needs the pyenv python at {PYENV_PY} (a second libpython3.11)")
    proc = subprocess.Popen([str(PYENV_PY), "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    try:
        for _ in range(200):
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
            if "libpython3.11.so.1.0" in maps:
                break
            subprocess.run(["sleep", "0.02"])
        theirs = mapped_path("libpython3.11.so.1.0", proc.pid)
        notes: list[str] = []
        assert resolve_binary("libpython3.11.so.1.0", proc.pid, notes) == theirs
        assert notes == []
        # without --pid: a choice is made, and the copy that process maps is named
        chosen = resolve_binary("libpython3.11.so.1.0", 0, notes)
        if chosen != theirs:
            assert len(notes) == 1 and theirs in notes[0] and chosen in notes[0], notes
        # its executable by command name, and libc by its short name
        assert resolve_binary("python3", proc.pid, []) == os.path.realpath(PYENV_PY)
        assert resolve_binary("c", proc.pid, []) == mapped_path("libc.so.6", proc.pid)
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


def test_pid_that_does_not_map_the_file_is_said() -> None:
    pytest.importorskip("bcc", reason="needs BCC (apt-get install python3-bpfcc)")
    from bpflbr_shell.trace.probes.uprobe import resolve_binary

    notes: list[str] = []
    path = resolve_binary(sys.executable, os.getpid(), notes)
    assert path == os.path.realpath(sys.executable) and notes == []
    bash = shutil.which("bash")
    if bash:
        notes.clear()
        assert resolve_binary(bash, os.getpid(), notes) == os.path.realpath(bash)
        assert notes == [f"process {os.getpid()} does not map {os.path.realpath(bash)} (yet): "
                         "its probes fire only if the process loads that file"]


# ---- 7. user stacks ------------------------------------------------------------------------

def test_user_stack_cut_at_the_first_frame_outside_every_mapping() -> None:
    """A frame-pointer walk through code without frame pointers reads data (here the ASCII
    of '/python3n' seen in a real trace) as return addresses; no frame past it is real."""
    from bpflbr_shell.symbols.kernel import Location
    from bpflbr_shell.symbols.user import UNMAPPED, UserSymbolizer

    us = UserSymbolizer()
    pid = os.getpid()
    libc_fn = ctypes.cast(ctypes.CDLL(LIBC).getpid, ctypes.c_void_p).value
    junk, unmapped = 0x336E6F687479702F, 0x1000  # non-canonical; below every mapping
    assert us.symbolize(pid, junk).kind == UNMAPPED
    assert us.symbolize(pid, unmapped).kind == UNMAPPED

    def symbolize(event: Event, addr: int) -> Location:
        return us.symbolize(event.pid, addr)

    ev = Event("uprobe x", "entry", 1, pid, pid, 0, "t", libc_fn, [], None, None, -95,
               func="getpid", ustack=[libc_fn, junk, libc_fn + 1])
    text = render_event(ev, symbolize, RenderOptions(), Signature(()))
    frames = text.split("user stack:\n")[1].splitlines()
    assert len(frames) == 2, text
    assert frames[1].strip() == "(2 more: not in any mapping of the process)"
    assert "0x336e6f687479702f" not in text
    js = event_to_json(ev, symbolize, RenderOptions(), Signature(()))
    assert [f["addr"] for f in js["ustack"]] == [libc_fn]


def test_symbol_less_frame_is_module_plus_offset() -> None:
    """An address in a mapped file with no symbol there reads ``file+0xLINKADDR`` (what
    ``addr2line -e file`` takes), not a bare runtime address."""
    from bpflbr_shell.render.events import frame_text
    from bpflbr_shell.symbols.user import UserSymbolizer

    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("needs bash (a binary without DWARF)")
    proc = subprocess.Popen([bash, "-c", "read x"], stdin=subprocess.PIPE)
    try:
        real = os.path.realpath(bash)
        for _ in range(200):
            rows = [r.split() for r in Path(f"/proc/{proc.pid}/maps").read_text().splitlines()]
            text = [r for r in rows if len(r) == 6 and r[5] == real and "x" in r[1]]
            if text:
                break
            subprocess.run(["sleep", "0.02"])
        start = int(text[0][0].split("-")[0], 16)
        pgoff = int(text[0][2], 16)
        us = UserSymbolizer()
        # the first executable page starts with .init/.plt stubs: find an address in it
        # that no symbol covers (bash is stripped of its static functions)
        for delta in range(0, 0x4000, 0x10):
            loc = us.symbolize(proc.pid, start + delta)
            if loc.func is None:
                break
        else:
            pytest.skip("every probed address of bash's text had a symbol")
        assert loc.module == os.path.basename(real)
        # bash's text segment: file offset == link address modulo its segment's delta
        from bpflbr_shell.symbols.user import load_segments

        seg = next(s for s in load_segments(real) if s.exec)
        # the kernel's mapping says which file offset the address is at; the segment maps
        # file offsets to link-time addresses
        file_offset = pgoff + delta
        assert loc.offset == file_offset - seg.offset + seg.vaddr
        assert frame_text(loc) == f"bash+{loc.offset:#x}"
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


# ---- 6 and 8. strings and number styles ----------------------------------------------------

CSTR = ValueType(8, False, True, "const char *", True)
PUTS = Signature((("s", CSTR),), INT)
GETENV = Signature((("name", CSTR),), ValueType(8, False, True, "char *", True))


def captured(text: bytes) -> CapturedStr:
    data = text[: 63]  # what bpf_probe_read_user_str leaves in a 64-byte buffer
    return CapturedStr(len(data) + 1, data)


def test_strings_render_escaped_and_bounded() -> None:
    ev = Event("uprobe libc.so.6:puts", "entry", 1, 7, 7, 0, "t", 0x1000, [0x5000], None,
               None, -95, func="puts", strings=((0, captured(b"hi \x1b]0;pwn\x07 \"q\"\n")),))
    assert format_call(ev, PUTS) == r'puts(s="hi \x1b]0;pwn\x07 \"q\"\n")'
    long = b"x" * 100
    ev.strings = ((0, captured(long)),)
    assert format_call(ev, PUTS) == f'puts(s="{"x" * STR_SHOWN}"...)'
    ev.strings = ((0, captured(b"y" * STR_SHOWN)),)  # exactly the bound: not cut
    assert format_call(ev, PUTS) == f'puts(s="{"y" * STR_SHOWN}")'
    ev.args, ev.strings = [0], ((0, CapturedStr(0, b"")),)
    assert format_call(ev, PUTS) == "puts(s=NULL)"
    ev.args, ev.strings = [0xDEAD], ((0, CapturedStr(-14, b"")),)
    assert format_call(ev, PUTS) == "puts(s=0xdead (unreadable: error 14))"


def test_string_retval_and_json() -> None:
    ev = Event("uretprobe libc.so.6:getenv", "exit", 1, 7, 7, 0, "t", 0x1000, [0x5000],
               0x6000, 10, -95, func="getenv",
               strings=((0, captured(b"HOME")), (RET_STR, captured(b"/root"))))
    assert format_call(ev, GETENV) == 'getenv(name="HOME") = "/root"'
    # without DWARF (bash's readline with --str ret): registers raw, the string shown
    ev2 = Event("uretprobe bash:readline", "exit", 1, 7, 7, 0, "bash", 0x1000, [0x10, 0],
                0x6000, 10, -95, func="readline", strings=((RET_STR, captured(b"ls -l")),))
    assert format_call(ev2, None) == 'readline(raw regs: 0x10, 0x0) = "ls -l"'

    def nosym(event, addr):
        from bpflbr_shell.symbols.kernel import Location
        return Location(addr)

    for sort_keys in (True, False):
        for e, sig in ((ev, GETENV), (ev2, None)):
            js = event_to_json(e, nosym, RenderOptions(), sig)
            assert event_json(e, nosym, RenderOptions(), sig, sort_keys=sort_keys) == \
                __import__("json").dumps(js, sort_keys=sort_keys)
    js = event_to_json(ev, nosym, RenderOptions(), GETENV)
    # one JSON rule: every number a number (pointers too); strings beside them
    assert js["args"] == {"name": 0x5000} and js["retval"] == 0x6000
    assert js["strings"] == {"name": {"text": "HOME", "truncated": False, "ret": 5},
                             "retval": {"text": "/root", "truncated": False, "ret": 6}}
    assert "strings" not in event_to_json(Event("p", "entry", 1, 1, 1, 0, "c", 1, [], None,
                                                None, -95), nosym, RenderOptions(), None)


def test_format_str() -> None:
    assert format_str(b"a\\b") == r'"a\\b"'
    assert format_str(b"\xff\xfe", truncated=True) == r'"\xff\xfe"...'


def test_str_spec_and_knobs(libc) -> None:
    pytest.importorskip("bcc", reason="needs BCC (apt-get install python3-bpfcc)")
    from bpflbr_shell.errors import UsageError
    from bpflbr_shell.symbols.user import UserSymbolizer
    from bpflbr_shell.trace.probes.uprobe import parse_str_spec, resolve_targets, string_knobs

    assert parse_str_spec("ret,arg0", True) == 1 << RET_STR | 1
    assert parse_str_spec(None, True) == 0
    with pytest.raises(UsageError, match="arg0..arg5"):
        parse_str_spec("arg9", True)
    with pytest.raises(UsageError, match="uretprobe"):
        parse_str_spec("ret", False)
    us = UserSymbolizer()
    us._images[LIBC] = libc  # noqa: SLF001
    notes: list[str] = []
    getenv = resolve_targets(LIBC, "getenv")
    assert string_knobs(getenv, us, 0, True, notes) == {"STR_MASK": 1 | 1 << RET_STR,
                                                        "STR_COUNT": 2}
    assert string_knobs(getenv, us, 0, False, notes) == {"STR_MASK": 1, "STR_COUNT": 1}
    assert string_knobs(resolve_targets(LIBC, "read"), us, 0, True, notes) == {}
    # one program serves every target: functions that disagree get no typed strings
    both = resolve_targets(LIBC, "getenv") + resolve_targets(LIBC, "read")
    assert string_knobs(both, us, 0, True, notes) == {}
    assert notes and "differ" in notes[-1]


def test_char_pointer_facts_are_kept_per_file_version(libc, tmp_path: Path) -> None:
    """What a function's DWARF says about ``char *`` values is kept in the probe cache: a warm
    trace then opens no DWARF before its probes are in (the DWARF read cost more than the
    rest of a warm start). A copy of the file (another inode) is another fact; a corrupt fact
    is said and looked up again."""
    from bpflbr_shell.symbols.user import UserSymbolizer
    from bpflbr_shell.trace.probes import objcache
    from bpflbr_shell.trace.probes.uprobe import char_pointers

    cache = objcache.ProbeCache(tmp_path / "c" / "probes")
    assert cache.usable()
    us = UserSymbolizer()
    us._images[LIBC] = libc  # noqa: SLF001
    assert char_pointers(LIBC, "getenv", us, cache) == (1, True)  # char *getenv(const char *)
    facts = sorted((tmp_path / "c" / "probes").glob("fact-*.json"))
    assert len(facts) == 1 and facts[0].stat().st_mode & 0o777 == 0o600
    fresh = UserSymbolizer()
    assert char_pointers(LIBC, "getenv", fresh, cache) == (1, True)
    assert fresh._images == {}  # noqa: SLF001 - answered from the fact: no DWARF opened
    assert char_pointers(LIBC, "read", fresh, cache) == (0, False)  # read(int, void *, ...)
    assert len(list((tmp_path / "c" / "probes").glob("fact-*.json"))) == 2
    facts[0].write_text('{"format": 1, "key": "x", "value": {}}')
    notices: list[str] = []
    old, objcache.notice = objcache.notice, notices.append
    try:
        assert char_pointers(LIBC, "getenv", UserSymbolizer(), cache) == (1, True)
    finally:
        objcache.notice = old
    assert notices and "corrupt" in notices[0]
    copy = tmp_path / "libc-copy.so"
    shutil.copyfile(LIBC, copy)
    key = objcache.fact_key("char-pointers", [LIBC], "getenv")
    assert key is not None and objcache.fact_key("char-pointers", [str(copy)], "getenv") != key


def test_ifunc_flag_comes_from_the_symbol_table() -> None:
    """Which targets are IFUNCs is read from the ELF symbol table (readelf is the oracle), so
    the common case opens no DWARF before attaching."""
    from bpflbr_shell.trace.probes.uprobe import resolve_targets

    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("needs readelf (binutils)")
    rows = subprocess.run([readelf, "-W", "--dyn-syms", LIBC], capture_output=True, text=True,
                          check=True).stdout.splitlines()
    kinds: dict[str, set[bool]] = {}  # name -> is IFUNC, per symbol version
    for r in rows:
        f = r.split()
        if len(f) >= 8 and f[3] in ("FUNC", "IFUNC"):
            kinds.setdefault(f[7].split("@")[0], set()).add(f[3] == "IFUNC")
    assert kinds["strlen"] == {True} and kinds["malloc"] == {False}
    assert kinds["memcpy"] == {True, False}  # memcpy@GLIBC_2.2.5 is a plain function
    for name in ("strlen", "memcpy", "time", "malloc", "getenv"):
        found = {t.ifunc for t in resolve_targets(LIBC, name) if t.name == name}
        assert found == kinds[name], name


def test_preferred_names_apply_to_an_image_opened_later() -> None:
    """prefer() before the binary is open (a trace no longer opens its DWARF before
    attaching) still names open64's events open64."""
    from bpflbr_shell.symbols.user import UserSymbolizer

    us = UserSymbolizer()
    us.prefer(LIBC, ["open64"])
    assert us._images == {}  # noqa: SLF001 - nothing opened by prefer itself
    image = us.image(LIBC)
    assert image is not None
    (addr,) = set(image.function_addrs("open64"))
    assert image.lookup(addr)[0] == "open64"
    other = UserSymbolizer().image(LIBC)
    assert other is not None and other.lookup(addr)[0] != "open64"  # drgn's own pick
