"""The one table of probe kinds. A new kind is one C file in ``bpf/``, one module in
``trace/probes/`` with a ``plan(spec, ctx) -> [TracePlan]`` function, and one row here: the
shell makes its ``trace KIND`` command (target, options, help) from the row."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from bpflbr_shell.errors import UsageError
from bpflbr_shell.trace.spec import Planner


@dataclass(frozen=True, slots=True)
class Option:
    """A kind's own option: ``--NAME`` (dashes for underscores) into ``spec.options[name]``.
    ``group``: options sharing one are mutually exclusive."""

    name: str
    help: str
    flag: bool = True  # a switch; else it takes a value
    choices: tuple[str, ...] = ()
    default: Any = None
    metavar: str | None = None
    group: str = ""


@dataclass(frozen=True, slots=True)
class Target:
    """A kind's target words: one or several (``many``); ``complete`` names the shell's
    completer for them (``user``, ``prog``, ``ksym``)."""

    metavar: str
    help: str
    many: bool = False
    complete: str = ""


@dataclass(frozen=True, slots=True)
class ProbeKind:
    name: str
    help: str
    module: str  # the probe module, imported on first use
    source: str  # its C, in bpf/
    target: Target
    options: tuple[Option, ...] = ()
    # features (kernel/features.py) a trace of this kind needs; "a|b": either will do
    requires: tuple[str, ...] = ()

    def planner(self) -> Planner:
        planner: Planner = importlib.import_module(self.module).plan
        return planner


_USER = Target("BINARY:SYMBOL", "binary (path, command or library) and a function glob, e.g. "
               "/usr/bin/bash:readline or c:getpid", complete="user")
_STR = Option("str", "copy these values as C strings (62 bytes at most, escaped): ret, "
              "arg0..arg5, comma-separated; DWARF-typed char * args and retvals are copied "
              "without it", flag=False, metavar="WHICH")
BACKENDS = ("auto", "multi", "fentry", "kprobe")

KINDS: tuple[ProbeKind, ...] = (
    ProbeKind("uretprobe", "trace returns of user functions (retval, args, duration)",
              "bpflbr_shell.trace.probes.uprobe", "uprobe.c", _USER, (_STR,),
              requires=("uprobes",)),
    ProbeKind("uprobe", "trace calls of user functions (args)",
              "bpflbr_shell.trace.probes.uprobe", "uprobe.c", _USER, (_STR,),
              requires=("uprobes",)),
    ProbeKind("prog", "fentry/fexit on BPF programs: args, retval and LBR inside them",
              "bpflbr_shell.trace.probes.tracing", "fentry.c",
              Target("SEL[:FUNC]", "program selector, optionally :subprogram (default: the "
                     "main function)", complete="prog"),
              (Option("entry", "fentry: events on entry (args)", group="direction"),
               Option("exit", "fexit: events on return (args, retval; the default)",
                      group="direction"),
               Option("both", "fentry and fexit (durations on exit)", group="direction")),
              requires=("tracing-prog",)),
    ProbeKind("kfunc", "kernel functions: kprobe.multi (default), fentry or kprobes",
              "bpflbr_shell.trace.probes.kprobes", "kprobe.c",
              Target("GLOB", "kernel function names or globs, e.g. 'tcp_v4_*'", many=True,
                     complete="ksym"),
              (Option("backend", "auto: kprobe.multi, else fentry, else single kprobes",
                      flag=False, choices=BACKENDS, default="auto"),
               Option("exit", "events on return (retval; duration except with the fentry "
                      "backend)"),
               Option("dry_run", "list what would be attached, and how")),
              requires=("kprobes|kprobe-multi|tracing-prog",)),
)
BY_NAME = {k.name: k for k in KINDS}


def kind(name: str) -> ProbeKind:
    try:
        return BY_NAME[name]
    except KeyError:
        raise UsageError(f"no probe kind '{name[:40]}'",
                         f"one of: {', '.join(BY_NAME)}") from None
