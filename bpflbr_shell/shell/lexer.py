"""The one tokenizer of command lines, for the runner and the completer alike.

Words follow POSIX shell quoting as ``shlex`` does (``'...'`` literal, ``"..."`` with ``\\``
escaping ``"`` and ``\\``, a backslash outside quotes escaping any character). Outside
quotes:

- ``#`` at the start of a word starts a comment (``a#b`` is one word);
- ``|`` ends the command: the rest of the line is a shell pipeline the command's output goes
  to (drgn's and gdb's ``pipe`` convention, and the one place a shell ever runs: on the
  user's explicit request);
- ``>`` / ``>>`` send the output to a file (the next word), created 0600.

Strict lexing (the runner) raises UsageError on an open quote or a misplaced operator; lenient
lexing (the completer) reports where the cursor's word starts and whether it is still quoted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bpflbr_shell.errors import UsageError


@dataclass(frozen=True, slots=True)
class Word:
    text: str  # the value, quotes removed
    start: int  # where it starts in the line (raw)
    end: int  # one past its raw end


@dataclass(slots=True)
class Line:
    words: list[Word] = field(default_factory=list)  # the command's words
    pipe: str | None = None  # the raw pipeline after an unquoted '|'
    redirect: str | None = None  # the file after '>' or '>>'
    append: bool = False  # '>>'
    open_quote: str | None = None  # lenient: the quote still open at the end
    partial: Word | None = None  # lenient: the word the line ends in (none after a space)
    after_operator: str | None = None  # lenient: '|' or '>' when the cursor is past one

    @property
    def argv(self) -> list[str]:
        return [w.text for w in self.words]


def lex(text: str, *, strict: bool = True) -> Line:
    """Split ``text`` into a :class:`Line` (see the module docstring)."""
    out = Line()
    cur: list[str] = []
    start: int | None = None
    quote: str | None = None
    i, n = 0, len(text)
    redirect_next = False

    def finish(end: int) -> None:
        nonlocal cur, start, redirect_next
        if start is None:
            return
        word = Word("".join(cur), start, end)
        if redirect_next:
            if out.redirect is not None:
                raise UsageError("only one '>' per line", "write: CMD > FILE")
            out.redirect = word.text
            redirect_next = False
        elif out.redirect is not None:
            raise UsageError(f"'{word.text[:40]}' after the output file",
                             "write the redirection last: CMD ARGS > FILE")
        else:
            out.words.append(word)
        cur, start = [], None

    while i < n:
        ch = text[i]
        if quote is not None:
            if ch == quote:
                quote = None
            elif quote == '"' and ch == "\\" and i + 1 < n and text[i + 1] in '"\\':
                i += 1
                cur.append(text[i])
            else:
                cur.append(ch)
            i += 1
            continue
        if ch.isspace():
            finish(i)
            i += 1
            continue
        if start is None and ch == "#":
            break
        if ch == "|":
            finish(i)
            if redirect_next:
                raise UsageError("'>' needs a file name", "write: CMD > FILE")
            if out.redirect is not None:
                raise UsageError("'>' and '|' on one line", "use one: CMD > FILE or CMD | PIPE")
            out.pipe = text[i + 1:].strip()
            if strict and not out.pipe:
                raise UsageError("'|' needs a command after it", "e.g. show progs | wc -l")
            if not strict:
                out.after_operator = "|"
            return out
        if ch == ">":
            finish(i)
            if redirect_next or out.redirect is not None:
                raise UsageError("only one '>' per line", "write: CMD > FILE")
            out.append = text.startswith(">>", i)
            i += 2 if out.append else 1
            redirect_next = True
            continue
        if start is None:
            start = i
        if ch in "'\"":
            quote = ch
        elif ch == "\\":
            if i + 1 < n:
                i += 1
                cur.append(text[i])
            elif strict:
                raise UsageError("the line ends in a backslash", "remove it or quote it")
        else:
            cur.append(ch)
        i += 1
    if quote is not None:
        if strict:
            raise UsageError(f"no closing quotation ({quote})", "check the quotes")
        out.open_quote = quote
    if start is not None and not strict:  # the word being typed: not one of the words
        out.partial = Word("".join(cur), start, n)
        if redirect_next:
            out.after_operator = ">"
        return out
    finish(n)
    if redirect_next:
        if strict:
            raise UsageError("'>' needs a file name", "write: CMD > FILE")
        out.after_operator = ">"
    return out
