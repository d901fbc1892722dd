"""Unit: the filter language (trace/filter.py). Hypothesis: no text crashes the parser (a
Filter or one FilterError/UsageError), and printing an AST and parsing the print gives the same
AST. Semantics on events built as the decoder builds them, with Python's own operators and
fnmatch as the oracle."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpflbr_shell.errors import UsageError
from bpflbr_shell.kernel.values import Signature, ValueType
from bpflbr_shell.trace.events import CapturedStr, Event
from bpflbr_shell.trace.filter import (
    Binary,
    Dur,
    FilterError,
    LbrHas,
    Name,
    Num,
    Scope,
    Str,
    Unary,
    bind,
    parse,
    unparse,
)

NAMES = ["pid", "tid", "cpu", "comm", "retval", "duration", "errors", "arg0", "arg5", "count"]
OPS = ["==", "!=", "<", "<=", ">", ">=", "&&", "||", "&", "|", "^", "<<", ">>", "+", "-"]


def ast_nodes() -> st.SearchStrategy:
    leaves = st.one_of(
        st.integers(min_value=0, max_value=1 << 64).map(Num),
        st.sampled_from(["ns", "us", "ms", "s"]).flatmap(
            lambda u: st.integers(0, 10**6).map(lambda n, u=u: Dur(n * {"ns": 1, "us": 1000,
                                                                       "ms": 10**6,
                                                                       "s": 10**9}[u], u))),
        st.text(alphabet="ab*?' \\\"", max_size=6).map(Str),
        st.sampled_from(NAMES).map(Name),
        st.builds(LbrHas, st.text(alphabet="ab_*", min_size=1, max_size=5), st.booleans()),
    )
    return st.recursive(leaves, lambda kids: st.one_of(
        st.builds(Unary, st.sampled_from(["!", "-", "~"]), kids),
        st.builds(Binary, st.sampled_from(OPS), kids, kids)), max_leaves=12)


@settings(max_examples=500, deadline=None)
@given(ast_nodes())
def test_print_then_parse_gives_the_same_ast(node) -> None:
    assert parse(unparse(node)) == node


@settings(max_examples=600, deadline=None)
@given(st.text(alphabet="pidcomretvalsu0123456789x'\" ()!&|=<>-~^+*_has lbr\\\t\x00é",
               max_size=80))
def test_no_text_crashes_the_parser(text: str) -> None:
    try:
        bind(text, Scope())
    except UsageError as exc:
        assert "\n" not in str(exc)
        if isinstance(exc, FilterError):
            assert 0 <= exc.column <= len(text)


def test_deep_nesting_and_long_text_are_one_clear_line() -> None:
    with pytest.raises(FilterError, match="nested more than"):
        parse("(" * 500 + "1" + ")" * 500)
    with pytest.raises(FilterError, match="nested more than"):
        parse("!" * 500 + "1")
    with pytest.raises(UsageError, match="too long"):
        parse("pid == 1 && " * 200 + "1")


def event(**kw) -> Event:
    base = dict(probe="uretprobe", kind="exit", ts_ns=1, pid=100, tid=101, cpu=1,
                comm="bash", func_ip=0x1000, args=[1, 2, 3, 4, 5, 6], retval=0,
                duration_ns=1500, lbr_ret=-2)
    base.update(kw)
    return Event(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("expr", "want"), [
    ("pid == 100", True), ("pid != 100", False), ("tid > 100 && cpu == 1", True),
    ("comm == 'ba*'", True), ("comm == 'zsh'", False), ("comm != 'b?sh'", False),
    ("duration > 1us", True), ("duration >= 2us", False), ("duration < 0x600ns", True),
    ("arg2 == 3 && arg5 == 6", True), ("arg0 | arg1 == 3", True), ("1 << 4 == 16", True),
    ("!(pid == 100) || arg3 == 4", True), ("-1 < 0", True), ("~0 & 0xff == 255", True),
    ("0b101 == 5 && 0o17 == 15 && 010 == 10", True),
])
def test_semantics(expr: str, want: bool) -> None:
    assert bind(expr, Scope()).accepts(event()) is want


def test_retval_and_errors_take_the_prototype() -> None:
    """A failed open() returns int -1: the register holds 0xffffffff; typed by the prototype
    it is -1, an error. NULL from a pointer function is an error too."""
    int_sig = Signature((("path", ValueType(8, pointer=True, string=True)),),
                        ValueType(4, signed=True))
    ptr_sig = Signature((), ValueType(8, pointer=True))
    typed = Scope(prototype=lambda: int_sig, event_signature=lambda e: int_sig)
    failed = event(retval=0xFFFFFFFF)
    assert bind("retval == -1", typed).accepts(failed)
    assert bind("errors", typed).accepts(failed)
    assert not bind("errors", typed).accepts(event(retval=3))
    assert not bind("retval == -1", Scope()).accepts(failed)  # untyped: a 64-bit register
    pointer = Scope(prototype=lambda: ptr_sig, event_signature=lambda e: ptr_sig)
    assert bind("errors", pointer).accepts(event(retval=0))
    assert not bind("errors", typed).accepts(event(retval=0))  # int 0: success
    assert bind("errors", typed).accepts(event(retval=(1 << 64) - 4095))
    assert not bind("errors", typed).accepts(event(retval=(1 << 32) - 4096))


def test_names_from_the_prototype_and_strings() -> None:
    sig = Signature((("fd", ValueType(4, signed=True)), ("buf", ValueType(8, pointer=True)),
                     ("count", ValueType(8))), ValueType(8, signed=True))
    scope = Scope(prototype=lambda: sig, event_signature=lambda e: sig)
    assert bind("count > 2 && fd == 1", scope).accepts(event())
    with pytest.raises(FilterError, match="did you mean count") as err:
        bind("cont > 2", scope)
    assert err.value.column == 0 and err.value.caret == ("cont > 2", 0)
    with pytest.raises(FilterError, match="use arg0..arg5"):
        bind("zzz == 1", Scope())
    s = event(strings=((0, CapturedStr(5, b"/tmp")),))
    assert bind("arg0 == '/t*'", Scope()).accepts(s)
    assert not bind("arg0 == '/etc*'", Scope()).accepts(s)


def test_entry_events_have_no_return_value() -> None:
    entries = Scope(has_retval=False)
    for expr in ("retval < 0", "errors", "duration > 1ms"):
        with pytest.raises(FilterError, match="entr"):
            bind(expr, entries)


def test_errors_point_at_the_column() -> None:
    for text, column in [("pid ==", 6), ("pid = 3", 4), ("(pid == 1", 9), ("pid == 1 1", 9),
                         ("comm == 'a", 8), ("lbr has", 7), ("a->3", 3)]:
        with pytest.raises(FilterError) as err:
            bind(text, Scope())
        assert err.value.column == column, (text, err.value)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abc*?[]_", max_size=6), st.text(alphabet="abc_", max_size=8))
def test_comm_globs_are_fnmatch(glob: str, comm: str) -> None:
    try:
        f = bind(f"comm == {unparse(Str(glob))}", Scope())
    except UsageError:
        return
    assert f.accepts(event(comm=comm)) == fnmatch.fnmatchcase(comm, glob)


HARNESS = """#include <stdio.h>
#include <stdint.h>
#include <string.h>
typedef int8_t s8; typedef int16_t s16; typedef int32_t s32; typedef int64_t s64;
typedef uint8_t u8; typedef uint16_t u16; typedef uint32_t u32; typedef uint64_t u64;
/* the probe's readers (bpf/probe_common.h), on this process's memory */
static u64 bpflbr_rd(u64 ptr, u64 off, u64 n) {
  u64 v = 0; if (!ptr) return 0; memcpy(&v, (char *)(uintptr_t)(ptr + off), n); return v; }
static u64 bpflbr_strw(u64 addr, u64 off) {
  u64 buf[2] = {0}; const char *p = (const char *)(uintptr_t)(addr + off);
  for (int i = 0; i < 8 && p[i]; i++) ((char *)buf)[i] = p[i];
  return buf[0]; }
"""


def test_kernel_c_means_what_user_space_means(tmp_path) -> None:
    """The C generated for the kernel part, compiled by gcc (the oracle for C's semantics)
    with the probe's own variable types and readers, accepts exactly the events the
    user-space evaluator accepts: random filters over pid, tid, cpu, comm, typed args
    (unsigned 64-bit and char * included), retval, errors and duration, on random values,
    entries (no retval) and unpaired exits (no duration) among them."""
    import random
    import shutil
    import subprocess

    from bpflbr_shell.trace.filter import split_for_kernel

    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("needs gcc as the oracle for C semantics")
    rng = random.Random(7)
    sig = Signature((("fd", ValueType(4, signed=True)), ("n", ValueType(2)),
                     ("off", ValueType(8, signed=True)), ("size", ValueType(8)),
                     ("name", ValueType(8, pointer=True, string=True))),
                    ValueType(4, signed=True))
    scope = Scope(prototype=lambda: sig, event_signature=lambda e: sig, strings=True)
    leaves = ["pid", "tid", "cpu", "fd", "n", "off", "retval", "arg0", "errors", "size",
              "duration"]
    comms = ["bash", "bashful", "ba", "nginx", "x" * 15, "", "python3.11", "é"]
    names = ["/etc/passwd", "/etc/pass", "/etc/passwd2", "", "/", "a" * 8, "a" * 9,
             "/usr/lib/x86_64-linux-gnu/libc.so.6"]

    def gen(depth: int) -> str:
        r = rng.random()
        if r < 0.1:
            glob = rng.choice(comms)[: rng.randint(0, 15)] + rng.choice(["", "*"])
            return f"comm {rng.choice(['==', '!='])} '{glob}'"
        if r < 0.2:
            glob = rng.choice(names)[: rng.randint(0, 40)] + rng.choice(["", "*"])
            return f"name {rng.choice(['==', '!='])} '{glob}'"
        if depth == 0 or rng.random() < 0.3:
            a, b = rng.choice(leaves), rng.choice([str(rng.randint(0, 70000)), "-1", "0x8000",
                                                  "1500ns", "18446744073709551615",
                                                  rng.choice(leaves)])
            op = rng.choice(["==", "!=", "<", "<=", ">", ">=", "&", "|", "^"])
            return a if a == "errors" else f"{a} {op} {b}"
        op = rng.choice(["&&", "||"])
        inner = f"({gen(depth - 1)}) {op} ({gen(depth - 1)})"
        return f"!({inner})" if rng.random() < 0.2 else inner

    def value() -> int:
        return rng.choice([0, 1, 7, 0x8000, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, (1 << 64) - 1,
                           (1 << 64) - 4095, rng.getrandbits(64), rng.getrandbits(16)])

    filters = [(t, split_for_kernel(t, scope)[0]) for t in
               [f"comm {op} '{g}'" for g in ("ba*", "bash*", "b*", "*", "nginx", "bash", "ba",
                                            "python3.1*", "x" * 15, "é*", "")
                for op in ("==", "!=")]
               + [f"name {op} '{g}'" for g in ("/etc/passwd", "/etc/*", "a" * 8, "a" * 8 + "*",
                                              "", "*") for op in ("==", "!=")]]
    assert all(c is not None for _, c in filters)
    while len(filters) < 90:
        text = gen(3)
        c, rest = split_for_kernel(text, scope)
        if c is not None and rest is None:
            filters.append((text, c))
    events = []
    for _ in range(30):
        kind = rng.choice(["entry", "exit", "exit"])
        name = rng.choice(names)
        events.append(event(
            pid=rng.randint(0, 1 << 22), tid=rng.randint(0, 1 << 22), cpu=rng.randint(0, 64),
            args=[value() for _ in range(4)] + [0, 0], kind=kind,
            retval=value() if kind == "exit" else None,
            duration_ns=rng.choice([None, 0, 1500, 10**9]) if kind == "exit" else None,
            comm=rng.choice(comms),
            strings=((4, CapturedStr(len(name) + 1, name.encode())),)))
    lines = [HARNESS,
             "static int f(int k, u64 id, u32 cpu, u64 *args, u64 retval, u64 dur, int is_exit,"
             " u64 c0, u64 c1) {",
             "  s64 pid = id >> 32, tid = (u32)id;",
             "  s64 a0 = args[0], a1 = args[1], a2 = args[2], a3 = args[3], a4 = args[4],"
             " a5 = args[5];",
             "  s64 ex = is_exit, dk = dur != 0xffffffffffffffffULL;",
             "  (void)a1; (void)a2; (void)a3; (void)a4; (void)a5; (void)ex; (void)dk;",
             "  switch (k) {"]
    lines += [f"  case {k}: return ({c}) ? 1 : 0;" for k, (_, c) in enumerate(filters)]
    lines += ["  }", "  return -1; }", "int main(void) {"]
    for e in events:
        raw = e.comm.encode()[:15].ljust(16, b"\0")  # as bpf_get_current_comm() fills it
        c0, c1 = (int.from_bytes(raw[i:i + 8], "little") for i in (0, 8))
        name = e.strings[0][1].data.decode()
        args = ", ".join([*(f"{a}ULL" for a in e.args[:4]), "(u64)(uintptr_t)name", "0"])
        dur = 0xFFFFFFFFFFFFFFFF if e.duration_ns is None else e.duration_ns
        lines.append(f"  {{ static const char name[] = \"{name}\"; u64 a[6] = {{{args}}}; "
                     f"for (int k = 0; k < {len(filters)}; k++) "
                     f"printf(\"%d\", f(k, ((u64){e.pid} << 32) | {e.tid}u, {e.cpu}u, a, "
                     f"{e.retval or 0}ULL, {dur}ULL, {int(e.kind == 'exit')}, {c0}ULL, "
                     f"{c1}ULL)); printf(\"\\n\"); }}")
    lines.append("  return 0; }")
    src, exe = tmp_path / "f.c", tmp_path / "f"
    src.write_text("\n".join(lines) + "\n")
    subprocess.run([gcc, "-O0", "-o", str(exe), str(src)], check=True, capture_output=True)
    rows = subprocess.run([str(exe)], check=True, capture_output=True,
                          text=True).stdout.split()
    for e, row in zip(events, rows, strict=True):
        for (text, _), got in zip(filters, row, strict=True):
            assert (got == "1") == bind(text, scope).accepts(e), (text, e.kind, e.args,
                                                                  e.retval, e.duration_ns)
