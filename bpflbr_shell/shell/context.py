"""What every command receives: output, settings, the lazily opened kernel view, session state.

The kernel view is created on first use by a factory installed at start-up
(:func:`set_kernel_factory`), so importing the shell, ``--help`` and offline use never touch
``bpf(2)``, BCC or drgn.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from bpflbr_shell.errors import FeatureError, UsageError
from bpflbr_shell.render.text import SGR, safe_line

if TYPE_CHECKING:
    from bpflbr_shell.kernel.view import KernelView
    from bpflbr_shell.shell.registry import Registry

#: ``factory(ctx) -> kernel view``; called once, on the first ``ctx.kernel`` access.
KernelFactory = Callable[["Context"], "KernelView"]
#: Reads one more input line for a command that takes a block (``python ... end``).
#: Gets a continuation prompt, returns the line without newline, or None at end of input.
LineReader = Callable[[str], "str | None"]

_kernel_factory: KernelFactory | None = None
#: error lines longer than this are cut in the middle (they echo user input)
MAX_MESSAGE = 600


def set_kernel_factory(factory: KernelFactory | None) -> None:
    """Install the process-wide kernel view factory (cli does this at start-up)."""
    global _kernel_factory
    _kernel_factory = factory


# -- settings ------------------------------------------------------------------------------

_TRUE = {"on", "true", "yes", "1", "enable"}
_FALSE = {"off", "false", "no", "0", "disable"}


def parse_bool(text: str) -> bool:
    low = text.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError("one of: on, off")


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


@dataclass(frozen=True)
class Setting:
    """One ``set NAME VALUE`` knob: how to parse it and what it means."""

    name: str
    default: Any
    help: str
    parse: Callable[[str], Any] = str
    choices: tuple[str, ...] = ()
    # what completion offers when the value is not one of ``choices`` (a list's items)
    values: tuple[str, ...] = ()

    def completions(self) -> tuple[str, ...]:
        """Values to offer after ``set NAME``."""
        if self.choices:
            return self.choices
        if self.parse is parse_bool:
            return ("on", "off")
        return self.values

    def convert(self, text: str) -> Any:
        if self.choices and text not in self.choices:
            raise UsageError(f"invalid value {text!r} for {self.name}",
                             f"one of: {', '.join(self.choices)}")
        try:
            return self.parse(text)
        except ValueError as exc:
            raise UsageError(f"invalid value {text!r} for {self.name}", str(exc)) from None


#: Known settings. Other modules add theirs with :func:`register_setting` at import time.
SETTINGS: dict[str, Setting] = {}


#: other spellings ``set``/``show settings`` accept
SETTING_ALIASES = {"colour": "color"}


def register_setting(name: str, default: Any, help: str, parse: Callable[[str], Any] = str,
                     choices: tuple[str, ...] = (), values: tuple[str, ...] = ()) -> Setting:
    """Declare a setting (``lbr-trim``, ...); idempotent so module reloads are harmless."""
    setting = Setting(name, default, help, parse, choices, values)
    SETTINGS[name] = setting
    return setting


register_setting("debug", False, "print tracebacks for internal errors", parse_bool)
register_setting("color", "auto", "colour output: auto (only on a terminal), on, off",
                 choices=("auto", "on", "off"))


@dataclass
class Settings:
    """Current values; anything not set explicitly reads its declared default."""

    values: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        if name in SETTINGS:
            return SETTINGS[name].default
        raise KeyError(name)

    @staticmethod
    def lookup(name: str) -> Setting:
        """The declared setting, or a UsageError suggesting the closest name."""
        setting = SETTINGS.get(SETTING_ALIASES.get(name, name))
        if setting is None:
            import difflib

            close = difflib.get_close_matches(name, list(SETTINGS), n=1)
            fix = f"did you mean '{close[0]}'?" if close else "see 'show settings'"
            raise UsageError(f"unknown setting '{name}'", fix)
        return setting

    def set(self, name: str, text: str) -> Any:
        setting = self.lookup(name)
        value = setting.convert(text)
        self.values[setting.name] = value
        return value

    def items(self) -> list[tuple[str, Any]]:
        return [(name, self[name]) for name in sorted(SETTINGS)]


# -- colour --------------------------------------------------------------------------------

_SGR = SGR  # render.text owns the colour table


# -- the context ---------------------------------------------------------------------------


@dataclass
class Context:
    """Per-shell state handed to every command as ``ctx``.

    ``out``/``err`` default to whatever ``sys.stdout``/``sys.stderr`` are *at write time*, so
    the REPL's ``patch_stdout()`` proxies are honoured without re-creating the context.
    """

    registry: Registry
    out: TextIO | None = None
    err: TextIO | None = None
    settings: Settings = field(default_factory=Settings)
    kernel_factory: KernelFactory | None = None
    interactive: bool = False
    #: Free-form slots for other layers (session, events, recordings) to hang state on.
    state: dict[str, Any] = field(default_factory=dict)
    exit_requested: bool = False
    exit_code: int = 0
    source_depth: int = 0
    #: (script, line) of the command running now, for code that reports where it came from
    location: tuple[str, int] | None = None
    _kernel: KernelView | None = field(default=None, repr=False)
    _readers: list[LineReader] = field(default_factory=list, repr=False)

    # -- streams ---------------------------------------------------------------------------

    @property
    def stdout(self) -> TextIO:
        return self.out if self.out is not None else sys.stdout

    @property
    def stderr(self) -> TextIO:
        return self.err if self.err is not None else sys.stderr

    def use_color(self, stream: TextIO | None = None) -> bool:
        """Colour only on a terminal unless ``set color on|off`` says otherwise."""
        mode = self.settings["color"]
        if mode != "auto":
            return mode == "on"
        stream = stream if stream is not None else self.stdout
        try:
            return bool(stream.isatty())
        except (AttributeError, ValueError):
            return False

    def style(self, text: str, *styles: str, stream: TextIO | None = None) -> str:
        """``text`` wrapped in ANSI colour codes when the stream gets colour, else unchanged."""
        if not styles or not self.use_color(stream):
            return text
        codes = ";".join(_SGR[s] for s in styles)
        return f"\x1b[{codes}m{text}\x1b[0m"

    def write(self, text: str) -> None:
        self.stdout.write(text)

    def print(self, *parts: Any, sep: str = " ", end: str = "\n") -> None:
        self.stdout.write(sep.join(str(p) for p in parts) + end)

    def status(self, message: str) -> None:
        """A line about the run, not its output ("trace 1: ...", "stopped: N events"): on
        stderr, so ``--json`` / ``| jq`` see only data on stdout."""
        self.stderr.write(safe_line(message) + "\n")

    def warn(self, message: str) -> None:
        self.stderr.write(f"{self.style('warning:', 'yellow', stream=self.stderr)} "
                          f"{safe_line(message)}\n")

    def error_line(self, message: str, label: str = "error") -> None:
        """One line, whatever the message holds: user input and traced-world names echoed in
        it are escaped (a newline cannot forge a second line, an ESC cannot reach the
        terminal) and a huge echo is cut."""
        text = safe_line(message)
        if len(text) > MAX_MESSAGE:
            text = text[:MAX_MESSAGE - 20] + " ... " + text[-15:]
        self.stderr.write(f"{self.style(label + ':', 'red', 'bold', stream=self.stderr)} "
                          f"{text}\n")

    def caret(self, text: str, column: int) -> None:
        """``text`` (escaped, one line) with a ``^`` under ``column``: where an error is."""
        shown = safe_line(text)[:MAX_MESSAGE]
        at = len(safe_line(text[:column]))
        self.stderr.write(f"  {shown}\n  {' ' * min(at, len(shown))}^\n")

    def flush(self) -> None:
        for stream in (self.stdout, self.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass

    # -- the kernel view -------------------------------------------------------------------

    @property
    def kernel(self) -> KernelView:
        """The kernel view, opened on first use via the installed factory."""
        if self._kernel is None:
            factory = self.kernel_factory or _kernel_factory
            if factory is None:
                raise FeatureError("no kernel view is available in this session",
                                   "the kernel view factory was not installed")
            self._kernel = factory(self)
        return self._kernel

    @property
    def has_kernel(self) -> bool:
        """True once the kernel view exists (lets cheap paths avoid opening it)."""
        return self._kernel is not None

    def close(self) -> None:
        """Release the kernel view if it holds resources (fds, drgn program)."""
        kernel, self._kernel = self._kernel, None
        close = getattr(kernel, "close", None)
        if callable(close):
            close()

    # -- reading blocks (python ... end, define ...) ---------------------------------------

    def read_line(self, prompt: str = "> ") -> str | None:
        """Next input line from wherever the current command came from (script, stdin, REPL).

        None at end of input or when nothing can supply more lines (a ``-c`` command).
        """
        if not self._readers:
            return None
        return self._readers[-1](prompt)

    def push_reader(self, reader: LineReader) -> None:
        self._readers.append(reader)

    def pop_reader(self) -> None:
        self._readers.pop()
