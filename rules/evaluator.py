"""Run a parsed rc file against one mail, as procmail 3.22 does.

What it does: walks the AST with an explicit stack of frames (rc file, INCLUDERC file,
``{ }`` block), keeps procmail's chaining state (lastcond / prevcond / lastsucc, saved per
block), evaluates conditions (regexes on RE2, ``$`` re-parsing, ``?`` programs, sizes,
``VAR ??``, weighted scoring per procmailsc(5)) and hands every action to ``Effects``.

Why a frame stack rather than recursion: ``c`` on a block makes procmail fork a clone
that runs the block and, if it does not deliver there, *the rest of the rc file too*
(PROCMAIL-BEHAVIOUR 43).  With explicit frames the clone is a copy of the stack, run to
its end without forking the (possibly in-process, long-running) caller.

Guarantees: the evaluator never writes a file or starts a process itself; it returns a
``RunResult`` (how processing ended, plus a per-recipe trace) instead of exiting.
Errors in the rc (bad regex, bad substitution) are logged the way procmail logs them and
processing continues; only a bug escapes as an exception (the caller maps that to 75).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from . import expand, numvars, prefilter
from .areas import search_area
from .ast import (Assignment, Block, Condition, ExpandTest, Flag, Folder,
                  Forward, Item, Pipe, ProgramTest, RcFile, Recipe, RegexTest, SizeTest,
                  Skipped, Span, VarTest, Weight)
from .condparse import parse_condition, size_operand
from .effects import Command, Effects, Part, ProgramResult
from .envint import renvint
from .errors import ExpansionError, RcSyntaxError, RegexError
from .macros import expand_macros
from .message import Message, skip_from_line
from .regex import compile_regex, padded
from .trace import ConditionTrace, RecipeTrace

MAX32 = 2147483647.0
MIN32 = -2147483647.0
_LONG_MIN = -9223372036854775808
MAX_INCLUDE_DEPTH = 32   # procmail is limited only by memory; a loop must not be
_MEMO_MAX = 4096         # entries in the per-AST-object memos below (then cleared)


class End(enum.Enum):
    """How processing of an rc file ended."""

    FELL_OFF = "fell-off"      # reached the end: the caller delivers to $DEFAULT
    DELIVERED = "delivered"    # a delivering recipe succeeded
    HOST = "host"              # HOST did not match: try the next rc file, else exit 0


@dataclass(slots=True)
class _Frame:
    items: tuple[Item, ...]
    kind: str                  # "rc" | "include" | "block"
    path: str = ""
    index: int = 0
    saved: tuple[bool, bool] | None = None   # (prevcond, lastcond) restored at "}"
    # File frames: procmail's own log lines for this file's syntax problems, in source
    # order, logged as execution passes them (procmail reads and runs in one pass).
    diags: list[tuple[int, int, str, int]] = field(default_factory=list)
    # File frames: a block of this file without its "}" was entered.  procmail's poprc()
    # says "Missing closing brace" once at the file's end then, whatever the nesting,
    # and nothing for an unclosed block it only skipped.
    unclosed: bool = False


# The diagnostics procmail itself logs, as the start of the parser's message.
_PROCMAIL_DIAG = re.compile(r'^(Skipped "[^"\n]*"|Missing closing brace|Closing brace unexpected'
                            r'|Missing action|Incomplete recipe|Extraneous [a-z-]+(?: flag)? ignored)')
# logged as procmail reads the recipe, in a block it skips too (its conditions() runs)
_PROCMAIL_DIAG_ALWAYS = re.compile(r'^(Conflicting [a-z-]+ suppressed)')
# a condition's leftovers (``* > 10 x``) are logged as procmail tests it: never in a
# block it skips.  Every other line above it logs as it reads, skipping or not.
_EVALUATION_ONLY = "Skipped "


_DIAGS: dict[int, tuple[RcFile, tuple[tuple[int, int, str, int], ...]]] = {}


def _file_diags(rc: RcFile) -> list[tuple[int, int, str, int]]:
    """procmail's own log lines for ``rc``, latest first (a fresh list: it is consumed).
    Computed once per RcFile object: the AST is immutable and the library API and the
    MTA's workers run the same cached object for every mail."""
    hit = _DIAGS.get(id(rc))
    if hit is not None and hit[0] is rc:
        return list(hit[1])
    out = _compute_diags(rc)
    if len(_DIAGS) >= _MEMO_MAX:
        _DIAGS.clear()
    _DIAGS[id(rc)] = (rc, tuple(out))
    return out


def _compute_diags(rc: RcFile) -> list[tuple[int, int, str, int]]:
    """(line, col, message, 0) for procmail's own syntax lines; (line, col, message, -1)
    for those it logs in a block it skips too; (line, col, "", width) for each condition
    long enough to exceed some LINEBUF, which procmail checks as it reads the line (in a
    block it skips too), against LINEBUF as it stands then."""
    skipped_at = {(i.span.line, i.span.col) for i in _walk(rc.items) if isinstance(i, Skipped)}
    condition_lines = {c.span.line for i in _walk(rc.items) if isinstance(i, Recipe)
                       for c in i.conditions}
    out = []
    for d in rc.diagnostics:
        m = _PROCMAIL_DIAG.match(d.message)
        if m and m.group(1) == "Missing closing brace":
            continue          # logged at run time, once, when an open block was entered
        if m and (d.span.line, d.span.col) not in skipped_at:
            # procmail reads a block it does not enter item by item (skiprc): what it
            # logs as it reads is logged there too (-1), a condition's test is not run
            evaluated = m.group(1).startswith(_EVALUATION_ONLY) and d.span.line in condition_lines
            out.append((d.span.line, d.span.col, m.group(1), 0 if evaluated else -1))
        elif m := _PROCMAIL_DIAG_ALWAYS.match(d.message):
            out.append((d.span.line, d.span.col, m.group(1), -1))
    out.extend((c.span.line, c.span.col, "", c.width) for i in _walk(rc.items)
               if isinstance(i, Recipe) for c in i.conditions if c.width)
    out.extend((i.action.span.line, i.action.span.col, "", i.action.width)
               for i in _walk(rc.items)
               if isinstance(i, Recipe) and isinstance(i.action, Pipe) and i.action.width)
    out.sort(key=lambda d: d[:2])   # stable: several at one place keep their order
    out.reverse()                   # popped from the end, earliest first
    return out


_SKIPPED_INSIDE: dict[int, tuple[Block, tuple[tuple[int, int, str, int], ...]]] = {}


def _skipped_inside(block: Block) -> tuple[tuple[int, int, str, int], ...]:
    """The Skipped lines (words that are no item) of ``block`` and its blocks, as
    diagnostic entries procmail logs while it skips the block.  Made once per block:
    a block not entered is skipped at every mail, and the AST never changes."""
    hit = _SKIPPED_INSIDE.get(id(block))
    if hit is not None and hit[0] is block:
        return hit[1]
    found = tuple((i.span.line, i.span.col, f'Skipped "{i.text}"', -1)
                  for i in _walk(block.items) if isinstance(i, Skipped))
    if len(_SKIPPED_INSIDE) >= _MEMO_MAX:
        _SKIPPED_INSIDE.clear()
    _SKIPPED_INSIDE[id(block)] = (block, found)
    return found


def _walk(items: Sequence[Item]):
    for item in items:
        yield item
        if isinstance(item, Recipe) and isinstance(item.action, Block):
            yield from _walk(item.action.items)


class _Stop(Exception):
    def __init__(self, end: End) -> None:
        self.end = end


@dataclass(slots=True)
class RunResult:
    end: End
    trace: list[RecipeTrace] = field(default_factory=list)


_SIMPLESPLIT_BLANKS = re.compile(r"[ \t\n]+")
_NAME_RUN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")     # procmail's gobenv(): alphanum


def split_sendmailflags(flags: str) -> list[str]:
    """SENDMAILFLAGS as procmail's simplesplit() leaves it in the forward's argv.

    Words are separated by space, tab and newline only (a CR or a 0xA0 byte stays in its
    word).  A value that ends in a blank, or holds nothing else, leaves one empty argument
    after its words: simplesplit() ends the last word at the blank, and the forward then
    writes one more NUL (procmail.c, the ``!`` branch).  An empty value adds nothing."""
    if not flags:
        return []
    words = [w for w in _SIMPLESPLIT_BLANKS.split(flags) if w]
    if flags[-1] in " \t\n":
        words.append("")
    return words


class Evaluator:
    """One mail's trip through the rc files.  ``variables`` is the live environment
    (procmail exports all of it to programs); the evaluator mutates it."""

    def __init__(self, effects: Effects, variables: dict[str, str], message: Message, *,
                 positional: Sequence[str] = (), pid: int | None = None,
                 argv0: str = "procmail",
                 on_clone_end: Callable[["Evaluator", End], int] | None = None,
                 tracing: bool = True) -> None:
        self.effects = effects
        # Without tracing (a real delivery: only --explain reads the trace) no record is
        # made per recipe and condition; the writes go to shared sinks instead.
        self.tracing = tracing
        self.vars = variables
        self.message = message
        self.positional = list(positional)
        self.argv0 = argv0               # $0: procmail's own argv[0], not the rc file
        self.pid = os.getpid() if pid is None else pid
        self.on_clone_end = on_clone_end
        self.lastcond = False
        self.prevcond = False
        self.lastsucc = False
        self.lastscore = 0
        self.copied = False              # a ``c`` recipe delivered a copy
        # procmail's pipw: whether the last filter or capture it waited for failed.  It
        # is updated only when procmail reaps one (w, W, a lock, a rescue), and a filter
        # or capture succeeds exactly when it is clear: one not waited for after a failed
        # one fails too, though its output is taken (pipes.c readdyn(), pipthrough())
        self.pipw = False
        # DEFAULT assigned by the rc or the command line: procmail -m delivers to
        # $DEFAULT at the end only then (its fdefault starts empty)
        self.default_assigned = False
        # MAILDIR set: by an assignment, or as procmail's first rc file was opened
        # (deliver.agent); after that, opening an rc file leaves it alone
        self.maildir_set = False
        # procmail's setxit: the rc file (or the command line) assigned EXITCODE; an
        # EXITCODE in the caller's environment (-p -m) never sets the exit status
        self.exitcode_assigned = False
        # procmail's TRAP is its own string, set only by an assignment: a TRAP in the
        # caller's environment (-p) is readable as $TRAP but never run
        self.trap: str | None = None
        self.frames: list[_Frame] = []
        self.trace: list[RecipeTrace] = []
        # (header, body) -> the area and its padded search buffer (rules.regex.padded)
        self._areas: dict[tuple[bool, bool], tuple[bytes, bytes]] = {}
        # id(rules.prefilter.AreaSet) -> the members it found in this message's area
        self._set_hits: dict[int, frozenset[int]] = {}
        # procmail's numeric variables as numbers of their own (rules.numvars)
        self.numbers = numvars.initial_numbers()
        effects.environment(self.vars, self.numbers)

    # ------------------------------------------------------------------ driving

    def run_rcfile(self, rc: RcFile) -> RunResult:
        """Run one rc file from the top.  Chaining state starts afresh, as procmail
        resets lastcond/prevcond/lastsucc for every rc file it opens."""
        self.lastcond = self.prevcond = self.lastsucc = False
        prefilter.seen(rc)
        self.frames = [_Frame(rc.items, "rc", rc.path, diags=_file_diags(rc))]
        end = self._loop()
        return RunResult(end, self.trace)

    def _loop(self) -> End:
        try:
            while self.frames:
                frame = self.frames[-1]
                if frame.index >= len(frame.items):
                    if frame.kind != "block":
                        self._flush_diags(frame, None)
                        if frame.unclosed:
                            self.effects.log("procmail: Missing closing brace\n")
                    self.frames.pop()
                    if frame.kind == "block" and frame.saved is not None:
                        self.prevcond, self.lastcond = frame.saved
                    elif frame.kind == "rc":
                        return End.FELL_OFF
                    continue
                item = frame.items[frame.index]
                frame.index += 1
                file_frame = frame if frame.kind != "block" else self._file_frame()
                if file_frame is not None and file_frame.diags:
                    self._flush_diags(file_frame, _read_upto(item))
                match item:
                    case Assignment():
                        self._assign(item)
                    case Recipe():
                        self._recipe(item)
                    case Skipped():
                        self.effects.log(f'procmail: Skipped "{item.text}"\n')
            return End.FELL_OFF
        except _Stop as stop:
            if stop.end is End.HOST:
                self.frames.clear()
            return stop.end

    def _file_frame(self) -> _Frame | None:
        for frame in reversed(self.frames):
            if frame.kind != "block":
                return frame
        return None

    def _flush_diags(self, frame: _Frame | None, upto: Span | None) -> None:
        """Log the file's syntax problems that lie before ``upto`` (all when None)."""
        if frame is None:
            return
        pending = frame.diags
        while pending and (upto is None or pending[-1][:2] < (upto.line, upto.col)):
            _line, _col, message, width = pending.pop()
            if width <= 0:
                self.effects.log(f"procmail: {message}\n")
            elif width >= self._linebuf():
                self.effects.log("procmail: Exceeded LINEBUF\n")
                self.vars["PROCMAIL_OVERFLOW"] = "yes"

    @property
    def current_file(self) -> str:
        for frame in reversed(self.frames):
            if frame.kind != "block":
                return frame.path
        return ""

    # ------------------------------------------------------------------ variables

    def lookup(self, name: str) -> str | None:
        if name.isdigit():
            n = int(name)
            if n == 0:
                return self.argv0
            return self.positional[n - 1] if n <= len(self.positional) else None
        special = _SPECIAL_LOOKUPS.get(name)
        if special is not None:
            return special(self)
        if name == expand.PLAIN_UNDERSCORE:
            return self.vars.get("_")
        return self.vars.get(name)

    def backquote(self, text: str) -> str:
        if "\0" in text:      # a NUL in the rc text: procmail's C string ends there
            text = text[: text.index("\0")]
        # through $SHELL only with SHELLMETAS in it, else split and run by us: as a
        # pipe's command line (``$(...)`` and ``~`` stay literal without the shell)
        cmd, via_shell = self._command_line(text, arguments=False)
        if cmd is None:
            return ""          # nothing to run: the words expanded to none
        out = self.effects.backquote(cmd, self.message.data)
        limit = self._linebuf()
        if len(out) >= limit:
            # procmail reads at most LINEBUF bytes of a command substitution; it names
            # the program alone when it ran it without the shell
            name = text if via_shell else cmd.argv[0]
            self.effects.log(f'procmail: Excessive output quenched from "{name}"\n')
            self.vars["PROCMAIL_OVERFLOW"] = "yes"          # fromprog()'s setoverflow()
            out = out[: limit - 1]
        return out

    def _linebuf(self) -> int:
        return self.numbers["LINEBUF"]

    def _overflow(self, value: str, used: int = 0) -> bool:
        """Whether ``value`` exceeds LINEBUF (logged), ``used`` characters of procmail's
        buffer being taken before it."""
        if len(value) + used <= self._linebuf():
            return False
        self._exceeded()
        return True

    def _exceeded(self) -> None:
        """procmail's nlog(exceededlb) and setoverflow()."""
        self.effects.log("procmail: Exceeded LINEBUF\n")
        self.vars["PROCMAIL_OVERFLOW"] = "yes"

    def _forward_prefix(self, flags: list[str] | None = None) -> int:
        """What procmail's buffer holds before a forward's addresses: "$SENDMAIL\\0",
        then the SENDMAILFLAGS words (``flags``, split here when not given), each ended
        by a NUL (see split_sendmailflags)."""
        if flags is None:
            flags = split_sendmailflags(self.vars.get("SENDMAILFLAGS", ""))
        return len(self.vars.get("SENDMAIL", "")) + 1 + sum(len(w) + 1 for w in flags)

    def _gobenv_overflows(self, text: str) -> bool:
        """procmail reads a folder line with gobenv() first (it may be ``VAR=| cmd``):
        a leading run of name characters, not starting with a digit, of LINEBUF-5 or
        more fills that buffer.  "Exceeded LINEBUF" is logged, getlline() reads the rest
        of the line (logging it again when that is LINEBUF-1 or more) and the recipe
        fails, matched or not (measured against procmail 3.22 with LINEBUF=128)."""
        room = self._linebuf() - 5
        if len(text) < room:
            return False
        m = _NAME_RUN.match(text)
        if m is None or m.end() < room:
            return False
        self._exceeded()
        if len(text) - room >= self._linebuf() - 1:
            self._exceeded()
        return True

    def _skipped_line_overflows(self, action: object) -> bool:
        """procmail reads the action line of a recipe whose conditions failed too, with
        nothing expanded or run (skiprc: variables read as unset, backquotes as empty)
        and still fails the recipe when the line overflows LINEBUF: "Exceeded LINEBUF",
        PROCMAIL_OVERFLOW=yes, and lastsucc cleared for a following ``a``."""
        kind = action.__class__
        if kind is Folder:
            used = 0
        elif kind is Forward:
            used = self._forward_prefix()
        else:
            return False      # a program line's length is checked as it is read (Pipe.width)
        text = action.text    # type: ignore[attr-defined]
        # the common case, cheaply (it runs for every recipe that does not match): when
        # skipped, only $$, $=, $#, $? and the like grow (to at most 20 characters,
        # LONG_MIN); quotes and variables only shrink
        if len(text) + 20 * text.count("$") + used < self.numbers["LINEBUF"] - 5:
            return False
        if kind is Folder and self._gobenv_overflows(text):
            return True
        specials = _SPECIAL_LOOKUPS

        def skipping_lookup(name: str) -> str | None:
            special = specials.get(name)
            return special(self) if special is not None else None

        try:
            words = expand.expand_words(text, skipping_lookup, lambda _text: "",
                                        folder=kind is Folder)
        except ExpansionError:
            return False
        return self._overflow(" ".join(words), used)

    def _unexpected_eol(self) -> None:
        self.effects.log("procmail: Unexpected EOL\n")

    def _expand_value(self, raw: str) -> str | None:
        """The value ``raw`` expands to; None after an error, and after an overflow of
        LINEBUF (logged): procmail's readparse() fails then and the assignment is not
        made, so the variable keeps its old value."""
        try:
            value = expand.expand_value(raw, self.lookup, self.backquote, on_eol=self._unexpected_eol)
        except ExpansionError as err:
            self.effects.log(f"procmail: {err}\n")
            return None
        if "\0" in raw and "\0" in value:   # a NUL in the rc text (no value holds one):
            value = value[: value.index("\0")]   # procmail's C string ends there
        return None if self._overflow(value) else value

    def _expand_words(self, raw: str, *, folder: bool = False,
                      overflow: list[str] | None = None, arguments: bool = True,
                      shown: list[str] | None = None, used: int = 0) -> list[str] | None:
        """The words of ``raw``; None after an error, and ``overflow`` (None unless the
        caller must tell the two apart) when they exceed LINEBUF.  ``"$@"`` becomes the
        positional arguments only in a program's or a forward's words (``arguments``):
        procmail puts them in as it starts a program, so a folder line or a backquote
        gets the empty word it reads there.  ``shown``: see rules.expand.expand_words.
        ``used``: what procmail's buffer holds before the words (see _overflow)."""
        try:
            words = expand.expand_words(raw, self.lookup, self.backquote,
                                        self.positional if arguments and not folder else (),
                                        on_eol=self._unexpected_eol, folder=folder,
                                        shown=shown)
        except ExpansionError as err:
            self.effects.log(f"procmail: {err}\n")
            return None
        if self._overflow(" ".join(words), used):
            return overflow
        if "\0" in raw:
            # a NUL in the rc text (no variable's value holds one): procmail's parsed
            # word lists are NUL-separated strings, so it ends a word there
            # (``inb<NUL>ox`` is two folder names)
            words = [piece for w in words for piece in w.split("\0") if piece]
            if shown is not None:
                shown[:] = [piece for w in shown for piece in w.split("\0") if piece]
        return words

    def _assign(self, item: Assignment) -> None:
        name = item.name
        if item.value is None:
            value = None
        else:
            value = self._expand_value(item.value)
            if value is None:
                return
        self.set_variable(name, value)

    def assign_argument(self, name: str, value: str, *, special: bool = True) -> bool:
        """A NAME=value from procmail's command line, its value read as asenvcpy()
        reads it (readparse: quotes, $VAR, backquotes; words joined by one blank, and
        one blank kept after the last word when blanks end the text: readparse writes
        the blank that ends a word and only skips the ones after it).
        False for a HOST that does not match: procmail ends before any rc file.
        ``special=False``: only the variable is set, its handler (INCLUDERC's) not run."""
        words = self._expand_words(value)
        joined = " ".join(words) if words is not None else ""
        if joined and value.endswith((" ", "\t")) and not value.endswith(("\\ ", "\\\t")):
            joined += " "
        if not special:
            self.vars[name] = joined.partition("\0")[0]
            return True
        try:
            self.set_variable(name, joined)
        except _Stop as stop:
            if stop.end is End.HOST:
                return False
            raise
        return True

    def set_variable(self, name: str, value: str | None) -> None:
        """Assign (None unsets) and run the special variable's handler, if any."""
        handler = _SPECIAL_ASSIGNMENTS.get(name)
        old = self.vars.get(name)
        if value is None:
            self.vars.pop(name, None)
        else:
            if "\0" in value:           # procmail's variables are C strings
                value = value.partition("\0")[0]
            self.vars[name] = value
        if handler is not None:
            handler(self, value, old)

    # ------------------------------------------------------------------ recipes

    def _recipe(self, recipe: Recipe) -> None:
        fl = _flag_facts(recipe.flags)
        if self.tracing:
            tr = RecipeTrace(recipe.span, fl.text, chained=True)
            self.trace.append(tr)
        else:
            tr = _RECIPE_SINK
        ok = True
        if fl.on_error:
            ok = ok and self.prevcond and not self.lastsucc
        if fl.else_:
            ok = ok and not self.prevcond
        if fl.chain_succeeded:
            ok = ok and self.lastcond and self.lastsucc
        if fl.chain_matched:
            ok = ok and self.lastcond
        tr.chained = ok
        matched = self._conditions(recipe, ok, tr)
        tr.matched = matched
        if not fl.chain_matched and not fl.chain_succeeded:
            self.lastcond = matched
        if not self.prevcond or not fl.else_:
            self.prevcond = matched
        if not matched:
            action = recipe.action
            kind = action.__class__
            if kind is Block:
                self._drop_diags_inside(action)       # type: ignore[arg-type]
            elif kind is Folder:
                # a bound of _skipped_line_overflows's cheap one (each character can
                # grow to at most 21: a "$$" to LONG_MIN's 20), here: no call for the
                # usual short folder line of a recipe that did not match
                if (21 * len(action.text) >= self.numbers["LINEBUF"] - 5   # type: ignore[union-attr]
                        and self._skipped_line_overflows(action)):
                    self.lastsucc = False
            elif kind is Forward and self._skipped_line_overflows(action):
                self.lastsucc = False
            return
        action = recipe.action
        if isinstance(action, Block):
            self._enter_block(recipe, action, tr)
            return
        if isinstance(action, Pipe) and action.width and action.width >= self._linebuf():
            # procmail's getlline() overflowed reading the program line ("Exceeded
            # LINEBUF", logged as the line was read): it goes on with the next line
            # without running anything, lastsucc as it was
            tr.action = "not run: the program line exceeds LINEBUF"
            return
        succeeded, delivering = self._act(recipe, action, tr)
        tr.succeeded = succeeded
        self.lastsucc = succeeded
        if succeeded and delivering and not fl.copy:
            tr.delivered = True
            raise _Stop(End.DELIVERED)

    def _drop_diags_inside(self, block: Block) -> None:
        """procmail reads a block it does not enter item by item without running
        anything (skiprc): what it logs as it reads stays to be logged in its place
        (the entries marked -1, condition lines over LINEBUF, and the Skipped lines of
        words that are no item), what it logs as it tests a condition does not, and a
        skipped block that is never closed says nothing of it.  A ``c`` block's parent
        skips the block so after its clone ran it: both log what they read."""
        frame = self._file_frame()
        if frame is None:
            return
        start = (block.span.line, block.span.col)
        end = None if block.end is None else (block.end.line, block.end.col)
        skipped = _skipped_inside(block)
        if not frame.diags and not skipped:
            return
        kept = [d for d in frame.diags
                if d[3] or not (start <= d[:2] and (end is None or d[:2] <= end))]
        if skipped:
            kept.extend(skipped)
            kept.sort(key=lambda d: d[:2], reverse=True)    # popped from the end
        frame.diags[:] = kept

    def _enter_block(self, recipe: Recipe, block: Block, tr: RecipeTrace) -> None:
        tr.action = "enter block"
        self.lastsucc = True
        frame = _Frame(block.items, "block", saved=(self.prevcond, self.lastcond))
        if Flag.COPY in recipe.flags:
            tr.action = "run block in a clone (c)"
            # procmail's parent takes a c block's lock (":0 c:" is LOCKEXT alone) and
            # holds it while it waits for the clone, as W does when neither w nor W is
            # given; a clone that a w or W parent waited for fails the recipe when it
            # exits non-zero (w says so: "Program failure (n) of "procmail"")
            wait = Flag.WAIT in recipe.flags or Flag.WAIT_QUIET in recipe.flags
            quiet = Flag.WAIT_QUIET in recipe.flags or (recipe.lock is not None and not wait)
            with self._locked(self._lockname(recipe, "")):
                status = self._clone_into(frame)
            if (wait or recipe.lock is not None) and status != 0:
                if not quiet:
                    self.effects.log(f'procmail: Program failure ({status}) of "procmail"\n')
                self.lastsucc = False
            self._drop_diags_inside(block)     # the clone has logged them; we skip it
            return
        if block.end is None:
            file_frame = self._file_frame()
            if file_frame is not None:
                file_frame.unclosed = True
        if recipe.lock is not None:
            # "Extraneous locallockfile ignored" (logged when read), yet procmail still
            # takes the lock (":0:" is LOCKEXT alone) as it enters the block and lets it
            # go: a stale ".lock" is forced, an unwritable directory says Lock failure
            with self._locked(self._lockname(recipe, "")):
                pass
        self.frames.append(frame)

    def _clone_into(self, frame: _Frame) -> int:
        """procmail forks here: the clone runs the block and, unless it delivers, the
        rest of the rc file; the parent skips the block.  We run the clone first, on
        copied state, and restore the process-wide state (cwd, umask) afterwards."""
        clone = Evaluator.__new__(Evaluator)
        clone.effects = self.effects
        clone.vars = dict(self.vars)
        clone.message = self.message
        clone.positional = list(self.positional)
        clone.pid = self.pid
        clone.on_clone_end = self.on_clone_end
        clone.lastcond, clone.prevcond, clone.lastsucc = self.lastcond, self.prevcond, self.lastsucc
        clone.lastscore = self.lastscore
        clone.copied = self.copied
        clone.pipw = self.pipw
        clone.default_assigned = self.default_assigned
        clone.maildir_set = self.maildir_set
        clone.exitcode_assigned = self.exitcode_assigned
        clone.trap = self.trap
        clone.frames = [_Frame(f.items, f.kind, f.path, f.index, f.saved, list(f.diags), f.unclosed)
                        for f in self.frames]
        clone.frames.append(frame)
        clone.trace = self.trace
        clone.tracing = self.tracing
        clone._areas = dict(self._areas)
        clone._set_hits = dict(self._set_hits)
        clone.numbers = dict(self.numbers)
        # the cwd as latin-1 text of its bytes, as every name here (deliver.osnames)
        saved_cwd = os.fsencode(os.getcwd()).decode("latin-1")
        self.effects.environment(clone.vars, clone.numbers)
        saved_umask = self.effects.umask
        saved_log = self.effects.fork_log()
        status = 0
        try:
            end = clone._loop()
            if self.on_clone_end is not None:
                status = self.on_clone_end(clone, end)
        finally:
            # what the clone changed dies with it in procmail (a process of its own):
            # the environment, the log file, the directory, the umask, its LOCKFILE
            self.effects.environment(self.vars, self.numbers)
            self.effects.join_log(saved_log)
            self.effects.chdir(saved_cwd)
            if self.effects.umask != saved_umask:
                self.effects.set_umask(saved_umask)
            if clone.vars.get("LOCKFILE") != self.vars.get("LOCKFILE"):
                self.effects.global_lock(self.vars.get("LOCKFILE") or None)
        return status

    # ------------------------------------------------------------------ conditions

    def area(self, header: bool, body: bool) -> bytes:
        return self._area_and_buffer(header, body)[0]

    def _area_and_buffer(self, header: bool, body: bool) -> tuple[bytes, bytes]:
        """An area and its search buffer, made once per message: a dozen conditions
        search the same header, and a body can be megabytes."""
        key = (header, body)
        got = self._areas.get(key)
        if got is None:
            text = search_area(self.message, header=header, body=body)
            got = self._areas[key] = (text, padded(text))
        return got

    def _default_area(self, flags: frozenset[Flag]) -> tuple[bool, bool]:
        return _flag_facts(flags).area

    def _conditions(self, recipe: Recipe, ok: bool, tr: RecipeTrace) -> bool:
        if ok and not self.tracing:
            gate = prefilter.gate_for(recipe)
            if gate is not None and self._ruled_out(*gate):
                # what the loop below concludes when the first condition fails
                self.lastscore = 0
                return False
        state = _Score()
        for cond in recipe.conditions:
            if not ok:
                if self.tracing:
                    tr.conditions.append(ConditionTrace(cond.span, _cached_cond_text(cond), None))
                continue
            if cond.width and cond.width >= self._linebuf():
                # Exceeded LINEBUF (logged as the line was read): the recipe fails
                ok = False
                if self.tracing:
                    tr.conditions.append(ConditionTrace(cond.span, _cached_cond_text(cond), False))
                continue
            ok = self._condition(cond, recipe.flags, state, tr)
        score = state.score
        if score != score:
            self.lastscore = _LONG_MIN     # a NaN weight: C's (long)NaN on x86-64
        else:
            self.lastscore = int(score) if not (int(score) == 0 and score > 0) else 1
        if state.scored:
            tr.score = score
            if ok and score <= 0:
                ok = False
        return ok

    def _condition(self, cond: Condition, flags: frozenset[Flag], state: "_Score",
                   tr: RecipeTrace, negate: bool = False, weight: Weight | None = None) -> bool:
        negate ^= cond.negate
        if cond.weight is not None:
            weight = cond.weight
        test = cond.test
        ct = ConditionTrace(cond.span, _cached_cond_text(cond), None) if self.tracing else _CONDITION_SINK
        if isinstance(test, ExpandTest):
            try:
                text = expand.expand_quoted(test.text, self.lookup, self.backquote)
            except ExpansionError as err:
                self.effects.log(f"procmail: {err}\n")
                tr.conditions.append(ct)
                ct.matched = False
                return False
            if self._overflow(text):
                ct.matched = False
                tr.conditions.append(ct)
                return False
            try:
                inner = parse_condition(text, cond.span, expanded=True)
            except RcSyntaxError as err:
                self.effects.log(f"procmail: {err.message}\n")
                ct.matched = False
                tr.conditions.append(ct)
                return False
            if test.area is not None:
                inner = _in_area(inner, test.area)
            return self._condition(inner, flags, state, tr, negate, weight)
        tr.conditions.append(ct)
        if weight is not None:
            if state.score >= MAX32:
                ct.matched, ct.score = True, state.score
                return True        # procmail skips weighted conditions at +infinity
            state.scored = True
        match test:
            case VarTest(name=name, pattern=pattern):
                result = self._regex(pattern, self._named_area_and_buffer(name), flags, negate,
                                     weight, state, ct, cond.span)
            case RegexTest(pattern=pattern):
                where = self._default_area(flags)
                area = self._area_and_buffer(*where)
                if where == prefilter.HEADER and self._cannot_match(cond, flags, area[1]):
                    result = _no_match(negate, weight, state)
                else:
                    result = self._regex(pattern, area, flags, negate, weight, state, ct,
                                         cond.span)
            case ProgramTest(command=command, area=name):
                fed = self.area(*self._default_area(flags)) if name is None else self._named_area(name)
                result = self._program_test(command, fed, negate, weight, state)
            case SizeTest(area=None):
                # procmail compares the whole mail, From_ line included (item 11)
                result = self._size_test(test, len(self.message.data), negate, weight, state)
            case SizeTest(area=name):
                result = self._size_test(test, len(self._named_area(name)), negate, weight, state)
            case _:  # pragma: no cover - exhaustive over Test
                raise TypeError(test)
        if state.score > MAX32:
            state.score = MAX32
        if state.score <= MIN32:
            state.score = MIN32
            result = False
        ct.matched = result
        if weight is not None:
            ct.score = state.score
            if state.hit is not None:      # for the trace: did this regex itself match?
                ct.matched, state.hit = state.hit, None
        return result

    def _cannot_match(self, cond: Condition, flags: frozenset[Flag], buf: bytes) -> bool:
        """Whether the rc file's RE2::Set rules ``cond`` out of the header ``buf``
        (rules.prefilter): one pass over it answers for every such condition."""
        entry = prefilter.entry_for(cond, Flag.CASE in flags)
        return entry is not None and self._ruled_out(*entry, buf)

    def _ruled_out(self, area_set: prefilter.AreaSet, index: int, buf: bytes | None = None) -> bool:
        """Whether ``area_set`` (run once per message) did not find its member ``index``.
        ``buf``: the padded header, when the caller has it at hand."""
        hits = self._set_hits.get(id(area_set))
        if hits is None:
            if buf is None:
                buf = self._area_and_buffer(*prefilter.HEADER)[1]
            hits = self._set_hits[id(area_set)] = area_set.matching(buf)
        return hits is not prefilter.UNKNOWN and index not in hits

    def _named_area(self, name: str) -> bytes:
        return self._named_area_and_buffer(name)[0]

    def _named_area_and_buffer(self, name: str) -> tuple[bytes, bytes | None]:
        """``VAR ?? regex``: H, B, HB (or BH) are the areas; any other name is the
        variable's value (no buffer kept: it may change between conditions)."""
        if name == "H":
            return self._area_and_buffer(True, False)
        if name == "B":
            return self._area_and_buffer(False, True)
        if name in ("HB", "BH"):
            return self._area_and_buffer(True, True)
        # the variable itself, as procmail's getenv(): ``_ ?? x`` does not see $_ (the
        # rc file's name, a special of the expander only)
        return (self.vars.get(name) or "").encode("latin-1", "replace"), None

    def _regex(self, pattern: str, area: tuple[bytes, bytes | None], flags: frozenset[Flag],
               negate: bool, weight: Weight | None, state: "_Score", ct: ConditionTrace,
               span: Span) -> bool:
        text, buf = area
        try:
            rx = compile_regex(pattern, case_sensitive=Flag.CASE in flags)
        except RegexError:
            # procmail: "Invalid regexp" and the condition counts as matched (item 7).
            self.effects.log(f'procmail: Invalid regexp "{expand_macros(pattern)[0]}"\n')
            return True
        if rx.invalid is not None:
            # unbalanced parentheses: procmail complains (showing the regex with its
            # macros expanded) and matches with what it read
            self.effects.log(f'procmail: Invalid regexp "{expand_macros(pattern)[0]}"\n')
        if weight is None:
            m = rx.search(text, buf)
            if m is not None and m.match is not None:
                self.vars["MATCH"] = m.match.partition(b"\0")[0].decode("latin-1")
                ct.matched_text = self.vars["MATCH"]
            return (m is not None) != negate
        w, x = weight.weight, weight.exponent
        if negate:
            # procmail searches only for a weight that is not 0 (``weight&&!bregexec``),
            # and a search that finds its \/ sets MATCH, negated or not
            m = rx.search(text, buf) if w or self.tracing else None
            absent = m is None
            if not w:
                m = None                   # looked at for the trace only
            if w and absent:
                state.score += w
            elif m is not None and m.match is not None:
                self.vars["MATCH"] = m.match.partition(b"\0")[0].decode("latin-1")
                ct.matched_text = self.vars["MATCH"]
            state.hit = absent
            return True
        texts: list[bytes] | None = [] if rx.sets_match else None
        added, state.hit = _weighted_matches(rx, text, buf, w, x, state.score, texts)
        state.score += added
        if texts:
            self.vars["MATCH"] = texts[-1].partition(b"\0")[0].decode("latin-1")
            ct.matched_text = self.vars["MATCH"]
        return True

    def _program_test(self, command: str, text: bytes, negate: bool,
                      weight: Weight | None, state: "_Score") -> bool:
        cmd = self._command(command)
        if cmd is None:
            return False
        status = self.effects.test_program(cmd, text)
        if weight is None:
            return (status == 0) != negate
        w, x = weight.weight, weight.exponent
        if status >= 0:
            if negate:
                j = status
                while j > 0:
                    j -= 1
                    state.score += w
                    if not (MIN32 < state.score < MAX32):
                        break
                    w *= x
            else:
                state.score += x if status else w
        return True

    def _size_operand(self, text: str) -> int:
        """A size test's operand expanded now, as procmail expands it at each test;
        what follows the number is logged as procmail skips it."""
        words = self._expand_words(text)      # as procmail: ``x$HOME\/y`` -> x/home/u/y
        limit, leftover = size_operand(" ".join(words or ()))
        if leftover:
            self.effects.log(f'procmail: Skipped "{leftover}"\n')
        return limit

    def _size_test(self, test: SizeTest, size: int, negate: bool, weight: Weight | None,
                   state: "_Score") -> bool:
        pivot = test.limit if test.text is None else self._size_operand(test.text)
        if weight is None:
            hit = size < pivot if test.op == "<" else size > pivot
            return hit != negate
        w, x = weight.weight, weight.exponent
        if (test.op == "<") != negate:
            if size:
                f = pivot / size
            else:
                state.score = MAX32 if pivot > 0 else MIN32
                return True
        elif pivot:
            f = size / pivot
        else:
            state.score = MAX32
            return True
        if f < 0 and not float(x).is_integer():
            # C's pow() of a negative base to a fractional power is NaN (Python's ** would
            # give a complex number): the score becomes NaN, as procmail's tpow() leaves it
            state.score += w * math.nan
            return True
        try:
            state.score += w * (f ** x)
        except (OverflowError, ZeroDivisionError):
            state.score = MAX32 if w > 0 else MIN32
        return True

    # ------------------------------------------------------------------ actions

    def _feed(self, flags: frozenset[Flag]) -> bytes:
        """What h/b select: both by default (procmail's startchar/tobesent)."""
        h, b = Flag.FEED_HEADER in flags, Flag.FEED_BODY in flags
        if h and not b:
            return self.message.header
        if b and not h:
            return self.message.body
        return self.message.data

    def program_command(self, text: str) -> Command | None:
        """``text`` as procmail runs a program line (TRAP's value, a pipe's action);
        None when it expands to no words."""
        return self._command(text)

    def _command(self, text: str) -> Command | None:
        """A program line: through $SHELL when it has SHELLMETAS (procmail leaves the
        expansion to the shell), else split and expanded by us (item 18)."""
        return self._command_line(text)[0]

    def _command_line(self, text: str, *, arguments: bool = True) -> tuple[Command | None, bool]:
        """``_command`` and whether the line goes through $SHELL.  As procmail's
        metaparse(): a line whose words, expanded, exceed LINEBUF (``Exceeded LINEBUF``)
        is handed to $SHELL as written instead, and so is one whose program is ``test``
        (Debian's procmail is built without GOT_bin_test: the shell's own test runs).
        ``arguments``: False for a backquote, whose ``"$@"`` stays the empty word."""
        if not self._needs_shell(text):
            shown: list[str] = []
            words = self._expand_words(text, overflow=_SHELL_INSTEAD, arguments=arguments,
                                       shown=shown)
            if words is not _SHELL_INSTEAD and not (words and words[0] == "test"):
                if not words:
                    return None, False
                return Command(tuple(words), " ".join(shown)), False
        if "\0" in text:    # the shell gets a C string: it ends at the NUL
            text = text[: text.index("\0")]
        shell = self.vars.get("SHELL", "/bin/sh")
        shellflags = self.vars.get("SHELLFLAGS", "-c")
        return Command((shell, shellflags, text), text), True

    def _needs_shell(self, text: str) -> bool:
        metas = self.vars.get("SHELLMETAS", "")   # preset by deliver/; unset means none
        return expand.has_shell_metas(text, metas)

    _IMPLICIT = object()     # _lock_word: the name expanded to no word at all

    def _lock_word(self, raw: str) -> "str | None | object":
        """A ``:0: name`` as procmail reads it (readparse, words split): its first
        word, the others logged as Skipped; ``_IMPLICIT`` when it expands to no word
        (``:0: $EMPTY``: the recipe's implicit lock, as if no name were given); None
        (no lock) for a quoted empty word (``:0: "$EMPTY"``) or an error."""
        words = self._expand_words(raw, arguments=False)
        if words is None:
            return None
        if not words or (not words[0] and "'" not in raw and '"' not in raw):
            return self._IMPLICIT     # nothing at all; a quoted "" is a name, empty
        if len(words) > 1:
            self.effects.log(f'procmail: Skipped "{" ".join(words[1:])}"\n')
        return words[0] or None

    def _lockname(self, recipe: Recipe, target: str) -> str | None:
        if recipe.lock is None:
            return None
        lockext = self.vars.get("LOCKEXT", "")
        if recipe.lock.name is not None:
            word = self._lock_word(recipe.lock.name)
            if word is not self._IMPLICIT:
                return word  # type: ignore[return-value]
        if target == "/dev/null":
            return None    # procmail tries no /dev/null.lock (it could never be made)
        return target + lockext

    def _act(self, recipe: Recipe, action: Folder | Pipe | Forward, tr: RecipeTrace) -> tuple[bool, bool]:
        """Run the action; returns (succeeded, is a delivering action)."""
        flags = recipe.flags
        raw = Flag.RAW in flags
        # procmail ignores f on a folder ("Extraneous filter-flag ignored", logged when
        # the recipe was read) and saves the whole mail whatever h and b say
        data = self.message.data if Flag.FILTER in flags and isinstance(action, Folder) \
            else self._feed(flags)
        if isinstance(action, Folder):
            if self._gobenv_overflows(action.text):
                return False, True
            names = self._expand_words(action.text, folder=True)
            if not names:
                return False, True
            tr.action = "save to " + " ".join(names)
            lockname = self._lockname(recipe, names[0])
            with self._locked(lockname):
                before = self.vars.get("LASTFOLDER")
                self.vars["LASTFOLDER"] = " ".join(names)
                part = _part(flags, folder=True)
                result = self.effects.save(names, data, raw=raw, part=part,
                                           mail=self.message.data if part == "body" else None)
            if result.overflow:
                self.vars["PROCMAIL_OVERFLOW"] = "yes"
            if result.ok or result.lastfolder:
                self.vars["LASTFOLDER"] = result.lastfolder
            elif result.keeps_lastfolder:
                if before is None:
                    del self.vars["LASTFOLDER"]
                else:
                    self.vars["LASTFOLDER"] = before
            if result.ok and Flag.COPY in flags:
                self._copy_done(result.lastfolder)
            return result.ok, True
        if isinstance(action, Forward):
            return self._forward(recipe, action, data, tr), True
        return self._pipe(recipe, action, data, tr)

    def _copy_done(self, where: str) -> None:
        """A ``c`` recipe delivered a copy: its abstract (LOGABSTRACT=all), and the mail
        is no longer only in our hands (``copied``: see deliver.agent on HOST)."""
        self.copied = True
        self.effects.abstract(self.message.data, where)

    def _locked(self, lockname: str | None):
        if lockname is None:
            return _NoLock()
        if lockname == self.vars.get("LOCKFILE"):
            self.effects.log(f'procmail: Deadlock attempted on "{lockname}"\n')
            return _NoLock()
        return self.effects.lock(lockname)

    def _wait_flags(self, flags: frozenset[Flag]) -> tuple[bool, bool]:
        wait = Flag.WAIT in flags or Flag.WAIT_QUIET in flags
        return wait, Flag.WAIT_QUIET in flags and Flag.WAIT not in flags

    def _program_wait(self, recipe: Recipe) -> tuple[bool, bool]:
        """(wait, quiet) for a program: its w/W flags, and W when it has a local lock
        and neither: procmail waits for a locked program ("try and protect the user
        from his blissful ignorance"), so its failure fails the recipe."""
        wait, quiet = self._wait_flags(recipe.flags)
        if not wait and recipe.lock is not None:
            return True, True
        return wait, quiet

    def _forward(self, recipe: Recipe, action: Forward, data: bytes, tr: RecipeTrace) -> bool:
        shown: list[str] = []
        sendmail = self.vars.get("SENDMAIL", "")   # unset: empty, as in procmail
        sendmailflags = split_sendmailflags(self.vars.get("SENDMAILFLAGS", ""))
        words = self._expand_words(action.text, shown=shown,
                                   used=self._forward_prefix(sendmailflags))
        if words is None:
            return False
        argv = (sendmail, *sendmailflags, *words)
        part = _part(recipe.flags)
        if part != "body":      # procmail leaves the From_ line off when it sends from the start
            data = skip_from_line(data)
        wait, quiet = self._program_wait(recipe)
        cmd = Command(argv, " ".join((sendmail, *sendmailflags, *shown)))
        tr.action = "forward: " + " ".join(argv)
        # procmail's buffer holds the words NUL-separated: only $SENDMAIL is looked at
        with self._locked(self._implicit_program_lock(recipe, argv[0])):
            result = self.effects.forward(cmd, data, wait=wait, quiet=quiet,
                                          ignore_write_error=Flag.IGNORE_WRITE in recipe.flags,
                                          raw=Flag.RAW in recipe.flags, part=part)
        self.vars["LASTFOLDER"] = cmd.text     # after, as for a pipe
        if result.ok and Flag.COPY in recipe.flags:
            self._copy_done(cmd.text)
        return result.ok

    def _implicit_program_lock(self, recipe: Recipe, text: str) -> str | None:
        """``:0:`` on a program locks the file after ``>>`` plus LOCKEXT (item 38)."""
        if recipe.lock is None:
            return None
        if recipe.lock.name is not None:
            word = self._lock_word(recipe.lock.name)
            if word is not self._IMPLICIT:
                return word  # type: ignore[return-value]
        pos = text.find(">>")
        lockext = self.vars.get("LOCKEXT", "")
        target = ""
        if pos >= 0:
            # the name runs to procmail's EOFName characters (a quote ends it before
            # it starts: no name), then its variables are expanded
            rest = text[pos + 2:].lstrip(" \t")
            end = 0
            while end < len(rest) and rest[end] not in _IMPLICIT_LOCK_END:
                end += 1
            target = rest[:end]
            if target:
                # read as procmail reads it (readparse, words split): the first word
                words = self._expand_words(target, arguments=False)
                target = words[0] if words else ""
        if not target:
            self.effects.log(f'procmail: Couldn\'t determine implicit lockfile from "{text}"\n')
            return lockext or None
        return target + lockext

    def _pipe(self, recipe: Recipe, action: Pipe, data: bytes, tr: RecipeTrace) -> tuple[bool, bool]:
        flags = recipe.flags
        cmd = self._command(action.command)
        if cmd is None:
            return False, action.capture is None and Flag.FILTER not in flags
        wait, quiet = self._program_wait(recipe)
        raw = Flag.RAW in flags
        ign = Flag.IGNORE_WRITE in flags
        # split without the shell, procmail's buffer holds the words NUL-separated: the
        # implicit lock (and its complaint) sees the first word only
        lock = self._implicit_program_lock(
            recipe, action.command if self._needs_shell(action.command) else cmd.argv[0])
        if action.capture is not None:
            if Flag.COPY in flags:
                self.effects.log("procmail: Extraneous copy-flag ignored\n")
            tr.action = f"capture into {action.capture}: {cmd.text.strip()}"
            # procmail keeps a variable's old value to pump back when the program fails
            # (its "backpipe"); an unset variable has none, so nothing is rescued or said
            had_value = action.capture in self.vars
            with self._locked(lock):
                result = self.effects.pipe(cmd, data, wait=wait, quiet=quiet,
                                           ignore_write_error=ign, capture=True, raw=raw,
                                           part=_part(flags))
            # A program that stopped reading, not waited for and with no old value to
            # rescue: procmail takes what it printed (it reaps no child then).
            taken = result.ok or (result.write_error and not wait and not had_value)
            if taken:
                out = result.output
                if out.endswith(b"\n"):
                    out = out[:-1]
                self.set_variable(action.capture, out.decode("latin-1"))
            elif had_value and self._rescue_said(result, wait, quiet):
                # the variable keeps its value, as a filter's mail stays as it was
                self.effects.log("procmail: Rescue of unfiltered data succeeded\n")
            return self._reaped(result, wait, rescued=had_value), False
        if Flag.FILTER in flags:
            if Flag.COPY in flags:
                self.effects.log("procmail: Extraneous copy-flag ignored\n")
            tr.action = f"filter through: {cmd.text.strip()}"
            with self._locked(lock):
                result = self.effects.pipe(cmd, data, wait=wait, quiet=quiet,
                                           ignore_write_error=ign, capture=True, raw=raw,
                                           part=_part(flags))
            if result.ok or (not wait and not result.write_error and not result.timed_out):
                self._replace(flags, result.output)
            elif self._rescue_said(result, wait, quiet):
                # the mail that was fed stays: w or not, a filter that stopped reading
                # must not replace the mail with what it printed before it stopped
                self.effects.log("procmail: Rescue of unfiltered data succeeded\n")
            return self._reaped(result, wait, rescued=True), False
        tr.action = f"pipe to: {cmd.text.strip()}"
        with self._locked(lock):
            result = self.effects.pipe(cmd, data, wait=wait, quiet=quiet,
                                       ignore_write_error=ign, capture=False, raw=raw,
                                       part=_part(flags))
        # after the program ran, as procmail: it sees the LASTFOLDER of before
        self.vars["LASTFOLDER"] = cmd.text
        if result.ok and Flag.COPY in flags:
            self._copy_done(cmd.text)
        return result.ok, True

    def _reaped(self, result: ProgramResult, wait: bool, *, rescued: bool) -> bool:
        """Whether a filter or capture succeeded, procmail's ``!pipw``: a failure with
        something to rescue (a filter's mail, a capture's old value) is reaped, as is any
        program waited for; otherwise pipw keeps what the last reaped one left."""
        failed = not result.ok
        if wait or (failed and rescued):
            self.pipw = failed
        return not self.pipw

    @staticmethod
    def _rescue_said(result: ProgramResult, wait: bool, quiet: bool) -> bool:
        """Whether procmail logs the rescue of a failed filter or capture: after a
        write error or a kill at TIMEOUT whatever the flags (stermchild() logs unless a
        W program's sender already saw it fail), after a w program's failure, and not
        after a W program's (its stermchild() looks away then)."""
        return result.write_error or result.timed_out or (wait and not quiet)

    def _replace(self, flags: frozenset[Flag], output: bytes) -> None:
        """A filter's output replaces what it was fed (item 36)."""
        h, b = Flag.FEED_HEADER in flags, Flag.FEED_BODY in flags
        if h and not b:
            new = output + self.message.body
        elif b and not h:
            new = self.message.header + output
        else:
            new = output
        self.message = Message(self.effects.filtered(new))
        self._areas.clear()
        self._set_hits.clear()


# ---------------------------------------------------------------------- helpers


@dataclass(slots=True)
class _Score:
    score: float = 0.0
    scored: bool = False
    hit: bool | None = None      # whether the last weighted regex matched (trace only)


# procmail's EOFName: where the name after ``>>`` in a program line ends
_IMPLICIT_LOCK_END = frozenset(" \t\n#`'\");")


class _NoLock:
    def __enter__(self) -> bool:
        return True

    def __exit__(self, *exc: object) -> None:
        return None


def _no_match(negate: bool, weight: Weight | None, state: "_Score") -> bool:
    """What Evaluator._regex concludes for a regex known not to match: as a search that
    found nothing, or a series of no terms (nothing scored, MATCH left alone)."""
    if weight is None:
        return negate
    if negate:
        if weight.weight:
            state.score += weight.weight
        state.hit = True
    else:
        state.hit = False
    return True


def _weighted_matches(rx, text: bytes, buf: bytes | None, w: float, x: float,
                      score: float, texts: list[bytes] | None = None) -> tuple[float, bool]:
    """procmailsc(5) as misc.c computes it: the n-th successive match adds w*x^(n-1); an
    empty match ends the series (adding the rest at once: w*x^n/(1-x) for 0<x<1,
    +/-infinity for x>=1); a series whose terms are below 1 and shrinking is cut off;
    the total stops at +/-2147483647.  ``texts`` (a ``\\/`` pattern) is left holding
    the MATCH texts of the terms scored, the last one last: procmail sets MATCH at each
    match it scores."""
    if w == 0:          # no series is scored: MATCH is left alone (procmail)
        return 0.0, rx.search(text, buf) is not None
    limit = 1 if x == 0 else len(text) + 2
    count, ended_empty = rx.count_series(text, limit, buf, texts)
    scored = 0
    added = 0.0
    weight = w
    oweight = weight * weight
    for k in range(count):
        if weight == 0 or not (MIN32 < score + added < MAX32):
            break
        added += weight
        scored = k + 1
        weight *= x
        if ended_empty and k == count - 1:
            if 0 < x < 1:
                added += weight / (1 - x)
            elif x >= 1 and weight != 0:
                added += MIN32 if weight < 0 else MAX32
            break
        nweight = weight * weight
        if nweight < oweight and oweight < 1:
            break
        oweight = nweight
    if texts is not None:
        del texts[scored:]
    return added, count > 0


def _part(flags: frozenset[Flag], *, folder: bool = False) -> Part:
    """"header" or "body" when the recipe feeds that part alone (h or b without the
    other; f on a folder is ignored and the whole mail saved), else None."""
    if folder and Flag.FILTER in flags:
        return None
    h, b = Flag.FEED_HEADER in flags, Flag.FEED_BODY in flags
    if h == b:
        return None
    return "header" if h else "body"


def _in_area(cond: Condition, area: str) -> Condition:
    """A condition re-parsed from ``VAR ?? $ text`` searches VAR's area, as procmail
    keeps the area it set while it reads on, unless it names one of its own."""
    test = cond.test
    if isinstance(test, RegexTest):
        test = VarTest(area, test.pattern)
    elif isinstance(test, (ProgramTest, ExpandTest, SizeTest)) and test.area is None:
        test = dataclasses.replace(test, area=area)
    else:
        return cond
    return dataclasses.replace(cond, test=test)


def _read_upto(item: Item) -> Span:
    """How far procmail has read when it acts on ``item``: a recipe's header and
    conditions come before its action is taken."""
    if isinstance(item, Recipe):
        return Span(item.span.path, item.action.span.line, 0)
    return item.span


@dataclass(frozen=True, slots=True)
class _FlagFacts:
    """What the evaluator asks of a recipe's flags, answered once per flag set."""

    text: str                       # the letters, sorted (the trace's ``flags``)
    on_error: bool
    else_: bool
    chain_succeeded: bool
    chain_matched: bool
    copy: bool
    area: tuple[bool, bool]         # (header, body) searched by default


_FLAG_FACTS: dict[frozenset[Flag], _FlagFacts] = {}


def _flag_facts(flags: frozenset[Flag]) -> _FlagFacts:
    facts = _FLAG_FACTS.get(flags)
    if facts is None:
        h, b = Flag.HEADER in flags, Flag.BODY in flags
        facts = _FlagFacts("".join(sorted(f.value for f in flags)), Flag.ON_ERROR in flags,
                           Flag.ELSE in flags, Flag.CHAIN_SUCCEEDED in flags,
                           Flag.CHAIN_MATCHED in flags, Flag.COPY in flags,
                           (h or not b, b))
        if len(_FLAG_FACTS) >= _MEMO_MAX:
            _FLAG_FACTS.clear()
        _FLAG_FACTS[flags] = facts
    return facts


_COND_TEXT: dict[int, tuple[Condition, str]] = {}


class _Discard(list):
    """A trace's condition list that keeps nothing (evaluating without tracing)."""

    __slots__ = ()

    def append(self, item: object) -> None:
        pass


# Shared write-only records for an evaluator that is not tracing (Evaluator.tracing).
# _expand_words's answer to _command_line for words that exceed LINEBUF (told apart by
# identity): the line then goes to $SHELL as written, as procmail's metaparse() does.
_SHELL_INSTEAD: list[str] = []

_RECIPE_SINK = RecipeTrace(Span("", 0, 0), "", chained=True, conditions=_Discard())
_CONDITION_SINK = ConditionTrace(Span("", 0, 0), "", None)


def _cached_cond_text(cond: Condition) -> str:
    """``_cond_text`` once per Condition object (the AST is immutable and reused for
    every mail); the entry holds the object, so its id cannot be reused meanwhile."""
    hit = _COND_TEXT.get(id(cond))
    if hit is not None and hit[0] is cond:
        return hit[1]
    text = _cond_text(cond)
    if len(_COND_TEXT) >= _MEMO_MAX:
        _COND_TEXT.clear()
    _COND_TEXT[id(cond)] = (cond, text)
    return text


def _cond_text(cond: Condition) -> str:
    test = cond.test
    prefix = ("! " if cond.negate else "")
    if cond.weight is not None:
        prefix = f"{cond.weight.weight:g}^{cond.weight.exponent:g} " + prefix
    match test:
        case RegexTest(pattern=p):
            return prefix + p
        case VarTest(name=n, pattern=p):
            return f"{prefix}{n} ?? {p}"
        case ProgramTest(command=c, area=a):
            return f"{prefix}{a + ' ?? ' if a else ''}? {c}"
        case SizeTest(op=op, limit=n, area=a):
            return f"{prefix}{a + ' ?? ' if a else ''}{op} {n}"
        case ExpandTest(text=t, area=a):
            return f"{prefix}{a + ' ?? ' if a else ''}$ {t}"
    return prefix


# ---------------------------------------------------------------------- special variables
# A table of handlers, not an if/elif chain (CONVENTIONS.md): each gets the evaluator,
# the new value (None when unset) and the old one.


def _default(ev: Evaluator, value: str | None, old: str | None) -> None:
    ev.default_assigned = True


def _maildir(ev: Evaluator, value: str | None, old: str | None) -> None:
    # Unset, procmail still changes directory, to "": that fails and is logged.  After
    # any failed chdir procmail's asenv() sets MAILDIR to "." (its curdir): the
    # directory it stays in, whatever MAILDIR said before.
    ev.maildir_set = True
    if not ev.effects.chdir(value or ""):
        ev.vars["MAILDIR"] = "."


def _logfile(ev: Evaluator, value: str | None, old: str | None) -> None:
    ev.effects.set_logfile(value or "")     # assigned empty or unset: the log is dropped


def _log(ev: Evaluator, value: str | None, old: str | None) -> None:
    if value:
        ev.effects.log(value)


def _umask(ev: Evaluator, value: str | None, old: str | None) -> None:
    """procmail reads UMASK with strtol(value, 8): blanks, a sign, octal digits; the
    sign counts (``UMASK=-1`` is umask 0777: files made with mode 0)."""
    text = (value or "").strip()
    sign = -1 if text.startswith("-") else 1
    if text.startswith(("+", "-")):
        text = text[1:]
    digits = ""
    for ch in text:
        if ch in "01234567":
            digits += ch
        else:
            break
    ev.effects.set_umask(sign * int(digits, 8) & 0o777 if digits else 0)


def _rc_name(ev: Evaluator, value: str) -> str:
    """The name procmail's bopen() records for an rc file it opens (``$_``): a relative
    name under an absolute MAILDIR is recorded as MAILDIR/name, when that fits LINEBUF."""
    maildir = ev.vars.get("MAILDIR", "")
    if value.startswith("/") or not maildir.startswith("/"):
        return value
    full = maildir + "/" + value
    # bopen(): strlen(MAILDIR) + strlen(name) + 2 < linebuf (the slash and the NUL)
    return full if len(full) + 1 < ev.numbers["LINEBUF"] else value


def _includerc(ev: Evaluator, value: str | None, old: str | None) -> None:
    if not value:
        return
    depth = sum(1 for f in ev.frames if f.kind in ("rc", "include"))
    if depth >= MAX_INCLUDE_DEPTH:
        ev.effects.log(f'procmail: Too deeply nested INCLUDERC "{value}"\n')
        return
    rc = ev.effects.load_rcfile(value)
    if rc is None:
        return
    prefilter.seen(rc)
    ev.frames.append(_Frame(rc.items, "include", _rc_name(ev, value), diags=_file_diags(rc)))


def _switchrc(ev: Evaluator, value: str | None, old: str | None) -> None:
    # Drop the current file's frames (its blocks too); a bare SWITCHRC just ends it.
    rc = ev.effects.load_rcfile(value) if value else None
    if value and rc is None:
        return                     # "Couldn't read": processing continues here
    while ev.frames and ev.frames[-1].kind == "block":
        ev.frames.pop()
    if not ev.frames:
        return
    top = ev.frames[-1]
    # procmail's changerc() never reads the rest of the old file: its syntax problems
    # (a stray '}', an unclosed block, Extraneous flags...) are never logged
    top.diags.clear()
    top.unclosed = False
    if rc is None:
        top.index = len(top.items)
        return
    # the chaining state carries over: procmail's changerc() only opens the new file
    # (lastcond/prevcond/lastsucc start afresh for an rc file of the command line)
    prefilter.seen(rc)
    ev.frames[-1] = _Frame(rc.items, top.kind, _rc_name(ev, value), diags=_file_diags(rc))


def _host(ev: Evaluator, value: str | None, old: str | None) -> None:
    # unset is a mismatch too: procmail compares the (then empty) value
    if value != ev.effects.hostname():
        raise _Stop(End.HOST)


def _lockfile(ev: Evaluator, value: str | None, old: str | None) -> None:
    if not ev.effects.global_lock(value or None):
        ev.vars.pop("LOCKFILE", None)      # as procmail: a lock not taken is not named


def _shift(ev: Evaluator, value: str | None, old: str | None) -> None:
    n = renvint(0, value)
    if n > 0:
        del ev.positional[:n]
    # the variable keeps the value it was given, as procmail reads it back


def _exitcode(ev: Evaluator, value: str | None, old: str | None) -> None:
    ev.exitcode_assigned = True


def _trap(ev: Evaluator, value: str | None, old: str | None) -> None:
    ev.trap = value


def _number(name: str) -> Callable[[Evaluator, str | None, str | None], None]:
    def assign(ev: Evaluator, value: str | None, old: str | None) -> None:
        numvars.assign_number(ev.numbers, name, value)
    return assign


_SPECIAL_ASSIGNMENTS: dict[str, Callable[[Evaluator, str | None, str | None], None]] = {
    **{name: _number(name) for name in numvars.NUMERIC_DEFAULTS},
    "MAILDIR": _maildir,
    "LOGFILE": _logfile,
    "LOG": _log,
    "UMASK": _umask,
    "INCLUDERC": _includerc,
    "SWITCHRC": _switchrc,
    "HOST": _host,
    "LOCKFILE": _lockfile,
    "SHIFT": _shift,
    "EXITCODE": _exitcode,
    "TRAP": _trap,
    "DEFAULT": _default,
}

_SPECIAL_LOOKUPS: dict[str, Callable[[Evaluator], str | None]] = {
    "#": lambda ev: str(len(ev.positional)),
    "$": lambda ev: str(ev.pid),
    "_": lambda ev: ev.current_file,
    "-": lambda ev: ev.vars.get("LASTFOLDER"),
    "=": lambda ev: str(ev.lastscore),
    "@": lambda ev: " ".join(ev.positional),
    "?": lambda ev: str(ev.effects.last_status),
}
