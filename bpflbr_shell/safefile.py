"""Opening files as root without being steered by whoever else can write nearby.

The shell runs as root and writes its history, caches and logs, and loads cached objects.
Anyone who can write a directory on the way can plant a symlink (``fs.protected_symlinks=0``
makes root follow it), a hard link to a victim file, or a file of their own holding what root
will load. The rules, checked on the opened fd (not on a path that can change under us):

- the last component is never followed (``O_NOFOLLOW``) and must be a regular file;
- the file is owned by the user running us, has one link, and nobody else can write it;
- its directory is owned by us or root and writable by nobody else (unless sticky, as /tmp).

Violations raise :class:`UnsafeFileError`, one line naming the file and what is wrong.
"""

from __future__ import annotations

import errno
import os
import stat

from bpflbr_shell.errors import UserError


class UnsafeFileError(UserError):
    """A file or directory another user could have planted or can change."""


def _refuse(path: str, why: str) -> UnsafeFileError:
    return UnsafeFileError(f"refusing {path!r}: {why}",
                           "remove it or choose another path")


def check_dir(path: str, uid: int | None = None) -> None:
    """``path`` is a directory only ``uid`` (or root) can change: owner ``uid`` or root, and
    not group/world-writable unless sticky (a sticky /tmp is fine: others cannot replace our
    entries there, and the file checks catch what they plant)."""
    uid = os.geteuid() if uid is None else uid
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UnsafeFileError(f"cannot use directory {path!r}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(path, "not a directory")
    if st.st_uid not in (uid, 0):
        raise _refuse(path, f"directory owned by uid {st.st_uid}, not {uid}")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise _refuse(path, f"directory writable by others (mode {stat.S_IMODE(st.st_mode):o})")


def ensure_private_dir(path: str, mode: int = 0o700, uid: int | None = None, *,
                       narrow: bool = True) -> None:
    """Create ``path`` (and missing parents) with ``mode``; an existing one must be a real
    directory (not a symlink) owned by ``uid``; a wider mode is narrowed (``narrow``) or
    refused (a directory whose entries we load: someone may have written there already)."""
    uid = os.geteuid() if uid is None else uid
    os.makedirs(path, mode=mode, exist_ok=True)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(path, "the directory is a symlink")
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(path, "not a directory")
    if st.st_uid != uid:
        raise _refuse(path, f"directory owned by uid {st.st_uid}, not {uid}")
    if stat.S_IMODE(st.st_mode) & ~mode:
        if not narrow and st.st_mode & 0o022:
            raise _refuse(path, f"directory writable by others "
                                f"(mode {stat.S_IMODE(st.st_mode):o})")
        os.chmod(path, stat.S_IMODE(st.st_mode) & mode, follow_symlinks=False)
    check_dir(os.path.dirname(os.path.abspath(path)) or "/", uid)


def check_fd(fd: int, path: str, uid: int | None = None, *, narrow_to: int | None = None) -> None:
    """The opened file is ours alone: regular, owned by ``uid``, one link, not writable by
    group/others. ``narrow_to`` narrows a wider mode instead of refusing (our own files)."""
    uid = os.geteuid() if uid is None else uid
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(path, "not a regular file")
    if st.st_uid != uid:
        raise _refuse(path, f"owned by uid {st.st_uid}, not {uid}")
    if st.st_nlink != 1:
        raise _refuse(path, f"it has {st.st_nlink} hard links")
    mode = stat.S_IMODE(st.st_mode)
    if narrow_to is not None and mode & ~narrow_to:
        os.fchmod(fd, mode & narrow_to)
    elif mode & 0o022:
        raise _refuse(path, f"writable by others (mode {mode:o})")


def open_safe(path: str, flags: int = os.O_RDONLY, mode: int = 0o600, uid: int | None = None,
              *, narrow: bool = True) -> int:
    """``os.open`` with the rules above; returns the fd. With ``O_CREAT`` a new file gets
    ``mode`` and, when ``narrow``, an existing wider one is narrowed to it. ``O_TRUNC`` is
    applied only after the checks (a hard link to a victim must not be emptied first)."""
    uid = os.geteuid() if uid is None else uid
    check_dir(os.path.dirname(os.path.abspath(path)) or "/", uid)
    truncate = flags & os.O_TRUNC
    try:
        fd = os.open(path, (flags & ~os.O_TRUNC) | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY,
                     mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(path, "it is a symlink") from None
        raise
    try:
        check_fd(fd, path, uid, narrow_to=mode if flags & os.O_CREAT and narrow else None)
        if truncate:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_safe(path: str, limit: int, uid: int | None = None) -> bytes:
    """The whole file opened with :func:`open_safe`; more than ``limit`` bytes is refused
    (a cache entry or script that large is not ours)."""
    fd = open_safe(path, os.O_RDONLY, uid=uid)
    try:
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise _refuse(path, f"larger than {limit} bytes")
    finally:
        os.close(fd)


def trusted_owners() -> frozenset[int]:
    """Who may own files the shell runs (scripts, the init file, extensions): root, the real
    user and, under sudo, the user who ran sudo (``SUDO_UID``, set by sudo for root's
    child; an invoker's own script must not need chown to root first)."""
    owners = {0, os.getuid(), os.geteuid()}
    sudo_uid = os.environ.get("SUDO_UID", "")
    if os.geteuid() == 0 and sudo_uid.isdigit():
        owners.add(int(sudo_uid))
    return frozenset(owners)


def read_trusted(path: str, limit: int, what: str = "file") -> bytes:
    """A file whose contents the shell runs: not a symlink, regular, one link, owned by one
    of :func:`trusted_owners` and writable by nobody else, in a directory with the same
    owners and not writable by others unless sticky. Root executing what another user could
    edit would run that user's code as root. Reads at most ``limit + 1`` bytes: more than
    ``limit`` tells the caller the file is too large to be what it claims."""
    owners = trusted_owners()
    directory = os.path.dirname(os.path.abspath(path)) or "/"
    st = os.stat(directory)  # OSError (no such directory) is the caller's to say
    if st.st_uid not in owners:
        raise _refuse(path, f"its directory is owned by uid {st.st_uid}")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise _refuse(path, f"its directory is writable by others "
                            f"(mode {stat.S_IMODE(st.st_mode):o})")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
                     | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(path, f"the {what} is a symlink") from None
        raise
    try:
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode):
            raise _refuse(path, f"the {what} is not a regular file")
        if fst.st_uid not in owners:
            raise _refuse(path, f"the {what} is owned by uid {fst.st_uid}, "
                                "not by you or root")
        if fst.st_nlink != 1:
            raise _refuse(path, f"the {what} has {fst.st_nlink} hard links")
        if fst.st_mode & 0o022:
            raise _refuse(path, f"the {what} is writable by others "
                                f"(mode {stat.S_IMODE(fst.st_mode):o})")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
