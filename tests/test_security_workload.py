"""examples/workload.py runs as root: its object cache, --log and --pidfile follow safefile's
rules (a cached .o is loaded into the kernel; a log is appended to)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WORKLOAD = REPO / "examples" / "workload.py"
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


@pytest.fixture(scope="module")
def wl():
    spec = importlib.util.spec_from_file_location("workload_under_test", WORKLOAD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def cached(wl, tmp_path) -> tuple[Path, Path, str]:
    """A cache directory holding a freshly compiled object: (dir, object, clang)."""
    clang = shutil.which("clang") or shutil.which("clang-14")
    if clang is None:
        pytest.skip("needs clang to compile the example object")
    cache = tmp_path / "cache"
    obj = wl.compile_object(wl.LIBBPF_SRC, cache, clang)
    return cache, obj, clang


def test_cache_dir_is_private(cached) -> None:
    cache, obj, _ = cached
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert obj.stat().st_uid == os.geteuid()


def test_symlinked_cache_entry_refused(wl, cached, tmp_path) -> None:
    cache, obj, clang = cached
    planted = tmp_path / "planted.o"
    planted.write_bytes(obj.read_bytes())
    obj.unlink()
    obj.symlink_to(planted)
    with pytest.raises(SystemExit, match="symlink"):
        wl.compile_object(wl.LIBBPF_SRC, cache, clang)


def test_group_writable_cache_entry_refused(wl, cached) -> None:
    cache, obj, clang = cached
    obj.chmod(0o666)
    with pytest.raises(SystemExit, match="writable by others"):
        wl.compile_object(wl.LIBBPF_SRC, cache, clang)


@ROOT_ONLY
@pytest.mark.parametrize("which", ["entry", "dir"])
def test_cache_owned_by_another_user_refused(wl, cached, which) -> None:
    cache, obj, clang = cached
    os.chown(obj if which == "entry" else cache, 65534, 65534)
    with pytest.raises(SystemExit, match="owned by uid 65534"):
        wl.compile_object(wl.LIBBPF_SRC, cache, clang)


@ROOT_ONLY
def test_log_symlink_refused_before_anything_loads(tmp_path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    (tmp_path / "wl.log").symlink_to(victim)
    proc = subprocess.run([sys.executable, str(WORKLOAD), "--no-bcc", "--log",
                           str(tmp_path / "wl.log"), "--pidfile", str(tmp_path / "wl.pid")],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode == 0:  # it started anyway: stop the daemon before failing
        os.kill(int((tmp_path / "wl.pid").read_text()), 15)
    assert proc.returncode == 1 and "symlink" in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    assert victim.read_text() == "precious\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
