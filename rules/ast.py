"""The procmailrc abstract syntax tree.

What it is: frozen, slotted dataclasses, one class per construct, combined as tagged
unions (``Item``, ``Test``, ``Action``) that the evaluator takes apart with ``match``.

What it guarantees:
  * Faithful: everything the evaluator needs is kept *as written* (assignment values,
    folder names and program lines keep their quotes and ``$`` references), because
    procmail expands them at run time against the environment of that moment.
  * Immutable and hashable, so a parsed rc can be cached and shared.
  * Every node carries a ``Span``; spans are excluded from equality, so
    ``parse(print(ast)) == ast`` holds even though the printed text is laid out anew.

Nothing here imports pyparsing: the delivery hot path loads cached ASTs (rules.cache)
without paying for the grammar.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


@dataclass(frozen=True, slots=True)
class Span:
    """Where a node starts in its rc file (1-based line and column)."""

    path: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"


def _span() -> Span:
    return field(default=Span("<none>", 0, 0), compare=False, repr=False)  # type: ignore[return-value]


class Flag(StrEnum):
    """Recipe flags; the value is the letter as written in ``:0FLAGS``."""

    HEADER = "H"          # egrep the header (default)
    BODY = "B"            # egrep the body
    CASE = "D"            # distinguish case in regexes
    CHAIN_MATCHED = "A"   # only if the preceding recipe's conditions matched
    CHAIN_SUCCEEDED = "a" # ... and its action succeeded
    ELSE = "E"            # only if the preceding recipe did not match
    ON_ERROR = "e"        # only if the preceding recipe's action failed
    FEED_HEADER = "h"     # feed the header to the action (default: both)
    FEED_BODY = "b"       # feed the body to the action (default: both)
    FILTER = "f"          # the pipe is a filter
    COPY = "c"            # carbon copy: not a delivering recipe
    WAIT = "w"            # wait for the program, check its exit code
    WAIT_QUIET = "W"      # like w, but suppress "Program failure"
    IGNORE_WRITE = "i"    # ignore write errors on the pipe
    RAW = "r"             # raw mode: no From_ escaping, no added newline


FLAG_LETTERS: frozenset[str] = frozenset(f.value for f in Flag)


@dataclass(frozen=True, slots=True)
class Weight:
    """The ``w^x`` scoring prefix of a condition (procmailsc(5))."""

    weight: float
    exponent: float


# ---------------------------------------------------------------- condition tests


@dataclass(frozen=True, slots=True)
class RegexTest:
    """``* pattern``: an egrep pattern searched in the recipe's area (H, B or both)."""

    pattern: str


@dataclass(frozen=True, slots=True)
class VarTest:
    """``* NAME ?? pattern``: the pattern searched in a variable, or in the area
    H, B, HB or BH when NAME is one of those."""

    name: str
    pattern: str


@dataclass(frozen=True, slots=True)
class ProgramTest:
    """``* ? command``: true when the command exits 0; it gets the area on stdin:
    the flags' (H, B or both) or, after ``NAME ??``, that area or variable's value."""

    command: str
    area: str | None = None


@dataclass(frozen=True, slots=True)
class SizeTest:
    """``* < n`` / ``* > n``: strict comparison of the mail's length with n.
    ``area`` is None for the whole mail, else H/B/HB or a variable name (``B ?? < 10``).
    ``text``: the operand as written when it holds something to expand (``$``, a
    backquote, a quote or a backslash): procmail expands it at every evaluation, then
    reads the number; ``limit`` is unused then."""

    op: str  # "<" or ">"
    limit: int
    area: str | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class ExpandTest:
    """``* $ text``: the text is expanded as inside double quotes, then re-parsed as a
    condition at run time (so ``* $ !x`` is a negation).  ``area``: it came after
    ``NAME ??`` (``* VAR ?? $ $pat``), whose area the re-parsed condition searches
    unless it names one of its own."""

    text: str
    area: str | None = None


Test = RegexTest | VarTest | ProgramTest | SizeTest | ExpandTest


MIN_LINEBUF = 128
"""procmail's smallest LINEBUF: a line shorter than this never exceeds it."""


@dataclass(frozen=True, slots=True)
class Condition:
    """One ``*`` line.  ``negate`` is the parity of the leading ``!`` marks.

    ``width`` is the line's length as procmail reads it into its LINEBUF-sized buffer
    (after the ``*`` and the blanks that follow it; a continued line with its
    backslash-newlines and indentation), kept when at least MIN_LINEBUF, else 0: at
    run time a line of LINEBUF characters or more is ``Exceeded LINEBUF`` and fails.
    """

    test: Test
    negate: bool = False
    weight: Weight | None = None
    span: Span = _span()
    width: int = field(default=0, compare=False)   # layout, as the span


# ---------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Folder:
    """A delivery to one or more folders, as written (expanded and split at run time)."""

    text: str
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Pipe:
    """``| command``, kept as written; ``capture`` is the VAR of ``VAR=| command``."""

    command: str
    capture: str | None = None
    span: Span = _span()
    # the line's length as procmail's getlline() reads it, kept when at least
    # MIN_LINEBUF (as Condition.width): a longer line than LINEBUF is not run
    width: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Forward:
    """``! address ...`` as written; run as ``$SENDMAIL $SENDMAILFLAGS addresses``."""

    text: str
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Block:
    """``{ ... }``: a nested list of items, run when the conditions match.  ``span`` is
    the ``{``; ``end`` the matching ``}`` (None: never closed, the block runs to the
    end of the file), so that a skipped block's syntax problems can be left unsaid."""

    items: tuple["Item", ...]
    span: Span = _span()
    end: Span | None = field(default=None, compare=False)


Action = Folder | Pipe | Forward | Block


@dataclass(frozen=True, slots=True)
class LockSpec:
    """The ``:`` after the flags: ``name`` None means the implicit lock file
    (derived from the folder or the ``>>`` target at run time)."""

    name: str | None = None


@dataclass(frozen=True, slots=True)
class Recipe:
    flags: frozenset[Flag]
    lock: LockSpec | None
    conditions: tuple[Condition, ...]
    action: Action
    span: Span = _span()


# ---------------------------------------------------------------- statements


@dataclass(frozen=True, slots=True)
class Assignment:
    """``NAME=value``; ``value`` keeps its quoting and is expanded at run time.
    ``value`` None is a bare ``NAME`` word, which unsets the variable."""

    name: str
    value: str | None
    span: Span = _span()


@dataclass(frozen=True, slots=True)
class Skipped:
    """A word procmail ignores with ``Skipped "word"`` (e.g. ``A=x -oem``).  Kept in
    the tree so the evaluator logs it at the same point procmail does."""

    text: str
    span: Span = _span()


Item = Assignment | Recipe | Skipped


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """A problem found while parsing: ``error`` for what procmail rejects or skips,
    ``warning`` for what procmail accepts but is probably wrong."""

    span: Span
    severity: str  # "error" | "warning"
    message: str

    def __str__(self) -> str:
        return f"{self.span}: {self.severity}: {self.message}"


@dataclass(frozen=True, slots=True)
class RcFile:
    """A parsed rc file.  ``diagnostics`` lists what was skipped and why; the items
    are what still runs, as procmail runs the rest of a file around a bad recipe."""

    path: str
    items: tuple[Item, ...]
    diagnostics: tuple[Diagnostic, ...] = field(default=(), compare=False)
