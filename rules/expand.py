"""rules.expand — procmail's run-time variable expansion and word splitting.

What it does
    The parser keeps assignment values, folder names, program lines, forward addresses
    and ``* $`` conditions exactly as written.  This module turns that raw text into what
    procmail 3.22 would use, the way procmail's own sh-subset reader (``readparse``) does:

    * ``expand_value(raw, ...)``  — the value of ``NAME=raw``: quotes removed, nothing
      split; reading stops at the first unquoted blank or newline (behaviour 15: the rest
      is another statement, which the parser handles) and a ``#`` at the start is a
      comment.
    * ``expand_words(raw, ...)``  — an action line (folders, program argv when the line
      has no SHELLMETAS, ``!`` addresses): unquoted expansions are split on blanks
      (space, tab, newline; IFS is never used), quotes removed, and the last ``"$@"``
      that ends a word is replaced by the positional arguments (behaviour 16, 18, 35).
    * ``expand_quoted(raw, ...)`` — a ``* $ cond`` line: procmail puts a ``"`` in place of
      the ``$`` and reads the rest as if inside double quotes (a later ``"`` does close
      that quote); unquoted blanks collapse to one space (behaviour 9).  Backslash-newline
      pairs and the indentation of continuation lines are squeezed out first, as
      procmail does.  Leading blanks are kept: the caller strips them before re-parsing.
    * ``regex_quote(value)`` — what ``$\\NAME`` inserts.
    * ``has_shell_metas(line, metas)`` — whether a program line goes to ``$SHELL``.

Substitutions (procmailrc(5) BUGS, behaviour 16), all checked against the real procmail
by tests/rules/test_expand_oracle.py:
    ``$NAME ${NAME}`` (names are ``[A-Za-z0-9_]``), ``${N:-w} ${N-w} ${N:+w} ${N+w}`` (the
    word ``w`` is read with the surrounding quoting: unquoted, ``${U:-"a b"}`` is one word
    ``a b``; inside double quotes the inner quotes stay literal), ``$1``..``$9`` (one digit
    only: ``$12`` is ``$1`` then ``2``; ``$0`` is procmail's argv0), ``$\\NAME`` (regex-quoted,
    never split), ``$#``, ``$$``, ``$?``, ``$=`` (never split), ``$_``, ``$-`` (split when
    unquoted; ``$_X`` is ``$_`` then ``X``, but ``${_}`` and ``$\\_`` are empty), ``"$@"``.
    Unquoted ``$@`` gives ``@``; a ``$`` before any other character, or at the end, stays
    literal.  Backquotes run
    through the ``backquote`` callback with the command text after procmail's backslash
    processing; inside double quotes a ``"`` ends an unterminated backquote (and closes the
    double quote too, but only when the command holds a ``shellmetas`` character: one
    more procmail quirk, which is why the expand functions take an optional
    ``shellmetas``, default procmail's ``&|<>~;?*[``).

Guarantees
    Pure functions of (raw, lookup results, backquote results); no regexes, no imports
    beyond the standard library, one pass over the text.  Text is ``str`` holding latin-1-decoded
    bytes.  Lookups are skipped (and backquotes not run) inside a ``${...}`` word that is
    not used, as procmail does.

Errors
    ``rules.errors.ExpansionError`` for every case procmail logs as ``Bad substitution of
    "NAME"``: ``${`` not followed by a name and one of ``} :- :+ - +``, ``${12}`` (more than
    one digit), and an unterminated ``${NAME...``.  procmail drops the offending character
    and reads on, producing a mangled value; postroom refuses the whole expansion instead
    (README, differences).  An *unused* ``${N-w`` word that is never closed raises it too:
    procmail accepts it silently but leaves its reader skipping, so a later ``${...}``
    in the same run jumps back into stale buffer text.  A *used* unclosed word simply
    runs to the end of the text, as in procmail.  An unterminated quote is accepted like
    procmail does (it logs ``Unexpected EOL``; logged here at INFO).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from .errors import ExpansionError

__all__ = [
    "DEFAULT_SHELLMETAS",
    "Backquote",
    "Lookup",
    "PLAIN_UNDERSCORE",
    "expand_quoted",
    "expand_value",
    "expand_words",
    "has_shell_metas",
    "regex_quote",
]

log = logging.getLogger(__name__)

Lookup = Callable[[str], "str | None"]
"""Variable lookup: returns None when unset. Names include ordinary variables and the
specials "1".."9", "#", "$" (pid), "_" (current rcfile), "-" (LASTFOLDER), "=" (last score).
Also asked: "0" (procmail's argv0), "?" (last program's exit code) and PLAIN_UNDERSCORE."""

PLAIN_UNDERSCORE = "{_}"
"""The name a Lookup is asked for the plain variable ``_`` (``${_}``, ``$\\_``): not
the rcfile, which the bare ``$_`` is."""

Backquote = Callable[[str], str]
"""Runs a command (mail on stdin) and returns its stdout with ALL trailing newlines removed.

The argument is the command text between the backquotes after backslash processing.
procmail runs it with ``$SHELL $SHELLFLAGS`` when it contains a SHELLMETAS character;
otherwise it splits and expands it itself (``expand_words``) and execs the words."""

# The characters procmail's ``$\\NAME`` escapes (goodies.c); note ``]{}`` are not among them.
_REGEX_SPECIALS = frozenset("(|)*?+.^$[\\")
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_DIGITS = frozenset("0123456789")
_NAME_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_BLANKS = " \t\n"  # what unquoted expansions are split on (procmailrc(5) BUGS)
# Raw text without any of these expands to itself (after blank handling).
_PLAIN_UNSAFE = frozenset("$\"'`\\#\n}")
_UNSAFE_BUT_DOLLAR = _PLAIN_UNSAFE - {"$"}
_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

DEFAULT_SHELLMETAS = "&|<>~;?*["
"""procmail's default ``$SHELLMETAS`` (procmailrc(5))."""

# Reader states, in procmail's order: comparisons like ``got <= _NORMAL`` matter.
_NOTHING_YET = -1
_SKIPPING = 0
_NORMAL = 1
_DQUOTED = 2
_SQUOTED = 3

# Reading modes (procmail's ``sarg``).
_WORDS = 0   # split into words like sh
_VALUE = 1   # one assignment value: stop at the first unquoted blank
_QUOTED = 2  # condition text: blanks kept as single spaces, nothing split


def regex_quote(value: str) -> str:
    """What ``$\\NAME`` inserts: every regex character backslashed, with ``()`` in front.

    The ``()`` protects a leading ``*`` or ``+`` from being taken as an operator on what
    precedes it (procmailrc(5), behaviour 9).
    """
    if not _REGEX_SPECIALS.intersection(value):
        return "()" + value
    return "()" + "".join("\\" + c if c in _REGEX_SPECIALS else c for c in value)


def has_shell_metas(line: str, metas: str) -> bool:
    """True when ``line`` holds any character of ``metas`` (``$SHELLMETAS``), so that
    procmail hands the line to ``$SHELL $SHELLFLAGS`` unexpanded (behaviour 18)."""
    if not metas:
        return False
    return any(c in line for c in metas)


def expand_value(
    raw: str, lookup: Lookup, backquote: Backquote, *, shellmetas: str = DEFAULT_SHELLMETAS,
    on_eol: Callable[[], None] | None = None,
) -> str:
    """The value of ``NAME=raw`` (as sh assigns: quotes removed, no word splitting).
    ``on_eol`` is called when ``raw`` ends inside a quote (procmail logs
    ``Unexpected EOL`` and goes on with what it read)."""
    if " " not in raw and "\t" not in raw:
        if not _PLAIN_UNSAFE.intersection(raw):
            return raw
        simple = _substitute_names(raw, lookup)
        if simple is not None:
            return simple
    reader = _Reader(raw, _VALUE, lookup, backquote, shellmetas)
    reader.on_eol = on_eol
    reader.run()
    return reader.text()


def expand_words(
    raw: str,
    lookup: Lookup,
    backquote: Backquote,
    positional: Sequence[str] = (),
    *,
    shellmetas: str = DEFAULT_SHELLMETAS,
    on_eol: Callable[[], None] | None = None,
    folder: bool = False,
    shown: list[str] | None = None,
) -> list[str]:
    """Action-line words (folders, program argv when no SHELLMETAS, forward addresses):
    unquoted expansions are split on blanks, quotes removed, ``"$@"`` expands to separate
    words.

    As in procmail, an empty line (or one whose only word expands to nothing) gives one
    empty word, and only the last ``"$@"`` counts: the word it ends (``"$@"``, ``x"$@"``,
    ``"$@"''``, but not ``"$@"x``) is replaced by ``positional``; with no positional
    arguments that word stays (often as ``""``).

    ``folder``: the line is a folder action.  procmail first reads such a line as a
    possible ``NAME=`` (its ``gobenv``) and, when a name is followed by anything but a
    blank or ``=``, hands the rest to its reader as if a word started there: ``box#x``
    is the folder ``box`` (``#`` starts a comment), ``box\\#x`` is ``box#x``, and the
    leading blanks of an unquoted ``$VAR`` or backquote right after the name are dropped
    without ending the word (``box$A`` with A=" x" is ``boxx``).  All checked against
    procmail by the differential cases ``folder-after-name-*``.

    ``shown``: filled with the words as procmail's buffer holds them, ``"$@"`` as the
    empty word it leaves there (the arguments are put in only when the program starts):
    what LASTFOLDER and the log show of a program or forward line.
    """
    if not _PLAIN_UNSAFE.intersection(raw):
        words = [w for w in raw.replace("\t", " ").split(" ") if w] or [""]
        if shown is not None:
            shown.extend(words)
        return words
    if " " not in raw and "\t" not in raw:
        simple = _substitute_names(raw, lookup)   # None for any "#", "\\" or "`"
        if simple is not None and not any(c in simple for c in _BLANKS):
            if shown is not None:
                shown.append(simple)
            return [simple]
    name = _leading_name(raw) if folder else 0
    if name:
        reader = _Reader(raw[name:], _WORDS, lookup, backquote, shellmetas)
        reader.cur = list(raw[:name])      # the name, read; the state as at a word's start
    else:
        reader = _Reader(raw, _WORDS, lookup, backquote, shellmetas)
    reader.on_eol = on_eol
    reader.run()
    words = reader.words
    if shown is not None:
        shown.extend(words)
    if reader.all_args is not None and positional:
        index, length = reader.all_args
        if index < len(words) and len(words[index]) == length:
            words[index : index + 1] = list(positional)
    return words


def _leading_name(raw: str) -> int:
    """Where procmail's reader starts afresh on a folder line: after the variable-like
    name that begins ``raw`` (and the ``=`` right after it, if any) when a character other
    than a blank follows; 0 when it reads the line from its start as usual.  After a
    blank both readings agree, so those lines are read as usual."""
    if not raw or raw[0] not in _NAME_START:
        return 0
    end = 1
    while end < len(raw) and raw[end] in _NAME_CHARS:
        end += 1
    if end < len(raw) and raw[end] == "=":
        end += 1
    return end if end < len(raw) and raw[end] not in _BLANKS else 0


def expand_quoted(
    raw: str, lookup: Lookup, backquote: Backquote, *, shellmetas: str = DEFAULT_SHELLMETAS
) -> str:
    """Expansion as inside double quotes (used for ``* $ ...`` conditions before re-parsing)."""
    text = _squeeze(raw)
    if not _PLAIN_UNSAFE.intersection(text):
        return text
    reader = _Reader('"' + text, _QUOTED, lookup, backquote, shellmetas)
    reader.run()
    return reader.text()


def _substitute_names(raw: str, lookup: Lookup) -> str | None:
    """``raw`` with each ``$NAME`` (a name starting with a letter) replaced by its value,
    or None when ``raw`` needs the reader: any other special character, or a ``$`` not
    followed by a letter (``$$``, ``${``, ``$1``, ``$_``, ``$@``, ``$\\``).

    The common folder and value forms (``$MAILDIR/inbox``, ``lists.$MATCH``) give the
    reader's result without its per-character state machine; the callers keep the
    cases where blanks would be split or ended on.  tests/rules/test_expand.py checks
    this against the reader on generated text.
    """
    if _UNSAFE_BUT_DOLLAR.intersection(raw):
        return None
    out: list[str] = []
    pos, n = 0, len(raw)
    while True:
        dollar = raw.find("$", pos)
        if dollar < 0:
            out.append(raw[pos:])
            return "".join(out)
        out.append(raw[pos:dollar])
        end = dollar + 1
        if end >= n or raw[end] not in _LETTERS:
            return None
        end += 1
        while end < n and raw[end] in _NAME_CHARS:
            end += 1
        out.append(lookup(raw[dollar + 1:end]) or "")
        pos = end


def _squeeze(text: str) -> str:
    """Drop backslash-newline pairs and the blanks that start continuation lines, as
    procmail does to a condition before expanding it (misc.c ``squeeze``)."""
    if "\n" not in text:
        return text
    out: list[str] = []
    after_newline = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] == "\n":
            i += 2
            after_newline = True
            continue
        if c == "\n":
            after_newline = True
        elif c in " \t" and after_newline:
            i += 1
            continue
        else:
            after_newline = False
        out.append(c)
        i += 1
    return "".join(out)


class _Reader:
    """One pass of procmail's sh-subset reader over ``raw``.

    Output is kept as completed ``words`` plus the word in progress (``cur``); in the
    _VALUE and _QUOTED modes only ``cur`` is used.  ``all_args`` records where the last
    ``"$@"`` was seen as (word index, length of that word so far).
    """

    __slots__ = (
        "src", "pos", "mode", "lookup", "backquote", "got", "words", "cur",
        "brace", "qbrace", "skip", "all_args", "metas", "on_eol",
    )

    def __init__(
        self, src: str, mode: int, lookup: Lookup, backquote: Backquote, metas: str
    ) -> None:
        self.src = src
        self.metas = metas
        self.pos = 0
        self.mode = mode
        self.lookup = lookup
        self.backquote = backquote
        self.got = _NOTHING_YET
        self.words: list[str] = []
        self.cur: list[str] = []
        self.brace = 0          # ${...} words currently open
        self.qbrace = 0         # self.brace when the current double quote opened
        # While an unused ${N-w} word is being read: (brace level, number of words, the
        # word in progress and its length, the variable's value, got) to return to.
        self.skip: tuple[int, int, list[str], int, str, int] | None = None
        self.all_args: tuple[int, int] | None = None
        self.on_eol: Callable[[], None] | None = None   # the text ended inside a quote

    # -- input -------------------------------------------------------------------------

    def _next(self) -> str:
        """The next character, or "" at the end (procmail's EOF)."""
        pos = self.pos
        if pos < len(self.src):
            self.pos = pos + 1
            return self.src[pos]
        return ""

    # -- output ------------------------------------------------------------------------

    def text(self) -> str:
        return "".join(self.cur)

    def _emit(self, c: str) -> None:
        """A literal character (procmail's ``nodelim``)."""
        self.cur.append(c)
        if self.got <= _SKIPPING:
            self.got = _NORMAL

    def _end_word(self) -> None:
        self.words.append("".join(self.cur))
        self.cur = []

    def _insert(self, value: str) -> None:
        """Insert an expansion: split it unless quoted or not in word mode."""
        if self.got == _DQUOTED or self.mode != _WORDS:
            self.cur.append(value)
            if self.got <= _SKIPPING:
                self.got = _NORMAL
            return
        for c in value:
            if c in _BLANKS:
                if self.got > _SKIPPING:
                    self._end_word()
                    self.got = _SKIPPING
            else:
                self.cur.append(c)
                self.got = _NORMAL

    def _get(self, name: str) -> str | None:
        if self.skip is not None:
            return None  # procmail does not look anything up in an unused ${N-w} word
        if not name:
            return None
        if name == "_":
            # ${_} and $\_ read the plain variable "_" (an rc may assign it); only the
            # bare $_ means the rcfile (the name "_" of the Lookup interface)
            return self.lookup(PLAIN_UNDERSCORE)
        if name[0] in _DIGITS:
            name = name[0]  # procmail looks at the first digit only ($\12 is $\1)
        return self.lookup(name)

    # -- the reader --------------------------------------------------------------------

    def run(self) -> None:
        c = self._next()
        while True:
            c = self._step(c)
            if c is None:
                break
        if self.skip is not None:
            raise ExpansionError(self.src)
        if self.mode == _WORDS:
            if self.got != _SKIPPING:
                self._end_word()

    def _finish_eof(self) -> None:
        if self.mode != _QUOTED and self.got > _NORMAL:
            log.info("Unexpected EOL in %r", self.src)
            if self.on_eol is not None:
                self.on_eol()

    def _step(self, c: str) -> str | None:
        """Handle character ``c``; return the next character to handle, or None when done."""
        got = self.got
        if c == "":
            self._finish_eof()
            return None
        if c == "\\":
            if got == _SQUOTED:
                self._emit(c)
                return self._next()
            return self._backslash(self._next())
        if c == "`":
            if got == _SQUOTED:
                self._emit(c)
                return self._next()
            return self._backquote()
        if c == '"':
            if got == _DQUOTED:
                if self.qbrace < self.brace:  # a '"' inside ${N-w} inside "..."
                    self._emit(c)
                else:
                    self.got = _NORMAL
            elif got == _SQUOTED:
                self._emit(c)
            else:
                self.qbrace = self.brace
                self.got = _DQUOTED
            return self._next()
        if c == "'":
            if got == _DQUOTED:
                self._emit(c)
            elif got == _SQUOTED:
                self.got = _NORMAL
            else:
                self.got = _SQUOTED
            return self._next()
        if c == "}":
            if (got <= _NORMAL and self.brace) or (got == _DQUOTED and self.brace > self.qbrace):
                self.brace -= 1
                skip = self.skip
                if skip is not None and self.brace == skip[0]:
                    # End of an unused ${N-w} word: drop what it produced, insert N's value.
                    self.skip = None
                    _, nwords, cur, length, value, sgot = skip
                    del self.words[nwords:]
                    del cur[length:]  # _end_word never changes a finished list
                    self.cur = cur
                    self.got = sgot
                    self._insert(value)
            else:
                self._emit(c)
            return self._next()
        if c == "#":
            if got > _SKIPPING:
                self._emit(c)
                return self._next()
            return None  # a comment runs to the end of the line (behaviour 15)
        if c == "$":
            if got == _SQUOTED:
                self._emit(c)
                return self._next()
            return self._dollar()
        if c == " " or c == "\t":
            if got == _NORMAL:
                if self.mode == _VALUE:
                    return None
                self.got = _SKIPPING
                if self.mode == _WORDS:
                    self._end_word()
                else:
                    self.cur.append(" ")
                return self._next()
            if got <= _SKIPPING:
                return self._next()
            self._emit(c)
            return self._next()
        if c == "\n":
            if got <= _NORMAL:
                return None
            self._emit(c)
            return self._next()
        self._emit(c)
        return self._next()

    def _backslash(self, c: str) -> str | None:
        """A backslash outside single quotes, followed by ``c`` (goodies.c ``Quoted``)."""
        got = self.got
        if c == "":
            # the text ends right after the backslash (the rc file's last byte):
            # procmail's Quoted reads EOF there and says "Unexpected EOL" in any state
            if self.mode != _QUOTED and self.got <= _NORMAL:
                log.info("Unexpected EOL in %r", self.src)
                if self.on_eol is not None:
                    self.on_eol()
            self._finish_eof()
            return None
        if c == "\n":
            return self._next()  # line continuation
        literal_alone: bool
        if c == "#":
            literal_alone = got <= _SKIPPING
        elif c in " \t'":
            literal_alone = got != _DQUOTED
        elif c in '"\\$`':
            literal_alone = True
        elif c == "}":
            literal_alone = got <= _NORMAL or self.brace > self.qbrace
        else:
            literal_alone = got <= _NORMAL
        if not literal_alone:
            self.cur.append("\\")
        self._emit(c)
        return self._next()

    def _backquote(self) -> str | None:
        """Read a backquoted command, run it and insert its output."""
        in_dq = self.got == _DQUOTED
        cmd: list[str] = []
        ended_by_quote = False
        while True:
            c = self._next()
            if c == "" or c == "`":
                break
            if c == '"' and in_dq:
                ended_by_quote = True  # missing closing backquote: the '"' ends both
                break
            if c == "\\":
                c2 = self._next()
                if c2 == "":
                    log.info("Unexpected EOL in %r", self.src)
                    break
                if c2 == "\n":
                    continue
                if c2 in "\\$`" or (c2 == '"' and in_dq):
                    cmd.append(c2)
                else:
                    cmd.append("\\")
                    cmd.append(c2)
                continue
            cmd.append(c)
        command = "".join(cmd)
        if self.skip is not None:
            output = ""
        else:
            output = self.backquote(command)
            if ended_by_quote and not has_shell_metas(command, self.metas):
                # procmail re-reads a command without SHELLMETAS with a nested call of its
                # reader, which overwrites the static that remembered the '"': the double
                # quote then stays open (goodies.c; found by differential fuzzing).
                ended_by_quote = False
        if not in_dq:
            self._insert(output)
        else:
            self.cur.append(output)
            if ended_by_quote:
                self.got = _NORMAL
        return self._next()

    def _dollar(self) -> str | None:
        """A ``$`` outside single quotes: substitute, or keep it literally."""
        c = self._next()
        if c == "":
            self.cur.append("$")  # procmail: no "Unexpected EOL" after a final '$'
            self.got = _NORMAL
            return None
        if c == "@":
            if self.got != _DQUOTED:
                return "@"  # procmail drops the '$' of an unquoted $@
            if self.skip is None:
                self.all_args = (len(self.words), sum(map(len, self.cur)))
            return self._next()
        if c == "{":
            return self._brace()
        if c in "$?#=":
            value = self.lookup(c) if self.skip is None else None
            self.cur.append(value or "")
            if self.got <= _SKIPPING:
                self.got = _NORMAL
            return self._next()
        if c in "_-" or c in _DIGITS:
            value = self.lookup(c) if self.skip is None else None
            self._insert(value or "")
            return self._next()
        if c == "\\":
            c2 = self._next()
            if c2 in _NAME_CHARS and c2:
                name, nxt = self._name(c2)
                self.cur.append(regex_quote(self._get(name) or ""))
                if self.got <= _SKIPPING:
                    self.got = _NORMAL
                return nxt
            self._emit("$")
            return self._backslash(c2)
        if c in _NAME_CHARS:
            name, nxt = self._name(c)
            self._insert(self._get(name) or "")
            return nxt
        self._emit("$")
        return c

    def _name(self, first: str) -> tuple[str, str]:
        """Read a variable name starting with ``first``; return it and the next character."""
        src, pos, end = self.src, self.pos, len(self.src)
        while pos < end and src[pos] in _NAME_CHARS:
            pos += 1
        name = first + src[self.pos : pos]
        self.pos = pos
        return name, self._next()

    def _brace(self) -> str | None:
        """``${NAME}``, ``${NAME:-w}``, ``${NAME-w}``, ``${NAME:+w}``, ``${NAME+w}``."""
        src, start, end = self.src, self.pos, len(self.src)
        pos = start
        while pos < end and src[pos] in _NAME_CHARS:
            pos += 1
        name = src[start:pos]
        self.pos = pos
        if name[:1] in _DIGITS and len(name) > 1:
            raise ExpansionError(name)
        op = self._next()
        if op == "}":
            self._insert(self._get(name) or "")
            return self._next()
        if op == ":":
            op2 = self._next()
            if op2 not in ("-", "+") or op2 == "":
                raise ExpansionError(name)
            value = self._get(name)
            use_word = (not value) if op2 == "-" else bool(value)
        elif op in ("-", "+") and op:
            value = self._get(name)
            use_word = (value is None) if op == "-" else (value is not None)
        else:
            raise ExpansionError(name)
        if not use_word and self.skip is None:
            self.skip = (
                self.brace, len(self.words), self.cur, len(self.cur), value or "", self.got
            )
        self.brace += 1
        return self._next()
