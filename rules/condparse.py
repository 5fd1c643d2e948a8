"""Parse one procmail condition line (the text after ``*``) into a ``Condition``.

What it does: mirrors procmail 3.22's ``conditions()`` dispatch (procmailrc(5),
procmailsc(5); PROCMAIL-BEHAVIOUR items 6, 9, 11, 12, 13): the text is stripped of
leading and trailing blanks, then its first character selects the test, repeatedly:

  ``w^x``        a weight (procmailsc(5)); the rest is parsed again
  ``!``          negation (repeatable: the parity counts, item 9)
  ``NAME ??``    the rest is matched against a variable or the H/B/HB/BH area; a name
                 must start with a letter or ``_`` (``1 ?? x`` is a plain regex, item 12)
  ``$``          ExpandTest: expanded and re-parsed at run time, so this module is also
                 called by the evaluator after expansion (it must not import pyparsing)
  ``?``          ProgramTest
  ``<`` ``>``    SizeTest (``VAR ?? < n`` gives SizeTest(area=VAR), item 11); words after
                 the number are ignored, as procmail does (it logs them as Skipped); a
                 literal without a number is refused (procmail reads 0, so ``> lots``
                 would match every mail: a deliberate difference); an operand holding
                 ``$``, a backquote, a quote or a backslash is kept as text, expanded at
                 run time into words (procmail expands it always)
  ``\\``         quotes the next character and is dropped (item 6)
  anything else  RegexTest

Regex and ``$`` texts are "squeezed" as procmail does: a backslash-newline pair and the
blanks that start the continuation line are removed.  Program texts keep them (item 18).

What it guarantees: ``parse_condition`` returns a ``Condition`` or raises
``RcSyntaxError`` (never any other exception) for any input string.

After ``NAME ??`` the test that follows searches, measures or is fed that area or
variable (procmail's conditions() keeps it while it reads on): ``VAR ?? ! x``,
``VAR ?? < 10``, ``VAR ?? $ $pat`` (expanded, then re-parsed with the area kept),
``B ?? ? prog`` (fed the body).

Errors: ``RcSyntaxError`` for a size test whose literal operand has no number.
"""

from __future__ import annotations

import math
import re

from .ast import (Condition, ExpandTest, ProgramTest, RegexTest, SizeTest, Span,
                  Test, VarTest, Weight)
from .errors import RcSyntaxError

__all__ = ["parse_condition", "squeeze", "is_name_start", "is_name_char",
           "size_leftover", "size_operand"]

_BLANKS = " \t"
# A weight as procmail reads it: with the C library's strtod() in the C locale (Debian's
# procmail is built with it, not with its own stod()): blanks, a sign, then a decimal
# with an optional exponent (``1e3``) or a hexadecimal with an optional binary exponent
# (``0x10``, ``0x1.8p3``); a comma is no decimal point.  An exponent without digits is
# not part of the number.  glibc's strtod also reads "inf", "infinity" and "nan",
# "nan(chars)" in any case: a condition starting with a sign can be such a weight
# (``+inf^0``), an exponent too (``1^nan``).
_STRTOD = re.compile(r"[ \t\n\v\f\r]*([+-]?)(?:0[xX]((?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+))"
                     r"([pP][+-]?[0-9]+)?|((?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
                     r"|((?i:inf(?:inity)?|nan(?:\([0-9A-Za-z_]*\))?)))")
_FINITE = 1.7976931348623157e308      # strtod's HUGE_VAL kept finite: scores clamp anyway
_SIZE = re.compile(r"[ \t]*([+-]?[0-9]+)?[ \t]*(.*)\Z", re.S)
_SIZE_LEFTOVER = re.compile(r"[<>](.*)\Z", re.S)
_EXPANDS = re.compile(r"[$`\"'\\]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_name_start(c: str) -> bool:
    """procmail's ``alphanum(c) && !numeric(c)``: ASCII letters and ``_``."""
    return c == "_" or ("a" <= c <= "z") or ("A" <= c <= "Z")


def is_name_char(c: str) -> bool:
    return is_name_start(c) or ("0" <= c <= "9")


def squeeze(text: str) -> str:
    """procmail's squeeze(): drop every backslash-newline pair and the blanks that
    follow a newline."""
    out: list[str] = []
    state = 0
    for c in text:
        if c == "\n":
            if state == 1:
                out.pop()  # the backslash; the newline is not added
            else:
                out.append(c)
            state = 2
            continue
        if c == "\\":
            out.append(c)
            state = 1
            continue
        if c in _BLANKS and state == 2:
            continue
        out.append(c)
        state = 0
    return "".join(out)


def _stod(text: str) -> tuple[float, int] | None:
    """Return (value, end index) like strtod(), or None where it reads no number."""
    m = _STRTOD.match(text)
    if m is None:
        return None
    sign, hexdigits, binexp, decimal, special = m.groups()
    if special is not None:
        value = math.nan if special[:3].lower() == "nan" else math.inf
    elif hexdigits is not None:
        value = float.fromhex("0x" + (hexdigits if hexdigits != "." else "0") + (binexp or ""))
    else:
        value = min(float(decimal), _FINITE)
    return (-value if sign == "-" else value), m.end()


def _strip(text: str) -> str:
    return text.strip(_BLANKS)


def parse_condition(text: str, span: Span, *, expanded: bool = False) -> Condition:
    """Parse the text after ``*`` (not yet stripped).  Raises RcSyntaxError.
    ``expanded``: the text a ``* $`` condition expanded to, of which procmail skips the
    leading blanks only (its trailing blanks were cut from the line before expanding;
    a blank the expansion ends with is part of the regular expression)."""
    if not isinstance(text, str):
        raise RcSyntaxError(span, "condition text must be a string")
    rest = text.lstrip(_BLANKS) if expanded else _strip(text)
    negate = False
    weight: Weight | None = None
    area: str | None = None
    test: Test
    while True:
        c = rest[:1]
        if c and (c in "+-." or c.isdigit() and c.isascii()):
            w = _stod(rest)
            if w is not None:
                after = rest[w[1]:].lstrip(_BLANKS)
                if after.startswith("^"):
                    x = _stod(after[1:])
                    if x is not None:
                        weight = Weight(w[0], x[0])
                        rest = after[1 + x[1]:].lstrip(_BLANKS)
                        continue
            test = _regex(rest, area)
            break
        if c and is_name_start(c):
            m = _NAME.match(rest)
            assert m is not None
            after = rest[m.end():].lstrip(_BLANKS)
            if after.startswith("??"):
                area = m.group(0)
                rest = after[2:].lstrip(_BLANKS)
                continue
            test = _regex(rest, area)
            break
        if c == "\\":
            test = _regex(rest[1:], area)
            break
        if c == "!":
            negate = not negate
            rest = rest[1:].lstrip(_BLANKS)
            continue
        if c == "$":
            test = ExpandTest(squeeze(rest[1:]), area)
            break
        if c == "?":
            test = ProgramTest(rest[1:].lstrip(_BLANKS), area)
            break
        if c in ("<", ">"):
            operand = rest[1:]
            if _EXPANDS.search(operand):
                test = SizeTest(c, 0, area, operand)
                break
            number = _SIZE.match(operand).group(1)   # type: ignore[union-attr]
            if number is None:
                # deliberate (README): procmail compares with 0, so ``* > lots``
                # would match every mail
                raise RcSyntaxError(
                    span, f"expected a decimal number of bytes after '{c}', "
                          f"found {operand.strip(_BLANKS)!r}")
            test = SizeTest(c, int(number), area)
            break
        test = _regex(rest, area)
        break
    return Condition(test=test, negate=negate, weight=weight, span=span)


def size_operand(text: str) -> tuple[int, str]:
    """``(n, leftover)`` for the text after ``<``/``>``, as procmail's strtol() reads it:
    blanks, an optional sign and digits make n (0 when there are none); what follows,
    stripped, is what procmail logs as ``Skipped``."""
    m = _SIZE.match(text)
    assert m is not None                    # every part of the pattern may be empty
    return (int(m.group(1)) if m.group(1) else 0), m.group(2).strip(_BLANKS)


def size_leftover(text: str) -> str:
    """What procmail skips after the number of a size test on the condition line
    ``text`` (``* > 10 bytes`` logs ``Skipped "bytes"``); empty when there is nothing."""
    m = _SIZE_LEFTOVER.search(text.strip(_BLANKS))
    return size_operand(m.group(1))[1] if m else ""


def _regex(pattern: str, area: str | None) -> Test:
    pattern = squeeze(pattern)
    if area is None:
        return RegexTest(pattern)
    return VarTest(area, pattern)
