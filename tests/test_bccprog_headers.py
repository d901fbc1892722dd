"""The kernel headers a BCC compile meets: one owner (features.kernel_headers), which
bccprog.compile_program refuses on and the bcc-headers row of ``show features`` reports.

Unit tests build the layouts BCC's loader knows in a temporary directory; the live ones
compare the owner with this machine's /lib/modules, dpkg, and BCC itself (its
DEBUG_PREPROCESSOR line says which directory it compiles in)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bpflbr_shell.errors import FeatureError
from bpflbr_shell.kernel import features as F
from bpflbr_shell.trace.probes import bccprog

REL = "9.9.9-test"
OTHER = "9.9.8-other"


def _tree(path: Path, *, kconfig: bool = True, release: str | None = None) -> Path:
    path.mkdir(parents=True)
    if kconfig:
        (path / "include/linux").mkdir(parents=True)
        (path / "include/linux/kconfig.h").write_text("/* kconfig */\n")
    if release:
        (path / "include/generated").mkdir(parents=True, exist_ok=True)
        (path / "include/generated/utsrelease.h").write_text(
            f'#define UTS_RELEASE "{release}"\n')
    return path


def _heads(tmp: Path, env: dict[str, str] | None = None) -> F.KernelHeaders:
    return F.kernel_headers(REL, modules_dir=str(tmp / "modules"),
                            kheaders=str(tmp / "kheaders.tar.xz"), environ=env or {})


def _moddir(tmp: Path) -> Path:
    d = tmp / "modules" / REL
    d.mkdir(parents=True)
    return d


def test_debian_layout_compiles_in_source_and_build_says_the_release(tmp_path: Path) -> None:
    arch = _tree(tmp_path / "src/linux-headers-x-amd64", kconfig=False, release=REL)
    common = _tree(tmp_path / "src/linux-headers-x-common")
    d = _moddir(tmp_path)
    (d / "build").symlink_to(arch)
    (d / "source").symlink_to(common)
    h = _heads(tmp_path)
    assert h.tree == str(d / "source") and h.release == REL
    assert h.usable and h.matches and h.fix is None
    assert "matches the running kernel" in h.detail and str(common) in h.detail


def test_debian_layout_for_another_kernel_compiles_but_does_not_match(tmp_path: Path) -> None:
    arch = _tree(tmp_path / f"src/linux-headers-{OTHER}", kconfig=False)  # release by name
    common = _tree(tmp_path / "src/linux-headers-x-common")
    d = _moddir(tmp_path)
    (d / "build").symlink_to(arch)
    (d / "source").symlink_to(common)
    h = _heads(tmp_path)
    assert h.usable and not h.matches and h.release == OTHER
    assert h.detail.startswith("MISMATCH") and REL in h.detail and OTHER in h.detail
    assert h.fix and str(d / "build") in h.fix


def test_build_alone(tmp_path: Path) -> None:
    d = _moddir(tmp_path)
    _tree(d / "build", release=REL)
    h = _heads(tmp_path)
    assert h.tree == str(d / "build") and h.matches


def test_build_without_kconfig_h_is_no_headers(tmp_path: Path) -> None:
    d = _moddir(tmp_path)
    _tree(d / "build", kconfig=False, release=REL)  # an arch tree without its common part
    h = _heads(tmp_path)
    assert not h.usable and not h.matches
    assert "no include/linux/kconfig.h" in h.detail and "BCC cannot compile" in h.detail


def test_missing_and_dangling(tmp_path: Path) -> None:
    d = _moddir(tmp_path)
    h = _heads(tmp_path)
    assert not h.usable and "does not exist" in h.detail and "BCC cannot compile" in h.detail
    (d / "build").symlink_to(tmp_path / "gone")
    h = _heads(tmp_path)
    assert not h.usable and "dangling link" in h.detail


def test_kheaders_is_the_fallback(tmp_path: Path) -> None:
    _moddir(tmp_path)
    (tmp_path / "kheaders.tar.xz").write_bytes(b"")
    h = _heads(tmp_path)
    assert h.usable and h.matches and h.tree == str(tmp_path / "kheaders.tar.xz")


def test_headers_that_do_not_say_their_release(tmp_path: Path) -> None:
    d = _moddir(tmp_path)
    _tree(d / "build")
    h = _heads(tmp_path)
    assert h.usable and not h.matches and h.release is None
    assert "cannot tell which kernel" in h.detail


def test_environment_overrides(tmp_path: Path) -> None:
    d = _moddir(tmp_path)
    _tree(d / "build", release=OTHER)
    mine = _tree(tmp_path / "mine", release=REL)
    h = _heads(tmp_path, {"BCC_KERNEL_SOURCE": str(mine)})
    assert h.tree == str(mine) and h.matches and "BCC_KERNEL_SOURCE" in h.detail
    _tree(d / "alt", release=REL)
    h = _heads(tmp_path, {"BCC_KERNEL_MODULES_SUFFIX": "alt"})
    assert h.tree == str(d / "alt") and h.matches


def test_row_is_the_owners_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    for usable, release in ((True, REL), (True, OTHER), (False, None)):
        h = F.KernelHeaders(REL, "/t" if usable else None, release, f"d {release}", "fix")
        monkeypatch.setattr(F, "kernel_headers", lambda running=None, h=h: h)
        (row,) = F.probe_features(["bcc-headers"])
        assert (row.available, row.detail, row.fix) == (h.matches, h.detail, h.fix)


def test_compile_refuses_exactly_when_the_owner_says_no_headers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    class Compiled(Exception):
        pass

    class FakeBcc:
        def BPF(self, **kw: object) -> None:  # noqa: N802 - BCC's name
            raise Compiled

    monkeypatch.setattr(bccprog, "require_root", lambda: None)
    monkeypatch.setattr(bccprog, "import_bcc", lambda: FakeBcc())
    none = F.KernelHeaders(REL, None, None, "no headers here", "install them")
    monkeypatch.setattr(F, "kernel_headers", lambda running=None: none)
    with pytest.raises(FeatureError) as info:
        bccprog.compile_program("probe_kprobe.c", {})
    assert "BCC cannot compile: no headers here" in str(info.value)
    assert info.value.fix == "install them"
    # headers for another kernel: the compile goes ahead (and its failure names them)
    other = F.KernelHeaders(REL, "/t", OTHER, "MISMATCH: other", "install them")
    monkeypatch.setattr(F, "kernel_headers", lambda running=None: other)
    sources = sorted(p.name for p in bccprog.BPF_DIR.glob("*.c"))
    assert sources
    with pytest.raises(FeatureError, match=r"BCC failed to build .*\(MISMATCH: other\)"):
        bccprog.compile_program(sources[0], {})


# ---------------------------------------------------------------------------- live: this host


def _dpkg_release(path: str) -> str | None:
    """The release of the linux-headers package that owns ``path``, if dpkg knows it."""
    dpkg = shutil.which("dpkg-query")
    if dpkg is None:
        return None
    out = subprocess.run([dpkg, "-S", path], capture_output=True, text=True).stdout
    m = re.match(r"linux-headers-(\S+?)(?::\S+)?: ", out)
    return m.group(1) if m else None


@pytest.mark.live
def test_owner_matches_this_filesystem() -> None:
    if os.environ.get("BCC_KERNEL_SOURCE") or os.environ.get("BCC_KERNEL_MODULES_SUFFIX"):
        pytest.skip("BCC's environment overrides are set")
    release = os.uname().release
    kdir = Path("/lib/modules", release)
    build, source = kdir / "build", kdir / "source"
    h = F.kernel_headers()
    (row,) = F.probe_features(["bcc-headers"])
    assert (row.available, row.detail, row.fix) == (h.matches, h.detail, h.fix)
    tree = source if build.is_dir() and source.is_dir() else build
    if (tree / "include/linux/kconfig.h").is_file():
        assert h.tree == str(tree)
        pkg = _dpkg_release(os.path.realpath(build))
        uts = Path(os.path.realpath(build), "include/generated/utsrelease.h")
        if pkg is not None:  # Debian: the build tree belongs to linux-headers-<release>
            assert h.release == pkg
        elif uts.is_file():
            assert f'"{h.release}"' in uts.read_text()
        assert h.matches == (h.release == release)
        if not h.matches and h.release:
            assert row.detail.startswith("MISMATCH") and release in row.detail
    elif os.path.isfile(F.KHEADERS):
        assert h.tree == F.KHEADERS and h.matches
    else:
        assert not h.usable and not row.available and "BCC cannot compile" in row.detail


@pytest.mark.live
def test_owner_names_the_directory_bcc_compiles_in(tmp_path: Path) -> None:
    """BCC's loader prints the kernel directory it runs clang in (DEBUG_PREPROCESSOR)."""
    if importlib.util.find_spec("bcc") is None:
        pytest.skip("bcc not importable")
    h = F.kernel_headers()
    if not h.usable or h.tree == F.KHEADERS:
        pytest.skip(f"BCC has no headers tree here to compare: {h.detail}")
    code = ("from bcc import BPF, DEBUG_PREPROCESSOR\n"
            "BPF(text=b'int f(void *ctx) { return 0; }', debug=DEBUG_PREPROCESSOR)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    m = re.search(r"Running from kernel directory at: (\S+)", proc.stdout + proc.stderr)
    if m is None:
        pytest.skip(f"BCC did not say where it compiles (rc {proc.returncode})")
    assert m.group(1) == h.tree, (m.group(1), h)
