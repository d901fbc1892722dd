"""The fuzz corpus of issue 8, kept: generated command lines and scripts through the real
runner, registry and Context. Whatever comes in, the shell answers with success or exactly one
``error:`` line, never ``internal error``, and in bounded time.

Lines mix real command words and options with selectors, paths, huge numbers, junk text
(controls, surrogates, quotes) and long words. The offline run has no kernel view (commands
that need it fail cleanly) and leaves out the commands that attach probes; the live run uses
the real kernel view and attaches, each trace bounded by ``--duration``.
"""

from __future__ import annotations

import io
import os
import shlex
import time
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpflbr_shell.shell import Context, load_builtin_commands
from bpflbr_shell.shell.runner import run_guarded, run_line
from bpflbr_shell.shell.scripts import run_file

REGISTRY = load_builtin_commands()
COMMANDS = [c.name for c in REGISTRY.commands()]
ATTACHING = ("trace uprobe", "trace uretprobe", "trace prog", "trace kfunc")
OPTIONS = sorted({o for c in REGISTRY.commands() for a in c.parser._actions
                  for o in a.option_strings})
SELECTORS = ["*", "1", "0", "id:1", "i:2", "name:*", "n:sock*", "tag:0", "t:zz",
             "pinned:/etc/passwd", "p:/sys/fs/bpf", "pid:1", "pid:0", "bogus:1", "name:",
             "id:x", "[", "[!]", "*[", "tc_*:classify", "1:main"]
TARGETS = ["c:getpid", "c:nosuchfunc", "/bin/true:main", "/nonexistent:f", "c:", ":x",
           "libc.so.6:malloc", "/etc/passwd:x"]
VALUES = ["on", "off", "auto", "-1", "0", "abc", "any", "bogus", "call,any_return",
          "10", "0x10", "1e9", "5s", "500ms", "-3", "2m", ""]
SETTINGS = ["color", "debug", "event-store", "lbr-trim", "lbr-branch-types", "nosuch"]
PATHS = ["/dev/zero", "/dev/null", "/etc/shadow", "/etc/passwd", "/", "/proc/self/mem",
         "/nonexistent", "~/x", "/bin/ls", "/tmp/a\x00b", os.fsdecode(b"/tmp/\xff\xfe")]
MAX_SECONDS = 8.0

junk = st.text(st.characters(blacklist_categories=()), max_size=40)
huge = st.one_of(st.integers(-(2**70), 2**70).map(str),
                 st.integers(1, 4000).map(lambda n: "9" * n))
long_word = st.integers(300, 6000).map(lambda n: "a[" * (n // 2))
word = st.one_of(
    st.sampled_from(OPTIONS), st.sampled_from(SELECTORS), st.sampled_from(TARGETS),
    st.sampled_from(VALUES), st.sampled_from(SETTINGS), st.sampled_from(PATHS), junk, huge,
    long_word, st.sampled_from(["'", '"', "\\", "#", "--", "-", "=", ";"]))


def _render(words: list[str], quoting: list[bool]) -> str:
    return " ".join(shlex.quote(w) if q else w for w, q in zip(words, quoting, strict=False))


@st.composite
def command_line(draw, attach: bool) -> str:
    names = [c for c in COMMANDS if attach or c not in ATTACHING]
    head = draw(st.one_of(st.sampled_from(names), junk, st.sampled_from(["show", "trace"])))
    args = draw(st.lists(word, max_size=6))
    quoting = draw(st.lists(st.booleans(), min_size=len(args), max_size=len(args)))
    line = head + " " + _render(args, quoting)
    if draw(st.booleans()) and draw(st.integers(0, 9)) == 0:
        line += " x" * draw(st.integers(2000, 60000))  # a very long line
    if head in ATTACHING:
        line += " --duration 1ms --limit 1"  # argparse takes the last value: a bounded trace
    return line


def _check(ctx: Context, ok: bool, started: float) -> None:
    took = time.monotonic() - started
    err = ctx.stderr.getvalue()
    ctx.stderr.seek(0)
    ctx.stderr.truncate()
    ctx.stdout.seek(0)
    ctx.stdout.truncate()
    lines = err.splitlines()
    assert not any(ln.startswith("internal error") for ln in lines), err
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == (0 if ok else 1), err
    for ln in lines:  # escaped: no control character reaches the terminal
        assert ln.replace("\t", " ").isprintable(), repr(ln)
    assert took < MAX_SECONDS, f"took {took:.1f} s"


def _context(kernel: bool) -> Context:
    factory = None
    if kernel:
        from bpflbr_shell.cli import open_kernel_view

        factory = open_kernel_view
    return Context(REGISTRY, out=io.StringIO(), err=io.StringIO(), kernel_factory=factory)


def _run(ctx: Context, line: str) -> None:
    started = time.monotonic()
    ok = run_line(ctx, line)
    ctx.exit_requested = False  # 'quit' is a success; keep fuzzing
    _check(ctx, ok, started)


FUZZ = settings(max_examples=30, deadline=timedelta(seconds=MAX_SECONDS + 2),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@FUZZ
@given(line=command_line(attach=False))
def test_fuzz_command_lines_offline(line: str) -> None:
    _run(_context(kernel=False), line)


@st.composite
def script(draw) -> bytes:
    lines = draw(st.lists(st.one_of(command_line(attach=False), junk,
                                    st.just("# comment"), st.just("")), max_size=6))
    body = "\n".join(lines).encode("utf-8", "surrogateescape")
    if draw(st.booleans()):
        body += draw(st.binary(max_size=64))  # junk bytes: NUL, invalid UTF-8
    return body


@FUZZ
@given(body=script())
def test_fuzz_scripts_offline(tmp_path_factory, body: bytes) -> None:
    path = Path(tmp_path_factory.mktemp("fuzz")) / "s.lbr"
    path.write_bytes(body)
    ctx = _context(kernel=False)
    started = time.monotonic()
    ok = run_guarded(ctx, lambda: run_file(ctx, str(path)))
    _check(ctx, ok, started)
    secret_like = [ln for ln in body.split(b"\n")[:1] if len(ln) > 12 and b" " not in ln]
    for ln in secret_like:  # a first line that is no command is never echoed back
        if not ok and not ctx.stdout.getvalue():
            assert ln.decode("utf-8", "replace") not in ctx.stderr.getvalue()


@pytest.fixture(scope="module")
def live_ctx():
    if os.geteuid() != 0:
        pytest.skip("needs root (bpf(2), uprobes)")
    ctx = _context(kernel=True)
    yield ctx
    run_line(ctx, "trace stop")
    ctx.close()


@pytest.mark.live
@FUZZ
@given(line=command_line(attach=True))
def test_fuzz_command_lines_live(live_ctx: Context, line: str) -> None:
    try:
        _run(live_ctx, line)
    finally:
        run_line(live_ctx, "trace stop")  # a --bg trace must not outlive its example
        live_ctx.stderr.seek(0)
        live_ctx.stderr.truncate()
