#!/usr/bin/env python3
"""Record tests/fixtures/kallsyms-slice.txt from the running kernel's /proc/kallsyms.

Unit tests need real kallsyms text without root, so this copies verbatim lines (file order kept)
of the parts whose rules the index must get right: the start of vmlinux text (a same-address
group with _stext, section end markers followed by padding), a contiguous run of ordinary text
symbols, the end of text (_etext followed by data symbols), init text, statics whose name repeats,
module symbols and [bpf] symbols (it loads three small BCC socket filters so [bpf] lines exist,
beside whatever else is loaded, and writes their raw prog info to
tests/fixtures/symbols-progs.json). Needs root (addresses are zero otherwise).

usage: .venv/bin/python scripts/record_kallsyms_fixture.py [--out FILE] [--no-bpf]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "tests" / "fixtures" / "kallsyms-slice.txt"
CENTER = "bpf_get_branch_snapshot"  # the slice of ordinary text is taken around this symbol
SLICE = 2500

PROGS_OUT = REPO / "tests" / "fixtures" / "symbols-progs.json"
BPF_FUNCS = ("sf_one", "sf_two", "sf_three")
BPF_TEXT = r"""
int sf_one(struct __sk_buff *skb)
{
    int k = skb->len;
    int v = k * 3;
    if (v > 1000)
        v -= 7;
    return v > 10 ? -1 : 0;
}
int sf_two(struct __sk_buff *skb)
{
    u32 proto = skb->protocol;
    return proto == 8 ? -1 : 0;
}
int sf_three(struct __sk_buff *skb) { return 0; }
"""


def load_bpf() -> tuple[object, list[dict]] | None:
    """Load three socket filters so the kernel lists [bpf] symbols, and read their prog info
    (raw, JSON) so symbolizer tests get matching real records; None without BCC."""
    try:
        from bcc import BPF  # Debian's python3-bpfcc, visible through --system-site-packages
    except ImportError:
        print("record: bcc not importable; no [bpf] lines", file=sys.stderr)
        return None
    sys.path.insert(0, str(REPO))
    from bpflbr_shell.kernel.progs import read_raw_prog_info_fd

    b = BPF(text=BPF_TEXT)
    raws = []
    for name in BPF_FUNCS:
        fn = b.load_func(name, BPF.SOCKET_FILTER)
        raws.append(read_raw_prog_info_fd(fn.fd).to_json())
    return b, raws  # keep b alive until kallsyms has been read


def select(lines: list[str]) -> list[int]:
    """Indexes (file order) of the lines worth keeping."""
    fields = [ln.split() for ln in lines]
    names = [f[2] for f in fields]
    module = [f[3] if len(f) > 3 else None for f in fields]
    pick: set[int] = set(range(min(120, len(lines))))

    def around(name: str, before: int, after: int) -> None:
        if name in names:
            i = names.index(name)
            pick.update(range(max(0, i - before), min(len(lines), i + after + 1)))

    around(CENTER, SLICE // 2, SLICE // 2)
    around("_etext", 40, 12)
    around("_sinittext", 3, 30)
    around("_einittext", 30, 12)
    text = [i for i, f in enumerate(fields) if f[1] in "tTwW" and module[i] is None]
    count = collections.Counter(names[i] for i in text)
    repeated = sorted(n for n, c in count.items() if c > 1 and not n.startswith("__pfx_"))
    for n in repeated[:: max(1, len(repeated) // 8)][:8]:
        pick.update(i for i in text if names[i] == n)
    mods = [i for i, m in enumerate(module) if m and m != "[bpf]"]
    pick.update(mods[:200])
    pick.update(i for i, m in enumerate(module) if m == "[bpf]")
    return sorted(pick)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--no-bpf", action="store_true", help="do not load BCC socket filters")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("record: must run as root (kallsyms addresses are hidden otherwise)", file=sys.stderr)
        return 1
    loaded = None if args.no_bpf else load_bpf()
    with open("/proc/kallsyms") as f:
        lines = f.read().splitlines()
    if loaded is not None:
        PROGS_OUT.write_text(json.dumps(loaded[1], indent=1) + "\n")
        print(f"record: wrote {len(loaded[1])} prog infos to {PROGS_OUT}")
    del loaded
    idx = select(lines)
    header = [
        f"# recorded from /proc/kallsyms of {os.uname().release} on "
        f"{datetime.date.today().isoformat()} by scripts/record_kallsyms_fixture.py",
        f"# {len(idx)} of {len(lines)} lines, verbatim, file order kept",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(header + [lines[i] for i in idx]) + "\n")
    print(f"record: wrote {len(idx)} lines to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
