"""rules.envint — procmail's reading of a numeric variable (misc.c renvint).

    renvint(1024, "30")     -> 30
    renvint(1024, " 7days") -> 7        a leading decimal number, as strtol reads it
    renvint(8, "yes")       -> 1        on, yes, true, enabled (first letter): 1
    renvint(8, "off")       -> 0        off, no, false, disabled: 0
    renvint(-1, "all")      -> 2        a word starting with "a": 2
    renvint(8, "x")         -> 8        anything else: the default

Why one function: LINEBUF, LOCKSLEEP, LOCKTIMEOUT, SUSPEND, TIMEOUT, LOGABSTRACT,
EXITCODE and SHIFT are all read this way by procmail, so ``LOGABSTRACT=all``,
``EXITCODE=yes`` or ``TIMEOUT=30s`` mean the same to postroom as to procmail (the first
letter of a word decides; "on" and "off" are told apart by what follows the "o").
"""

from __future__ import annotations

import re

__all__ = ["renvint"]

_NUMBER = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")
_SPACE = " \t\n\v\f\r"
_LONG_MAX = (1 << 63) - 1


def renvint(default: int, value: str | None) -> int:
    """``value`` read as procmail reads a numeric variable; ``default`` when it says
    nothing (unset, empty, or a word procmail does not know)."""
    if not value:
        return default
    m = _NUMBER.match(value)
    if m is not None:
        return max(-_LONG_MAX - 1, min(_LONG_MAX, int(m.group(1))))   # strtol clamps
    word = value.lstrip(_SPACE)[:3].lower()
    first = word[:1]
    if first == "o":
        if word[1:2] == "n":
            return 1
        if word[1:3] == "ff":
            return 0
        return default
    if first in ("y", "t", "e"):
        return 1
    if first in ("n", "f", "d"):
        return 0
    if first == "a":
        return 2
    return default
