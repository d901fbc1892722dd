"""What a trace is asked to be (:class:`TraceSpec`) and how a probe kind plans to do it
(:class:`TracePlan`): the session API's vocabulary, free of argparse and of the shell.

``session.trace(TraceSpec("uretprobe", ("c:getpid",), limit=5))`` is the whole call; the
shell's ``trace`` commands, ``py`` and extensions all make one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from bpflbr_shell.kernel.values import Signature
    from bpflbr_shell.kernel.view import KernelView
    from bpflbr_shell.symbols.user import UserSymbolizer
    from bpflbr_shell.trace.events import Event

#: What a tracer calls per record read: the event and its (kernel, user) stack ids.
OnEvent = Callable[["Event", int, int], None]


class Tracer(Protocol):
    """What every probe kind's tracer implements (probes.base.ProbeTracer does most of it):
    the session starts it, polls it from one reader thread, detaches and closes it."""

    kind: str
    lbr_off_reason: str | None
    bytes: int

    def start(self) -> None: ...
    def poll(self, timeout_ms: int, budget_s: float | None = None) -> int: ...
    def pending(self) -> int: ...
    def discard_pending(self) -> int: ...
    def stop_probes(self) -> None: ...
    def close(self) -> None: ...
    def counters(self) -> dict[str, int]: ...
    def prog_fds(self) -> list[int]: ...
    def stack(self, stack_id: int) -> list[int]: ...
    def keep_ranges(self) -> list[Any]: ...


@dataclass(frozen=True, slots=True)
class TraceSpec:
    """One trace, as asked for. ``kind`` names a row of :data:`trace.kinds.KINDS`;
    ``targets`` are that kind's target words (``BINARY:GLOB``; ``SEL[:FUNC]``; kernel
    function globs); ``options`` its own options by name (``exit``, ``backend``, ``str``...).
    """

    kind: str
    targets: tuple[str, ...]
    pid: int = 0
    lbr: bool = True
    stack: bool = False  # stacks even when LBR records are there (and user stacks)
    kstack: bool = False
    limit: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    branch_types: str = "any"  # LBR branch filter (perf's names, comma-separated)
    ring_bytes: int = 4 << 20  # the event rings, all CPUs
    filter: str | None = None  # this trace's own filter (--if), beside the session's

    def option(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)

    @property
    def ring_pages(self) -> int:
        return max(1, self.ring_bytes // 4096)


@dataclass
class TracePlan:
    """One way to run a spec: a tracer factory and what to say about it. A kind may offer
    several (kfunc: kprobe.multi, then fentry, then single kprobes); the session tries them
    in order and says why each refused."""

    make: Callable[[OnEvent], Tracer]
    spec_text: str  # what `trace list` shows: "uretprobe c:getpid --pid 5"
    summary: str  # what attaching says: "uretprobe on 1 function(s) of /usr/lib/...: getpid"
    backend: str = ""
    targets: list[str] = field(default_factory=list)  # what a dry run lists
    source: str = ""  # where the targets came from (a dry run says so)
    params: dict[int, Signature] = field(default_factory=dict)  # func_ip -> prototype
    # a kernel function's prototype by name, looked up once per function an event names
    signature_of: Callable[[str | None], Signature | None] | None = None
    # once the probes are in, before events are read (the events wait in the rings)
    attached: Callable[[], None] | None = None
    # the feature (kernel/features.py) this plan needs: when attaching fails and it is
    # missing, features' sentence says why (nothing is checked when attaching works)
    requires: str = ""
    # what a filter may name: whether events carry a return value (exits), and the traced
    # function's prototype (parameter names; a pointer return makes NULL an error), looked
    # up only when a filter needs it; None when the targets do not share one
    returns: bool = False
    prototype: Callable[[], Signature | None] | None = None
    # hands the probe the C of a filter's kernel part (before make() is called); None: the
    # probe kind evaluates no filter in the kernel
    kernel_filter: Callable[[str], None] | None = None


@dataclass
class PlanContext:
    """What a planner may use: the kernel view (opened on first use), the session's user
    symbolizer, the probe cache, and where to say things before attaching."""

    kernel: Callable[[], KernelView]
    user_syms: UserSymbolizer
    notes: list[str] = field(default_factory=list)
    probe_cache: Any = True  # objcache: True for the default directory, None for none


Planner = Callable[[TraceSpec, PlanContext], list[TracePlan]]
