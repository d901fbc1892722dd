"""perf.py and features.py: layouts against the C compiler, the probe against this machine.
(libbpf.py's structs and constants, which features.py uses, are checked in test_libbpf.py.)

Unit tests need no root. Live tests compare every probe row with a fact obtained another way
(a file read directly, findmnt, kallsyms, bpftool, BCC), so they pass on any host, whatever it
can or cannot do, and fail only when the probe misreports.
"""

from __future__ import annotations

import ctypes
import errno
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import gcc_oracle

from bpflbr_shell.errors import FeatureError, UsageError
from bpflbr_shell.kernel import features as F
from bpflbr_shell.kernel import perf

# ------------------------------------------------------------------------------ branch types


def test_branch_aliases_map_to_perf_bits() -> None:
    assert perf.parse_branch_types("any") == 1 << 3
    assert perf.parse_branch_types(None) == perf.PERF_SAMPLE_BRANCH_ANY
    assert perf.parse_branch_types("") == perf.PERF_SAMPLE_BRANCH_ANY
    assert perf.parse_branch_types("any_call,ind_jump") == (1 << 4) | (1 << 12)
    assert perf.parse_branch_types(["COND", " call "]) == (1 << 10) | (1 << 13)
    assert perf.parse_branch_types("0x30") == 0x30  # retsnoop also takes raw masks
    every = perf.parse_branch_types(list(perf.BRANCH_TYPES))
    assert every & perf.PRIVILEGE_BITS == 0
    assert perf.branch_type_names(every) == list(perf.BRANCH_TYPES)
    assert set(perf.BRANCH_TYPES) == {
        "any", "any_call", "any_return", "cond", "call", "ind_call", "ind_jump", "call_stack",
        "abort_tx", "in_tx", "no_tx",
    }


@pytest.mark.parametrize("spec", ["anycall", "any,bogus", "0x1", "0x100000"])
def test_bad_branch_type_names_the_valid_ones(spec: str) -> None:
    with pytest.raises(UsageError) as info:
        perf.parse_branch_types(spec)
    text = str(info.value)
    for name in perf.BRANCH_TYPES:
        assert name in text


def test_lbr_attr_sets_privilege_bits() -> None:
    a = perf.lbr_attr(perf.PERF_SAMPLE_BRANCH_ANY | perf.PERF_SAMPLE_BRANCH_USER)
    assert a.size == 128 and a.type == 0 and a.config == 0
    assert a.sample_type == perf.PERF_SAMPLE_BRANCH_STACK
    assert a.branch_sample_type == perf.PERF_SAMPLE_BRANCH_ANY | perf.PERF_SAMPLE_BRANCH_KERNEL
    b = perf.lbr_attr(perf.PERF_SAMPLE_BRANCH_CALL, kernel=False, user=True)
    assert b.branch_sample_type == perf.PERF_SAMPLE_BRANCH_CALL | perf.PERF_SAMPLE_BRANCH_USER
    with pytest.raises(UsageError):
        perf.lbr_attr(perf.PERF_SAMPLE_BRANCH_ANY, kernel=False, user=False)


def test_open_lbr_events_closes_what_it_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[int] = []

    def fake_open(attr: perf.PerfEventAttr, pid: int, cpu: int, *a: object) -> int:
        assert pid == -1
        if cpu == 2:
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        fd = os.open(os.devnull, os.O_RDONLY)
        opened.append(fd)
        return fd

    monkeypatch.setattr(perf, "perf_event_open", fake_open)
    with pytest.raises(FeatureError, match="CPU 2: the CPU's PMU has no branch stack"):
        perf.open_lbr_events("any", cpus=[0, 1, 2, 3])
    assert len(opened) == 2
    for fd in opened:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_lbr_errno_explanations() -> None:
    why, fix = perf.explain_lbr_errno(errno.ENOENT, perf.PERF_SAMPLE_BRANCH_ANY)
    assert "no hardware PMU with a branch stack (LBR)" in why and fix
    why, _ = perf.explain_lbr_errno(errno.EINVAL, perf.PERF_SAMPLE_BRANCH_CALL_STACK)
    assert "call_stack" in why


# ------------------------------------------------------------------------- layouts vs. gcc

ATTR_FIELDS = [
    "type", "size", "config", "sample_period", "sample_freq", "sample_type", "read_format",
    "wakeup_events", "wakeup_watermark", "bp_type", "bp_addr", "kprobe_func", "uprobe_path",
    "config1", "bp_len", "kprobe_addr", "probe_offset", "config2", "branch_sample_type",
    "sample_regs_user", "sample_stack_user", "clockid", "sample_regs_intr", "aux_watermark",
    "sample_max_stack", "aux_sample_size", "sig_data",
]
PERF_CONSTS = [
    "PERF_ATTR_SIZE_VER7", "PERF_TYPE_HARDWARE", "PERF_COUNT_HW_CPU_CYCLES",
    "PERF_SAMPLE_BRANCH_STACK", "PERF_FLAG_FD_CLOEXEC", "PERF_SAMPLE_BRANCH_USER",
    "PERF_SAMPLE_BRANCH_KERNEL", "PERF_SAMPLE_BRANCH_HV",
] + [f"PERF_SAMPLE_BRANCH_{n.upper()}" for n in perf.BRANCH_TYPES]


def _oracle_source() -> str:
    lines = [
        "#include <stdio.h>", "#include <stddef.h>", "#include <string.h>",
        "#include <stdint.h>", "#include <sys/syscall.h>", "#include <linux/perf_event.h>",
        "#define P(k, v) printf(\"%s %lld\\n\", k, (long long)(v))",
        "static int bit(const struct perf_event_attr *a) {",
        "  uint64_t w; memcpy(&w, (const char *)a + offsetof(struct perf_event_attr, read_format)"
        " + 8, 8);",
        "  return w ? __builtin_ctzll(w) : -1; }",
        "int main(void) {", "  struct perf_event_attr a;",
        "  P(\"sizeof.attr\", sizeof(struct perf_event_attr));",
        "  P(\"nr_perf_event_open\", __NR_perf_event_open);",
    ]
    lines += [f'  P("off.attr.{f}", offsetof(struct perf_event_attr, {f}));' for f in ATTR_FIELDS]
    lines += [f'  P("const.{c}", {c});' for c in PERF_CONSTS]
    lines += [f'  memset(&a, 0, sizeof a); a.{f} = 1; P("bit.{f}", bit(&a));'
              for f in perf.ATTR_FLAG_BITS]
    lines += ["  return 0; }"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def c_oracle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """sizeof/offsetof/constants as gcc sees them in the system headers."""
    return gcc_oracle(tmp_path_factory.mktemp("oracle"), _oracle_source(),
                      ("/usr/include/linux/perf_event.h",))


def test_perf_event_attr_matches_gcc(c_oracle: dict[str, int]) -> None:
    assert ctypes.sizeof(perf.PerfEventAttr) == c_oracle["sizeof.attr"]
    assert perf.PERF_ATTR_SIZE_VER7 == c_oracle["const.PERF_ATTR_SIZE_VER7"]
    for f in ATTR_FIELDS:
        assert getattr(perf.PerfEventAttr, f).offset == c_oracle[f"off.attr.{f}"], f
    for f, pos in perf.ATTR_FLAG_BITS.items():
        assert pos == c_oracle[f"bit.{f}"], f
    assert perf.PerfEventAttr.flags.offset == c_oracle["off.attr.read_format"] + 8


def test_perf_constants_match_gcc(c_oracle: dict[str, int]) -> None:
    for c in PERF_CONSTS:
        assert getattr(perf, c) == c_oracle[f"const.{c}"], c
    if platform.machine() in perf._NR_PERF_EVENT_OPEN:
        assert perf._NR_PERF_EVENT_OPEN[platform.machine()] == c_oracle["nr_perf_event_open"]


# ---------------------------------------------------------------------------- probe, unit


def test_elf_reader_against_readelf(tmp_path: Path) -> None:
    gcc, readelf = shutil.which("gcc"), shutil.which("readelf")
    if not (gcc and readelf):
        pytest.skip("needs gcc and readelf (binutils) as the oracle")
    src, exe = tmp_path / "t.c", tmp_path / "t"
    src.write_text("int main(void) { return 0; }\n")
    subprocess.run([gcc, "-g", "-Wl,--build-id", "-o", str(exe), str(src)], check=True)
    sections = F._elf_sections(str(exe))
    assert ".debug_info" in sections
    off, size = sections[".note.gnu.build-id"]
    blob = exe.read_bytes()[off : off + size]
    notes = subprocess.run([readelf, "-n", str(exe)], check=True, capture_output=True,
                           text=True).stdout
    build_id = F._gnu_build_id(blob)
    assert build_id and f"Build ID: {build_id}" in notes


def test_headers_release(tmp_path: Path) -> None:
    tree = tmp_path / "linux-headers-9.9.9-x"
    (tree / "include/generated").mkdir(parents=True)
    assert F.headers_release(str(tree)) == "9.9.9-x"  # from the name
    (tree / "include/generated/utsrelease.h").write_text('#define UTS_RELEASE "9.9.9-real"\n')
    assert F.headers_release(str(tree)) == "9.9.9-real"  # the header wins


def test_one_crashing_check_hides_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(ctx: object) -> F.Result:
        raise RuntimeError("kaboom")

    def fine(ctx: object) -> F.Result:
        return True, "ok", None

    checks = tuple((name, boom if i == 1 else fine) for i, (name, _) in enumerate(F.CHECKS))
    monkeypatch.setattr(F, "CHECKS", checks)
    rows = F.probe_features()
    assert [r.name for r in rows] == list(F.FEATURE_NAMES)
    assert rows[1].available is False and "kaboom" in rows[1].detail
    assert all(r.available for i, r in enumerate(rows) if i != 1)
    table = F.render_features(rows)
    assert table.splitlines()[2].split()[:2] == [F.FEATURE_NAMES[1], "no"]
    assert json.loads(json.dumps(F.to_json(rows)))[1]["detail"].endswith("kaboom")


def test_unknown_feature_name() -> None:
    with pytest.raises(UsageError, match="valid: bpf-syscall"):
        F.probe_features(["nope"])


def test_no_bcc_or_drgn_at_import() -> None:
    code = ("import sys, bpflbr_shell.kernel.features, bpflbr_shell.kernel.perf; "
            "print('bcc' in sys.modules, 'drgn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, cwd=Path(__file__).parent.parent).stdout.split()
    assert out == ["False", "False"]


# ---------------------------------------------------------------------------- probe, live

live = pytest.mark.live
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: bpf(2), perf, bpftool")


def _bpftool(kind: str) -> list[dict[str, object]]:
    tool = shutil.which("bpftool")
    if tool is None:
        pytest.skip("bpftool not installed: no independent view of loaded progs/links")
    out = subprocess.run([tool, kind, "show", "--json"], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out or "[]")


def _fd_kinds() -> dict[str, int]:
    """Open fds of this process by kind (bpf-prog, bpf-link, [perf_event], ...)."""
    kinds: dict[str, int] = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("anon_inode:"):
            kinds[target] = kinds.get(target, 0) + 1
    return kinds


@pytest.fixture(scope="module")
def probed() -> dict[str, F.Feature]:
    if os.geteuid() != 0:
        pytest.skip("needs root: bpf(2), perf, bpftool")
    return {f.name: f for f in F.probe_features()}


def _kallsyms() -> set[str]:
    with open("/proc/kallsyms") as f:
        return {line.split()[2] for line in f}


@live
@needs_root
def test_probe_leaves_nothing_behind() -> None:
    progs_before = {p["id"] for p in _bpftool("prog")}
    links_before = {lk["id"] for lk in _bpftool("link")}
    fds_before = _fd_kinds()
    rows = F.probe_features()
    assert _fd_kinds() == fds_before
    ours = {"bpflbr_feat_tr", "bpflbr_feat_km"}
    progs_after = {p["id"]: p.get("name") for p in _bpftool("prog")}
    leaked = {i: n for i, n in progs_after.items() if i not in progs_before and n in ours}
    assert not leaked
    # other engineers' tests may create links concurrently; only links on our progs count
    new_links = [lk for lk in _bpftool("link") if lk["id"] not in links_before]
    assert not [lk for lk in new_links if progs_after.get(lk.get("prog_id")) in ours]
    assert [r.name for r in rows] == list(F.FEATURE_NAMES)
    for r in rows:
        assert r.detail.strip(), r


@live
@needs_root
def test_every_row_is_explained(probed: dict[str, F.Feature]) -> None:
    for f in probed.values():
        assert f.detail and f.detail != "(nothing found)", f
        assert not f.detail.startswith("check crashed"), f


@live
@needs_root
def test_bpf_syscall_and_jit_and_btf(probed: dict[str, F.Feature]) -> None:
    tool = shutil.which("bpftool")
    if tool:
        ok = subprocess.run([tool, "prog", "show"], capture_output=True).returncode == 0
        assert probed["bpf-syscall"].available == ok
    jit = Path("/proc/sys/net/core/bpf_jit_enable")
    expect_jit = jit.exists() and jit.read_text().strip() != "0"
    assert probed["bpf-jit"].available == expect_jit
    assert probed["kernel-btf"].available == os.path.exists("/sys/kernel/btf/vmlinux")


@live
@needs_root
def test_sysfs_and_procfs_facts(probed: dict[str, F.Feature]) -> None:
    uprobe = "/sys/bus/event_source/devices/uprobe/type"
    assert probed["uprobes"].available == os.path.exists(uprobe)
    assert probed["kcore"].available == os.path.exists("/proc/kcore")
    syms = _kallsyms()
    # kprobes are compiled in exactly when register_kprobe is a kernel symbol
    assert probed["kprobes"].available == ("register_kprobe" in syms)
    if probed["kprobe-multi"].available:
        assert "register_fprobe" in syms
    elif "EOPNOTSUPP" in probed["kprobe-multi"].detail:
        assert "register_fprobe" not in syms


@live
@needs_root
def test_lbr_against_pmu_caps(probed: dict[str, F.Feature]) -> None:
    base = Path("/sys/bus/event_source/devices")
    pmus = [p for p in ("cpu", "cpu_core", "cpu_atom") if (base / p).exists()]
    lbr = probed["lbr"]
    if not pmus:
        assert not lbr.available
        assert "ENOENT" in lbr.detail or "ENODEV" in lbr.detail
        return
    caps = base / pmus[0] / "caps" / "branches"
    if not caps.exists():
        pytest.skip(f"{base / pmus[0]} has no caps/branches to compare against")
    assert lbr.available == (int(caps.read_text()) > 0)


@live
@needs_root
def test_lbr_open_agrees_and_does_not_leak(probed: dict[str, F.Feature]) -> None:
    before = _fd_kinds()
    if probed["lbr"].available:
        fds = perf.open_lbr_events("any")
        assert len(fds) == len(perf.online_cpus())
        perf.close_all(fds)
    else:
        with pytest.raises(FeatureError, match="LBR"):
            perf.open_lbr_events("any")
    assert _fd_kinds() == before


@live
@needs_root
def test_mounts_against_findmnt() -> None:
    findmnt = shutil.which("findmnt")
    if findmnt is None:
        pytest.skip("findmnt (util-linux) not installed")

    def mounted(fstype: str) -> bool:
        # findmnt 2.38 exits 0 even when nothing matches a -t filter: look at its output
        out = subprocess.run([findmnt, "-n", "-o", "TARGET", "-t", fstype],
                             capture_output=True, text=True).stdout
        return bool(out.strip())

    for feature, fstype in (("tracefs", "tracefs"), ("bpffs", "bpf")):
        # other sessions on this machine mount and unmount these; compare only a stable state
        before = mounted(fstype)
        (row,) = F.probe_features([feature])
        if mounted(fstype) != before:
            pytest.skip(f"{fstype} was mounted/unmounted while probing")
        assert row.available == before, row


@live
@needs_root
def test_python_modules(probed: dict[str, F.Feature]) -> None:
    assert probed["drgn"].available == (importlib.util.find_spec("drgn") is not None)
    assert probed["bcc"].available == (importlib.util.find_spec("bcc") is not None)


@live
@needs_root
def test_bcc_headers_against_link_target(probed: dict[str, F.Feature]) -> None:
    build = Path(f"/lib/modules/{os.uname().release}/build")
    row = probed["bcc-headers"]
    if os.environ.get("BCC_KERNEL_SOURCE"):
        pytest.skip("BCC_KERNEL_SOURCE set: BCC does not look at /lib/modules")
    if not build.exists():
        if os.path.exists(F.KHEADERS):  # BCC's fallback: the running kernel's own headers
            assert row.available and F.KHEADERS in row.detail
        else:
            assert not row.available and "does not exist" in row.detail
        return
    name = build.resolve().name
    if not name.startswith("linux-headers-"):
        pytest.skip(f"{build} -> {name}: not a distro headers tree, cannot tell its version")
    matches = name == f"linux-headers-{os.uname().release}"
    source = build.parent / "source"  # the Debian layout (build + source): BCC uses source
    tree = source if source.is_dir() and build.is_dir() else build
    found = (tree / "include/linux/kconfig.h").is_file() or os.path.exists(F.KHEADERS)
    assert row.available == (matches and found)
    if not matches:
        assert row.detail.startswith("MISMATCH") and os.uname().release in row.detail


@live
@needs_root
def test_vmlinux_debuginfo_against_readelf(probed: dict[str, F.Feature]) -> None:
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf (binutils) not installed")
    with_dwarf = []
    for path in F.vmlinux_candidates(os.uname().release):
        if os.path.exists(path):
            out = subprocess.run([readelf, "-S", "-W", path], capture_output=True, text=True)
            if " .debug_info " in out.stdout:
                with_dwarf.append(path)
    row = probed["vmlinux-debuginfo"]
    if row.available:
        assert any(row.detail.startswith(p) for p in with_dwarf)
    elif "does not match" not in row.detail:
        assert with_dwarf == []


@live
@needs_root
def test_tracing_load_against_bcc(probed: dict[str, F.Feature]) -> None:
    """BCC's own fentry path (KFUNC_PROBE, load + attach) as the independent attempt."""
    try:
        from bcc import BPF
    except ImportError:
        pytest.skip("bcc not importable: no independent TRACING attempt")
    target = F.PROBE_TARGETS[0]
    try:
        b = BPF(text=f"KFUNC_PROBE({target}) {{ return 0; }}".encode())
    except Exception as exc:  # BCC raises bare Exception
        msg = str(exc)
        if "Need super-user privileges" in msg:  # BCC's wording for EPERM
            bcc_ok, bcc_err = False, "EPERM"
        elif "Failed to load BPF program" in msg:
            bcc_ok, bcc_err = False, msg.rsplit(":", 1)[-1].strip()
        else:
            pytest.skip(f"BCC could not build the fentry probe: {msg.splitlines()[0]}")
    else:
        b.cleanup()
        bcc_ok, bcc_err = True, ""
    row = probed["tracing-prog"]
    assert row.available == bcc_ok, (row, bcc_err)
    if bcc_err == "EPERM":
        assert "EPERM" in row.detail and "blocked by policy" in row.detail
