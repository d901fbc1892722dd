"""safefile: what root may open for writing or loading, decided on the opened fd."""

from __future__ import annotations

import os
import stat

import pytest

from bpflbr_shell.safefile import (
    UnsafeFileError,
    ensure_private_dir,
    open_safe,
    read_safe,
)

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
NOBODY = 65534


def _victim(tmp_path) -> tuple[str, bytes]:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    victim.chmod(0o644)
    return str(victim), b"precious\n"


def test_symlink_at_path_refused_and_victim_untouched(tmp_path):
    victim, content = _victim(tmp_path)
    link = tmp_path / "history"
    link.symlink_to(victim)
    with pytest.raises(UnsafeFileError, match="symlink"):
        open_safe(str(link), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    assert open(victim, "rb").read() == content
    assert stat.S_IMODE(os.stat(victim).st_mode) == 0o644


def test_hard_link_refused(tmp_path):
    victim, content = _victim(tmp_path)
    os.link(victim, tmp_path / "alias")
    with pytest.raises(UnsafeFileError, match="hard links"):
        open_safe(str(tmp_path / "alias"), os.O_WRONLY | os.O_APPEND)
    assert open(victim, "rb").read() == content


def test_truncate_only_after_the_checks(tmp_path):
    victim, content = _victim(tmp_path)
    os.link(victim, tmp_path / "pidfile")
    with pytest.raises(UnsafeFileError, match="hard links"):
        open_safe(str(tmp_path / "pidfile"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    assert open(victim, "rb").read() == content
    ours = tmp_path / "ours"
    ours.write_bytes(b"old contents")
    os.close(open_safe(str(ours), os.O_WRONLY | os.O_CREAT | os.O_TRUNC))
    assert ours.read_bytes() == b""


def test_new_file_is_0600_and_wider_existing_narrowed(tmp_path):
    path = tmp_path / "new"
    os.close(open_safe(str(path), os.O_WRONLY | os.O_CREAT))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    path.chmod(0o666)
    os.close(open_safe(str(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_loading_a_group_writable_file_refused(tmp_path):
    path = tmp_path / "cached.o"
    path.write_bytes(b"\x7fELF")
    path.chmod(0o664)
    with pytest.raises(UnsafeFileError, match="writable by others"):
        read_safe(str(path), 100)
    path.chmod(0o644)
    assert read_safe(str(path), 100) == b"\x7fELF"


def test_size_limit(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"x" * 101)
    with pytest.raises(UnsafeFileError, match="larger than 100"):
        read_safe(str(path), 100)


def test_world_writable_directory_without_sticky_refused(tmp_path):
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o777)
    with pytest.raises(UnsafeFileError, match="directory writable by others"):
        open_safe(str(d / "f"), os.O_WRONLY | os.O_CREAT)
    assert not (d / "f").exists()
    d.chmod(0o1777)  # sticky, like /tmp: allowed
    os.close(open_safe(str(d / "f"), os.O_WRONLY | os.O_CREAT))


def test_private_dir_created_0700_and_symlink_refused(tmp_path):
    d = tmp_path / "a" / "cache"
    ensure_private_dir(str(d))
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "linkdir").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafeFileError, match="symlink"):
        ensure_private_dir(str(tmp_path / "linkdir"))


@ROOT_ONLY
def test_file_owned_by_another_user_refused(tmp_path):
    path = tmp_path / "theirs"
    path.write_bytes(b"x")
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(UnsafeFileError, match=f"owned by uid {NOBODY}"):
        open_safe(str(path), os.O_WRONLY | os.O_APPEND)
    with pytest.raises(UnsafeFileError, match=f"owned by uid {NOBODY}"):
        read_safe(str(path), 10)


@ROOT_ONLY
def test_directory_owned_by_another_user_refused(tmp_path):
    d = tmp_path / "theirs"
    d.mkdir()
    os.chown(d, NOBODY, NOBODY)
    with pytest.raises(UnsafeFileError, match="directory owned by uid"):
        open_safe(str(d / "f"), os.O_WRONLY | os.O_CREAT)
    with pytest.raises(UnsafeFileError, match="directory owned by uid"):
        ensure_private_dir(str(d))
