"""procmail's egrep dialect, translated to RE2 so that no rule can take more than linear time.

What it does: ``compile_regex(pattern, case_sensitive=...)`` parses a condition's regex the
way procmail's own engine (regexp.c) reads it, expands the built-in macros
(rules.macros), and compiles an RE2 program (google-re2, Latin-1 mode, on bytes) for the
match/no-match question.  The returned ``CompiledRegex`` answers ``search`` (match, plus
the ``MATCH`` text when the pattern has ``\\/``) and ``count`` (successive matches for
weighted scoring, procmailsc(5)).

The dialect (PROCMAIL-BEHAVIOUR 1-8, checked against the real procmail):
  * case-insensitive unless ``case_sensitive``; folding is ASCII only and done here
    (letters become both cases), never by RE2;
  * ``^`` and ``$`` each match exactly one newline; the search area is seen with a
    virtual newline before and after it, so ``^`` at the start and ``$`` at the end work;
  * ``^^`` consumes the leading virtual newline; when it is the last thing of the regex
    it also matches (zero-width) at the very end of the area;
  * ``.`` and negated classes never match a newline; ``{`` is literal; ``\\x`` is a
    literal x; ``\\<`` / ``\\>`` consume one non-word character or newline;
  * ``a**`` is ``a*`` then a literal ``*`` (an operator after an operator, or at the
    start of a group, is a literal); ``[`` without ``]`` runs to the end of the regex;
    a reversed range ``[z-a]`` means just its end character;
  * ``\\/`` splits the regex: ``MATCH`` gets the text matched by the right part, taken
    leftmost-longest, with the left part as short as possible (item 8).
Only unbalanced parentheses make a regex invalid (procmail: "Invalid regexp").

Guarantees: compilation and translation are linear in the pattern (after macro
expansion); every search is linear in the text (RE2 never backtracks).  A plain search
is one RE2 pass over the area.  ``count`` finds each match's earliest end (what
procmail's engine returns) with a few windowed RE2 calls.  For ``\\/``, and for counts
of patterns ending in ``^^``, a Thompson-NFA simulation of regexp.c's own algorithm (in
Python, O(stretch x pattern)) runs over the stretch of text starting where RE2 found
the leftmost match, keeping regexp.c's thread order so that MATCH comes out the same.

Unbalanced parentheses are read as regexp.c reads them: an unclosed ``(`` is closed at
the end of the pattern, a stray ``)`` ends it; the pattern compiles, with ``invalid``
saying why procmail logs "Invalid regexp" for it (the evaluator logs it too, and
``postroom check`` reports it as an error).

Errors: ``rules.errors.RegexError`` for a pattern nested too deeply or one RE2 refuses
(e.g. a program over RE2's memory budget); such a condition counts as a match.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from .errors import RegexError
from .macros import expand_macros

# ---------------------------------------------------------------------------- AST
# Tuples keep parsing cheap:
#   ("set", frozenset[int])  consumes one byte in the set
#   ("anc",)                 ``^^`` before resolution of its position
#   ("bot",)                 consumes the leading virtual newline only
#   ("eot",)                 ``^^`` last in the regex: end of area, or leading newline
#   ("bom",)                 ``\/``
#   ("cat", tuple), ("alt", tuple), ("star", n), ("plus", n), ("opt", n)

_NL = 10
_ALL = frozenset(range(256))
_WORD = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_NONWORD_NL = _ALL - _WORD  # \< and \>: [^a-zA-Z0-9_] plus newline
_DOT = _ALL - {_NL}
_NEWLINE = frozenset({_NL})
_UPPER = range(ord("A"), ord("Z") + 1)
_LOWER = range(ord("a"), ord("z") + 1)


def _other_case(c: int) -> int | None:
    if c in _UPPER:
        return c + 32
    if c in _LOWER:
        return c - 32
    return None


_LITERALS = tuple(("set", frozenset((c,))) for c in range(256))
_FOLDED_LITERALS = tuple(
    ("set", frozenset((c, o))) if (o := _other_case(c)) is not None else _LITERALS[c]
    for c in range(256))


class _Parser:
    """A recursive-descent reader mirroring regexp.c's por/pnorm/psimp."""

    __slots__ = ("p", "n", "i", "fold", "has_bom", "problem")

    def __init__(self, pattern: bytes, fold: bool) -> None:
        self.p = pattern
        self.n = len(pattern)
        self.i = 0
        self.problem: str | None = None    # procmail's "Invalid regexp", read on anyway
        self.fold = fold
        self.has_bom = False

    def endgroup(self) -> bool:
        return self.i >= self.n or self.p[self.i] in (0x7C, 0x29)  # | )

    def por(self) -> tuple[Any, bool]:
        """Alternatives up to ')' (True) or the end of the pattern (False)."""
        alts = []
        while True:
            alts.append(self.pnorm())
            if self.i < self.n and self.p[self.i] == 0x7C:
                self.i += 1
                continue
            break
        closed = self.i < self.n  # stopped at ')'
        if closed:
            self.i += 1
        node = alts[0] if len(alts) == 1 else ("alt", tuple(alts))
        return node, closed

    def pnorm(self) -> Any:
        items = []
        while not self.endgroup():
            atom = self.psimp()
            if self.i < self.n:
                op = self.p[self.i]
                if op == 0x2A:
                    atom = ("star", atom)
                    self.i += 1
                elif op == 0x2B:
                    atom = ("plus", atom)
                    self.i += 1
                elif op == 0x3F:
                    atom = ("opt", atom)
                    self.i += 1
            items.append(atom)
        return items[0] if len(items) == 1 else ("cat", tuple(items))

    def mark(self, s: set[int], c: int) -> None:
        """bseti(): put c (and its other case when folding) in the class."""
        s.add(c)
        if self.fold:
            o = _other_case(c)
            if o is not None:
                s.add(o)

    def psimp(self) -> Any:
        p, i = self.p, self.i
        c = p[i]
        if c == 0x28:  # (
            self.i = i + 1
            node, closed = self.por()
            if not closed:          # regexp.c closes it at the end of the pattern
                self.problem = self.problem or "unmatched '('"
            return node
        if c == 0x5B:  # [
            return self.klass()
        if c == 0x2E:  # .
            self.i = i + 1
            return ("set", _DOT)
        if c == 0x5E and i + 1 < self.n and p[i + 1] == 0x5E:  # ^^
            self.i = i + 2
            return ("anc",)
        if c == 0x5E or c == 0x24:  # ^ $
            self.i = i + 1
            return ("set", _NEWLINE)
        if c == 0x5C:  # backslash
            if i + 1 >= self.n:  # nothing to quote: a literal backslash
                self.i = i + 1
                return self.literal(c)
            q = p[i + 1]
            self.i = i + 2
            if q == 0x2F:
                self.has_bom = True
                return ("bom",)
            if q == 0x3C or q == 0x3E:
                return ("set", _NONWORD_NL)
            return self.literal(q)
        self.i = i + 1
        return self.literal(c)

    def literal(self, c: int) -> Any:
        # shared nodes, one per byte: a blacklist alternation is a million literals
        return _FOLDED_LITERALS[c] if self.fold else _LITERALS[c]

    def klass(self) -> Any:
        p, n = self.p, self.n
        i = self.i + 1
        negate = i < n and p[i] == 0x5E
        s: set[int] = set()
        if negate:
            i += 1
        last = -1
        if i < n and p[i] in (0x5D, 0x2D):  # ] or - first: literal
            s.add(p[i])
            last = p[i]
            i += 1
        while i < n:
            c = p[i]
            if c == 0x5D:
                i += 1
                break
            if c == 0x2D and i + 1 < n and p[i + 1] != 0x5D:
                end = p[i + 1]
                for r in range(last + 1, end):
                    self.mark(s, r)
                c = end
                i += 1
            self.mark(s, c)
            last = c
            i += 1
        self.i = i
        result = (_ALL - s) - _NEWLINE if negate else frozenset(s)
        return ("set", result)


class _Invalid(Exception):
    pass


def _resolve(node: Any, at_end: bool) -> Any:
    """Decide each ``^^``: end anchor only when nothing follows it (regexp.c: e==opcfin)."""
    kind = node[0]
    if kind == "anc":
        return ("eot",) if at_end else ("bot",)
    if kind == "cat":
        items = node[1]
        last = len(items) - 1
        return ("cat", tuple(_resolve(x, at_end and k == last) for k, x in enumerate(items)))
    if kind == "alt":
        return ("alt", tuple(_resolve(x, at_end) for x in node[1]))
    if kind == "opt":
        return ("opt", _resolve(node[1], at_end))
    if kind in ("star", "plus"):
        return (kind, _resolve(node[1], False))
    return node


def _min_length(node: Any) -> int:
    """A lower bound on the bytes any match of ``node`` spans: where the search for a
    match's earliest end can start (CompiledRegex._earliest_end).  Anchors and ``\\/``
    count as zero, which is safe: too small a bound costs only a probe or two more."""
    kind = node[0]
    if kind == "set":
        return 1
    if kind == "cat":
        return sum(_min_length(x) for x in node[1])
    if kind == "alt":
        return min((_min_length(x) for x in node[1]), default=0)
    if kind == "plus":
        return _min_length(node[1])
    return 0      # star, opt, bot, eot, bom


# ------------------------------------------------------------------- RE2 syntax


@functools.lru_cache(maxsize=4096)
def _set_re(s: frozenset[int]) -> str:
    if not s:
        return "[^\\x00-\\xff]"
    if len(s) == 256:
        return "(?s:.)"
    if len(s) == 1:
        (c,) = s
        ch = chr(c)
        return ch if ch.isascii() and ch.isalnum() else f"\\x{c:02x}"
    parts = []
    items = sorted(s)
    start = prev = items[0]
    for c in items[1:] + [999]:
        if c == prev + 1:
            prev = c
            continue
        parts.append(f"\\x{start:02x}" if start == prev else f"\\x{start:02x}-\\x{prev:02x}")
        start = prev = c
    return "[" + "".join(parts) + "]"


def _to_re2(node: Any) -> str:
    kind = node[0]
    if kind == "set":
        return _set_re(node[1])
    if kind == "cat":
        return "".join(_to_re2(x) for x in node[1])
    if kind == "alt":
        return "(?:" + "|".join(_to_re2(x) for x in node[1]) + ")"
    if kind == "star":
        return "(?:" + _to_re2(node[1]) + ")*"
    if kind == "plus":
        return "(?:" + _to_re2(node[1]) + ")+"
    if kind == "opt":
        return "(?:" + _to_re2(node[1]) + ")?"
    if kind == "bot":
        return "\\A\\x0a"
    if kind == "eot":
        return "(?:\\A\\x0a|\\x0a\\z)"
    return ""  # bom: the split itself is found by the NFA


# -------------------------------------------------------------- Thompson NFA
# Instructions (lists, indexed by pc):
#   (0, set, next)   consume a byte in set        (1, a, b)  split: a first
#   (2, next)        jump                         (3, next)  \/ split point
#   (4, next)        consume B[0] only (^^)       (5,)       ^^ at the end
#   (6,)             match

_CHR, _SPLIT, _JMP, _BOM, _BOT, _EOT, _FIN = range(7)


def _compile_nfa(node: Any) -> tuple[list[tuple[Any, ...]], int]:
    """Thompson construction that keeps regexp.c's exploration order and layout quirks.

    ``phys`` is the code that physically follows a node in regexp.c's program: ``\\/``
    has no successor pointer there and simply runs on into it.  So a ``\\/`` that ends
    an alternative continues with the *next alternatives* (``a\\/|b`` is ``a\\/b|b``),
    and one that ends a ``*`` body leaves the loop.  An empty alternative that is not the
    last one is tried after the alternatives that follow it.
    """
    prog: list[tuple[Any, ...]] = [(_FIN,)]

    def emit(ins: tuple[Any, ...]) -> int:
        prog.append(ins)
        return len(prog) - 1

    def empty(nd: Any) -> bool:
        return nd[0] == "cat" and not nd[1]

    def comp(nd: Any, nxt: int, phys: int) -> int:
        kind = nd[0]
        if kind == "set":
            return emit((_CHR, nd[1], nxt))
        if kind == "cat":
            for x in reversed(nd[1]):
                nxt = phys = comp(x, nxt, phys)
            return nxt
        if kind == "alt":
            alts = nd[1]
            chain = nxt if empty(alts[-1]) else comp(alts[-1], nxt, phys)
            for a in reversed(alts[:-1]):
                if empty(a):
                    chain = emit((_SPLIT, chain, nxt))
                else:
                    chain = emit((_SPLIT, comp(a, nxt, chain), chain))
            return chain
        if kind == "star":
            loop = emit((_SPLIT, -1, nxt))
            body = comp(nd[1], loop, phys)
            prog[loop] = (_SPLIT, body, nxt)
            return loop
        if kind == "plus":
            loop = emit((_SPLIT, nxt, -1))  # regexp.c: try the exit first, then loop
            body = comp(nd[1], loop, loop)
            prog[loop] = (_SPLIT, nxt, body)
            return body
        if kind == "opt":
            body = comp(nd[1], nxt, phys)
            return emit((_SPLIT, body, nxt))
        if kind == "bom":
            return emit((_BOM, phys))
        if kind == "bot":
            return emit((_BOT, nxt))
        if kind == "eot":
            return emit((_EOT,))
        raise AssertionError(kind)

    entry = comp(node, 0, 0)
    return prog, entry


def _run_nfa(prog: list[tuple[Any, ...]], entry: int, buf: bytes, pos0: int,
             nosplit: int | None = None) -> tuple[int, int | None, int | None] | None:
    """procmail's bregexec() over ``buf`` (virtual newlines included), from ``pos0``.

    Threads are seeded at every position up to len(buf)-2 (no thread starts at the
    trailing virtual newline) until a ``\\/`` match is found.  Returns ``(end, bom,
    eom)``: ``end`` is where the first match ended (a plain match returns at once, as
    procmail does); with ``\\/``, ``bom``/``eom`` delimit MATCH.  The order in which
    threads are tried follows regexp.c (its state lists are stacks, and cleantail()
    reverses them), because with ``\\/`` the first thread to reach the end decides.
    """
    n = len(buf)
    if nosplit is None:  # regexp.c's "pend": no \/ passed yet (or passed too late)
        nosplit = n
    seed_limit = n - 2
    bom: int | None = None
    eom: int | None = None
    queue: list[tuple[int, int]] = []  # this step's threads, in processing order
    pos = pos0
    while pos <= n:
        c = buf[pos] if pos < n else _NL
        nxt_pcs: list[int] = []           # the "other" stack; its head is the end
        nxt_start: dict[int, int] = {}
        seeding = eom is None and pos <= seed_limit
        k = -1 if seeding else 0
        while True:
            if k < 0:
                pc0, start = entry, nosplit
            elif k < len(queue):
                pc0, start = queue[k]
            else:
                break
            k += 1
            stack = [pc0]
            seen: set[int] = set()
            while stack:
                pc = stack.pop()
                ins = prog[pc]
                op = ins[0]
                if op == _CHR or op == _BOT or op == _EOT:
                    if op == _CHR:
                        ok = pos < n and c in ins[1]
                        to = ins[2]
                    elif op == _BOT:
                        ok, to = pos == 0, ins[1]
                    else:
                        if pos == n - 1:  # ^^ at the end: zero-width
                            stack.append(0)
                            continue
                        ok, to = pos == 0, 0  # else like the start anchor (regexp.c)
                    if ok:
                        old = nxt_start.get(to)
                        if old is None:
                            nxt_start[to] = start
                            nxt_pcs.append(to)
                        elif start < old:
                            nxt_start[to] = start
                elif op == _SPLIT or op == _JMP:
                    if pc in seen:
                        continue
                    seen.add(pc)
                    if op == _SPLIT:
                        stack.append(ins[2])
                        stack.append(ins[1])
                    else:
                        stack.append(ins[1])
                elif op == _BOM:
                    if eom is None:
                        start = pos
                    stack.append(ins[1])
                else:  # _FIN
                    if start >= nosplit:
                        return pos, None, None
                    bom = start
                    eom = pos
                    # cleantail(): drop later splits, and the lists come out reversed
                    rest = [t for t in queue[k:] if t[1] <= bom]
                    rest.reverse()
                    queue = queue[:k] + rest
                    kept = [p for p in reversed(nxt_pcs) if nxt_start[p] <= bom]
                    nxt_pcs = kept
                    nxt_start = {p: nxt_start[p] for p in kept}
        queue = [(p, nxt_start[p]) for p in reversed(nxt_pcs)]
        if not queue and (eom is not None or pos >= seed_limit):
            break
        pos += 1
    if eom is None:
        return None
    assert bom is not None
    return eom, bom, eom


# ------------------------------------------------------------------- interface


def padded(text: bytes) -> bytes:
    """The buffer regexp.c searches: the area between two virtual newlines, so that
    ``^`` and ``$`` hold at its start and end."""
    return b"\n" + text + b"\n"


@dataclass(frozen=True, slots=True)
class RegexMatch:
    """A successful search.  ``match`` is the text for MATCH when the pattern contains
    ``\\/`` (may be b""), else None (MATCH is left alone)."""

    match: bytes | None


_re2mod: Any = None


def _re2() -> Any:
    """Import google-re2 on first use: keeps ``import rules.regex`` cheap."""
    global _re2mod
    if _re2mod is None:
        from re2 import _re2 as mod  # noqa: PLC0415  (lazy on purpose)
        _re2mod = mod
    return _re2mod


def _earliest_end(re2obj: Any, anchor: Any, min_length: int, buf: bytes, pos: int) -> int | None:
    """Where the first match of ``re2obj`` to *end* at or after ``pos`` ends.  RE2's
    leftmost match [a, b) bounds it; a galloping search over the end of the window finds
    the earliest end in O(log(length)) RE2 calls over that stretch.  ``min_length``: no
    match is shorter."""
    spans = re2obj.Match(anchor, buf, pos, len(buf))
    a, b = spans[0]
    if a < 0 or a > len(buf) - 2:  # no thread starts at the trailing newline
        return None
    # Gallop from a (matches that end early are usually short), then bisect.  No
    # match starts before a (RE2's leftmost start), so each probe searches [a, end],
    # not [pos, end]: the same answer without rescanning the text before the match
    # (RE2 still sees the bytes before a as context for ^ and \b).
    # No match is shorter than min_length, so no end comes before a + min_length:
    # a literal like "click here" needs this one RE2 call, not a dozen.
    match = re2obj.Match
    lo, step = a + min_length, 1
    while True:
        if lo >= b:
            return b
        hi = min(lo + step - 1, b - 1)
        if match(anchor, buf, a, hi)[0][0] >= 0:
            break
        lo, step = hi + 1, step * 2
    while lo < hi:  # the least end in [lo, hi] with a match inside [a, end]
        mid = (lo + hi) // 2
        if match(anchor, buf, a, mid)[0][0] >= 0:
            hi = mid
        else:
            lo = mid + 1
    return hi


class CompiledRegex:
    """An immutable compiled condition regex."""

    __slots__ = ("pattern", "case_sensitive", "_node", "_re", "_anchor", "_has_bom",
                 "_empty", "_nfa", "_fast_count", "_min_length", "invalid", "re2_pattern",
                 "_split_run")

    def __init__(self, pattern: str, node: Any, re2obj: Any, has_bom: bool,
                 case_sensitive: bool, end_anchor: bool = False,
                 invalid: str | None = None, re2_pattern: bytes | None = None,
                 split_run: tuple[Any, int, frozenset[int]] | None = None) -> None:
        self.pattern = pattern
        # ``L\/[c]+``: (RE2 of L followed by one c, its least length, c); see
        # _split_run_shape
        self._split_run = split_run
        # what RE2 compiled (with re2_options()): rules.prefilter puts it in a Set
        self.re2_pattern = re2_pattern
        self.case_sensitive = case_sensitive
        self._node = node
        self._re = re2obj
        self._anchor = _re2().RE2.Anchor.UNANCHORED if re2obj is not None else None
        self._has_bom = has_bom
        # RE2 alone gives regexp.c's match end unless \/ or a zero-width end ^^ is in it
        self._fast_count = not has_bom and not end_anchor
        self._empty = node is None
        self._nfa: tuple[list[tuple[Any, ...]], int] | None = None
        self._min_length = 0 if node is None else _min_length(node)
        # why procmail logs "Invalid regexp" for it (unbalanced parentheses), though it
        # matches with what it could read; None for a well-formed pattern
        self.invalid = invalid

    def __repr__(self) -> str:
        return f"CompiledRegex({self.pattern!r}, case_sensitive={self.case_sensitive})"

    @property
    def sets_match(self) -> bool:
        """Whether a match assigns MATCH (the pattern has ``\\/``)."""
        return self._has_bom

    def _program(self) -> tuple[list[tuple[Any, ...]], int]:
        if self._nfa is None:
            self._nfa = _compile_nfa(self._node)
        return self._nfa

    def _first(self, buf: bytes, pos: int) -> int | None:
        """Start of the leftmost match in ``buf`` at or after ``pos`` (RE2)."""
        spans = self._re.Match(self._anchor, buf, pos, len(buf))
        start = spans[0][0]
        return None if start < 0 else start

    def _earliest_end(self, buf: bytes, pos: int) -> int | None:
        """Where the first match to *end* at or after ``pos`` ends: what regexp.c returns
        for a pattern without ``\\/``."""
        return _earliest_end(self._re, self._anchor, self._min_length, buf, pos)

    def search(self, text: bytes, buf: bytes | None = None) -> RegexMatch | None:
        """Search the area ``text``; None when there is no match.  ``buf``, when given,
        is ``padded(text)``: an evaluator that searches one area with many conditions
        pads it once instead of copying it for every search."""
        if self._empty:  # procmail does not even search for an empty regex
            return RegexMatch(None)
        if buf is None:
            buf = padded(text)
        a0 = self._first(buf, 0)
        if a0 is None:
            return None
        if not self._has_bom:
            return RegexMatch(None)
        span = self._split_run_span(buf, a0) if self._split_run is not None else None
        if span is None:
            span = self._nfa_span(buf, a0)
        if span is None:  # RE2 and the NFA disagree only if this module is wrong
            return None
        bom, eom = span
        if bom is None or eom is None:
            return RegexMatch(None)
        lo = max(bom - 1, 0)
        hi = min(eom - 1, len(text))
        return RegexMatch(text[lo:hi] if hi > lo else b"")

    def _nfa_span(self, buf: bytes, a0: int) -> tuple[int | None, int | None] | None:
        """(bom, eom) of the match regexp.c finds from ``a0`` (RE2's leftmost start), by
        running procmail's engine; None when there is none."""
        prog, entry = self._program()
        res = _run_nfa(prog, entry, buf, a0)
        return None if res is None else (res[1], res[2])

    def _split_run_span(self, buf: bytes, a0: int) -> tuple[int, int] | None:
        """(bom, eom) for ``L\\/[c]+`` without the engine (see _split_run_shape): the
        first thread to reach the end is the one whose match of ``L`` then one ``c``
        ends first, and the run of ``c`` after its split point is what MATCH gets."""
        assert self._split_run is not None
        left_c, min_length, run = self._split_run
        end = _earliest_end(left_c, self._anchor, min_length, buf, a0)
        if end is None:
            return None
        bom = eom = end - 1
        n = len(buf)
        while eom < n and buf[eom] in run:
            eom += 1
        return bom, eom

    def _first_term(self, buf: bytes) -> tuple[int, bool]:
        """count_series with ``limit`` 1 (a ``w^0`` condition): whether the series has
        its first term, and whether that match is empty at the area's start (the one
        case in which the series "ended empty"), without finding where the match ends:
        two RE2 calls instead of a galloping search."""
        start = self._re.Match(self._anchor, buf, 0, len(buf))[0][0]
        if start < 0 or start > len(buf) - 2:  # no thread starts at the trailing newline
            return 0, False
        return 1, self._re.Match(self._anchor, buf, 0, 1)[0][0] >= 0

    def count(self, text: bytes, limit: int) -> int | None:
        """Number of successive matches as procmail counts them for weighted scoring
        (procmailsc(5)), stopping at ``limit``; None when an empty match would make the
        count unbounded (procmail jumps to +infinity, behaviour 14).

        Each search restarts where the previous match ended (earliest end, as
        procmail's engine returns it), with a newline just before that point still
        visible to ``^``.
        """
        found, empty = self.count_series(text, limit)
        return None if empty else found

    def count_series(self, text: bytes, limit: int, buf: bytes | None = None,
                     matches: list[bytes] | None = None) -> tuple[int, bool]:
        """``(n, ended_empty)``: the matches counted (at most ``limit``, including the
        empty match that ends a series) and whether an empty match ended it.  With a
        negative exponent procmail adds exactly those n terms and stops (misc.c).
        ``buf`` as for ``search``.  ``matches``, when given, receives each match's text
        for MATCH (a pattern with ``\\/``; procmail sets MATCH at every match of the
        series, so the last term it scores leaves its own)."""
        if limit <= 0:
            return 0, False
        if self._empty:  # an empty regex "matches" without searching: empty at once
            return 1, True
        if buf is None:
            buf = padded(text)
        if limit == 1 and self._fast_count and matches is None:
            return self._first_term(buf)
        n = len(text)
        prog, entry = self._program()
        found = 0
        pos = 0  # in text coordinates
        while found < limit and pos <= n:
            if pos == 0 or text[pos - 1] == _NL:
                b, start = buf, pos
                shift = 0
            elif pos == n:  # regexp.c with len 0: two virtual newlines, seeded on the first
                b, start = b"x\n\n", 1
                shift = n
            else:
                b, start = buf, pos + 1
                shift = 0
            if self._fast_count and not shift:
                e = self._earliest_end(b, start)
                res = None if e is None else (e, None, None)
            else:
                a0 = self._first(b, start)
                if a0 is None:
                    break
                res = _run_nfa(prog, entry, b, max(a0, start), 2 if shift else None)
            if res is None:
                break
            found += 1
            end = res[0] - 1 + shift  # text coordinate of "one past the match"
            if res[1] is not None:  # a \/ match: regexp.c clips its end to the area
                end = min(end, n)
                if matches is not None:
                    lo, hi = max(res[1] - 1, 0), min(res[2] - 1, n)
                    matches.append(text[lo:hi] if not shift and hi > lo else b"")
            if end <= pos:
                return found, True
            pos = end
        return found, False


@functools.lru_cache(maxsize=1024)
def compile_regex(pattern: str, *, case_sensitive: bool = False,
                  quoted_start: bool = False) -> CompiledRegex:
    """Compile a condition regex.  Raise rules.errors.RegexError for an invalid pattern.

    ``pattern`` is latin-1 text as the rc parser produced it.  ``quoted_start``: the
    condition began with a backslash (dropped by the parser), which keeps a macro at
    position 0 from being expanded.  Results are cached.
    """
    if "\0" in pattern:     # a NUL in the rc text: procmail's C string ends there
        pattern = pattern[: pattern.index("\0")]
    expanded, force_nocase = expand_macros(pattern, quoted_start=quoted_start)
    fold = force_nocase or not case_sensitive
    try:
        raw = expanded.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise RegexError(pattern, "not latin-1 text") from exc
    if not raw:
        return CompiledRegex(pattern, None, None, False, case_sensitive)
    parser = _Parser(raw, fold)
    try:
        node, closed = parser.por()
    except _Invalid as exc:
        raise RegexError(pattern, str(exc)) from None
    except RecursionError:
        raise RegexError(pattern, "nested too deeply") from None
    if closed:                      # regexp.c: a stray ')' ends the pattern there
        parser.problem = parser.problem or "unmatched ')'"
    node = _resolve(node, True)
    translated = _to_re2(node)
    raw_re2 = translated.encode("latin-1")
    obj = _compile_re2(raw_re2)
    if not obj.ok():
        raise RegexError(pattern, f"RE2: {obj.error()}")
    split_run = None
    shape = _split_run_shape(node) if parser.has_bom else None
    if shape is not None:
        left_c = ("cat", shape[0] + (("set", shape[1]),))
        left_c_obj = _re2().RE2(_to_re2(left_c).encode("latin-1"), re2_options())
        if left_c_obj.ok():
            split_run = (left_c_obj, _min_length(left_c), shape[1])
    return CompiledRegex(pattern, node, obj, parser.has_bom, case_sensitive,
                         end_anchor="\\z" in translated, invalid=parser.problem,
                         re2_pattern=raw_re2, split_run=split_run)


def _split_run_shape(node: Any) -> tuple[tuple[Any, ...], frozenset[int]] | None:
    """``(L, c)`` when ``node`` is ``L\\/[c]+``, the usual way of taking a word out of
    a header (``^Subject: \\[\\/[a-z]+``, ``^List-Id:.*<\\/[a-z0-9-]+``); else None.

    For this shape procmail's engine gives what RE2 can: the first thread to reach the
    end is the one whose ``L`` plus one ``c`` ends first (a thread past the split ends
    one byte later, so every thread that ties passed the split at the same place, and a
    thread that split earlier would have ended earlier), ending the seeding; the
    clean-up drops every thread that split later, and the run of ``c`` is what remains.
    So MATCH is the run of ``c`` from one byte before the earliest end of a match of
    ``Lc``.  Conditions that keep it exact: ``L`` ends with a plain byte class (a loop
    next to the split shares its thread with it in regexp.c, a quirk the engine
    reproduces), holds no other split and no ``^^``, and ``c`` holds no newline (a run
    could otherwise reach the area's virtual last newline, where the engine stops).
    tests/rules/test_regex_unit.py checks this against the engine, and the oracle table
    against procmail."""
    if node[0] != "cat" or len(node[1]) < 3:
        return None
    *left, split, run = node[1]
    if split != ("bom",) or run[0] != "plus" or run[1][0] != "set" or _NL in run[1][1]:
        return None
    if left[-1][0] != "set" or any(_has_anchor_or_split(item) for item in left):
        return None
    return tuple(left), run[1][1]


def _has_anchor_or_split(node: Any) -> bool:
    kind = node[0]
    if kind in ("bom", "bot", "eot", "anc"):
        return True
    if kind in ("cat", "alt"):
        return any(_has_anchor_or_split(x) for x in node[1])
    if kind in ("star", "plus", "opt"):
        return _has_anchor_or_split(node[1])
    return False


_RE2_MEMORY_CAP = 1 << 30


def _compile_re2(raw: bytes) -> Any:
    """RE2 of ``raw`` with re2_options().  A pattern too large for RE2's default memory
    budget (8 MB: a blacklist of some 30,000 addresses read with a backquote under a
    raised LINEBUF) is compiled again with a budget that grows with it, up to 1 GB:
    procmail's own engine has no such limit, and a condition must not turn into an
    "Invalid regexp" (which counts as a match) because of its size alone."""
    mod = _re2()
    obj = mod.RE2(raw, re2_options())
    if not obj.ok() and b"too large" in obj.error():
        opts = re2_options()
        opts.max_mem = min(_RE2_MEMORY_CAP, max(64 << 20, 128 * len(raw)))
        obj = mod.RE2(raw, opts)
    return obj


def re2_options() -> Any:
    """The RE2 options of every condition regex: bytes as latin-1, case folded by the
    translation itself, no capture groups."""
    mod = _re2()
    opts = mod.RE2.Options()
    opts.encoding = mod.RE2.Options.Encoding.LATIN1
    opts.log_errors = False
    opts.case_sensitive = True
    opts.never_capture = True
    return opts
