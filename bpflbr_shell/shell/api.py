"""What user Python sees of a shell: ``py``'s namespace and an extension command's ``shell``.

Both get the same objects so a line tried with ``py`` works unchanged in an extension: the
session, the event store as typed events (``e.retval < 0`` is true for a failed ``open``:
values come through the function's prototype, as the renderers show them), the kernel view,
``symbolize``, and ``run(CMD)`` giving a command's records instead of its text.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bpflbr_shell.errors import UserError

if TYPE_CHECKING:
    from bpflbr_shell.shell.context import Context
    from bpflbr_shell.symbols.kernel import Location
    from bpflbr_shell.trace.events import Event
    from bpflbr_shell.trace.session import Session


@dataclass(frozen=True)
class TypedEvent:
    """One stored event with its values presented through the traced function's prototype
    (DWARF or BTF; untyped: the signed register): ``retval`` and ``args`` (name -> value)
    are what the C code saw. Other attributes read through to the raw :class:`Event`
    (``lbr``, ``kstack``, ``ustack``, ``strings``, ``func_ip``...)."""

    id: int
    trace_id: int
    func: str | None
    kind: str
    pid: int
    tid: int
    cpu: int
    comm: str
    ts_ns: int
    duration_ns: int | None
    retval: int | None
    args: dict[str, int] = field(default_factory=dict)
    raw: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, session: Session, event: Event) -> TypedEvent:
        from bpflbr_shell.kernel.values import signed64

        sig = session.params_of(event)
        if sig is not None:
            args = sig.args(event.args)
            retval = sig.retval(event.retval) if event.retval is not None else None
        else:
            args = {f"arg{i}": v for i, v in enumerate(event.args)}
            retval = signed64(event.retval) if event.retval is not None else None
        return cls(event.id, event.trace_id, event.func, event.kind, event.pid, event.tid,
                   event.cpu, event.comm, event.ts_ns, event.duration_ns, retval, args, event)

    def __getattr__(self, name: str) -> Any:
        raw = self.__dict__.get("raw")
        if raw is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(raw, name)


class EventsView:
    """The session's event store, read as :class:`TypedEvent` (oldest first): ``len``,
    iteration, ``events[i]`` by position, ``events.get(ID)`` by event id, ``events.raw``
    the store itself."""

    def __init__(self, session: Session) -> None:
        self.session = session

    @property
    def raw(self) -> Any:
        return self.session.store

    def __len__(self) -> int:
        return len(self.session.store)

    def __iter__(self) -> Iterator[TypedEvent]:
        session = self.session
        for event in list(session.store):  # a snapshot: a background trace keeps adding
            yield TypedEvent.of(session, event)

    def __getitem__(self, index: int) -> TypedEvent:
        return list(self)[index]

    def get(self, event_id: int) -> TypedEvent:
        return TypedEvent.of(self.session, self.session.store.get(event_id))

    def __repr__(self) -> str:
        return f"<events: {len(self)} stored>"


def records_of(result: Any) -> Any:
    """A command's return value as plain records: programs, table rows, events, parts;
    text stays a Text record (its ``.text``, its ``.data``)."""
    from bpflbr_shell.render import present as p

    if result is None:
        return None
    if isinstance(result, p.Progs):
        return list(result.progs)
    if isinstance(result, p.ProgDetails):
        return [prog for prog, _ in result.items]
    if isinstance(result, p.Table):
        return list(result.rows)
    if isinstance(result, p.EventStream):
        return list(result.events)
    if isinstance(result, p.Settings):
        return {name: value for name, value, _ in result.items}
    if isinstance(result, p.Multi):
        return [records_of(part) for part in result.parts]
    return result


class Shell:
    """The shell as user code drives it (``shell`` in an extension command, the names of
    ``py``'s namespace)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @property
    def session(self) -> Session:
        from bpflbr_shell.shell.cmd_trace import runtime

        return runtime(self.ctx).session

    @property
    def events(self) -> EventsView:
        return EventsView(self.session)

    @property
    def kernel(self) -> Any:
        return self.ctx.kernel

    @property
    def settings(self) -> Any:
        return self.ctx.settings

    def symbolize(self, addr: int, pid: int | None = None) -> Location:
        """A kernel address, or a user one in process ``pid``, as ``func+off (file:line)``
        (``.format()``; ``.func``, ``.offset``, ``.file``, ``.line``)."""
        from bpflbr_shell.symbols.kernel import Location

        session = self.session
        if pid is None:
            return session.symbolize(None, addr)
        return session.user_syms.symbolize(pid, addr) if addr else Location(addr)

    def run(self, line: str) -> Any:
        """The records of one command (``run('show progs')``: ProgInfo objects), nothing
        printed."""
        from bpflbr_shell.shell.runner import run_command

        return records_of(run_command(self.ctx, line))

    def print(self, *parts: Any, sep: str = " ", end: str = "\n") -> None:
        self.ctx.print(*parts, sep=sep, end=end)

    def warn(self, message: str) -> None:
        self.ctx.warn(message)


class Unavailable:
    """Stands for a name the namespace could not provide (no kernel view, no drgn): any
    use raises the one-line reason."""

    def __init__(self, error: UserError) -> None:
        self._error = error

    def __getattr__(self, name: str) -> Any:
        raise self._error

    def __repr__(self) -> str:
        return f"<unavailable: {self._error}>"
