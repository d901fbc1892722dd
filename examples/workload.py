#!/usr/bin/env python3
"""bpflbr-shell's example workload: real BPF programs to look at on a machine that has none.

Loads two programs and keeps them loaded until SIGTERM/SIGINT:

- ``tc_classify`` (sched_cls) from ``lbrdemo.bpf.c``, compiled with clang into a cache directory
  and loaded through libbpf (several JITed functions: static and global subprograms);
- ``sock_stats`` (socket_filter) from ``sockstat.bcc.c``, compiled and loaded by BCC (one function).

With ``--trigger-ms N`` both programs run every N ms on synthetic packets through
BPF_PROG_TEST_RUN, with run-time stats enabled, so ``run_cnt``/``run_time_ns`` move.

When ready it prints one line on stdout, ``ready ids=ID,ID`` (libbpf program first), then stays
up. Without ``--foreground`` it detaches: the parent prints the ready line and exits 0 once the
daemon has loaded everything (or 1 with its error). Run as root, with the project's venv python
(scripts/bootstrap.sh), e.g.::

    .venv/bin/python examples/workload.py --foreground --trigger-ms 200
    .venv/bin/python examples/workload.py --pidfile /run/lbrdemo.pid   # then kill "$(cat ...)"
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import _libbpf_obj as obj  # noqa: E402

from bpflbr_shell.kernel import libbpf  # noqa: E402
from bpflbr_shell.safefile import UnsafeFileError, ensure_private_dir, open_safe  # noqa: E402

LIBBPF_SRC = HERE / "lbrdemo.bpf.c"
BCC_SRC = HERE / "sockstat.bcc.c"
CFLAGS = ["-target", "bpf", "-O2", "-g", "-Wall", "-Werror",
          "-I/usr/include/x86_64-linux-gnu", "-D__TARGET_ARCH_x86"]
SAMPLE_ONE_IN = 4


def log(msg: str) -> None:
    print(f"workload: {msg}", file=sys.stderr, flush=True)


def default_cache_dir() -> Path:
    base = os.environ.get("BPFLBR_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bpflbr-shell")
    return Path(base) / "examples"


def find_clang(explicit: str | None) -> str:
    for cand in ([explicit] if explicit else ["clang", "clang-14"]):
        path = shutil.which(cand)
        if path:
            return path
    raise SystemExit("workload: clang not found (apt-get install clang); or pass --clang PATH")


def compile_object(src: Path, cache_dir: Path, clang: str) -> Path:
    """clang -target bpf into the cache, keyed by source, flags and compiler version."""
    version = subprocess.run([clang, "--version"], capture_output=True, text=True,
                             check=True).stdout
    key = hashlib.sha256(
        src.read_bytes() + "\0".join(CFLAGS).encode() + version.encode()
        + b"\0debug-prefix-v2").hexdigest()[:16]
    out = cache_dir / f"{src.name.removesuffix('.c')}-{key}.o"
    try:
        # root loads what is cached here: the directory must be ours alone (0700), and a
        # cached object a regular file we own, one link, writable by nobody else
        ensure_private_dir(str(cache_dir))
        if os.path.lexists(out):
            os.close(open_safe(str(out)))
            return out
    except UnsafeFileError as exc:
        raise SystemExit(f"workload: cache: {exc}") from None
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".o.tmp")
    os.close(fd)
    try:
        # Compile from the repo root with the root mapped away, so BTF line info names the
        # file as the repo does (examples/lbrdemo.bpf.c), not by this checkout's path; clang
        # still finds the source lines it records in BTF (relative to its cwd).
        root = src.parent.parent
        proc = subprocess.run(
            [clang, *CFLAGS, f"-fdebug-prefix-map={root}=", "-c",
             str(src.relative_to(root)), "-o", tmp], capture_output=True, text=True, cwd=root)
        if proc.returncode != 0:
            raise SystemExit(f"workload: clang failed on {src}:\n{proc.stderr}")
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    log(f"compiled {src.name} -> {out}")
    return out


# ---- synthetic packets (Ethernet frames) for BPF_PROG_TEST_RUN ------------------------------

def _eth(proto: int) -> bytes:
    return bytes.fromhex("02000000000a" "02000000000b") + struct.pack("!H", proto)


def _ipv4(proto: int, payload: bytes) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
                       bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) + payload


def _ipv6(proto: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), proto, 64,
                       bytes.fromhex("fd00" + "00" * 13 + "01"),
                       bytes.fromhex("fd00" + "00" * 13 + "02")) + payload


def _tcp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x18, 512, 0, 0)


def _udp(sport: int, dport: int, data: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def packets(seq: int) -> list[bytes]:
    """A deterministic mix; source ports vary with ``seq`` so the flow table grows a little."""
    sport = 40000 + seq % 64
    return [
        _eth(0x0800) + _ipv4(6, _tcp(sport, 443)),
        _eth(0x0800) + _ipv4(17, _udp(sport, 53, b"\x12\x34" + b"\0" * 10)),
        _eth(0x0800) + _ipv4(6, _tcp(sport, 80)),
        _eth(0x86DD) + _ipv6(6, _tcp(sport, 22)),
        _eth(0x86DD) + _ipv6(17, _udp(sport, 443, b"\0" * 32)),
        _eth(0x0800) + _ipv4(1, b"\x08\x00\x00\x00\x00\x01\x00\x01"),
        _eth(0x0806) + b"\0" * 28,  # ARP: not IP
        _eth(0x0800) + _ipv4(6, _tcp(sport, 443)[:6]),  # truncated TCP header: dropped
    ]


# ---- the workload -----------------------------------------------------------------------------

class Workload:
    def __init__(self, cache_dir: Path, clang: str | None, use_bcc: bool,
                 pin_dir: str | None) -> None:
        self.cache_dir, self.clang, self.use_bcc, self.pin_dir = cache_dir, clang, use_bcc, pin_dir
        self.bpf_obj: obj.BpfObject | None = None
        self.bcc = None
        self.progs: list[tuple[str, int]] = []  # (name, fd)
        self.pinned: list[str] = []
        self.stats_fd = -1
        self.seq = 0

    def load(self) -> list[int]:
        path = compile_object(LIBBPF_SRC, self.cache_dir, find_clang(self.clang))
        self.bpf_obj = obj.BpfObject(str(path))
        obj.map_update_u32(self.bpf_obj.map_fd("sample_rate"), 0, SAMPLE_ONE_IN)
        self.progs += [(p.name, p.fd) for p in self.bpf_obj.programs()]
        if self.use_bcc:
            try:
                from bcc import BPF  # Debian's python3-bpfcc, seen through the venv
            except ImportError as exc:
                raise SystemExit(
                    f"workload: cannot import bcc ({exc}); run with the project's venv "
                    "(scripts/bootstrap.sh) or pass --no-bcc") from exc
            self.bcc = BPF(src_file=str(BCC_SRC).encode())
            fn = self.bcc.load_func(b"sock_stats", BPF.SOCKET_FILTER)
            self.progs.append(("sock_stats", fn.fd))
        if self.pin_dir:
            os.makedirs(self.pin_dir, exist_ok=True)
            for name, fd in self.progs:
                path = os.path.join(self.pin_dir, name)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # a stale pin from a killed run
                obj.obj_pin(fd, path)
                self.pinned.append(path)
        ids = []
        for name, fd in self.progs:
            info = libbpf.BpfProgInfo()
            libbpf.obj_info(fd, info, f"reading info of {name}")
            ids.append(info.id)
            log(f"loaded {name}: id {info.id}, {info.jited_prog_len} bytes JITed, "
                f"{info.nr_jited_ksyms} function(s)")
        return ids

    def trigger(self) -> None:
        for pkt in packets(self.seq):
            for _name, fd in self.progs:
                obj.test_run(fd, pkt)
        self.seq += 1

    def close(self) -> None:
        for path in self.pinned:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if self.stats_fd >= 0:
            os.close(self.stats_fd)
            self.stats_fd = -1
        if self.bcc is not None:
            self.bcc.cleanup()
            self.bcc = None
        if self.bpf_obj is not None:
            self.bpf_obj.close()
            self.bpf_obj = None


def run(args: argparse.Namespace, announce: Callable[[str], None]) -> int:
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    wl = Workload(args.cache_dir, args.clang, not args.no_bcc, args.pin_dir)
    try:
        ids = wl.load()
        if args.trigger_ms > 0:
            wl.stats_fd = libbpf.enable_stats()
            wl.trigger()
        if args.pidfile:
            try:
                fd = open_safe(args.pidfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            except UnsafeFileError as exc:
                raise SystemExit(f"workload: --pidfile: {exc}") from None
            try:
                os.write(fd, f"{os.getpid()}\n".encode())
            finally:
                os.close(fd)
        announce("ready ids=" + ",".join(map(str, ids)))
        interval = args.trigger_ms / 1000 if args.trigger_ms > 0 else None
        while not stop.wait(interval):
            wl.trigger()
        log("stopping")
        return 0
    finally:
        wl.close()
        if args.pidfile:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(args.pidfile)


def daemonize(args: argparse.Namespace) -> int:
    """Fork a detached child that runs the workload; relay its ready line or its failure."""
    logfd = -1
    if args.log:  # opened here, so a refused log file fails the start, not the daemon
        try:
            logfd = open_safe(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except (UnsafeFileError, OSError) as exc:
            print(f"workload: --log: {exc}", file=sys.stderr)
            return 1
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        if logfd >= 0:
            os.dup2(logfd, 2)
            os.close(logfd)
        else:
            os.dup2(devnull, 2)
        os.close(devnull)
        status = 1
        try:
            def announce(line: str) -> None:
                os.write(wfd, (line + "\n").encode())
                os.close(wfd)
            status = run(args, announce)
        except SystemExit as exc:
            print(exc, file=sys.stderr)
        except BaseException as exc:  # noqa: BLE001 - report anything, the parent is waiting
            print(f"workload: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            os._exit(status)
    os.close(wfd)
    if logfd >= 0:
        os.close(logfd)
    with os.fdopen(rfd) as r:
        line = r.readline().strip()
    if line.startswith("ready "):
        print(line, flush=True)
        return 0
    _, status = os.waitpid(pid, 0)
    hint = f" (see {args.log})" if args.log else " (run with --foreground or --log FILE)"
    print(f"workload: failed to start, exit status {os.waitstatus_to_exitcode(status)}{hint}",
          file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--foreground", action="store_true",
                    help="stay attached to the terminal (default: detach once ready)")
    ap.add_argument("--pidfile", help="write the workload's pid here (removed at exit)")
    ap.add_argument("--trigger-ms", type=int, default=0, metavar="N",
                    help="run the programs on synthetic packets every N ms (0: never)")
    ap.add_argument("--no-bcc", action="store_true", help="load only the libbpf program")
    ap.add_argument("--pin-dir", help="also pin the programs in this bpffs directory")
    ap.add_argument("--cache-dir", type=Path, default=default_cache_dir(),
                    help="where compiled objects go (default: %(default)s)")
    ap.add_argument("--clang", help="clang binary (default: clang, then clang-14)")
    ap.add_argument("--log", help="detached mode: append the daemon's stderr to this file")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("workload: must run as root (loading BPF programs needs CAP_SYS_ADMIN)",
              file=sys.stderr)
        return 1
    if args.foreground:
        return run(args, lambda line: print(line, flush=True))
    return daemonize(args)


if __name__ == "__main__":
    sys.exit(main())
