"""Unit (no root): struct members in filters, typed by this kernel's own BTF
(/sys/kernel/btf/vmlinux, parsed by kernel/btf.py), against gcc as the oracle: the C our
generator makes for ``skb->len``, ``file->f_path.dentry``, bitfields and members of anonymous
unions reads, from a buffer of random bytes, exactly the value that gcc's own member access
reads through the C header bpftool dumps from the same BTF. Errors name the member."""

from __future__ import annotations

import os
import random
import shutil
import subprocess

import pytest

from bpflbr_shell.kernel.btf import Btf
from bpflbr_shell.trace.filter import FilterError, Scope, _Kernel, parse, split_for_kernel

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
# (function, its pointer parameter's struct, member paths as C writes them)
CASES = [
    ("vfs_read", "file", "file", ["f_flags", "f_mode", "f_path.dentry", "f_path.mnt", "f_inode",
                                  "f_pos", "f_op"]),
    ("__kfree_skb", "sk_buff", "skb", ["len", "data_len", "pkt_type", "cloned", "ip_summed",
                                       "protocol", "dev", "sk", "tstamp", "mark", "head",
                                       "queue_mapping", "nohdr"]),
    ("tcp_sendmsg", "sock", "sk", ["sk_protocol", "sk_type", "__sk_common.skc_family",
                                   "__sk_common.skc_dport", "sk_rcvbuf"]),
]


@pytest.fixture(scope="module")
def vmlinux() -> Btf:
    if not os.path.exists(VMLINUX_BTF):
        pytest.skip("needs kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)")
    with open(VMLINUX_BTF, "rb") as f:
        return Btf.parse(f.read())


def scope_of(btf: Btf, func: str) -> Scope:
    type_id = btf.func_id(func)
    assert type_id, func
    sig = btf.func_signature(type_id)
    return Scope(prototype=lambda: sig, event_signature=lambda e: sig)


def test_member_reads_match_gcc(vmlinux: Btf, tmp_path) -> None:
    gcc, bpftool = shutil.which("gcc"), shutil.which("bpftool")
    if gcc is None or bpftool is None:
        pytest.skip("needs gcc and bpftool (the oracle: bpftool's C header of this BTF)")
    header = tmp_path / "vmlinux.h"
    with open(header, "wb") as out:
        subprocess.run([bpftool, "btf", "dump", "file", VMLINUX_BTF, "format", "c"],
                       stdout=out, check=True)
    rng = random.Random(3)
    lines = ["#define BPF_NO_PRESERVE_ACCESS_INDEX", '#include "vmlinux.h"',
             "int printf(const char *, ...);",
             "static u64 bpflbr_rd(u64 ptr, u64 off, u64 n) { u64 v = 0; if (!ptr) return 0;",
             "  __builtin_memcpy(&v, (char *)ptr + off, n); return v; }",
             "static unsigned char buf[65536];",
             "int main(void) {",
             f"  for (int i = 0; i < (int)sizeof(buf); i++) buf[i] = (i * {rng.randrange(1, 255)}"
             f" + {rng.randrange(255)}) ^ (i >> 3);"]
    checked = []
    for func, struct, param, paths in CASES:
        gen = _Kernel(scope_of(vmlinux, func), "")
        index = [n for n, _ in vmlinux.func_signature(vmlinux.func_id(func)).params].index(param)
        for path in paths:
            ours = gen.value(parse(f"{param}->{path}")).code
            for base in ("(u64)buf", "(u64)(buf + 333)", "0"):
                native = (f"(long long)(((struct {struct} *){base})->{path})" if base != "0"
                          else "0LL")  # a NULL pointer reads as 0
                lines.append(f"  {{ s64 a{index} = {base}; printf(\"%lld %lld\\n\", "
                             f"(long long)({ours}), {native}); }}")
                checked.append(f"{func}: {param}->{path} at {base}")
    lines.append("  return 0; }")
    src, exe = tmp_path / "m.c", tmp_path / "m"
    src.write_text("\n".join(lines) + "\n")
    subprocess.run([gcc, "-O0", "-w", "-o", str(exe), str(src), f"-I{tmp_path}"], check=True,
                   capture_output=True)
    rows = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    rows_list = rows.splitlines()
    assert len(rows_list) == len(checked)
    for what, row in zip(checked, rows_list, strict=True):
        ours, native = row.split()
        assert ours == native, what
    # the buffer is not all zeros where we read: the comparison means something
    assert sum(row.split()[0] != "0" for row in rows_list) > len(rows_list) // 2


def test_member_errors_name_the_member(vmlinux: Btf) -> None:
    scope = scope_of(vmlinux, "__kfree_skb")
    with pytest.raises(FilterError, match="struct sk_buff has no member lne") as err:
        split_for_kernel("skb->lne > 1500", scope)
    assert err.value.column == len("skb->") and err.value.fix == "did you mean len?"
    with pytest.raises(FilterError, match="is a struct"):
        split_for_kernel("skb->dev->dev == 1", scope)  # struct device, held by value
    with pytest.raises(FilterError, match="not a pointer to a struct"):
        split_for_kernel("skb->len->x == 1", scope)
    with pytest.raises(FilterError, match="read in the kernel only"):
        split_for_kernel("skb->len > 1 || lbr has 'tcp_*'", scope)
    scope = scope_of(vmlinux, "vfs_read")
    with pytest.raises(FilterError, match="has no type here"):
        split_for_kernel("arg5->x == 1", scope)


def test_member_terms_go_to_the_kernel(vmlinux: Btf) -> None:
    from bpflbr_shell.trace.probes.bccprog import check_filter_expr

    scope = scope_of(vmlinux, "vfs_read")
    c, rest = split_for_kernel("file->f_flags & 0x800 && count > 4096 && lbr has 'ext4_*'",
                               scope)
    assert c is not None and "bpflbr_rd" in c and rest == "(lbr has 'ext4_*')"
    check_filter_expr(c)  # our tokens only
    c, rest = split_for_kernel("file->f_path.dentry->d_name.name == 'passw*'", scope)
    assert c is not None and "bpflbr_strw" in c and rest is None
    check_filter_expr(c)
