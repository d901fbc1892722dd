"""The one presenter: what commands return, as text (colour only when asked: on a TTY) or as
JSON. A command never formats its own output and has no ``if args.json`` branch; it returns
one of the records below (or ``None``) and the runner hands it here.

Adding an output format is one function pair here; adding a command that shows something
new is one record class and its pair. Records from lower layers (``ProgInfo``) are wrapped,
not changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import singledispatch
from typing import TYPE_CHECKING, Any, TextIO

from bpflbr_shell.render import text as render

if TYPE_CHECKING:
    from bpflbr_shell.kernel.model import ProgInfo


# records ----------------------------------------------------------------------------------------
@dataclass
class Table:
    """Rows under headers; JSON is the list of row dicts (``keys`` name the columns)."""

    headers: Sequence[str]
    keys: Sequence[str]
    rows: list[dict[str, Any]]
    right: Sequence[int] = ()
    empty: str = ""  # said instead of an empty table
    footer: Sequence[str] = ()  # text only (the JSON rows carry the same facts)
    show: Callable[[str, Any], str] | None = None  # a cell's text (default: str, '-' for None)


@dataclass
class Text:
    """Text that is already what the user reads (help, a message); its JSON is ``data``
    when there is any, else the text."""

    text: str
    data: Any = None


@dataclass
class Progs:
    progs: list[ProgInfo]


@dataclass
class ProgDetails:
    items: list[tuple[ProgInfo, Sequence[tuple[int, str]]]]  # each prog and its holders
    stats_enabled: bool | None = None


@dataclass
class Disassembly:
    prog: ProgInfo
    functions: list[Any]  # render.disasm.DisasmFunc


@dataclass
class Features:
    found: Any  # kernel.features.probe_features()


@dataclass
class Settings:
    """Settings with their values and what they do (JSON: name -> value)."""

    items: list[tuple[str, Any, str]]  # name, value, help
    format_value: Callable[[Any], str] = str


@dataclass
class EventStream:
    """Events rendered one at a time (a store of millions is never held as one string or
    one JSON document): ``text_of``/``json_of`` turn one event into its text / JSON text."""

    events: Iterable[Any]
    text_of: Callable[[Any], str]
    json_of: Callable[[Any], str]
    empty: str = "no events stored"
    one: bool = False  # a single event: its JSON is the object, not a list


@dataclass
class Multi:
    """Several records shown one after the other (JSON: a list of their JSON)."""

    parts: list[Any] = field(default_factory=list)


# text -------------------------------------------------------------------------------------------
@singledispatch
def to_text(record: Any, color: bool) -> str:
    raise TypeError(f"no text view of {type(record).__name__}")


@to_text.register
def _(record: Table, color: bool) -> str:
    if not record.rows and record.empty:
        return record.empty
    show = record.show or _cell
    out = render.table(record.headers, ([show(k, row.get(k)) for k in record.keys]
                                        for row in record.rows), color, right=record.right)
    return "\n".join([out, *record.footer])


@to_text.register
def _(record: Text, color: bool) -> str:
    return record.text


@to_text.register
def _(record: Progs, color: bool) -> str:
    return render.progs_table(record.progs, color=color)


@to_text.register
def _(record: ProgDetails, color: bool) -> str:
    return "\n\n".join(render.prog_detail(p, color=color, pids=pids,
                                          stats_enabled=record.stats_enabled)
                       for p, pids in record.items)


@to_text.register
def _(record: Disassembly, color: bool) -> str:
    from bpflbr_shell.render.disasm import render_disasm_text

    return render_disasm_text(record.functions, color=color)


@to_text.register
def _(record: Features, color: bool) -> str:
    from bpflbr_shell.kernel import features

    return features.render_features(record.found)


@to_text.register
def _(record: Settings, color: bool) -> str:
    width = max((len(name) for name, _, _ in record.items), default=0)
    return "\n".join(f"  {name.ljust(width)}  {record.format_value(value):<6}  {help_}"
                     for name, value, help_ in record.items)


@to_text.register
def _(record: Multi, color: bool) -> str:
    return "\n".join(to_text(p, color) for p in record.parts)


def _cell(key: str, value: Any) -> str:
    return "-" if value is None else str(value)


# JSON -------------------------------------------------------------------------------------------
@singledispatch
def to_json(record: Any) -> Any:
    raise TypeError(f"no JSON view of {type(record).__name__}")


@to_json.register
def _(record: Table) -> Any:
    return record.rows


@to_json.register
def _(record: Text) -> Any:
    return record.data if record.data is not None else {"text": record.text}


@to_json.register
def _(record: Progs) -> Any:
    return [render.prog_to_json(p) for p in record.progs]


@to_json.register
def _(record: ProgDetails) -> Any:
    docs = [render.prog_to_json(p, detail=True, pids=pids) for p, pids in record.items]
    return docs if len(docs) != 1 else docs[0]


@to_json.register
def _(record: Disassembly) -> Any:
    from bpflbr_shell.render.disasm import disasm_to_json

    return {"prog": render.prog_to_json(record.prog),
            "functions": disasm_to_json(record.functions)}


@to_json.register
def _(record: Features) -> Any:
    from bpflbr_shell.kernel import features

    return features.to_json(record.found)


@to_json.register
def _(record: Settings) -> Any:
    return {name: value for name, value, _ in record.items}


@to_json.register
def _(record: Multi) -> Any:
    return [to_json(p) for p in record.parts]


def dumps(doc: Any) -> str:
    """The one JSON style of whole documents (events have their own fast encoder)."""
    return json.dumps(doc, indent=2, sort_keys=True, default=str)


# the presenter ------------------------------------------------------------------------------------
def present(record: Any, out: TextIO, *, as_json: bool, color: bool) -> None:
    """Write ``record`` (None: nothing) to ``out`` as JSON or as text."""
    if record is None:
        return
    if isinstance(record, EventStream):
        _present_events(record, out, as_json, color)
        return
    if as_json:
        out.write(dumps(to_json(record)) + "\n")
        return
    text = to_text(record, color)
    if text:
        out.write(text if text.endswith("\n") else text + "\n")


def _present_events(record: EventStream, out: TextIO, as_json: bool, color: bool) -> None:
    if as_json:
        if record.one:
            for event in record.events:
                out.write(dumps(json.loads(record.json_of(event))) + "\n")
            return
        sep, n = "[\n", 0
        for event in record.events:  # written one at a time: no document built whole
            out.write(sep + record.json_of(event))
            sep, n = ",\n", n + 1
        out.write("\n]\n" if n else "[]\n")
        return
    n = 0
    for event in record.events:
        out.write(record.text_of(event) + "\n")
        n += 1
    if not n and record.empty:
        out.write(record.empty + "\n")
