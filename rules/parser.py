"""Parse a procmailrc into an ``RcFile`` (procmailrc(5), procmailex(5), procmailsc(5)).

What it does: reads the rc text the way procmail 3.22's main loop does (src/procmail.c
``mainloop``, src/misc.c ``conditions``), statement by statement:

  * blank lines and ``#`` comment lines are skipped;
  * ``:N flags :lock`` starts a recipe: conditions (``*`` lines; with a legacy ``:N``
    count the next N lines are conditions even without ``*``), then one action line:
    ``! addresses``, ``| program``, ``VAR=| program``, ``{`` + blank (a nested block,
    items until the matching ``}``), or anything else as a folder;
  * ``}`` closes the innermost block;
  * anything else is sh-style assignments (``A = x``, ``X=1 Y=2``, a bare ``NAME``
    unsets it, a word that is not a name is ``Skipped`` with the rest of its line).

Values, folder names, forward addresses and lock names are kept *as written* (quotes
and ``$`` references stay; the evaluator expands them at run time).  Program lines
are read like procmail's getlline(): a backslash-newline stays in the text, a
continuation line holding only ``\\`` becomes a plain newline (behaviour 18).

The recipe header line is described by a pyparsing grammar; this is the only module
that imports pyparsing, so loading a cached AST (rules.cache) never pays for it.

What it guarantees: ``parse_rc`` never raises for syntax problems.  A recipe procmail
would not run (``Missing action``, ``Incomplete recipe``, a condition that cannot be
parsed) is left out of ``items``; every problem is a ``Diagnostic`` naming
file:line:col and what was expected; everything else still parses (behaviour 45).
"""

from __future__ import annotations

import bisect
import re

import pyparsing as pp

from .ast import (Assignment, Block, Condition, Diagnostic, Flag, FLAG_LETTERS, Folder,
                  Forward, Item, LockSpec, Pipe, RcFile, Recipe, SizeTest, Skipped,
                  Span)
from .condparse import is_name_char, is_name_start, parse_condition, size_leftover
from .errors import RcSyntaxError

__all__ = ["parse_rc"]

_BLANKS = " \t"
_FLAG_ORDER = "HBDAaEehbfcwWir"
_ALL_FLAGS = "".join(sorted(FLAG_LETTERS))

# ------------------------------------------------------------------ header grammar
# ``:`` has been consumed; the header is what readparse() returns for the rest of the
# line: a legacy condition count (strtol), then flag letters and at most one ``:lock``.
_PP_NUMBER = pp.Regex(r"[+-]?[0-9]+")("count")
_PP_FLAGS = pp.Regex(f"[{re.escape(_ALL_FLAGS)} ]*")("flags")
_PP_LOCK = pp.Literal(":")("colon") + pp.Regex(r"[^ ]*")("lockword") + \
    pp.Opt(pp.Literal(" ").suppress() + pp.Regex(r"[^ ]+")("nextword"))
_PP_REST = pp.Regex(r".*", re.S)("rest")
_PP_HEADER = (pp.Opt(_PP_NUMBER) + _PP_FLAGS + pp.Opt(_PP_LOCK) + _PP_REST)
_PP_HEADER.leave_whitespace()
for _e in (_PP_NUMBER, _PP_FLAGS, _PP_LOCK, _PP_REST):
    _e.leave_whitespace()


class _Src:
    """The rc text with a cursor; positions map to 1-based (line, col)."""

    def __init__(self, text: str, path: str) -> None:
        self.text = text
        self.n = len(text)
        self.path = path
        self.pos = 0
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def span(self, pos: int) -> Span:
        i = bisect.bisect_right(self.starts, pos) - 1
        return Span(self.path, i + 1, pos - self.starts[i] + 1)

    def peek(self, k: int = 0) -> str:
        p = self.pos + k
        return self.text[p] if p < self.n else ""

    def eof(self) -> bool:
        return self.pos >= self.n

    def skip_blanks(self) -> bool:
        start = self.pos
        while self.pos < self.n and self.text[self.pos] in _BLANKS:
            self.pos += 1
        return self.pos != start

    def skip_line(self) -> None:
        nl = self.text.find("\n", self.pos)
        self.pos = self.n if nl < 0 else nl + 1

    def rest_of_line(self) -> str:
        """procmail's getbl(): the rest of the physical line, newline consumed."""
        nl = self.text.find("\n", self.pos)
        end = self.n if nl < 0 else nl
        s = self.text[self.pos:end]
        self.pos = end + 1 if nl >= 0 else self.n
        return s

    def getlline(self) -> str:
        """procmail's getlline(): lines joined while they end in a backslash; the
        backslash is kept before the newline unless the line held nothing else."""
        out: list[str] = []
        first = True
        while True:
            if self.pos >= self.n and not first:
                break
            line = self.rest_of_line()
            if not line and not first:
                break
            first = False
            if line.endswith("\\"):
                out.append(line + "\n" if len(line) > 1 else "\n")
                if self.pos >= self.n:
                    break
                continue
            out.append(line)
            break
        return "".join(out)


class _Parser:
    def __init__(self, text: str, path: str) -> None:
        self.src = _Src(text, path)
        self.diags: list[Diagnostic] = []

    # ------------------------------------------------------------ diagnostics
    def error(self, pos: int, msg: str) -> None:
        self.diags.append(Diagnostic(self.src.span(pos), "error", msg))

    def warn(self, pos: int, msg: str) -> None:
        self.diags.append(Diagnostic(self.src.span(pos), "warning", msg))

    # ------------------------------------------------------------ sh words
    def scan_word(self, stop_at_blank: bool) -> tuple[int, int, bool]:
        """Scan one sh word from the cursor (readparse's quoting rules).  Returns
        (start, end, unterminated).  A blank or newline outside quotes ends it; the
        terminator is not consumed."""
        s = self.src
        t, n = s.text, s.n
        start = p = s.pos
        dq = sq = False
        while p < n:
            c = t[p]
            if sq:
                if c == "'":
                    sq = False
                p += 1
                continue
            if c == "\\":
                p += 2
                continue
            if c == "`":
                p += 1
                while p < n and t[p] != "`" and not (dq and t[p] == '"'):
                    p += 2 if t[p] == "\\" else 1
                if p < n and t[p] == "`":
                    p += 1
                continue
            if c == '"':
                dq = not dq
                p += 1
                continue
            if c == "'" and not dq:
                sq = True
                p += 1
                continue
            if not dq and c in " \t\n":
                break
            p += 1
        p = min(p, n)
        s.pos = p
        return start, p, dq or sq

    def skip_blanks_cont(self) -> None:
        """Skip blanks and backslash-newline continuations before a word."""
        s = self.src
        while True:
            s.skip_blanks()
            if s.peek() == "\\" and s.peek(1) == "\n":
                s.pos += 2
                continue
            return

    def scan_line_words(self) -> tuple[str, int, list[tuple[int, int]]]:
        """readparse(sarg=0): words up to the end of the logical line, ``#`` at the
        start of a word comments out the rest of the line.  Returns the raw text (from
        the first word to the end of the last), its start, and each word's extent."""
        s = self.src
        words: list[tuple[int, int]] = []
        while True:
            self.skip_blanks_cont()
            c = s.peek()
            if c == "" or c == "\n":
                if c == "\n":
                    s.pos += 1
                break
            if c == "#":
                s.skip_line()
                break
            start, end, unterminated = self.scan_word(True)
            if unterminated:
                self.warn(start, "unterminated quote: expected a closing quote before "
                                 "the end of the file")
            words.append((start, end))
        if not words:
            return "", s.pos, words
        raw = s.text[words[0][0]:words[-1][1]]
        return _trim_cont(raw), words[0][0], words

    # ------------------------------------------------------------ main loop
    def parse_items(self, depth: int, open_pos: int) -> list[Item]:
        s = self.src
        items: list[Item] = []
        while True:
            while True:  # commint: blanks, empty lines, comment lines
                s.skip_blanks()
                if s.peek() == "\n":
                    s.pos += 1
                    continue
                if s.peek() == "#":
                    s.skip_line()
                    continue
                break
            if s.eof():
                if depth:
                    self.error(s.n, "Missing closing brace: expected '}' to close the "
                                    f"block opened at {s.span(open_pos)}")
                return items
            c = s.peek()
            if c == ":":
                recipe = self.parse_recipe(depth)
                if recipe is not None:
                    items.append(recipe)
            elif c == "}":
                s.pos += 1
                if depth:
                    return items
                self.error(s.pos - 1, "Closing brace unexpected: no block is open here")
            else:
                self.parse_statement(items)

    def parse_statement(self, items: list[Item]) -> None:
        """An assignment, an unset, or a Skipped word (procmail's gobenv() path)."""
        s = self.src
        start = s.pos
        p = start
        t = s.text
        if is_name_start(t[p]):
            while p < s.n and is_name_char(t[p]):
                p += 1
        name = t[start:p]
        nxt = t[p] if p < s.n else ""
        if not name or nxt not in (" ", "\t", "\n", "="):
            if not name:
                s.pos = start
                text = s.rest_of_line()
            else:
                s.pos = p
                text = name
            items.append(Skipped(text, s.span(start)))
            self.warn(start, f'Skipped "{text}": expected an assignment NAME=value, '
                             "a recipe ':0' or a '}'")
            return
        s.pos = p
        s.skip_blanks()
        if s.peek() != "=":
            items.append(Assignment(name, None, s.span(start)))
            return
        s.pos += 1
        self.skip_blanks_cont()
        c = s.peek()
        if c == "#":
            s.skip_line()
            value = ""
        elif c in ("", "\n"):
            value = ""
        else:
            wstart, wend, unterminated = self.scan_word(True)
            if unterminated:
                self.warn(wstart, "unterminated quote: expected a closing quote before "
                                  "the end of the file")
            value = _trim_cont(t[wstart:wend])
        if s.peek() in _BLANKS or s.peek() == "\n":
            s.pos += 1
        items.append(Assignment(name, value, s.span(start)))

    # ------------------------------------------------------------ recipes
    def parse_header(self, colon: int) -> tuple[int, frozenset[Flag], LockSpec | None]:
        s = self.src
        s.pos = colon + 1
        raw, hstart, words = self.scan_line_words()
        joined = " ".join(s.text[a:b] for a, b in words)
        # map positions in `joined` back to the file for diagnostics
        offsets: list[int] = []
        for i, (a, b) in enumerate(words):
            offsets.extend(range(a, b))
            if i + 1 < len(words):
                offsets.append(b)
        res = _PP_HEADER.parse_string(joined, parse_all=True)
        count = int(res["count"]) if "count" in res else -1
        flags = frozenset(Flag(ch) for ch in res["flags"] if ch != " ")
        lock: LockSpec | None = None
        rest = res["rest"]
        if "colon" in res:
            lockword = res["lockword"]
            if lockword:
                lock = LockSpec(lockword)
            elif "nextword" in res:
                lock = LockSpec(res["nextword"])
            else:
                lock = LockSpec(None)
        leftover = " ".join(rest.split(" ")).strip(" ")
        if leftover:
            at = len(joined) - len(rest.lstrip(" "))
            pos = offsets[at] if at < len(offsets) else colon
            bad = leftover[0]
            why = (f"unknown flag {bad!r} (expected flags from {_FLAG_ORDER} or ':lock')"
                   if lock is None else "expected nothing after the lock file name")
            self.warn(pos, f'Skipped "{leftover}": {why}')
        return count, flags, lock

    def parse_recipe(self, depth: int) -> Recipe | None:
        s = self.src
        while True:
            colon = s.pos
            count, flags, lock = self.parse_header(colon)
            nrcond = count
            if nrcond < 0:
                nrcond = int(not (flags & {Flag.CHAIN_MATCHED, Flag.CHAIN_SUCCEEDED,
                                           Flag.ELSE, Flag.ON_ERROR}))
            conds: list[tuple[str, int]] = []
            skipped_empty = False
            missing = False
            while True:
                s.skip_blanks()
                nrcond -= 1
                spos = s.pos
                if s.peek() == "*":
                    s.pos += 1
                elif nrcond < 0:
                    c = s.peek()
                    if c == "#":
                        s.skip_line()
                        continue
                    if c == "\n":
                        s.pos += 1
                        skipped_empty = True
                        continue
                    if skipped_empty and c == ":":
                        self.error(s.pos, "Missing action: expected an action line "
                                          "(folder, '| program', '! address' or '{') "
                                          f"for the recipe at {s.span(colon)}; the "
                                          "recipe is ignored")
                        missing = True
                        break
                    break
                s.skip_blanks()
                conds.append((s.getlline(), spos))
            if missing:
                continue  # procmail reiterates with the new recipe (i == 2)
            break
        conditions: list[Condition] = []
        bad = False
        for text, cpos in conds:
            try:
                cond = parse_condition(text, s.span(cpos))
                conditions.append(cond)
                if isinstance(cond.test, SizeTest) and (left := size_leftover(text)):
                    self.warn(cpos, f'Skipped "{left}": expected nothing after the '
                                    "number of bytes")
            except RcSyntaxError as e:
                self.error(cpos, f"{e.message}; the recipe at {s.span(colon)} is ignored")
                bad = True
        s.skip_blanks()
        apos = s.pos
        if s.eof():
            self.error(apos, "Incomplete recipe: expected an action line (folder, "
                             "'| program', '! address' or '{'), found the end of the file")
            return None
        action = self.parse_action(depth, apos)
        if action is None or bad:
            return None
        return Recipe(flags, lock, tuple(conditions), action, s.span(colon))

    def parse_action(self, depth: int, apos: int):
        s = self.src
        t = s.text
        c = s.peek()
        span = s.span(apos)
        if c == "!":
            s.pos += 1
            raw, _, _ = self.scan_line_words()
            return Forward(raw, span)
        if c == "|":
            s.pos += 1
            return Pipe(s.getlline(), None, span)   # verbatim: procmail logs " cmd"
        if is_name_start(c):
            p = apos
            while p < s.n and is_name_char(t[p]):
                p += 1
            q = p
            while q < s.n and t[q] in _BLANKS:
                q += 1
            if q < s.n and t[q] == "=":
                r = q + 1
                while r < s.n and t[r] in _BLANKS:
                    r += 1
                if r < s.n and t[r] == "|":
                    s.pos = r + 1
                    return Pipe(s.getlline(), t[apos:p], span)
                if r < s.n and t[r] == "!":
                    s.pos = r + 1
                    self.scan_line_words()
                    self.error(apos, "capturing a forward ('VAR=! address') is not "
                                     "supported: expected 'VAR=| program'; the recipe "
                                     "is ignored")
                    return None
        if c == "{" and s.peek(1) in (" ", "\t", "\n"):
            s.pos += 2
            items = self.parse_items(depth + 1, apos)
            return Block(tuple(items), span)
        raw, _, _ = self.scan_line_words()
        if raw.startswith(":"):
            self.warn(apos, f"folder name {raw!r} starts with ':': expected an action "
                            "line before the next recipe")
        elif raw == "}":
            self.warn(apos, "folder named '}': expected an action line before the "
                            "closing brace")
        return Folder(raw, span)


def _trim_cont(raw: str) -> str:
    """Drop trailing backslash-newline pairs (layout only), keeping escaped
    backslashes: the text is scanned in pairs from the start."""
    while raw.endswith("\\\n"):
        # count the backslashes before the newline: odd means a continuation pair
        k = len(raw) - 1
        j = k
        while j > 0 and raw[j - 1] == "\\":
            j -= 1
        if (k - j) % 2 == 1:
            raw = raw[:-2]
        else:
            break
    return raw


def parse_rc(text: str, path: str) -> RcFile:
    """Parse rc text (latin-1-decoded).  Never raises for syntax problems: a bad
    recipe is dropped from ``items`` and reported in ``diagnostics``."""
    p = _Parser(text, path)
    items = p.parse_items(0, 0)
    return RcFile(path=path, items=tuple(items), diagnostics=tuple(p.diags))
