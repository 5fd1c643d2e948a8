"""rules.numvars — procmail's numeric variables, held as procmail holds them.

procmail keeps LOCKSLEEP, LOCKTIMEOUT, SUSPEND, NORESRETRY, TIMEOUT, VERBOSE,
LOGABSTRACT and LINEBUF as numbers of its own, next to the environment.  They start at
procmail's defaults whatever the environment says (``TIMEOUT=1`` inherited with ``-p``
changes nothing) and change only when the rc file or the command line assigns them.  An
assignment that says no number (empty, unset, a word procmail does not know) keeps the
number it had: ``TIMEOUT=$UNDEFINED`` leaves TIMEOUT as it was, where reading the
variable afresh would give the default.  LINEBUF is the exception: procmail reads it
against 0, so an empty LINEBUF is the smallest buffer.

The variables themselves keep the text assigned (``$TIMEOUT`` reads back as written);
the evaluator updates the numbers at each assignment and the effects read them here.
"""

from __future__ import annotations

from .ast import MIN_LINEBUF
from .envint import renvint

__all__ = ["NUMERIC_DEFAULTS", "initial_numbers", "assign_number"]

NUMERIC_DEFAULTS: dict[str, int] = {
    "LOCKSLEEP": 8, "LOCKTIMEOUT": 1024, "SUSPEND": 16, "NORESRETRY": 4,
    "TIMEOUT": 960, "VERBOSE": 0, "LOGABSTRACT": -1, "LINEBUF": 2048,
}


def initial_numbers() -> dict[str, int]:
    """A fresh set of numbers at procmail's defaults."""
    return dict(NUMERIC_DEFAULTS)


def assign_number(numbers: dict[str, int], name: str, value: str | None) -> None:
    """``name`` was assigned ``value`` (None: unset): update its number as procmail does."""
    if name == "LINEBUF":
        numbers[name] = max(MIN_LINEBUF, renvint(0, value))
    else:
        numbers[name] = renvint(numbers[name], value)
