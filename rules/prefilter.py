"""rules.prefilter — one RE2::Set pass over a mail's header rules out, at once, every
header condition of an rc file that cannot match.

Why: most recipes of a real rc file do not match most mail (a list filter, a boss
filter, a spam tag...), and each of those conditions cost a call into RE2 plus the
evaluator's frames around it: about a fifth of a delivery's CPU with the benchmarks'
20- and 30-recipe rc files.  An RE2::Set built once per rc file answers for all of its
header conditions with one pass over the header.

Only conditions that search the header take part.  A Set walks every byte of its
area, where RE2 searching for one pattern skips ahead to the pattern's literals: over
the bodies of bench_deliver's messages (17 KB on average) a Set of the rc's two or
three body conditions took 93-110 us a message where searching them one by one took
20-57 us; over their headers (875 bytes) a Set of 21-25 conditions took 7 us where
the conditions took 29-58 us one by one (bench_deliver's 300 messages, its 30-recipe rc and
the 20-recipe rc of bench_mta).

What it promises: a condition the Set does not report cannot match, so the evaluator
skips its search (for a weighted condition: no match, nothing scored).  A condition the
Set does report is searched exactly as before, so MATCH, counting and procmail's
match semantics all still come from rules.regex.  Only plain ``* regex`` conditions
take part, compiled with the recipe's own case flag and the same RE2 options; a
condition whose pattern is empty, invalid, or made at run time (``$`` expansion,
``VAR ??``) is always searched.

RE2::Set::Match answers "nothing matched" and "the DFA ran out of memory" alike, and
the Python binding cannot tell them apart.  Every Set therefore holds a pattern that
matches any text as its first member: an answer without it is a failure, and then
every condition is searched as before.
"""

from __future__ import annotations

from typing import Any

from .ast import Block, Condition, Flag, RcFile, Recipe, RegexTest
from .errors import RegexError
from .regex import compile_regex, re2_options

__all__ = ["AreaSet", "HEADER", "UNKNOWN", "entry_for", "gate_for", "register", "seen"]

# The registry keeps its rc files (and so their conditions) alive: the ids it is keyed
# by cannot be reused while an entry holds them.
_MAX_FILES = 64
_FILES: dict[int, RcFile] = {}
_SEEN: dict[int, RcFile] = {}           # run once, no Set yet (``seen``)
# id(condition) -> (the condition, its Set, its index there, its recipe's D flag)
_ENTRIES: dict[int, tuple[Condition, "AreaSet", int, bool]] = {}
# recipes whose first condition is a plain, unweighted, unnegated member: when the Set
# rules it out, the recipe does not match, and the evaluator need not look further
_GATES: dict[int, tuple[Recipe, "AreaSet", int]] = {}

HEADER = (True, False)                  # the area key of Evaluator._area_and_buffer

_TYPICAL_HEADER = (b"\nFrom sender@example.org  Mon Dec  7 03:35:09 2026\n"
                   b"Received: from host.example.org ([192.0.2.1]) by example.org; "
                   b"Mon, 7 Dec 2026 03:35:09 +0000\nFrom: A Sender <sender@example.org>\n"
                   b"To: <user@example.org>\nSubject: a subject line\n"
                   b"Date: Mon, 7 Dec 2026 03:35:09 +0000\nMessage-ID: <1.2@example.org>\n\n")

UNKNOWN: frozenset[int] = frozenset()   # a Set that failed (see the module docstring)


class AreaSet:
    """The header-searching regex conditions of one rc file, as one RE2::Set."""

    __slots__ = ("_set",)

    def __init__(self, patterns: list[bytes]) -> None:
        from re2 import _re2  # noqa: PLC0415  (rules.regex imports it lazily too)
        self._set = _re2.Set(_re2.RE2.Anchor.UNANCHORED, re2_options())
        for index, pattern in enumerate([b""] + patterns):
            if self._set.Add(pattern) != index:
                raise RegexError(pattern.decode("latin-1"), "RE2::Set refused it")
        if not self._set.Compile():
            raise RegexError("", "RE2::Set did not compile")

    def matching(self, buf: bytes) -> frozenset[int]:
        """The indices of the members found in ``buf`` (a padded area); UNKNOWN when
        the Set could not answer."""
        found = self._set.Match(buf)
        if not found or 0 not in found:
            return UNKNOWN
        return frozenset(found)


def seen(rc: RcFile) -> None:
    """``rc`` is about to run: build its Set the second time (see ``register``)."""
    if id(rc) in _FILES:
        return
    if _SEEN.get(id(rc)) is rc:
        register(rc)
        return
    if len(_SEEN) >= _MAX_FILES:
        _SEEN.clear()
    _SEEN[id(rc)] = rc


def register(rc: RcFile) -> None:
    """Build ``rc``'s Set, once per process and file.

    Building costs more than a delivery saves with it (procmailrc20: 15 ms with its
    regexes compiled, about 2 ms once they are; the Set's first match 0.1 ms, later ones
    3-8 us): a process that delivers one mail must not pay for it.  So the evaluator
    builds it on an rc file's second run in a process (``seen``), and deliver.zygote
    builds it ahead, in the process whose forked children deliver."""
    if id(rc) in _FILES:
        return
    if len(_FILES) >= _MAX_FILES:
        _FILES.clear()
        _ENTRIES.clear()
        _GATES.clear()
    _FILES[id(rc)] = rc
    _SEEN.pop(id(rc), None)
    members: list[tuple[Condition, bytes, bool]] = []
    gates: list[tuple[Recipe, int]] = []
    _collect(rc.items, members, gates)
    if not members:
        return
    try:
        area_set = AreaSet([pattern for _cond, pattern, _case in members])
    except RegexError:
        return                            # these conditions are searched one by one
    # Built aside, then added: the registry never holds half of a file.
    entries = {id(cond): (cond, area_set, index, case)
               for index, (cond, _pattern, case) in enumerate(members, start=1)}
    _ENTRIES.update(entries)
    _GATES.update({id(recipe): (recipe, area_set, index) for recipe, index in gates})
    # RE2 builds a Set's DFA state by state as texts need them: the first header
    # costs 0.1 ms, the next ones 3-8 us.  A header of the usual fields builds the
    # common states here, before any mail waits on them (and before a zygote forks).
    area_set.matching(_TYPICAL_HEADER)


def entry_for(cond: Condition, case_sensitive: bool) -> tuple[AreaSet, int] | None:
    """The Set that answers for ``cond`` searched in the header with the recipe flag D
    as ``case_sensitive``, and its index there; None when no Set holds it so."""
    entry = _ENTRIES.get(id(cond))
    if entry is None or entry[0] is not cond or entry[3] != case_sensitive:
        return None
    return entry[1], entry[2]


def gate_for(recipe: Recipe) -> tuple[AreaSet, int] | None:
    """The Set member that decides ``recipe`` when the Set rules it out (its first
    condition: a plain regex, not negated, not weighted), or None."""
    gate = _GATES.get(id(recipe))
    if gate is None or gate[0] is not recipe:
        return None
    return gate[1], gate[2]


def _collect(items: Any, members: list[tuple[Condition, bytes, bool]],
             gates: list[tuple[Recipe, int]]) -> None:
    """The header-searching regex conditions of ``items`` and their blocks, in order."""
    for item in items:
        if not isinstance(item, Recipe):
            continue
        if Flag.BODY not in item.flags:
            case = Flag.CASE in item.flags
            for position, cond in enumerate(item.conditions):
                pattern = _set_pattern(cond, case)
                if pattern is None:
                    continue
                members.append((cond, pattern, case))
                if position == 0 and not cond.negate and cond.weight is None:
                    gates.append((item, len(members)))      # its Set index
        if isinstance(item.action, Block):
            _collect(item.action.items, members, gates)


def _set_pattern(cond: Condition, case_sensitive: bool) -> bytes | None:
    """What a Set holds for ``cond``: its RE2 translation, or None when it is searched
    one by one (not a plain regex, empty, or invalid)."""
    if not isinstance(cond.test, RegexTest):
        return None
    try:
        rx = compile_regex(cond.test.pattern, case_sensitive=case_sensitive)
    except RegexError:
        return None
    if rx.invalid is not None:
        return None
    return rx.re2_pattern
