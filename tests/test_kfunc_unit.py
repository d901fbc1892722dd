"""Kernel-function resolution (kallsyms aliases, skipped names) and kernel stack trimming, on
fixtures recorded from the VM tier's 6.12 guest by scripts/record_kfunc_fixtures.py: its
/proc/kallsyms lines (syscall entry points and their same-address names, the symbols of real
event stacks), available_filter_functions and the kprobe blacklist. The oracle is a plain
split of the same text, independent of KallsymsIndex and of kprobes.resolve_functions.
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from pathlib import Path

import pytest

from bpflbr_shell.errors import NotFoundError
from bpflbr_shell.kernel.kallsyms import KallsymsIndex
from bpflbr_shell.trace.events import Event
from bpflbr_shell.trace.probes import kprobes

FIXTURES = Path(__file__).parent / "fixtures" / "kfunc-6.12.95+deb12-amd64"


def read(name: str) -> str:
    return (FIXTURES / name).read_text()


@pytest.fixture(scope="module")
def kallsyms() -> KallsymsIndex:
    return KallsymsIndex.from_text(read("kallsyms.txt"))


@pytest.fixture(scope="module")
def traceable() -> kprobes.Traceable:
    return kprobes.traceable_from_text(read("available_filter_functions.txt"),
                                       read("blacklist.txt"), "recorded fixture")


@pytest.fixture(scope="module")
def oracle() -> dict:
    """The fixture's facts by plain splitting: names by address, text names, ftrace's list,
    the blacklist."""
    by_addr: dict[str, list[str]] = defaultdict(list)
    text: dict[str, str] = {}
    for line in read("kallsyms.txt").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        f = line.split()
        if len(f) > 3:
            continue  # modules and [bpf]: not part of the syscall facts
        by_addr[f[0]].append(f[2])
        if f[1] in "tT":
            text[f[2]] = f[0]
    listed = {ln.split()[0] for ln in read("available_filter_functions.txt").splitlines()
              if ln.strip() and not ln.startswith("#")}
    black = {ln.split()[1] for ln in read("blacklist.txt").splitlines()
             if len(ln.split()) > 1 and not ln.startswith("#")}
    return {"by_addr": by_addr, "text": text, "listed": listed - black, "black": black}


def test_fixture_holds_the_alias_case(oracle) -> None:
    # the recorded facts the rest relies on: bpftrace attaches __x64_sys_getpid through
    # __do_sys_getpid, the one name ftrace lists at that address
    addr = oracle["text"]["__x64_sys_getpid"]
    assert "__do_sys_getpid" in oracle["by_addr"][addr]
    assert "__x64_sys_getpid" not in oracle["listed"]
    assert "__do_sys_getpid" in oracle["listed"]


def test_same_address_symbols(kallsyms, oracle) -> None:
    for name in ("__x64_sys_getpid", "__x64_sys_sync", "__x64_sys_read"):
        addr = oracle["text"][name]
        got = [s.name for s in kallsyms.at_address(int(addr, 16))]
        assert sorted(got) == sorted(oracle["by_addr"][addr])
    assert kallsyms.at_address(1) == []


def test_symbols_matching_agrees_with_fnmatch(kallsyms, oracle) -> None:
    for glob in ("__x64_sys_*", "__do_sys_get*", "__ia32_sys_?etpid"):
        got = sorted(s.name for s in kallsyms.symbols_matching(glob) if s.module is None)
        assert got == sorted(n for n in oracle["text"] if fnmatch.fnmatchcase(n, glob)), glob


def test_alias_traced_under_the_listed_name(kallsyms, traceable) -> None:
    found = kprobes.resolve_functions(["__x64_sys_getpid"], traceable, kallsyms)
    assert [k.name for k in found.funcs] == ["__do_sys_getpid"]
    (k,) = found.funcs
    assert k.asked == "__x64_sys_getpid" and k.addr == kallsyms.address_of("__x64_sys_getpid")
    assert found.notices() == ["__x64_sys_getpid is traced as __do_sys_getpid (same address)"]


def test_glob_says_what_it_resolved_and_skipped(kallsyms, traceable, oracle) -> None:
    glob = "__x64_sys_*"
    names = [n for n in oracle["text"] if fnmatch.fnmatchcase(n, glob)]
    direct = {n for n in names if n in oracle["listed"]}
    via = {}
    for n in set(names) - direct:
        same = [m for m in oracle["by_addr"][oracle["text"][n]] if m in oracle["listed"]]
        if same:
            via[n] = same[0]
    skipped = sorted(set(names) - direct - set(via))
    assert via and skipped  # the recorded kernel has both cases (26 aliases, ni_syscall)

    found = kprobes.resolve_functions([glob], traceable, kallsyms)
    assert {k.name for k in found.funcs} == direct | set(via.values())
    assert {k.asked: k.name for k in found.aliases} == via
    assert found.matched == len(names)
    assert found.skipped == {kprobes.NOT_LISTED: skipped}
    aliases, skips = found.notices()
    assert aliases.startswith(f"{len(via)} functions are traced as the name ftrace lists")
    assert aliases.endswith(f"(and {len(via) - kprobes.SHOWN} more)")
    assert skips.startswith(f"{len(skipped)} of {len(names)} matching functions skipped: "
                            f"{len(skipped)} not in available_filter_functions")
    assert skipped[0] in skips


def test_without_kallsyms_only_listed_names(traceable, oracle) -> None:
    funcs = kprobes.match_functions(["__x64_sys_*"], traceable)
    assert {k.name for k in funcs} == {n for n in oracle["listed"]
                                       if fnmatch.fnmatchcase(n, "__x64_sys_*")}


def test_blacklisted_and_untraceable_names_say_why(kallsyms, traceable, oracle) -> None:
    black = sorted(n for n in oracle["black"] if n in oracle["text"])
    assert "do_syscall_64" in black
    with pytest.raises(NotFoundError, match="1 on the kprobe blacklist: do_syscall_64"):
        kprobes.resolve_functions(["do_syscall_64"], traceable, kallsyms)
    with pytest.raises(NotFoundError, match="1 not in available_filter_functions"):
        kprobes.resolve_functions(["__x64_sys_ni_syscall"], traceable, kallsyms)


def event(kind: str, func_ip: int, duration: int | None) -> Event:
    return Event("kfunc", kind, 1, 2, 2, 0, "w", func_ip, [7, 8, 9, 0, 0, 0],
                 5 if kind == "exit" else None, duration, -95)


def test_events_of_an_alias_are_named_as_asked(kallsyms, traceable) -> None:
    found = kprobes.resolve_functions(["__x64_sys_getpid"], traceable, kallsyms)
    seen: list[Event] = []
    handle = kprobes.event_namer(found.funcs, True, lambda e, k, u: seen.append(e))
    addr = kallsyms.address_of("__x64_sys_getpid")
    handle(event("exit", addr, 1200), -1, -1)
    handle(event("exit", addr, None), -1, -1)  # entered before the entry probe was attached
    other = kallsyms.address_of("__x64_sys_read")
    handle(event("entry", other, None), -1, -1)
    assert [e.func for e in seen] == ["__x64_sys_getpid", "__x64_sys_getpid", None]
    assert [e.args for e in seen] == [[7, 8, 9, 0, 0, 0], [], [7, 8, 9, 0, 0, 0]]


# kernel stacks: the tracer's own frames above the traced function ------------------------------
@pytest.fixture(scope="module")
def stacks() -> list[dict]:
    import json

    return json.loads(read("stacks.json"))["events"]


def symbolizer(text: str):
    from bpflbr_shell.symbols.kernel import Symbolizer

    sym = Symbolizer(KallsymsIndex.from_text(text))
    return lambda event, addr: sym.symbolize(addr)


def stack_event(rec: dict) -> Event:
    e = event(rec["kind"], rec["func_ip"], None)
    e.kstack = list(rec["kstack"])
    return e


def with_bpf(rec: dict) -> str:
    """The fixture's kallsyms and the [bpf] lines of the moment ``rec`` was recorded."""
    return read("kallsyms.txt") + "\n".join(rec["bpf_kallsyms"]) + "\n"


def test_recorded_stacks_are_what_the_rule_is_about(stacks) -> None:
    """fentry/fexit stacks start in our program and the trampoline ([bpf] lines recorded
    while attached), then the traced function; kprobe ones start at or below it."""
    for rec in stacks:
        bpf = {int(ln.split()[0], 16): ln.split()[2] for ln in rec["bpf_kallsyms"]}
        if rec["backend"] == "fentry":
            tops = [max((a for a in bpf if a <= x), default=0) for x in rec["kstack"][:2]]
            names = [bpf.get(a, "") for a in tops]
            assert "bpflbr_f" in names[0] and names[1].startswith("bpf_trampoline_"), names


def test_tracer_frames_hidden_and_counted(stacks) -> None:
    from bpflbr_shell.render.events import RenderOptions, kernel_frames, render_event

    for rec in stacks:
        symbolize = symbolizer(with_bpf(rec))
        e = stack_event(rec)
        frames, hidden = kernel_frames(e, symbolize, True)
        everything, none = kernel_frames(e, symbolize, False)
        assert none == 0 and len(everything) == len(rec["kstack"])
        if rec["backend"] == "fentry":
            assert hidden == 2
            traced = symbolize(e, e.func_ip)
            assert frames[0].addr - frames[0].offset == traced.addr - traced.offset
            assert all(f.module == "bpf" for f in everything[:2])
        else:  # kprobes start at the traced function (entry) or its caller (exit)
            assert hidden == 0 and frames == everything
        assert frames == everything[hidden:]
        text = render_event(e, symbolize, RenderOptions(show_kstack=True))
        if hidden:
            assert f"kernel stack: ({hidden} tracer frames hidden; 'set lbr-trim off' shows " \
                   "them)" in text
        assert len([ln for ln in text.splitlines() if ln.startswith("     ")]) == len(frames)


def test_stale_kallsyms_still_hides_our_frames(stacks) -> None:
    """A kallsyms snapshot taken before the trace attached knows neither our programs nor
    the trampoline: they are unsymbolized, and still above the traced function."""
    from bpflbr_shell.render.events import kernel_frames

    rec = next(r for r in stacks if r["backend"] == "fentry" and r["kind"] == "exit")
    frames, hidden = kernel_frames(stack_event(rec), symbolizer(read("kallsyms.txt")), True)
    assert hidden == 2 and frames[0].func is not None


def test_handler_frames_on_top_of_a_return_stack(kallsyms, stacks) -> None:
    """A return probe's stack (the function has returned: it is not in it) built from real
    addresses with the rethook and fprobe handlers on top: those go, the caller stays."""
    from bpflbr_shell.render.events import kernel_frames

    rec = next(r for r in stacks if r["backend"] == "multi" and r["kind"] == "exit")
    handlers = [kallsyms.address_of(n) for n in ("kprobe_multi_link_exit_handler",
                                                 "fprobe_exit_handler",
                                                 "rethook_trampoline_handler",
                                                 "arch_rethook_trampoline_callback")]
    assert all(handlers)
    e = stack_event(rec)
    e.kstack = [a + 8 for a in handlers] + e.kstack
    frames, hidden = kernel_frames(e, symbolizer(read("kallsyms.txt")), True)
    assert hidden == len(handlers)
    assert [f.addr for f in frames] == rec["kstack"]
