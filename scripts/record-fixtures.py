#!/usr/bin/env python3
"""Record unit-test fixtures from this machine's real kernel (run as root).

Starts the example workload (examples/workload.py), and for each of its programs writes
``tests/fixtures/progs/<func name>.json``::

    {"raw": RawProgInfo.to_json(), "bpftool_show": <bpftool prog show id N --json>,
     "bpftool_xlated_linum": <bpftool prog dump xlated id N linum>, "loader": "libbpf"|"bcc",
     "kernel_release": <uname -r>, "recorded_at": <UTC ISO 8601>}

plus ``tests/fixtures/kallsyms-progs.txt``: the /proc/kallsyms lines (sorted by address, then
name) of every symbol the programs' JIT images call or jump to (helpers, map ops, thunks,
subprograms), the programs' own ``[bpf]`` symbols, a few anchors (``_text``, ``_stext``,
``_etext``, the map helpers), and for each of these the symbol(s) at the next address, so a
reader can tell where each one ends.

Re-running replaces the same files (keys sorted, stable order); ids and addresses change with
every load, which is the point: they are real. usage: scripts/record-fixtures.py [--out DIR]
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_PY = REPO / ".venv" / "bin" / "python"

if sys.prefix == sys.base_prefix and VENV_PY.exists() and os.environ.get("BPFLBR_REEXEC") != "1":
    # capstone and bcc live in the project's venv (scripts/bootstrap.sh)
    os.environ["BPFLBR_REEXEC"] = "1"
    os.execv(str(VENV_PY), [str(VENV_PY), *sys.argv])

sys.path.insert(0, str(REPO))

import capstone  # noqa: E402

from bpflbr_shell.kernel.progs import decode_prog_info, read_raw_prog_info  # noqa: E402

ANCHORS = ("_text", "_stext", "_etext", "bpf_map_lookup_elem", "bpf_map_update_elem",
           "bpf_map_delete_elem", "bpf_get_prandom_u32", "bpf_ktime_get_ns",
           "bpf_skb_load_bytes")


def log(msg: str) -> None:
    print(f"record-fixtures: {msg}", file=sys.stderr, flush=True)


def start_workload() -> tuple[subprocess.Popen[str], list[int]]:
    cmd = [sys.executable, str(REPO / "examples" / "workload.py"), "--foreground",
           "--trigger-ms", "20"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.fullmatch(r"ready ids=([\d,]+)\n?", line)
    if not m:
        proc.kill()
        proc.wait()
        raise SystemExit(f"record-fixtures: workload did not start (got {line!r})")
    time.sleep(0.3)  # let the trigger loop run a few times, so run_cnt is not 0
    return proc, [int(x) for x in m.group(1).split(",")]


def stop_workload(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"record-fixtures: workload exited with {proc.returncode}")


def branch_targets(image: bytes, ksyms: list[int], lens: list[int]) -> set[int]:
    """Absolute targets of direct calls/jumps in a JIT image (functions laid out in order)."""
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    out: set[int] = set()
    off = 0
    for addr, size in zip(ksyms, lens, strict=True):
        for insn in md.disasm(image[off:off + size], addr):
            if not (insn.group(capstone.CS_GRP_CALL) or insn.group(capstone.CS_GRP_JUMP)):
                continue
            for op in insn.operands:
                if op.type == capstone.x86.X86_OP_IMM:
                    out.add(op.imm & 0xFFFF_FFFF_FFFF_FFFF)
        off += size
    return out


class Kallsyms:
    def __init__(self, text: str) -> None:
        rows = []
        for line in text.splitlines():
            parts = line.split(None, 3)
            if len(parts) < 3:
                continue
            rows.append((int(parts[0], 16), parts[2], line))
        rows.sort()
        self.rows = rows
        self.addrs = [r[0] for r in rows]

    def at(self, addr: int) -> list[str]:
        i = bisect.bisect_left(self.addrs, addr)
        return [r[2] for r in self.rows[i:bisect.bisect_right(self.addrs, addr)]]

    def around(self, addr: int) -> list[str]:
        """The symbol(s) containing ``addr`` and the symbol(s) at the next address."""
        i = bisect.bisect_right(self.addrs, addr) - 1
        if i < 0:
            return []
        start = self.addrs[i]
        j = bisect.bisect_right(self.addrs, start)
        nxt = self.addrs[j] if j < len(self.addrs) else None
        lines = self.at(start)
        if nxt is not None:
            lines += self.at(nxt)
        return lines

    def by_name(self, name: str) -> list[int]:
        return [a for a, n, _ in self.rows if n == name]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures",
                    help="fixtures directory (default: %(default)s)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        log("must run as root (bpf(2), real addresses in /proc/kallsyms)")
        return 1
    for tool in ("bpftool",):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            log(f"{tool} not found (scripts/bootstrap.sh installs it)")
            return 1

    proc, ids = start_workload()
    records: list[tuple[str, dict]] = []
    targets: set[int] = set()
    own: set[int] = set()
    try:
        kallsyms_text = Path("/proc/kallsyms").read_text()
        release = platform.release()
        now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
        for index, prog_id in enumerate(ids):
            raw = read_raw_prog_info(prog_id)
            info = decode_prog_info(raw)  # also checks the kernel's 1:1 promises
            show = json.loads(subprocess.run(
                ["bpftool", "prog", "show", "id", str(prog_id), "--json"],
                capture_output=True, text=True, check=True).stdout)
            linum = subprocess.run(
                ["bpftool", "prog", "dump", "xlated", "id", str(prog_id), "linum"],
                capture_output=True, text=True, check=True).stdout
            records.append((info.func_name, {
                "raw": raw.to_json(),
                "bpftool_show": show,
                "bpftool_xlated_linum": linum,
                "loader": "libbpf" if index == 0 else "bcc",
                "kernel_release": release,
                "recorded_at": now,
            }))
            targets |= branch_targets(raw.jited_image, raw.jited_ksyms, raw.jited_func_lens)
            own |= set(raw.jited_ksyms)
            log(f"prog {prog_id} {info.func_name}: {len(info.subprogs)} function(s), "
                f"{raw.jited_prog_len} bytes JITed, {len(raw.line_info)} line records")
    finally:
        stop_workload(proc)

    ks = Kallsyms(kallsyms_text)
    missing = sorted(a for a in own if not ks.at(a))
    if missing:
        log("WARNING: prog symbols not in /proc/kallsyms: " + ", ".join(map(hex, missing)))
    lines: set[str] = set()
    for addr in targets | own:
        lines.update(ks.around(addr))
    for name in ANCHORS:
        for addr in ks.by_name(name):
            lines.update(ks.around(addr))
    slice_rows = sorted(lines, key=lambda line: (int(line.split()[0], 16), line.split()[2], line))

    progs_dir = args.out / "progs"
    progs_dir.mkdir(parents=True, exist_ok=True)
    for name, rec in records:
        path = progs_dir / f"{name}.json"
        path.write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
        log(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    ks_path = args.out / "kallsyms-progs.txt"
    ks_path.write_text("".join(line + "\n" for line in slice_rows))
    log(f"wrote {ks_path} ({len(slice_rows)} symbols for {len(targets)} branch targets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
