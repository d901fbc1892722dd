"""Traced-world text is escaped before it reaches a terminal; JSON stays exact."""

from __future__ import annotations

import io
import json
import re

from hypothesis import given
from hypothesis import strategies as st

from bpflbr_shell.render.events import RenderOptions, event_json, render_event
from bpflbr_shell.render.text import safe, table
from bpflbr_shell.symbols.kernel import Location
from bpflbr_shell.trace.events import Branch, Event

EVIL_COMM = "\x1b]0;pwned\x07\n#evil"
EVIL_SYM = "func\n#1 forged line\x1b[2J"


def unescape(text: str) -> str:
    """The inverse of safe(), written independently of it."""
    named = {"n": "\n", "r": "\r", "\\": "\\"}

    def one(m: re.Match[str]) -> str:
        body = m.group(1)
        if body in named:
            return named[body]
        return chr(int(body[1:], 16))

    return re.sub(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|[nr\\])", one, text)


@given(st.text())
def test_escaped_text_is_printable_and_reads_back(text):
    out = safe(text)
    # no C0/C1 control (a tab only moves the cursor), ESC, newline, bidi override, surrogate
    assert out.replace("\t", " ").isprintable()
    assert unescape(out) == text


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn",
                                                              "Zl", "Zp", "Zs")).filter(
    lambda c: c != "\\")))
def test_printable_text_unchanged(text):
    assert safe(text) is text or safe(text) == text


def test_surrogates_from_undecodable_bytes_encode():
    name = b"lib\xff\xfe.so".decode("utf-8", "surrogateescape")
    out = safe(name)
    out.encode("utf-8")  # a lone surrogate would raise UnicodeEncodeError on the terminal
    assert out == "lib\\udcff\\udcfe.so"


def test_table_cell_with_newline_stays_on_its_row():
    text = table(("ID", "NAME"), [(1, EVIL_SYM), (2, "ok")])
    assert len(text.splitlines()) == 3
    assert "\x1b" not in text


def _event(**kw) -> Event:
    base = dict(probe="uprobe t:f", kind="exit", ts_ns=1, pid=10, tid=10, cpu=0,
                comm=EVIL_COMM, func_ip=0x401000, args=[1], retval=0, duration_ns=5,
                lbr_ret=0, func=EVIL_SYM)
    base.update(kw)
    return Event(**base)


def _symbolize(event: Event, addr: int) -> Location:
    return Location(addr, EVIL_SYM, 4, file="/src/a\nb.c", line=3, kind="kernel")


def test_event_text_holds_no_control_characters():
    ev = _event(lbr=[Branch(0xffffffff81000000, 0xffffffff81000010)],
                ustack=[0x401000], kstack=[0xffffffff81000000])
    text = render_event(ev, _symbolize, RenderOptions(lbr_trim=False, show_kstack=True,
                                                      show_ustack=True))
    for line in text.splitlines():
        assert line.isprintable(), line
    assert "\\x1b]0;pwned\\x07\\n#evil" in text
    assert not any(line.lstrip().startswith("#evil") or line.startswith("#1 forged")
                   for line in text.splitlines())


def test_event_json_keeps_the_exact_text():
    ev = _event()
    doc = json.loads(event_json(ev, _symbolize, RenderOptions()))
    assert doc["comm"] == EVIL_COMM and doc["func"] == EVIL_SYM


def test_error_line_is_one_escaped_line():
    from conftest import builtins_registry

    from bpflbr_shell.shell.context import Context
    from bpflbr_shell.shell.runner import run_line

    err = io.StringIO()
    ctx = Context(builtins_registry(), out=io.StringIO(), err=err)
    assert not run_line(ctx, "set debug 'x\x1b[31m\nerror: forged'")
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "\x1b" not in err.getvalue()
