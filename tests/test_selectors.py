"""Selector parsing and matching (pure logic: no root, no kernel)."""

from __future__ import annotations

import pytest

from bpflbr_shell.errors import NotFoundError, SelectorError
from bpflbr_shell.kernel.model import ProgInfo, SubProg
from bpflbr_shell.kernel.selectors import (
    parse_selector,
    prog_ids_held_by,
    select_progs,
)


def prog(pid: int, name: str, tag: str, funcs: tuple[str, ...] = ()) -> ProgInfo:
    subprogs = [SubProg(i, f, f"bpf_prog_{tag}_{f}", 0, 0, 0, 0, None)
                for i, f in enumerate(funcs or (name,))]
    return ProgInfo(
        id=pid, type=1, type_name="socket_filter", name=name[:15], func_name=subprogs[0].name,
        tag=tag, load_time_ns=0, load_time_epoch=0.0, uid=0, xlated_len=0, jited_len=0,
        map_ids=[], btf_id=0, gpl=True, run_cnt=0, run_time_ns=0, recursion_misses=0,
        verified_insns=0, attach_btf_obj_id=0, attach_btf_id=0, subprogs=subprogs,
        jited_image=b"",
    )


PROGS = [
    prog(7, "tracepoint__sys", "00112233aabbccdd", ("tracepoint__syscalls__sys_enter_getpid",)),
    prog(3, "classify", "deadbeef00000001", ("classify", "parse_ipv4", "parse_ipv6")),
    prog(12, "xdp_drop", "deadbeef00000002"),
]


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("42", "id", 42), ("id:42", "id", 42), ("i:7", "id", 7), ("*", "all", "*"),
        ("name:cls*", "name", "cls*"), ("n:x", "name", "x"), ("tag:DEADBEEF", "tag", "deadbeef"),
        ("t:00ff", "tag", "00ff"), ("pinned:/sys/fs/bpf/x", "pinned", "/sys/fs/bpf/x"),
        ("p:/sys/fs/bpf/a:b", "pinned", "/sys/fs/bpf/a:b"), ("pid:1", "pid", 1),
        ("tc_*", "name", "tc_*"), ("  12 ", "id", 12),
    ],
)
def test_parse(text: str, kind: str, value: object) -> None:
    sel = parse_selector(text)
    assert (sel.kind, sel.value) == (kind, value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [("", "empty"), ("id:", "nothing after"), ("id:x", "not a number"), ("pid:-1", "not a number"),
     ("tag:xyz", "hex"), ("tag:00112233aabbccdd00", "hex"), ("foo:bar", "unknown selector kind")],
)
def test_parse_errors_name_the_problem(text: str, needle: str) -> None:
    with pytest.raises(SelectorError) as exc:
        parse_selector(text)
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


def ids(text: str, **kw: object) -> list[int]:
    return [p.id for p in select_progs(parse_selector(text), PROGS, **kw)]  # type: ignore[arg-type]


def test_match_kinds() -> None:
    assert ids("*") == [3, 7, 12]
    assert ids("3") == [3]
    assert ids("99") == []
    assert ids("tag:deadbeef") == [3, 12]
    assert ids("tag:deadbeef00000002") == [12]
    assert ids("xdp*") == [12]
    # the kernel truncates names to 15 chars; BTF names match in full
    assert ids("name:tracepoint__syscalls__sys_enter_getpid") == [7]
    # any subprogram's name selects its program
    assert ids("parse_ipv6") == [3]
    assert ids("name:parse_*") == [3]


def test_pinned_and_pid_use_resolvers() -> None:
    assert ids("pinned:/x", pinned_id=lambda path: 12) == [12]
    assert ids("pid:55", pid_prog_ids=lambda pid: {3, 7} if pid == 55 else set()) == [3, 7]
    with pytest.raises(SelectorError):
        ids("pid:55")


def test_prog_ids_held_by_reads_fdinfo(tmp_path) -> None:
    fdinfo = tmp_path / "77" / "fdinfo"
    fdinfo.mkdir(parents=True)
    (fdinfo / "3").write_text("pos:\t0\nflags:\t02000002\nprog_type:\t1\nprog_id:\t15\n")
    (fdinfo / "4").write_text("pos:\t0\nflags:\t02\n")  # not a bpf fd
    (fdinfo / "5").write_text("link_type:\tperf\nlink_id:\t2\nprog_tag:\tab\nprog_id:\t16\n")
    assert prog_ids_held_by(77, proc=str(tmp_path)) == {15, 16}
    with pytest.raises(NotFoundError):
        prog_ids_held_by(78, proc=str(tmp_path))
