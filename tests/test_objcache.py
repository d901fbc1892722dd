"""The probe cache (probes/objcache.py): what it keeps, when it refuses, what a hit loads.

Pure tests check the entry format and the directory/file rules on files made here; live ones
(root, BCC) compare a cache hit with a fresh BCC compile of the same variant, by bytecode and
by the kernel's own program tag (bpftool), and check that a hit never imports bcc.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from bpflbr_shell.trace.probes import objcache
from bpflbr_shell.trace.probes.objcache import CorruptEntry, Entry, ProbeCache
from bpflbr_shell.trace.probes.progobj import (
    RUNTIME_KNOBS,
    MapSpec,
    imm,
    map_ref_slots,
    set_imms,
    split_knobs,
)

REPO = Path(__file__).resolve().parent.parent
KEY = "ab" * 32
LD_MAP = struct.pack("<BBhi", 0x18, 0x11, 0, 0) + struct.pack("<BBhi", 0, 0, 0, 0)  # r1 = map 0
MOV_FILTER = struct.pack("<BBhi", 0xB7, 0x02, 0, RUNTIME_KNOBS["FILTER_TGID"])  # r2 = knob
EXIT = struct.pack("<BBhi", 0x95, 0, 0, 0)


@pytest.fixture(autouse=True)
def fresh_notices(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each test sees its own notices (they are said once per process)."""
    said: list[str] = []
    monkeypatch.setattr(objcache, "_said", set())
    monkeypatch.setattr(objcache, "notice", said.append)
    return said


def small_entry() -> Entry:
    return Entry(KEY, "uprobe.c", [MapSpec("stats", 6, 4, 8, 4, 0)],
                 {"on_entry": (LD_MAP + MOV_FILTER + EXIT, {"FILTER_TGID": [2]})})


def test_entry_round_trips_through_json() -> None:
    e = small_entry()
    assert Entry.from_json(e.to_json(), KEY) == e


def _corrupt(doc: dict, path: tuple, value: object) -> bytes:
    node = doc
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("path", "value"), [
    (("format",), 2),
    (("key",), "cd" * 32),
    (("maps",), "x"),
    (("maps", 0, "type"), -1),
    (("maps", 0, "name"), "a b"),
    (("functions", "on_entry", "insns"), "not base64!"),
    (("functions", "on_entry", "insns"), base64.b64encode(b"\x18" * 12).decode()),  # 1.5 insns
    (("functions", "on_entry", "insns"),  # map index 1 of 1 map
     base64.b64encode(set_imms(LD_MAP + EXIT, [(0, 1)])).decode()),
    (("functions", "on_entry", "patch"), {"FILTER_TGID": [0]}),  # no placeholder there
    (("functions", "on_entry", "patch"), {"SOMETHING": [2]}),
    (("functions",), {}),
])
def test_a_corrupt_entry_is_named(path: tuple, value: object) -> None:
    doc = json.loads(small_entry().to_json())
    with pytest.raises(CorruptEntry):
        Entry.from_json(_corrupt(doc, path, value), KEY)


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b"\xff\xfe", b'{"format": 1}'])
def test_garbage_is_a_corrupt_entry(data: bytes) -> None:
    with pytest.raises(CorruptEntry):
        Entry.from_json(data, KEY)


def test_runtime_knobs_compile_as_placeholders() -> None:
    compiled, patches = split_knobs({"FILTER_TGID": 0, "EXCLUDE_TGID": 4242, "NARGS": 2})
    assert compiled == {"FILTER_TGID": 0, "EXCLUDE_TGID": RUNTIME_KNOBS["EXCLUDE_TGID"],
                        "NARGS": 2}
    assert patches == {"EXCLUDE_TGID": 4242}


# ---- the directory and file rules -------------------------------------------------------------
def stored(tmp_path: Path) -> ProbeCache:
    cache = ProbeCache(tmp_path / "c" / "probes")
    assert cache.usable()
    cache.store(small_entry())
    return cache


def test_a_stored_entry_is_private_and_loads(tmp_path: Path, fresh_notices: list[str]) -> None:
    cache = stored(tmp_path)
    assert cache.load(KEY) == small_entry()
    for p in (cache.root.parent, cache.root):
        assert os.stat(p).st_mode & 0o777 == 0o700
    assert os.stat(cache.path(KEY)).st_mode & 0o777 == 0o600
    assert fresh_notices == []


def test_a_group_or_world_writable_cache_dir_is_refused(tmp_path: Path,
                                                        fresh_notices: list[str]) -> None:
    cache = stored(tmp_path)
    os.chmod(cache.root, 0o777)
    assert not cache.usable()
    os.chmod(cache.root, 0o700)
    os.chmod(cache.root.parent, 0o770)
    assert not cache.usable()
    assert len(fresh_notices) == 1 and "writable by others" in fresh_notices[0]


def test_a_symlinked_cache_dir_is_refused(tmp_path: Path, fresh_notices: list[str]) -> None:
    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o700)
    (tmp_path / "c").mkdir(mode=0o700)
    (tmp_path / "c" / "probes").symlink_to(real)
    assert not ProbeCache(tmp_path / "c" / "probes").usable()
    assert len(fresh_notices) == 1 and "symlink" in fresh_notices[0]


def test_a_symlinked_entry_is_not_followed(tmp_path: Path, fresh_notices: list[str]) -> None:
    cache = stored(tmp_path)
    planted = tmp_path / "planted.json"
    shutil.move(cache.path(KEY), planted)
    cache.path(KEY).symlink_to(planted)
    assert cache.load(KEY) is None
    assert len(fresh_notices) == 1 and "symlink" in fresh_notices[0]


def test_a_world_writable_entry_is_refused(tmp_path: Path, fresh_notices: list[str]) -> None:
    cache = stored(tmp_path)
    os.chmod(cache.path(KEY), 0o666)
    assert cache.load(KEY) is None
    assert len(fresh_notices) == 1 and "writable by others" in fresh_notices[0]


@pytest.mark.live
def test_a_cache_dir_or_entry_owned_by_another_user_is_refused(
        require_root, tmp_path: Path, fresh_notices: list[str]) -> None:
    cache = stored(tmp_path)
    os.chown(cache.path(KEY), 65534, 65534)
    assert cache.load(KEY) is None
    assert "owned by uid 65534" in fresh_notices[-1]
    os.chown(cache.path(KEY), 0, 0)
    assert cache.load(KEY) == small_entry()
    os.chown(cache.root, 65534, 65534)
    assert not cache.usable()
    assert "owned by uid 65534" in fresh_notices[-1]


# ---- live: what a hit loads ------------------------------------------------------------------
VARIANTS = {
    "uprobe.c": {"CAPTURE_LBR": 1, "LBR_ENTRIES": 32, "EMIT_ENTRY": 0, "PAIR_EXIT": 1,
                 "CAPTURE_USTACK": 1, "CAPTURE_KSTACK": 0},
    "kprobe.c": {"CAPTURE_LBR": 0, "LBR_ENTRIES": 0, "EMIT_ENTRY": 1, "PAIR_EXIT": 0,
                 "CAPTURE_USTACK": 0, "CAPTURE_KSTACK": 1},
    "fentry.c": {"CAPTURE_LBR": 1, "LBR_ENTRIES": 32, "EMIT_ENTRY": 1, "PAIR_EXIT": 1,
                 "NARGS": 3},
}


def ring_knobs(lbr_entries: int) -> dict[str, int]:
    """Two rings of 64 slots, sized for the record the variant writes (as base.py does)."""
    import ctypes

    from bpflbr_shell.trace.events import raw_event_type
    from bpflbr_shell.trace.probes.cpuring import ring_bytes

    record = ctypes.sizeof(raw_event_type(lbr_entries))
    return {"NR_RINGS": 2, "RING_SLOTS": 64, "RING_BYTES": ring_bytes(64, record)}


def by_map_name(insns: bytes) -> list[tuple[int, str, int, int]]:
    """Each map reference as (insn, the kernel's name, type and size of the map)."""
    from bpflbr_shell.kernel import libbpf

    out = []
    for pc in map_ref_slots(insns):
        info = libbpf.map_info(imm(insns, pc))
        out.append((pc, info.name.decode(), info.type, info.max_entries))
    return out


def zero_map_fds(insns: bytes) -> bytes:
    return set_imms(insns, [(pc, 0) for pc in map_ref_slots(insns)])


def kernel_tag(prog_fd: int) -> str:
    """The program's tag as bpftool reports it (the kernel's hash of the instructions, map
    fds masked)."""
    from bpflbr_shell.kernel import libbpf

    info = libbpf.BpfProgInfo()
    libbpf.obj_info(prog_fd, info, "prog info")
    out = subprocess.run(["bpftool", "prog", "show", "id", str(info.id), "--json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["tag"]


@pytest.mark.live
@pytest.mark.parametrize("source", sorted(VARIANTS))
def test_a_cache_hit_loads_what_bcc_compiles(require_root, require_bcc, source: str,
                                             tmp_path: Path) -> None:
    """A fresh BCC compile with the real pids (no placeholders) is the oracle: the hit's
    bytecode equals it instruction for instruction (map fds aside, which name the same
    maps), and loaded, the kernel gives both the same tag."""
    import bcc

    from bpflbr_shell.trace.probes import bccprog

    knobs = {**VARIANTS[source], "FILTER_TGID": 31337, "EXCLUDE_TGID": os.getpid(),
             **ring_knobs(VARIANTS[source]["LBR_ENTRIES"])}
    cache = ProbeCache(tmp_path / "c" / "probes")
    objcache.build_program(source, knobs, cache).cleanup()
    hit = objcache.build_program(source, knobs, cache)
    fresh = bcc.BPF(text=bccprog.inline_local_includes(bccprog.BPF_DIR / source).encode(),
                    cflags=bccprog.cflags_for(knobs))
    try:
        assert hit.builder == "cache"
        lib = bcc.lib
        names = [lib.bpf_function_name(fresh.module, i).decode()
                 for i in range(lib.bpf_num_functions(fresh.module))]
        assert sorted(names) == sorted(hit.functions())
        for name in names:
            want, got = fresh.dump_func(name.encode()), hit.dump_func(name)
            assert zero_map_fds(got) == zero_map_fds(want), name
            assert by_map_name(got) == by_map_name(want), name
            if source == "uprobe.c":  # kprobe-type programs load on this host
                theirs = fresh.load_func(name.encode(), bcc.BPF.KPROBE).fd
                assert kernel_tag(hit.load_func(name)) == kernel_tag(theirs), name
    finally:
        hit.cleanup()
        fresh.cleanup()


KNOBS = {**VARIANTS["uprobe.c"], "FILTER_TGID": 4242, "EXCLUDE_TGID": 4343, **ring_knobs(32)}


@pytest.mark.live
def test_a_corrupt_entry_falls_back_to_compiling_with_one_line(
        require_root, require_bcc, tmp_path: Path, fresh_notices: list[str]) -> None:
    cache = ProbeCache(tmp_path / "c" / "probes")
    objcache.build_program("uprobe.c", KNOBS, cache).cleanup()
    (entry,) = cache.root.glob("*.json")
    entry.write_bytes(entry.read_bytes()[:200])  # cut short, as by a full disk
    obj = objcache.build_program("uprobe.c", KNOBS, cache)
    obj.cleanup()
    assert obj.builder == "bcc"
    assert len(fresh_notices) == 1 and "\n" not in fresh_notices[0]
    assert "is corrupt" in fresh_notices[0] and "compiling again" in fresh_notices[0]
    again = objcache.build_program("uprobe.c", KNOBS, cache)  # the compile rewrote it
    again.cleanup()
    assert again.builder == "cache"


@pytest.mark.live
def test_a_cache_hit_never_imports_bcc(require_root, require_bcc, tmp_path: Path) -> None:
    env = dict(os.environ, **{objcache.ENV_ROOT: str(tmp_path / "c" / "probes")})
    script = (
        "import json, sys\n"
        "from bpflbr_shell.trace.probes import objcache\n"
        f"obj = objcache.build_program('uprobe.c', json.loads({json.dumps(KNOBS)!r}))\n"
        "fd = obj.load_func('on_entry')\n"
        "print(obj.builder, 'bcc' in sys.modules, fd > 0)\n"
        "obj.cleanup()\n")
    runs = [subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=120) for _ in range(2)]
    assert [r.stdout.split() for r in runs] == [["bcc", "True", "True"],
                                                ["cache", "False", "True"]], \
        [r.stderr for r in runs]
