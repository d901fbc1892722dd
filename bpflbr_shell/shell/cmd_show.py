"""``show progs|prog|ksym`` and ``disasm prog``: the kernel view, printed.

The commands only parse, ask ``ctx.kernel`` and return records (render/present.py shows them
as text or JSON); they derive no kernel facts themselves.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import TYPE_CHECKING

from bpflbr_shell.errors import NotFoundError
from bpflbr_shell.kernel.selectors import SELECTOR_HELP, check_glob, parse_selector
from bpflbr_shell.render import text as render
from bpflbr_shell.shell.context import Context, register_setting
from bpflbr_shell.shell.registry import argument, command
from bpflbr_shell.symbols.kernel import kernel_symbolizer

if TYPE_CHECKING:  # records load with the first command that returns one
    from bpflbr_shell.render.present import Disassembly, Features, ProgDetails, Progs, Table, Text


register_setting("disasm-syntax", "att", "disassembly syntax: att (AT&T) or intel "
                 "(disasm prog --intel/--att for one command)", choices=("att", "intel"))


def complete_prog(ctx: Context, prefix: str) -> Iterable[tuple[str, str]]:
    """Prog ids and names (with ``name:`` / ``tag:`` forms) for selector arguments."""
    try:
        names = ctx.kernel.prog_names()  # headers only: no images, lines or BTF per Tab
    except Exception:  # completion must never raise into the prompt
        return []
    out: list[tuple[str, str]] = []
    for prog_id, type_name, name, tag in names:
        out.append((str(prog_id), f"{type_name} {name}"))
        if _bare_name_selects(name):  # a prog named "99" is name:99, not id 99
            out.append((name, f"id {prog_id}"))
        out.append((f"name:{name}", f"id {prog_id}"))
        out.append((f"tag:{tag}", f"id {prog_id}"))
    return out


def _bare_name_selects(name: str) -> bool:
    """Whether typing ``name`` alone selects programs by that name (not an id, a tag...)."""
    try:
        sel = parse_selector(name)
    except Exception:
        return False
    return sel.kind == "name" and not any(c in name for c in "*?[")


def complete_ksym(ctx: Context, prefix: str) -> Iterable[str]:
    if len(prefix) < 2:
        return []
    try:
        return ctx.kernel.kallsyms.names_matching(prefix + "*", limit=200)
    except Exception:
        return []


@command("show progs", help="list loaded BPF programs (optionally those matching SEL)",
         category="programs")
@argument("selector", nargs="?", default="*", metavar="SEL", completer=complete_prog,
          help=f"program selector: {SELECTOR_HELP}")
def cmd_show_progs(ctx: Context, args: argparse.Namespace) -> Progs:
    from bpflbr_shell.render.present import Progs

    return Progs(ctx.kernel.select(args.selector, must_match=args.selector != "*"))


@command("show prog", help="everything the kernel knows about one program",
         category="programs")
@argument("selector", metavar="SEL", completer=complete_prog,
          help=f"program selector: {SELECTOR_HELP}")
def cmd_show_prog(ctx: Context, args: argparse.Namespace) -> ProgDetails:
    from bpflbr_shell.kernel.selectors import processes_holding
    from bpflbr_shell.render.present import ProgDetails

    progs = ctx.kernel.select(args.selector)
    return ProgDetails([(p, processes_holding(p.id)) for p in progs],
                       render.bpf_stats_enabled())


def _ksym_cell(key: str, value: object) -> str:
    if key == "addr" and isinstance(value, int):
        return f"{value:#x}"
    return "" if value is None else str(value)


@command("show ksym", help="look up a kernel symbol by name, or an address by value",
         category="kernel")
@argument("what", metavar="NAME|ADDR", completer=complete_ksym,
          help="symbol name (globs allowed) or address (0x...)")
def cmd_show_ksym(ctx: Context, args: argparse.Namespace) -> Text | Table:
    from bpflbr_shell.render.present import Table, Text

    kernel = ctx.kernel
    text: str = args.what
    rows: list[dict[str, object]] = []
    if text.lower().startswith("0x") or text.isdigit():
        try:
            if len(text) > 20:
                raise ValueError(text)
            addr = int(text, 0)
        except ValueError:
            raise NotFoundError(f"'{text}' is not an address", "write it as 0xffff...") from None
        kernel.progs()  # register every program so BPF addresses resolve with line info
        loc = kernel_symbolizer(kernel).symbolize(addr)
        if loc.func is None:
            raise NotFoundError(f"no kernel or BPF symbol contains {addr:#x}")
        rows.append({**loc.to_json(), "symbol": loc.func, "where": loc.format()})
        return Text(f"{addr:#x}  {loc.format()}", data=rows)
    names = ([text] if not any(c in text for c in "*?[")
             else kernel.kallsyms.names_matching(check_glob(text), limit=500))
    for name in names:
        for ksym in kernel.kallsyms.symbols_named(name):
            rows.append({"addr": ksym.addr, "symbol": ksym.name, "offset": 0,
                         "module": ksym.module, "kind": "bpf" if ksym.module == "bpf"
                         else "module" if ksym.module else "kernel",
                         "type": ksym.type, "size": ksym.size})
    if not rows:
        raise NotFoundError(f"no kernel symbol named '{text}'",
                            "globs work: show ksym 'tcp_v4_*'")
    return Table(("ADDRESS", "TYPE", "SIZE", "SYMBOL", "MODULE"),
                 ("addr", "type", "size", "symbol", "module"), rows, right=(2,),
                 show=_ksym_cell)


@command("disasm prog", help="disassemble a program's JIT image with source lines and symbols",
         category="programs")
@argument("selector", metavar="SEL", completer=complete_prog,
          help=f"program selector: {SELECTOR_HELP}")
@argument("func", nargs="?", metavar="FUNC",
          help="only this subprogram (BTF name, ksym name or index)")
@argument("--intel", action="store_const", const="intel", dest="syntax",
          help="Intel syntax (default: the disasm-syntax setting)")
@argument("--att", action="store_const", const="att", dest="syntax",
          help="AT&T syntax (default: the disasm-syntax setting)")
def cmd_disasm_prog(ctx: Context, args: argparse.Namespace) -> Disassembly:
    from bpflbr_shell.render.disasm import disassemble_prog
    from bpflbr_shell.render.present import Disassembly

    kernel = ctx.kernel
    prog = kernel.select_one(args.selector)
    kernel.progs()  # every program's ranges, so calls into other progs resolve with lines
    func = int(args.func) if args.func and args.func.isdigit() else args.func
    return Disassembly(prog, disassemble_prog(prog, kernel_symbolizer(kernel),
                                              syntax=args.syntax
                                              or ctx.settings["disasm-syntax"],
                                              func=func))


@command("show features", help="what this kernel and machine can trace, and how to fix what not",
         category="kernel")
def cmd_show_features(ctx: Context, args: argparse.Namespace) -> Features:
    from bpflbr_shell.kernel import features
    from bpflbr_shell.render.present import Features

    return Features(features.probe_features())
