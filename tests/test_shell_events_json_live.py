"""``show events N --json`` streams: memory stays flat however large the store (it grew to
1.9 GB and was OOM-killed), and the text is the same data as the per-event encoder's."""

from __future__ import annotations

import io
import json
import os
import random
import tracemalloc

import pytest

from bpflbr_shell.render.events import event_to_json
from bpflbr_shell.shell import Context, load_builtin_commands
from bpflbr_shell.shell.cmd_trace import render_options, runtime
from bpflbr_shell.shell.runner import run_line
from bpflbr_shell.trace.events import Branch, Event

pytestmark = pytest.mark.live
N_EVENTS = 20_000


class CountingSink(io.TextIOBase):
    """stdout that keeps only a byte count and the first few KB (what a pipe holds)."""

    def __init__(self) -> None:
        self.size = 0
        self.head = ""

    def write(self, text: str) -> int:
        self.size += len(text)
        if len(self.head) < 4096:
            self.head += text[:4096]
        return len(text)


@pytest.fixture(scope="module")
def filled_ctx() -> Context:
    if os.geteuid() != 0:
        pytest.skip("needs root (real kallsyms addresses)")
    from bpflbr_shell.cli import open_kernel_view

    ctx = Context(load_builtin_commands(), out=io.StringIO(), err=io.StringIO(),
                  kernel_factory=open_kernel_view)
    assert run_line(ctx, f"set event-store {N_EVENTS}")
    text = [k.addr for k in ctx.kernel.kallsyms if k.is_text and not k.module][:20_000]
    assert len(text) > 1000, "kallsyms without addresses (kptr_restrict?)"
    rng = random.Random(8)
    rt = runtime(ctx)
    for i in range(N_EVENTS):
        lbr = [Branch(rng.choice(text) + 4, rng.choice(text)) for _ in range(16)]
        rt.session.store.add(Event("kfunc test", "exit", i, 100 + i % 7, 100, i % 2,
                                   f"comm{i % 5}", rng.choice(text), [i, 2, 3], i % 3, 1000,
                                   16 * 24, lbr, kstack=[rng.choice(text) for _ in range(4)],
                                   func="f"))
    return ctx


def _peak(action) -> int:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_show_events_json_memory_is_bounded(filled_ctx: Context) -> None:
    ctx = filled_ctx
    rt = runtime(ctx)

    def show(n: int) -> CountingSink:
        sink = CountingSink()
        ctx.out = sink
        try:
            assert run_line(ctx, f"show events {n} --json"), ctx.stderr.getvalue()
        finally:
            ctx.out = io.StringIO()
        return sink

    show(N_EVENTS)  # warm the symbolizer's and encoder's per-address caches (bounded)
    sink = None

    def big() -> None:
        nonlocal sink
        sink = show(N_EVENTS)

    streamed = _peak(big)
    streamed_small = _peak(lambda: show(N_EVENTS // 10))
    assert sink is not None and sink.size > 50 * N_EVENTS  # every event was written
    few = N_EVENTS // 10

    def whole_document() -> None:  # what the command did before: one list, one dumps
        symbolize = rt.session.symbolize
        opts = render_options(ctx)
        docs = [event_to_json(e, symbolize, opts) for e in rt.session.store.last(few)]
        json.dumps(docs, indent=2, sort_keys=True)

    built = _peak(whole_document)
    print(f"peak: {N_EVENTS} streamed {streamed / 1e6:.2f} MB, {few} streamed "
          f"{streamed_small / 1e6:.2f} MB, {few} as one document {built / 1e6:.1f} MB; "
          f"output {sink.size / 1e6:.1f} MB")
    assert streamed < 2 * streamed_small + 1_000_000  # flat in the number of events
    assert streamed * 10 < built  # 10x the events in a tenth of the memory


def test_show_events_json_is_the_per_event_data(filled_ctx: Context) -> None:
    ctx = filled_ctx
    rt = runtime(ctx)
    out = io.StringIO()
    ctx.out = out
    try:
        assert run_line(ctx, "show events 50 --json")
    finally:
        ctx.out = io.StringIO()
    symbolize = rt.session.symbolize
    want = [event_to_json(e, symbolize, render_options(ctx)) for e in rt.session.store.last(50)]
    assert json.loads(out.getvalue()) == want
    lines = out.getvalue().splitlines()
    assert lines[0] == "[" and lines[-1] == "]" and len(lines) == 52  # one event per line
