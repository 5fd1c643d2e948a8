"""The procmailrc grammar, as pyparsing elements (procmailrc(5), procmailex(5)).

What it is: the whole syntax procmail 3.22 reads in its main loop (src/procmail.c
``mainloop``, src/misc.c ``conditions``, src/goodies.c ``readparse``/``getlline``),
written as named pyparsing elements whose parse actions build the nodes of rules.ast.
Read as a grammar (``x*`` repeats, ``x?`` is optional, ``&x`` looks ahead, ``|`` takes
the first alternative that matches, as pyparsing's MatchFirst does)::

  rc_file       := (filler item)* filler END
  item          := recipe | close_brace | statement
  statement     := assignment | unset | skipped_word | skipped_line
  assignment    := NAME [ \t]* "=" gap (value_word | comment_rest)? [ \t\n]?
  unset         := NAME &[ \t\n] blanks              (a bare NAME unsets it)
  skipped_word  := NAME                                (Skipped, e.g. the x of x-y)
  skipped_line  := [^\n]+ "\n"?                      (Skipped: the rest of the line)
  recipe        := colon header forced_condition{N} (condition | comment)*
                   ( blank_line (condition | comment | blank_line)*
                     (missing_action | action)
                   | action )
  colon         := ":"
  header        := line_words      (its words joined by one blank are header_fields)
  header_fields := NUMBER? [flags ]* (":" LOCKWORD (" " NEXTWORD)?)? REST
  condition     := blanks "*" [ \t]* logical_line       (text: rules.condparse)
  forced_condition := blanks "*"? [ \t]* logical_line   (``:N``: the next N lines)
  missing_action:= blanks &":"        (after a blank line: "Missing action", and the
                                       next item is the recipe at that colon)
  action        := blanks ( "|" logical_line             (Pipe)
                          | "{" [ \t\n]                 (block_open)
                          | capture                      (Pipe with capture)
                          | "!" line_words               (Forward)
                          | END                          (Incomplete recipe)
                          | line_words )                 (Folder)
  capture       := NAME [ \t]* "=" [ \t]* ( "|" logical_line
                                           | "!" line_words )     (refused)
  close_brace   := "}"
  line_words    := spaced_word* line_end                 (readparse, sarg=0)
  spaced_word   := gap sh_word
  value_word    := gap (alt_opener+ sh_word? | sh_word)
  alt_opener    := "${" [A-Za-z0-9_]* ":"? [-+] gap   (blanks after it are skipped)
  line_end      := gap ("#" [^\n]*)? "\n"?
  logical_line  := ([^\n]* "\\\n")* [^\n]* "\n"?       (getlline: continuations)
  sh_word       := (?!#) (sq_string | dq_string | backquote | escape | plain)+
  filler        := (blank_line | comment)* blanks        (procmail's commint)
  blank_line    := [ \t]* "\n"
  comment       := [ \t]* "#" [^\n]* "\n"?
  gap           := ([ \t] | "\\\n")*                   (blanks and continuations)

The lexical elements (sh_word with its quotings, logical_line, gap, filler,
header_fields) are regular expressions assembled from named sub-patterns: each is
one pyparsing token, scanned linearly by ``re``, with possessive repeats wherever
pyparsing's no-backtracking reading must be kept inside one regex.

Blocks are flat here, as in procmail's own loop: a recipe whose action is ``{`` yields
a ``BlockOpen`` token and ``}`` a ``BlockClose`` token; rules.parser folds the flat
sequence into nested ``Block`` nodes with a stack, so nesting depth costs no Python
recursion.  Two things are context-sensitive and kept in the per-parse ``ParseContext``
(a ContextVar, so parses in different threads do not meet): the file name and line
table for spans, and the legacy condition count ``N`` that the header's parse action
sets for ``forced_condition``.  INCLUDERC and SWITCHRC are plain assignments: the
evaluator reads the named file when it runs them, as procmail does.

What it guarantees: ``RC_FILE`` matches every text (there is no syntax error at this
level; problems are ``Diagnostic`` tokens in reading order, which is procmail's
recovery: a bad recipe is dropped, the rest still parses).  Parse actions never raise.
Only rules.parser imports this module, so a cached AST (rules.cache) never loads
pyparsing.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import pyparsing as pp

from .ast import (MIN_LINEBUF, Condition, Diagnostic, Flag, FLAG_LETTERS, Folder, Forward, LockSpec,
                  Pipe, Recipe, Assignment, SizeTest, Skipped, Span)
from .condparse import parse_condition, size_leftover
from .errors import RcSyntaxError

__all__ = ["RC_FILE", "ParseContext", "BlockOpen", "BlockClose", "parsing_context",
           "missing_brace", "unexpected_brace"]

_FLAG_ORDER = "HBDAaEehbfcwWir"
_ALL_FLAGS = "".join(sorted(FLAG_LETTERS))
_ACTION_KINDS = "(folder, '| program', '! address' or '{')"


# ------------------------------------------------------------------ parse context
@dataclass
class ParseContext:
    """What the parse actions need beyond their match: the file for spans, and the
    number of legacy ``:N`` condition lines the current recipe still takes."""

    text: str
    path: str
    starts: list[int] = field(init=False)     # offset of each line's first char
    forced_left: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.starts = [0] + [m.end() for m in re.finditer("\n", self.text)]

    def span(self, pos: int) -> Span:
        i = bisect.bisect_right(self.starts, pos) - 1
        return Span(self.path, i + 1, pos - self.starts[i] + 1)

    def error(self, pos: int, msg: str) -> Diagnostic:
        return Diagnostic(self.span(pos), "error", msg)

    def warn(self, pos: int, msg: str) -> Diagnostic:
        return Diagnostic(self.span(pos), "warning", msg)


_CONTEXT: ContextVar[ParseContext] = ContextVar("rules.grammar.context")


@contextmanager
def parsing_context(text: str, path: str) -> Iterator[ParseContext]:
    """``with parsing_context(text, path) as ctx:`` around ``RC_FILE.parse_string``:
    the parse actions of this parse see ``ctx``, and only they."""
    token = _CONTEXT.set(ParseContext(text, path))
    try:
        yield _CONTEXT.get()
    finally:
        _CONTEXT.reset(token)


# ------------------------------------------------------------------ flat tokens
@dataclass(frozen=True, slots=True)
class BlockOpen:
    """A recipe whose action is ``{``: the items up to the matching BlockClose are its
    block.  ``keep`` is False when its conditions were refused (the block is still
    read, for its diagnostics, and then dropped)."""

    flags: frozenset[Flag]
    lock: LockSpec | None
    conditions: tuple[Condition, ...]
    span: Span
    block_span: Span
    keep: bool


@dataclass(frozen=True, slots=True)
class BlockClose:
    """A ``}``: closes the innermost open block, or is unexpected at the top level."""

    pos: int


def missing_brace(ctx: ParseContext, open_span: Span) -> Diagnostic:
    return ctx.error(len(ctx.text), "Missing closing brace: expected '}' to close the "
                                    f"block opened at {open_span}")


def unexpected_brace(ctx: ParseContext, pos: int) -> Diagnostic:
    return ctx.error(pos, "Closing brace unexpected: no block is open here")


@dataclass(frozen=True, slots=True)
class _Word:
    start: int
    end: int
    unterminated: bool


@dataclass(frozen=True, slots=True)
class _Words:
    raw: str
    words: tuple[_Word, ...]
    diags: tuple[Diagnostic, ...]


@dataclass(frozen=True, slots=True)
class _Header:
    pos: int
    flags: frozenset[Flag]
    lock: LockSpec | None
    diags: tuple[Diagnostic, ...]


@dataclass(frozen=True, slots=True)
class _CondLine:
    text: str
    pos: int


@dataclass(frozen=True, slots=True)
class _Marker:
    """An action-position outcome that is not an action: the kind says which."""

    kind: str  # "missing" | "incomplete" | "block" | "refused"
    pos: int


# ------------------------------------------------------------------ helpers
def _regex(pattern: str, name: str, as_match: bool = False) -> pp.Regex:
    return pp.Regex(pattern, as_match=as_match).set_name(name)


class _Layout(pp.Regex):
    """A regex token that is layout only: it must match, and yields nothing (like
    ``Suppress``, without the wrapper's extra call on this hot path)."""

    def postParse(self, instring: str, loc: int, tokenlist: object) -> list:
        return []


def _layout(pattern: str, name: str) -> _Layout:
    return _Layout(pattern).set_name(name)


def _trim_cont(raw: str) -> str:
    """Drop trailing backslash-newline pairs (layout only), keeping escaped
    backslashes: the text is scanned in pairs from the start."""
    while raw.endswith("\\\n"):
        k = len(raw) - 1
        j = k
        while j > 0 and raw[j - 1] == "\\":
            j -= 1
        if (k - j) % 2 == 1:   # odd: the last backslash escapes the newline
            raw = raw[:-2]
        else:
            break
    return raw


def _unterminated(ctx: ParseContext, word: _Word) -> Diagnostic:
    return ctx.warn(word.start, "unterminated quote: expected a closing quote before "
                                "the end of the file")


# ------------------------------------------------------------------ lexical elements
# sh quoting as readparse() does it.  Every piece is possessive: a word never gives
# characters back, so the scan is linear.  An opening quote without its closer runs
# to the end of the text; the empty groups usq/udq record that (it is then the last
# piece of the word).
_ESCAPE = r"\\(?s:.)?"                                    # backslash quotes the next char
_BQ_BARE = r"`(?:\\(?s:.)?|[^`\\])*+`?"                   # `cmd` outside double quotes
_BQ_IN_DQ = r"`(?:\\(?s:.)?|[^`\\\"])*+`?"                # inside: a '"' also ends it
_SQ_STRING = r"'[^']*+(?:'|\Z(?P<usq>))"
_DQ_STRING = rf'"(?:\\(?s:.)?|{_BQ_IN_DQ}|[^"\\`])*+(?:"|\Z(?P<udq>))'
_PLAIN = r"[^ \t\n'\"\\`]"
_SH_WORD = rf"(?!#)(?:{_SQ_STRING}|{_DQ_STRING}|{_BQ_BARE}|{_ESCAPE}|{_PLAIN})++"

_GAP = r"(?:[ \t]|\\\n)*+"                               # blanks and continuations
_BLANK_LINE = r"[ \t]*\n"
_COMMENT = r"[ \t]*#[^\n]*\n?"

NAME = _regex(r"[A-Za-z_][A-Za-z0-9_]*", "NAME")            # alphanum, not numeric first
blanks = _layout(r"[ \t]*", "blanks")
blank_line = _layout(_BLANK_LINE, "blank_line")
comment = _layout(_COMMENT, "comment")
filler = _layout(rf"(?:{_BLANK_LINE}|{_COMMENT})*+[ \t]*", "filler")   # commint
comment_rest = _layout(r"#[^\n]*\n?", "comment_rest")
line_end = _layout(rf"{_GAP}(?:#[^\n]*)?\n?", "line_end")
spaced_word = _regex(rf"{_GAP}(?P<word>{_SH_WORD})", "spaced_word", as_match=True)
# An assignment's value (readparse, sarg=1) ends at the first blank read once it holds
# something; blanks before that are skipped.  Statically that is the blanks right after
# ``${NAME:-`` ``${NAME-`` ``${NAME:+`` ``${NAME+`` openers at the start of the value
# (an opener changes nothing): ``X=${U:- word}`` is ``word`` when U is empty.  Whether a
# word that produced nothing leaves the value open (``X=${U:-} word``) depends on U at
# run time; that reading is not followed here (README, Differences).
_ALT_OPENERS = r"(?:\$\{[A-Za-z0-9_]*:?[-+](?:[ \t]|\\\n)*+)++"
_SH_WORD_AFTER_OPENERS = _SH_WORD.replace("(?P<usq>)", "(?P<usq2>)").replace("(?P<udq>)", "(?P<udq2>)")
value_word = _regex(rf"{_GAP}(?P<word>{_ALT_OPENERS}(?:{_SH_WORD_AFTER_OPENERS})?+|{_SH_WORD})",
                    "value_word", as_match=True)
logical_line = _regex(r"(?:[^\n]*\\\n)*[^\n]*\n?", "logical_line")


def _on_spaced_word(s: str, loc: int, toks: pp.ParseResults) -> _Word:
    m = toks[0]
    return _Word(m.start("word"), m.end("word"),
                 m.group("usq") is not None or m.group("udq") is not None)


def _on_value_word(s: str, loc: int, toks: pp.ParseResults) -> _Word:
    m = toks[0]
    return _Word(m.start("word"), m.end("word"),
                 any(m.group(g) is not None for g in ("usq", "udq", "usq2", "udq2")))


def _on_logical_line(s: str, loc: int, toks: pp.ParseResults) -> str:
    """procmail's getlline(): a line ending in a backslash continues; the backslash
    stays before the newline unless it was all the line held (behaviour 18)."""
    text = toks[0]
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return "".join((ln + "\n" if len(ln) > 1 else "\n") if ln.endswith("\\") else ln
                   for ln in lines)


spaced_word.add_parse_action(_on_spaced_word)
value_word.add_parse_action(_on_value_word)
logical_line.add_parse_action(_on_logical_line)

line_words = (pp.ZeroOrMore(spaced_word) + line_end).set_name("line_words")


def _on_line_words(s: str, loc: int, toks: pp.ParseResults) -> _Words:
    """readparse(sarg=0): the words up to the end of the logical line; the text runs
    from the first word to the end of the last, as written."""
    words = tuple(toks)
    ctx = _CONTEXT.get()
    raw = _trim_cont(s[words[0].start:words[-1].end]) if words else ""
    return _Words(raw, words, tuple(_unterminated(ctx, w) for w in words
                                    if w.unterminated))


line_words.add_parse_action(_on_line_words)

# ------------------------------------------------------------------ statements
assignment = (NAME + _layout(rf"[ \t]*={_GAP}", "'='")
              + pp.Opt(value_word | comment_rest)
              + _layout(r"[ \t\n]?", "separator")).set_name("assignment")
unset = (NAME + _layout(r"(?=[ \t\n])[ \t]*", "blank")).set_name("unset")
skipped_word = NAME.copy().set_name("skipped_word")
skipped_line = _regex(r"[^\n]+\n?", "skipped_line")
statement = (assignment | unset | skipped_word | skipped_line).set_name("statement")


def _on_assignment(s: str, loc: int, toks: pp.ParseResults) -> list:
    ctx = _CONTEXT.get()
    if len(toks) == 1:
        return [Assignment(toks[0], "", ctx.span(loc))]
    word: _Word = toks[1]
    value = _trim_cont(s[word.start:word.end])
    node = Assignment(toks[0], value, ctx.span(loc))
    return [_unterminated(ctx, word), node] if word.unterminated else [node]


def _on_unset(s: str, loc: int, toks: pp.ParseResults) -> Assignment:
    return Assignment(toks[0], None, _CONTEXT.get().span(loc))


def _skipped(loc: int, text: str) -> list:
    """procmail logs ``Skipped "text"`` and goes on after it (gobenv's failure)."""
    ctx = _CONTEXT.get()
    return [Skipped(text, ctx.span(loc)),
            ctx.warn(loc, f'Skipped "{text}": expected an assignment NAME=value, '
                          "a recipe ':0' or a '}'")]


assignment.add_parse_action(_on_assignment)
unset.add_parse_action(_on_unset)
skipped_word.add_parse_action(lambda s, loc, toks: _skipped(loc, toks[0]))
skipped_line.add_parse_action(lambda s, loc, toks: _skipped(loc, toks[0].rstrip("\n")))

# ------------------------------------------------------------------ recipe header
# ``:`` has been consumed; what readparse() returned for the rest of the line, its
# words joined by one blank: a legacy condition count (strtol), then flag letters and
# at most one ``:lock``.
header_fields = pp.Regex(
    r"(?P<count>[+-]?[0-9]+)?"                       # strtol: the legacy count
    rf"(?P<flags>[{re.escape(_ALL_FLAGS)} ]*)"       # flag letters (and blanks)
    # ":lock", or ":" ending its word and the lock the next word (procmail's flag
    # loop); any word after the lock is left over (Skipped)
    r"(?:(?P<colon>:)(?:(?P<lockword>[^ ]+)|(?: (?P<nextword>[^ ]+))?))?"
    r"(?P<rest>.*)",                                 # what is left is Skipped
    flags=re.S, as_match=True).set_name("header_fields")
header_fields.leave_whitespace().parse_with_tabs()

colon = _layout(":", "':'")
header = line_words.copy().set_name("header")     # the words after the colon


def _on_header(s: str, loc: int, toks: pp.ParseResults) -> _Header:
    ctx = _CONTEXT.get()
    loc -= 1                     # the recipe starts at its colon
    line: _Words = toks[0]
    words = line.words
    joined = " ".join(s[w.start:w.end] for w in words)
    offsets: list[int] = []      # position in `joined` -> position in the file
    for i, w in enumerate(words):
        offsets.extend(range(w.start, w.end))
        if i + 1 < len(words):
            offsets.append(w.end)
    res = header_fields.parse_string(joined)[0]
    count = int(res["count"]) if res["count"] is not None else -1
    flags = frozenset(Flag(ch) for ch in res["flags"] if ch != " ")
    lock: LockSpec | None = None
    rest = res["rest"]
    if res["colon"] is not None:
        if res["lockword"]:
            lock = LockSpec(res["lockword"])
        elif res["nextword"] is not None:
            lock = LockSpec(res["nextword"])
        else:
            lock = LockSpec(None)
    diags = list(line.diags)
    leftover = " ".join(rest.split(" ")).strip(" ")
    if leftover:
        at = len(joined) - len(rest.lstrip(" "))
        pos = offsets[at] if at < len(offsets) else loc
        why = (f"unknown flag {leftover[0]!r} (expected flags from {_FLAG_ORDER} or "
               "':lock')" if lock is None else "expected nothing after the lock file name")
        diags.append(ctx.warn(pos, f'Skipped "{leftover}": {why}'))
    # the legacy count: that many lines are conditions, '*' or not; without a count
    # one line, unless a chaining flag says the recipe has none (procmail.c)
    nrcond = count
    if nrcond < 0:
        nrcond = int(not (flags & {Flag.CHAIN_MATCHED, Flag.CHAIN_SUCCEEDED,
                                   Flag.ELSE, Flag.ON_ERROR}))
    ctx.forced_left = max(nrcond, 0)
    if Flag.ON_ERROR in flags:
        # procmail's conditions() drops what contradicts e (a recipe for a failed
        # action), every time it reads the recipe: the count above saw the flags first
        for flag, what in ((Flag.ELSE, "else-if-flag"), (Flag.CHAIN_SUCCEEDED, "also-if-succeeded-flag")):
            if flag in flags:
                diags.append(ctx.warn(loc, f"Conflicting {what} suppressed: e runs the recipe "
                                           "only after the preceding recipe's action failed"))
                flags = flags - {flag}
    return _Header(loc, flags, lock, tuple(diags))


header.add_parse_action(_on_header)

# ------------------------------------------------------------------ conditions
def _take_forced(s: str, loc: int, toks: pp.ParseResults) -> bool:
    """Lets forced_condition match while the header's count lasts.  At the end of the
    text it stops (procmail would read empty lines for ever; the recipe is
    incomplete there anyway, so nothing observable changes)."""
    ctx = _CONTEXT.get()
    if ctx.forced_left > 0 and loc < len(s):
        ctx.forced_left -= 1
        return True
    return False


def _on_condition(s: str, loc: int, toks: pp.ParseResults) -> _CondLine:
    """The condition's span is its ``*`` (or, for a forced line, its first
    non-blank character): the lead token is the blanks, ``*`` and blanks before the
    text."""
    lead: str = toks[0]
    return _CondLine(toks[1], loc + len(lead) - len(lead.lstrip(" \t")))


condition = (_regex(r"[ \t]*\*[ \t]*", "'*'") + logical_line
             ).set_name("condition").add_parse_action(_on_condition)
forced_condition = (pp.Empty().add_condition(_take_forced, call_during_try=True)
                    + _regex(r"[ \t]*\*?[ \t]*", "'*'?") + logical_line
                    ).set_name("forced_condition").add_parse_action(_on_condition)

# ------------------------------------------------------------------ actions
def _marker(kind: str):
    return lambda s, loc, toks: _Marker(kind, loc)


def _on_folder(s: str, loc: int, toks: pp.ParseResults) -> list:
    ctx = _CONTEXT.get()
    line: _Words = toks[0]
    out: list = list(line.diags)
    if line.raw.startswith(":"):
        out.append(ctx.warn(loc, f"folder name {line.raw!r} starts with ':': expected "
                                 "an action line before the next recipe"))
    elif line.raw == "}":
        out.append(ctx.warn(loc, "folder named '}': expected an action line before the "
                                 "closing brace"))
    out.append(Folder(line.raw, ctx.span(loc)))
    return out


def _on_forward(s: str, loc: int, toks: pp.ParseResults) -> list:
    line: _Words = toks[-1]
    return [*line.diags, Forward(line.raw, _CONTEXT.get().span(loc))]


def _on_pipe(s: str, loc: int, toks: pp.ParseResults) -> list:
    """A program action.  A bare ``|`` is refused: procmail writes the mail to its
    stdout there, which for a delivery agent is the MTA's pipe, so the mail would be
    lost with exit 0; refused, the recipe is skipped and the mail goes on."""
    capture = toks[0] if len(toks) == 2 else None
    if capture is not None and capture != capture.rstrip(" \t"):
        capture = capture.rstrip(" \t")[:-1]      # see _capture_name
    ctx = _CONTEXT.get()
    if not toks[-1].strip(" \t"):
        return [ctx.error(loc, "a bare '|' (procmail writes the mail to stdout, where a "
                               "delivery agent loses it) is not supported: expected a "
                               "program; the recipe is ignored"),
                _Marker("refused", loc)]
    width = len(toks[-1]) if len(toks[-1]) >= MIN_LINEBUF else 0
    return [Pipe(toks[-1], capture, ctx.span(loc), width)]  # verbatim: " cmd" logged


def _on_capture(s: str, loc: int, toks: pp.ParseResults) -> list:
    """``VAR=| program`` captures the program's output; ``VAR=! address`` would
    capture a forward, which the AST cannot say (procmail allows it)."""
    if isinstance(toks[-1], str):
        return _on_pipe(s, loc, toks)
    ctx = _CONTEXT.get()
    line: _Words = toks[-1]
    return [*line.diags,
            ctx.error(loc, "capturing a forward ('VAR=! address') is not supported: "
                           "expected 'VAR=| program'; the recipe is ignored"),
            _Marker("refused", loc)]


# the name and the blanks after it: procmail's buffer holds "NAME\0=" after a blank
# before "=", and pipthrough() drops the last character of what it takes for "NAME=",
# so the output goes to the name without its last letter (``SUBJECT = |``: SUBJEC)
_capture_name = _regex(r"[A-Za-z_][A-Za-z0-9_]*[ \t]*", "NAME")
_capture_eq = _layout(r"=[ \t]*", "'='")
incomplete = _regex(r"\Z", "end of file").add_parse_action(   # zero-width, unlike StringEnd
    _marker("incomplete"))
forward = (_layout("!", "'!'") + line_words).set_name("forward")
pipe = (_layout(r"\|", "'|'") + logical_line).set_name("pipe")
capture = (_capture_name + _capture_eq + (_layout(r"\|", "'|'") + logical_line
                                  | _layout("!", "'!'") + line_words)
           ).set_name("capture")
block_open = _regex(r"\{[ \t\n]", "block_open").add_parse_action(_marker("block"))
folder = line_words.copy().set_name("folder").add_parse_action(_on_folder)
forward.add_parse_action(_on_forward)
pipe.add_parse_action(_on_pipe)
capture.add_parse_action(_on_capture)

action = (blanks + (pipe | block_open | capture | forward | incomplete | folder)
          ).set_name("action")        # only folder must come last (it takes anything)
missing_action = (blanks + pp.FollowedBy(pp.Literal(":"))
                  .add_parse_action(_marker("missing"))).set_name("missing_action")

recipe = (colon + header + pp.ZeroOrMore(forced_condition)
          + pp.ZeroOrMore(condition | comment)
          + (blank_line
             + pp.ZeroOrMore(condition | comment | blank_line)
             + (missing_action | action)
             | action)).set_name("recipe")


# What procmail ignores on a block (in the order it says so) and on a folder; it says
# so when it reads the recipe, whether or not the conditions match.
_BLOCK_EXTRANEOUS = (
    (Flag.FILTER, "filter-flag", "a block is not a filter"),
    (None, "locallockfile", "a block without c holds no lock (give the recipes inside it ':0:')"),
    (Flag.FEED_BODY, "deliver-body flag", "a block is not fed anything"),
    (Flag.FEED_HEADER, "deliver-head flag", "a block is not fed anything"),
    (Flag.IGNORE_WRITE, "ignore-write-error flag", "nothing is written to a block"),
    (Flag.RAW, "raw-mode flag", "nothing is written to a block"))


def _extraneous(head: "_Header", tail: object) -> list[tuple[str, str]]:
    if isinstance(tail, _Marker) and tail.kind == "block":
        # a c block's lock is taken (the parent holds it while its clone runs)
        return [(what, why) for flag, what, why in _BLOCK_EXTRANEOUS
                if (head.lock is not None and Flag.COPY not in head.flags if flag is None
                    else flag in head.flags)]
    if isinstance(tail, Folder) and Flag.FILTER in head.flags:
        return [("filter-flag", "a folder is not a filter (the whole mail is saved)")]
    if isinstance(tail, Pipe) and tail.capture is not None and Flag.FILTER in head.flags:
        # procmail reads VAR=| as a folder line first, where f is dropped
        return [("filter-flag", "a capture is not a filter (the mail stays as it is)")]
    return []


def _on_recipe(s: str, loc: int, toks: pp.ParseResults) -> list:
    """Assemble a recipe from its header, condition lines and action; a recipe
    procmail would not run leaves only its diagnostics (in reading order)."""
    ctx = _CONTEXT.get()
    head: _Header = toks[0]
    out: list = list(head.diags)
    tail = toks[-1]
    if isinstance(tail, _Marker) and tail.kind == "missing":
        out.append(ctx.error(tail.pos, "Missing action: expected an action line "
                                       f"{_ACTION_KINDS} for the recipe at "
                                       f"{ctx.span(head.pos)}; the recipe is ignored"))
        return out   # procmail starts over with the recipe at that ':'
    conditions: list[Condition] = []
    bad = False
    i = 1
    while isinstance(toks[i], _CondLine):
        line: _CondLine = toks[i]
        i += 1
        try:
            cond = parse_condition(line.text, ctx.span(line.pos))
        except RcSyntaxError as e:
            out.append(ctx.error(line.pos, f"{e.message}; the recipe at "
                                           f"{ctx.span(head.pos)} is ignored"))
            bad = True
            continue
        if len(line.text) >= MIN_LINEBUF:
            cond = dataclasses.replace(cond, width=len(line.text))
        conditions.append(cond)
        if isinstance(cond.test, SizeTest) and cond.test.text is None \
                and (left := size_leftover(line.text)):
            out.append(ctx.warn(line.pos, f'Skipped "{left}": expected nothing after '
                                          "the number of bytes"))
    out.extend(toks[i:-1])   # the action's own diagnostics
    span = ctx.span(head.pos)
    out.extend(ctx.warn(head.pos, f"Extraneous {what} ignored: {why}")
               for what, why in _extraneous(head, tail))
    if isinstance(tail, _Marker):
        if tail.kind == "incomplete":
            out.append(ctx.error(tail.pos, "Incomplete recipe: expected an action line "
                                           f"{_ACTION_KINDS}, found the end of the file"))
        elif tail.kind == "block":
            out.append(BlockOpen(head.flags, head.lock, tuple(conditions), span,
                                 ctx.span(tail.pos), not bad))
        return out
    if not bad:
        out.append(Recipe(head.flags, head.lock, tuple(conditions), tail, span))
    return out


recipe.add_parse_action(_on_recipe)

close_brace = pp.Literal("}").set_name("close_brace").add_parse_action(
    lambda s, loc, toks: BlockClose(loc))

# ------------------------------------------------------------------ the file
item = (recipe | close_brace | statement).set_name("item")
RC_FILE = (pp.ZeroOrMore(filler + item) + filler
           + pp.StringEnd()).set_name("rc_file")


def _whitespace_sensitive(root: pp.ParserElement) -> None:
    """procmailrc is line- and blank-sensitive: no element may skip whitespace
    (pyparsing's default) and tabs must not be expanded."""
    seen: set[int] = set()
    todo = [root]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        e.leave_whitespace(recursive=False)
        todo.extend(getattr(e, "exprs", ()))
        if getattr(e, "expr", None) is not None:
            todo.append(e.expr)


_whitespace_sensitive(RC_FILE)
RC_FILE.parse_with_tabs()
RC_FILE.streamline()
